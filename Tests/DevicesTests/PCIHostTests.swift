import Testing
@testable import Devices
import GuestMemory

/// A minimal PCI function for the tests: a 4 KiB memory BAR 0, a 64-bit 16 KiB BAR 2,
/// a 32-byte I/O BAR 4, INTA#, and a register file behind the BARs.
final class TestPCIFunction: PCIDevice {
    var header: PCIConfigHeader
    var barWrites: [(Int, UInt64, UInt64)] = []
    init(pin: UInt8 = 1) {
        header = PCIConfigHeader(vendorID: 0x1AF4, deviceID: 0x1042, classCode: 0x01, subclass: 0x00,
                                 subsystemVendorID: 0x1AF4, subsystemID: 0x0002, interruptPin: pin)
        header.addBar(PCIBar(index: 0, kind: .memory32, size: 0x1000))
        header.addBar(PCIBar(index: 2, kind: .memory64, size: 0x4000, prefetchable: true))
        header.addBar(PCIBar(index: 4, kind: .io, size: 0x20))
    }
    var pciName: String { "test" }
    var bars: [PCIBar] { header.bars }
    func configRead(offset: Int, size: Int) -> UInt32 { header.read(offset: offset, size: size) }
    func configWrite(offset: Int, size: Int, value: UInt32) { header.write(offset: offset, size: size, value: value) }
    func barRead(index: Int, offset: UInt64, size: Int) -> UInt64 { UInt64(index) << 32 | offset }
    func barWrite(index: Int, offset: UInt64, size: Int, value: UInt64) { barWrites.append((index, offset, value)) }
}

struct PCIConfigHeaderTests {
    @Test func identificationIsReadOnly() {
        var h = PCIConfigHeader(vendorID: 0x1234, deviceID: 0x5678, classCode: 0x02, subclass: 0x00, revision: 3)
        #expect(h.read(offset: 0, size: 4) == 0x5678_1234)
        h.write(offset: 0, size: 4, value: 0)
        #expect(h.read(offset: 0, size: 4) == 0x5678_1234)
        #expect(h.read(offset: 8, size: 4) == 0x0200_0003)
        #expect(h.read(offset: 0x100, size: 4) == 0xFFFF_FFFF)
        #expect(h.read(offset: -1, size: 1) == 0xFF)
        h.write(offset: 255, size: 4, value: 0) // out of range: ignored, no trap
    }

    @Test func barSizingProtocol() {
        var h = PCIConfigHeader(vendorID: 1, deviceID: 2, classCode: 0, subclass: 0)
        h.addBar(PCIBar(index: 0, kind: .memory32, size: 0x1000))
        h.addBar(PCIBar(index: 1, kind: .io, size: 0x20))
        h.addBar(PCIBar(index: 2, kind: .memory64, size: 0x1_0000_0000, prefetchable: true))
        h.addBar(PCIBar(index: 5, kind: .memory32, size: 100)) // rounded up to 128
        for i in 0..<6 { h.write(offset: 0x10 + 4 * i, size: 4, value: 0xFFFF_FFFF) }
        #expect(h.read(offset: 0x10, size: 4) == 0xFFFF_F000)
        #expect(h.read(offset: 0x14, size: 4) == 0xFFFF_FFE1)
        #expect(h.read(offset: 0x18, size: 4) == 0x0000_000C)
        #expect(h.read(offset: 0x1C, size: 4) == 0xFFFF_FFFF)
        #expect(h.read(offset: 0x24, size: 4) == 0xFFFF_FF80)
        h.write(offset: 0x10, size: 4, value: 0xC000_1234)
        #expect(h.barAddress(0) == 0xC000_1000)
        h.write(offset: 0x18, size: 4, value: 0)
        h.write(offset: 0x1C, size: 4, value: 0x2)
        #expect(h.barAddress(2) == 0x2_0000_0000)
        #expect(h.barAddress(3) == nil)
        // Unused BAR 3 is the 64-bit BAR's high half; an index with no BAR reads 0.
        var g = PCIConfigHeader(vendorID: 1, deviceID: 2, classCode: 0, subclass: 0)
        g.write(offset: 0x10, size: 4, value: 0xFFFF_FFFF)
        #expect(g.read(offset: 0x10, size: 4) == 0)
    }

