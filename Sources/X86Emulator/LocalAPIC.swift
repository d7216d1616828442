#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Host monotonic time in nanoseconds (the emulator's TSC and APIC timer base).
public enum HostClock {
    @inline(__always)
    public static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}

/// How an interrupt message is delivered to a local APIC (the IOAPIC redirection entry
/// or MSI data delivery-mode field).
public enum APICDeliveryMode: UInt8, Sendable {
    case fixed = 0, lowestPriority = 1, smi = 2, nmi = 4, initialize = 5, startup = 6, extINT = 7
}

/// Something that wants to hear about EOIs of level-triggered vectors (the IOAPIC).
public protocol EOIListener: AnyObject, Sendable {
    func endOfInterrupt(vector: UInt8)
}

/// Messages posted to a local APIC from other threads (devices, other vCPUs).
struct APICInbox {
    var irr = [UInt32](repeating: 0, count: 8)
    var levelTriggered = [UInt32](repeating: 0, count: 8)
    var nmi = false
    var initRequest = false
    var sipiVector: UInt8? = nil
    var extINT = false
}

/// One local APIC (xAPIC MMIO interface at the APIC base), per vCPU. Register state is
/// owned by the vCPU thread; other threads post interrupts through `post(...)`.
///
/// The timer counts at the 25 MHz crystal frequency announced in CPUID leaf 0x15 (Linux
/// derives its APIC timer period from it); TSC-deadline mode uses the TSC (host ns).
public final class LocalAPIC: @unchecked Sendable {
    public internal(set) var id: UInt32 { didSet { publishRouting() } }
    var baseMSR: UInt64 { didSet { noteAttention() } }
    var tpr: UInt32 = 0
    var svr: UInt32 = 0xFF
    var irr = [UInt32](repeating: 0, count: 8)
    /// True when some IRR bit may be set (cheap test for the interrupt poll).
    var irrAny = false { didSet { if irrAny { noteAttention() } } }
    var isr = [UInt32](repeating: 0, count: 8)
    var tmr = [UInt32](repeating: 0, count: 8)
    var ldr: UInt32 = 0 { didSet { publishRouting() } }
    var dfr: UInt32 = 0xFFFF_FFFF { didSet { publishRouting() } }
    /// `id`, LDR[31:24] and DFR[31:28] as other threads read them to route an interrupt
    /// (`deliverInterrupt` from device threads, IPIs from other vCPUs): the owning thread
    /// publishes a copy on every change, so no routing thread reads the plain fields.
    private let routing = Atomic<UInt64>(0)
    var esr: UInt32 = 0
    var icrLow: UInt32 = 0
    var icrHigh: UInt32 = 0
    var lvtTimer: UInt32 = 0x10000
    var lvtThermal: UInt32 = 0x10000
    var lvtPerf: UInt32 = 0x10000
    var lvtLint0: UInt32 = 0x10000 { didSet { noteAttention() } }
    var lvtLint1: UInt32 = 0x10000
    var lvtError: UInt32 = 0x10000
    var lvtCMCI: UInt32 = 0x10000
    var initialCount: UInt32 = 0
    var divideConfig: UInt32 = 0
    var timerStart: UInt64 = 0
    /// Host-ns deadline of the next timer event (0 = none).
    var timerDeadline: UInt64 = 0
    var tscDeadline: UInt64 = 0

    /// Cross-thread mailbox and its "something arrived" flag.
    let inbox = Mutex(APICInbox())
    let inboxFlag = Atomic<Bool>(false)
    /// The vCPU's attention word: nonzero when the run loop must look at something other
    /// than the next instruction. Every source sets `attentionEvent` after its own state
    /// (mail here, a kick, IRR, IF 0 -> 1, NMI/ExtINT pending, LINT0/APIC base changes,
    /// a queued exit, HLT, shutdown, a PAUSE yield); the run loop tests the word once per
    /// instruction and REP string instructions once per element. `X86CPU.serviceAttention`
    /// clears it first, then drains and rechecks every source, and sets `attentionPoll`
    /// while an interrupt is pending but not yet deliverable (shadow, PPR), so nothing
    /// is lost.
    let attention = Atomic<UInt32>(0)
    static let attentionEvent: UInt32 = 1
    static let attentionPoll: UInt32 = 2

