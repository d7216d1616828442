import Testing
import Foundation
import Synchronization
import Hypervisor
@testable import Devices

/// A controller that records the levels it is told, safe to call from several threads.
private final class LockedRecorder: InterruptController, Sendable {
    let levels = Mutex<[UInt32: [Bool]]>([:])
    func setIRQ(_ gsi: UInt32, level: Bool) { levels.withLock { $0[gsi, default: []].append(level) } }
    func signalMSI(address: UInt64, data: UInt32) {}
    func history(_ gsi: UInt32) -> [Bool] { levels.withLock { $0[gsi] ?? [] } }
}

struct PCIInterruptSharingTests {
    @Test func aSharedLineIsTheOrOfItsSources() {
        let rec = LockedRecorder()
        let sharing = PCIInterruptSharing(controller: rec)
        let a = sharing.line(gsi: 10), b = sharing.line(gsi: 10)
        a.raise(); b.raise(); a.lower()
        #expect(rec.history(10) == [true])
        b.lower()
        #expect(rec.history(10) == [true, false])
    }

    /// Lines on one GSI raised and lowered from several threads at once, as the virtio event
    /// thread, the virtio-net thread and vCPU threads do: the controller sees strictly
    /// alternating levels and ends at the OR of what the sources left behind.
    @Test(arguments: [false, true])
    func linesRaisedFromManyThreadsNeverLoseALevel(lastLeftHigh: Bool) {
        let rec = LockedRecorder()
        let sharing = PCIInterruptSharing(controller: rec)
        let threads = 4
        let lines = (0..<threads).map { _ in sharing.line(gsi: 11) }
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            for _ in 0..<20_000 { lines[t].raise(); lines[t].lower() }
            if lastLeftHigh && t == threads - 1 { lines[t].raise() }
        }
        let history = rec.history(11)
        #expect(!history.isEmpty)
        #expect(history.first == true)
        #expect(zip(history, history.dropFirst()).allSatisfy { $0 != $1 }, "two equal levels in a row")
        #expect(history.last == lastLeftHigh)
    }
}
