/// The 8254 programmable interval timer: three 16-bit counters at 0x40-0x42, the control
/// word at 0x43, counter 2's gate and output on port 0x61 (system control port B, with the
/// speaker enable and the refresh toggle). Input clock 1.193182 MHz. For the software-CPU
/// backend and the userspace-irqchip mode (with KVM the kernel has its own PIT).
///
/// - Modes 0-5; counters count from the time of the count write on an injectable monotonic
///   clock (no threads, nothing ticks by itself). Reads compute the current value.
/// - Access modes: latch command, LSB only, MSB only, LSB then MSB (one flip-flop per
///   counter for reads and writes); the read-back command (latch count and/or status of
///   several counters). BCD counting is recorded in the status byte but counts binary.
/// - Counter 0 drives IRQ 0. The VMM (or the emulator's run loop) asks `nextDeadline()`
///   for the monotonic time of the next output rising edge and calls `poll()` at or after
///   it; each `poll()` that finds one or more new edges pulses IRQ 0 once (missed periods
///   are coalesced, not replayed).
/// - Counter 2: gate = port 0x61 bit 0, OUT = port 0x61 bit 5 (Linux's PIT/TSC
///   calibration polls it in mode 0), speaker data enable = bit 1; bit 4 toggles every
///   15.085 µs (memory refresh) for firmware delay loops.
///
/// Map with `map(on:)` or the facets `counterPorts` (0x40, 4) and `portB` (0x61, 1).
public final class I8254 {
    public static let frequency: UInt64 = 1_193_182
    public static let basePort: UInt16 = 0x40
    public static let portBAddress: UInt16 = 0x61

    /// One counter's state.
    public struct Counter: Sendable, Equatable, Codable {
        /// 0-5 (6 and 7 alias 2 and 3).
        public var mode: UInt8 = 0
        /// Access mode: 1 LSB, 2 MSB, 3 LSB then MSB.
        public var access: UInt8 = 3
        public var bcd = false
        /// The reload value, 1...65536 (a written 0 means 65536).
        public var count: UInt32 = 0x1_0000
        /// Monotonic ns when counting (re)started.
        public var loadTime: UInt64 = 0
        public var gate: Bool
        /// Counting has started (a count was written; mode 1/5 wait for a gate edge).
        public var armed = false
        public var nullCount = true
        var writeLow: UInt8 = 0
        var writeHighNext = false
        var readHighNext = false
        var latchedCount: UInt16?
        var latchedHighNext = false
        var latchedStatus: UInt8?
        /// Number of output rising edges already signalled (counter 0).
        var edgesSignalled: UInt64 = 0

        init(gate: Bool) { self.gate = gate }
    }

    public private(set) var counters = [Counter(gate: true), Counter(gate: true), Counter(gate: false)]
    /// Port 0x61 bit 1: speaker data enable.
    public private(set) var speakerDataEnabled = false

    private let irq: IRQLine
    private let clock: DeviceClock

    public private(set) lazy var counterPorts = Ports(pit: self, isPortB: false)
    public private(set) lazy var portB = Ports(pit: self, isPortB: true)

    /// - Parameters:
    ///   - irq: IRQ 0 (counter 0's output).
    ///   - clock: the monotonic time source (the host's by default).
    public init(irq: IRQLine, clock: DeviceClock = .host) {
        self.irq = irq
        self.clock = clock
    }

    /// Maps 0x40-0x43 and 0x61.
    public func map(on bus: IOBus) throws {
        try bus.mapPorts(counterPorts, name: "pit", base: I8254.basePort, count: 4)
        try bus.mapPorts(portB, name: "port b", base: I8254.portBAddress, count: 1)
    }

    public final class Ports: PortIODevice {
        unowned let pit: I8254
        let isPortB: Bool
        init(pit: I8254, isPortB: Bool) { self.pit = pit; self.isPortB = isPortB }
        public func ioRead(offset: UInt16, size: Int) -> UInt32 {
            UInt32(isPortB ? pit.readPortB() : pit.read(Int(offset & 3)))
        }
        public func ioWrite(offset: UInt16, size: Int, value: UInt32) {
            let v = UInt8(truncatingIfNeeded: value)
            if isPortB { pit.writePortB(v) } else { pit.write(Int(offset & 3), v) }
        }
    }

    // MARK: Time arithmetic

    private func ticks(_ c: Counter, at now: UInt64) -> UInt64 {
        guard c.armed, now > c.loadTime else { return 0 }
        let (hi, lo) = (now - c.loadTime).multipliedFullWidth(by: I8254.frequency)
        let nanosecondsPerSecond: UInt64 = 1_000_000_000
        return hi < nanosecondsPerSecond ? nanosecondsPerSecond.dividingFullWidth((hi, lo)).quotient : UInt64.max
    }

