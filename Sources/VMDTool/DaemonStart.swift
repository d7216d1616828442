#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Control
import VMConfig
import VMDCore

// Starting VMs: which entry a start request means (an existing VM, a new instance, a VM
// made from the command line), the identities involved, and the VM process's start.
extension Daemon {
    /// The entry a start request starts (creating it for -t or a new name), or why not;
    /// with the request to run it with (an instance's settings are its own, so its start
    /// request is plain).
    private func entryToStart(_ s: inout DaemonState, _ req: StartRequest, _ c: PeerCredentials)
        -> Result<(VMEntry, StartRequest, created: Bool), ControlFailure> {
        func fail(_ code: ControlFailure.Code, _ m: String) -> Result<(VMEntry, StartRequest, created: Bool), ControlFailure> {
            .failure(ControlFailure(code, m))
        }
        if let template = req.template {
            // -t: a new VM `target` as an instance of `template`.
            guard case .name(let name) = req.target else { return fail(.invalidRequest, "start -t: give the new instance a name") }
            guard let parent = s.vms.first(where: { $0.definition.name == template }) else {
                return fail(.unknownVM, "vm \(template): no such vm")
            }
            guard s.find(.name(name)) == nil else { return fail(.alreadyRunning, "vm \(name): already exists") }
            guard ConfigValidator.isValidVMName(name) else { return fail(.invalidRequest, "vm \(name): invalid name") }
            let allow = parent.definition.allowInstance
            if c.uid != 0 {
                let permitted: Bool = {
                    guard let o = allow.owner, let r = try? users.resolve(o) else { return false }
                    if let u = r.uid, u == c.uid { return true }
                    if let g = r.gid, c.gid == g || users.groups(ofUID: c.uid).contains(g) { return true }
                    return false
                }()
                guard permitted else { return fail(.permissionDenied, "vm \(template): permission denied to create instances") }
                // initrd, cmdline, vcpus and accel have no `allow instance` keyword: root's only.
                if StartOverride.denied(req, by: allow) != nil {
                    return fail(.permissionDenied, "vm \(template): instances may not change that setting")
                }
            }
            var d = VMDefinition(name: name, parent: template, location: parent.definition.location)
            d = d.inheriting(from: parent.definition)
            // The instance keeps the request's settings as its own (a later plain start of
            // it runs them again).
            d = StartOverride.effective(d, req)
            if c.uid != 0 { d.owner = OwnerSpec(user: Self.userName(c.uid)) }
            let e = s.add(d, fromConfig: false, owner: c.uid == 0 ? parent.owner : ResolvedOwner(uid: c.uid, gid: nil))
            var plain = StartRequest(target: .id(e.id))
            plain.attachConsole = req.attachConsole
            return .success((e, plain, true))
        }
        if let e = s.find(req.target) {
            guard mayControl(e, c) else { return fail(.permissionDenied, "vm \(e.definition.name): permission denied") }
            if !StartOverride.given(in: req).isEmpty && c.uid != 0 {
                return fail(.permissionDenied, "vm \(e.definition.name): only root may change its settings at start")
            }
            return .success((e, req, false))
        }
        // A VM not in the configuration: root may create one from the options alone.
        guard case .name(let name) = req.target else { return fail(.unknownVM, "vm \(req.target): no such vm") }
        guard c.uid == 0 else { return fail(.permissionDenied, "vm \(name): permission denied (only root may create vms)") }
        guard req.boot != nil || req.cdrom != nil || !req.disks.isEmpty else {
            return fail(.unknownVM, "vm \(name): no such vm (give -b, -r or -d to create one)")
        }
        guard ConfigValidator.isValidVMName(name) else { return fail(.invalidRequest, "vm \(name): invalid name") }
        let d = VMDefinition(name: name, location: SourceLocation(file: "vmctl", line: 0))
        return .success((s.add(d, fromConfig: false, owner: ResolvedOwner(uid: 0, gid: nil)), req, false))
    }

    func startRequest(_ req: StartRequest, _ c: PeerCredentials) -> (ControlReply, [Int32]) {
        let chosen = state.withLock { s in entryToStart(&s, req, c) }
        guard case .success(let (entry, request, created)) = chosen else {
            if case .failure(let f) = chosen { return (.failure(f), []) }
            return Self.fail(.failed, "unreachable")
        }
        var r = startVM(entry, request)
        if created, case .failure = r.0 {
            // An instance that never ran is not kept (1,000 failed starts, 0 entries).
            state.withLock { s in s.vms.removeAll { $0 === entry && $0.state == .stopped } }
        }
        if req.attachConsole, case .vm = r.0 {
            state.withLock { _ in
                if entry.ptyMaster >= 0 {
                    let dup = fcntl(entry.ptyMaster, F_DUPFD_CLOEXEC, 0)
                    if dup >= 0 { r.1 = [dup] }
                }
            }
        }
        return r
    }

