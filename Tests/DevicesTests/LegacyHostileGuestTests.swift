import Testing
@testable import Devices
import GuestMemory

/// A guest is hostile: random accesses of every size to every register of every chip must
/// never trap, and the chips must keep answering afterwards.
struct LegacyHostileGuestTests {
    struct SplitMix {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    @Test func randomAccessesNeverTrap() throws {
        let irq = RecordingInterruptController()
        let clock = ManualClock(wall: 1_700_000_000 * 1_000_000_000)
        let bus = IOBus()
        let uart = NS8250(irq: IRQLine(controller: irq, gsi: 4))
        try bus.mapPorts(uart, name: "com1", base: 0x3F8, count: 8)
        let kbc = I8042(keyboardIRQ: IRQLine(controller: irq, gsi: 1), auxIRQ: IRQLine(controller: irq, gsi: 12))
        try kbc.map(on: bus)
        let rtc = MC146818(ramSize: 1 << 30, irq: IRQLine(controller: irq, gsi: 8), clock: clock.deviceClock)
        try bus.mapPorts(rtc, name: "rtc", base: 0x70, count: 2)
        try bus.mapPorts(DebugExit(), name: "exit", base: 0xF4, count: 1)
        let pic = I8259()
        try pic.map(on: bus)
        let pit = I8254(irq: IRQLine(controller: irq, gsi: 0), clock: clock.deviceClock)
        try pit.map(on: bus)
        let ioapic = IOAPIC()
        try ioapic.map(on: bus)
        let host = PCIHost(bus: bus, interrupts: irq)
        try bus.mapPorts(host, name: "pci", base: 0xCF8, count: 8)
        try host.register(TestPCIFunction(), slot: 1)
        try host.register(TestPCIFunction(pin: 4), slot: 7, function: 3)

        let ports: [UInt16] = Array(0x3F8...0x3FF) + [0x60, 0x64, 0x70, 0x71, 0xF4, 0x20, 0x21, 0xA0, 0xA1,
                                                       0x4D0, 0x4D1, 0x40, 0x41, 0x42, 0x43, 0x61] + Array(0xCF8...0xCFF)
        var rng = SplitMix(state: 42)
        for _ in 0..<60_000 {
            let r = rng.next()
            let size = [1, 2, 4][Int(r % 3)]
            let value = UInt32(truncatingIfNeeded: r >> 16)
            switch (r >> 8) % 8 {
            case 0:
                // Config cycles at random devfn/register with the enable bit.
                bus.portWrite(0xCF8, size: 4, value: 0x8000_0000 | (value & 0x00FF_FFFC))
                bus.portWrite(0xCFC + UInt16((r >> 4) & 3), size: size, value: UInt32(truncatingIfNeeded: r >> 32))
            case 1:
                _ = bus.mmioRead(PhysicalMap.ioapicBase + (r >> 40) % 0x100, size: size)
                bus.mmioWrite(PhysicalMap.ioapicBase + (r >> 48) % 0x100, size: size, value: UInt64(value))
            case 2:
                clock.advance(nanoseconds: (r >> 40) % 50_000_000)
                pit.poll(); rtc.poll()
                _ = pit.nextDeadline(); _ = rtc.nextDeadline()
                if pic.pendingInterrupt() { _ = pic.acknowledge() }
                ioapic.setIRQ(Int((r >> 20) % 30), level: r & 1 == 0)
                ioapic.endOfInterrupt(vector: UInt8(truncatingIfNeeded: r >> 24))
                pic.setIRQ(Int((r >> 28) % 20), level: r & 2 == 0)
            case 3:
                uart.receive((0..<Int((r >> 32) % 40)).map { UInt8(truncatingIfNeeded: $0) })
                kbc.keyboardInput([UInt8(truncatingIfNeeded: r >> 40)])
            default:
                let port = ports[Int((r >> 20) % UInt64(ports.count))]
                if r & 0x10 == 0 {
                    bus.portWrite(port, size: size, value: value)
                } else {
                    _ = bus.portRead(port, size: size)
                }
            }
        }
        // Still alive and answering (after draining whatever the fuzzing queued).
        for _ in 0..<64 where bus.portRead(0x64, size: 1) & 1 != 0 { _ = bus.portRead(0x60, size: 1) }
        bus.portWrite(0x64, size: 1, value: 0xAA)
        var answer: UInt32 = 0
        for _ in 0..<64 where bus.portRead(0x64, size: 1) & 1 != 0 { answer = bus.portRead(0x60, size: 1) }
        #expect(answer == 0x55)
        bus.portWrite(0xCF8, size: 4, value: 0x8000_0000)
        #expect(bus.portRead(0xCFC, size: 4) == 0x1237_8086)
        rtc.ioWrite(offset: 0, size: 1, value: 0x0D)
        #expect(rtc.ioRead(offset: 1, size: 1) == 0x80)
    }
}
