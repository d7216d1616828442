import GuestMemory

/// The MC146818 real-time clock and its CMOS NVRAM: index port 0x70 (bit 7 disables NMI),
/// data port 0x71, IRQ 8.
///
/// - Time registers 0x00-0x09 and the century at 0x32 come from the wall clock plus an
///   offset the guest sets by writing them; BCD or binary and 12/24-hour per register B.
///   Setting B.SET freezes them for writing; clearing it (or writing with SET clear)
///   makes the written time the new guest time.
/// - Register A: UIP (bit 7) reads set during the last 244 µs before each second ticks,
///   divider and rate select are writable. Register B as the guest writes it. Register C
///   holds the interrupt flags (periodic PF, alarm AF, update-ended UF, IRQF) and clears
///   on read. Register D reads 0x80 (valid RAM and time).
/// - Interrupts: flags are evaluated when register C is read and when the VMM calls
///   `poll()`; `nextDeadline()` says (in monotonic nanoseconds) when the next enabled
///   periodic/update/alarm event falls, so the VMM can arm a timer. IRQ 8 is raised as a
///   level when IRQF sets and lowered when register C is read.
/// - NVRAM (128 bytes) holds what SeaBIOS and bootloaders read: base memory 0x15/0x16
///   (640 KiB), extended memory in KiB 0x17/0x18 and 0x30/0x31 (capped at 0xFFFF), memory
///   above 16 MiB below 4 GiB in 64 KiB blocks 0x34/0x35, memory above 4 GiB in 64 KiB
///   blocks 0x5B-0x5D, CPU count minus one at 0x5F (SeaBIOS), equipment byte 0x14, and
///   the checksum over 0x10-0x2D at 0x2E/0x2F.
public final class MC146818: PortIODevice {
    public static let basePort: UInt16 = 0x70
    public static let portCount: UInt16 = 2
    public static let irq: UInt32 = 8

    public enum Register {
        public static let seconds = 0x00, secondsAlarm = 0x01, minutes = 0x02, minutesAlarm = 0x03
        public static let hours = 0x04, hoursAlarm = 0x05, dayOfWeek = 0x06, dayOfMonth = 0x07
        public static let month = 0x08, year = 0x09, a = 0x0A, b = 0x0B, c = 0x0C, d = 0x0D
        public static let century = 0x32
    }
    public enum B {
        public static let set: UInt8 = 0x80, periodicInterrupt: UInt8 = 0x40, alarmInterrupt: UInt8 = 0x20
        public static let updateInterrupt: UInt8 = 0x10, squareWave: UInt8 = 0x08, binary: UInt8 = 0x04
        public static let hours24: UInt8 = 0x02, daylightSaving: UInt8 = 0x01
    }
    public enum C {
        public static let irqf: UInt8 = 0x80, periodic: UInt8 = 0x40, alarm: UInt8 = 0x20, update: UInt8 = 0x10
    }

    /// The 128 bytes of clock registers and NVRAM.
    public private(set) var cmos = [UInt8](repeating: 0, count: 128)
    public private(set) var index: UInt8 = 0
    /// Whether the guest has disabled NMIs through bit 7 of the index port.
    public private(set) var nmiDisabled = false

    private let irqLine: IRQLine
    private let clock: DeviceClock
    private var irqLevel = false
    /// Guest time = wall clock + offset (nanoseconds).
    private var offset: Int64 = 0
    private var lastSecond: Int64
    private var lastPeriod: UInt64 = 0

    /// - Parameters:
    ///   - ramSize: guest RAM in bytes (for the NVRAM memory fields).
    ///   - cpus: number of vCPUs (NVRAM 0x5F).
    ///   - irq: IRQ 8.
    ///   - clock: time sources (the host's by default).
    public init(ramSize: UInt64, cpus: Int = 1, irq: IRQLine, clock: DeviceClock = .host) {
        self.irqLine = irq
        self.clock = clock
        lastSecond = 0
        cmos[Register.a] = 0x26
        cmos[Register.b] = B.hours24
        cmos[Register.d] = 0x80
        setMemorySize(ramSize)
        cmos[0x5F] = UInt8(clamping: max(cpus, 1) - 1)
        cmos[0x14] = 0x06 // FPU and PS/2 mouse port present, EGA/VGA display
        updateChecksum()
        lastSecond = floorDiv(guestNanoseconds, 1_000_000_000)
        lastPeriod = periodIndex(clock.monotonicNanoseconds()) ?? 0
    }

