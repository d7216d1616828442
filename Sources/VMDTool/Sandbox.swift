#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CKVM
import VMDCore

/// The VM process's seccomp sandbox (issue 11, section 2; docs/vmd.md "The VM process's
/// sandbox"). Installed by `VMProcessMain.run` once the process holds every descriptor it
/// will use and has dropped root, before the guest runner starts: from then on a system call
/// outside `VMProcessSyscalls.filter` (the surveyed list) kills the whole process with SIGSYS,
/// and vmd reports the VM stopped with that reason.
enum Sandbox {
    /// `SWIFTVMM_SANDBOX=off` in vmd's environment leaves VM processes without the filter
    /// (debugging: strace of a call the list lacks). Anything else, or nothing, means on.
    static var enabled: Bool {
        ProcessInfo.processInfo.environment["SWIFTVMM_SANDBOX"] != "off"
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// no_new_privs, then the filter on every thread (SECCOMP_FILTER_FLAG_TSYNC: the
    /// threads the machine already runs, a console reader for instance, are covered too).
    static func install() throws {
        guard enabled else { return }
        let program: [BPFInstruction]
        do {
            program = try VMProcessSyscalls.filter(pid: getpid()).compile()
        } catch {
            throw Failure(description: "seccomp filter: \(error)")
        }
        guard ckvm_set_no_new_privs() == 0 else {
            throw Failure(description: "prctl(PR_SET_NO_NEW_PRIVS): \(String(cString: strerror(errno)))")
        }
        let code = program.map { sock_filter(code: $0.code, jt: $0.jt, jf: $0.jf, k: $0.k) }
        // SAFETY: the kernel copies the program during the call; `code` outlives it.
        let rc = code.withUnsafeBufferPointer { ckvm_seccomp_set_filter($0.baseAddress, UInt16($0.count), 1) }
        if rc < 0 { throw Failure(description: "seccomp(SECCOMP_SET_MODE_FILTER): \(String(cString: strerror(errno)))") }
        if rc > 0 { throw Failure(description: "seccomp: thread \(rc) could not take the filter (TSYNC)") }
    }

    /// Test hook: `SWIFTVMM_SANDBOX_TEST_SYSCALL=NAME` in vmd's environment makes the VM
    /// process, right after installing the filter, attempt a system call the filter forbids
    /// (`execve`: run /bin/true; `socket`: an AF_PACKET socket). With the filter on the
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
        case "socket":
            let fd = socket(AF_PACKET, Int32(SOCK_RAW.rawValue), 0)
            printError("vmd: sandbox test: socket(AF_PACKET) returned \(fd)")
            if fd >= 0 { close(fd) }
        default:
            printError("vmd: sandbox test: unknown system call \(name) (known: execve, socket)")
        }
    }
}
