import Foundation
import Synchronization
import Testing
@testable import X86Emulator

/// How several emulated vCPUs take turns: the turnstile lets exactly one in at a time and
/// serves every waiter, and a spinning vCPU hands its turn over after a window of PAUSEs
/// (not at the first one, nor never).
@Suite struct TurnstileTests {
    @Test func oneThreadAtATimeAndEveryoneIsServed() {
        let turnstile = ExecutionTurnstile()
        let threads = 8, rounds = 2_000
        let inside = Atomic<Int>(0), mostInside = Atomic<Int>(0)
        nonisolated(unsafe) var counter = 0   // guarded by the turnstile under test
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for _ in 0..<rounds {
                turnstile.enter()
                let now = inside.add(1, ordering: .sequentiallyConsistent).newValue
                _ = mostInside.max(now, ordering: .sequentiallyConsistent)
                counter += 1
                inside.subtract(1, ordering: .sequentiallyConsistent)
                turnstile.leave()
            }
        }
        #expect(counter == threads * rounds)
        #expect(mostInside.load(ordering: .sequentiallyConsistent) == 1)
    }

    @Test func moreThreadsThanWakeSlotsStillAllGetThrough() {
        let turnstile = ExecutionTurnstile()
        let threads = ExecutionTurnstile.slots + 6, rounds = 50
        let done = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for _ in 0..<rounds { turnstile.enter(); turnstile.leave() }
            done.add(1, ordering: .sequentiallyConsistent)
        }
        #expect(done.load(ordering: .sequentiallyConsistent) == threads)
    }

    /// `mov ecx, 1000; 1: pause; dec ecx; jnz 1b; hlt`: with `yieldOnPause` (several vCPUs)
    /// the slice ends right after the window's last PAUSE retires, so 63 DECs ran; without it
    /// the loop runs to its HLT in one slice.
    @Test(arguments: [false, true])
    func aSpinningSliceYieldsAfterThePauseWindow(severalVCPUs: Bool) throws {
        let m = try TestMachine()
        try m.setupLongMode()
        try m.load(try Assembler.assemble("mov ecx, 1000\nspin:\npause\ndec ecx\njnz spin\nhlt\n"))
        m.cpu.yieldOnPause = severalVCPUs
        let reason = m.cpu.run(budget: 1 << 16)
        if severalVCPUs {
            #expect(reason == .attention)
            #expect(m.cpu.r[1] == 1000 - UInt64(X86CPU.pauseYieldWindow - 1))
            // The next slice starts a new window.
            #expect(m.cpu.run(budget: 1 << 16) == .attention)
            #expect(m.cpu.r[1] == 1000 - UInt64(2 * X86CPU.pauseYieldWindow - 1))
        } else {
            #expect(reason == .halted)
            #expect(m.cpu.r[1] == 0)
        }
    }
}