    /// Raises the attention word (any thread).
    @inline(__always) func noteAttention() {
        attention.bitwiseOr(LocalAPIC.attentionEvent, ordering: .sequentiallyConsistent)
    }
    /// Set when `post` wants the vCPU to wake up from HLT.
    weak var waker: Parker?
    /// Called (on the vCPU thread) for IPIs this APIC sends; set by the VM.
    var ipiRouter: ((_ from: LocalAPIC, _ icrLow: UInt32, _ icrHigh: UInt32) -> Void)?
    weak var eoiListener: (any EOIListener)?

    static let crystalHz: UInt64 = 25_000_000

    init(id: UInt32) {
        self.id = id
        self.baseMSR = 0xFEE0_0000 | (1 << 11) | (id == 0 ? (1 << 8) : 0)
        reset()
        publishRouting()
    }

    func reset() {
        tpr = 0; svr = 0xFF
        for i in 0..<8 { irr[i] = 0; isr[i] = 0; tmr[i] = 0 }
        irrAny = false
        ldr = 0; dfr = 0xFFFF_FFFF; esr = 0; icrLow = 0; icrHigh = 0
        lvtTimer = 0x10000; lvtThermal = 0x10000; lvtPerf = 0x10000; lvtError = 0x10000; lvtCMCI = 0x10000
        // As KVM does: the BSP's LINT0 starts in ExtINT mode so the PIC works before the
        // guest programs the APIC; LINT1 is NMI.
        lvtLint0 = isBSP ? 0x700 : 0x10000
        lvtLint1 = isBSP ? 0x400 : 0x10000
        initialCount = 0; divideConfig = 0; timerDeadline = 0; tscDeadline = 0
    }

    var isBSP: Bool { baseMSR & (1 << 8) != 0 }
    /// Globally enabled through IA32_APIC_BASE.
    public var enabled: Bool { baseMSR & (1 << 11) != 0 }
    var softwareEnabled: Bool { svr & 0x100 != 0 }
    public var baseAddress: UInt64 { baseMSR & 0xF_FFFF_F000 }

    func setBaseMSR(_ v: UInt64, cpu: X86CPU) {
        baseMSR = (v & 0xF_FFFF_F900)
    }

    // MARK: cross-thread posting

    /// Posts an interrupt from any thread (IOAPIC, MSI, IPIs).
    public func post(vector: UInt8, mode: APICDeliveryMode, levelTriggered: Bool = false) {
        inbox.withLock { box in
            switch mode {
            case .fixed, .lowestPriority:
                let w = Int(vector >> 5), b = UInt32(1) << UInt32(vector & 31)
                box.irr[w] |= b
                if levelTriggered { box.levelTriggered[w] |= b } else { box.levelTriggered[w] &= ~b }
            case .nmi: box.nmi = true
            case .initialize: box.initRequest = true
            case .startup: box.sipiVector = vector
            case .extINT: box.extINT = true
            case .smi: break
            }
        }
        inboxFlag.store(true, ordering: .releasing)
        noteAttention()
        waker?.unpark()
    }

    /// Tells the vCPU that the PIC's INTR output may have changed.
    public func notifyExtINT() {
        inbox.withLock { $0.extINT = true }
        inboxFlag.store(true, ordering: .releasing)
        noteAttention()
        waker?.unpark()
    }

    /// Moves posted interrupts into IRR (vCPU thread).
    func drainInbox() -> APICInbox {
        inboxFlag.store(false, ordering: .relaxed)
        return inbox.withLock { box in
            let taken = box
            box = APICInbox()
            return taken
        }
    }

    // MARK: priority logic

    static func highest(_ bits: [UInt32]) -> Int {
        for w in stride(from: 7, through: 0, by: -1) where bits[w] != 0 {
            return w * 32 + 31 - bits[w].leadingZeroBitCount
        }
        return -1
    }

    var ppr: UInt32 {
        let isrv = LocalAPIC.highest(isr)
        let isrClass = isrv < 0 ? 0 : UInt32(isrv) & 0xF0
        return (tpr & 0xF0) >= isrClass ? tpr : isrClass
    }

    /// The vector the APIC would deliver now, if any.
    func deliverableVector() -> UInt8? {
        if !irrAny { return nil }
        let v = LocalAPIC.highest(irr)
        if v < 0 { irrAny = false; return nil }
        if v < 16 { return nil }
        if UInt32(v) & 0xF0 <= ppr & 0xF0 { return nil }
        return UInt8(v)
    }

