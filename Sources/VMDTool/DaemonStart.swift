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
    /// The entry a start request starts (creating it for -t or a new name, by the rules of
    /// VMDCore/AccessRules.swift), or why not; with the request to run it with (an
    /// instance's settings are its own, so its start request is plain).
    private func entryToStart(_ s: inout DaemonState, _ req: StartRequest, _ c: PeerCredentials)
        -> Result<(VMEntry, StartRequest, created: Bool), ControlFailure> {
        let known = s.vms.map { AccessRules.Known(id: $0.id, definition: $0.definition, owner: $0.owner) }
        switch rules.startTarget(req, c, among: known) {
        case .failure(let f): return .failure(f)
        case .success(.existing(let id)):
            guard let e = s.find(.id(id)) else { return .failure(ControlFailure(.unknownVM, "vm \(req.target): no such vm")) }
            return .success((e, req, false))
        case .success(.new(let d, let owner, let instance)):
            let e = s.add(d, fromConfig: false, owner: owner)
            guard instance else { return .success((e, req, false)) }
            var plain = StartRequest(target: .id(e.id))
            plain.attachConsole = req.attachConsole
            return .success((e, plain, true))
        }
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

    /// A user's name and primary group from passwd; nil without an entry.
    static func passwdEntry(_ uid: UInt32) -> (name: String, gid: UInt32)? {
        var pw = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buf = [CChar](repeating: 0, count: 16384)
        // SAFETY: buf outlives the call; pw's strings point into it and are copied at once.
        guard getpwuid_r(uid, &pw, &buf, buf.count, &result) == 0, result != nil, let n = pw.pw_name else { return nil }
        return (String(cString: n), pw.pw_gid)
    }

    /// A user's name for display (the number when it has none).
    static func userName(_ uid: UInt32) -> String { passwdEntry(uid)?.name ?? String(uid) }

    /// A user's primary group; nil without a passwd entry.
    static func primaryGID(_ uid: UInt32) -> UInt32? { passwdEntry(uid)?.gid }

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
        let processIdentity: DropIdentity?
        switch self.processIdentity(e) {
        case .failure(let m): return failStart("vm \(d.name): \(m)")
        case .success(let id): processIdentity = id
        }
        let owner = state.withLock { _ in e.owner }
        var toOpen = d
        if received != nil { toOpen.boot = nil; toOpen.initrd = nil }   // RAM comes from the stream
        switch GuestFiles.open(toOpen, as: rules.fileIdentity(owner, vmUID: processIdentity?.uid ?? 65534)) {
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
        let cgroup: String?
        switch placeInCgroup(pid, e, d) {
        case .success(let dir): cgroup = dir
        case .failure(let p):
            kill(pid, SIGKILL)
            var st: Int32 = 0
            while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
            close(pty.master); close(pair.0)
            return failStart("vm \(d.name): \(p)")
        }
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
            e.cgroup = cgroup
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
