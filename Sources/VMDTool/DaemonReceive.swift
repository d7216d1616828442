#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Control
import VMConfig
import VMDCore
import VMM
import X86Emulator

/// A state stream a VM is started from (`vmctl receive`): its CONF section, which vmd has
/// read, and the descriptor positioned after it, which the VM process reads on from.
struct ReceivedStream {
    var config: SavedMachineConfig
    var fd: Int32
}

// `vmctl receive NAME` (docs/snapshot.md, "vmctl receive"): the same rules as start. A VM
// of the configuration may be received by root or its owner, into its own disks; a new
// name is root's, like creating a VM from the command line. The stream's file names (the
// sending host's) are never opened: the disks are vm.conf's or `-d`'s, opened as start
// opens them (with the owner's rights), and the kernel and initrd are not needed at all
// (RAM comes from the stream).
extension Daemon {
    /// How long vmd waits for each piece of the stream's head (a client that sends nothing
    /// must not hold a vmd thread for ever); the VM process reads the rest with the same bound.
    static let receiveReadTimeout: Int32 = 30

    func handleReceive(_ name: String, disks: [DiskSpec], template: String? = nil, stream fds: [Int32],
                       _ c: PeerCredentials) -> (ControlReply, [Int32]) {
        guard fds.count == 1 else { return Self.fail(.invalidRequest, "receive: the request carries no state stream") }
        guard ConfigValidator.isValidVMName(name) else { return Self.fail(.invalidRequest, "vm \(name): invalid name") }
        if disks.count > VMLimits.maxDisks { return Self.fail(.invalidRequest, "vm \(name): too many disks") }
        // Who may, before a byte of the stream is read.
        let refused: ControlFailure? = state.withLock { s in
            if let template {
                if case .failure(let f) = receivedInstance(s, name, template: template, disks: disks, c) { return f }
                return nil
            }
            return receiveRefusal(s, name, disks: disks, c)
        }
        if let refused { return (.failure(refused), []) }
        let conf: SavedMachineConfig
        do {
            conf = try Machine.readConfig(StateStreamReader(fd: fds[0], timeoutSeconds: Self.receiveReadTimeout))
        } catch {
            return Self.fail(.failed, "vm \(name): \(error)")
        }
        let chosen: Result<(VMEntry, VMDefinition, created: Bool), ControlFailure> = state.withLock { s in
            if let template {
                // -t: a new instance, made as `start -t` makes one (the checks again: the
                // name may have been taken while the head was read).
                return receivedInstance(s, name, template: template, disks: disks, c).flatMap { i in
                    Self.receivedDefinition(i.definition, conf, disks: [], root: c.uid == 0, memoryAllowed: i.memoryAllowed).map { d in
                        // It keeps the stream's sizes, and its template's kernel, initrd and
                        // command line (files of this host) for a later start.
                        var kept = d
                        kept.boot = i.definition.boot
                        kept.initrd = i.definition.initrd
                        kept.cmdline = i.definition.cmdline
                        return (s.add(kept, fromConfig: false, owner: i.owner), d, true)
                    }
                }
            }
            if let f = receiveRefusal(s, name, disks: disks, c) { return .failure(f) }
            if let e = s.find(.name(name)) {
                return Self.receivedDefinition(e.definition, conf, disks: disks, root: c.uid == 0).map { (e, $0, false) }
            }
            let blank = VMDefinition(name: name, location: SourceLocation(file: "vmctl receive", line: 0))
            return Self.receivedDefinition(blank, conf, disks: disks, root: true).map { d in
                // The new VM keeps the machine's sizes and disks; the kernel and initrd the
                // stream names are the sending host's, not files of its own here.
                var kept = d
                kept.boot = nil
                kept.initrd = nil
                return (s.add(kept, fromConfig: false, owner: ResolvedOwner(uid: 0, gid: nil)), d, true)
            }
        }
        guard case .success(let (entry, d, created)) = chosen else {
            if case .failure(let f) = chosen { return (.failure(f), []) }
            return Self.fail(.failed, "unreachable")
        }
        let r = startVM(entry, StartRequest(target: .id(entry.id)), received: (d, ReceivedStream(config: conf, fd: fds[0])))
        if created, case .failure = r.0 {
            // A VM made by a receive that never ran is not kept.
            state.withLock { s in s.vms.removeAll { $0 === entry && $0.state == .stopped } }
        }
        return r
    }

