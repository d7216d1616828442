#if canImport(Glibc)
import Glibc
#endif
import Control
import HostNet
import VMConfig

extension Daemon {
    /// `vmctl reset switches`: the bridges and VRFs this vmd created are deleted and made
    /// again from the current configuration (so a switch whose settings changed, or a
    /// bridge someone reconfigured by hand, is as vm.conf says), bridges vmd did not create
    /// get the configured up/down again, and the taps of running VMs go back on their switch
    /// (or rdomain VRF). The first failure is the reply, naming the switch or the tap.
    func resetSwitches() -> (ControlReply, [Int32]) {
        let (config, taps) = state.withLock { s in
            (s.config, s.vms.filter { $0.state != .stopped }.flatMap { e in e.interfaces.map { (e.definition.name, $0) } })
        }
        guard geteuid() == 0 else { return Self.fail(.permissionDenied, "reset switches: vmd is not running as root") }
        let socket = options.socketPath
        VMNetwork.removeOwnedLinks(socket: socket, log: log)
        var bridges: [String: String] = [:]
        for sw in config.switches where sw.enabled && VMNetwork.bridgeName(sw) != nil {
            do {
                bridges[sw.name] = try VMNetwork.prepareSwitch(sw, socket: socket, log: log)
            } catch {
                return Self.fail(.failed, "reset switches: switch \(sw.name): \(error)")
            }
        }
        for (vm, tap) in taps {
            do {
                if let s = tap.switchName {
                    guard let b = bridges[s] else {
                        log.warning("reset switches: vm \(vm): \(tap.name): switch \(s) is gone from the configuration; left detached")
                        continue
                    }
                    try HostInterfaces.setMaster(tap.name, b)
                } else if let r = tap.rdomain, r > 0 {
                    try HostInterfaces.setMaster(tap.name, VMNetwork.ensureVRF(r, socket: socket, log: log))
                }
            } catch {
                return Self.fail(.failed, "reset switches: vm \(vm): \(tap.name): \(error)")
            }
        }
        log.info("reset switches: \(bridges.count) switch\(bridges.count == 1 ? "" : "es"), \(taps.count) tap\(taps.count == 1 ? "" : "s") reattached")
        return (.ok(message: nil), [])
    }
}
