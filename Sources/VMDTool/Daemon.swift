#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Control
import VMConfig
import VMDCore

struct DaemonOptions: Sendable {
    var configPath: String
    var macros: [String: String]
    var socketPath: String
    var fakeVMs: Bool
    var verbose: Int
    /// The user VM processes become when vmd runs as root (nil: _vmd, vmd or nobody).
    var vmUser: String? = nil
    /// Without --vm-user, VM process of VM id N runs as uid and gid vmUIDBase + N.
    var vmUIDBase: UInt32 = Daemon.defaultVMUIDBase
    /// Control connections: per user, in total, idle timeout (VMD_CLIENT_TIMEOUT overrides it).
    var limits = ConnectionLimits(
        idleTimeout: ProcessInfo.processInfo.environment["VMD_CLIENT_TIMEOUT"].flatMap(Double.init) ?? 10)
}

/// One VM known to vmd: from vm.conf, from `vmctl load`, or started on the fly.
final class VMEntry: @unchecked Sendable {
    let id: Int
    var definition: VMDefinition
    var fromConfig: Bool
    var owner: ResolvedOwner
    var state: VMRunState = .stopped
    var pid: pid_t?
    var running: VMDefinition?
    var ptyMaster: Int32 = -1
    var ttyPath: String?
    var channel: ControlChannel?
    var lastExit: String?
    /// Serializes messages to the VM process.
    let opLock = NSLock()

    init(id: Int, definition: VMDefinition, fromConfig: Bool, owner: ResolvedOwner) {
        self.id = id
        self.definition = definition
        self.fromConfig = fromConfig
        self.owner = owner
    }
}

/// vmd's state: the configuration, every VM and its process. One lock (a condition, so
/// `wait` can sleep on it) guards it all; slow work (spawning, talking to VM processes)
/// happens outside it.
final class Daemon: @unchecked Sendable {
    /// 2^30: far above login users (1000...), systemd's dynamic users (61184-65519) and the
    /// usual /etc/subuid ranges (100000 + 65536 per user), far below 2^32-1 (-1).
    static let defaultVMUIDBase: UInt32 = 1 << 30
    let options: DaemonOptions
    let users: any UserDatabase
    var log: Logger
    private let cond = NSCondition()
    private var config = VMConfiguration()
    private var vms: [VMEntry] = []
    private var nextID = 1
    private var listener: Int32 = -1
    /// The one user every VM process becomes (`--vm-user`); nil: each its own uid.
    let vmIdentity: DropIdentity?
    /// Control connections open per user (ConnectionLimits).
    let gate: ConnectionGate

    init(options: DaemonOptions, users: any UserDatabase = SystemUserDatabase(), log: Logger) {
        self.options = options
        self.users = users
        self.log = log
        vmIdentity = options.vmUser.flatMap { GuestFiles.dropIdentity(user: $0) }
        gate = ConnectionGate(options.limits)
        if geteuid() == 0 {
            if let id = vmIdentity {
                log.info("vm processes run as \(id.user) (uid \(id.uid)) once they hold their files")
            } else {
                log.info("vm processes run as uid and gid \(options.vmUIDBase) + the vm's id once they hold their files")
            }
        }
    }

    // MARK: configuration

    func parseConfig(_ path: String) throws(ConfigError) -> VMConfiguration {
        let parsed = try ConfigParser(macros: options.macros).parse(path: path)
        for w in parsed.warnings { log.warning("\(w)") }
        let owners = ConfigValidator.checkOwners(parsed.configuration, users: users)
        if !owners.isEmpty { throw ConfigError(owners) }
        return parsed.configuration
    }

    private func resolvedOwner(_ o: OwnerSpec?) -> ResolvedOwner {
        guard let o, let r = try? users.resolve(o) else { return ResolvedOwner(uid: 0, gid: nil) }
        return ResolvedOwner(uid: r.uid ?? (o.user == nil ? nil : 0), gid: r.gid)
    }

