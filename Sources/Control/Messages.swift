import VMConfig

/// The vmctl <-> vmd protocol: one JSON request per frame, one JSON reply per frame (a
/// `wait`/`stop -w` reply comes when the VM has stopped). Every frame carries the protocol
/// version; a peer with another version gets `versionMismatch` and nothing else happens.
public enum ControlProtocol {
    public static let version = 1
    /// Largest frame either side accepts.
    public static let maxFrameSize = 1 << 20
    public static let defaultSocketPath = "/var/run/vmd.sock"
}

/// A VM as vmctl names it: a number is an id, anything else a name.
public enum VMIdentifier: Codable, Hashable, Sendable, CustomStringConvertible {
    case id(Int)
    case name(String)

    public init(parsing text: String) {
        if let n = Int(text), n > 0 { self = .id(n) } else { self = .name(text) }
    }
    public var description: String {
        switch self {
        case .id(let n): return String(n)
        case .name(let s): return s
        }
    }
}

/// `vmctl start` with its overrides of the configured VM.
public struct StartRequest: Codable, Hashable, Sendable {
    public var target: VMIdentifier
    /// -t: start `target` (a new name) as an instance of this VM.
    public var template: String?
    public var boot: String?
    public var bootDevice: BootDevice?
    public var cdrom: String?
    public var disks: [DiskSpec] = []
    public var interfaceCount: Int?
    /// -L: add a local interface.
    public var localInterface = false
    /// -n: switches for additional interfaces.
    public var switches: [String] = []
    public var memory: UInt64?
    public var vcpus: Int?
    public var initrd: String?
    public var cmdline: String?
    public var accel: Accelerator?
    /// --cpu-level: the software CPU's instruction-set level.
    public var cpuLevel: CPULevel?
    /// -c: the reply carries the console's pty as a file descriptor.
    public var attachConsole = false
    public init(target: VMIdentifier) { self.target = target }
}

public enum ResetScope: String, Codable, Hashable, Sendable, CaseIterable {
    case all, switches, vms
}

public enum ControlRequest: Codable, Hashable, Sendable {
    case start(StartRequest)
    /// nil target: all VMs (`stop -a`).
    case stop(target: VMIdentifier?, force: Bool, wait: Bool)
    case status(target: VMIdentifier?)
    /// Reply carries the console pty master as a file descriptor.
    case console(target: VMIdentifier)
    case pause(target: VMIdentifier)
    case unpause(target: VMIdentifier)
    /// Reply comes when the VM has stopped.
    case wait(target: VMIdentifier)
    case load(path: String)
    case reload
    case reset(ResetScope)
    case log(verbose: Bool)
    /// `vmctl send`: the reply carries a descriptor from which the VM's state stream
    /// (docs/snapshot.md) is read; the VM stops once the stream is written.
    case send(target: VMIdentifier)
    /// `vmctl receive`: the request carries one descriptor, the state stream to read; vmd
    /// starts it as VM `name` with start's checks (docs/snapshot.md, "vmctl receive").
    /// `disks` (`-d`): the receiving side's disk images; empty: the VM's vm.conf disks.
    /// `template` (`-t`): `name` is a new instance of that VM, by its `allow instance` rules.
    case receive(name: String, disks: [DiskSpec], template: String? = nil)

    /// The vmctl command name, for logs and errors.
    public var commandName: String {
        switch self {
        case .start: return "start"
        case .stop: return "stop"
        case .status: return "status"
        case .console: return "console"
        case .pause: return "pause"
        case .unpause: return "unpause"
        case .wait: return "wait"
        case .load: return "load"
        case .reload: return "reload"
        case .reset: return "reset"
        case .log: return "log"
        case .send: return "send"
        case .receive: return "receive"
        }
    }
}

public enum VMRunState: String, Codable, Hashable, Sendable {
    case stopped, starting, running, paused, stopping
}

/// One row of `vmctl status`.
public struct VMStatus: Codable, Hashable, Sendable {
    public var id: Int
    public var name: String
    public var state: VMRunState
    public var pid: Int32?
    public var vcpus: Int
    public var maxMemory: UInt64
    public var currentMemory: UInt64
    /// The console pty, e.g. /dev/pts/3.
    public var tty: String?
    public var owner: String
    public var enabled: Bool
    /// Why it last stopped ("killed by signal 9", "guest powered off", ...).
    public var lastExit: String?
    public init(id: Int, name: String, state: VMRunState, pid: Int32? = nil, vcpus: Int = 1,
                maxMemory: UInt64 = 0, currentMemory: UInt64 = 0, tty: String? = nil,
                owner: String = "root", enabled: Bool = true, lastExit: String? = nil) {
        self.id = id; self.name = name; self.state = state; self.pid = pid; self.vcpus = vcpus
        self.maxMemory = maxMemory; self.currentMemory = currentMemory; self.tty = tty
        self.owner = owner; self.enabled = enabled; self.lastExit = lastExit
    }
}

public struct ControlFailure: Error, Codable, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Codable, Hashable, Sendable {
        case unknownVM, permissionDenied, invalidRequest, alreadyRunning, notRunning
        case configError, failed, versionMismatch
    }
    public var code: Code
    public var message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

public enum ControlReply: Codable, Hashable, Sendable {
    case ok(message: String?)
    case failure(ControlFailure)
    case status([VMStatus])
    /// start/console/pause/...: the VM after the operation (console: fd attached).
    case vm(VMStatus)
}

public protocol VersionedFrame { var version: Int { get } }

public struct RequestFrame: Codable, Hashable, Sendable, VersionedFrame {
    public var version: Int
    public var request: ControlRequest
    public init(_ request: ControlRequest, version: Int = ControlProtocol.version) {
        self.version = version
        self.request = request
    }
}

public struct ReplyFrame: Codable, Hashable, Sendable, VersionedFrame {
    public var version: Int
    public var reply: ControlReply
    public init(_ reply: ControlReply, version: Int = ControlProtocol.version) {
        self.version = version
        self.reply = reply
    }
}