    /// Writes the memory-size fields of the NVRAM.
    public func setMemorySize(_ ramSize: UInt64) {
        cmos[0x15] = 0x80; cmos[0x16] = 0x02 // 640 KiB
        let low = min(ramSize, PhysicalMap.pciHoleStart)
        let high = ramSize > PhysicalMap.pciHoleStart ? ramSize - PhysicalMap.pciHoleStart : 0
        let ext = low > 0x10_0000 ? min((low - 0x10_0000) / 1024, 0xFFFF) : 0
        cmos[0x17] = UInt8(ext & 0xFF); cmos[0x18] = UInt8(ext >> 8)
        cmos[0x30] = UInt8(ext & 0xFF); cmos[0x31] = UInt8(ext >> 8)
        let above16M = low > 0x100_0000 ? min((low - 0x100_0000) >> 16, 0xFFFF) : 0
        cmos[0x34] = UInt8(above16M & 0xFF); cmos[0x35] = UInt8(above16M >> 8)
        let above4G = min(high >> 16, 0xFF_FFFF)
        cmos[0x5B] = UInt8(above4G & 0xFF); cmos[0x5C] = UInt8((above4G >> 8) & 0xFF); cmos[0x5D] = UInt8(above4G >> 16)
        updateChecksum()
    }

    /// Sets an NVRAM byte from the host side (not the clock registers 0x00-0x0D).
    public func setNVRAM(_ index: Int, _ value: UInt8) {
        guard index >= 0x0E, index < cmos.count else { return }
        cmos[index] = value
        updateChecksum()
    }

    private func updateChecksum() {
        var sum: UInt16 = 0
        for i in 0x10...0x2D { sum &+= UInt16(cmos[i]) }
        cmos[0x2E] = UInt8(sum >> 8)
        cmos[0x2F] = UInt8(sum & 0xFF)
    }

    // MARK: Ports

    public func ioRead(offset: UInt16, size: Int) -> UInt32 {
        guard offset == 1 else { return 0xFF }
        return UInt32(readRegister(Int(index)))
    }

    public func ioWrite(offset: UInt16, size: Int, value: UInt32) {
        let v = UInt8(truncatingIfNeeded: value)
        if offset == 0 {
            index = v & 0x7F
            nmiDisabled = v & 0x80 != 0
        } else if offset == 1 {
            writeRegister(Int(index), v)
        }
    }

    // MARK: Registers

    private var binary: Bool { cmos[Register.b] & B.binary != 0 }
    private var hours24: Bool { cmos[Register.b] & B.hours24 != 0 }
    private var halted: Bool { cmos[Register.b] & B.set != 0 }
    private var guestNanoseconds: Int64 { clock.wallClockNanoseconds() &+ offset }

    /// Registers refreshed from the clock on read (the alarms are plain storage).
    private static func isTimeRegister(_ r: Int) -> Bool {
        switch r {
        case Register.seconds, Register.minutes, Register.hours, Register.dayOfWeek, Register.dayOfMonth,
             Register.month, Register.year, Register.century: return true
        default: return false
        }
    }

    public func readRegister(_ r: Int) -> UInt8 {
        guard r >= 0, r < cmos.count else { return 0xFF }
        switch r {
        case Register.a:
            var a = cmos[Register.a] & 0x7F
            let ns = floorMod(guestNanoseconds, 1_000_000_000)
            if !halted, dividerRunning, ns >= 1_000_000_000 - 244_000 { a |= 0x80 }
            return a
        case Register.c:
            poll()
            let c = cmos[Register.c]
            cmos[Register.c] = 0
            if irqLevel { irqLevel = false; irqLine.lower() }
            return c
        case Register.d:
            return 0x80
        default:
            if MC146818.isTimeRegister(r) && !halted { refreshTime() }
            return cmos[r]
        }
    }