    /// Takes in a configuration: new VMs are added, stopped ones updated or (when `replace`
    /// and no longer configured) removed; running VMs are left alone. Returns VMs to start.
    private func apply(_ new: VMConfiguration, replace: Bool) -> [VMEntry] {
        cond.lock()
        defer { cond.unlock() }
        if replace {
            config = new
        } else {
            config.vms += new.vms
            config.switches += new.switches
        }
        let defs = ConfigValidator.resolvedVMs(new)
        var seen = Set<String>()
        var toStart: [VMEntry] = []
        for d in defs {
            seen.insert(d.name)
            if let e = vms.first(where: { $0.definition.name == d.name }) {
                if e.state == .stopped {
                    e.definition = d
                    e.owner = resolvedOwner(d.owner)
                }
                e.fromConfig = true
                if d.enabled && e.state == .stopped { toStart.append(e) }
            } else {
                let e = VMEntry(id: nextID, definition: d, fromConfig: true, owner: resolvedOwner(d.owner))
                nextID += 1
                vms.append(e)
                if d.enabled { toStart.append(e) }
            }
        }
        if replace {
            vms.removeAll { !seen.contains($0.definition.name) && $0.state == .stopped && $0.fromConfig }
        }
        return toStart
    }

    /// Starts VMs in the background, `parallel` at a time every `delay` seconds when
    /// `staggered start` is configured, else all at once.
    private func startInBackground(_ entries: [VMEntry]) {
        guard !entries.isEmpty else { return }
        cond.lock()
        let stagger = config.staggeredStart
        cond.unlock()
        let t = Thread { [self] in
            for (i, e) in entries.enumerated() {
                if let s = stagger, i > 0, i % max(s.parallel, 1) == 0 {
                    sleep(UInt32(max(s.delay, 0)))
                }
                var req = StartRequest(target: .id(e.id))
                req.attachConsole = false
                if case .failure(let f) = startVM(e, req, asRoot: true).0 {
                    log.error("\(f.message)")
                }
            }
        }
        t.start()
    }

    func loadInitialConfig() throws(ConfigError) {
        let c: VMConfiguration
        if access(options.configPath, F_OK) != 0 {
            log.info("\(options.configPath) not found: starting with no VMs")
            c = VMConfiguration()
        } else {
            c = try parseConfig(options.configPath)
        }
        startInBackground(apply(c, replace: true))
    }

    func reload() -> ControlReply {
        do {
            let c = try parseConfig(options.configPath)
            startInBackground(apply(c, replace: true))
            log.info("configuration reloaded from \(options.configPath)")
            return .ok(message: nil)
        } catch {
            log.error("reload failed, keeping the running configuration: \(error)")
            return .failure(ControlFailure(.configError, error.description))
        }
    }

    // MARK: serving

    func listen() throws {
        listener = try UnixSocket.listen(path: options.socketPath, mode: 0o660)
        cond.lock()
        let so = config.socketOwner
        cond.unlock()
        if let so {
            let r = resolvedOwner(so)
            chown(options.socketPath, r.uid.map { uid_t($0) } ?? uid_t.max, r.gid.map { gid_t($0) } ?? gid_t.max)
        }
        log.info("listening on \(options.socketPath)")
    }

    /// Accepts connections for ever: each admitted one (ConnectionGate: per user and in
    /// total) gets a thread; a refused one gets a reply saying why. A failing accept
    /// (EMFILE until a descriptor is closed) backs off up to 1 s instead of spinning.
    func serve() -> Never {
        var failures = 0
        while true {
            let fd: Int32
            do {
                fd = try UnixSocket.accept(listener)
                failures = 0
            } catch {
                failures += 1
                if failures == 1 { log.error("accept: \(error)") }
                usleep(UInt32(min(1_000_000, 10_000 << min(failures, 7))))
                continue
            }
            let ch = ControlChannel(fd: fd)
            guard let creds = try? ch.peerCredentials() else { continue }
            if let why = gate.admit(uid: creds.uid) {
                UnixSocket.setTimeouts(fd, receive: nil, send: 1)
                try? ch.send(ReplyFrame(.failure(ControlFailure(.failed, why))))
                log.debug("refused a connection from uid \(creds.uid) pid \(creds.pid): \(why)")
                continue
            }
            let t = Thread { [self] in
                self.connection(ch)
                self.gate.release(uid: creds.uid)
            }
            t.start()
        }
    }

