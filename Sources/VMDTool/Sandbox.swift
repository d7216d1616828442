#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CKVM
import VMDCore

/// The VM process's sandbox, Landlock and seccomp (issue 11, section 2; docs/vmd.md "The VM process's
/// sandbox"). Installed by `VMProcessMain.run` once the process holds every descriptor it
/// will use and has dropped root, before the guest runner starts: from then on a system call
/// outside `VMProcessSyscalls.filter` (the surveyed list) kills the whole process with SIGSYS,
/// and vmd reports the VM stopped with that reason.
enum Sandbox {
    /// `SWIFTVMM_SANDBOX` in vmd's environment: `off` leaves VM processes without a sandbox,
    /// `landlock` gives them Landlock only (debugging: strace of a call the seccomp list
    /// lacks; tests). Anything else, or nothing: Landlock and the seccomp filter.
    enum Mode { case off, landlockOnly, full }
    static var mode: Mode {
        switch ProcessInfo.processInfo.environment["SWIFTVMM_SANDBOX"] {
        case "off": return .off
        case "landlock": return .landlockOnly
        default: return .full
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// no_new_privs, the Landlock domain, then the seccomp filter on every thread
    /// (SECCOMP_FILTER_FLAG_TSYNC). Landlock binds the calling thread and the threads it
    /// creates later, so it is applied while the process has one thread (checked).
    static func install() throws {
        let mode = self.mode
        guard mode != .off else { return }
        guard ckvm_set_no_new_privs() == 0 else {
            throw Failure(description: "prctl(PR_SET_NO_NEW_PRIVS): \(String(cString: strerror(errno)))")
        }
        try restrictFiles()
        guard mode == .full else { return }
        let program: [BPFInstruction]
        do {
            program = try VMProcessSyscalls.filter(pid: getpid()).compile()
        } catch {
            throw Failure(description: "seccomp filter: \(error)")
        }
        let code = program.map { sock_filter(code: $0.code, jt: $0.jt, jf: $0.jf, k: $0.k) }
        // SAFETY: the kernel copies the program during the call; `code` outlives it.
        let rc = code.withUnsafeBufferPointer { ckvm_seccomp_set_filter($0.baseAddress, UInt16($0.count), 1) }
        if rc < 0 { throw Failure(description: "seccomp(SECCOMP_SET_MODE_FILTER): \(String(cString: strerror(errno)))") }
        if rc > 0 { throw Failure(description: "seccomp: thread \(rc) could not take the filter (TSYNC)") }
    }

    /// Landlock with every right handled and none granted (`LandlockPolicy`). A kernel without
    /// Landlock gets a warning on stderr (vmd's log) and the seccomp filter alone.
    static func restrictFiles() throws {
        let abi = ckvm_landlock_abi()
        guard let policy = LandlockPolicy.denyAll(abi: Int(abi)) else {
            printError("vmd: VM process \(getpid()): Landlock is not available (\(String(cString: strerror(errno)))); seccomp only")
            return
        }
        let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? 0
        guard threads == 1 else {
            throw Failure(description: "Landlock: \(threads) threads run already; it would bind only the calling one")
        }
        guard ckvm_landlock_restrict_all(policy.fs, policy.net, policy.scoped) == 0 else {
            throw Failure(description: "Landlock (ABI \(abi)): \(String(cString: strerror(errno)))")
        }
    }

    /// Test hook: `SWIFTVMM_SANDBOX_TEST_SYSCALL=NAME` in vmd's environment makes the VM
    /// process, right after installing the filter, attempt a system call the filter forbids
    /// (`execve`: run /bin/true; `socket`: an AF_PACKET socket; `open`: read /etc/passwd). With the filter on the
    /// process dies of SIGSYS there. Without it the call runs: the socket call's result is
    /// printed on stderr and the guest carries on; execve replaces the process with
    /// /bin/true. Read only here, in the VM process.
    static func runTestHook() {
        guard let name = ProcessInfo.processInfo.environment["SWIFTVMM_SANDBOX_TEST_SYSCALL"] else { return }
        switch name {
        case "execve":
            let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
            let envp: [UnsafeMutablePointer<CChar>?] = [nil]
            _ = execve("/bin/true", argv, envp)
            printError("vmd: sandbox test: execve returned: \(String(cString: strerror(errno)))")
        case "open":
            // Not a killing call (the filter answers EACCES): Landlock's refusal shows with
            // SWIFTVMM_SANDBOX=landlock.
            let fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC)
            printError("vmd: sandbox test: open(/etc/passwd) " + (fd >= 0 ? "succeeded" : "failed: \(String(cString: strerror(errno)))"))
            if fd >= 0 { close(fd) }
        case "socket":
            let fd = socket(AF_PACKET, Int32(SOCK_RAW.rawValue), 0)
            printError("vmd: sandbox test: socket(AF_PACKET) returned \(fd)")
            if fd >= 0 { close(fd) }
        default:
            printError("vmd: sandbox test: unknown system call \(name) (known: execve, socket, open)")
        }
    }
}