    public func writeRegister(_ r: Int, _ v: UInt8) {
        guard r >= 0, r < cmos.count else { return }
        switch r {
        case Register.a:
            cmos[Register.a] = v & 0x7F
            lastPeriod = periodIndex(clock.monotonicNanoseconds()) ?? 0
        case Register.b:
            let wasHalted = halted
            if !wasHalted { refreshTime() }
            var nb = v
            if nb & B.set != 0 { nb &= ~B.updateInterrupt }
            let formatChanged = (cmos[Register.b] ^ nb) & (B.binary | B.hours24) != 0
            if formatChanged && !wasHalted {
                cmos[Register.b] = nb
                refreshTime()
            } else {
                cmos[Register.b] = nb
            }
            if wasHalted && nb & B.set == 0 { adoptRegisterTime() }
            updateIRQ()
        case Register.c, Register.d:
            break
        default:
            if MC146818.isTimeRegister(r) {
                if !halted { refreshTime() }
                cmos[r] = v
                if !halted { adoptRegisterTime() }
            } else {
                cmos[r] = v
            }
        }
    }

    // MARK: Time conversion

    private func encode(_ value: Int) -> UInt8 {
        let v = max(0, min(value, 99))
        return binary ? UInt8(v) : UInt8((v / 10) << 4 | (v % 10))
    }

    private func decode(_ raw: UInt8) -> Int {
        binary ? Int(raw) : Int(raw >> 4) * 10 + Int(raw & 0x0F)
    }

    private func refreshTime() {
        let seconds = floorDiv(guestNanoseconds, 1_000_000_000)
        let days = floorDiv(seconds, 86_400)
        let secOfDay = Int(seconds - days * 86_400)
        let (year, month, day) = MC146818.civil(fromDays: days)
        let hour = secOfDay / 3600
        cmos[Register.seconds] = encode(secOfDay % 60)
        cmos[Register.minutes] = encode((secOfDay / 60) % 60)
        if hours24 {
            cmos[Register.hours] = encode(hour)
        } else {
            let h12 = hour % 12 == 0 ? 12 : hour % 12
            cmos[Register.hours] = encode(h12) | (hour >= 12 ? 0x80 : 0)
        }
        cmos[Register.dayOfWeek] = encode(Int(floorMod(days + 4, 7)) + 1)
        cmos[Register.dayOfMonth] = encode(day)
        cmos[Register.month] = encode(month)
        cmos[Register.year] = encode(Int(floorMod(Int64(year), 100)))
        cmos[Register.century] = encode(Int(floorDiv(Int64(year), 100)))
    }

    private func registerHour() -> Int {
        let raw = cmos[Register.hours]
        if hours24 { return min(decode(raw), 23) }
        let h = min(decode(raw & 0x7F), 12) % 12
        return h + (raw & 0x80 != 0 ? 12 : 0)
    }

    /// Makes the time in the registers the guest's time.
    private func adoptRegisterTime() {
        let year = decode(cmos[Register.century]) * 100 + decode(cmos[Register.year])
        let month = max(1, min(decode(cmos[Register.month]), 12))
        let day = max(1, min(decode(cmos[Register.dayOfMonth]), 31))
        let days = MC146818.days(fromCivil: year, month, day)
        let seconds = days * 86_400 + Int64(registerHour()) * 3600
            + Int64(min(decode(cmos[Register.minutes]), 59)) * 60 + Int64(min(decode(cmos[Register.seconds]), 59))
        offset = seconds &* 1_000_000_000 &- clock.wallClockNanoseconds()
        lastSecond = seconds
    }

    /// Days since 1970-01-01 for a proleptic Gregorian date.
    static func days(fromCivil year: Int, _ month: Int, _ day: Int) -> Int64 {
        let y = Int64(month <= 2 ? year - 1 : year)
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let m = Int64(month)
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + Int64(day) - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// The date of a day number (days since 1970-01-01).
    static func civil(fromDays days: Int64) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (Int(yoe + era * 400 + (m <= 2 ? 1 : 0)), Int(m), Int(d))
    }

    // MARK: Interrupts

    private var dividerRunning: Bool { (cmos[Register.a] >> 4) & 0x7 == 0x2 }

    /// Period of the periodic interrupt in nanoseconds, nil when off.
    private var periodNanoseconds: UInt64? {
        let rate = cmos[Register.a] & 0x0F
        guard rate != 0, dividerRunning else { return nil }
        let r = rate <= 2 ? rate + 7 : rate
        return (UInt64(1) << (r - 1)) * 1_000_000_000 / 32_768
    }