    private func connection(_ ch: ControlChannel) {
        while true {
            let frame: RequestFrame
            // A silent client (the first request included) is dropped after the idle timeout.
            UnixSocket.setTimeouts(ch.fd, receive: gate.limits.idleTimeout, send: gate.limits.idleTimeout)
            do {
                guard let (f, fds) = try ch.receive(RequestFrame.self) else { return }
                for x in fds { close(x) }
                frame = f
            } catch let e as ControlError {
                if case .versionMismatch = e {
                    try? ch.send(ReplyFrame(.failure(ControlFailure(.versionMismatch, e.description))))
                } else {
                    try? ch.send(ReplyFrame(.failure(ControlFailure(.invalidRequest, e.description))))
                }
                return
            } catch {
                return
            }
            // Credentials are checked on every request, not once per connection.
            guard let creds = try? ch.peerCredentials() else { return }
            let (reply, fds) = handle(frame.request, from: creds)
            do { try ch.send(ReplyFrame(reply), fds: fds) } catch {}
            for x in fds { close(x) }
        }
    }

    // MARK: requests

    private func find(_ id: VMIdentifier) -> VMEntry? {
        switch id {
        case .id(let n): return vms.first { $0.id == n }
        case .name(let s): return vms.first { $0.definition.name == s }
        }
    }

    private func mayControl(_ e: VMEntry, _ c: PeerCredentials) -> Bool {
        if c.uid == 0 { return true }
        if let u = e.owner.uid, u == c.uid, u != 0 { return true }
        if let g = e.owner.gid, c.gid == g || users.groups(ofUID: c.uid).contains(g) { return true }
        return false
    }

    private func status(_ e: VMEntry) -> VMStatus {
        let d = e.running ?? e.definition
        return VMStatus(id: e.id, name: d.name, state: e.state, pid: e.pid, vcpus: d.vcpus ?? 1,
                        maxMemory: d.effectiveMemory,
                        currentMemory: e.state == .stopped ? 0 : d.effectiveMemory,
                        tty: e.ttyPath, owner: d.owner?.description ?? "root",
                        enabled: d.enabled, lastExit: e.lastExit)
    }

    private static func fail(_ c: ControlFailure.Code, _ m: String) -> (ControlReply, [Int32]) {
        (.failure(ControlFailure(c, m)), [])
    }

    /// Looks a VM up and checks the caller may act on it (under the lock).
    private func target(_ id: VMIdentifier, _ c: PeerCredentials) -> Result<VMEntry, ControlFailure> {
        guard let e = find(id) else {
            return .failure(ControlFailure(.unknownVM, "vm \(id): no such vm"))
        }
        guard mayControl(e, c) else {
            return .failure(ControlFailure(.permissionDenied, "vm \(e.definition.name): permission denied"))
        }
        return .success(e)
    }