    /// Monotonic time of tick `t` after the counter's load (rounded up).
    private func time(_ c: Counter, tick t: UInt64) -> UInt64 {
        let (hi, lo) = t.multipliedFullWidth(by: 1_000_000_000)
        guard hi < I8254.frequency else { return UInt64.max }
        let (q, r) = I8254.frequency.dividingFullWidth((hi, lo))
        let ns = q + (r > 0 ? 1 : 0)
        return c.loadTime.addingReportingOverflow(ns).overflow ? UInt64.max : c.loadTime + ns
    }

    private static func effectiveMode(_ m: UInt8) -> UInt8 { m > 5 ? m - 4 : m }

    /// The counter's current value.
    func currentCount(_ c: Counter, at now: UInt64) -> UInt16 {
        guard c.armed else { return UInt16(truncatingIfNeeded: c.count) }
        let d = ticks(c, at: now)
        let n = UInt64(c.count)
        switch I8254.effectiveMode(c.mode) {
        case 0, 1, 4, 5:
            return UInt16(truncatingIfNeeded: n &- d)
        case 3:
            return UInt16(truncatingIfNeeded: n - (2 &* d) % n)
        default:
            return UInt16(truncatingIfNeeded: n - d % n)
        }
    }

    /// The counter's OUT pin.
    func output(_ c: Counter, at now: UInt64) -> Bool {
        let mode = I8254.effectiveMode(c.mode)
        guard c.armed else {
            // Mode 0 holds OUT low after the control word; the others idle high.
            return mode != 0
        }
        let d = ticks(c, at: now)
        let n = UInt64(c.count)
        switch mode {
        case 0: return d >= n
        case 1: return d >= n
        case 2: return d % n != n - 1 || n == 1
        case 3: return d % n < (n + 1) / 2
        default: return d != n // modes 4 and 5: one low pulse at terminal count
        }
    }

    // MARK: Counter 0 → IRQ 0

    /// Rising edges of counter 0's OUT from its load until `now`.
    private func risingEdges(_ c: Counter, at now: UInt64) -> UInt64 {
        guard c.armed, c.gate else { return 0 }
        let d = ticks(c, at: now)
        let n = UInt64(c.count)
        switch I8254.effectiveMode(c.mode) {
        case 0, 1: return d >= n ? 1 : 0
        case 2, 3: return d / n
        default: return d >= n + 1 ? 1 : 0
        }
    }

    /// When (monotonic ns) counter 0's output next rises without `poll()` having seen it,
    /// nil when it never will. A time in the past means a poll is overdue.
    public func nextDeadline() -> UInt64? {
        let c = counters[0]
        guard c.armed, c.gate else { return nil }
        let n = UInt64(c.count)
        let next: UInt64
        switch I8254.effectiveMode(c.mode) {
        case 0, 1:
            guard c.edgesSignalled == 0 else { return nil }
            next = n
        case 2, 3:
            // The first edge not yet signalled: in the past when a poll is overdue.
            next = (c.edgesSignalled &+ 1) &* n
        default:
            guard c.edgesSignalled == 0 else { return nil }
            next = n &+ 1
        }
        return time(c, tick: next)
    }

    /// Signals IRQ 0 (one pulse) if counter 0's output rose since the last poll.
    public func poll() {
        let edges = risingEdges(counters[0], at: clock.monotonicNanoseconds())
        if edges > counters[0].edgesSignalled {
            counters[0].edgesSignalled = edges
            irq.pulse()
        }
    }

    // MARK: Registers

    func write(_ port: Int, _ v: UInt8) {
        let now = clock.monotonicNanoseconds()
        if port == 3 {
            writeControl(v, now: now)
            return
        }
        var c = counters[port]
        switch c.access {
        case 1:
            load(&c, UInt32(v), now: now)
        case 2:
            load(&c, UInt32(v) << 8, now: now)
        default:
            if c.writeHighNext {
                c.writeHighNext = false
                load(&c, UInt32(c.writeLow) | UInt32(v) << 8, now: now)
            } else {
                c.writeLow = v
                c.writeHighNext = true
                // Mode 0: writing the first byte stops the count until the second.
                if I8254.effectiveMode(c.mode) == 0 { c.armed = false }
            }
        }
        counters[port] = c
    }

    private func load(_ c: inout Counter, _ value: UInt32, now: UInt64) {
        c.count = value == 0 ? 0x1_0000 : value
        c.nullCount = false
        c.edgesSignalled = 0
        let mode = I8254.effectiveMode(c.mode)
        if mode == 1 || mode == 5 {
            // Hardware-triggered modes wait for a gate rising edge.
            if !c.armed { return }
        }
        // Periodic modes keep running when only the reload value changes; we restart, as
        // most emulators do (guests reprogram them after a control word anyway).
        c.loadTime = now
        c.armed = true
    }

