#if canImport(Glibc)
import Glibc
#endif
import Devices
import Logging
import VMConfig
import VMM

// Guest networking in vmd (docs/vmd.md, "Networking"): for each interface of a VM, vmd (as
// root) creates a tap, brings it up or down, attaches it to its switch's Linux bridge
// (creating the bridge when it does not exist), and passes the tap descriptor to the VM
// process with the guest's files; the VM process gives it to its virtio-net device.

/// One guest interface as the VM process sees it: which passed descriptor is its tap, the
/// tap's host name (for messages) and the guest MAC.
struct ChildInterface: Codable, Equatable {
    var name: String
    var mac: [UInt8]
    /// `locked lladdr`: the device drops frames the guest sends from another MAC.
    var locked = false
}

enum VMNetwork {
    /// The host tap name for interface `i`: the configured `interface NAME` when it names one
    /// ("tap" alone, as in OpenBSD, means "any"), else the next free tapN.
    static func tapName(_ spec: InterfaceSpec) -> String {
        guard let n = spec.name, n != "tap" else { return "tap%d" }
        return n
    }

    /// The guest MAC: `lladdr` when set, else a stable fe:e1:ba:d0:xx:xx from the VM name.
    static func mac(_ spec: InterfaceSpec, vm: String, index: Int) -> [UInt8] {
        spec.lladdr?.bytes ?? VirtioNet.generatedMAC(seed: "\(vm)/\(index)")
    }

    /// The bridge a switch stands for: its `interface` (bridgeN), else its own name when that
    /// is a valid interface name.
    static func bridgeName(_ sw: SwitchDefinition) -> String? {
        if let i = sw.interface { return i }
        return InterfaceName.isValid(sw.name) ? sw.name : nil
    }

    /// Creates the VM's taps, appends their descriptors to `files` (and its count) and
    /// returns what the VM process needs. On failure every tap made so far is closed (so it
    /// disappears) and the error names the VM and the interface.
    static func open(_ d: VMDefinition, config: VMConfiguration, into files: inout OpenedGuestFiles,
                     log: Logger) -> Result<[ChildInterface], GuestError> {
        let count = d.effectiveInterfaceCount
        guard count > 0 else { return .success([]) }
        guard count <= VMLimits.maxInterfaces else {
            return .failure(GuestError(description: "vm \(d.name): \(count) interfaces; at most \(VMLimits.maxInterfaces)"))
        }
        var made: [Int32] = []
        var out: [ChildInterface] = []
        func fail(_ i: Int, _ m: String) -> Result<[ChildInterface], GuestError> {
            for fd in made { close(fd) }
            return .failure(GuestError(description: "vm \(d.name): interface \(i): \(m)"))
        }
        for i in 0..<count {
            let spec = i < d.interfaces.count ? d.interfaces[i] : InterfaceSpec()
            if spec.isLocal {
                return fail(i, "local interface is not supported yet (use a switch, or an interface without one)")
            }
            var bridge: String?
            if let s = spec.switchName {
                guard let sw = config.switchDefinition(named: s) else { return fail(i, "switch \(s) is not defined") }
                guard sw.enabled else { return fail(i, "switch \(s) is disabled") }
                guard let b = bridgeName(sw) else { return fail(i, "switch \(s) has no interface (e.g. interface bridge0)") }
                do {
                    if !HostInterfaces.exists(b) {
                        try HostInterfaces.createBridge(b)
                        log.info("switch \(s): created bridge \(b)")
                    }
                    if sw.up { try HostInterfaces.setUp(b, true) }
                } catch {
                    return fail(i, "switch \(s): \(error)")
                }
                bridge = b
            }
            let tap: (fd: Int32, name: String)
            do {
                tap = try TapInterface.open(name: tapName(spec))
            } catch {
                return fail(i, "\(error)")
            }
            made.append(tap.fd)
            do {
                try HostInterfaces.setUp(tap.name, spec.up)
                if let bridge { try HostInterfaces.addToBridge(tap.name, bridge: bridge) }
            } catch {
                return fail(i, "\(error)")
            }
            if spec.group != nil || spec.rdomain != nil {
                log.warning("vm \(d.name): interface \(i): group and rdomain are not applied on Linux")
            }
            let mac = mac(spec, vm: d.name, index: i)
            log.info("vm \(d.name): interface \(i) is \(tap.name)\(bridge.map { " on bridge \($0)" } ?? ""), \(spec.locked ? "locked " : "")lladdr \(NetworkInterfaceConfig.formatMAC(mac))")
            out.append(ChildInterface(name: tap.name, mac: mac, locked: spec.locked))
        }
        for (k, fd) in made.enumerated() {
            files.add(fd, GuestFile(role: .tap(k), path: out[k].name, format: nil, readOnly: false))
        }
        return .success(out)
    }
}
