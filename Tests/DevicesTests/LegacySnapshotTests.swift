import Foundation
import Testing
@testable import Devices

/// Every chip's state survives encode → decode → restore into a fresh instance, and the
/// restored chip behaves like the original.
struct LegacySnapshotTests {
    func roundTrip<T: Codable>(_ value: T) throws -> T {
        try JSONDecoder().decode(T.self, from: JSONEncoder().encode(value))
    }

    @Test func uartKeepsFIFOAndRaisesPendingIRQ() throws {
        let a = NS8250(irq: IRQLine(controller: RecordingInterruptController(), gsi: 4))
        a.ioWrite(offset: 2, size: 1, value: 0x01)
        a.ioWrite(offset: 4, size: 1, value: 0x08)
        a.ioWrite(offset: 1, size: 1, value: 0x01)
        a.ioWrite(offset: 7, size: 1, value: 0x5A)
        a.receive([0x41, 0x42])
        let irq = RecordingInterruptController()
        let b = NS8250(irq: IRQLine(controller: irq, gsi: 4))
        b.restore(try roundTrip(a.snapshot()))
        #expect(irq.level(4) == true)
        #expect(b.ioRead(offset: 7, size: 1) == 0x5A)
        #expect(b.ioRead(offset: 0, size: 1) == 0x41)
        #expect(b.ioRead(offset: 0, size: 1) == 0x42)
        #expect(irq.level(4) == false)
    }

    @Test func kbcRTCAndPICRoundTrip() throws {
        let rec = RecordingInterruptController()
        let k = I8042(keyboardIRQ: IRQLine(controller: rec, gsi: 1), auxIRQ: IRQLine(controller: rec, gsi: 12))
        k.writeData(0xF2)
        k.writeCommand(0x60)
        let k2 = I8042(keyboardIRQ: IRQLine(controller: rec, gsi: 1), auxIRQ: IRQLine(controller: rec, gsi: 12))
        k2.restore(try roundTrip(k.snapshot()))
        #expect(k2.readData() == 0xFA)
        k2.writeData(0x44) // completes the pending 0x60
        #expect(k2.commandByte == 0x44)

        let clock = ManualClock(wall: 1_000_000 * 1_000_000_000)
        let r = MC146818(ramSize: 64 << 20, irq: IRQLine(controller: rec, gsi: 8), clock: clock.deviceClock)
        r.writeRegister(0x0B, 0x82)
        r.writeRegister(0x09, 0x99)
        r.writeRegister(0x0B, 0x02)
        let r2 = MC146818(ramSize: 1 << 20, irq: IRQLine(controller: rec, gsi: 8), clock: clock.deviceClock)
        r2.restore(try roundTrip(r.snapshot()))
        #expect(r2.readRegister(0x09) == 0x99)
        #expect(r2.readRegister(0x34) == r.readRegister(0x34))

        let p = I8259()
        for (port, v) in [(0, 0x11), (1, 0x30), (1, 0x04), (1, 0x01), (1, 0x00)] { p.write(.master, offset: port, value: UInt8(v)) }
        p.setIRQ(3, level: true)
        let p2 = I8259()
        p2.restore(try roundTrip(p.snapshot()))
        #expect(p2.pendingInterrupt())
        #expect(p2.acknowledge() == 0x33)
    }

    @Test func pitKeepsPhaseAcrossClocks() throws {
        let rec = RecordingInterruptController()
        let c1 = ManualClock(monotonic: 10_000_000_000)
        let pit = I8254(irq: IRQLine(controller: rec, gsi: 0), clock: c1.deviceClock)
        pit.write(3, 0x34); pit.write(0, 0xE8); pit.write(0, 0x03) // 1000
        c1.advance(nanoseconds: 100_000) // ~119 ticks
        let before = pit.currentCount(pit.counters[0], at: c1.monotonic)
        let c2 = ManualClock(monotonic: 3_000_000_000) // another host, another boot
        let pit2 = I8254(irq: IRQLine(controller: rec, gsi: 0), clock: c2.deviceClock)
        pit2.restore(try roundTrip(pit.snapshot()))
        #expect(pit2.currentCount(pit2.counters[0], at: c2.monotonic) == before)
    }

    @Test func ioapicAndPCIHostRoundTrip() throws {
        let io = IOAPIC()
        io.writeRegister(0x10, 0xA041)
        io.setIRQ(16, level: true)
        let io2 = IOAPIC()
        io2.restore(try roundTrip(io.snapshot()))
        #expect(io2.readRegister(0x10) == 0xA041)
        #expect(io2.irr == io.irr)

        let bus = IOBus()
        let host = PCIHost(bus: bus, interrupts: RecordingInterruptController())
        let dev = TestPCIFunction()
        try host.register(dev, slot: 2)
        host.ioWrite(offset: 0, size: 4, value: 0x8000_1010)
        let saved = try roundTrip(host.snapshot())
        let header = try roundTrip(dev.header)
        #expect(header == dev.header)
        let bus2 = IOBus()
        let host2 = PCIHost(bus: bus2, interrupts: RecordingInterruptController())
        let dev2 = TestPCIFunction()
        try host2.register(dev2, slot: 2)
        dev2.header = header
        dev2.header.write(offset: 0x10, size: 4, value: 0xD000_0000) // moved before the save
        host2.restore(saved)
        #expect(host2.configAddress == 0x8000_1010)
        #expect(host2.mappedBar(slot: 2, index: 0)?.base == 0xD000_0000)
        // A corrupted header snapshot is rejected, not trapped on.
        var json = String(decoding: try JSONEncoder().encode(dev.header), as: UTF8.self)
        json = json.replacingOccurrences(of: "\"bytes\":[", with: "\"bytes\":[1,")
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(PCIConfigHeader.self, from: Data(json.utf8)) }
    }
}