    func handle(_ request: ControlRequest, from c: PeerCredentials) -> (ControlReply, [Int32]) {
        log.debug("request \(request.commandName) from uid \(c.uid) pid \(c.pid)")
        switch request {
        case .status(let id):
            cond.lock()
            defer { cond.unlock() }
            if let id {
                guard let e = find(id) else { return Self.fail(.unknownVM, "vm \(id): no such vm") }
                return (.status([status(e)]), [])
            }
            return (.status(vms.map(status)), [])

        case .start(let req):
            return startRequest(req, c)

        case .stop(let id, let force, let wait):
            var targets: [VMEntry] = []
            cond.lock()
            if let id {
                switch target(id, c) {
                case .failure(let f): cond.unlock(); return (.failure(f), [])
                case .success(let e):
                    guard e.state != .stopped else {
                        cond.unlock()
                        return Self.fail(.notRunning, "vm \(e.definition.name): not running")
                    }
                    targets = [e]
                }
            } else {
                targets = vms.filter { $0.state != .stopped && mayControl($0, c) }
            }
            cond.unlock()
            for e in targets { stopVM(e, force: force) }
            if wait {
                cond.lock()
                while targets.contains(where: { $0.state != .stopped }) { cond.wait() }
                cond.unlock()
            }
            if targets.count == 1 {
                cond.lock()
                defer { cond.unlock() }
                return (.vm(status(targets[0])), [])
            }
            return (.ok(message: targets.isEmpty ? "no vm running" : nil), [])

        case .console(let id):
            cond.lock()
            defer { cond.unlock() }
            switch target(id, c) {
            case .failure(let f): return (.failure(f), [])
            case .success(let e):
                guard e.state != .stopped, e.ptyMaster >= 0 else {
                    return Self.fail(.notRunning, "vm \(e.definition.name): not running")
                }
                let dup = fcntl(e.ptyMaster, F_DUPFD_CLOEXEC, 0)
                guard dup >= 0 else { return Self.fail(.failed, "console: \(SystemError("dup"))") }
                return (.vm(status(e)), [dup])
            }

        case .pause(let id), .unpause(let id):
            let pausing = { if case .pause = request { return true } else { return false } }()
            cond.lock()
            let e: VMEntry
            switch target(id, c) {
            case .failure(let f): cond.unlock(); return (.failure(f), [])
            case .success(let x): e = x
            }
            let want: VMRunState = pausing ? .running : .paused
            guard e.state == want, let ch = e.channel else {
                let n = e.definition.name
                cond.unlock()
                return Self.fail(.notRunning, pausing ? "vm \(n): not running" : "vm \(n): not paused")
            }
            cond.unlock()
            let answer = talk(e, ch, pausing ? .pause : .unpause)
            cond.lock()
            defer { cond.unlock() }
            if answer == "ok" {
                if e.state == want { e.state = pausing ? .paused : .running }
                cond.broadcast()
                log.info("vm \(e.definition.name) \(pausing ? "paused" : "unpaused")")
                return (.vm(status(e)), [])
            }
            return Self.fail(.failed, "vm \(e.definition.name): \(answer)")

        case .wait(let id):
            cond.lock()
            defer { cond.unlock() }
            switch target(id, c) {
            case .failure(let f): return (.failure(f), [])
            case .success(let e):
                while e.state != .stopped { cond.wait() }
                return (.vm(status(e)), [])
            }

        case .load(let path):
            guard c.uid == 0 else { return Self.fail(.permissionDenied, "load: permission denied") }
            do {
                let cfg = try parseConfig(path)
                cond.lock()
                let clash = cfg.vms.first { v in vms.contains { $0.definition.name == v.name && $0.state != .stopped } }
                cond.unlock()
                if let clash { return Self.fail(.alreadyRunning, "vm \(clash.name): already running") }
                startInBackground(apply(cfg, replace: false))
                return (.ok(message: nil), [])
            } catch {
                return Self.fail(.configError, error.description)
            }

        case .reload:
            guard c.uid == 0 else { return Self.fail(.permissionDenied, "reload: permission denied") }
            return (reload(), [])

        case .reset(let scope):
            guard c.uid == 0 else { return Self.fail(.permissionDenied, "reset: permission denied") }
            if scope == .vms || scope == .all {
                cond.lock()
                let running = vms.filter { $0.state != .stopped }
                cond.unlock()
                for e in running { stopVM(e, force: true) }
                cond.lock()
                while running.contains(where: { $0.state != .stopped }) { cond.wait() }
                cond.unlock()
            }
            if scope == .all { return (reload(), []) }
            if scope == .switches {
                // Bridges are made on demand and never reset or deleted yet: say so, not OK.
                return Self.fail(.failed, "reset switches: not supported yet (vmd does not reset or remove bridges)")
            }
            return (.ok(message: nil), [])

        case .log(let verbose):
            guard c.uid == 0 else { return Self.fail(.permissionDenied, "log: permission denied") }
            cond.lock()
            log.logLevel = verbose ? .debug : .info
            cond.unlock()
            log.info("log level \(verbose ? "verbose" : "brief")")
            return (.ok(message: nil), [])
        }
    }

