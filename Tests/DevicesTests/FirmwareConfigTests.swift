import Testing
@testable import Devices
import GuestMemory

/// fw_cfg as SeaBIOS drives it: the traditional selector/data ports, the file directory
/// and the DMA interface, plus hostile DMA requests.
struct FirmwareConfigTests {
    typealias K = FirmwareConfig.Key
    typealias C = FirmwareConfig.DMAControl

    func make() throws -> (FirmwareConfig, GuestMemory, IOBus) {
        let memory = try GuestMemory(size: 1 << 20)
        let fw = FirmwareConfig(memory: memory)
        let bus = IOBus()
        try fw.map(on: bus)
        return (fw, memory, bus)
    }

    func readItem(_ bus: IOBus, key: UInt16, count: Int) -> [UInt8] {
        bus.portWrite(0x510, size: 2, value: UInt32(key))
        return (0..<count).map { _ in UInt8(bus.portRead(0x511, size: 1)) }
    }

    /// Writes a descriptor at `at` and starts it the way SeaBIOS does (outl of the
    /// big-endian address to 0x518); returns the control word written back.
    func dma(_ bus: IOBus, _ memory: GuestMemory, at: UInt64, control: UInt32, length: UInt32, address: UInt64) throws -> UInt32 {
        try memory.write(control.bigEndian, at: at)
        try memory.write(length.bigEndian, at: at + 4)
        try memory.write(address.bigEndian, at: at + 8)
        bus.portWrite(0x518, size: 4, value: UInt32(truncatingIfNeeded: at).bigEndian)
        return UInt32(bigEndian: try memory.read(UInt32.self, at: at))
    }

    @Test func signatureIDAndDMASignatureThroughThePorts() throws {
        let (_, _, bus) = try make()
        #expect(readItem(bus, key: K.signature, count: 4) == Array("QEMU".utf8))
        #expect(readItem(bus, key: K.id, count: 4) == [3, 0, 0, 0])   // traditional + DMA
        // Past the end of an item: zeros.
        bus.portWrite(0x510, size: 2, value: UInt32(K.signature))
        for _ in 0..<4 { _ = bus.portRead(0x511, size: 1) }
        #expect(bus.portRead(0x511, size: 1) == 0)
        // An absent key reads zeros.
        #expect(readItem(bus, key: 0x1234, count: 2) == [0, 0])
        // The DMA register reads "QEMU CFG" byte by byte.
        let sig = (0..<8).map { UInt8(bus.portRead(0x514 + UInt16($0), size: 1)) }
        #expect(sig == Array("QEMU CFG".utf8))
    }

    @Test func fileDirectoryIsSortedWithBigEndianFields() throws {
        let (fw, _, bus) = try make()
        let kb = try fw.addFile("etc/zzz", [1, 2, 3])
        let ka = try fw.addFile("bootorder", Array("HALT".utf8))
        #expect(kb == 0x20 && ka == 0x21)
        let dir = readItem(bus, key: K.fileDirectory, count: 4 + 2 * 64)
        #expect(dir[0..<4] == [0, 0, 0, 2])
        // First entry: "bootorder", size 4, select 0x0021.
        #expect(Array(dir[4..<8]) == [0, 0, 0, 4])
        #expect(Array(dir[8..<10]) == [0x00, 0x21])
        #expect(Array(dir[12..<21]) == Array("bootorder".utf8) && dir[21] == 0)
        #expect(Array(dir[68..<72]) == [0, 0, 0, 3])
        #expect(Array(dir[72..<74]) == [0x00, 0x20])
        #expect(throws: FirmwareConfig.ConfigError.duplicate("bootorder")) { try fw.addFile("bootorder", []) }
        #expect(throws: FirmwareConfig.ConfigError.badName("")) { try fw.addFile("", []) }
        let long = String(repeating: "x", count: 56)
        #expect(throws: FirmwareConfig.ConfigError.badName(long)) { try fw.addFile(long, []) }
    }

    @Test func dmaSelectReadSkipAndZeroFill() throws {
        let (fw, memory, bus) = try make()
        let key = try fw.addFile("etc/e820", Array(0..<40))
        // Select + read 8 bytes.
        var ctl = try dma(bus, memory, at: 0x1000, control: UInt32(key) << 16 | C.select | C.read, length: 8, address: 0x2000)
        #expect(ctl == 0)
        #expect(try memory.readBytes(at: 0x2000, count: 8) == Array(0..<8))
        // Skip 8, then read the next 4: bytes 16-19.
        ctl = try dma(bus, memory, at: 0x1000, control: C.skip, length: 8, address: 0)
        #expect(ctl == 0)
        ctl = try dma(bus, memory, at: 0x1000, control: C.read, length: 4, address: 0x3000)
        #expect(try ctl == 0 && memory.readBytes(at: 0x3000, count: 4) == [16, 17, 18, 19])
        // Reading past the end fills zeros.
        try memory.fill(0xAA, at: 0x4000, length: 64)
        ctl = try dma(bus, memory, at: 0x1000, control: C.read, length: 64, address: 0x4000)
        #expect(ctl == 0)
        let got = try memory.readBytes(at: 0x4000, count: 64)
        #expect(Array(got[0..<20]) == Array(20..<40) && got[20...].allSatisfy { $0 == 0 })
        // The traditional port follows the same offset (now at the end).
        #expect(bus.portRead(0x511, size: 1) == 0)
        #expect(fw.dmaRequests == 4 && fw.dmaErrors == 0)
    }

