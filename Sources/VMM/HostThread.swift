#if canImport(Glibc)
import Glibc
#endif
import KVM

/// A plain POSIX thread. vCPUs run on these, never on Swift's cooperative task pool:
/// KVM_RUN blocks for as long as the guest runs.
final class HostThread: @unchecked Sendable {
    private final class Start {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) { self.name = name; self.body = body }
    }

    private var thread: pthread_t
    private var joined = false

    /// Starts `body` on a new thread named `name` (at most 15 characters are kept).
    init(name: String, body: @escaping @Sendable () -> Void) throws {
        let start = Unmanaged.passRetained(Start(name: name, body: body))
        var tid = pthread_t()
        // SAFETY: the retained Start object is handed to the new thread, which takes
        // ownership (takeRetainedValue) exactly once; on failure we release it here.
        let rc = pthread_create(&tid, nil, { arg in
            guard let arg else { return nil }
            let start = Unmanaged<Start>.fromOpaque(arg).takeRetainedValue()
            HostThread.setName(start.name)
            start.body()
            return nil
        }, start.toOpaque())
        guard rc == 0 else {
            start.release()
            throw VMMError.threadCreationFailed(name, errno: rc)
        }
        thread = tid
    }

    /// Names the calling thread (shown by ps/top/gdb): prctl(PR_SET_NAME) through the KVM
    /// layer's shim, no /proc file (the VM process's sandbox refuses open).
    static func setName(_ name: String) {
        VCPUThread.nameCurrentThread(name)
    }

    /// Waits for the thread to finish. Call once, from another thread.
    func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }
}
