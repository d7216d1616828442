#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Hypervisor
import Synchronization

// The interpreter is split over X86CPU.swift (state, flags, mode), MMU.swift, Decoder.swift,
// Execute.swift, Execute0F.swift and Run.swift. The target is compiled whole-module
// (`-wmo` in Package.swift) so the hot path still inlines across these files in debug builds.

// MARK: - X86CPU

/// Why the current instruction stopped before it retired.
public enum X86Fault: Error, Equatable {
    /// An architectural exception (vector, optional error code). The instruction did not
    /// retire; RIP still names it.
    case exception(vector: UInt8, errorCode: UInt32?)
    /// The instruction needs the VMM first (a port read or an MMIO read): it will run again
    /// with the value once the VMM has filled the exit buffer.
    case needsExit
    /// The CPU shut down (triple fault); `X86CPU.shutdownReason` says why.
    case shutdown
}

/// Exception vectors by name.
enum Vec {
    static let de: UInt8 = 0, db: UInt8 = 1, nmi: UInt8 = 2, bp: UInt8 = 3, of: UInt8 = 4
    static let br: UInt8 = 5, ud: UInt8 = 6, nm: UInt8 = 7, df: UInt8 = 8, ts: UInt8 = 10
    static let np: UInt8 = 11, ss: UInt8 = 12, gp: UInt8 = 13, pf: UInt8 = 14, mf: UInt8 = 16
    static let ac: UInt8 = 17, xm: UInt8 = 19
}

@inline(__always) func fault(_ v: UInt8, _ code: UInt32? = nil) -> X86Fault { .exception(vector: v, errorCode: code) }
@inline(__always) func gpFault(_ code: UInt32 = 0) -> X86Fault { .exception(vector: Vec.gp, errorCode: code) }
@inline(__always) func udFault() -> X86Fault { .exception(vector: Vec.ud, errorCode: nil) }

/// Segment register numbers as the ModRM reg field encodes them.
enum SReg {
    static let es = 0, cs = 1, ss = 2, ds = 3, fs = 4, gs = 5
}

/// Lazy arithmetic flags: the last flag-setting operation and its operands; the flags are
/// computed only when read.
enum LazyOp: UInt8 {
    /// `lfRes` holds the six arithmetic flag bits directly.
    case eager
    case add, adc, sub, sbb, logic
    /// inc/dec leave CF alone (it stays in `lfCF`).
    case inc, dec
}

@inline(__always) func sizeMask(_ size: Int) -> UInt64 {
    size >= 8 ? UInt64.max : (UInt64(1) << UInt64(size &* 8)) &- 1
}
@inline(__always) func signBit(_ size: Int) -> UInt64 { UInt64(1) << UInt64(size &* 8 &- 1) }
@inline(__always) func signExtend(_ v: UInt64, _ size: Int) -> UInt64 {
    switch size {
    case 1: return UInt64(bitPattern: Int64(Int8(truncatingIfNeeded: v)))
    case 2: return UInt64(bitPattern: Int64(Int16(truncatingIfNeeded: v)))
    case 4: return UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: v)))
    default: return v
    }
}
@inline(__always) func parityEven(_ v: UInt64) -> Bool { (UInt8(truncatingIfNeeded: v).nonzeroBitCount & 1) == 0 }

/// Unaligned little-endian host loads. `loadUnaligned(as: UInt64.self)` is not inlined in
/// this target (callgrind showed a call per use, ~15 host instructions per guest
/// instruction); a fixed-size memcpy into a local is lowered by LLVM to one unaligned move.
@inline(__always) func hostLoad64(_ p: UnsafeRawPointer, _ offset: Int = 0) -> UInt64 {
    var v: UInt64 = 0
    // SAFETY: callers guarantee 8 readable bytes at p + offset.
    memcpy(&v, p + offset, 8)
    return UInt64(littleEndian: v)
}
@inline(__always) func hostLoad32(_ p: UnsafeRawPointer, _ offset: Int = 0) -> UInt32 {
    var v: UInt32 = 0
    // SAFETY: callers guarantee 4 readable bytes at p + offset.
    memcpy(&v, p + offset, 4)
    return UInt32(littleEndian: v)
}
@inline(__always) func hostLoad16(_ p: UnsafeRawPointer, _ offset: Int = 0) -> UInt16 {
    var v: UInt16 = 0
    // SAFETY: callers guarantee 2 readable bytes at p + offset.
    memcpy(&v, p + offset, 2)
    return UInt16(littleEndian: v)
}

