#if canImport(Glibc)
import Glibc
#endif

/// Stop-the-world for split locks in parallel mode (`SWIFTVMM_EMU_PARALLEL`): a VM-wide
/// reader/writer gate. Every vCPU holds it shared while it executes a slice; a LOCKed
/// instruction that cannot be a host atomic (operand across an 8-byte boundary or a page,
/// or MMIO: see `hostAtomicUpdate`) gives up its share and takes the gate exclusively for
/// its plain read-modify-write, so no other vCPU executes meanwhile. Writers go first:
/// once one waits, no vCPU starts a new slice, so the wait is at most the rest of every
/// other vCPU's current slice (vCPUs parked in HLT or out at the VMM hold no share).
final class SplitLockGate: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    // All guarded by `mutex`.
    private var readers = 0
    private var writersWaiting = 0
    private var writer = false
    /// Exclusive sections so far (tests).
    private(set) var exclusiveCount = 0

    init() {
        // SAFETY: allocated and initialised here, destroyed and freed in deinit, when no
        // thread can hold a reference any more.
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        cond = .allocate(capacity: 1)
        pthread_cond_init(cond, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        cond.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func enterShared() {
        pthread_mutex_lock(mutex)
        while writer || writersWaiting > 0 { pthread_cond_wait(cond, mutex) }
        readers += 1
        pthread_mutex_unlock(mutex)
    }

    func leaveShared() {
        pthread_mutex_lock(mutex)
        readers -= 1
        if readers == 0 && writersWaiting > 0 { pthread_cond_broadcast(cond) }
        pthread_mutex_unlock(mutex)
    }

    /// Runs `body` with every other vCPU stopped; the caller holds a share, which it has
    /// again when this returns (or throws).
    func exclusive(_ body: () throws(X86Fault) -> Void) throws(X86Fault) {
        pthread_mutex_lock(mutex)
        readers -= 1
        writersWaiting += 1
        if readers == 0 { pthread_cond_broadcast(cond) }
        while writer || readers > 0 { pthread_cond_wait(cond, mutex) }
        writersWaiting -= 1
        writer = true
        exclusiveCount += 1
        pthread_mutex_unlock(mutex)
        defer {
            pthread_mutex_lock(mutex)
            writer = false
            pthread_cond_broadcast(cond)
            while writer || writersWaiting > 0 { pthread_cond_wait(cond, mutex) }
            readers += 1
            pthread_mutex_unlock(mutex)
        }
        try body()
    }

    var exclusiveSections: Int {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return exclusiveCount
    }
}