    /// A user's name for display (the number when it has none).
    static func userName(_ uid: UInt32) -> String {
        var pw = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buf = [CChar](repeating: 0, count: 16384)
        // SAFETY: buf outlives the call; pw's strings point into it and are copied at once.
        if getpwuid_r(uid, &pw, &buf, buf.count, &result) == 0, result != nil, let n = pw.pw_name {
            return String(cString: n)
        }
        return String(uid)
    }

    /// Checks the settings of a VM before its files are opened (GuestFiles.open).
    static func checkFiles(_ d: VMDefinition) -> String? {
        if d.disks.count > VMLimits.maxDisks { return "vm \(d.name): too many disks" }
        if let device = d.bootDevice, device != .net, d.boot != nil {
            return "vm \(d.name): boot device \(device.rawValue) chooses what the firmware boots; it cannot be combined with a kernel (boot / -b)"
        }
        if d.bootDevice == .net {
            // `boot PATH` names the network boot file: TFTP serves PATH's directory.
            guard let path = d.boot, path.hasPrefix("/"), VMNetwork.netBoot(path) != nil else {
                return "vm \(d.name): boot device net needs the boot file as an absolute path (boot / -b PATH); its directory is what TFTP serves"
            }
            guard d.interfaces.contains(where: \.isLocal) else {
                return "vm \(d.name): boot device net needs a local interface (local interface / -L), whose DHCP and TFTP answer the firmware"
            }
        }
        if let m = d.memory, m < 1 << 20 { return "vm \(d.name): memory must be at least 1M" }
        if let v = d.vcpus, v < 1 || v > VMLimits.maxVCPUs { return "vm \(d.name): invalid vcpus \(v)" }
        return nil
    }

    /// Who a VM's process becomes once it holds its files (vmd running as root): the
    /// `--vm-user` for all, else uid = gid = vmUIDBase + the VM's id, its own, so VM
    /// processes cannot signal or ptrace each other. nil when vmd is not root.
    func processIdentity(_ e: VMEntry) -> DropIdentity? {
        guard geteuid() == 0 else { return nil }
        if let vmIdentity { return vmIdentity }
        let (id, overflow) = options.vmUIDBase.addingReportingOverflow(UInt32(truncatingIfNeeded: e.id))
        guard !overflow, id != UInt32.max else { return nil }
        return DropIdentity(user: "uid \(id)", uid: id, gid: id)
    }

    /// Whose rights open a VM's files: its owner user (with that user's groups); for an
    /// owner group alone, the VM process's uid in that group only; nil (vmd's own rights)
    /// for a VM without a non-root owner.
    func fileIdentity(_ o: ResolvedOwner, vmUID: UInt32) -> FileIdentity? {
        if let uid = o.uid, uid != 0 {
            var pw = passwd()
            var result: UnsafeMutablePointer<passwd>?
            var buf = [CChar](repeating: 0, count: 16384)
            // SAFETY: buf outlives the call; the fields used are copied at once.
            let gid = getpwuid_r(uid, &pw, &buf, buf.count, &result) == 0 && result != nil ? pw.pw_gid : 65534
            var groups = users.groups(ofUID: uid)
            if !groups.contains(gid) { groups.insert(gid, at: 0) }
            return FileIdentity(uid: uid, gid: gid, groups: groups, name: Self.userName(uid))
        }
        if let gid = o.gid, gid != 0 {
            return FileIdentity(uid: vmUID, gid: gid, groups: [gid], name: "group \(gid)")
        }
        return nil
    }