enum Flag {
    static let cf: UInt64 = 1 << 0, pf: UInt64 = 1 << 2, af: UInt64 = 1 << 4, zf: UInt64 = 1 << 6
    static let sf: UInt64 = 1 << 7, tf: UInt64 = 1 << 8, `if`: UInt64 = 1 << 9, df: UInt64 = 1 << 10
    static let of: UInt64 = 1 << 11, iopl: UInt64 = 3 << 12, nt: UInt64 = 1 << 14, rf: UInt64 = 1 << 16
    static let vm: UInt64 = 1 << 17, ac: UInt64 = 1 << 18, vif: UInt64 = 1 << 19, vip: UInt64 = 1 << 20
    static let id: UInt64 = 1 << 21
    static let arith: UInt64 = cf | pf | af | zf | sf | of
}

/// A pending exit the VMM must handle (port or MMIO access).
enum PendingExit {
    case io(port: UInt16, size: Int, isWrite: Bool, value: UInt32)
    case mmio(address: UInt64, size: Int, isWrite: Bool, value: UInt64)
}

/// The software x86-64 CPU: architectural state, the MMU with its software TLB, the
/// decoder and the interpreter. One instance per vCPU; not thread safe (only `LocalAPIC`
/// injection and `kick` are cross-thread, through `EmulatorVCPU`).
public final class X86CPU {
    let memory: GuestMemory
    /// General purpose registers rax..r15 in encoding order.
    let r: UnsafeMutablePointer<UInt64>
    public internal(set) var rip: UInt64 = 0
    var nextRIP: UInt64 = 0

    // Flags: non-arithmetic bits live in `rflagsRest`, arithmetic ones are lazy.
    var rflagsRest: UInt64 = 0x2 {
        // IF 0 -> 1 may make a pending interrupt deliverable.
        didSet { if rflagsRest & ~oldValue & Flag.if != 0 { apic.noteAttention() } }
    }
    var lfOp: LazyOp = .eager
    var lfRes: UInt64 = 0
    var lfA: UInt64 = 0
    var lfB: UInt64 = 0
    var lfSize: Int = 4
    /// CF, materialised whenever the lazy state is set (so ADC/SBB/INC/DEC/RCL/RCR and
    /// Jcc/SETcc/CMOVcc on CF read one stored field instead of switching over `lfOp`).
    /// Invariant: equals what `lfOp`/operands would give; for `.eager` it is `lfRes` bit 0.
    var lfCF = false

    /// Segment registers ES, CS, SS, DS, FS, GS with their descriptor caches.
    let seg: UnsafeMutablePointer<X86Segment>
    var tr = X86Segment()
    var ldtr = X86Segment()
    var gdtr = X86DescriptorTable()
    var idtr = X86DescriptorTable(base: 0, limit: 0x3FF)

    var cr0: UInt64 = 0x6000_0010
    var cr2: UInt64 = 0
    var cr3: UInt64 = 0
    var cr4: UInt64 = 0
    var efer: UInt64 = 0
    var dr = [UInt64](repeating: 0, count: 8)
    var xcr0: UInt64 = 1   // `XSave.swift`

    // MSRs
    var star: UInt64 = 0, lstar: UInt64 = 0, cstar: UInt64 = 0, sfmask: UInt64 = 0
    var kernelGSBase: UInt64 = 0
    var sysenterCS: UInt64 = 0, sysenterESP: UInt64 = 0, sysenterEIP: UInt64 = 0
    var pat: UInt64 = 0x0007_0406_0007_0406
    var tscAux: UInt64 = 0
    var mtrrDefType: UInt64 = 0
    var miscEnable: UInt64 = 1
    var tscOffset: Int64 = 0
    /// IA32_TSC_ADJUST (MSR 0x3B): what guest writes have added to the TSC since reset.
    var tscAdjust: UInt64 = 0

