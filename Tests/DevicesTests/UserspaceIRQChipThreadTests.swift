import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import Devices

/// Counts the messages a chip delivers, per vector (safe from any thread, so the counts
/// see only the chip's own races). The helpers lock with `NSLock` (a pthread mutex) rather
/// than `Mutex`, so ThreadSanitizer sees their ordering.
private final class CountingSink: APICMessageSink, @unchecked Sendable {
    private let lock = NSLock()
    private var counts = Array(repeating: 0, count: 256)
    func deliver(_ message: APICMessage) { lock.withLock { counts[Int(message.vector)] += 1 } }
    func count(_ vector: UInt8) -> Int { lock.withLock { counts[Int(vector)] } }
}

/// A few counters shared between the test's threads.
private final class Counters: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int]
    init(_ n: Int) { values = Array(repeating: 0, count: n) }
    subscript(i: Int) -> Int { lock.withLock { values[i] } }
    func increment(_ i: Int) { lock.withLock { values[i] += 1 } }
    var all: [Int] { lock.withLock { values } }
}

/// A chip with a counting sink, mapped on a bus through its locking proxies.
private final class Rig: @unchecked Sendable {
    let sink = CountingSink()
    let chip: UserspaceIRQChip
    /// Read-only once mapped (lookups do not mutate), like the machine's bus.
    let bus = IOBus()

    init() throws {
        chip = UserspaceIRQChip(ioapic: IOAPIC(sink: sink))
        try chip.map(on: bus)
    }

    func ioapicWrite(_ reg: UInt8, _ value: UInt32) {
        bus.mmioWrite(PhysicalMap.ioapicBase, size: 4, value: UInt64(reg))
        bus.mmioWrite(PhysicalMap.ioapicBase + 0x10, size: 4, value: UInt64(value))
    }

    func ioapicRead(_ reg: UInt8) -> UInt32 {
        bus.mmioWrite(PhysicalMap.ioapicBase, size: 4, value: UInt64(reg))
        return UInt32(truncatingIfNeeded: bus.mmioRead(PhysicalMap.ioapicBase + 0x10, size: 4))
    }

    /// Linux's init_8259A: master vectors 0x30-0x37, slave 0x38-0x3F, all unmasked, edge.
    func initPIC() {
        for (port, value) in [(0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01),
                              (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01),
                              (0x21, 0x00), (0xA1, 0x00)] as [(UInt16, UInt32)] {
            bus.portWrite(port, size: 1, value: value)
        }
    }
}

/// Runs `body(i)` for each i in 0..<n on a thread of its own (not a pool: the bodies wait
/// for each other), all starting together once every thread is up, and returns when all
/// have finished.
private func onThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let done = DispatchSemaphore(value: 0)
    let ready = Counters(1)
    for i in 0..<n {
        Thread {
            ready.increment(0)
            while ready[0] < n { sched_yield() }
            body(i)
            done.signal()
        }.start()
    }
    for _ in 0..<n { done.wait() }
}

/// Yields until `condition` holds or `deadline` passes; whether it held.
private func spin(until deadline: ContinuousClock.Instant, _ condition: () -> Bool) -> Bool {
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        sched_yield()
    }
    return true
}

/// The chip driven from several threads at once, as the machine does: virtio devices raise
/// INTx and MSIs from their own threads under their own locks, vCPU threads do INTA/EOI
/// and program the chips through the bus. Every edge must be delivered exactly once and
/// every handshake must complete (no lost update of IRR/ISR/remote IRR).
@Suite(.serialized)
struct UserspaceIRQChipThreadTests {
    /// Generous: the runs take well under a second; only a lost interrupt waits this long.
    static let patience: Duration = .seconds(10)

