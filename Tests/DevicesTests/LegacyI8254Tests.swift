import Testing
@testable import Devices

struct I8254Tests {
    final class Harness {
        let irq = RecordingInterruptController()
        let clock = ManualClock()
        let pit: I8254
        let bus = IOBus()
        init() {
            pit = I8254(irq: IRQLine(controller: irq, gsi: 0), clock: clock.deviceClock)
            try! pit.map(on: bus)
        }
        func out(_ port: UInt16, _ v: UInt8) { bus.portWrite(port, size: 1, value: UInt32(v)) }
        func inb(_ port: UInt16) -> UInt8 { UInt8(bus.portRead(port, size: 1)) }
        /// Advance by a number of PIT ticks (rounded up to whole nanoseconds).
        func advance(ticks: UInt64) { clock.advance(nanoseconds: (ticks * 1_000_000_000 + I8254.frequency - 1) / I8254.frequency) }
        func latch0() -> UInt16 {
            out(0x43, 0x00)
            let lo = inb(0x40)
            return UInt16(inb(0x40)) << 8 | UInt16(lo)
        }
    }

    /// Linux's periodic PIT clockevent: 0x34 (counter 0, lobyte/hibyte, mode 2), LATCH = 1193.
    @Test func mode2CountsDownReloadsAndTicksIRQ0() throws {
        let h = Harness()
        h.out(0x43, 0x34)
        h.out(0x40, UInt8(1193 & 0xFF))
        h.out(0x40, UInt8(1193 >> 8))
        #expect(h.latch0() == 1193)
        h.advance(ticks: 100)
        #expect(h.latch0() == 1093)
        let deadline = try! #require(h.pit.nextDeadline())
        #expect(deadline > h.clock.monotonic)
        h.pit.poll()
        #expect(h.irq.events.isEmpty)
        h.clock.monotonic = deadline
        #expect(h.latch0() == 1193) // reloaded
        h.pit.poll()
        #expect(h.irq.events == [.irq(0, true), .irq(0, false)])
        h.pit.poll()
        #expect(h.irq.events.count == 2) // one pulse per edge
        // Missed periods: the deadline is overdue (in the past) until a poll, which
        // coalesces them into one pulse.
        h.advance(ticks: 1193 * 5)
        #expect(try #require(h.pit.nextDeadline()) <= h.clock.monotonic)
        h.pit.poll()
        #expect(h.irq.events.count == 4)
        let next = try! #require(h.pit.nextDeadline())
        #expect(next > h.clock.monotonic && next - h.clock.monotonic <= 1_000_000)
    }

    @Test func mode0OneShot() {
        let h = Harness()
        h.out(0x43, 0x30)
        h.out(0x40, 0x00)
        #expect(h.pit.nextDeadline() == nil) // waiting for the high byte
        h.out(0x40, 0x10) // 0x1000 ticks
        let d = try! #require(h.pit.nextDeadline())
        #expect(d - h.clock.monotonic == (4096 * 1_000_000_000 + I8254.frequency - 1) / I8254.frequency)
        h.clock.monotonic = d
        h.pit.poll()
        #expect(h.irq.events == [.irq(0, true), .irq(0, false)])
        #expect(h.pit.nextDeadline() == nil)
        // Read-back status: OUT high, mode 0, lobyte/hibyte.
        h.out(0x43, 0xE2)
        #expect(h.inb(0x40) == 0x80 | 0x30)
    }

    /// pit_calibrate_tsc / quick_pit_calibrate: counter 2, mode 0, gate via port 0x61,
    /// wait for OUT (bit 5), read MSBs without latching.
    @Test func counter2CalibrationThroughPort61() {
        let h = Harness()
        h.out(0x61, (h.inb(0x61) & ~0x02) | 0x01)
        h.out(0x43, 0xB0)
        h.out(0x42, 0xFF)
        h.out(0x42, 0xFF)
        #expect(h.inb(0x61) & 0x20 == 0)
        h.advance(ticks: 0x100)
        _ = h.inb(0x42)
        #expect(h.inb(0x42) == 0xFE)
        h.advance(ticks: 0xFF00)
        #expect(h.inb(0x61) & 0x20 != 0)
        #expect(h.inb(0x61) & 0x01 == 0x01)
        #expect(h.irq.events.isEmpty) // counter 2 has no IRQ
        // Refresh toggle flips about every 15 us.
        let a = h.inb(0x61) & 0x10
        h.clock.advance(nanoseconds: 15_085)
        #expect(h.inb(0x61) & 0x10 != a)
    }

    @Test func mode3SquareWaveAndLatching() {
        let h = Harness()
        h.out(0x43, 0x36) // counter 0, lo/hi, mode 3
        h.out(0x40, 100)
        h.out(0x40, 0)
        h.advance(ticks: 10)
        #expect(h.latch0() == 80) // counts down by two
        // A latched value holds while time moves on.
        h.out(0x43, 0x00)
        h.advance(ticks: 20)
        #expect(h.inb(0x40) == 80)
        #expect(h.inb(0x40) == 0)
        #expect(h.latch0() == 40)
        #expect(h.pit.output(h.pit.counters[0], at: h.clock.monotonic) == true)
        h.advance(ticks: 25) // 55 ticks in: second half of the period
        #expect(h.pit.output(h.pit.counters[0], at: h.clock.monotonic) == false)
        // LSB-only access mode.
        h.out(0x43, 0x14) // counter 0, LSB only, mode 2
        h.out(0x40, 50)
        h.advance(ticks: 5)
        #expect(h.inb(0x40) == 45)
        #expect(h.inb(0x40) == 45)
    }

    @Test func mode1WaitsForGateEdge() {
        let h = Harness()
        h.out(0x61, 0x00)
        h.out(0x43, 0xB2) // counter 2, lo/hi, mode 1
        h.out(0x42, 10); h.out(0x42, 0)
        h.advance(ticks: 5)
        #expect(h.inb(0x61) & 0x20 != 0) // idle high, not counting
        h.out(0x61, 0x01) // rising gate edge starts the one-shot
        h.advance(ticks: 5)
        #expect(h.inb(0x61) & 0x20 == 0)
        h.advance(ticks: 5)
        #expect(h.inb(0x61) & 0x20 != 0)
    }
}
