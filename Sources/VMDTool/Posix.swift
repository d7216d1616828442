#if canImport(Glibc)
import Glibc
#endif

/// A system call failed: names the call and what it was for.
struct SystemError: Error, CustomStringConvertible {
    var what: String
    var errno: Int32
    init(_ what: String, _ e: Int32 = Glibc.errno) {
        self.what = what
        self.errno = e
    }
    var description: String { "\(what): \(String(cString: strerror(errno)))" }
}

/// A pseudo-terminal pair for a VM's serial console.
struct PseudoTerminal {
    var master: Int32
    var slave: Int32
    var path: String

    private static let TIOCSPTLCK: UInt = 0x4004_5431
    private static let TIOCGPTN: UInt = 0x8004_5430
    private static let TIOCGPTPEER: UInt = 0x5441

    static func open() throws -> PseudoTerminal {
        let m = Glibc.open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard m >= 0 else { throw SystemError("open /dev/ptmx") }
        var unlock: Int32 = 0
        var n: UInt32 = 0
        guard ioctl(m, TIOCSPTLCK, &unlock) == 0, ioctl(m, TIOCGPTN, &n) == 0 else {
            let e = SystemError("unlock pty")
            close(m)
            throw e
        }
        let s = ioctl(m, TIOCGPTPEER, Int32(O_RDWR | O_NOCTTY | O_CLOEXEC))
        guard s >= 0 else {
            let e = SystemError("open pty slave")
            close(m)
            throw e
        }
        // Raw: the guest's serial port sees bytes as typed; no echo from the host side.
        var t = termios()
        if tcgetattr(s, &t) == 0 {
            cfmakeraw(&t)
            tcsetattr(s, TCSANOW, &t)
        }
        return PseudoTerminal(master: m, slave: s, path: "/dev/pts/\(n)")
    }
}

/// posix_spawn of this same executable (never fork without exec).
enum Spawn {
    static let POSIX_SPAWN_SETSID: Int32 = 0x80

    static var selfExecutable: String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        if n > 0 { return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        return CommandLine.arguments[0]
    }

    /// Starts `path` with `args` (argv[0] included), `fds` mapped as child fd -> parent fd.
    /// The child gets an empty signal mask, default signal actions and its own session.
    static func run(_ path: String, _ args: [String], fds: [Int32: Int32], env: [String]? = nil) throws -> pid_t {
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        // dup2 to a fresh number first so mappings cannot clobber each other.
        var temp: [Int32: Int32] = [:]
        for (child, parent) in fds.sorted(by: { $0.key < $1.key }) {
            let t = fcntl(parent, F_DUPFD_CLOEXEC, 100)
            guard t >= 0 else { throw SystemError("dup fd \(parent)") }
            temp[child] = t
        }
        defer { for t in temp.values { close(t) } }
        for (child, t) in temp { posix_spawn_file_actions_adddup2(&fa, t, child) }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var deflt = sigset_t()
        sigemptyset(&deflt)
        for s in [SIGHUP, SIGTERM, SIGINT, SIGPIPE, SIGCHLD, SIGUSR1] { sigaddset(&deflt, s) }
        posix_spawnattr_setsigdefault(&attr, &deflt)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID))
        let cargs = args.map { strdup($0) } + [nil]
        defer { for a in cargs { free(a) } }
        let environment = env ?? currentEnvironment()
        let cenv = environment.map { strdup($0) } + [nil]
        defer { for e in cenv { free(e) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &fa, &attr, cargs, cenv)
        guard rc == 0 else { throw SystemError("spawn \(path)", rc) }
        return pid
    }

    static func currentEnvironment() -> [String] {
        var out: [String] = []
        var p = environ
        while let s = p.pointee {
            out.append(String(cString: s))
            p += 1
        }
        return out
    }
}

/// How a child ended, in words.
func describeWaitStatus(_ status: Int32) -> (String, Int32?) {
    let sig = status & 0x7f
    if sig == 0 {
        let code = (status >> 8) & 0xff
        return (code == 0 ? "exited normally" : "exited with status \(code)", code)
    }
    if sig == SIGSYS {
        return ("killed by signal \(sig) (SIGSYS): it made a system call its seccomp sandbox forbids", nil)
    }
    return ("killed by signal \(sig)" + (sig == SIGKILL ? " (SIGKILL)" : ""), nil)
}

/// Writes a line to standard error.
func printError(_ s: String) {
    let line = s.hasSuffix("\n") ? s : s + "\n"
    var b = Array(line.utf8)
    _ = write(2, &b, b.count)
}