    @Test func hostileDMARequestsSetTheErrorBitAndTouchNothing() throws {
        let (fw, memory, bus) = try make()
        let key = try fw.addFile("etc/x", [UInt8](repeating: 7, count: 4096))
        // Buffer outside guest RAM.
        var ctl = try dma(bus, memory, at: 0x1000, control: UInt32(key) << 16 | C.select | C.read, length: 16,
                          address: 0xFFFF_F000)
        #expect(ctl == C.error)
        // Buffer that wraps the address space.
        ctl = try dma(bus, memory, at: 0x1000, control: C.read, length: 0x2000, address: UInt64.max - 0xFFF)
        #expect(ctl == C.error)
        // Buffer that runs off the end of RAM by one byte: nothing is written.
        try memory.fill(0x55, at: (1 << 20) - 16, length: 16)
        ctl = try dma(bus, memory, at: 0x1000, control: C.read, length: 17, address: (1 << 20) - 16)
        #expect(ctl == C.error)
        #expect(try memory.readBytes(at: (1 << 20) - 16, count: 16).allSatisfy { $0 == 0x55 })
        // A length of 4 GiB - 1.
        ctl = try dma(bus, memory, at: 0x1000, control: C.read, length: 0xFFFF_FFFF, address: 0)
        #expect(ctl == C.error)
        // Writing to a read-only item.
        ctl = try dma(bus, memory, at: 0x1000, control: C.write, length: 4, address: 0x2000)
        #expect(ctl == C.error)
        #expect(fw.item(key)?.allSatisfy { $0 == 7 } == true)
        // A descriptor outside RAM: counted, nothing written anywhere.
        bus.portWrite(0x514, size: 4, value: UInt32(1).bigEndian)          // high half: 4 GiB
        bus.portWrite(0x518, size: 4, value: UInt32(0x1000).bigEndian)
        // A descriptor straddling the end of RAM.
        bus.portWrite(0x518, size: 4, value: UInt32((1 << 20) - 8).bigEndian)
        #expect(fw.dmaErrors == 7)
    }

    @Test func dmaWriteToAWritableItemReportsIt() throws {
        let (fw, memory, bus) = try make()
        let key = try fw.addFile("etc/writable", [0, 0, 0, 0, 0, 0], writable: true)
        var seen: [UInt8] = []
        fw.onWrite = { k, data in if k == key { seen = data } }
        try memory.write(bytes: [9, 8, 7], at: 0x2000)
        // Select, skip 2, write 3.
        var ctl = try dma(bus, memory, at: 0x1000, control: UInt32(key) << 16 | C.select | C.skip, length: 2, address: 0)
        #expect(ctl == 0)
        ctl = try dma(bus, memory, at: 0x1000, control: C.write, length: 3, address: 0x2000)
        #expect(ctl == 0)
        #expect(seen == [0, 0, 9, 8, 7, 0] && fw.item(key) == seen)
        // A write past the item's end is refused.
        ctl = try dma(bus, memory, at: 0x1000, control: C.write, length: 3, address: 0x2000)
        #expect(ctl == C.error)
    }
}

struct PIIX3Tests {
    @Test func identityAndPIRQRegisters() {
        let isa = PIIX3ISABridge()
        #expect(isa.configRead(offset: 0, size: 4) == 0x7000_8086)
        #expect(isa.configRead(offset: 0x0A, size: 2) == 0x0601)          // ISA bridge
        #expect(isa.configRead(offset: 0x0E, size: 1) == 0x80)            // multifunction
        #expect(isa.configRead(offset: 0x2C, size: 4) == 0x1100_1AF4)
        #expect(isa.routedIRQ(line: 0) == nil)                            // 0x80: disabled
        // SeaBIOS's piix_isa_bridge_setup: PIRQ A-D = 10, 10, 11, 11.
        for (i, irq) in [10, 10, 11, 11].enumerated() {
            isa.configWrite(offset: 0x60 + i, size: 1, value: UInt32(irq))
        }
        #expect((0..<4).map { isa.routedIRQ(line: $0) } == [10, 10, 11, 11])
        isa.configWrite(offset: 0x60, size: 1, value: 0xFF)                // reserved bits stay 0
        #expect(isa.configRead(offset: 0x60, size: 1) == 0x8F)
        #expect(isa.routedIRQ(line: 4) == nil)
    }

    @Test func hostBridgeCarriesTheSubsystemSeaBIOSChecks() {
        let bridge = PCIHostBridgeFunction()
        #expect(bridge.configRead(offset: 0x2C, size: 2) == 0x1AF4)
        #expect(bridge.configRead(offset: 0x2E, size: 2) == 0x1100)
        // PAM0 (0x59) reads 0 at power-on and keeps what firmware writes.
        #expect(bridge.configRead(offset: 0x59, size: 1) == 0)
        bridge.configWrite(offset: 0x59, size: 1, value: 0x30)
        #expect(bridge.configRead(offset: 0x59, size: 1) == 0x30)
    }
}
