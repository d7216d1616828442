import Testing
@testable import Devices
import GuestMemory

struct IOAPICTests {
    final class Sink: APICMessageSink {
        var messages: [APICMessage] = []
        func deliver(_ message: APICMessage) { messages.append(message) }
    }

    func write(_ io: IOAPIC, _ reg: UInt8, _ v: UInt32) {
        io.mmioWrite(offset: 0, size: 4, value: UInt64(reg))
        io.mmioWrite(offset: 0x10, size: 4, value: UInt64(v))
    }
    func read(_ io: IOAPIC, _ reg: UInt8) -> UInt32 {
        io.mmioWrite(offset: 0, size: 4, value: UInt64(reg))
        return UInt32(io.mmioRead(offset: 0x10, size: 4))
    }

    @Test func registersThroughTheBus() throws {
        let bus = IOBus()
        let io = IOAPIC()
        try io.map(on: bus)
        bus.mmioWrite(PhysicalMap.ioapicBase, size: 4, value: 1)
        #expect(bus.mmioRead(PhysicalMap.ioapicBase + 0x10, size: 4) == 0x0017_0011)
        write(io, 0, 0x0200_0000)
        #expect(read(io, 0) == 0x0200_0000)
        #expect(read(io, 0x10) == 0x0001_0000) // masked at reset
        write(io, 0x10 + 2 * 23, 0x0000_A041)
        write(io, 0x11 + 2 * 23, 0x0300_0000)
        #expect(read(io, 0x10 + 2 * 23) == 0xA041)
        #expect(read(io, 0x11 + 2 * 23) == 0x0300_0000)
        #expect(read(io, 0x70) == 0)
    }

    @Test func edgeTriggeredDelivery() {
        let sink = Sink()
        let io = IOAPIC(sink: sink)
        write(io, 0x10 + 4, 0x0000_0031) // pin 2: vector 0x31, fixed, physical, edge, unmasked
        write(io, 0x11 + 4, 0x0100_0000) // to APIC 1
        io.setIRQ(2, level: true)
        io.setIRQ(2, level: true) // no new edge
        io.setIRQ(2, level: false)
        io.setIRQ(2, level: true)
        #expect(sink.messages == [APICMessage(vector: 0x31, destination: 1), APICMessage(vector: 0x31, destination: 1)])
        // Masked edges are lost.
        io.setIRQ(2, level: false)
        write(io, 0x10 + 4, 0x0001_0031)
        io.setIRQ(2, level: true)
        write(io, 0x10 + 4, 0x0000_0031)
        #expect(sink.messages.count == 2)
    }

    @Test func levelTriggeredRemoteIRRAndEOI() {
        let sink = Sink()
        let io = IOAPIC(sink: sink)
        // Pin 16 (PCI INTA#): vector 0x41, level, active low (polarity ignored), logical dest 0x01.
        write(io, 0x10 + 32, 0x0001_A941)
        write(io, 0x11 + 32, 0x0100_0000)
        io.setIRQ(16, level: true)
        #expect(sink.messages.isEmpty) // masked
        write(io, 0x10 + 32, 0x0000_A941) // unmasking an asserted level pin delivers
        #expect(sink.messages == [APICMessage(vector: 0x41, deliveryMode: .lowestPriority, logicalDestination: true,
                                              destination: 1, levelTriggered: true)])
        #expect(read(io, 0x10 + 32) & 0x4000 != 0) // remote IRR
        io.setIRQ(16, level: true)
        #expect(sink.messages.count == 1) // remote IRR blocks
        // The guest writing the entry cannot clear remote IRR.
        write(io, 0x10 + 32, 0x0000_A941)
        #expect(read(io, 0x10 + 32) & 0x4000 != 0)
        io.endOfInterrupt(vector: 0x41) // still asserted: delivered again
        #expect(sink.messages.count == 2)
        io.setIRQ(16, level: false)
        io.endOfInterrupt(vector: 0x41)
        #expect(sink.messages.count == 2)
        #expect(read(io, 0x10 + 32) & 0x4000 == 0)
        io.setIRQ(16, level: true)
        #expect(sink.messages.count == 3)
        io.mmioWrite(offset: 0x40, size: 4, value: 0x41) // EOI register
        #expect(sink.messages.count == 4)
    }

    @Test func msiDecodingAndUserspaceChipRouting() throws {
        let msi = APICMessage(msiAddress: 0xFEE0_3004, data: 0x0000_8151)
        #expect(msi == APICMessage(vector: 0x51, deliveryMode: .lowestPriority, logicalDestination: true,
                                   destination: 3, levelTriggered: true))
        #expect(APICMessage(msiAddress: 0xC000_0000, data: 0x30) == nil)
        #expect(msi?.msi.address == 0xFEE0_3004)
        #expect(APICMessage(msiAddress: msi!.msi.address, data: msi!.msi.data) == msi)

        let sink = Sink()
        let chip = UserspaceIRQChip(ioapic: IOAPIC(sink: sink))
        let bus = IOBus()
        try chip.map(on: bus) // the chip's locking proxies
        // PIC side: Linux init, unmask IRQ 0 and 4.
        for (p, v) in [(0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01), (0x21, 0xEE)] as [(UInt16, UInt8)] {
            bus.portWrite(p, size: 1, value: UInt32(v))
        }
        #expect(bus.portRead(0x21, size: 1) == 0xEE)
        // IOAPIC side: pin 2 (the PIT's GSI 0), pin 4.
        for (reg, v) in [(0x10 + 4, 0x20), (0x10 + 8, 0x24)] as [(UInt64, UInt64)] {
            bus.mmioWrite(PhysicalMap.ioapicBase, size: 4, value: reg)
            bus.mmioWrite(PhysicalMap.ioapicBase + 0x10, size: 4, value: v)
        }
        #expect(bus.mmioRead(PhysicalMap.ioapicBase + 0x10, size: 4) == 0x24)
        let line = IRQLine(controller: chip, gsi: 0)
        line.pulse()
        #expect(sink.messages.map(\.vector) == [0x20])
        #expect(chip.acknowledge() == 0x30)
        bus.portWrite(0x20, size: 1, value: 0x20) // EOI, or IRQ 4 would wait behind IRQ 0
        chip.setIRQ(4, level: true)
        #expect(sink.messages.map(\.vector) == [0x20, 0x24])
        #expect(chip.pendingInterrupt())
        #expect(chip.withChips { pic, _ in pic.master.irr } == 0x10)
        chip.setIRQ(17, level: true) // PCI GSI: IOAPIC only (pin masked)
        #expect(sink.messages.count == 2)
        chip.signalMSI(address: 0xFEE0_0000, data: 0x61)
        #expect(sink.messages.last == APICMessage(vector: 0x61, destination: 0))
    }
}