    @Test func commandStatusAndCapabilities() {
        var h = PCIConfigHeader(vendorID: 1, deviceID: 2, classCode: 0, subclass: 0, interruptPin: 1)
        #expect(h.status & PCIConfig.statusCapabilitiesList == 0)
        let a = h.addCapability(id: PCIConfig.capabilityVendorSpecific, body: [16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13])
        let b = h.addCapability(id: PCIConfig.capabilityMSIX, body: [0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0],
                                writableMask: [0x00, 0xC0])
        #expect(a == 0x40)
        #expect(b == 0x50)
        #expect(h.read(offset: 0x34, size: 1) == 0x40)
        #expect(h.status & PCIConfig.statusCapabilitiesList != 0)
        #expect(h.read(offset: 0x40, size: 2) == 0x5009)
        #expect(h.read(offset: 0x50, size: 2) == 0x0011)
        h.write(offset: 0x52, size: 2, value: 0xFFFF)
        #expect(h.read(offset: 0x52, size: 2) == 0xC001)
        h.write(offset: 4, size: 2, value: 0xFFFF)
        #expect(h.command == 0x0407)
        #expect(h.memoryDecodeEnabled && h.ioDecodeEnabled && h.busMasterEnabled && h.interruptDisabled)
        h.setInterruptStatus(true)
        #expect(h.status & PCIConfig.statusInterrupt != 0)
        h.write(offset: 6, size: 2, value: 0xFFFF) // write-one-to-clear touches only error bits
        #expect(h.status & PCIConfig.statusInterrupt != 0)
        #expect(h.read(offset: 0x3D, size: 1) == 1)
        h.write(offset: 0x3C, size: 1, value: 11)
        #expect(h.interruptLine == 11)
    }
}

struct PCIHostTests {
    func makeHost() -> (IOBus, PCIHost, RecordingInterruptController) {
        let bus = IOBus()
        let irq = RecordingInterruptController()
        let host = PCIHost(bus: bus, interrupts: irq)
        try! bus.mapPorts(host, name: "pci", base: PCIHost.basePort, count: PCIHost.portCount)
        return (bus, host, irq)
    }

    func cfgRead(_ bus: IOBus, slot: Int, fn: Int = 0, reg: Int, size: Int = 4) -> UInt32 {
        bus.portWrite(0xCF8, size: 4, value: 0x8000_0000 | UInt32(slot << 11 | fn << 8 | (reg & 0xFC)))
        return bus.portRead(0xCFC + UInt16(reg & 3), size: size)
    }

    func cfgWrite(_ bus: IOBus, slot: Int, fn: Int = 0, reg: Int, size: Int = 4, value: UInt32) {
        bus.portWrite(0xCF8, size: 4, value: 0x8000_0000 | UInt32(slot << 11 | fn << 8 | (reg & 0xFC)))
        bus.portWrite(0xCFC + UInt16(reg & 3), size: size, value: value)
    }

