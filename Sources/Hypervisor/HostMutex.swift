#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A pthread mutex, heap-allocated so its address never moves, used only through
/// `withLock` (no hand-placed lock/unlock pairs). The machine's device lock and the
/// user-space interrupt chip's lock are both one of these: a plain pthread mutex rather
/// than `Synchronization.Mutex` because ThreadSanitizer on Linux sees pthread locks but not
/// `Mutex` (it reported the state a `Mutex` guards as racy), and these two guard the
/// device state the TSan runs check.
public final class HostMutex: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        // SAFETY: allocated and initialised here, destroyed and freed only in deinit, when
        // no thread can hold a reference any more.
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    public func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A value guarded by a `HostMutex`, reached only inside `withLock` (what
/// `Synchronization.Mutex` offers, on the lock ThreadSanitizer sees).
public final class HostLocked<Value>: @unchecked Sendable {
    private let mutex = HostMutex()
    // Guarded by `mutex`: touched only inside `withLock`.
    private var value: Value

    public init(_ value: Value) { self.value = value }

    @inline(__always)
    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        try mutex.withLock { try body(&value) }
    }
}
