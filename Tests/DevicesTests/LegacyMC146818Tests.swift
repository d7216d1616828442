import Testing
@testable import Devices

struct MC146818Tests {
    // 2026-11-27 09:58:07 UTC, a Friday.
    static let when: Int64 = 1_795_773_487

    final class Harness {
        let irq = RecordingInterruptController()
        let clock = ManualClock(monotonic: 5_000_000_000, wall: MC146818Tests.when * 1_000_000_000)
        let rtc: MC146818
        init(ram: UInt64 = 512 << 20, cpus: Int = 2) {
            rtc = MC146818(ramSize: ram, cpus: cpus, irq: IRQLine(controller: irq, gsi: 8), clock: clock.deviceClock)
        }
        func r(_ i: UInt8) -> UInt8 {
            rtc.ioWrite(offset: 0, size: 1, value: UInt32(i))
            return UInt8(rtc.ioRead(offset: 1, size: 1))
        }
        func w(_ i: UInt8, _ v: UInt8) {
            rtc.ioWrite(offset: 0, size: 1, value: UInt32(i))
            rtc.ioWrite(offset: 1, size: 1, value: UInt32(v))
        }
    }

    @Test func calendarConversion() {
        #expect(MC146818.days(fromCivil: 1970, 1, 1) == 0)
        #expect(MC146818.days(fromCivil: 2000, 3, 1) == 11_017)
        #expect(MC146818.civil(fromDays: 11_016) == (2000, 2, 29))
        #expect(MC146818.civil(fromDays: -1) == (1969, 12, 31))
        for d: Int64 in stride(from: -800_000, to: 800_000, by: 997) {
            let (y, m, dd) = MC146818.civil(fromDays: d)
            #expect(MC146818.days(fromCivil: y, m, dd) == d)
        }
    }

    @Test func timeInBCDAnd24Hours() {
        let h = Harness()
        #expect(h.r(0x00) == 0x07)
        #expect(h.r(0x02) == 0x58)
        #expect(h.r(0x04) == 0x09)
        #expect(h.r(0x06) == 0x06) // Friday (Sunday = 1)
        #expect(h.r(0x07) == 0x27)
        #expect(h.r(0x08) == 0x11)
        #expect(h.r(0x09) == 0x26)
        #expect(h.r(0x32) == 0x20)
        #expect(h.r(0x0D) == 0x80)
        #expect(h.r(0x0A) == 0x26)
        h.clock.advance(nanoseconds: 3_000_000_000)
        #expect(h.r(0x00) == 0x10)
    }

    @Test func binaryAnd12HourModes() {
        let h = Harness()
        h.clock.wall += 5 * 3600 * 1_000_000_000 // 14:58:07
        h.w(0x0B, 0x04) // binary, 12-hour
        #expect(h.r(0x00) == 7)
        #expect(h.r(0x02) == 58)
        #expect(h.r(0x04) == 0x80 | 2) // 2 PM
        #expect(h.r(0x09) == 26)
        #expect(h.r(0x32) == 20)
        h.w(0x0B, 0x00) // BCD 12-hour
        #expect(h.r(0x04) == 0x82)
    }

    @Test func guestSetsTheTime() {
        let h = Harness()
        h.w(0x0B, 0x82) // SET, 24h BCD
        h.w(0x00, 0x30); h.w(0x02, 0x15); h.w(0x04, 0x23)
        h.w(0x07, 0x31); h.w(0x08, 0x12); h.w(0x09, 0x99); h.w(0x32, 0x19)
        h.clock.advance(nanoseconds: 10_000_000_000) // frozen while SET
        #expect(h.r(0x00) == 0x30)
        h.w(0x0B, 0x02)
        h.clock.advance(nanoseconds: 31_000_000_000)
        // 1999-12-31 23:15:30 + 31 s
        #expect(h.r(0x00) == 0x01)
        #expect(h.r(0x02) == 0x16)
        #expect(h.r(0x09) == 0x99)
        h.clock.advance(nanoseconds: 45 * 60 * 1_000_000_000)
        #expect(h.r(0x09) == 0x00)
        #expect(h.r(0x32) == 0x20)
        #expect(h.r(0x08) == 0x01)
        #expect(h.r(0x07) == 0x01)
        #expect(h.r(0x06) == 0x07) // 2000-01-01 was a Saturday
    }