    @Test func linuxType1ProbeAndHostBridge() {
        let (bus, _, _) = makeHost()
        // arch/x86/pci/direct.c pci_check_type1
        bus.portWrite(0xCFB, size: 1, value: 0x01)
        bus.portWrite(0xCF8, size: 4, value: 0x8000_0000)
        #expect(bus.portRead(0xCF8, size: 4) == 0x8000_0000)
        // pci_sanity_check: a host bridge at 0:0.0
        #expect(cfgRead(bus, slot: 0, reg: 0) == 0x1237_8086)
        #expect(cfgRead(bus, slot: 0, reg: 0x0A, size: 2) == 0x0600)
        #expect(cfgRead(bus, slot: 0, reg: 0x0E, size: 1) == 0x00)
        // PAM registers keep what firmware writes; the vendor ID does not.
        cfgWrite(bus, slot: 0, reg: 0x59, size: 1, value: 0x30)
        #expect(cfgRead(bus, slot: 0, reg: 0x59, size: 1) == 0x30)
        cfgWrite(bus, slot: 0, reg: 0x00, size: 2, value: 0)
        #expect(cfgRead(bus, slot: 0, reg: 0x00, size: 2) == 0x8086)
        // Nothing at 0:5.0, nor on bus 1, nor with the enable bit off.
        #expect(cfgRead(bus, slot: 5, reg: 0) == 0xFFFF_FFFF)
        #expect(cfgRead(bus, slot: 0, fn: 3, reg: 0, size: 2) == 0xFFFF)
        bus.portWrite(0xCF8, size: 4, value: 0x8001_0000)
        #expect(bus.portRead(0xCFC, size: 4) == 0xFFFF_FFFF)
        bus.portWrite(0xCF8, size: 4, value: 0x0000_0000)
        #expect(bus.portRead(0xCFC, size: 4) == 0xFFFF_FFFF)
    }

    @Test func registrationAssignsBarsAndMapsThem() throws {
        let (bus, host, _) = makeHost()
        let dev = TestPCIFunction()
        try host.register(dev, slot: 3)
        #expect(cfgRead(bus, slot: 3, reg: 0) == 0x1042_1AF4)
        let bar0 = UInt64(cfgRead(bus, slot: 3, reg: 0x10))
        let bar2 = UInt64(cfgRead(bus, slot: 3, reg: 0x18)) | UInt64(cfgRead(bus, slot: 3, reg: 0x1C)) << 32
        let bar4 = cfgRead(bus, slot: 3, reg: 0x20)
        #expect(bar0 & 0xFFF == 0 && PhysicalMap.pciMMIOWindow.contains(bar0))
        #expect(bar2 & 0xF == 0xC)
        #expect(bar2 & 0x3FFF == 0xC && PhysicalMap.pciMMIOWindow.contains(bar2 & ~0xF))
        #expect(bar4 & 1 == 1 && bar4 >= 0xC000)
        #expect(cfgRead(bus, slot: 3, reg: 4, size: 2) & 0x7 == 0x7)
        // Interrupt line = GSI of slot 3 INTA# = PIRQ (3+1-1)%4 = D = 19.
        #expect(cfgRead(bus, slot: 3, reg: 0x3C, size: 1) == 19)
        // BAR accesses reach the device with BAR-relative offsets.
        #expect(bus.mmioRead(bar0 + 0x10, size: 4) == 0x10)
        #expect(bus.mmioRead((bar2 & ~0xF) + 8, size: 4) == (2 << 32 | 8))
        bus.portWrite(UInt16(bar4 & ~3) + 2, size: 1, value: 0x5A)
        #expect(dev.barWrites.count == 1)
        #expect(dev.barWrites[0] == (4, 2, 0x5A))
        #expect(throws: PCIHostError.self) { try host.register(TestPCIFunction(), slot: 3) }
        #expect(throws: PCIHostError.self) { try host.register(TestPCIFunction(), slot: 32) }
    }

