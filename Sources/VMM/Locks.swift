#if canImport(Glibc)
import Glibc
#endif
import Hypervisor

/// A pthread mutex with a condition variable, heap-allocated so its address never moves.
/// Used for the machine's run-control state (pause, stop, halted vCPUs).
final class ConditionLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    init() {
        // SAFETY: both objects are allocated here, initialised before use and destroyed
        // and freed only in deinit, when no thread can hold a reference any more.
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    @inline(__always) func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) func unlock() { pthread_mutex_unlock(mutex) }

    @inline(__always)
    func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits for a broadcast; call with the lock held.
    func wait() { pthread_cond_wait(cond, mutex) }

    /// Waits for a broadcast or until `seconds` pass; call with the lock held.
    func wait(seconds: Double) {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let total = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9 + seconds
        var deadline = timespec()
        deadline.tv_sec = Int(total)
        deadline.tv_nsec = Int((total - Double(Int(total))) * 1e9)
        pthread_cond_timedwait(cond, mutex, &deadline)
    }

    func broadcast() { pthread_cond_broadcast(cond) }
}

/// The machine's one device lock (QEMU calls it the big QEMU lock): every access to a
/// device model, from any vCPU thread, the console input thread or a backend thread,
/// happens with it held, so device models stay plain single-threaded state machines.
public final class DeviceLock: @unchecked Sendable {
    private let mutex = HostMutex()

    public init() {}

    @inline(__always)
    public func withLock<R>(_ body: () throws -> R) rethrows -> R {
        try mutex.withLock(body)
    }
}