    private func periodIndex(_ mono: UInt64) -> UInt64? {
        guard let p = periodNanoseconds, p > 0 else { return nil }
        return mono / p
    }

    /// Brings the interrupt flags up to date and raises IRQ 8 for newly enabled events.
    /// Call it at `nextDeadline()`; reads of register C call it too.
    public func poll() {
        var c = cmos[Register.c]
        if let idx = periodIndex(clock.monotonicNanoseconds()), idx != lastPeriod {
            lastPeriod = idx
            c |= C.periodic
        }
        if !halted && dividerRunning {
            let second = floorDiv(guestNanoseconds, 1_000_000_000)
            if second != lastSecond {
                lastSecond = second
                c |= C.update
                refreshTime()
                if alarmMatches() { c |= C.alarm }
            }
        }
        cmos[Register.c] = c
        updateIRQ()
    }

    private func alarmMatches() -> Bool {
        func match(_ alarm: Int, _ now: Int) -> Bool { cmos[alarm] & 0xC0 == 0xC0 || cmos[alarm] == cmos[now] }
        return match(Register.secondsAlarm, Register.seconds) && match(Register.minutesAlarm, Register.minutes)
            && match(Register.hoursAlarm, Register.hours)
    }

    private func updateIRQ() {
        let b = cmos[Register.b]
        var c = cmos[Register.c] & 0x70
        if (c & C.periodic != 0 && b & B.periodicInterrupt != 0) || (c & C.alarm != 0 && b & B.alarmInterrupt != 0)
            || (c & C.update != 0 && b & B.updateInterrupt != 0) {
            c |= C.irqf
        }
        cmos[Register.c] = c
        let level = c & C.irqf != 0
        if level != irqLevel {
            irqLevel = level
            irqLine.set(level)
        }
    }

    /// When (monotonic nanoseconds) the next enabled RTC interrupt is due, nil if none is
    /// enabled. The VMM calls `poll()` then.
    public func nextDeadline() -> UInt64? {
        let b = cmos[Register.b]
        let now = clock.monotonicNanoseconds()
        var next: UInt64?
        if b & B.periodicInterrupt != 0, let p = periodNanoseconds {
            // An unpolled boundary already passed: due now.
            next = now / p != lastPeriod ? now : (now / p + 1) * p
        }
        if b & (B.updateInterrupt | B.alarmInterrupt) != 0, !halted, dividerRunning {
            if floorDiv(guestNanoseconds, 1_000_000_000) != lastSecond { return now }
            let intoSecond = UInt64(floorMod(guestNanoseconds, 1_000_000_000))
            let t = now + (1_000_000_000 - intoSecond)
            next = min(next ?? t, t)
        }
        return next
    }
}

@inline(__always) func floorDiv(_ a: Int64, _ b: Int64) -> Int64 {
    let q = a / b
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q
}

@inline(__always) func floorMod(_ a: Int64, _ b: Int64) -> Int64 {
    let r = a % b
    return r != 0 && (r < 0) != (b < 0) ? r + b : r
}

// MARK: Snapshot

extension MC146818 {
    /// The RTC's state. The guest's time is kept as its offset from the host's wall clock,
    /// so a restored VM's clock keeps the offset the guest set (not the absolute time).
    public struct Snapshot: Sendable, Equatable, Codable {
        public var cmos: [UInt8]
        public var index: UInt8
        public var nmiDisabled: Bool
        public var offsetNanoseconds: Int64
    }

    public func snapshot() -> Snapshot {
        Snapshot(cmos: cmos, index: index, nmiDisabled: nmiDisabled, offsetNanoseconds: offset)
    }

    public func restore(_ s: Snapshot) {
        if s.cmos.count == 128 { cmos = s.cmos }
        index = s.index & 0x7F
        nmiDisabled = s.nmiDisabled
        offset = s.offsetNanoseconds
        lastSecond = floorDiv(guestNanoseconds, 1_000_000_000)
        lastPeriod = periodIndex(clock.monotonicNanoseconds()) ?? 0
        irqLevel = false
        updateIRQ()
    }
}
