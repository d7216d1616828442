import Testing
@testable import GuestMemory

@Suite struct GuestMemoryTests {
    @Test func typedAccessIsLittleEndian() throws {
        let mem = try GuestMemory(size: 0x10000)
        try mem.write(UInt32(0x1122_3344), at: 0x100)
        #expect(try mem.read(UInt8.self, at: 0x100) == 0x44)
        #expect(try mem.read(UInt16.self, at: 0x102) == 0x1122)
        #expect(try mem.read(UInt32.self, at: 0x100) == 0x1122_3344)
    }

    @Test func accessesOutsideRAMFailWithoutTouchingAnything() throws {
        let mem = try GuestMemory(size: 0x1000)
        #expect(throws: GuestMemoryError.outOfBounds(address: 0xFFE, length: 4)) {
            try mem.write(UInt32(1), at: 0xFFE)
        }
        #expect(try mem.read(UInt16.self, at: 0xFFE) == 0)
        #expect(throws: GuestMemoryError.self) { _ = try mem.read(UInt64.self, at: UInt64.max - 3) }
        #expect(mem.hostPointer(0x1000, length: 1) == nil)
        #expect(mem.hostPointer(0xFFF, length: 1) != nil)
        #expect(mem.hostPointer(0, length: 0x1001) == nil)
    }

    @Test func regionsAboveTheHoleAreAddressedByGuestPhysicalAddress() throws {
        let layout = PhysicalMap.ramLayout(ramSize: PhysicalMap.pciHoleStart + 0x2000)
        #expect(layout.count == 2)
        let mem = try GuestMemory(layout: layout)
        try mem.write(UInt64(0xDEAD_BEEF), at: PhysicalMap.highRAMStart + 8)
        #expect(try mem.read(UInt64.self, at: PhysicalMap.highRAMStart + 8) == 0xDEAD_BEEF)
        #expect(!mem.isRAM(PhysicalMap.pciHoleStart))
        #expect(mem.totalSize == Int(PhysicalMap.pciHoleStart) + 0x2000)
    }

    @Test func overlappingRegionsAreRejected() {
        #expect(throws: GuestMemoryError.self) {
            _ = try GuestMemory(layout: [(base: 0, size: 0x2000), (base: 0x1000, size: 0x1000)])
        }
    }

    @Test func bytesAndStrings() throws {
        let mem = try GuestMemory(size: 0x1000)
        try mem.write(bytes: Array("console=ttyS0\0junk".utf8), at: 0x10)
        #expect(try mem.readCString(at: 0x10, maxLength: 64) == "console=ttyS0")
        #expect(try mem.readCString(at: 0x10, maxLength: 7) == "console")
        try mem.fill(0xAB, at: 0x200, length: 3)
        #expect(try mem.readBytes(at: 0x1FF, count: 5) == [0, 0xAB, 0xAB, 0xAB, 0])
    }
}