    @Test func updateInProgressWindow() {
        let h = Harness()
        #expect(h.r(0x0A) & 0x80 == 0)
        h.clock.advance(nanoseconds: 999_900_000)
        #expect(h.r(0x0A) & 0x80 != 0)
        h.clock.advance(nanoseconds: 200_000)
        #expect(h.r(0x0A) & 0x80 == 0)
    }

    @Test func nvramMemorySizes() {
        let h = Harness(ram: 6 << 30, cpus: 4)
        #expect(h.r(0x15) == 0x80 && h.r(0x16) == 0x02)
        #expect(h.r(0x17) == 0xFF && h.r(0x18) == 0xFF)
        #expect(h.r(0x30) == 0xFF && h.r(0x31) == 0xFF)
        // below 4 GiB: 3 GiB of RAM; above 16 MiB: (3G - 16M) / 64K = 0xBF00
        #expect(UInt16(h.r(0x35)) << 8 | UInt16(h.r(0x34)) == 0xBF00)
        // above 4 GiB: 3 GiB / 64 KiB = 0xC000
        #expect(UInt32(h.r(0x5D)) << 16 | UInt32(h.r(0x5C)) << 8 | UInt32(h.r(0x5B)) == 0xC000)
        #expect(h.r(0x5F) == 3)
        let small = Harness(ram: 8 << 20)
        #expect(UInt16(small.r(0x18)) << 8 | UInt16(small.r(0x17)) == 7 * 1024)
        #expect(small.r(0x34) == 0 && small.r(0x35) == 0)
        var sum: UInt16 = 0
        for i in UInt8(0x10)...0x2D { sum &+= UInt16(small.r(i)) }
        #expect(UInt16(small.r(0x2E)) << 8 | UInt16(small.r(0x2F)) == sum)
        small.w(0x40, 0x77)
        #expect(small.r(0x40) == 0x77)
        // NMI bit of the index port.
        small.rtc.ioWrite(offset: 0, size: 1, value: 0x8F)
        #expect(small.rtc.nmiDisabled && small.rtc.index == 0x0F)
    }

    @Test func periodicAndUpdateInterrupts() {
        let h = Harness()
        #expect(h.rtc.nextDeadline() == nil)
        h.w(0x0B, 0x42) // PIE, 24h
        let d = try! #require(h.rtc.nextDeadline())
        #expect(d > h.clock.monotonic && d - h.clock.monotonic <= 976_562)
        h.clock.advance(nanoseconds: d - h.clock.monotonic + 10)
        #expect(h.rtc.nextDeadline() == h.clock.monotonic) // overdue until polled
        h.rtc.poll()
        #expect(h.irq.level(8) == true)
        let c = h.r(0x0C)
        #expect(c & 0xC0 == 0xC0)
        #expect(h.irq.level(8) == false)
        #expect(h.r(0x0C) & 0x40 == 0)
        // Update-ended interrupt once per second.
        h.w(0x0B, 0x12)
        h.clock.advance(nanoseconds: 1_000_000_000)
        h.rtc.poll()
        #expect(h.irq.level(8) == true)
        #expect(h.r(0x0C) & 0x90 == 0x90)
        // Writing the alarm registers does not disturb the clock's sub-second phase.
        h.clock.advance(nanoseconds: 600_000_000)
        let phaseBefore = h.r(0x00)
        h.w(0x01, 0x30)
        h.clock.advance(nanoseconds: 500_000_000)
        #expect(h.r(0x00) == phaseBefore + 1)
        h.clock.advance(nanoseconds: 900_000_000)
        _ = h.r(0x0C)
        // Alarm at the next second.
        h.w(0x0B, 0x22)
        h.w(0x01, 0x11); h.w(0x03, 0xC0); h.w(0x05, 0xC0)
        _ = h.r(0x0C)
        h.clock.advance(nanoseconds: 1_000_000_000) // now :11
        h.rtc.poll()
        #expect(h.irq.level(8) == true)
        #expect(h.r(0x0C) & 0xA0 == 0xA0)
    }
}
