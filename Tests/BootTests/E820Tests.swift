import Testing
import GuestMemory
@testable import Boot

@Suite struct E820Tests {
    @Test func smallGuestSplitsAroundFirmwareArea() {
        let t = E820.table(ramSize: 64 << 20)
        #expect(t == [
            E820Entry(address: 0, size: 0x9_FC00, kind: .ram),
            E820Entry(address: 0x9_FC00, size: 0x10_0000 - 0x9_FC00, kind: .reserved),
            E820Entry(address: 0x10_0000, size: (64 << 20) - 0x10_0000, kind: .ram),
        ])
        #expect(E820.lowerMemory(t) == 0x9_FC00)
        #expect(E820.upperMemory(t) == (63 << 20))
    }

    @Test func largeGuestSplitsAtPCIHole() {
        let ram: UInt64 = 6 << 30
        let t = E820.table(ramSize: ram)
        #expect(t.count == 4)
        #expect(t[2] == E820Entry(address: 0x10_0000, size: PhysicalMap.pciHoleStart - 0x10_0000, kind: .ram))
        #expect(t[3] == E820Entry(address: 0x1_0000_0000, size: ram - PhysicalMap.pciHoleStart, kind: .ram))
        let totalRAM = t.filter { $0.kind == .ram }.reduce(0) { $0 + $1.size }
        #expect(totalRAM == ram - (0x10_0000 - 0x9_FC00))
        #expect(E820.lowRAMEnd(t) == PhysicalMap.pciHoleStart)
    }

    @Test func exactlyThreeGiBHasNoHighRAM() {
        let t = E820.table(ramSize: 3 << 30)
        #expect(t.count == 3)
        #expect(t.last?.end == PhysicalMap.pciHoleStart)
    }

    @Test func tableFromGuestMemoryMatchesPhysicalMap() throws {
        let mem = try GuestMemory(layout: PhysicalMap.ramLayout(ramSize: 32 << 20))
        #expect(E820.table(for: mem) == E820.table(ramSize: 32 << 20))
    }
}