    func acknowledge(_ v: UInt8) {
        let w = Int(v >> 5), b = UInt32(1) << UInt32(v & 31)
        irr[w] &= ~b
        isr[w] |= b
    }

    func setIRR(_ v: UInt8, level: Bool) {
        let w = Int(v >> 5), b = UInt32(1) << UInt32(v & 31)
        irr[w] |= b
        irrAny = true
        if level { tmr[w] |= b } else { tmr[w] &= ~b }
    }

    func setTPR(_ v: UInt32, cpu: X86CPU) { tpr = v & 0xFF }

    func eoi() {
        let v = LocalAPIC.highest(isr)
        if v < 0 { return }
        let w = v >> 5, b = UInt32(1) << UInt32(v & 31)
        isr[w] &= ~b
        if tmr[w] & b != 0 {
            tmr[w] &= ~b
            eoiListener?.endOfInterrupt(vector: UInt8(v))
        }
    }

    // MARK: timer

    var timerDivisor: UInt64 {
        let v = (divideConfig & 3) | ((divideConfig >> 1) & 4)
        return v == 7 ? 1 : UInt64(2) << UInt64(v)
    }

    var timerMode: UInt32 { (lvtTimer >> 17) & 3 }   // 0 one-shot, 1 periodic, 2 TSC-deadline

    func tickNanoseconds() -> UInt64 { 1_000_000_000 / LocalAPIC.crystalHz * timerDivisor }

    func armTimer(now: UInt64) {
        timerStart = now
        if initialCount == 0 || timerMode == 2 { timerDeadline = 0; return }
        timerDeadline = now &+ UInt64(initialCount) &* tickNanoseconds()
    }

    func currentCount(now: UInt64) -> UInt32 {
        if initialCount == 0 || timerMode == 2 { return 0 }
        let ticks = (now &- timerStart) / tickNanoseconds()
        if timerMode == 1 { return initialCount &- UInt32(truncatingIfNeeded: ticks % UInt64(initialCount)) }
        if ticks >= UInt64(initialCount) { return 0 }
        return initialCount &- UInt32(ticks)
    }

    func setTSCDeadline(_ v: UInt64, cpu: X86CPU) {
        tscDeadline = v
        if timerMode != 2 { return }
        if v == 0 { timerDeadline = 0; return }
        // TSC counts host ns plus the guest's offset.
        let now = HostClock.nanoseconds()
        let tscNow = cpu.readTSC()
        timerDeadline = v > tscNow ? now &+ (v &- tscNow) : now
        if timerDeadline == 0 { timerDeadline = 1 }
    }

    /// Fires the timer if its deadline passed. Returns true if an interrupt was raised.
    @discardableResult
    func checkTimer(now: UInt64) -> Bool {
        if timerDeadline == 0 || now < timerDeadline { return false }
        if timerMode == 1 && initialCount != 0 {
            let period = UInt64(initialCount) &* tickNanoseconds()
            // Skip missed periods rather than storming.
            let missed = (now &- timerDeadline) / period
            timerDeadline = timerDeadline &+ (missed &+ 1) &* period
        } else {
            timerDeadline = 0
            if timerMode == 2 { tscDeadline = 0 }
        }
        if lvtTimer & 0x10000 == 0 && softwareEnabled {
            setIRR(UInt8(lvtTimer & 0xFF), level: false)
            return true
        }
        return false
    }

    // MARK: registers

    func readRegister(_ off: UInt32, cpu: X86CPU) -> UInt32 {
        let reg = off & 0xFF0
        switch reg {
        case 0x20: return id << 24
        case 0x30: return 0x0005_0014
        case 0x80: return tpr
        case 0x90: return 0
        case 0xA0: return ppr
        case 0xB0: return 0
        case 0xD0: return ldr
        case 0xE0: return dfr
        case 0xF0: return svr
        case 0x100...0x170: return isr[Int((reg - 0x100) >> 4)]
        case 0x180...0x1F0: return tmr[Int((reg - 0x180) >> 4)]
        case 0x200...0x270: return irr[Int((reg - 0x200) >> 4)]
        case 0x280: return esr
        case 0x2F0: return lvtCMCI
        case 0x300: return icrLow & ~(1 << 12)
        case 0x310: return icrHigh
        case 0x320: return lvtTimer
        case 0x330: return lvtThermal
        case 0x340: return lvtPerf
        case 0x350: return lvtLint0
        case 0x360: return lvtLint1
        case 0x370: return lvtError
        case 0x380: return initialCount
        case 0x390: return currentCount(now: HostClock.nanoseconds())
        case 0x3E0: return divideConfig
        default: return 0
        }
    }

