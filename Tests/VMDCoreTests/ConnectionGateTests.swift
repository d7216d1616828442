import Testing
@testable import VMDCore

@Suite struct ConnectionGateTests {
    @Test func eachUserHasACapAndRootKeepsItsReserve() {
        let gate = ConnectionGate(ConnectionLimits(perUser: 3, total: 10, reservedForRoot: 2))
        for _ in 0..<3 { #expect(gate.admit(uid: 1000) == nil) }
        #expect(gate.admit(uid: 1000)?.contains("uid 1000") == true)
        // Other users fill what is left for non-root users (10 - 2 = 8).
        for _ in 0..<3 { #expect(gate.admit(uid: 1001) == nil) }
        for _ in 0..<2 { #expect(gate.admit(uid: 1002) == nil) }
        #expect(gate.admit(uid: 1003) != nil)
        #expect(gate.open() == 8)
        // Root still gets in, up to the total.
        #expect(gate.admit(uid: 0) == nil)
        #expect(gate.admit(uid: 0) == nil)
        #expect(gate.admit(uid: 0) != nil)
        // Released slots are reusable.
        gate.release(uid: 1000)
        #expect(gate.open(uid: 1000) == 2)
        #expect(gate.admit(uid: 1003) == nil)
        gate.release(uid: 1003)
        gate.release(uid: 1003)  // one too many: no negative counts
        #expect(gate.open(uid: 1003) == 0)
    }
}