    private func talk(_ e: VMEntry, _ ch: ControlChannel, _ m: ParentMessage) -> String {
        e.opLock.lock()
        defer { e.opLock.unlock() }
        do {
            try ch.send(m)
            guard let (reply, fds) = try ch.receive(ChildMessage.self) else { return "vm process went away" }
            for f in fds { close(f) }
            switch reply {
            case .ok: return "ok"
            case .error(let s), .failed(let s): return s
            case .started, .startedWithConsole: return "unexpected reply"
            }
        } catch {
            return "\(error)"
        }
    }

    // MARK: start / stop

    private func startRequest(_ req: StartRequest, _ c: PeerCredentials) -> (ControlReply, [Int32]) {
        cond.lock()
        var entry: VMEntry
        var instanceRequest: StartRequest?
        let overrides = !StartOverride.given(in: req).isEmpty
        if let template = req.template {
            // -t: a new VM `target` as an instance of `template`.
            guard case .name(let name) = req.target else {
                cond.unlock()
                return Self.fail(.invalidRequest, "start -t: give the new instance a name")
            }
            guard let parent = vms.first(where: { $0.definition.name == template }) else {
                cond.unlock()
                return Self.fail(.unknownVM, "vm \(template): no such vm")
            }
            guard find(.name(name)) == nil else {
                cond.unlock()
                return Self.fail(.alreadyRunning, "vm \(name): already exists")
            }
            guard ConfigValidator.isValidVMName(name) else {
                cond.unlock()
                return Self.fail(.invalidRequest, "vm \(name): invalid name")
            }
            let allow = parent.definition.allowInstance
            if c.uid != 0 {
                let permitted: Bool = {
                    guard let o = allow.owner, let r = try? users.resolve(o) else { return false }
                    if let u = r.uid, u == c.uid { return true }
                    if let g = r.gid, c.gid == g || users.groups(ofUID: c.uid).contains(g) { return true }
                    return false
                }()
                guard permitted else {
                    cond.unlock()
                    return Self.fail(.permissionDenied, "vm \(template): permission denied to create instances")
                }
                // initrd, cmdline, vcpus and accel have no `allow instance` keyword: root's only.
                let denied = StartOverride.denied(req, by: allow) != nil
                if denied {
                    cond.unlock()
                    return Self.fail(.permissionDenied, "vm \(template): instances may not change that setting")
                }
            }
            var d = VMDefinition(name: name, parent: template, location: parent.definition.location)
            d = d.inheriting(from: parent.definition)
            // The instance keeps the request's settings as its own (a later plain start of
            // it runs them again).
            d = Self.effective(d, req)
            instanceRequest = StartRequest(target: .id(nextID))
            instanceRequest?.attachConsole = req.attachConsole
            if c.uid != 0 { d.owner = OwnerSpec(user: Self.userName(c.uid)) }
            entry = VMEntry(id: nextID, definition: d, fromConfig: false,
                            owner: c.uid == 0 ? parent.owner : ResolvedOwner(uid: c.uid, gid: nil))
            nextID += 1
            vms.append(entry)
        } else if let e = find(req.target) {
            guard mayControl(e, c) else {
                cond.unlock()
                return Self.fail(.permissionDenied, "vm \(e.definition.name): permission denied")
            }
            if overrides && c.uid != 0 {
                cond.unlock()
                return Self.fail(.permissionDenied, "vm \(e.definition.name): only root may change its settings at start")
            }
            entry = e
        } else {
            // A VM not in the configuration: root may create one from the options alone.
            guard case .name(let name) = req.target else {
                cond.unlock()
                return Self.fail(.unknownVM, "vm \(req.target): no such vm")
            }
            guard c.uid == 0 else {
                cond.unlock()
                return Self.fail(.permissionDenied, "vm \(name): permission denied (only root may create vms)")
            }
            guard req.boot != nil || req.cdrom != nil || !req.disks.isEmpty else {
                cond.unlock()
                return Self.fail(.unknownVM, "vm \(name): no such vm (give -b, -r or -d to create one)")
            }
            guard ConfigValidator.isValidVMName(name) else {
                cond.unlock()
                return Self.fail(.invalidRequest, "vm \(name): invalid name")
            }
            let d = VMDefinition(name: name, location: SourceLocation(file: "vmctl", line: 0))
            entry = VMEntry(id: nextID, definition: d, fromConfig: false, owner: ResolvedOwner(uid: 0, gid: nil))
            nextID += 1
            vms.append(entry)
        }
        cond.unlock()
        var r = startVM(entry, instanceRequest ?? req, asRoot: c.uid == 0)
        if instanceRequest != nil, case .failure = r.0 {
            // An instance that never ran is not kept (1,000 failed starts, 0 entries).
            cond.lock()
            vms.removeAll { $0 === entry && $0.state == .stopped }
            cond.broadcast()
            cond.unlock()
        }
        if req.attachConsole, case .vm = r.0 {
            cond.lock()
            if entry.ptyMaster >= 0 {
                let dup = fcntl(entry.ptyMaster, F_DUPFD_CLOEXEC, 0)
                if dup >= 0 { r.1 = [dup] }
            }
            cond.unlock()
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

    /// The definition a start request runs: the VM's settings with the request's on top.
    static func effective(_ base: VMDefinition, _ req: StartRequest) -> VMDefinition {
        StartOverride.effective(base, req)
    }

    /// Checks the settings of a VM before its files are opened (GuestFiles.open).
    static func checkFiles(_ d: VMDefinition) -> String? {
        if d.disks.count > VMLimits.maxDisks { return "vm \(d.name): too many disks" }
        if d.cdrom != nil, d.disks.count >= VMLimits.maxDisks {
            return "vm \(d.name): too many disks: the cdrom takes a disk slot, so at most \(VMLimits.maxDisks - 1) disks with a cdrom"
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
    /// owner group alone, the VM-process user in that group only; nil (vmd's own rights)
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

    func startVM(_ e: VMEntry, _ req: StartRequest, asRoot: Bool) -> (ControlReply, [Int32]) {
        cond.lock()
        guard e.state == .stopped else {
            let s = e.state
            cond.unlock()
            return Self.fail(.alreadyRunning, "vm \(e.definition.name): already \(s == .paused ? "running (paused)" : "running")")
        }
        let d = Self.effective(e.definition, req)
        e.state = .starting
        e.lastExit = nil
        cond.unlock()

        func failStart(_ m: String) -> (ControlReply, [Int32]) {
            cond.lock()
            e.state = .stopped
            e.lastExit = "failed to start"
            cond.broadcast()
            cond.unlock()
            log.error("\(m)")
            return Self.fail(.failed, m)
        }
        if let problem = Self.checkFiles(d) { return failStart(problem) }
        if let device = d.bootDevice {
            // Until firmware boot reaches vmd (SeaBIOS in VMM), the kernel is loaded directly.
            log.warning("vm \(d.name): boot device \(device.rawValue) is not supported by vmd yet: ignored, booting \(d.boot ?? "the kernel") directly")
        }

        // vmd opens every guest file; the VM process gets descriptors only. A VM with a
        // non-root owner gets only files that owner could open (UserFileAccess).
        var files: OpenedGuestFiles
        let processIdentity = self.processIdentity(e)
        switch GuestFiles.open(d, as: fileIdentity(e.owner, vmUID: processIdentity?.uid ?? 65534)) {
        case .failure(let m): return failStart(m.description)
        case .success(let f): files = f
        }
        // Taps for the interfaces, their descriptors after the files (Network.swift).
        cond.lock()
        let currentConfig = config
        cond.unlock()
        let interfaces: [ChildInterface]
        switch VMNetwork.open(d, config: currentConfig, into: &files, log: log) {
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
        if let uid = e.owner.uid, uid != 0 {
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
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(pair.0, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))

        cond.lock()
        e.pid = pid
        e.ptyMaster = pty.master
        e.ttyPath = pty.path
        e.channel = ch
        e.running = d
        cond.unlock()
        monitor(e, pid)

        var answer: ChildMessage?
        do {
            try ch.send(ParentMessage.spec(ChildSpec(vm: d, fake: options.fakeVMs, verbose: options.verbose,
                                                     files: files.table, dropTo: processIdentity,
                                                     interfaces: interfaces)))
            try GuestFiles.send(files.fds, over: ch)
            let got = try ch.receive(ChildMessage.self)
            answer = got?.0
            if case .startedWithConsole(let path) = answer, let fd = got?.1.first {
                // The machine made its own pty: consoles attach to that one.
                for extra in got?.1.dropFirst() ?? [] { close(extra) }
                cond.lock()
                if e.ptyMaster >= 0 { close(e.ptyMaster) }
                e.ptyMaster = fd
                e.ttyPath = path
                cond.unlock()
                answer = .started
            } else {
                for f in got?.1 ?? [] { close(f) }
            }
        } catch {
            answer = .failed("\(error)")
        }
        tv = timeval(tv_sec: 0, tv_usec: 0)
        setsockopt(pair.0, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        switch answer {
        case .started:
            cond.lock()
            defer { cond.unlock() }
            if e.state == .starting { e.state = .running }
            cond.broadcast()
            log.info("started vm \(e.id) (\(d.name)) pid \(pid) console \(e.ttyPath ?? pty.path)")
            return (.vm(status(e)), [])
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

    private func waitStopped(_ e: VMEntry) {
        cond.lock()
        while e.state != .stopped { cond.wait() }
        cond.unlock()
    }

    /// Reaps the VM process whenever and however it ends, and records why.
    private func monitor(_ e: VMEntry, _ pid: pid_t) {
        let t = Thread { [self] in
            var st: Int32 = 0
            while waitpid(pid, &st, 0) < 0 {
                if errno != EINTR { st = 0; break }
            }
            let (why, code) = describeWaitStatus(st)
            cond.lock()
            let wasStopping = e.state == .stopping
            e.state = .stopped
            e.pid = nil
            if e.ptyMaster >= 0 { close(e.ptyMaster) }
            e.ptyMaster = -1
            e.ttyPath = nil
            e.channel = nil
            e.lastExit = e.lastExit ?? why
            e.running = nil
            cond.broadcast()
            cond.unlock()
            if code == 0 || wasStopping {
                log.info("vm \(e.id) (\(e.definition.name)) stopped: \(why)")
            } else {
                log.warning("vm \(e.id) (\(e.definition.name)) pid \(pid) died: \(why)")
            }
        }
        t.start()
    }

    func stopVM(_ e: VMEntry, force: Bool) {
        cond.lock()
        guard e.state != .stopped, let pid = e.pid else {
            cond.unlock()
            return
        }
        let ch = e.channel
        let wasPaused = e.state == .paused
        e.state = .stopping
        cond.unlock()
        if force {
            kill(pid, SIGKILL)
            return
        }
        if let ch {
            if wasPaused { _ = talk(e, ch, .unpause) }
            let r = talk(e, ch, .shutdown)
            if r != "ok" { kill(pid, SIGKILL) }
        } else {
            kill(pid, SIGTERM)
        }
    }

    /// SIGTERM: stop every VM (forcibly after a grace period) and leave.
    func shutdownAll() -> Never {
        cond.lock()
        let running = vms.filter { $0.state != .stopped }
        cond.unlock()
        for e in running { stopVM(e, force: false) }
        let deadline = Date().addingTimeInterval(10)
        cond.lock()
        while running.contains(where: { $0.state != .stopped }) && Date() < deadline {
            _ = cond.wait(until: min(deadline, Date().addingTimeInterval(0.2)))
        }
        cond.unlock()
        for e in running where e.state != .stopped { if let p = e.pid { kill(p, SIGKILL) } }
        unlink(options.socketPath)
        log.info("terminating")
        exit(0)
    }
}