    // Mode, cached from CR0/EFER/CS/SS.
    var mode64 = false
    var protectedMode = false
    var cpl: Int = 0
    var defaultSize: Int = 2     // operand and address size of the code segment (2/4)
    var stackSize: Int = 2       // 2, 4 or 8 (SS.B, or 8 in 64-bit mode)
    var ipMask: UInt64 = 0xFFFF
    var linearMask: UInt64 = 0xFFFF_FFFF
    var pagingMode = 0           // 0 off, 1 two-level, 2 PAE, 3 four-level
    var userTag: UInt64 = 0      // TLB tag bit for CPL 3 accesses

    // Decoder state for the instruction in flight.
    var d = Insn()

    // SSE / x87
    let xmm: UnsafeMutablePointer<UInt64>   // 16 registers x 2 quadwords, then the YMM upper halves (`AVXState.swift`)
    var mxcsr: UInt32 = 0x1F80
    var fpu = X87State()
    /// The instruction-set level CPUID offers; instructions above it raise #UD.
    public var cpuLevel: X86CPULevel = .default

    // Interrupts
    var interruptShadow = false
    public internal(set) var halted = false { didSet { if halted { apic.noteAttention() } } }
    /// Set when the CPU shut down: the reason names RIP.
    public internal(set) var shutdownReason: String? { didSet { if shutdownReason != nil { apic.noteAttention() } } }
    public let apic: LocalAPIC
    /// Where ExtINT (PIC) vectors come from; set by the VMM (nil: no PIC).
    public var extInt: (any ExternalInterruptSource)? { didSet { extINTPending = true } }

    // Exits
    var pendingExits: [PendingExit] = [] {
        didSet {
            exitCount = pendingExits.count
            if exitCount != 0 { apic.noteAttention() }
        }
    }
    /// `pendingExits.count`, kept in a stored field: `step()` reads it per instruction
    /// (Array's `count` getter was not inlined: ~7 host instructions per guest instruction).
    var exitCount = 0
    /// Physical address of the last TLB miss that hit a non-RAM page.
    var mmioPhysical: UInt64 = 0
    /// Several vCPUs take turns (ExecutionTurnstile): PAUSE asks the run loop to end the
    /// slice (`yieldRequested`, honoured right after the PAUSE).
    var yieldOnPause = false
    /// Parallel mode with several vCPUs: the VM's split-lock gate, held shared while this
    /// CPU executes (see `SplitLockGate`); nil otherwise.
    var splitLockGate: SplitLockGate?
    /// The machine's vCPU count, for CPUID's topology leaves (set as vCPUs are created).
    var topologyCPUs = 1
    /// PAUSEs retired in this slice (reset by `run(budget:)`); the slice yields at the
    /// `pauseYieldWindow`th, right after it retires.
    var pausesInSlice = 0
    static let pauseYieldWindow = 64
    var yieldRequested = false { didSet { if yieldRequested { apic.noteAttention() } } }
    /// Set from any thread by `EmulatorVCPU.kick()` (which also raises the attention word).
    let kickRequested = Atomic<Bool>(false)
    var nmiPending = false { didSet { if nmiPending { apic.noteAttention() } } }
    var extINTPending = true { didSet { if extINTPending { apic.noteAttention() } } }
    var initPending = false
    var sipiPending: UInt8? = nil
    /// Values the VMM supplied for the instruction being re-executed after an exit.
    var replayValid = false
    var replayValue: UInt64 = 0
    var replayKey: UInt64 = 0