    func writeRegister(_ off: UInt32, _ v: UInt32, cpu: X86CPU) {
        let reg = off & 0xFF0
        let lvtMaskAll: UInt32 = softwareEnabled ? 0 : 0x10000
        switch reg {
        case 0x20: id = v >> 24
        case 0x80: tpr = v & 0xFF
        case 0xB0: eoi()
        case 0xD0: ldr = v & 0xFF00_0000
        case 0xE0: dfr = v | 0x0FFF_FFFF
        case 0xF0:
            svr = v & 0x13FF
            if !softwareEnabled {
                lvtTimer |= 0x10000; lvtThermal |= 0x10000; lvtPerf |= 0x10000
                lvtLint0 |= 0x10000; lvtLint1 |= 0x10000; lvtError |= 0x10000; lvtCMCI |= 0x10000
            }
        case 0x280: esr = 0
        case 0x2F0: lvtCMCI = (v & 0x107FF) | lvtMaskAll
        case 0x300:
            icrLow = v & ~(1 << 12)
            ipiRouter?(self, icrLow, icrHigh)
        case 0x310: icrHigh = v & 0xFF00_0000
        case 0x320:
            let oldMode = timerMode
            lvtTimer = (v & 0x700FF) | lvtMaskAll
            if timerMode != oldMode {
                timerDeadline = 0
                if timerMode == 2 { tscDeadline = 0 }
            }
        case 0x330: lvtThermal = (v & 0x107FF) | lvtMaskAll
        case 0x340: lvtPerf = (v & 0x107FF) | lvtMaskAll
        case 0x350: lvtLint0 = (v & 0x1A7FF) | lvtMaskAll
        case 0x360: lvtLint1 = (v & 0x1A7FF) | lvtMaskAll
        case 0x370: lvtError = (v & 0x100FF) | lvtMaskAll
        case 0x380:
            if timerMode == 2 { return }
            initialCount = v
            armTimer(now: HostClock.nanoseconds())
        case 0x3E0: divideConfig = v & 0xB
        default: break
        }
    }

    private func publishRouting() {
        routing.store(UInt64(id) | UInt64(ldr >> 24) << 32 | UInt64(dfr >> 28) << 40, ordering: .releasing)
    }

    /// The APIC ID as routing threads see it (the published copy; any thread).
    var routingID: UInt32 { UInt32(truncatingIfNeeded: routing.load(ordering: .acquiring)) }

    /// True if this APIC matches a logical destination (flat or cluster model), from the
    /// published LDR/DFR copy (any thread).
    func matchesLogical(_ dest: UInt8) -> Bool {
        let w = routing.load(ordering: .acquiring)
        let mine = UInt8(truncatingIfNeeded: w >> 32)
        if (w >> 40) & 0xF == 0xF { return mine & dest != 0 }
        return (mine >> 4) == (dest >> 4) && (mine & dest & 0xF) != 0
    }
}

/// Parks a vCPU thread in HLT until a deadline or a wake-up (pthread condition variable).
final class Parker: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var signalled = false

    init() {
        pthread_mutex_init(&mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(&cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }

    func unpark() {
        pthread_mutex_lock(&mutex)
        signalled = true
        pthread_cond_signal(&cond)
        pthread_mutex_unlock(&mutex)
    }

    /// Waits until unparked or until host time `deadline` (ns, 0 = no deadline).
    func park(until deadline: UInt64) {
        pthread_mutex_lock(&mutex)
        if !signalled {
            if deadline == 0 {
                // Bounded even without a deadline so a lost wake-up cannot hang forever.
                var ts = timespec()
                clock_gettime(CLOCK_MONOTONIC, &ts)
                ts.tv_sec += 1
                pthread_cond_timedwait(&cond, &mutex, &ts)
            } else {
                var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                pthread_cond_timedwait(&cond, &mutex, &ts)
            }
        }
        signalled = false
        pthread_mutex_unlock(&mutex)
    }
}