    /// Opens the VM's files and taps, spawns its process and hands it the spec and the
    /// descriptors; the reply is the VM's status or one line saying why it did not start.
    /// `received`: the VM runs this definition and is restored from the stream instead of
    /// booting (DaemonReceive.swift); no kernel or initrd is opened.
    func startVM(_ e: VMEntry, _ req: StartRequest,
                 received: (definition: VMDefinition, stream: ReceivedStream)? = nil) -> (ControlReply, [Int32]) {
        let begun: Result<VMDefinition, ControlFailure> = state.withLock { _ in
            guard e.state == .stopped else {
                return .failure(ControlFailure(.alreadyRunning,
                                               "vm \(e.definition.name): already \(e.state == .paused ? "running (paused)" : "running")"))
            }
            e.state = .starting
            e.lastExit = nil
            return .success(received?.definition ?? StartOverride.effective(e.definition, req))
        }
        let d: VMDefinition
        switch begun {
        case .failure(let f): return (.failure(f), [])
        case .success(let x): d = x
        }

        func failStart(_ m: String) -> (ControlReply, [Int32]) {
            state.withLock { _ in
                e.state = .stopped
                e.lastExit = "failed to start"
            }
            log.error("\(m)")
            return Self.fail(.failed, m)
        }
        if let problem = Self.checkFiles(d) { return failStart(problem) }
        if let sev = d.sev {
            // vm.conf accepts sev/seves as upstream does; running without the encryption the
            // owner asked for would be worse than not running.
            return failStart("vm \(d.name): \(sev == .seves ? "SEV-ES" : "SEV") is not available on this host (vmd has no AMD SEV support): remove \"\(sev.rawValue)\" to start it")
        }

        // vmd opens every guest file; the VM process gets descriptors only. A VM with a
        // non-root owner gets only files that owner could open (UserFileAccess).
        var files: OpenedGuestFiles
        let processIdentity = self.processIdentity(e)
        let owner = state.withLock { _ in e.owner }
        var toOpen = d
        if received != nil { toOpen.boot = nil; toOpen.initrd = nil }   // RAM comes from the stream
        switch GuestFiles.open(toOpen, as: fileIdentity(owner, vmUID: processIdentity?.uid ?? 65534)) {
        case .failure(let m): return failStart(m.description)
        case .success(let f): files = f
        }
        if let stream = received?.stream {
            // The VM process reads the rest of the stream itself, after it gave up root.
            let dup = fcntl(stream.fd, F_DUPFD_CLOEXEC, 0)
            guard dup >= 0 else { files.closeAll(); return failStart("vm \(d.name): \(SystemError("dup"))") }
            files.add(dup, GuestFile(role: .stateStream, path: "the state stream", format: nil, readOnly: true))
        }
        // Taps for the interfaces, their descriptors after the files (Network.swift).
        let (currentConfig, macsInUse) = state.withLock { s in
            (s.config, Dictionary(s.vms.filter { $0 !== e && $0.state != .stopped }
                .flatMap { o in VMNetwork.macs(o.running ?? o.definition).map { ($0, o.definition.name) } },
                uniquingKeysWith: { a, _ in a }))
        }
        let interfaces: [ChildInterface]
        switch VMNetwork.open(d, id: e.id, config: currentConfig, macsInUse: macsInUse,
                                  socket: options.socketPath, into: &files, log: log) {
        case .failure(let m): files.closeAll(); return failStart(m.description)
        case .success(let i): interfaces = i
        }
        defer { files.closeAll() }

        let pty: PseudoTerminal
        let pair: (Int32, Int32)
        do {
            pty = try PseudoTerminal.open()
            pair = try UnixSocket.pair()
        } catch {
            return failStart("vm \(d.name): \(error)")
        }
        if let uid = owner.uid, uid != 0 {
            fchown(pty.slave, uid_t(uid), gid_t.max)
        }
        let pid: pid_t
        do {
            var args = [Spawn.selfExecutable, "_vm", d.name]
            if options.verbose > 0 { args.append("-v") }
            pid = try Spawn.run(Spawn.selfExecutable, args, fds: [0: pty.slave, 1: pty.slave, 2: 2, 3: pair.1])
        } catch {
            close(pty.master); close(pty.slave); close(pair.0); close(pair.1)
            return failStart("vm \(d.name): \(error)")
        }
        close(pty.slave)
        close(pair.1)
        let ch = ControlChannel(fd: pair.0)
        // The VM process has 30 s to say it started; a received one reads its whole
        // stream first (each read bounded by receiveReadTimeout), so it gets 10 minutes.
        UnixSocket.setTimeouts(pair.0, receive: received == nil ? 30 : 600, send: 30)

        state.withLock { _ in
            e.pid = pid
            e.ptyMaster = pty.master
            e.ttyPath = pty.path
            e.channel = ch
            e.running = d
            e.interfaces = interfaces
        }
        monitor(e, pid)

        var answer: ChildMessage?
        do {
            try ch.send(ParentMessage.spec(ChildSpec(vm: d, fake: options.fakeVMs, verbose: options.verbose,
                                                     files: files.files, dropTo: processIdentity,
                                                     interfaces: interfaces, restore: received?.stream.config)))
            try GuestFiles.send(files.fds, over: ch)
            let got = try ch.receive(ChildMessage.self)
            answer = got?.0
            if case .startedWithConsole(let path) = answer, let fd = got?.1.first {
                // The machine made its own pty: consoles attach to that one.
                for extra in got?.1.dropFirst() ?? [] { close(extra) }
                state.withLock { _ in
                    if e.ptyMaster >= 0 { close(e.ptyMaster) }
                    e.ptyMaster = fd
                    e.ttyPath = path
                }
                answer = .started
            } else {
                for f in got?.1 ?? [] { close(f) }
            }
        } catch {
            answer = .failed("\(error)")
        }
        UnixSocket.setTimeouts(pair.0, receive: nil, send: nil)
        switch answer {
        case .started:
            return state.withLock { _ in
                if e.state == .starting { e.state = .running }
                log.info("\(received == nil ? "started" : "received") vm \(e.id) (\(d.name)) pid \(pid) console \(e.ttyPath ?? pty.path)")
                return (.vm(status(e)), [])
            }
        case .failed(let m), .error(let m):
            kill(pid, SIGKILL)
            waitStopped(e)
            log.error("\(m)")
            return Self.fail(.failed, m)
        default:
            kill(pid, SIGKILL)
            waitStopped(e)
            return Self.fail(.failed, "vm \(d.name): the vm process exited while starting")
        }
    }
}