    // Software TLB: 3 kinds (read, write, execute) x tlbSize entries.
    static let tlbBits = 10
    static let tlbSize = 1 << tlbBits
    let tlbTag: UnsafeMutablePointer<UInt64>
    let tlbHost: UnsafeMutablePointer<UInt>
    // The page instructions are fetched from.
    var fetchPage: UInt64 = .max
    var fetchHost: UnsafeMutableRawPointer? = nil
    /// The bytes of the instruction being decoded, when they lie in one RAM page.
    var insnBytes: UnsafeMutableRawPointer? = nil
    /// Decoded-instruction cache (see `decodeCached`): direct mapped, keyed by the host
    /// address of the instruction's first byte and the decode mode.
    static let icacheBits = 11
    let icache: UnsafeMutablePointer<DecodedInsn>
    /// Decoded-instruction cache statistics (hits, misses) for benchmarks.
    public internal(set) var icacheHits: UInt64 = 0
    public internal(set) var icacheMisses: UInt64 = 0
    /// The execution tier (`SWIFTVMM_CPU_TIER`); tests may set it per CPU.
    public var tier = CPUTier.fromEnvironment
    /// Decoded basic blocks for the block tier (`Blocks.swift`), made on the tier's first
    /// run: ~1.6 MiB per vCPU that the interpreter tier never touches.
    private var blockCache: BlockCache?
    var blocks: BlockCache {
        if let b = blockCache { return b }
        let b = BlockCache()
        blockCache = b
        return b
    }
    /// The block cache's arrays, for the per-block path (no reference counting).
    var blockView: BlockCacheView?
    var blockHitCount: UInt64 = 0
    /// Block-tier statistics for benchmarks: block entries that hit, blocks built.
    public var blockHits: UInt64 { blockHitCount }
    public var blockBuilds: UInt64 { blockCache?.builds ?? 0 }
    /// The JIT tier's state (`JIT.swift`), made on its first use, with these settings
    /// (tests may change them before the first run): runs before a block is compiled
    /// (`SWIFTVMM_JIT_THRESHOLD`, default 4; 0 = at first sight) and the code cache size
    /// (`SWIFTVMM_JIT_CACHE_KB`, default 16 MiB).
    public var jitThreshold = JITState.defaultThreshold
    public var jitCacheSize = JITCodeCache.defaultSize
    private(set) var jitState: JITState?
    var jitView: JITView?
    var jitRunCount: UInt64 = 0
    var jitSideExitCount: UInt64 = 0
    var jit: JITState {
        if let j = jitState { return j }
        let j = JITState(cacheSize: jitCacheSize, threshold: jitThreshold)
        jitState = j
        return j
    }
    /// JIT statistics for tests and benchmarks: blocks compiled, blocks found unsupported,
    /// compiled-code runs, runs that left through a side exit, code-cache flushes.
    public var jitCompiled: UInt64 { jitState?.compiled ?? 0 }
    public var jitUnsupported: UInt64 { jitState?.unsupported ?? 0 }
    public var jitRuns: UInt64 { jitRunCount }
    public var jitSideExits: UInt64 { jitSideExitCount }
    public var jitFlushes: Int { jitState?.cache?.flushes ?? 0 }
    /// Whether the host gave the JIT an executable code cache.
    public var jitAvailable: Bool { jit.cache != nil }

    /// Retired instructions (for benchmarks and timer polling).
    public internal(set) var instructions: UInt64 = 0
    /// Guest RIP sampling (SWIFTVMM_EMU_PROFILE), nil when off.
    let ripProfile = RIPProfile.fromEnvironment
    var profiledAt: UInt64 = 0

    /// The decoder's opcode attribute tables (one-byte then 0F), copied out of the global
    /// arrays so the hot path does no lazy-global or reference-count work.
    let opcodeAttributes: UnsafeMutablePointer<UInt8>