    private func writeControl(_ v: UInt8, now: UInt64) {
        let sel = Int(v >> 6)
        if sel == 3 {
            // Read-back: bit 5 clear = latch count, bit 4 clear = latch status.
            for i in 0..<3 where v & (UInt8(2) << UInt8(i)) != 0 {
                var c = counters[i]
                if v & 0x20 == 0 && c.latchedCount == nil {
                    c.latchedCount = currentCount(c, at: now)
                    c.latchedHighNext = false
                }
                if v & 0x10 == 0 && c.latchedStatus == nil {
                    c.latchedStatus = status(c, at: now)
                }
                counters[i] = c
            }
            return
        }
        var c = counters[sel]
        let access = (v >> 4) & 3
        if access == 0 {
            // Counter latch command.
            if c.latchedCount == nil {
                c.latchedCount = currentCount(c, at: now)
                c.latchedHighNext = false
            }
        } else {
            c.access = access
            c.mode = (v >> 1) & 7
            c.bcd = v & 1 != 0
            c.armed = false
            c.nullCount = true
            c.writeHighNext = false
            c.readHighNext = false
            c.latchedCount = nil
            c.latchedStatus = nil
            c.edgesSignalled = 0
        }
        counters[sel] = c
    }

    private func status(_ c: Counter, at now: UInt64) -> UInt8 {
        (output(c, at: now) ? 0x80 : 0) | (c.nullCount ? 0x40 : 0) | (c.access << 4) | (c.mode << 1) | (c.bcd ? 1 : 0)
    }

    func read(_ port: Int) -> UInt8 {
        guard port < 3 else { return 0xFF }
        let now = clock.monotonicNanoseconds()
        var c = counters[port]
        defer { counters[port] = c }
        if let s = c.latchedStatus {
            c.latchedStatus = nil
            return s
        }
        if let l = c.latchedCount {
            switch c.access {
            case 1: c.latchedCount = nil; return UInt8(l & 0xFF)
            case 2: c.latchedCount = nil; return UInt8(l >> 8)
            default:
                if c.latchedHighNext {
                    c.latchedCount = nil
                    c.latchedHighNext = false
                    return UInt8(l >> 8)
                }
                c.latchedHighNext = true
                return UInt8(l & 0xFF)
            }
        }
        let value = currentCount(c, at: now)
        switch c.access {
        case 1: return UInt8(value & 0xFF)
        case 2: return UInt8(value >> 8)
        default:
            c.readHighNext.toggle()
            return c.readHighNext ? UInt8(value & 0xFF) : UInt8(value >> 8)
        }
    }

    // MARK: Port 0x61

    public func readPortB() -> UInt8 {
        let now = clock.monotonicNanoseconds()
        var v: UInt8 = counters[2].gate ? 0x01 : 0
        if speakerDataEnabled { v |= 0x02 }
        if (now / 15_085) & 1 != 0 { v |= 0x10 }
        if output(counters[2], at: now) { v |= 0x20 }
        return v
    }

    public func writePortB(_ v: UInt8) {
        speakerDataEnabled = v & 0x02 != 0
        setGate(2, v & 0x01 != 0)
    }

    /// Sets a counter's gate input (counter 2's is port 0x61 bit 0; 0 and 1 are tied high).
    public func setGate(_ index: Int, _ level: Bool) {
        guard index >= 0, index < 3 else { return }
        var c = counters[index]
        let rising = level && !c.gate
        c.gate = level
        let mode = I8254.effectiveMode(c.mode)
        if rising && !c.nullCount && (mode == 1 || mode == 5 || mode == 2 || mode == 3) {
            // Gate edge (re)triggers the count.
            c.loadTime = clock.monotonicNanoseconds()
            c.armed = true
            c.edgesSignalled = 0
        }
        counters[index] = c
    }
}

// MARK: Snapshot

extension I8254 {
    /// The counters with their load times made relative to "now" (monotonic clocks differ
    /// between hosts and boots), plus port B.
    public struct Snapshot: Sendable, Equatable, Codable {
        public var counters: [Counter]
        /// For each counter: nanoseconds between its load and the snapshot.
        public var elapsed: [UInt64]
        public var speakerDataEnabled: Bool
    }

    public func snapshot() -> Snapshot {
        let now = clock.monotonicNanoseconds()
        return Snapshot(counters: counters, elapsed: counters.map { now > $0.loadTime ? now - $0.loadTime : 0 },
                        speakerDataEnabled: speakerDataEnabled)
    }

    public func restore(_ s: Snapshot) {
        guard s.counters.count == 3, s.elapsed.count == 3 else { return }
        let now = clock.monotonicNanoseconds()
        for i in 0..<3 {
            var c = s.counters[i]
            if c.count == 0 || c.count > 0x1_0000 { c.count = 0x1_0000 }
            c.loadTime = now > s.elapsed[i] ? now - s.elapsed[i] : 0
            counters[i] = c
        }
        speakerDataEnabled = s.speakerDataEnabled
    }
}
