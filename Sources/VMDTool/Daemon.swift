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
    /// The one user every VM process becomes (nil: each VM process its own uid).
    var vmUser: String? = nil
    /// Without --vm-user, VM process of VM id N runs as uid and gid base + N.
    var vmUIDs = VMUIDRange(base: Daemon.defaultVMUIDBase)
    /// Where VM processes' cgroups go: nil for vmd's own cgroup v2 directory, "none" for no cgroups.
    var cgroup: String? = nil
    /// Control connections: per user, in total, idle timeout (VMD_CLIENT_TIMEOUT overrides it).
    var limits = ConnectionLimits(
        idleTimeout: ProcessInfo.processInfo.environment["VMD_CLIENT_TIMEOUT"].flatMap(Double.init) ?? 10)
}

/// One VM known to vmd: from vm.conf, from `vmctl load`, or started on the fly. Its
/// mutable fields belong to `Daemon.state`: read and written only inside `state.withLock`.
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
    /// The running VM's taps and where they are attached (Network.swift).
    var interfaces: [ChildInterface] = []
    /// The running VM process's cgroup directory (VMCgroups.swift), removed once it is reaped.
    var cgroup: String?
    /// Serializes messages to the VM process (held while talking, never with `state`'s lock).
    let opLock = NSLock()

    init(id: Int, definition: VMDefinition, fromConfig: Bool, owner: ResolvedOwner) {
        self.id = id
        self.definition = definition
        self.fromConfig = fromConfig
        self.owner = owner
    }
}

/// What `Daemon.state` guards: the configuration and every VM.
struct DaemonState {
    var config = VMConfiguration()
    var vms: [VMEntry] = []
    var nextID = 1

    func find(_ id: VMIdentifier) -> VMEntry? {
        switch id {
        case .id(let n): return vms.first { $0.id == n }
        case .name(let s): return vms.first { $0.definition.name == s }
        }
    }

    /// A new entry with the next id, added to the list.
    mutating func add(_ d: VMDefinition, fromConfig: Bool, owner: ResolvedOwner) -> VMEntry {
        let e = VMEntry(id: nextID, definition: d, fromConfig: fromConfig, owner: owner)
        nextID += 1
        vms.append(e)
        return e
    }
}

/// vmd: one owner of its state (`state`, a `Guarded`: scoped locking, waiters woken on
/// every change); slow work (spawning, talking to VM processes) happens outside the lock.
/// The concerns live in their own files: configuration (DaemonConfig.swift), the control
/// socket (DaemonServe.swift), one handler per request (DaemonRequests.swift), starting
/// (DaemonStart.swift) and stopping (DaemonStop.swift) VMs.
final class Daemon: @unchecked Sendable {
    /// 2^30: far above login users (1000...), systemd's dynamic users (61184-65519) and the
    /// usual /etc/subuid ranges (100000 + 65536 per user), far below 2^32-1 (-1).
    static let defaultVMUIDBase: UInt32 = 1 << 30
    let options: DaemonOptions
    let users: any UserDatabase
    /// Who may act on a VM, what a start request starts (VMDCore/AccessRules.swift).
    let rules: AccessRules
    /// Written only by `vmctl log` (under `state`'s lock).
    var log: Logger
    let state = Guarded(DaemonState())
    var listener: Int32 = -1
    /// The one user every VM process becomes (`--vm-user`); nil: each its own uid.
    let vmIdentity: DropIdentity?
    /// Control connections open per user (ConnectionLimits).
    let gate: ConnectionGate
    /// Where each VM process gets a cgroup of its own; nil: no cgroups (DaemonCgroups.swift).
    let cgroups: VMCgroupTree?

    init(options: DaemonOptions, users: any UserDatabase = SystemUserDatabase(), log: Logger) {
        self.options = options
        self.users = users
        rules = AccessRules(users: users, userName: { Daemon.userName($0) }, primaryGID: { Daemon.primaryGID($0) })
        self.log = log
        vmIdentity = options.vmUser.flatMap { GuestFiles.dropIdentity(user: $0) }
        gate = ConnectionGate(options.limits)
        cgroups = Self.setUpCgroups(options.cgroup, log: log)
        if geteuid() == 0 {
            if let id = vmIdentity {
                log.info("vm processes run as \(id.user) (uid \(id.uid)) once they hold their files")
            } else {
                log.info("vm processes run as uid and gid \(options.vmUIDs.base) + the vm's id (ids 1...\(options.vmUIDs.count - 1)), without supplementary groups, once they hold their files")
            }
        }
    }

    // MARK: rules (called with the state lock held)

    func mayControl(_ e: VMEntry, _ c: PeerCredentials) -> Bool {
        rules.mayControl(e.owner, c)
    }

    func status(_ e: VMEntry) -> VMStatus {
        let d = e.running ?? e.definition
        return VMStatus(id: e.id, name: d.name, state: e.state, pid: e.pid, vcpus: d.vcpus ?? 1,
                        maxMemory: d.effectiveMemory,
                        currentMemory: e.state == .stopped ? 0 : d.effectiveMemory,
                        tty: e.ttyPath, owner: d.owner?.description ?? "root",
                        enabled: d.enabled, lastExit: e.lastExit)
    }

    static func fail(_ c: ControlFailure.Code, _ m: String) -> (ControlReply, [Int32]) {
        (.failure(ControlFailure(c, m)), [])
    }

    /// Looks a VM up and checks the caller may act on it.
    func target(_ s: DaemonState, _ id: VMIdentifier, _ c: PeerCredentials) -> Result<VMEntry, ControlFailure> {
        guard let e = s.find(id) else {
            return .failure(ControlFailure(.unknownVM, "vm \(id): no such vm"))
        }
        guard mayControl(e, c) else {
            return .failure(ControlFailure(.permissionDenied, "vm \(e.definition.name): permission denied"))
        }
        return .success(e)
    }

    /// Sleeps until `e` has stopped.
    func waitStopped(_ e: VMEntry) {
        state.wait { _ in e.state == .stopped ? true : nil }
    }
}