    public init(memory: GuestMemory, apicID: UInt32 = 0) {
        self.memory = memory
        opcodeAttributes = .allocate(capacity: 512)
        for i in 0..<256 {
            opcodeAttributes[i] = OpcodeTable.oneByte[i]
            opcodeAttributes[256 + i] = OpcodeTable.twoByte[i]
        }
        r = .allocate(capacity: 16); r.initialize(repeating: 0, count: 16)
        seg = .allocate(capacity: 6); seg.initialize(repeating: X86Segment(), count: 6)
        xmm = .allocate(capacity: 64); xmm.initialize(repeating: 0, count: 64)
        tlbTag = .allocate(capacity: 3 * X86CPU.tlbSize)
        tlbTag.initialize(repeating: .max, count: 3 * X86CPU.tlbSize)
        tlbHost = .allocate(capacity: 3 * X86CPU.tlbSize)
        tlbHost.initialize(repeating: 0, count: 3 * X86CPU.tlbSize)
        // One 64-byte entry per cache line.
        icache = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<DecodedInsn>.stride << X86CPU.icacheBits, alignment: 64)
            .bindMemory(to: DecodedInsn.self, capacity: 1 << X86CPU.icacheBits)
        icache.initialize(repeating: DecodedInsn(), count: 1 << X86CPU.icacheBits)
        apic = LocalAPIC(id: apicID)
        reset()
    }

    deinit {
        r.deallocate(); seg.deallocate(); opcodeAttributes.deallocate(); xmm.deallocate(); tlbTag.deallocate(); tlbHost.deallocate()
        icache.deallocate()
    }

    /// Power-on / INIT state: real mode at F000:FFF0.
    public func reset() {
        for i in 0..<16 { r[i] = 0 }
        r[2] = 0x600  // EDX: family/model/stepping
        rip = 0xFFF0
        rflagsRest = 0x2; lfOp = .eager; lfRes = 0; lfCF = false
        for i in 0..<6 { seg[i] = X86Segment.realMode(selector: 0) }
        seg[SReg.cs] = X86Segment(base: 0xFFFF_0000, limit: 0xFFFF, selector: 0xF000, type: 0xB, db: false, l: false, g: false)
        tr = X86Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0xB, db: false, s: false, l: false, g: false)
        ldtr = X86Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0x2, db: false, s: false, l: false, g: false)
        gdtr = X86DescriptorTable(base: 0, limit: 0xFFFF)
        idtr = X86DescriptorTable(base: 0, limit: 0x3FF)
        cr0 = 0x6000_0010; cr2 = 0; cr3 = 0; cr4 = 0; efer = 0
        for i in 0..<64 { xmm[i] = 0 }
        mxcsr = 0x1F80; fpu = X87State(); xcr0 = 1
        halted = false; interruptShadow = false
        updateMode()
    }

    // MARK: registers

    @inline(__always) func reg(_ i: Int, _ size: Int) -> UInt64 {
        switch size {
        case 1:
            if !d.hasREX && i >= 4 && i < 8 { return (r[i &- 4] >> 8) & 0xFF }
            return r[i] & 0xFF
        case 2: return r[i] & 0xFFFF
        case 4: return r[i] & 0xFFFF_FFFF
        default: return r[i]
        }
    }

    @inline(__always) func setReg(_ i: Int, _ size: Int, _ v: UInt64) {
        switch size {
        case 1:
            if !d.hasREX && i >= 4 && i < 8 {
                r[i &- 4] = (r[i &- 4] & ~0xFF00) | ((v & 0xFF) << 8)
            } else {
                r[i] = (r[i] & ~0xFF) | (v & 0xFF)
            }
        case 2: r[i] = (r[i] & ~0xFFFF) | (v & 0xFFFF)
        case 4: r[i] = v & 0xFFFF_FFFF
        default: r[i] = v
        }
    }

    // MARK: flags

    /// Records a lazy flag-setting operation; `cf` is its carry (stored, see `lfCF`).
    @inline(__always) func setLazy(_ op: LazyOp, _ a: UInt64, _ b: UInt64, _ res: UInt64, _ size: Int, cf: Bool) {
        lfOp = op; lfA = a; lfB = b; lfRes = res; lfSize = size; lfCF = cf
    }

    /// INC/DEC: the lazy state of the result, CF unchanged (it stays in `lfCF`).
    @inline(__always) func setLazyKeepingCF(_ op: LazyOp, _ a: UInt64, _ res: UInt64, _ size: Int) {
        lfOp = op; lfA = a; lfB = 0; lfRes = res; lfSize = size
    }

    /// Sets the arithmetic flags explicitly.
    @inline(__always) func setEager(_ bits: UInt64) {
        lfOp = .eager; lfRes = bits & Flag.arith; lfCF = bits & Flag.cf != 0
    }

    /// Arithmetic flags for a result whose CF/OF are known (shifts, multiplies).
    @inline(__always) func setResultFlags(_ res: UInt64, _ size: Int, cf: Bool, of: Bool, af: Bool = false) {
        var f: UInt64 = 0
        if cf { f |= Flag.cf }
        if of { f |= Flag.of }
        if af { f |= Flag.af }
        let m = res & sizeMask(size)
        if m == 0 { f |= Flag.zf }
        if m & signBit(size) != 0 { f |= Flag.sf }
        if parityEven(m) { f |= Flag.pf }
        lfOp = .eager; lfRes = f; lfCF = cf
    }

    var cf: Bool {
        @inline(__always) get { lfCF }
    }

    var zf: Bool {
        @inline(__always) get { lfOp == .eager ? (lfRes & Flag.zf != 0) : lfRes == 0 }
    }

    var sf: Bool {
        @inline(__always) get { lfOp == .eager ? (lfRes & Flag.sf != 0) : (lfRes & signBit(lfSize) != 0) }
    }

    var of: Bool {
        get {
            let s = signBit(lfSize)
            switch lfOp {
            case .eager: return lfRes & Flag.of != 0
            case .add, .adc: return ((lfA ^ lfRes) & (lfB ^ lfRes) & s) != 0
            case .sub, .sbb: return ((lfA ^ lfB) & (lfA ^ lfRes) & s) != 0
            case .logic: return false
            case .inc: return lfRes == s
            case .dec: return lfRes == s &- 1
            }
        }
    }

    var pf: Bool {
        get { lfOp == .eager ? (lfRes & Flag.pf != 0) : parityEven(lfRes) }
    }

    var af: Bool {
        get {
            switch lfOp {
            case .eager: return lfRes & Flag.af != 0
            case .add, .adc, .sub, .sbb: return ((lfA ^ lfB ^ lfRes) & 0x10) != 0
            case .logic: return false
            case .inc, .dec: return ((lfA ^ lfRes) & 0x10) != 0
            }
        }
    }

    /// The six arithmetic flags as RFLAGS bits.
    func arithFlags() -> UInt64 {
        if lfOp == .eager { return lfRes & Flag.arith }
        var f: UInt64 = 0
        if cf { f |= Flag.cf }
        if pf { f |= Flag.pf }
        if af { f |= Flag.af }
        if zf { f |= Flag.zf }
        if sf { f |= Flag.sf }
        if of { f |= Flag.of }
        return f
    }

    public var rflags: UInt64 {
        get { (rflagsRest & ~Flag.arith) | arithFlags() | 2 }
        set {
            rflagsRest = (newValue & ~Flag.arith & 0x3F_7FD7) | 2
            setEager(newValue)
        }
    }

    @inline(__always) var interruptsEnabled: Bool { rflagsRest & Flag.if != 0 }

    /// Evaluates condition code `cc` (the low nibble of Jcc/SETcc/CMOVcc). The CF and ZF
    /// conditions (B/AE/E/NE/BE/A) read the stored CF and the result inline; the rest go
    /// out of line (a small inline body is what lets this inline into `execute`).
    @inline(__always) func condition(_ cc: Int) -> Bool {
        switch cc {
        case 2: return lfCF
        case 3: return !lfCF
        case 4: return zf
        case 5: return !zf
        case 6: return lfCF || zf
        case 7: return !(lfCF || zf)
        default: return conditionOutOfLine(cc)
        }
    }

    @inline(never) func conditionOutOfLine(_ cc: Int) -> Bool {
        if lfOp == .sub {
            let a = lfA, b = lfB
            switch cc {
            case 2: return a < b
            case 3: return a >= b
            case 4: return a == b
            case 5: return a != b
            case 6: return a <= b
            case 7: return a > b
            case 0xC: return Int64(bitPattern: signExtend(a, lfSize)) < Int64(bitPattern: signExtend(b, lfSize))
            case 0xD: return Int64(bitPattern: signExtend(a, lfSize)) >= Int64(bitPattern: signExtend(b, lfSize))
            case 0xE: return Int64(bitPattern: signExtend(a, lfSize)) <= Int64(bitPattern: signExtend(b, lfSize))
            case 0xF: return Int64(bitPattern: signExtend(a, lfSize)) > Int64(bitPattern: signExtend(b, lfSize))
            default: break
            }
        }
        let v: Bool
        switch cc >> 1 {
        case 0: v = of
        case 1: v = cf
        case 2: v = zf
        case 3: v = cf || zf
        case 4: v = sf
        case 5: v = pf
        case 6: v = sf != of
        default: v = zf || (sf != of)
        }
        return (cc & 1) != 0 ? !v : v
    }

    // MARK: mode

    /// Recomputes the cached mode after CR0, EFER, CS or SS changed.
    func updateMode() {
        protectedMode = cr0 & X86Bits.cr0PE != 0
        let lma = efer & X86Bits.eferLMA != 0
        let cs = seg[SReg.cs]
        mode64 = lma && cs.l
        if !protectedMode {
            cpl = 0
        } else if rflagsRest & Flag.vm != 0 {
            cpl = 3
        } else {
            cpl = Int(cs.dpl)
        }
        if mode64 {
            defaultSize = 4; stackSize = 8; ipMask = .max
        } else {
            defaultSize = cs.db ? 4 : 2
            stackSize = seg[SReg.ss].db ? 4 : 2
            ipMask = cs.db ? 0xFFFF_FFFF : 0xFFFF
        }
        linearMask = lma ? .max : 0xFFFF_FFFF
        let newPaging: Int
        if cr0 & X86Bits.cr0PG == 0 || !protectedMode { newPaging = 0 }
        else if lma { newPaging = 3 }
        else if cr4 & X86Bits.cr4PAE != 0 { newPaging = 2 }
        else { newPaging = 1 }
        let newTag: UInt64 = cpl == 3 ? (1 << 63) : 0
        if newPaging != pagingMode { pagingMode = newPaging; flushTLB() }
        if newTag != userTag { userTag = newTag; fetchPage = .max }
    }

    // MARK: state exchange with the backend protocol

    public func registers() -> X86Registers {
        var x = X86Registers()
        x.rax = r[0]; x.rcx = r[1]; x.rdx = r[2]; x.rbx = r[3]
        x.rsp = r[4]; x.rbp = r[5]; x.rsi = r[6]; x.rdi = r[7]
        x.r8 = r[8]; x.r9 = r[9]; x.r10 = r[10]; x.r11 = r[11]
        x.r12 = r[12]; x.r13 = r[13]; x.r14 = r[14]; x.r15 = r[15]
        x.rip = rip; x.rflags = rflags
        return x
    }

    public func setRegisters(_ x: X86Registers) {
        r[0] = x.rax; r[1] = x.rcx; r[2] = x.rdx; r[3] = x.rbx
        r[4] = x.rsp; r[5] = x.rbp; r[6] = x.rsi; r[7] = x.rdi
        r[8] = x.r8; r[9] = x.r9; r[10] = x.r10; r[11] = x.r11
        r[12] = x.r12; r[13] = x.r13; r[14] = x.r14; r[15] = x.r15
        rip = x.rip; rflags = x.rflags
        updateMode()
    }

    public func specialRegisters() -> X86SpecialRegisters {
        var s = X86SpecialRegisters()
        s.es = seg[0]; s.cs = seg[1]; s.ss = seg[2]; s.ds = seg[3]; s.fs = seg[4]; s.gs = seg[5]
        s.tr = tr; s.ldt = ldtr; s.gdt = gdtr; s.idt = idtr
        s.cr0 = cr0; s.cr2 = cr2; s.cr3 = cr3; s.cr4 = cr4; s.cr8 = UInt64(apic.tpr >> 4)
        s.efer = efer; s.apicBase = apic.baseMSR
        return s
    }

    public func setSpecialRegisters(_ s: X86SpecialRegisters) {
        seg[0] = s.es; seg[1] = s.cs; seg[2] = s.ss; seg[3] = s.ds; seg[4] = s.fs; seg[5] = s.gs
        tr = s.tr; ldtr = s.ldt; gdtr = s.gdt; idtr = s.idt
        cr0 = s.cr0; cr2 = s.cr2; cr3 = s.cr3; cr4 = s.cr4; efer = s.efer
        apic.tpr = UInt32(s.cr8 & 0xF) << 4
        apic.baseMSR = s.apicBase
        flushTLB()
        updateMode()
    }

    /// The full state (for snapshots and tests).
    public var state: X86CPUState {
        get { X86CPUState(regs: registers(), sregs: specialRegisters()) }
        set { setSpecialRegisters(newValue.sregs); setRegisters(newValue.regs) }
    }

    /// XMM register `i` as (low, high) quadwords (tests).
    public func xmmRegister(_ i: Int) -> (UInt64, UInt64) { (xmm[i * 2], xmm[i * 2 + 1]) }
    public func setXMMRegister(_ i: Int, _ v: (UInt64, UInt64)) { xmm[i * 2] = v.0; xmm[i * 2 + 1] = v.1 }
}

/// A source of ExtINT vectors (the 8259 PIC behind LINT0 in virtual-wire mode). The VMM
/// implements it over the devices' I8259; called only from the vCPU thread.
public protocol ExternalInterruptSource: AnyObject {
    /// True when the PIC has an unmasked request pending (INTR asserted).
    func hasPendingInterrupt() -> Bool
    /// The INTA cycle: acknowledges and returns the vector.
    func acknowledgeInterrupt() -> UInt8
}