    @Test func guestSizingAndRemapping() throws {
        let (bus, host, _) = makeHost()
        let dev = TestPCIFunction()
        try host.register(dev, slot: 1)
        let old = UInt64(cfgRead(bus, slot: 1, reg: 0x10))
        // Linux's __pci_read_base: disable decode, write ~0, read mask, restore.
        let cmd = cfgRead(bus, slot: 1, reg: 4, size: 2)
        cfgWrite(bus, slot: 1, reg: 4, size: 2, value: cmd & ~3)
        #expect(host.mappedBar(slot: 1, index: 0) == nil)
        #expect(bus.mmioRead(old, size: 4) == 0xFFFF_FFFF)
        cfgWrite(bus, slot: 1, reg: 0x10, value: 0xFFFF_FFFF)
        #expect(cfgRead(bus, slot: 1, reg: 0x10) == 0xFFFF_F000)
        cfgWrite(bus, slot: 1, reg: 0x20, value: 0xFFFF_FFFF)
        #expect(cfgRead(bus, slot: 1, reg: 0x20) == 0xFFFF_FFE1)
        // The guest moves BAR 0 and re-enables memory decode.
        cfgWrite(bus, slot: 1, reg: 0x10, value: 0xD000_0000)
        cfgWrite(bus, slot: 1, reg: 0x20, value: 0xE000)
        cfgWrite(bus, slot: 1, reg: 4, size: 2, value: cmd)
        #expect(host.mappedBar(slot: 1, index: 0)?.base == 0xD000_0000)
        #expect(bus.mmioRead(0xD000_0004, size: 4) == 4)
        #expect(bus.mmioRead(old, size: 4) == 0xFFFF_FFFF)
        #expect(host.mappedBar(slot: 1, index: 4)?.base == 0xE000)
        #expect(bus.portRead(0xE001, size: 1) == 0x01 | 0) // (4 << 32 | 1) truncated to the port width
        // Toggling only I/O decode leaves memory mapped.
        cfgWrite(bus, slot: 1, reg: 4, size: 2, value: cmd & ~1)
        #expect(host.mappedBar(slot: 1, index: 4) == nil)
        #expect(host.mappedBar(slot: 1, index: 0)?.base == 0xD000_0000)
        // A BAR moved onto the config ports' device collides and stays unmapped.
        cfgWrite(bus, slot: 1, reg: 0x20, value: 0xCE0)
        cfgWrite(bus, slot: 1, reg: 4, size: 2, value: cmd)
        #expect(host.mappedBar(slot: 1, index: 4) == nil)
        #expect(host.mappingConflicts == 1)
        #expect(bus.portRead(0xCF8, size: 4) & 0x8000_0000 != 0) // the host is still there
    }

    @Test func sharedLevelTriggeredINTx() throws {
        let (_, host, irq) = makeHost()
        // Slots 1 and 5 with INTA# both swizzle onto PIRQB (GSI 17).
        let a = try #require(host.interruptLine(slot: 1, pin: 1))
        let b = try #require(host.interruptLine(slot: 5, pin: 1))
        #expect(a.gsi == 17 && b.gsi == 17)
        #expect(host.interruptLine(slot: 1, pin: 0) == nil)
        a.raise()
        b.raise()
        a.lower()
        #expect(irq.level(17) == true)
        b.lower()
        #expect(irq.level(17) == false)
        #expect(irq.events == [.irq(17, true), .irq(17, false)])
        a.controller.signalMSI(address: 0xFEE0_0000, data: 0x41)
        #expect(irq.events.last == .msi(address: 0xFEE0_0000, data: 0x41))
    }

    @Test func routingTableAndReset() throws {
        let (bus, host, _) = makeHost()
        let table = PCIInterruptRouting.ioapic.routes(slots: 0..<2)
        #expect(table == [PCIInterruptRoute(slot: 0, pin: 1, gsi: 16), PCIInterruptRoute(slot: 0, pin: 2, gsi: 17),
                          PCIInterruptRoute(slot: 0, pin: 3, gsi: 18), PCIInterruptRoute(slot: 0, pin: 4, gsi: 19),
                          PCIInterruptRoute(slot: 1, pin: 1, gsi: 17), PCIInterruptRoute(slot: 1, pin: 2, gsi: 18),
                          PCIInterruptRoute(slot: 1, pin: 3, gsi: 19), PCIInterruptRoute(slot: 1, pin: 4, gsi: 16)])
        try host.register(TestPCIFunction(pin: 2), slot: 2)
        #expect(host.interruptRoutes == [PCIInterruptRoute(slot: 2, pin: 2, gsi: 19)])
        var resets = 0
        host.onReset = { resets += 1 }
        bus.portWrite(0xCF9, size: 1, value: 0x02)
        #expect(resets == 0)
        bus.portWrite(0xCF9, size: 1, value: 0x06)
        #expect(resets == 1)
    }
}
