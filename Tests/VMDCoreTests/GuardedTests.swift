import Foundation
import Testing
@testable import VMDCore

@Suite struct GuardedTests {
    @Test func aWaiterWakesOnTheChangeItWaitsFor() {
        let g = Guarded(0)
        let done = DispatchSemaphore(value: 0)
        Thread {
            let seen = g.wait { $0 >= 3 ? $0 : nil }
            #expect(seen == 3)
            done.signal()
        }.start()
        for _ in 0..<3 { g.withLock { $0 += 1 } }
        #expect(done.wait(timeout: .now() + 10) == .success)
    }

    @Test func aDeadlinedWaitGivesUp() {
        let g = Guarded(false)
        #expect(g.wait(until: { $0 ? true : nil }, deadline: Date().addingTimeInterval(0.05)) == nil)
        g.withLock { $0 = true }
        #expect(g.wait(until: { $0 ? true : nil }, deadline: Date()) == true)
    }
}