    /// The instance `receive -t template name` would make (start -t's rules,
    /// VMDCore/AccessRules.swift: the template exists, the name is free, a non-root caller
    /// is the template's `allow instance` owner and `-d` needs `allow instance disk`), or
    /// why not. `memoryAllowed`: the stream's memory may differ from the template's (root,
    /// or `allow instance memory`).
    private func receivedInstance(_ s: DaemonState, _ name: String, template: String, disks: [DiskSpec], _ c: PeerCredentials)
        -> Result<(definition: VMDefinition, owner: ResolvedOwner, memoryAllowed: Bool), ControlFailure> {
        var req = StartRequest(target: .name(name))
        req.template = template
        req.disks = disks
        let known = s.vms.map { AccessRules.Known(id: $0.id, definition: $0.definition, owner: $0.owner) }
        switch rules.startTarget(req, c, among: known) {
        case .failure(let f): return .failure(f)
        case .success(.new(let d, let owner, _)):
            let memory = c.uid == 0 || (s.find(.name(template))?.definition.allowInstance.memory ?? false)
            return .success((d, owner, memory))
        case .success(.existing):
            return .failure(ControlFailure(.failed, "vm \(name): not a new instance"))
        }
    }

    /// Why `c` may not receive into `name` (nil: it may): start's rules.
    private func receiveRefusal(_ s: DaemonState, _ name: String, disks: [DiskSpec], _ c: PeerCredentials) -> ControlFailure? {
        guard let e = s.find(.name(name)) else {
            return c.uid == 0 ? nil : ControlFailure(.permissionDenied, "vm \(name): permission denied (only root may create vms)")
        }
        guard mayControl(e, c) else { return ControlFailure(.permissionDenied, "vm \(name): permission denied") }
        if !disks.isEmpty && c.uid != 0 {
            return ControlFailure(.permissionDenied, "vm \(name): only root may change its settings at start")
        }
        guard e.state == .stopped else {
            return ControlFailure(.alreadyRunning, "vm \(name): already \(e.state == .paused ? "running (paused)" : "running")")
        }
        return nil
    }

    /// The definition a received VM runs with: the machine the stream describes (memory,
    /// vCPUs, backend, CPU level; kernel and command line for the record), on `base`'s
    /// disks or `disks`. A configured VM's sizes and backend are its settings, which only
    /// root may change (`memoryAllowed`: the memory may differ, as `allow instance memory`
    /// lets an instance's); devices a received machine cannot have yet are refused.
    static func receivedDefinition(_ base: VMDefinition, _ conf: SavedMachineConfig, disks: [DiskSpec],
                                   root: Bool, memoryAllowed: Bool = false) -> Result<VMDefinition, ControlFailure> {
        let n = base.name
        func refuse(_ m: String) -> Result<VMDefinition, ControlFailure> { .failure(ControlFailure(.failed, "vm \(n): \(m)")) }
        if base.effectiveInterfaceCount > 0 || base.cdrom != nil || base.bootDevice != nil {
            return refuse("its configuration has network interfaces, a CD-ROM or a boot device, which a received machine cannot have yet")
        }
        let accel = VMConfig.Accelerator(rawValue: conf.backend)
        guard let accel, accel != .auto, let level = CPULevel(rawValue: conf.cpuLevel ?? X86CPULevel.default.rawValue),
              conf.vcpus >= 1, conf.vcpus <= VMLimits.maxVCPUs else {
            return refuse("malformed state stream: the machine configuration is not one vmd can run")
        }
        let chosenDisks = disks.isEmpty ? base.disks : disks
        guard chosenDisks.count == conf.diskPaths.count else {
            return refuse("the stream's machine has \(conf.diskPaths.count) disk(s), \(disks.isEmpty ? "its configuration" : "-d") gives \(chosenDisks.count)")
        }
        if !root {
            let sameBackend = base.accel == nil || base.accel == .auto || base.accel == accel
            guard memoryAllowed || base.effectiveMemory == conf.memorySize, (base.vcpus ?? 1) == conf.vcpus, sameBackend else {
                return .failure(ControlFailure(.permissionDenied,
                    "vm \(n): the stream's machine (\(StatusTable.scaled(conf.memorySize)), \(conf.vcpus) vcpu(s), \(accel.rawValue)) differs from its configuration; only root may change its settings"))
            }
        }
        var d = base
        d.disks = chosenDisks
        d.memory = conf.memorySize
        d.vcpus = conf.vcpus
        d.accel = accel
        d.cpuLevel = level
        d.boot = conf.kernelPath
        d.initrd = conf.initrdPath
        d.cmdline = conf.cmdline
        return .success(d)
    }
}