    @Test func edgesOnIOAPICPinsAndMSIsFromManyThreadsAreEachDeliveredOnce() throws {
        let rig = try Rig()
        let pins = 16..<20, rounds = 20_000
        for pin in pins { rig.ioapicWrite(UInt8(0x10 + 2 * pin), UInt32(0x50 + pin - 16)) } // edge, unmasked
        let mismatches = Counters(1)
        // Threads 0-3 pulse GSIs 16-19, thread 4 sends MSIs, thread 5 reads the entries back.
        onThreads(pins.count + 2) { t in
            switch t {
            case 0..<pins.count:
                for _ in 0..<rounds { rig.chip.setIRQ(UInt32(16 + t), level: true); rig.chip.setIRQ(UInt32(16 + t), level: false) }
            case pins.count:
                for _ in 0..<rounds { rig.chip.signalMSI(address: 0xFEE0_0000, data: 0x70) }
            default:
                for i in 0..<rounds {
                    let pin = 16 + i % pins.count
                    if rig.ioapicRead(UInt8(0x10 + 2 * pin)) != UInt32(0x50 + pin - 16) { mismatches.increment(0) }
                }
            }
        }
        for pin in pins { #expect(rig.sink.count(UInt8(0x50 + pin - 16)) == rounds, "GSI \(pin)") }
        #expect(rig.sink.count(0x70) == rounds)
        #expect(mismatches[0] == 0)
        let (deliveries, irr) = rig.chip.withChips { _, io in (io.deliveries, io.irr) }
        #expect(deliveries == UInt64(pins.count * rounds))
        #expect(irr == 0)
    }

    @Test func picINTAAndEOIAgainstDeviceThreadsLoseNoInterrupt() throws {
        let rig = try Rig()
        rig.initPIC()
        let irqs = [3, 4, 5, 6, 9, 10, 11, 12], rounds = 200
        let acks = Counters(16), spurious = Counters(1), timedOut = Counters(1)
        let deadline = ContinuousClock.now + Self.patience
        // Threads 0-7: each raises its IRQ, waits for the INTA cycle that took it, lowers
        // it. The last thread is the CPU: INTA, then EOI and IRR reads through the ports.
        onThreads(irqs.count + 1) { t in
            if t < irqs.count {
                let irq = irqs[t]
                for k in 0..<rounds {
                    rig.chip.setIRQ(UInt32(irq), level: true)
                    let taken = spin(until: deadline) { acks[irq] > k }
                    rig.chip.setIRQ(UInt32(irq), level: false)
                    if !taken { timedOut.increment(0); return }
                }
                return
            }
            while acks.all.reduce(0, +) < irqs.count * rounds, ContinuousClock.now < deadline {
                guard rig.chip.pendingInterrupt() else {
                    _ = rig.bus.portRead(0x20, size: 1) // IRR (OCW3 default)
                    sched_yield()
                    continue
                }
                let vector = Int(rig.chip.acknowledge())
                let irq = vector - 0x30
                if irq == 7 || irq == 15 { spurious.increment(0); continue }
                acks.increment(irq)
                if irq >= 8 { rig.bus.portWrite(0xA0, size: 1, value: 0x20) }
                rig.bus.portWrite(0x20, size: 1, value: 0x20)
            }
        }
        #expect(timedOut[0] == 0)
        #expect(spurious[0] == 0)
        for irq in irqs { #expect(acks[irq] == rounds, "IRQ \(irq)") }
        let end = rig.chip.withChips { pic, _ in (pic.master, pic.slave, pic.spuriousCount) }
        #expect(end.0.irr == 0 && end.0.isr == 0)
        #expect(end.1.irr == 0 && end.1.isr == 0)
        #expect(end.2 == 0)
        #expect(!rig.chip.pendingInterrupt())
    }

    @Test func levelPinsWithEOIFromAnotherThreadRedeliverExactlyWhenAsked() throws {
        let rig = try Rig()
        let pins = 20..<24, rounds = 1_000
        for pin in pins {
            rig.ioapicWrite(UInt8(0x10 + 2 * pin), UInt32(0x60 + pin - 20) | 0x8000) // level, unmasked
        }
        let lowered = Counters(pins.count), eois = Counters(pins.count)
        let timedOut = Counters(1), early = Counters(1)
        let deadline = ContinuousClock.now + Self.patience
        // Threads 0-3 assert a level pin, wait for its delivery, deassert it and wait for
        // the EOI; the last thread is the LAPIC sending the EOIs (remote IRR clears). The
        // handshakes leave little overlap, so this checks the cross-thread EOI protocol
        // more than it provokes races (the two tests above do that).
        let finished: @Sendable () -> Bool = {
            eois.all.reduce(0, +) == pins.count * rounds || ContinuousClock.now >= deadline
        }
        onThreads(pins.count + 1) { t in
            if t < pins.count {
                let gsi = UInt32(pins.lowerBound + t), vector = UInt8(0x60 + t)
                for k in 0..<rounds {
                    rig.chip.setIRQ(gsi, level: true)
                    let delivered = spin(until: deadline) { rig.sink.count(vector) > k }
                    rig.chip.setIRQ(gsi, level: false)
                    lowered.increment(t)
                    guard delivered, spin(until: deadline, { eois[t] > k }) else { timedOut.increment(0); return }
                }
                return
            }
            while !finished() {
                var idle = true
                for i in 0..<pins.count where lowered[i] > eois[i] {
                    // One delivery per round: a second one before this EOI would be a bug.
                    if rig.sink.count(UInt8(0x60 + i)) != eois[i] + 1 { early.increment(0) }
                    rig.chip.endOfInterrupt(vector: UInt8(0x60 + i))
                    eois.increment(i)
                    idle = false
                }
                if idle { sched_yield() }
            }
        }
        #expect(timedOut[0] == 0)
        #expect(early[0] == 0)
        for pin in pins { #expect(rig.sink.count(UInt8(0x60 + pin - 20)) == rounds, "GSI \(pin)") }
        let (redirection, irr) = rig.chip.withChips { _, io in (io.redirection, io.irr) }
        #expect(redirection[pins].allSatisfy { $0 & IOAPIC.Entry.remoteIRR == 0 })
        #expect(irr == 0)
    }
}
