#if canImport(Glibc)
import Glibc
#endif
import CKVM

/// A plain pthread for a vCPU run loop. KVM_RUN blocks for as long as the guest runs, so it
/// must never run on Swift's cooperative thread pool; each vCPU gets one of these.
///
/// Generic: it runs any `@Sendable` body once and can be joined. The VMM builds its run
/// loop (and its kick/pause protocol) inside the body.
public final class VCPUThread: @unchecked Sendable {
    public let name: String
    private var thread: pthread_t = 0
    private var joined = false

    private final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        let name: String
        init(_ body: @escaping @Sendable () -> Void, name: String) { self.body = body; self.name = name }
    }

    /// Names the calling thread (at most 15 characters; ps/top/gdb show it) without opening a
    /// file, so it works inside the VM process's seccomp sandbox too.
    public static func nameCurrentThread(_ name: String) {
        _ = ckvm_set_thread_name(name)
    }

    /// Starts a thread named `name` (at most 15 characters are kept) running `body`.
    public init(name: String, stackSize: Int = 1 << 20, body: @escaping @Sendable () -> Void) throws {
        self.name = name
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        defer { pthread_attr_destroy(&attr) }
        pthread_attr_setstacksize(&attr, max(stackSize, 64 << 10))
        let box = Unmanaged.passRetained(Box(body, name: name))
        // SAFETY: the retained box is released exactly once, by the new thread.
        let rc = pthread_create(&thread, &attr, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            _ = ckvm_set_thread_name(box.name)
            // Threads inherit the creator's signal mask; Swift's pool threads block the
            // kick signal, which a vCPU thread must receive.
            _ = ckvm_unblock_signal(kvmKickSignal)
            box.body()
            return nil
        }, box.toOpaque())
        if rc != 0 {
            box.release()
            throw KVMError.invalidArgument("cannot start thread \(name): \(String(cString: strerror(rc)))")
        }
    }

    /// Waits for the body to return. Call once, from another thread.
    public func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }

    deinit {
        if !joined { pthread_detach(thread) }
    }
}
