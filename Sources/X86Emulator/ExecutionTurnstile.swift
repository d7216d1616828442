import Foundation

/// Lets one vCPU of a VM execute guest instructions at a time, in FIFO order.
///
/// The interpreter's memory accesses are plain loads and stores, so a LOCK-prefixed
/// read-modify-write (or XCHG) on one vCPU thread is not atomic against another vCPU
/// thread touching the same word: a spinlock or an atomic counter could lose updates. With
/// several vCPUs the emulator therefore runs them one slice at a time (as QEMU's
/// single-threaded TCG does): a vCPU enters before executing a slice and leaves after it,
/// and on HLT, exits and kicks. Tickets keep it fair: a vCPU that leaves and re-enters
/// queues behind the others. A VM with one vCPU does not use it.
final class ExecutionTurnstile: @unchecked Sendable {
    private let cond = NSCondition()
    private var nextTicket: UInt64 = 0
    private var serving: UInt64 = 0

    func enter() {
        cond.lock()
        let ticket = nextTicket
        nextTicket &+= 1
        while serving != ticket { cond.wait() }
        cond.unlock()
    }

    func leave() {
        cond.lock()
        serving &+= 1
        cond.broadcast()
        cond.unlock()
    }
}
