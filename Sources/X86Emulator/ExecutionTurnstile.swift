#if canImport(Glibc)
import Glibc
#endif

/// Lets one vCPU of a VM execute guest instructions at a time, in FIFO order.
///
/// The interpreter's memory accesses are plain loads and stores, so a LOCK-prefixed
/// read-modify-write (or XCHG) on one vCPU thread is not atomic against another vCPU
/// thread touching the same word: a spinlock or an atomic counter could lose updates. With
/// several vCPUs the emulator therefore runs them one slice at a time (as QEMU's
/// single-threaded TCG does): a vCPU enters before executing a slice and leaves after it,
/// and on HLT, exits and kicks. Tickets keep it fair: a vCPU that leaves and re-enters
/// queues behind the others. A VM with one vCPU does not use it.
///
/// A hand-over wakes only the thread holding the next ticket: waiters sleep on one of
/// `slots` condition variables chosen by ticket, and every vCPU holds at most one ticket,
/// so with at most `slots` vCPUs no two waiters share a slot. (One condition broadcast to
/// every waiter made each hand-over wake all of them: with 8 vCPUs spinning on PAUSE that
/// turned the smp guest's AP start-up into tens of seconds.) More vCPUs than slots stay
/// correct: waiters that share a slot are all woken and recheck their ticket.
final class ExecutionTurnstile: @unchecked Sendable {
    static let slots = 64
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let conds: UnsafeMutablePointer<pthread_cond_t>
    // Both guarded by `mutex`.
    private var nextTicket: UInt64 = 0
    private var serving: UInt64 = 0

    init() {
        // SAFETY: allocated and initialised here, used only between init and deinit, and
        // destroyed and freed in deinit, when no thread can hold a reference any more.
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        conds = .allocate(capacity: Self.slots)
        for i in 0..<Self.slots { pthread_cond_init(conds + i, nil) }
    }

    deinit {
        for i in 0..<Self.slots { pthread_cond_destroy(conds + i) }
        conds.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    private func slot(_ ticket: UInt64) -> UnsafeMutablePointer<pthread_cond_t> {
        conds + Int(ticket % UInt64(Self.slots))
    }

    func enter() {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let ticket = nextTicket
        nextTicket &+= 1
        while serving != ticket { pthread_cond_wait(slot(ticket), mutex) }
    }

    func leave() {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        serving &+= 1
        pthread_cond_broadcast(slot(serving))
    }
}
