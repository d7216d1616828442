#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Hypervisor
import Synchronization

// The interpreter's hot path lives in this one file on purpose: debug builds compile
// the package file by file, and only code in the same file is inlined across functions.

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
    /// inc/dec keep the previous CF in `lfB`.
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
    var rflagsRest: UInt64 = 0x2
    var lfOp: LazyOp = .eager
    var lfRes: UInt64 = 0
    var lfA: UInt64 = 0
    var lfB: UInt64 = 0
    var lfSize: Int = 4

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
    var xcr0: UInt64 = 1

    // MSRs
    var star: UInt64 = 0, lstar: UInt64 = 0, cstar: UInt64 = 0, sfmask: UInt64 = 0
    var kernelGSBase: UInt64 = 0
    var sysenterCS: UInt64 = 0, sysenterESP: UInt64 = 0, sysenterEIP: UInt64 = 0
    var pat: UInt64 = 0x0007_0406_0007_0406
    var tscAux: UInt64 = 0
    var mtrrDefType: UInt64 = 0
    var miscEnable: UInt64 = 1
    var tscOffset: Int64 = 0

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
    let xmm: UnsafeMutablePointer<UInt64>   // 16 registers x 2 quadwords
    var mxcsr: UInt32 = 0x1F80
    var fpu = X87State()
    /// The instruction-set level CPUID offers; instructions above it raise #UD.
    public var cpuLevel: X86CPULevel = .default

    // Interrupts
    var interruptShadow = false
    public internal(set) var halted = false
    /// Set when the CPU shut down: the reason names RIP.
    public internal(set) var shutdownReason: String?
    public let apic: LocalAPIC
    /// Where ExtINT (PIC) vectors come from; set by the VMM (nil: no PIC).
    public var extInt: (any ExternalInterruptSource)? { didSet { extINTPending = true } }

    // Exits
    var pendingExits: [PendingExit] = []
    /// Physical address of the last TLB miss that hit a non-RAM page.
    var mmioPhysical: UInt64 = 0
    /// Set when something outside the instruction stream wants the run loop's attention
    /// (an interrupt became deliverable, a kick): long string instructions yield.
    var attention = false
    /// Several vCPUs take turns (ExecutionTurnstile): PAUSE asks the run loop to end the
    /// slice (`yieldRequested`, honoured within a few thousand instructions).
    var yieldOnPause = false
    var yieldRequested = false
    /// Set from any thread by `EmulatorVCPU.kick()`; polled every few thousand instructions.
    let kickRequested = Atomic<Bool>(false)
    var nmiPending = false
    var extINTPending = true
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
        xmm = .allocate(capacity: 32); xmm.initialize(repeating: 0, count: 32)
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
        rflagsRest = 0x2; lfOp = .eager; lfRes = 0
        for i in 0..<6 { seg[i] = X86Segment.realMode(selector: 0) }
        seg[SReg.cs] = X86Segment(base: 0xFFFF_0000, limit: 0xFFFF, selector: 0xF000, type: 0xB, db: false, l: false, g: false)
        tr = X86Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0xB, db: false, s: false, l: false, g: false)
        ldtr = X86Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0x2, db: false, s: false, l: false, g: false)
        gdtr = X86DescriptorTable(base: 0, limit: 0xFFFF)
        idtr = X86DescriptorTable(base: 0, limit: 0x3FF)
        cr0 = 0x6000_0010; cr2 = 0; cr3 = 0; cr4 = 0; efer = 0
        for i in 0..<32 { xmm[i] = 0 }
        mxcsr = 0x1F80; fpu = X87State()
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

    @inline(__always) func setLazy(_ op: LazyOp, _ a: UInt64, _ b: UInt64, _ res: UInt64, _ size: Int) {
        lfOp = op; lfA = a; lfB = b; lfRes = res; lfSize = size
    }

    /// Sets the arithmetic flags explicitly.
    @inline(__always) func setEager(_ bits: UInt64) {
        lfOp = .eager; lfRes = bits & Flag.arith
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
        lfOp = .eager; lfRes = f
    }

    var cf: Bool {
        @inline(__always) get {
            switch lfOp {
            case .eager: return lfRes & 1 != 0
            case .add: return lfRes < lfA
            case .adc: return lfRes <= lfA
            case .sub: return lfA < lfB
            case .sbb: return lfA <= lfB
            case .logic: return false
            case .inc, .dec: return lfB != 0
            }
        }
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

    /// Evaluates condition code `cc` (the low nibble of Jcc/SETcc/CMOVcc).
    @inline(__always) func condition(_ cc: Int) -> Bool {
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

// MARK: - MMU

/// Access kinds; also the TLB bank index.
enum Access: Int {
    case read = 0, write = 1, execute = 2
}

/// Result of a page walk.
struct Translation {
    var physical: UInt64
    var writable: Bool
}

extension X86CPU {
    // MARK: TLB

    public func flushTLB() {
        tlbTag.update(repeating: .max, count: 3 * X86CPU.tlbSize)
        fetchPage = .max
    }

    func flushTLBPage(_ linear: UInt64) {
        let vpn = linear >> 12
        let idx = Int(vpn & UInt64(X86CPU.tlbSize - 1))
        for k in 0..<3 { tlbTag[k * X86CPU.tlbSize + idx] = .max }
        fetchPage = .max
    }

    // MARK: page walk

    /// Translates a linear address. `user` is the privilege of the access (implicit
    /// descriptor-table accesses are supervisor). Sets accessed/dirty bits.
    func translate(_ la: UInt64, _ access: Access, user: Bool) throws(X86Fault) -> Translation {
        switch pagingMode {
        case 0: return Translation(physical: la & 0xFFFF_FFFF_FFFF, writable: true)
        case 3, 2: return try walkPAE(la, access, user: user, levels: pagingMode == 3 ? 4 : 3)
        default: return try walk32(la, access, user: user)
        }
    }

    private func pageFault(_ la: UInt64, _ access: Access, user: Bool, present: Bool, rsvd: Bool = false) -> X86Fault {
        var code: UInt32 = 0
        if present { code |= 1 }
        if access == .write { code |= 2 }
        if user { code |= 4 }
        if rsvd { code |= 8 }
        if access == .execute && (efer & X86Bits.eferNXE != 0 || cr4 & X86Bits.cr4PAE != 0) { code |= 16 }
        cr2 = la
        return .exception(vector: Vec.pf, errorCode: code)
    }

    @inline(__always) private func physPointer(_ pa: UInt64, _ len: Int) -> UnsafeMutableRawPointer? {
        memory.hostPointer(pa, length: len)
    }

    private func walkPAE(_ la: UInt64, _ access: Access, user: Bool, levels: Int) throws(X86Fault) -> Translation {
        let nxe = efer & X86Bits.eferNXE != 0
        let addrMask: UInt64 = 0x000F_FFFF_FFFF_F000
        var table: UInt64
        var level: Int
        var allowWrite = true, allowUser = true, noExec = false
        // The chain of entries to set accessed bits on after a successful walk.
        var entryAddrs: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        var n = 0
        if levels == 4 {
            table = cr3 & addrMask
            level = 4
        } else {
            // PAE: CR3 points at four PDPTEs (32-byte aligned).
            let pdpteAddr = (cr3 & 0xFFFF_FFE0) + ((la >> 30) & 3) * 8
            guard let p = physPointer(pdpteAddr, 8) else { throw pageFault(la, access, user: user, present: false) }
            // SAFETY: physPointer bounds-checked 8 bytes.
            let e = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
            if e & 1 == 0 { throw pageFault(la, access, user: user, present: false) }
            table = e & addrMask
            level = 2
        }
        while true {
            let shift = UInt64(12 + 9 * (level - 1))
            let entryAddr = table + ((la >> shift) & 0x1FF) * 8
            guard let p = physPointer(entryAddr, 8) else { throw pageFault(la, access, user: user, present: false) }
            // SAFETY: physPointer bounds-checked 8 bytes.
            let e = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
            if e & 1 == 0 { throw pageFault(la, access, user: user, present: false) }
            if e & 2 == 0 { allowWrite = false }
            if e & 4 == 0 { allowUser = false }
            if nxe && (e >> 63) != 0 { noExec = true }
            if n < 4 {
                switch n { case 0: entryAddrs.0 = entryAddr; case 1: entryAddrs.1 = entryAddr; case 2: entryAddrs.2 = entryAddr; default: entryAddrs.3 = entryAddr }
                n += 1
            }
            let isLeaf = level == 1 || ((level == 2 || (level == 3 && levels == 4)) && e & 0x80 != 0)
            if isLeaf {
                try checkRights(la, access, user: user, allowWrite: allowWrite, allowUser: allowUser, noExec: noExec)
                // accessed bits on every level, dirty on the leaf for writes
                for i in 0..<n {
                    let a: UInt64
                    switch i { case 0: a = entryAddrs.0; case 1: a = entryAddrs.1; case 2: a = entryAddrs.2; default: a = entryAddrs.3 }
                    if let q = physPointer(a, 8) {
                        // SAFETY: bounds checked by physPointer.
                        var v = UInt64(littleEndian: q.loadUnaligned(as: UInt64.self))
                        var nv = v | 0x20
                        if i == n - 1 && access == .write { nv |= 0x40 }
                        if nv != v { v = nv; q.storeBytes(of: v.littleEndian, as: UInt64.self) }
                    }
                }
                let pageSize: UInt64 = UInt64(1) << shift
                let base = e & addrMask & ~(pageSize - 1)
                return Translation(physical: base | (la & (pageSize - 1)), writable: allowWrite || (!user && cr0 & X86Bits.cr0WP == 0))
            }
            table = e & addrMask
            level -= 1
        }
    }

    private func walk32(_ la: UInt64, _ access: Access, user: Bool) throws(X86Fault) -> Translation {
        let la32 = la & 0xFFFF_FFFF
        let pdeAddr = (cr3 & 0xFFFF_F000) + ((la32 >> 22) & 0x3FF) * 4
        guard let p = physPointer(pdeAddr, 4) else { throw pageFault(la, access, user: user, present: false) }
        // SAFETY: bounds checked by physPointer.
        let pde = UInt32(littleEndian: p.loadUnaligned(as: UInt32.self))
        if pde & 1 == 0 { throw pageFault(la, access, user: user, present: false) }
        if pde & 0x80 != 0 && cr4 & X86Bits.cr4PSE != 0 {
            try checkRights(la, access, user: user, allowWrite: pde & 2 != 0, allowUser: pde & 4 != 0, noExec: false)
            p.storeBytes(of: (pde | 0x20 | (access == .write ? 0x40 : 0)).littleEndian, as: UInt32.self)
            let base = UInt64(pde & 0xFFC0_0000) | (UInt64((pde >> 13) & 0xFF) << 32)
            return Translation(physical: base | (la32 & 0x3F_FFFF), writable: pde & 2 != 0 || (!user && cr0 & X86Bits.cr0WP == 0))
        }
        let pteAddr = UInt64(pde & 0xFFFF_F000) + ((la32 >> 12) & 0x3FF) * 4
        guard let q = physPointer(pteAddr, 4) else { throw pageFault(la, access, user: user, present: false) }
        // SAFETY: bounds checked by physPointer.
        let pte = UInt32(littleEndian: q.loadUnaligned(as: UInt32.self))
        if pte & 1 == 0 { throw pageFault(la, access, user: user, present: false) }
        let w = pde & pte & 2 != 0, u = pde & pte & 4 != 0
        try checkRights(la, access, user: user, allowWrite: w, allowUser: u, noExec: false)
        if pde & 0x20 == 0 { p.storeBytes(of: (pde | 0x20).littleEndian, as: UInt32.self) }
        q.storeBytes(of: (pte | 0x20 | (access == .write ? 0x40 : 0)).littleEndian, as: UInt32.self)
        return Translation(physical: UInt64(pte & 0xFFFF_F000) | (la32 & 0xFFF), writable: w || (!user && cr0 & X86Bits.cr0WP == 0))
    }

    @inline(__always)
    private func checkRights(_ la: UInt64, _ access: Access, user: Bool, allowWrite: Bool, allowUser: Bool, noExec: Bool) throws(X86Fault) {
        if user && !allowUser { throw pageFault(la, access, user: user, present: true) }
        if access == .write && !allowWrite && (user || cr0 & X86Bits.cr0WP != 0) {
            throw pageFault(la, access, user: user, present: true)
        }
        if access == .execute && noExec { throw pageFault(la, access, user: user, present: true) }
    }

    // MARK: linear access

    /// Host pointer for a whole page through the TLB, or nil if the page is not RAM
    /// (then `mmioPhysical` holds the physical address of `la`).
    @inline(__always)
    func hostPage(_ la: UInt64, _ access: Access, user: Bool) throws(X86Fault) -> UnsafeMutableRawPointer? {
        let vpn = la >> 12
        let tag = vpn | (user ? (1 << 63) : 0)
        let idx = access.rawValue &* X86CPU.tlbSize &+ Int(vpn & UInt64(X86CPU.tlbSize &- 1))
        if tlbTag[idx] == tag {
            return UnsafeMutableRawPointer(bitPattern: tlbHost[idx])
        }
        return try hostPageSlow(la, access, user: user, idx: idx, tag: tag)
    }

    @inline(never)
    func hostPageSlow(_ la: UInt64, _ access: Access, user: Bool, idx: Int, tag: UInt64) throws(X86Fault) -> UnsafeMutableRawPointer? {
        let t = try translate(la, access, user: user)
        let pagePA = t.physical & ~0xFFF
        if apic.enabled && pagePA == apic.baseAddress {
            mmioPhysical = t.physical
            return nil
        }
        guard let host = memory.hostPointer(pagePA, length: 4096) else {
            mmioPhysical = t.physical
            return nil
        }
        // A read fill must not grant writes: writes fill their own bank (dirty bit set).
        tlbTag[idx] = tag
        tlbHost[idx] = UInt(bitPattern: host)
        return host
    }

    @inline(__always)
    func readLinear(_ la: UInt64, _ size: Int, user: Bool) throws(X86Fault) -> UInt64 {
        let off = Int(la & 0xFFF)
        if off &+ size <= 4096 {
            if let page = try hostPage(la, .read, user: user) {
                let p = page + off
                // SAFETY: the TLB holds only pointers to whole 4 KiB RAM pages; off+size <= 4096.
                switch size {
                case 1: return UInt64(p.load(as: UInt8.self))
                case 2: return UInt64(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
                case 4: return UInt64(UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
                default: return UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
                }
            }
            return try mmioRead(mmioPhysical, size)
        }
        // Crosses a page: byte by byte.
        var v: UInt64 = 0
        for i in 0..<size {
            v |= try readLinear((la &+ UInt64(i)) & linearMask, 1, user: user) << UInt64(i * 8)
        }
        return v
    }

    @inline(__always)
    func writeLinear(_ la: UInt64, _ size: Int, _ value: UInt64, user: Bool) throws(X86Fault) {
        let off = Int(la & 0xFFF)
        if off &+ size <= 4096 {
            if let page = try hostPage(la, .write, user: user) {
                let p = page + off
                // SAFETY: the TLB holds only pointers to whole 4 KiB RAM pages; off+size <= 4096.
                switch size {
                case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: value), as: UInt8.self)
                case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: value).littleEndian, as: UInt16.self)
                case 4: p.storeBytes(of: UInt32(truncatingIfNeeded: value).littleEndian, as: UInt32.self)
                default: p.storeBytes(of: value.littleEndian, as: UInt64.self)
                }
                return
            }
            try mmioWrite(mmioPhysical, size, value)
            return
        }
        // Check both pages before writing anything.
        _ = try hostPage(la, .write, user: user)
        _ = try hostPage((la &+ UInt64(size - 1)) & linearMask, .write, user: user)
        for i in 0..<size {
            try writeLinear((la &+ UInt64(i)) & linearMask, 1, value >> UInt64(i * 8), user: user)
        }
    }

    // MARK: MMIO

    func mmioRead(_ pa: UInt64, _ size: Int) throws(X86Fault) -> UInt64 {
        if apic.enabled && pa & ~0xFFF == apic.baseAddress {
            return UInt64(apic.readRegister(UInt32(pa & 0xFFF), cpu: self))
        }
        if replayValid && replayKey == pa {
            replayValid = false
            return replayValue & sizeMask(size)
        }
        pendingExits.append(.mmio(address: pa, size: size, isWrite: false, value: 0))
        throw .needsExit
    }

    func mmioWrite(_ pa: UInt64, _ size: Int, _ value: UInt64) throws(X86Fault) {
        if apic.enabled && pa & ~0xFFF == apic.baseAddress {
            apic.writeRegister(UInt32(pa & 0xFFF), UInt32(truncatingIfNeeded: value), cpu: self)
            return
        }
        pendingExits.append(.mmio(address: pa, size: size, isWrite: true, value: value & sizeMask(size)))
    }

    // MARK: segmented access

    @inline(__always) func segBase(_ s: Int) -> UInt64 {
        if mode64 && s < 4 { return 0 }
        return seg[s].base
    }

    @inline(__always) func linear(_ s: Int, _ offset: UInt64) throws(X86Fault) -> UInt64 {
        let la = segBase(s) &+ offset
        if mode64 {
            if UInt64(bitPattern: Int64(bitPattern: la << 16) >> 16) != la {
                throw s == SReg.ss ? fault(Vec.ss, 0) : gpFault()
            }
            return la
        }
        return la & 0xFFFF_FFFF
    }

    @inline(__always) func readMem(_ s: Int, _ offset: UInt64, _ size: Int) throws(X86Fault) -> UInt64 {
        try readLinear(try linear(s, offset), size, user: cpl == 3)
    }

    @inline(__always) func writeMem(_ s: Int, _ offset: UInt64, _ size: Int, _ v: UInt64) throws(X86Fault) {
        try writeLinear(try linear(s, offset), size, v, user: cpl == 3)
    }

    /// Supervisor-privilege accesses for descriptor tables, the TSS and interrupt frames.
    @inline(__always) func readSys(_ la: UInt64, _ size: Int) throws(X86Fault) -> UInt64 {
        try readLinear(la & linearMask, size, user: false)
    }
    @inline(__always) func writeSys(_ la: UInt64, _ size: Int, _ v: UInt64) throws(X86Fault) {
        try writeLinear(la & linearMask, size, v, user: false)
    }

    // MARK: instruction fetch

    @inline(__always) func fetch8(_ offset: Int) throws(X86Fault) -> UInt8 {
        if let p = insnBytes { return p.load(fromByteOffset: offset, as: UInt8.self) }
        let ip = (rip &+ UInt64(offset)) & ipMask
        let la = (segBase(SReg.cs) &+ ip) & linearMask
        let page = la & ~0xFFF
        if page == fetchPage, let h = fetchHost {
            // SAFETY: fetchHost is a whole RAM page from the TLB.
            return h.load(fromByteOffset: Int(la & 0xFFF), as: UInt8.self)
        }
        return try fetchSlow(la)
    }

    @inline(never) func fetchSlow(_ la: UInt64) throws(X86Fault) -> UInt8 {
        if mode64 && UInt64(bitPattern: Int64(bitPattern: la << 16) >> 16) != la { throw gpFault() }
        guard let h = try hostPage(la, .execute, user: cpl == 3) else {
            // Executing from MMIO is not supported.
            throw gpFault()
        }
        fetchPage = la & ~0xFFF
        fetchHost = h
        return h.load(fromByteOffset: Int(la & 0xFFF), as: UInt8.self)
    }

    // MARK: stack

    @inline(__always) func push(_ v: UInt64, _ size: Int) throws(X86Fault) {
        let sp = r[4] &- UInt64(size)
        switch stackSize {
        case 8:
            try writeMem(SReg.ss, sp, size, v)
            r[4] = sp
        case 4:
            let s = sp & 0xFFFF_FFFF
            try writeMem(SReg.ss, s, size, v)
            r[4] = s
        default:
            let s = sp & 0xFFFF
            try writeMem(SReg.ss, s, size, v)
            r[4] = (r[4] & ~0xFFFF) | s
        }
    }

    @inline(__always) func stackTop(_ extra: UInt64 = 0) -> UInt64 {
        switch stackSize {
        case 8: return r[4] &+ extra
        case 4: return (r[4] &+ extra) & 0xFFFF_FFFF
        default: return (r[4] &+ extra) & 0xFFFF
        }
    }

    @inline(__always) func pop(_ size: Int) throws(X86Fault) -> UInt64 {
        let v = try readMem(SReg.ss, stackTop(), size)
        adjustSP(UInt64(size))
        return v
    }

    @inline(__always) func adjustSP(_ n: UInt64) {
        switch stackSize {
        case 8: r[4] = r[4] &+ n
        case 4: r[4] = (r[4] &+ n) & 0xFFFF_FFFF
        default: r[4] = (r[4] & ~0xFFFF) | ((r[4] &+ n) & 0xFFFF)
        }
    }
}

// MARK: - Decoder

/// One decoded instruction: prefixes, opcode, ModRM/SIB operands and immediates.
///
/// Opcodes are numbered 0x000-0x0FF (one byte), 0x100-0x1FF (0F xx), 0x200-0x2FF (0F 38 xx)
/// and 0x300-0x3FF (0F 3A xx).
struct Insn {
    // Stored compactly (40 bytes) so a decoded-instruction cache hit is a cheap copy; the
    // accessors keep the natural types for the interpreter.
    var disp: UInt64 = 0
    var imm: UInt64 = 0
    private var _op: UInt16 = 0
    private var _imm2: UInt16 = 0
    private var _len: UInt8 = 0
    private var _opSize: UInt8 = 4
    private var _addrSize: UInt8 = 8
    var rep: UInt8 = 0          // 0, 0xF2 or 0xF3 (the last one wins)
    private var _seg: UInt8 = 3
    var modrm: UInt8 = 0
    private var _mod: UInt8 = 0
    private var _reg: UInt8 = 0
    private var _rm: UInt8 = 0
    private var _base: Int8 = -1
    private var _index: Int8 = -1
    private var _scale: UInt8 = 0
    var lock = false
    var has66 = false
    var hasREX = false
    var rexW = false
    var rexB = false
    var segOverride = false
    var ripRelative = false

    var op: Int { @inline(__always) get { Int(_op) } @inline(__always) set { _op = UInt16(truncatingIfNeeded: newValue) } }
    var len: Int { @inline(__always) get { Int(_len) } @inline(__always) set { _len = UInt8(truncatingIfNeeded: newValue) } }
    var opSize: Int { @inline(__always) get { Int(_opSize) } @inline(__always) set { _opSize = UInt8(truncatingIfNeeded: newValue) } }
    var addrSize: Int { @inline(__always) get { Int(_addrSize) } @inline(__always) set { _addrSize = UInt8(truncatingIfNeeded: newValue) } }
    /// Effective segment of the memory operand.
    var seg: Int { @inline(__always) get { Int(_seg) } @inline(__always) set { _seg = UInt8(truncatingIfNeeded: newValue) } }
    var mod: Int { @inline(__always) get { Int(_mod) } @inline(__always) set { _mod = UInt8(truncatingIfNeeded: newValue) } }
    /// ModRM.reg with REX.R.
    var reg: Int { @inline(__always) get { Int(_reg) } @inline(__always) set { _reg = UInt8(truncatingIfNeeded: newValue) } }
    /// ModRM.rm with REX.B (register operand when mod == 3).
    var rm: Int { @inline(__always) get { Int(_rm) } @inline(__always) set { _rm = UInt8(truncatingIfNeeded: newValue) } }
    var base: Int { @inline(__always) get { Int(_base) } @inline(__always) set { _base = Int8(truncatingIfNeeded: newValue) } }
    var index: Int { @inline(__always) get { Int(_index) } @inline(__always) set { _index = Int8(truncatingIfNeeded: newValue) } }
    var scale: UInt64 { @inline(__always) get { UInt64(_scale) } @inline(__always) set { _scale = UInt8(truncatingIfNeeded: newValue) } }
    /// The second immediate (ENTER's nesting level, a far pointer's selector).
    var imm2: UInt64 { @inline(__always) get { UInt64(_imm2) } @inline(__always) set { _imm2 = UInt16(truncatingIfNeeded: newValue) } }
    var isMem: Bool { mod != 3 }
}

/// One decoded-instruction cache entry (64 bytes, one cache line): the key (host address |
/// mode << 56; 0 = empty), the 16 bytes at that address when it was decoded (only the
/// instruction's `len` bytes are compared) and its decoding.
struct DecodedInsn {
    var key: UInt = 0
    var bytes0: UInt64 = 0
    var bytes1: UInt64 = 0
    var insn = Insn()

    /// Which bits of the first/second 8 bytes belong to an instruction of `len` (1...15) bytes.
    @inline(__always) static func mask0(_ len: Int) -> UInt64 { len >= 8 ? .max : ~(UInt64.max &<< UInt64(len &* 8)) }
    @inline(__always) static func mask1(_ len: Int) -> UInt64 { len <= 8 ? 0 : ~(UInt64.max &<< UInt64((len &- 8) &* 8)) }
}

/// Operand kinds from the opcode tables.
enum ImmKind: UInt8 {
    case none = 0, ib, iw, iz, iv, moffs, iwib, farptr
}

/// Per-opcode decoding attributes: bit 7 = has ModRM, bits 0-3 = ImmKind.
enum OpcodeTable {
    static let oneByte: [UInt8] = {
        var t = [UInt8](repeating: 0, count: 256)
        let M: UInt8 = 0x80
        func imm(_ k: ImmKind) -> UInt8 { k.rawValue }
        for base in stride(from: 0, to: 0x40, by: 8) {
            t[base] = M; t[base + 1] = M; t[base + 2] = M; t[base + 3] = M
            t[base + 4] = imm(.ib); t[base + 5] = imm(.iz)
        }
        t[0x62] = M; t[0x63] = M
        t[0x68] = imm(.iz); t[0x69] = M | imm(.iz); t[0x6A] = imm(.ib); t[0x6B] = M | imm(.ib)
        for o in 0x70...0x7F { t[o] = imm(.ib) }
        t[0x80] = M | imm(.ib); t[0x81] = M | imm(.iz); t[0x82] = M | imm(.ib); t[0x83] = M | imm(.ib)
        for o in 0x84...0x8F { t[o] = M }
        t[0x9A] = imm(.farptr)
        for o in 0xA0...0xA3 { t[o] = imm(.moffs) }
        t[0xA8] = imm(.ib); t[0xA9] = imm(.iz)
        for o in 0xB0...0xB7 { t[o] = imm(.ib) }
        for o in 0xB8...0xBF { t[o] = imm(.iv) }
        t[0xC0] = M | imm(.ib); t[0xC1] = M | imm(.ib); t[0xC2] = imm(.iw)
        t[0xC4] = M; t[0xC5] = M; t[0xC6] = M | imm(.ib); t[0xC7] = M | imm(.iz)
        t[0xC8] = imm(.iwib); t[0xCA] = imm(.iw); t[0xCD] = imm(.ib)
        for o in 0xD0...0xD3 { t[o] = M }
        t[0xD4] = imm(.ib); t[0xD5] = imm(.ib)
        for o in 0xD8...0xDF { t[o] = M }
        for o in 0xE0...0xE7 { t[o] = imm(.ib) }
        t[0xE8] = imm(.iz); t[0xE9] = imm(.iz); t[0xEA] = imm(.farptr); t[0xEB] = imm(.ib)
        t[0xF6] = M; t[0xF7] = M; t[0xFE] = M; t[0xFF] = M
        return t
    }()

    static let twoByte: [UInt8] = {
        var t = [UInt8](repeating: 0x80, count: 256)   // most 0F opcodes have ModRM
        for o in [0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x37,
                  0x77, 0xA0, 0xA1, 0xA2, 0xA8, 0xA9, 0xAA] { t[o] = 0 }
        for o in 0xC8...0xCF { t[o] = 0 }
        for o in 0x80...0x8F { t[o] = ImmKind.iz.rawValue }
        for o in [0x70, 0x71, 0x72, 0x73, 0xA4, 0xAC, 0xBA, 0xC2, 0xC4, 0xC5, 0xC6] { t[o] = 0x80 | ImmKind.ib.rawValue }
        return t
    }()
}

extension X86CPU {
    /// Decodes the instruction at CS:RIP into `d`.
    @inline(__always)
    func decode() throws(X86Fault) {
        // When the whole (at most 15-byte) instruction lies in the current fetch page, read
        // its bytes straight from the host page.
        insnBytes = nil
        let startLA = (segBase(SReg.cs) &+ (rip & ipMask)) & linearMask
        if startLA & 0xFFF <= 4096 - 15 {
            if startLA & ~0xFFF != fetchPage { _ = try fetchSlow(startLA) }
            if let h = fetchHost, mode64 || (rip & ipMask) &+ 15 <= ipMask {
                insnBytes = h + Int(startLA & 0xFFF)
            }
        }
        var n = 0
        var b = try fetch8(0)
        var has66 = false, has67 = false
        var rep: UInt8 = 0, lock = false
        var segOv = -1
        var rex: UInt8 = 0
        // Prefixes.
        while true {
            switch b {
            case 0x66: has66 = true; rex = 0
            case 0x67: has67 = true; rex = 0
            case 0xF0: lock = true; rex = 0
            case 0xF2, 0xF3: rep = b; rex = 0
            case 0x26: segOv = 0; rex = 0
            case 0x2E: segOv = 1; rex = 0
            case 0x36: segOv = 2; rex = 0
            case 0x3E: segOv = 3; rex = 0
            case 0x64: segOv = 4; rex = 0
            case 0x65: segOv = 5; rex = 0
            case 0x40...0x4F where mode64: rex = b
            default:
                break
            }
            if (b >= 0x40 && b <= 0x4F && mode64) || b == 0x66 || b == 0x67 || b == 0xF0 || b == 0xF2 || b == 0xF3
                || b == 0x26 || b == 0x2E || b == 0x36 || b == 0x3E || b == 0x64 || b == 0x65 {
                n &+= 1
                if n >= 14 { throw gpFault() }
                b = try fetch8(n)
                continue
            }
            break
        }
        n &+= 1
        var op = Int(b)
        var attr: UInt8
        if b == 0x0F {
            let b2 = try fetch8(n); n &+= 1
            if b2 == 0x38 {
                op = 0x200 | Int(try fetch8(n)); n &+= 1
                attr = 0x80
            } else if b2 == 0x3A {
                op = 0x300 | Int(try fetch8(n)); n &+= 1
                attr = 0x80 | ImmKind.ib.rawValue
            } else {
                op = 0x100 | Int(b2)
                attr = opcodeAttributes[256 &+ Int(b2)]
            }
        } else {
            attr = opcodeAttributes[Int(b)]
        }
        d.op = op
        d.has66 = has66; d.rep = rep; d.lock = lock
        d.hasREX = rex != 0
        d.rexW = rex & 8 != 0
        d.rexB = rex & 1 != 0
        if mode64 {
            d.opSize = d.rexW ? 8 : (has66 ? 2 : 4)
            d.addrSize = has67 ? 4 : 8
        } else {
            d.opSize = has66 ? (defaultSize == 4 ? 2 : 4) : defaultSize
            d.addrSize = has67 ? (defaultSize == 4 ? 2 : 4) : defaultSize
        }
        d.base = -1; d.index = -1; d.scale = 0; d.disp = 0; d.ripRelative = false
        d.segOverride = segOv >= 0
        d.seg = segOv >= 0 ? segOv : SReg.ds
        if attr & 0x80 != 0 {
            let m = try fetch8(n); n &+= 1
            d.modrm = m
            d.mod = Int(m >> 6)
            d.reg = Int((m >> 3) & 7) | (rex & 4 != 0 ? 8 : 0)
            let rmLow = Int(m & 7)
            d.rm = rmLow | (rex & 1 != 0 ? 8 : 0)
            if d.mod != 3 {
                if d.addrSize == 2 {
                    switch rmLow {
                    case 0: d.base = 3; d.index = 6
                    case 1: d.base = 3; d.index = 7
                    case 2: d.base = 5; d.index = 6; if segOv < 0 { d.seg = SReg.ss }
                    case 3: d.base = 5; d.index = 7; if segOv < 0 { d.seg = SReg.ss }
                    case 4: d.base = 6
                    case 5: d.base = 7
                    case 6:
                        if d.mod != 0 { d.base = 5; if segOv < 0 { d.seg = SReg.ss } }
                    default: d.base = 3
                    }
                    if d.mod == 1 {
                        d.disp = signExtend(UInt64(try fetch8(n)), 1); n &+= 1
                    } else if d.mod == 2 || (d.mod == 0 && rmLow == 6) {
                        d.disp = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
                    }
                } else {
                    var baseLow = rmLow
                    if rmLow == 4 {
                        let sib = try fetch8(n); n &+= 1
                        let idx = Int((sib >> 3) & 7) | (rex & 2 != 0 ? 8 : 0)
                        if idx != 4 { d.index = idx; d.scale = UInt64(sib >> 6) }
                        baseLow = Int(sib & 7)
                        if baseLow == 5 && d.mod == 0 {
                            d.base = -1
                            d.disp = signExtend(try fetch32(n), 4); n &+= 4
                        } else {
                            d.base = baseLow | (rex & 1 != 0 ? 8 : 0)
                        }
                    } else if rmLow == 5 && d.mod == 0 {
                        d.disp = signExtend(try fetch32(n), 4); n &+= 4
                        if mode64 { d.ripRelative = true }
                    } else {
                        d.base = d.rm
                    }
                    if d.base == 4 || d.base == 5 { if segOv < 0 { d.seg = SReg.ss } }
                    if d.mod == 1 {
                        d.disp = signExtend(UInt64(try fetch8(n)), 1); n &+= 1
                    } else if d.mod == 2 {
                        d.disp = signExtend(try fetch32(n), 4); n &+= 4
                    }
                }
            }
        }
        // Immediates.
        var kind = ImmKind(rawValue: attr & 0xF) ?? .none
        if op == 0xF6 && d.reg & 7 < 2 { kind = .ib }
        if op == 0xF7 && d.reg & 7 < 2 { kind = .iz }
        switch kind {
        case .none: break
        case .ib: d.imm = UInt64(try fetch8(n)); n &+= 1
        case .iw: d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
        case .iz:
            if d.opSize == 2 || (op >= 0x180 && op <= 0x18F && !mode64 && d.opSize == 2) {
                d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
            } else {
                d.imm = try fetch32(n); n &+= 4
            }
        case .iv:
            if d.opSize == 8 {
                d.imm = try fetch32(n) | (try fetch32(n &+ 4)) << 32; n &+= 8
            } else if d.opSize == 4 {
                d.imm = try fetch32(n); n &+= 4
            } else {
                d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
            }
        case .moffs:
            if d.addrSize == 8 {
                d.imm = try fetch32(n) | (try fetch32(n &+ 4)) << 32; n &+= 8
            } else if d.addrSize == 4 {
                d.imm = try fetch32(n); n &+= 4
            } else {
                d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
            }
        case .iwib:
            d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8
            d.imm2 = UInt64(try fetch8(n &+ 2)); n &+= 3
        case .farptr:
            if mode64 { throw udFault() }
            if d.opSize == 4 { d.imm = try fetch32(n); n &+= 4 }
            else { d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2 }
            d.imm2 = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
        }
        if n > 15 { throw gpFault() }
        d.len = n
    }

    /// Decodes the instruction at CS:RIP into `d` through the decoded-instruction cache.
    ///
    /// An entry keeps the raw bytes the instruction was decoded from, and a hit requires
    /// those bytes to still be in guest memory: every hit re-reads the (at most 15, masked
    /// to the instruction's length) bytes at the instruction's host address and compares.
    /// So self-modifying code, code patched by the guest kernel (alternatives, static
    /// keys), and DMA into code pages need no invalidation: a changed byte is a miss.
    /// The fetch itself still goes through the execute TLB (permissions, NX). Instructions
    /// within 16 bytes of a page end, or whose IP wraps, are decoded without the cache.
    @inline(__always) @discardableResult
    func decodeCached() throws(X86Fault) -> Int {
        let ip = rip & ipMask
        let startLA = (segBase(SReg.cs) &+ ip) & linearMask
        let off = Int(startLA & 0xFFF)
        guard off <= 4096 - 16, mode64 || ip &+ 15 <= ipMask else { try decode(); return d.len }
        if startLA & ~0xFFF != fetchPage { _ = try fetchSlow(startLA) }
        guard let h = fetchHost else { try decode(); return d.len }
        let p = h + off
        // SAFETY: fetchHost is a whole 4 KiB RAM page from the TLB and off + 16 <= 4096.
        let w0 = p.loadUnaligned(as: UInt64.self)
        let w1 = p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        let mode: UInt = mode64 ? 8 : UInt(truncatingIfNeeded: defaultSize)
        let key = UInt(bitPattern: p) | (mode << 56)
        let idx = Int(truncatingIfNeeded: (key ^ (key >> X86CPU.icacheBits)) & UInt((1 << X86CPU.icacheBits) - 1))
        let e = icache + idx
        if e.pointee.key == key {
            let len = e.pointee.insn.len
            if (w0 ^ e.pointee.bytes0) & DecodedInsn.mask0(len) == 0 && (w1 ^ e.pointee.bytes1) & DecodedInsn.mask1(len) == 0 {
                icacheHits &+= 1
                d = e.pointee.insn
                return len
            }
        }
        icacheMisses &+= 1
        try decode()
        // Fill only if the bytes did not change under the decoder (another vCPU's store).
        let len = d.len
        let m0 = DecodedInsn.mask0(len), m1 = DecodedInsn.mask1(len)
        guard (p.loadUnaligned(as: UInt64.self) ^ w0) & m0 == 0,
              (p.loadUnaligned(fromByteOffset: 8, as: UInt64.self) ^ w1) & m1 == 0 else { return len }
        e.pointee = DecodedInsn(key: key, bytes0: w0, bytes1: w1, insn: d)
        return len
    }

    @inline(__always) func fetch32(_ n: Int) throws(X86Fault) -> UInt64 {
        UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8 | UInt64(try fetch8(n &+ 2)) << 16 | UInt64(try fetch8(n &+ 3)) << 24
    }

    /// The effective address (offset within the segment) of the memory operand.
    @inline(__always) func effectiveAddress() -> UInt64 {
        var a = d.disp
        if d.base >= 0 { a = a &+ r[d.base] }
        if d.index >= 0 { a = a &+ (r[d.index] << d.scale) }
        if d.ripRelative { a = a &+ nextRIP }
        switch d.addrSize {
        case 2: return a & 0xFFFF
        case 4: return a & 0xFFFF_FFFF
        default: return a
        }
    }

    // MARK: ModRM operand access

    @inline(__always) func readRM(_ size: Int) throws(X86Fault) -> UInt64 {
        if d.mod == 3 { return reg(d.rm, size) }
        return try readMem(d.seg, effectiveAddress(), size)
    }

    @inline(__always) func writeRM(_ size: Int, _ v: UInt64) throws(X86Fault) {
        if d.mod == 3 { setReg(d.rm, size, v); return }
        try writeMem(d.seg, effectiveAddress(), size, v)
    }
}

// MARK: - Execute

@inline(__always) func loadSized(_ p: UnsafeMutableRawPointer, _ size: Int) -> UInt64 {
    // SAFETY: callers pass a pointer into a RAM page with `size` bytes available.
    switch size {
    case 1: return UInt64(p.load(as: UInt8.self))
    case 2: return UInt64(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
    case 4: return UInt64(UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
    default: return UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
    }
}

@inline(__always) func storeSized(_ p: UnsafeMutableRawPointer, _ size: Int, _ v: UInt64) {
    // SAFETY: callers pass a pointer into a RAM page with `size` bytes available.
    switch size {
    case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
    case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: v).littleEndian, as: UInt16.self)
    case 4: p.storeBytes(of: UInt32(truncatingIfNeeded: v).littleEndian, as: UInt32.self)
    default: p.storeBytes(of: v.littleEndian, as: UInt64.self)
    }
}

extension X86CPU {
    // MARK: helpers

    /// A host pointer for a read-modify-write of `size` bytes at linear `la`, after the
    /// write permission check; nil when the access crosses a page or hits MMIO (then use
    /// readLinear/writeLinear, which handle both).
    @inline(__always) func rmwPointer(_ la: UInt64, _ size: Int) throws(X86Fault) -> UnsafeMutableRawPointer? {
        let off = Int(la & 0xFFF)
        if off &+ size <= 4096 {
            if let page = try hostPage(la, .write, user: cpl == 3) { return page + off }
            return nil
        }
        _ = try hostPage(la, .write, user: cpl == 3)
        _ = try hostPage((la &+ UInt64(size &- 1)) & linearMask, .write, user: cpl == 3)
        return nil
    }

    @inline(__always) var stackOpSize: Int { mode64 ? (d.has66 ? 2 : 8) : d.opSize }

    @inline(__always) func branch(_ target: UInt64) {
        if mode64 { nextRIP = target }
        else { nextRIP = target & (d.opSize == 2 ? 0xFFFF : 0xFFFF_FFFF) }
    }

    @inline(__always) func setIndex(_ i: Int, _ v: UInt64) {
        switch d.addrSize {
        case 2: r[i] = (r[i] & ~0xFFFF) | (v & 0xFFFF)
        case 4: r[i] = v & 0xFFFF_FFFF
        default: r[i] = v
        }
    }

    @inline(__always) func alu(_ kind: Int, _ a: UInt64, _ b: UInt64, _ size: Int) -> UInt64 {
        let m = sizeMask(size)
        switch kind {
        case 0: let res = (a &+ b) & m; setLazy(.add, a, b, res, size); return res
        case 1: let res = (a | b) & m; setLazy(.logic, 0, 0, res, size); return res
        case 2:
            let c: UInt64 = cf ? 1 : 0
            let res = (a &+ b &+ c) & m; setLazy(c != 0 ? .adc : .add, a, b, res, size); return res
        case 3:
            let c: UInt64 = cf ? 1 : 0
            let res = (a &- b &- c) & m; setLazy(c != 0 ? .sbb : .sub, a, b, res, size); return res
        case 4: let res = (a & b) & m; setLazy(.logic, 0, 0, res, size); return res
        case 6: let res = (a ^ b) & m; setLazy(.logic, 0, 0, res, size); return res
        default: let res = (a &- b) & m; setLazy(.sub, a, b, res, size); return res
        }
    }

    /// ALU operation with a ModRM destination (kind 7 = cmp writes nothing).
    @inline(__always) func aluToRM(_ kind: Int, _ size: Int, _ src: UInt64) throws(X86Fault) {
        if d.mod == 3 {
            let res = alu(kind, reg(d.rm, size), src, size)
            if kind != 7 { setReg(d.rm, size, res) }
            return
        }
        let la = try linear(d.seg, effectiveAddress())
        if kind == 7 {
            _ = alu(7, try readLinear(la, size, user: cpl == 3), src, size)
            return
        }
        if let p = try rmwPointer(la, size) {
            storeSized(p, size, alu(kind, loadSized(p, size), src, size))
        } else {
            let a = try readLinear(la, size, user: cpl == 3)
            let res = alu(kind, a, src, size)
            try writeLinear(la, size, res, user: cpl == 3)
        }
    }

    /// Read-modify-write of the ModRM operand with a unary operation.
    @inline(__always) func unaryRM(_ size: Int, _ kind: Int) throws(X86Fault) {
        if d.mod == 3 {
            setReg(d.rm, size, unary(kind, reg(d.rm, size), size))
            return
        }
        let la = try linear(d.seg, effectiveAddress())
        if let p = try rmwPointer(la, size) {
            storeSized(p, size, unary(kind, loadSized(p, size), size))
        } else {
            let a = try readLinear(la, size, user: cpl == 3)
            try writeLinear(la, size, unary(kind, a, size), user: cpl == 3)
        }
    }

    /// 0 inc, 1 dec, 2 not, 3 neg.
    @inline(__always) func unary(_ kind: Int, _ a: UInt64, _ size: Int) -> UInt64 {
        let m = sizeMask(size)
        switch kind {
        case 0:
            let c: UInt64 = cf ? 1 : 0
            let res = (a &+ 1) & m; setLazy(.inc, a, c, res, size); return res
        case 1:
            let c: UInt64 = cf ? 1 : 0
            let res = (a &- 1) & m; setLazy(.dec, a, c, res, size); return res
        case 2: return ~a & m
        default:
            let res = (0 &- a) & m; setLazy(.sub, 0, a, res, size); return res
        }
    }

    // MARK: the interpreter

    /// Executes the decoded instruction `d`. On return without a throw the caller commits
    /// `nextRIP` to RIP.
    func execute() throws(X86Fault) {
        let op = d.op
        switch op {
        // ALU Eb,Gb / Ev,Gv / Gb,Eb / Gv,Ev / AL,ib / eAX,iz
        case 0x00, 0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38:
            try aluToRM(op >> 3, 1, reg(d.reg, 1))
        case 0x01, 0x09, 0x11, 0x19, 0x21, 0x29, 0x31, 0x39:
            try aluToRM(op >> 3, d.opSize, reg(d.reg, d.opSize))
        case 0x02, 0x0A, 0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A:
            let res = alu(op >> 3, reg(d.reg, 1), try readRM(1), 1)
            if op >> 3 != 7 { setReg(d.reg, 1, res) }
        case 0x03, 0x0B, 0x13, 0x1B, 0x23, 0x2B, 0x33, 0x3B:
            let s = d.opSize
            let res = alu(op >> 3, reg(d.reg, s), try readRM(s), s)
            if op >> 3 != 7 { setReg(d.reg, s, res) }
        case 0x04, 0x0C, 0x14, 0x1C, 0x24, 0x2C, 0x34, 0x3C:
            let res = alu(op >> 3, r[0] & 0xFF, d.imm, 1)
            if op >> 3 != 7 { setReg(0, 1, res) }
        case 0x05, 0x0D, 0x15, 0x1D, 0x25, 0x2D, 0x35, 0x3D:
            let s = d.opSize
            let res = alu(op >> 3, reg(0, s), signExtend(d.imm, s == 2 ? 2 : 4) & sizeMask(s), s)
            if op >> 3 != 7 { setReg(0, s, res) }
        case 0x06, 0x0E, 0x16, 0x1E:
            if mode64 { throw udFault() }
            try push(UInt64(seg[op >> 3].selector), d.opSize)
        case 0x07, 0x17, 0x1F:
            if mode64 { throw udFault() }
            let v = try readMem(SReg.ss, stackTop(), d.opSize)
            try loadSegment(op >> 3, UInt16(truncatingIfNeeded: v))
            adjustSP(UInt64(d.opSize))
            if op == 0x17 { interruptShadow = true }
        case 0x27, 0x2F, 0x37, 0x3F:
            if mode64 { throw udFault() }
            decimalAdjust(op)
        case 0x40...0x4F:
            // Only reached outside 64-bit mode (REX there).
            let s = d.opSize
            setReg(op & 7, s, unary(op < 0x48 ? 0 : 1, reg(op & 7, s), s))
        case 0x50...0x57:
            let s = stackOpSize
            try push(reg((op & 7) | (rexB ? 8 : 0), s), s)
        case 0x58...0x5F:
            let s = stackOpSize
            let v = try pop(s)
            setReg((op & 7) | (rexB ? 8 : 0), s, v)
        case 0x60:
            if mode64 { throw udFault() }
            let s = d.opSize, sp = reg(4, s)
            for i in 0..<8 { try push(i == 4 ? sp : reg(i, s), s) }
        case 0x61:
            if mode64 { throw udFault() }
            let s = d.opSize
            for i in stride(from: 7, through: 0, by: -1) {
                let v = try pop(s)
                if i != 4 { setReg(i, s, v) }
            }
        case 0x62: throw udFault()
        case 0x63:
            if mode64 {
                let v = try readRM(4)
                setReg(d.reg, d.opSize, d.opSize == 8 ? signExtend(v, 4) : v)
            } else {
                throw udFault()   // ARPL: only meaningful in virtual-8086 mode
            }
        case 0x68:
            let s = stackOpSize
            try push(signExtend(d.imm, s == 2 ? 2 : 4) & sizeMask(s), s)
        case 0x6A:
            let s = stackOpSize
            try push(signExtend(d.imm, 1) & sizeMask(s), s)
        case 0x69, 0x6B:
            let s = d.opSize
            let imm = op == 0x6B ? signExtend(d.imm, 1) : signExtend(d.imm, s == 2 ? 2 : 4)
            setReg(d.reg, s, imul2(try readRM(s), imm, s))
        case 0x6C...0x6F, 0xA4...0xA7, 0xAA...0xAF:
            try stringOp(op)
        case 0x70...0x7F:
            if condition(op & 0xF) { branch(nextRIP &+ signExtend(d.imm, 1)) }
        case 0x80, 0x82:
            if op == 0x82 && mode64 { throw udFault() }
            try aluToRM(d.reg & 7, 1, d.imm)
        case 0x81:
            let s = d.opSize
            try aluToRM(d.reg & 7, s, signExtend(d.imm, s == 2 ? 2 : 4) & sizeMask(s))
        case 0x83:
            let s = d.opSize
            try aluToRM(d.reg & 7, s, signExtend(d.imm, 1) & sizeMask(s))
        case 0x84:
            _ = alu(4, try readRM(1), reg(d.reg, 1), 1)
        case 0x85:
            let s = d.opSize
            _ = alu(4, try readRM(s), reg(d.reg, s), s)
        case 0x86, 0x87:
            let s = op == 0x86 ? 1 : d.opSize
            if d.mod == 3 {
                let a = reg(d.rm, s), b = reg(d.reg, s)
                setReg(d.rm, s, b); setReg(d.reg, s, a)
            } else {
                let la = try linear(d.seg, effectiveAddress())
                let b = reg(d.reg, s)
                if let p = try rmwPointer(la, s) {
                    let a = loadSized(p, s); storeSized(p, s, b); setReg(d.reg, s, a)
                } else {
                    let a = try readLinear(la, s, user: cpl == 3)
                    try writeLinear(la, s, b, user: cpl == 3)
                    setReg(d.reg, s, a)
                }
            }
        case 0x88: try writeRM(1, reg(d.reg, 1))
        case 0x89: try writeRM(d.opSize, reg(d.reg, d.opSize))
        case 0x8A: setReg(d.reg, 1, try readRM(1))
        case 0x8B: setReg(d.reg, d.opSize, try readRM(d.opSize))
        case 0x8C:
            let sr = d.reg & 7
            if sr > 5 { throw udFault() }
            let v = UInt64(seg[sr].selector)
            if d.mod == 3 { setReg(d.rm, d.opSize, v) } else { try writeRM(2, v) }
        case 0x8D:
            if d.mod == 3 { throw udFault() }
            setReg(d.reg, d.opSize, effectiveAddress())
        case 0x8E:
            let sr = d.reg & 7
            if sr == SReg.cs || sr > 5 { throw udFault() }
            try loadSegment(sr, UInt16(truncatingIfNeeded: try readRM(2)))
            if sr == SReg.ss { interruptShadow = true }
        case 0x8F:
            let s = stackOpSize
            let v = try readMem(SReg.ss, stackTop(), s)
            // The address is computed after RSP is incremented.
            let saved = r[4]
            adjustSP(UInt64(s))
            do { try writeRM(s, v) } catch { r[4] = saved; throw error }
        case 0x90:
            if rexB {
                let s = d.opSize
                let a = reg(8, s), b = reg(0, s); setReg(8, s, b); setReg(0, s, a)
            } else if d.rep == 0xF3 && yieldOnPause {
                // PAUSE: a spin-wait loop; with several vCPUs hand the turn over soon.
                yieldRequested = true
            }
            // NOP / PAUSE
        case 0x91...0x97:
            let s = d.opSize, i = (op & 7) | (rexB ? 8 : 0)
            let a = reg(i, s), b = reg(0, s); setReg(i, s, b); setReg(0, s, a)
        case 0x98:
            switch d.opSize {
            case 2: setReg(0, 2, signExtend(r[0], 1))
            case 4: setReg(0, 4, signExtend(r[0], 2))
            default: r[0] = signExtend(r[0], 4)
            }
        case 0x99:
            let s = d.opSize
            setReg(2, s, reg(0, s) & signBit(s) != 0 ? sizeMask(s) : 0)
        case 0x9A:
            try farCall(selector: UInt16(d.imm2), offset: d.imm, size: d.opSize)
        case 0x9B: try fwait()
        case 0x9C:
            if rflagsRest & Flag.vm != 0 && (rflagsRest & Flag.iopl) != Flag.iopl { throw gpFault() }
            let s = stackOpSize
            try push(rflags & 0xFC_FFFF & sizeMask(s), s)
        case 0x9D:
            let s = stackOpSize
            let v = try readMem(SReg.ss, stackTop(), s)
            adjustSP(UInt64(s))
            writeFlags(v, size: s)
        case 0x9E:
            setEager((arithFlags() & ~0xD5) | ((r[0] >> 8) & 0xD5))
        case 0x9F:
            let f = (rflags & 0xD5) | 2
            r[0] = (r[0] & ~0xFF00) | (f << 8)
        case 0xA0, 0xA1:
            let s = op == 0xA0 ? 1 : d.opSize
            setReg(0, s, try readMem(d.seg, d.imm & sizeMask(d.addrSize), s))
        case 0xA2, 0xA3:
            let s = op == 0xA2 ? 1 : d.opSize
            try writeMem(d.seg, d.imm & sizeMask(d.addrSize), s, reg(0, s))
        case 0xA8: _ = alu(4, r[0] & 0xFF, d.imm, 1)
        case 0xA9:
            let s = d.opSize
            _ = alu(4, reg(0, s), signExtend(d.imm, s == 2 ? 2 : 4) & sizeMask(s), s)
        case 0xB0...0xB7:
            setReg((op & 7) | (rexB ? 8 : 0), 1, d.imm)
        case 0xB8...0xBF:
            setReg((op & 7) | (rexB ? 8 : 0), d.opSize, d.imm)
        case 0xC0, 0xC1, 0xD0, 0xD1, 0xD2, 0xD3:
            let s = (op & 1) == 0 ? 1 : d.opSize
            let count: UInt64 = op <= 0xC1 ? d.imm : (op <= 0xD1 ? 1 : r[1] & 0xFF)
            try shiftRM(d.reg & 7, s, count)
        case 0xC2, 0xC3:
            let s = stackOpSize
            let target = try readMem(SReg.ss, stackTop(), s)
            adjustSP(UInt64(s) &+ (op == 0xC2 ? d.imm : 0))
            if mode64 { nextRIP = s == 2 ? target & 0xFFFF : target } else { nextRIP = target & sizeMask(s) }
        case 0xC4, 0xC5:
            if mode64 || d.mod == 3 { throw udFault() }
            try loadFarPointer(op == 0xC4 ? SReg.es : SReg.ds)
        case 0xC6:
            if d.reg & 7 != 0 { throw udFault() }
            try writeRM(1, d.imm)
        case 0xC7:
            if d.reg & 7 != 0 { throw udFault() }
            let s = d.opSize
            try writeRM(s, signExtend(d.imm, s == 2 ? 2 : 4) & sizeMask(s))
        case 0xC8:
            try enter(size: stackOpSize, frame: d.imm, level: Int(d.imm2 & 31))
        case 0xC9:
            let s = stackOpSize
            let sp: UInt64
            switch stackSize { case 8: sp = r[5]; case 4: sp = r[5] & 0xFFFF_FFFF; default: sp = r[5] & 0xFFFF }
            let v = try readMem(SReg.ss, sp, s)
            switch stackSize {
            case 8: r[4] = sp &+ UInt64(s)
            case 4: r[4] = (sp &+ UInt64(s)) & 0xFFFF_FFFF
            default: r[4] = (r[4] & ~0xFFFF) | ((sp &+ UInt64(s)) & 0xFFFF)
            }
            setReg(5, s, v)
        case 0xCA, 0xCB:
            try farReturn(size: d.opSize, extra: op == 0xCA ? d.imm : 0)
        case 0xCC:
            try softwareInterrupt(Vec.bp)
        case 0xCD:
            try softwareInterrupt(UInt8(d.imm))
        case 0xCE:
            if mode64 { throw udFault() }
            if of { try softwareInterrupt(Vec.of) }
        case 0xCF:
            try interruptReturn()
        case 0xD4:
            if mode64 { throw udFault() }
            if d.imm == 0 { throw fault(Vec.de) }
            let al = r[0] & 0xFF
            let res = (al % d.imm) | ((al / d.imm) << 8)
            setReg(0, 2, res)
            setResultFlags(res, 1, cf: false, of: false)
        case 0xD5:
            if mode64 { throw udFault() }
            let al = ((r[0] & 0xFF) &+ ((r[0] >> 8) & 0xFF) &* d.imm) & 0xFF
            setReg(0, 2, al)
            setResultFlags(al, 1, cf: false, of: false)
        case 0xD6:
            if mode64 { throw udFault() }
            setReg(0, 1, cf ? 0xFF : 0)
        case 0xD7:
            let addr = (reg(3, d.addrSize) &+ (r[0] & 0xFF)) & sizeMask(d.addrSize)
            setReg(0, 1, try readMem(d.seg, addr, 1))
        case 0xD8...0xDF:
            try x87(op)
        case 0xE0, 0xE1, 0xE2:
            let c = (reg(1, d.addrSize) &- 1) & sizeMask(d.addrSize)
            setIndex(1, c)
            var take = c != 0
            if op == 0xE0 { take = take && !zf }
            if op == 0xE1 { take = take && zf }
            if take { branch(nextRIP &+ signExtend(d.imm, 1)) }
        case 0xE3:
            if reg(1, d.addrSize) == 0 { branch(nextRIP &+ signExtend(d.imm, 1)) }
        case 0xE4, 0xE5:
            let s = op == 0xE4 ? 1 : (d.opSize == 2 ? 2 : 4)
            try checkIOPL()
            setReg(0, s, try portIn(UInt16(d.imm), s))
        case 0xE6, 0xE7:
            let s = op == 0xE6 ? 1 : (d.opSize == 2 ? 2 : 4)
            try checkIOPL()
            portOut(UInt16(d.imm), s, reg(0, s))
        case 0xEC, 0xED:
            let s = op == 0xEC ? 1 : (d.opSize == 2 ? 2 : 4)
            try checkIOPL()
            setReg(0, s, try portIn(UInt16(r[2] & 0xFFFF), s))
        case 0xEE, 0xEF:
            let s = op == 0xEE ? 1 : (d.opSize == 2 ? 2 : 4)
            try checkIOPL()
            portOut(UInt16(r[2] & 0xFFFF), s, reg(0, s))
        case 0xE8:
            let s = stackOpSize
            let rel = d.opSize == 2 ? signExtend(d.imm, 2) : signExtend(d.imm, 4)
            try push(nextRIP & sizeMask(s), s)
            branch(nextRIP &+ rel)
        case 0xE9:
            let rel = d.opSize == 2 ? signExtend(d.imm, 2) : signExtend(d.imm, 4)
            branch(nextRIP &+ rel)
        case 0xEA:
            try farJump(selector: UInt16(d.imm2), offset: d.imm)
        case 0xEB:
            branch(nextRIP &+ signExtend(d.imm, 1))
        case 0xF1:
            try softwareInterrupt(Vec.db)
        case 0xF4:
            if cpl != 0 { throw gpFault() }
            halted = true
        case 0xF5:
            let f = arithFlags(); setEager(f ^ Flag.cf)
        case 0xF6, 0xF7:
            try group3(op == 0xF6 ? 1 : d.opSize)
        case 0xF8: setEager(arithFlags() & ~Flag.cf)
        case 0xF9: setEager(arithFlags() | Flag.cf)
        case 0xFA:
            try checkIOPL()
            rflagsRest &= ~Flag.if
        case 0xFB:
            try checkIOPL()
            if rflagsRest & Flag.if == 0 { interruptShadow = true }
            rflagsRest |= Flag.if
        case 0xFC: rflagsRest &= ~Flag.df
        case 0xFD: rflagsRest |= Flag.df
        case 0xFE:
            let k = d.reg & 7
            if k > 1 { throw udFault() }
            try unaryRM(1, k)
        case 0xFF:
            try group5()
        case 0x100...0x3FF:
            try execute0F(op)
        default:
            throw udFault()
        }
    }

    @inline(__always) var rexB: Bool { d.rexB }

    // MARK: groups

    func group3(_ s: Int) throws(X86Fault) {
        let k = d.reg & 7
        switch k {
        case 0, 1:
            _ = alu(4, try readRM(s), signExtend(d.imm, s == 2 ? 2 : (s == 1 ? 1 : 4)) & sizeMask(s), s)
        case 2: try unaryRM(s, 2)
        case 3: try unaryRM(s, 3)
        case 4, 5:
            let v = try readRM(s)
            mulAcc(v, s, signed: k == 5)
        default:
            let v = try readRM(s)
            try divAcc(v, s, signed: k == 7)
        }
    }

    func group5() throws(X86Fault) {
        let k = d.reg & 7
        switch k {
        case 0, 1: try unaryRM(d.opSize, k)
        case 2:
            let s = stackOpSize
            let target = try readRM(mode64 ? (d.has66 ? 2 : 8) : d.opSize)
            try push(nextRIP & sizeMask(s), s)
            nextRIP = mode64 ? target : target & sizeMask(s)
        case 4:
            let target = try readRM(mode64 ? (d.has66 ? 2 : 8) : d.opSize)
            nextRIP = mode64 ? target : target & sizeMask(d.opSize)
        case 3, 5:
            if d.mod == 3 { throw udFault() }
            let s = d.opSize
            let ea = effectiveAddress()
            let off = try readMem(d.seg, ea, s)
            let sel = try readMem(d.seg, (ea &+ UInt64(s)) & sizeMask(d.addrSize), 2)
            if k == 3 { try farCall(selector: UInt16(sel), offset: off, size: s) }
            else { try farJump(selector: UInt16(sel), offset: off) }
        case 6:
            let s = stackOpSize
            try push(try readRM(s), s)
        default:
            throw udFault()
        }
    }

    // MARK: multiply / divide

    func mulAcc(_ v: UInt64, _ s: Int, signed: Bool) {
        switch s {
        case 1:
            let a = r[0] & 0xFF
            let res: UInt64
            let over: Bool
            if signed {
                let p = Int64(Int8(truncatingIfNeeded: a)) * Int64(Int8(truncatingIfNeeded: v))
                res = UInt64(bitPattern: p) & 0xFFFF
                over = p != Int64(Int8(truncatingIfNeeded: p))
            } else {
                res = a &* v
                over = res > 0xFF
            }
            setReg(0, 2, res)
            setResultFlags(res, 1, cf: over, of: over)
        case 2, 4:
            let bits = UInt64(s * 8)
            let a = reg(0, s)
            let lo: UInt64, hi: UInt64, over: Bool
            if signed {
                let p = Int64(bitPattern: signExtend(a, s)) &* Int64(bitPattern: signExtend(v, s))
                let up = UInt64(bitPattern: p)
                lo = up & sizeMask(s); hi = (up >> bits) & sizeMask(s)
                over = signExtend(lo, s) != up
            } else {
                let p = a &* v
                lo = p & sizeMask(s); hi = p >> bits
                over = hi != 0
            }
            setReg(0, s, lo); setReg(2, s, hi)
            setResultFlags(lo, s, cf: over, of: over)
        default:
            if signed {
                let p = Int128(Int64(bitPattern: r[0])) * Int128(Int64(bitPattern: v))
                let lo = UInt64(truncatingIfNeeded: p), hi = UInt64(truncatingIfNeeded: p >> 64)
                r[0] = lo; r[2] = hi
                let over = Int128(Int64(bitPattern: lo)) != p
                setResultFlags(lo, 8, cf: over, of: over)
            } else {
                let (hi, lo) = r[0].multipliedFullWidth(by: v)
                r[0] = lo; r[2] = hi
                setResultFlags(lo, 8, cf: hi != 0, of: hi != 0)
            }
        }
    }

    func divAcc(_ v: UInt64, _ s: Int, signed: Bool) throws(X86Fault) {
        if v & sizeMask(s) == 0 { throw fault(Vec.de) }
        switch s {
        case 1:
            let a = r[0] & 0xFFFF
            if signed {
                let n = Int64(Int16(truncatingIfNeeded: a)), dv = Int64(Int8(truncatingIfNeeded: v))
                let q = n / dv, rem = n % dv
                if q > 127 || q < -128 { throw fault(Vec.de) }
                setReg(0, 2, (UInt64(bitPattern: q) & 0xFF) | ((UInt64(bitPattern: rem) & 0xFF) << 8))
            } else {
                let q = a / v, rem = a % v
                if q > 0xFF { throw fault(Vec.de) }
                setReg(0, 2, q | (rem << 8))
            }
        case 2, 4:
            let bits = UInt64(s * 8)
            let n = (reg(2, s) << bits) | reg(0, s)
            if signed {
                let sn = s == 2 ? Int64(Int32(truncatingIfNeeded: n)) : Int64(bitPattern: n)
                let dv = Int64(bitPattern: signExtend(v, s))
                if sn == Int64.min && dv == -1 { throw fault(Vec.de) }
                let q = sn / dv, rem = sn % dv
                let limit = Int64(1) << (bits - 1)
                if q >= limit || q < -limit { throw fault(Vec.de) }
                setReg(0, s, UInt64(bitPattern: q)); setReg(2, s, UInt64(bitPattern: rem))
            } else {
                let q = n / v, rem = n % v
                if q > sizeMask(s) { throw fault(Vec.de) }
                setReg(0, s, q); setReg(2, s, rem)
            }
        default:
            if signed {
                let n = Int128(Int64(bitPattern: r[2])) << 64 | Int128(r[0])
                let dv = Int128(Int64(bitPattern: v))
                if dv == -1 && n == Int128.min { throw fault(Vec.de) }
                let q = n / dv, rem = n % dv
                if q > Int128(Int64.max) || q < Int128(Int64.min) { throw fault(Vec.de) }
                r[0] = UInt64(truncatingIfNeeded: q); r[2] = UInt64(truncatingIfNeeded: rem)
            } else {
                if r[2] >= v { throw fault(Vec.de) }
                let (q, rem) = v.dividingFullWidth((r[2], r[0]))
                r[0] = q; r[2] = rem
            }
        }
    }

    func imul2(_ a: UInt64, _ b: UInt64, _ s: Int) -> UInt64 {
        if s == 8 {
            let (res, over) = Int64(bitPattern: a).multipliedReportingOverflow(by: Int64(bitPattern: b))
            let u = UInt64(bitPattern: res)
            setResultFlags(u, 8, cf: over, of: over)
            return u
        }
        let p = Int64(bitPattern: signExtend(a, s)) &* Int64(bitPattern: signExtend(b, s))
        let res = UInt64(bitPattern: p) & sizeMask(s)
        let over = signExtend(res, s) != UInt64(bitPattern: p)
        setResultFlags(res, s, cf: over, of: over)
        return res
    }

    // MARK: shifts and rotates

    func shiftRM(_ kind: Int, _ s: Int, _ rawCount: UInt64) throws(X86Fault) {
        let count = rawCount & (s == 8 ? 0x3F : 0x1F)
        if count == 0 {
            // No flags change; a 32-bit register destination is still zero-extended.
            let v = try readRM(s)
            if d.mod == 3 && s == 4 { setReg(d.rm, 4, v) }
            return
        }
        if d.mod == 3 {
            setReg(d.rm, s, shift(kind, reg(d.rm, s), count, s))
            return
        }
        let la = try linear(d.seg, effectiveAddress())
        if let p = try rmwPointer(la, s) {
            storeSized(p, s, shift(kind, loadSized(p, s), count, s))
        } else {
            let a = try readLinear(la, s, user: cpl == 3)
            try writeLinear(la, s, shift(kind, a, count, s), user: cpl == 3)
        }
    }

    /// One shift/rotate (count already masked and nonzero). Sets flags.
    func shift(_ kind: Int, _ a: UInt64, _ count: UInt64, _ s: Int) -> UInt64 {
        let bits = UInt64(s * 8)
        let m = sizeMask(s)
        let sb = signBit(s)
        switch kind {
        case 0: // rol
            let c = count % bits
            let res = c == 0 ? a : ((a << c) | (a >> (bits - c))) & m
            let cfv = res & 1 != 0
            let old = arithFlags() & ~(Flag.cf | Flag.of)
            setEager(old | (cfv ? Flag.cf : 0) | (((res & sb != 0) != cfv) ? Flag.of : 0))
            return res
        case 1: // ror
            let c = count % bits
            let res = c == 0 ? a : ((a >> c) | (a << (bits - c))) & m
            let cfv = res & sb != 0
            let ofv = ((res >> (bits - 1)) ^ (res >> (bits - 2))) & 1 != 0
            let old = arithFlags() & ~(Flag.cf | Flag.of)
            setEager(old | (cfv ? Flag.cf : 0) | (ofv ? Flag.of : 0))
            return res
        case 2: // rcl
            let c = count % (bits + 1)
            var res = a
            var carry: UInt64 = cf ? 1 : 0
            if c != 0 {
                for _ in 0..<c {
                    let out = (res >> (bits - 1)) & 1
                    res = ((res << 1) | carry) & m
                    carry = out
                }
            }
            let old = arithFlags() & ~(Flag.cf | Flag.of)
            let ofv = ((res >> (bits - 1)) & 1) ^ carry
            setEager(old | (carry != 0 ? Flag.cf : 0) | (ofv != 0 ? Flag.of : 0))
            return res
        case 3: // rcr
            let c = count % (bits + 1)
            var res = a
            var carry: UInt64 = cf ? 1 : 0
            let ofv = ((res >> (bits - 1)) & 1) ^ carry
            if c != 0 {
                for _ in 0..<c {
                    let out = res & 1
                    res = (res >> 1) | (carry << (bits - 1))
                    carry = out
                }
            }
            let old = arithFlags() & ~(Flag.cf | Flag.of)
            setEager(old | (carry != 0 ? Flag.cf : 0) | (ofv != 0 ? Flag.of : 0))
            return res
        case 4, 6: // shl
            let res = count >= 64 ? 0 : (a << count) & m
            let cfv = count <= bits ? ((a >> (bits - count)) & 1 != 0) : false
            setResultFlags(res, s, cf: cfv, of: ((res & sb) != 0) != cfv)
            return res
        case 5: // shr
            let res = count >= 64 ? 0 : a >> count
            let cfv = count <= bits ? ((a >> (count - 1)) & 1 != 0) : false
            setResultFlags(res, s, cf: cfv, of: a & sb != 0)
            return res
        default: // sar
            let sa = Int64(bitPattern: signExtend(a, s))
            let c = min(count, 63)
            let res = UInt64(bitPattern: sa >> Int64(c)) & m
            let cfv = (UInt64(bitPattern: sa >> Int64(min(count - 1, 63))) & 1) != 0
            setResultFlags(res, s, cf: cfv, of: false)
            return res
        }
    }

    /// SHLD/SHRD.
    func doubleShift(left: Bool, countRaw: UInt64) throws(X86Fault) {
        let s = d.opSize
        let count = countRaw & (s == 8 ? 0x3F : 0x1F)
        if count == 0 {
            let v = try readRM(s)
            if d.mod == 3 && s == 4 { setReg(d.rm, 4, v) }
            return
        }
        let bits = UInt64(s * 8)
        let src = reg(d.reg, s)
        func compute(_ a: UInt64) -> UInt64 {
            let m = sizeMask(s)
            var res: UInt64, cfv: Bool
            if s == 2 && count > 16 {
                // 16-bit with count > 16: defined as a shift of the 48-bit concatenation.
                if left {
                    let wide = (a << 32) | (src << 16) | a
                    res = ((wide << count) >> 32) & m
                    cfv = (wide >> (48 - count)) & 1 != 0
                } else {
                    let w2 = a | (src << 16) | (a << 32)
                    res = (w2 >> count) & m
                    cfv = (w2 >> (count - 1)) & 1 != 0
                }
            } else if left {
                res = ((a << count) | (count == bits ? src : src >> (bits - count))) & m
                cfv = (a >> (bits - count)) & 1 != 0
            } else {
                res = ((a >> count) | (count == bits ? src : src << (bits - count))) & m
                cfv = (a >> (count - 1)) & 1 != 0
            }
            let ofv = ((res ^ a) & signBit(s)) != 0
            setResultFlags(res, s, cf: cfv, of: ofv)
            return res
        }
        if d.mod == 3 { setReg(d.rm, s, compute(reg(d.rm, s))); return }
        let la = try linear(d.seg, effectiveAddress())
        let a = try readLinear(la, s, user: cpl == 3)
        try writeLinear(la, s, compute(a), user: cpl == 3)
    }

    // MARK: misc

    func decimalAdjust(_ op: Int) {
        var al = r[0] & 0xFF
        var cfv = cf
        let afv = af
        switch op {
        case 0x27, 0x2F: // daa, das
            let oldAL = al, oldCF = cfv
            var newAF = false
            cfv = false
            if (al & 0xF) > 9 || afv {
                al = op == 0x27 ? (al &+ 6) & 0xFF : (al &- 6) & 0xFF
                cfv = oldCF || (op == 0x27 ? oldAL > 0xF9 : oldAL < 6)
                newAF = true
            }
            if oldAL > 0x99 || oldCF {
                al = op == 0x27 ? (al &+ 0x60) & 0xFF : (al &- 0x60) & 0xFF
                cfv = true
            }
            setReg(0, 1, al)
            setResultFlags(al, 1, cf: cfv, of: false, af: newAF)
        default: // aaa, aas
            var ax = r[0] & 0xFFFF
            if (al & 0xF) > 9 || afv {
                ax = op == 0x37 ? (ax &+ 0x106) : (ax &- 6) &- 0x100
                cfv = true
            } else { cfv = false }
            ax = (ax & 0xFF0F)
            setReg(0, 2, ax)
            al = ax & 0xFF
            setResultFlags(al, 1, cf: cfv, of: false, af: cfv)
        }
    }

    func enter(size s: Int, frame: UInt64, level: Int) throws(X86Fault) {
        try push(reg(5, s), s)
        let frameTemp = stackTop()
        if level > 0 {
            var bp = reg(5, stackSize)
            for _ in 1..<max(level, 1) {
                bp = (bp &- UInt64(s)) & sizeMask(stackSize)
                try push(try readMem(SReg.ss, bp, s), s)
            }
            try push(frameTemp, s)
        }
        setReg(5, s, frameTemp)
        adjustSP(0 &- frame)
    }

    func checkIOPL() throws(X86Fault) {
        if protectedMode && (rflagsRest & Flag.vm != 0 || UInt64(cpl) > (rflagsRest & Flag.iopl) >> 12) { throw gpFault() }
    }

    func portIn(_ port: UInt16, _ size: Int) throws(X86Fault) -> UInt64 {
        let key = (UInt64(1) << 62) | UInt64(port)
        if replayValid && replayKey == key {
            replayValid = false
            return replayValue & sizeMask(size)
        }
        pendingExits.append(.io(port: port, size: size, isWrite: false, value: 0))
        throw .needsExit
    }

    func portOut(_ port: UInt16, _ size: Int, _ value: UInt64) {
        pendingExits.append(.io(port: port, size: size, isWrite: true, value: UInt32(truncatingIfNeeded: value)))
    }

    /// POPF / IRET flag update with the privilege rules.
    func writeFlags(_ v: UInt64, size: Int) {
        var mask: UInt64 = Flag.arith | Flag.tf | Flag.df | Flag.nt
        if size >= 4 { mask |= Flag.ac | Flag.id }
        if !protectedMode || cpl == 0 { mask |= Flag.iopl | Flag.if }
        else if UInt64(cpl) <= (rflagsRest & Flag.iopl) >> 12 { mask |= Flag.if }
        let cur = rflags
        rflags = (cur & ~mask) | (v & mask)
    }

    // MARK: string instructions

    func stringOp(_ op: Int) throws(X86Fault) {
        let s = (op & 1) == 0 ? 1 : (op <= 0x6F ? (d.opSize == 2 ? 2 : 4) : d.opSize)
        let am = sizeMask(d.addrSize)
        let step: UInt64 = rflagsRest & Flag.df != 0 ? 0 &- UInt64(s) : UInt64(s)
        let rep = d.rep != 0
        if rep && r[1] & am == 0 { return }
        if op >= 0x6C && op <= 0x6F { try checkIOPL() }
        var iterations = 0
        while true {
            switch op {
            case 0xA4, 0xA5: // movs
                if rep && step == UInt64(s), try fastMovs(s) {
                    // bulk copy done for part of the count
                } else {
                    let v = try readMem(d.seg, r[6] & am, s)
                    try writeMem(SReg.es, r[7] & am, s, v)
                    setIndex(6, r[6] &+ step); setIndex(7, r[7] &+ step)
                    if rep { setIndex(1, r[1] &- 1) }
                }
            case 0xAA, 0xAB: // stos
                if rep && step == UInt64(s), try fastStos(s) {
                } else {
                    try writeMem(SReg.es, r[7] & am, s, reg(0, s))
                    setIndex(7, r[7] &+ step)
                    if rep { setIndex(1, r[1] &- 1) }
                }
            case 0xAC, 0xAD: // lods
                setReg(0, s, try readMem(d.seg, r[6] & am, s))
                setIndex(6, r[6] &+ step)
                if rep { setIndex(1, r[1] &- 1) }
            case 0xA6, 0xA7: // cmps
                let a = try readMem(d.seg, r[6] & am, s)
                let b = try readMem(SReg.es, r[7] & am, s)
                _ = alu(7, a, b, s)
                setIndex(6, r[6] &+ step); setIndex(7, r[7] &+ step)
                if rep { setIndex(1, r[1] &- 1) }
            case 0xAE, 0xAF: // scas
                let b = try readMem(SReg.es, r[7] & am, s)
                _ = alu(7, reg(0, s), b, s)
                setIndex(7, r[7] &+ step)
                if rep { setIndex(1, r[1] &- 1) }
            case 0x6C, 0x6D: // ins
                // Check the destination first so a fault cannot lose the port data.
                _ = try hostPage(try linear(SReg.es, r[7] & am), .write, user: cpl == 3)
                let v = try portIn(UInt16(r[2] & 0xFFFF), s)
                try writeMem(SReg.es, r[7] & am, s, v)
                setIndex(7, r[7] &+ step)
                if rep { setIndex(1, r[1] &- 1) }
            default: // outs
                let v = try readMem(d.seg, r[6] & am, s)
                portOut(UInt16(r[2] & 0xFFFF), s, v)
                setIndex(6, r[6] &+ step)
                if rep { setIndex(1, r[1] &- 1) }
            }
            if !rep { return }
            if r[1] & am == 0 { return }
            if op == 0xA6 || op == 0xA7 || op == 0xAE || op == 0xAF {
                if d.rep == 0xF3 && !zf { return }
                if d.rep == 0xF2 && zf { return }
            }
            iterations &+= 1
            if iterations >= 1024 || !pendingExits.isEmpty || attention {
                // Resume later: the instruction restarts with the updated registers.
                nextRIP = rip
                return
            }
        }
    }

    /// Copies as many whole elements as fit in the current source and destination pages
    /// (forward, non-overlapping RAM only). Returns false if it did nothing.
    func fastMovs(_ s: Int) throws(X86Fault) -> Bool {
        let am = sizeMask(d.addrSize)
        let src = try linear(d.seg, r[6] & am), dst = try linear(SReg.es, r[7] & am)
        let srcRoom = (4096 - (src & 0xFFF)) / UInt64(s), dstRoom = (4096 - (dst & 0xFFF)) / UInt64(s)
        var n = min(r[1] & am, min(srcRoom, dstRoom))
        if n < 2 { return false }
        guard let sp = try hostPage(src, .read, user: cpl == 3),
              let dp = try hostPage(dst, .write, user: cpl == 3) else { return false }
        let sa = sp + Int(src & 0xFFF), da = dp + Int(dst & 0xFFF)
        let bytes = Int(n) * s
        if da > sa && da < sa + bytes {
            // Overlapping forward copy replicates data: do it element by element.
            n = 0
            return false
        }
        // SAFETY: both ranges lie within single RAM pages (bounded by srcRoom/dstRoom).
        memmove(da, sa, bytes)
        setIndex(6, r[6] &+ UInt64(bytes)); setIndex(7, r[7] &+ UInt64(bytes))
        setIndex(1, r[1] &- n)
        return true
    }

    func fastStos(_ s: Int) throws(X86Fault) -> Bool {
        let am = sizeMask(d.addrSize)
        let dst = try linear(SReg.es, r[7] & am)
        let room = (4096 - (dst & 0xFFF)) / UInt64(s)
        let n = min(r[1] & am, room)
        if n < 2 { return false }
        guard let dp = try hostPage(dst, .write, user: cpl == 3) else { return false }
        let da = dp + Int(dst & 0xFFF)
        let v = reg(0, s)
        // SAFETY: the range lies within one RAM page (bounded by room).
        if s == 1 {
            memset(da, Int32(v & 0xFF), Int(n))
        } else {
            for i in 0..<Int(n) { storeSized(da + i * s, s, v) }
        }
        let bytes = UInt64(n) * UInt64(s)
        setIndex(7, r[7] &+ bytes)
        setIndex(1, r[1] &- n)
        return true
    }
}

// MARK: - Execute0F

extension X86CPU {
    func execute0F(_ op: Int) throws(X86Fault) {
        let b = op & 0xFF
        if op >= 0x200 { try sse3Byte(op); return }
        switch b {
        case 0x00: try group6()
        case 0x01: try group7()
        case 0x02, 0x03: // LAR / LSL
            if !protectedMode || rflagsRest & Flag.vm != 0 { throw udFault() }
            let sel = UInt16(truncatingIfNeeded: try readRM(2))
            var ok = false
            var val: UInt64 = 0
            if sel & 0xFFFC != 0, let lo = try? readDescriptor(sel) {
                let sd = segmentFromDescriptor(sel, lo)
                let dplOK = Int(sd.dpl) >= max(cpl, Int(sel & 3)) || (sd.s && sd.type & 0xC == 0xC)
                if dplOK && (sd.s || [1, 2, 3, 9, 0xB].contains(Int(sd.type)) || (b == 0x02 && [4, 5, 0xC].contains(Int(sd.type)))) {
                    ok = true
                    val = b == 0x02 ? (lo >> 32) & 0x00F0_FF00 : UInt64(sd.limit)
                }
            }
            var f = arithFlags()
            if ok { f |= Flag.zf; setReg(d.reg, d.opSize, val) } else { f &= ~Flag.zf }
            setEager(f)
        case 0x05: try syscall()
        case 0x06:
            if cpl != 0 { throw gpFault() }
            cr0 &= ~X86Bits.cr0TS
        case 0x07: try sysret()
        case 0x08, 0x09:
            if cpl != 0 { throw gpFault() }
        case 0x0B, 0xB9, 0xFF: throw udFault()
        case 0x0D, 0x18...0x1F:
            // prefetch hints and multi-byte NOPs
            break
        case 0x20, 0x22:
            if cpl != 0 { throw gpFault() }
            var n = Int((d.modrm >> 3) & 7) | (d.reg & 8)
            if d.lock && n == 0 { n = 8 }
            let rmReg = Int(d.modrm & 7) | (d.rm & 8)
            if b == 0x20 {
                let v = try readCR(n)
                r[rmReg] = mode64 ? v : v & 0xFFFF_FFFF
            } else {
                try writeCR(n, mode64 ? r[rmReg] : r[rmReg] & 0xFFFF_FFFF)
            }
        case 0x21, 0x23:
            if cpl != 0 { throw gpFault() }
            let n = Int((d.modrm >> 3) & 7)
            let rmReg = Int(d.modrm & 7) | (d.rm & 8)
            if b == 0x21 {
                let v: UInt64 = n == 6 ? (dr[6] | 0xFFFF_0FF0) : (n == 7 ? (dr[7] | 0x400) : (n < 4 ? dr[n] : (n == 4 ? dr[6] | 0xFFFF_0FF0 : dr[7] | 0x400)))
                r[rmReg] = mode64 ? v : v & 0xFFFF_FFFF
            } else {
                dr[n] = r[rmReg]
            }
        case 0x30:
            if cpl != 0 { throw gpFault() }
            try writeMSR(UInt32(truncatingIfNeeded: r[1]), (r[2] << 32) | (r[0] & 0xFFFF_FFFF))
        case 0x31:
            if cr4 & 0x4 != 0 && cpl != 0 { throw gpFault() }
            let t = readTSC()
            r[0] = t & 0xFFFF_FFFF; r[2] = t >> 32
        case 0x32:
            if cpl != 0 { throw gpFault() }
            let v = try readMSR(UInt32(truncatingIfNeeded: r[1]))
            r[0] = v & 0xFFFF_FFFF; r[2] = v >> 32
        case 0x33: throw gpFault()
        case 0x34: try sysenter()
        case 0x35: try sysexit()
        case 0x40...0x4F:
            let v = try readRM(d.opSize)
            if condition(b & 0xF) { setReg(d.reg, d.opSize, v) }
            else if d.opSize == 4 { r[d.reg] &= 0xFFFF_FFFF }
        case 0x80...0x8F:
            if condition(b & 0xF) {
                let rel = d.opSize == 2 ? signExtend(d.imm, 2) : signExtend(d.imm, 4)
                branch(nextRIP &+ rel)
            }
        case 0x90...0x9F:
            try writeRM(1, condition(b & 0xF) ? 1 : 0)
        case 0xA0, 0xA8:
            let s = stackOpSize
            try push(UInt64(seg[b == 0xA0 ? SReg.fs : SReg.gs].selector), s)
        case 0xA1, 0xA9:
            let s = stackOpSize
            let v = try readMem(SReg.ss, stackTop(), s)
            try loadSegment(b == 0xA1 ? SReg.fs : SReg.gs, UInt16(truncatingIfNeeded: v))
            adjustSP(UInt64(s))
        case 0xA2: cpuid()
        case 0xA3: try bitOp(0, offset: reg(d.reg, d.opSize), immediate: false)
        case 0xAB: try bitOp(1, offset: reg(d.reg, d.opSize), immediate: false)
        case 0xB3: try bitOp(2, offset: reg(d.reg, d.opSize), immediate: false)
        case 0xBB: try bitOp(3, offset: reg(d.reg, d.opSize), immediate: false)
        case 0xBA:
            let k = d.reg & 7
            if k < 4 { throw udFault() }
            try bitOp(k - 4, offset: d.imm, immediate: true)
        case 0xA4: try doubleShift(left: true, countRaw: d.imm)
        case 0xA5: try doubleShift(left: true, countRaw: r[1] & 0xFF)
        case 0xAC: try doubleShift(left: false, countRaw: d.imm)
        case 0xAD: try doubleShift(left: false, countRaw: r[1] & 0xFF)
        case 0xAE: try group15()
        case 0xAF:
            let s = d.opSize
            setReg(d.reg, s, imul2(reg(d.reg, s), try readRM(s), s))
        case 0xB0, 0xB1:
            let s = b == 0xB0 ? 1 : d.opSize
            let src = reg(d.reg, s)
            if d.mod == 3 {
                let dst = reg(d.rm, s)
                _ = alu(7, reg(0, s), dst, s)
                if reg(0, s) == dst { setReg(d.rm, s, src) } else { setReg(0, s, dst) }
            } else {
                let la = try linear(d.seg, effectiveAddress())
                _ = try rmwPointer(la, s)
                let dst = try readLinear(la, s, user: cpl == 3)
                let acc = reg(0, s)
                if acc == dst {
                    try writeLinear(la, s, src, user: cpl == 3)
                } else {
                    try writeLinear(la, s, dst, user: cpl == 3)
                }
                _ = alu(7, acc, dst, s)
                if acc != dst { setReg(0, s, dst) }
            }
        case 0xB2: if d.mod == 3 { throw udFault() }; try loadFarPointer(SReg.ss)
        case 0xB4: if d.mod == 3 { throw udFault() }; try loadFarPointer(SReg.fs)
        case 0xB5: if d.mod == 3 { throw udFault() }; try loadFarPointer(SReg.gs)
        case 0xB6: setReg(d.reg, d.opSize, try readRM(1))
        case 0xB7: setReg(d.reg, d.opSize, try readRM(2))
        case 0xBE: setReg(d.reg, d.opSize, signExtend(try readRM(1), 1) & sizeMask(d.opSize))
        case 0xBF: setReg(d.reg, d.opSize, signExtend(try readRM(2), 2) & sizeMask(d.opSize))
        case 0xB8:
            if d.rep != 0xF3 || !cpuLevelHas(.popcnt) { throw udFault() }
            let v = try readRM(d.opSize)
            setReg(d.reg, d.opSize, UInt64(v.nonzeroBitCount))
            setEager(v == 0 ? Flag.zf : 0)
        case 0xBC, 0xBD:
            let s = d.opSize
            let v = try readRM(s)
            var f = arithFlags() & ~Flag.zf
            if v == 0 {
                f |= Flag.zf
            } else {
                let idx = b == 0xBC ? UInt64(v.trailingZeroBitCount) : UInt64(63 - v.leadingZeroBitCount)
                setReg(d.reg, s, idx)
                f = (f & ~(Flag.cf | Flag.of | Flag.sf | Flag.af | Flag.pf))
                if parityEven(idx) { f |= Flag.pf }
            }
            setEager(f)
        case 0xC0, 0xC1:
            let s = b == 0xC0 ? 1 : d.opSize
            let src = reg(d.reg, s)
            if d.mod == 3 {
                let dst = reg(d.rm, s)
                let sum = alu(0, dst, src, s)
                setReg(d.reg, s, dst); setReg(d.rm, s, sum)
            } else {
                let la = try linear(d.seg, effectiveAddress())
                _ = try rmwPointer(la, s)
                let dst = try readLinear(la, s, user: cpl == 3)
                let sum = (dst &+ src) & sizeMask(s)
                try writeLinear(la, s, sum, user: cpl == 3)
                _ = alu(0, dst, src, s)
                setReg(d.reg, s, dst)
            }
        case 0xC3:
            if d.mod == 3 { throw udFault() }
            try writeRM(d.opSize, reg(d.reg, d.opSize))
        case 0xC7: try group9()
        case 0xC8...0xCF:
            let i = (b & 7) | (d.rexB ? 8 : 0)
            if d.opSize == 8 { r[i] = r[i].byteSwapped }
            else if d.opSize == 4 { r[i] = UInt64(UInt32(truncatingIfNeeded: r[i]).byteSwapped) }
            else { setReg(i, 2, 0) }
        case 0x77: try emms()
        default:
            try sse(b)
        }
    }

    /// BT/BTS/BTR/BTC: kind 0 test, 1 set, 2 reset, 3 complement.
    func bitOp(_ kind: Int, offset: UInt64, immediate: Bool) throws(X86Fault) {
        let s = d.opSize
        let bits = UInt64(s * 8)
        var f = arithFlags() & ~Flag.cf
        if d.mod == 3 {
            let bit = offset & (bits - 1)
            let v = reg(d.rm, s)
            if (v >> bit) & 1 != 0 { f |= Flag.cf }
            setEager(f)
            switch kind {
            case 1: setReg(d.rm, s, v | (1 << bit))
            case 2: setReg(d.rm, s, v & ~(1 << bit))
            case 3: setReg(d.rm, s, v ^ (1 << bit))
            default: break
            }
            return
        }
        var addr = effectiveAddress()
        let bit: UInt64
        if immediate {
            bit = offset & (bits - 1)
        } else {
            let soff = Int64(bitPattern: signExtend(offset, s))
            let unit = soff >> Int64(s == 2 ? 4 : (s == 4 ? 5 : 6))
            addr = (addr &+ UInt64(bitPattern: unit &* Int64(s))) & sizeMask(d.addrSize)
            bit = UInt64(bitPattern: soff) & (bits - 1)
        }
        let la = try linear(d.seg, addr)
        if kind != 0 { _ = try rmwPointer(la, s) }
        let v = try readLinear(la, s, user: cpl == 3)
        if (v >> bit) & 1 != 0 { f |= Flag.cf }
        switch kind {
        case 1: try writeLinear(la, s, v | (1 << bit), user: cpl == 3)
        case 2: try writeLinear(la, s, v & ~(1 << bit), user: cpl == 3)
        case 3: try writeLinear(la, s, v ^ (1 << bit), user: cpl == 3)
        default: break
        }
        setEager(f)
    }

    func group6() throws(X86Fault) {
        if !protectedMode || rflagsRest & Flag.vm != 0 { throw udFault() }
        let k = d.reg & 7
        switch k {
        case 0: try writeRMSel(UInt64(ldtr.selector))
        case 1: try writeRMSel(UInt64(tr.selector))
        case 2, 3:
            if cpl != 0 { throw gpFault() }
            let sel = UInt16(truncatingIfNeeded: try readRM(2))
            if k == 2 {
                if sel & 0xFFFC == 0 { ldtr = X86Segment(); ldtr.selector = sel; ldtr.unusable = true; return }
                if sel & 4 != 0 { throw gpFault(UInt32(sel & 0xFFFC)) }
                let lo = try readDescriptor(sel)
                var s = segmentFromDescriptor(sel, lo)
                if s.s || s.type != 2 { throw gpFault(UInt32(sel & 0xFFFC)) }
                if efer & X86Bits.eferLMA != 0 { s.base |= (try readSys(gdtr.base &+ UInt64(sel & 0xFFF8) &+ 8, 4)) << 32 }
                ldtr = s
            } else {
                if sel & 0xFFFC == 0 || sel & 4 != 0 { throw gpFault(UInt32(sel & 0xFFFC)) }
                let lo = try readDescriptor(sel)
                var s = segmentFromDescriptor(sel, lo)
                if s.s || (s.type != 9 && s.type != 1 && s.type != 0xB) { throw gpFault(UInt32(sel & 0xFFFC)) }
                if efer & X86Bits.eferLMA != 0 { s.base |= (try readSys(gdtr.base &+ UInt64(sel & 0xFFF8) &+ 8, 4)) << 32 }
                s.type |= 2 // busy
                try writeSys(gdtr.base &+ UInt64(sel & 0xFFF8), 8, lo | (UInt64(2) << 40))
                tr = s
            }
        case 4, 5:
            let sel = UInt16(truncatingIfNeeded: try readRM(2))
            var ok = false
            if sel & 0xFFFC != 0, let lo = try? readDescriptor(sel) {
                let sd = segmentFromDescriptor(sel, lo)
                if sd.s && Int(sd.dpl) >= max(cpl, Int(sel & 3)) {
                    ok = k == 4 ? (sd.type & 8 == 0 || sd.type & 2 != 0) : (sd.type & 8 == 0 && sd.type & 2 != 0)
                }
            }
            let f = arithFlags() & ~Flag.zf
            setEager(ok ? f | Flag.zf : f)
        default: throw udFault()
        }
    }

    func writeRMSel(_ v: UInt64) throws(X86Fault) {
        if d.mod == 3 { setReg(d.rm, d.opSize, v) } else { try writeRM(2, v) }
    }

    func group7() throws(X86Fault) {
        let k = d.reg & 7
        if d.mod == 3 {
            switch d.modrm {
            case 0xF8: // swapgs
                if !mode64 { throw udFault() }
                if cpl != 0 { throw gpFault() }
                let t = seg[SReg.gs].base; seg[SReg.gs].base = kernelGSBase; kernelGSBase = t
                return
            case 0xF9: // rdtscp
                let t = readTSC()
                r[0] = t & 0xFFFF_FFFF; r[2] = t >> 32; r[1] = tscAux & 0xFFFF_FFFF
                return
            case 0xCA, 0xCB: throw udFault() // clac/stac: no SMAP
            case 0xD0: throw udFault() // xgetbv: no XSAVE
            case 0xC8, 0xC9: throw udFault() // monitor/mwait not advertised
            default: break
            }
            switch k {
            case 4: setReg(d.rm, d.opSize, cr0 & 0xFFFF); return
            case 6:
                if cpl != 0 { throw gpFault() }
                try lmsw(reg(d.rm, 2)); return
            default: throw udFault()
            }
        }
        let ea = effectiveAddress()
        switch k {
        case 0, 1:
            let t = k == 0 ? gdtr : idtr
            try writeMem(d.seg, ea, 2, UInt64(t.limit))
            try writeMem(d.seg, (ea &+ 2) & sizeMask(d.addrSize), mode64 ? 8 : 4, mode64 ? t.base : t.base & 0xFFFF_FFFF)
        case 2, 3:
            if cpl != 0 { throw gpFault() }
            let limit = try readMem(d.seg, ea, 2)
            var base = try readMem(d.seg, (ea &+ 2) & sizeMask(d.addrSize), mode64 ? 8 : 4)
            if !mode64 && d.opSize == 2 { base &= 0xFF_FFFF }
            let t = X86DescriptorTable(base: base, limit: UInt16(limit))
            if k == 2 { gdtr = t } else { idtr = t }
        case 4: try writeRM(2, cr0 & 0xFFFF)
        case 6:
            if cpl != 0 { throw gpFault() }
            try lmsw(try readRM(2))
        case 7:
            if cpl != 0 { throw gpFault() }
            flushTLBPage(try linear(d.seg, ea))
        default: throw udFault()
        }
    }

    func lmsw(_ v: UInt64) throws(X86Fault) {
        // LMSW can set PE but not clear it; affects PE, MP, EM, TS.
        let nv = (cr0 & ~0xE) | (v & 0xF) | (cr0 & 1)
        try writeCR(0, nv)
    }

    func group9() throws(X86Fault) {
        let k = d.reg & 7
        if k == 1 && d.mod != 3 {
            let la = try linear(d.seg, effectiveAddress())
            if d.rexW {
                if !cpuLevelHas(.cx16) { throw udFault() }
                if la & 0xF != 0 { throw gpFault() }
                _ = try rmwPointer(la, 8); _ = try rmwPointer(la &+ 8, 8)
                let lo = try readLinear(la, 8, user: cpl == 3), hi = try readLinear(la &+ 8, 8, user: cpl == 3)
                var f = arithFlags() & ~Flag.zf
                if lo == r[0] && hi == r[2] {
                    try writeLinear(la, 8, r[3], user: cpl == 3); try writeLinear(la &+ 8, 8, r[1], user: cpl == 3)
                    f |= Flag.zf
                } else {
                    r[0] = lo; r[2] = hi
                }
                setEager(f)
            } else {
                _ = try rmwPointer(la, 8)
                let v = try readLinear(la, 8, user: cpl == 3)
                let cmp = (r[2] & 0xFFFF_FFFF) << 32 | (r[0] & 0xFFFF_FFFF)
                var f = arithFlags() & ~Flag.zf
                if v == cmp {
                    try writeLinear(la, 8, (r[1] & 0xFFFF_FFFF) << 32 | (r[3] & 0xFFFF_FFFF), user: cpl == 3)
                    f |= Flag.zf
                } else {
                    r[0] = v & 0xFFFF_FFFF; r[2] = v >> 32
                }
                setEager(f)
            }
            return
        }
        throw udFault()
    }

    func group15() throws(X86Fault) {
        let k = d.reg & 7
        if d.mod == 3 {
            // lfence (5), mfence (6), sfence (7)
            if k >= 5 { return }
            throw udFault()
        }
        let ea = effectiveAddress()
        switch k {
        case 0: try fxsave(ea)
        case 1: try fxrstor(ea)
        case 2:
            if cr4 & X86Bits.cr4OSFXSR == 0 { throw udFault() }
            let v = UInt32(try readMem(d.seg, ea, 4))
            if v & 0xFFFF_0000 != 0 { throw gpFault() }
            mxcsr = v
        case 3:
            if cr4 & X86Bits.cr4OSFXSR == 0 { throw udFault() }
            try writeMem(d.seg, ea, 4, UInt64(mxcsr))
        case 7: // clflush
            _ = try readMem(d.seg, ea, 1)
        default: throw udFault()
        }
    }

    // MARK: TSC, CPUID, MSRs

    func readTSC() -> UInt64 {
        UInt64(bitPattern: Int64(bitPattern: HostClock.nanoseconds()) &+ tscOffset)
    }

    func cpuid() {
        let leaf = UInt32(truncatingIfNeeded: r[0]), sub = UInt32(truncatingIfNeeded: r[1])
        let (a, b, c, dd) = CPUIDTable.query(leaf: leaf, subleaf: sub, apicID: apic.id, cr4: cr4, level: cpuLevel)
        r[0] = UInt64(a); r[3] = UInt64(b); r[1] = UInt64(c); r[2] = UInt64(dd)
    }

    func readMSR(_ msr: UInt32) throws(X86Fault) -> UInt64 {
        switch msr {
        case 0x10: return readTSC()
        case 0x1B: return apic.baseMSR
        case 0x3A, 0x8B, 0x8C...0x8F, 0xFE, 0x179, 0x17A, 0x2FF, 0x34, 0xCE, 0x140, 0x4E0...0x4FF: return msr == 0x2FF ? mtrrDefType : 0
        case 0x174: return sysenterCS
        case 0x175: return sysenterESP
        case 0x176: return sysenterEIP
        case 0x1A0: return miscEnable
        case 0x277: return pat
        case 0x200...0x21F, 0x250, 0x258, 0x259, 0x268...0x26F: return 0
        case 0x400...0x47F: return 0
        case 0x6E0: return apic.tscDeadline
        case 0x800...0x8FF:
            throw gpFault()
        case 0xC000_0080: return efer
        case 0xC000_0081: return star
        case 0xC000_0082: return lstar
        case 0xC000_0083: return cstar
        case 0xC000_0084: return sfmask
        case 0xC000_0100: return seg[SReg.fs].base
        case 0xC000_0101: return seg[SReg.gs].base
        case 0xC000_0102: return kernelGSBase
        case 0xC000_0103: return tscAux
        default: throw gpFault()
        }
    }

    func writeMSR(_ msr: UInt32, _ v: UInt64) throws(X86Fault) {
        func canonical(_ x: UInt64) throws(X86Fault) {
            if UInt64(bitPattern: Int64(bitPattern: x << 16) >> 16) != x { throw gpFault() }
        }
        switch msr {
        case 0x10: tscOffset = Int64(bitPattern: v) &- Int64(bitPattern: HostClock.nanoseconds())
        case 0x1B: apic.setBaseMSR(v, cpu: self); flushTLB()
        case 0x3A, 0x8B, 0x179, 0x17A, 0x2FF, 0x200...0x21F, 0x250, 0x258, 0x259, 0x268...0x26F, 0x400...0x47F, 0x4E0...0x4FF, 0x140:
            if msr == 0x2FF { mtrrDefType = v }
        case 0x174: sysenterCS = v & 0xFFFF
        case 0x175: try canonical(v); sysenterESP = v
        case 0x176: try canonical(v); sysenterEIP = v
        case 0x1A0: miscEnable = v
        case 0x277: pat = v
        case 0x6E0: apic.setTSCDeadline(v, cpu: self)
        case 0xC000_0080:
            if v & ~(X86Bits.eferSCE | X86Bits.eferLME | X86Bits.eferLMA | X86Bits.eferNXE) != 0 { throw gpFault() }
            var nv = (v & ~X86Bits.eferLMA) | (efer & X86Bits.eferLMA)
            if cr0 & X86Bits.cr0PG != 0 && (nv ^ efer) & X86Bits.eferLME != 0 { throw gpFault() }
            if nv & X86Bits.eferLME == 0 { nv &= ~X86Bits.eferLMA }
            efer = nv
            flushTLB()
            updateMode()
        case 0xC000_0081: star = v
        case 0xC000_0082: try canonical(v); lstar = v
        case 0xC000_0083: try canonical(v); cstar = v
        case 0xC000_0084: sfmask = v & 0xFFFF_FFFF
        case 0xC000_0100: try canonical(v); seg[SReg.fs].base = v
        case 0xC000_0101: try canonical(v); seg[SReg.gs].base = v
        case 0xC000_0102: try canonical(v); kernelGSBase = v
        case 0xC000_0103: tscAux = v & 0xFFFF_FFFF
        default: throw gpFault()
        }
    }
}

/// The CPU model the guest sees: a small, honest feature set.
public enum CPUIDTable {
    /// Guest TSC frequency: the TSC counts host nanoseconds (1 GHz), announced through
    /// leaf 0x15 so Linux needs no PIT calibration.
    public static let tscHz: UInt64 = 1_000_000_000

    static func str(_ s: String) -> (UInt32, UInt32, UInt32) {
        let b = Array(s.utf8)
        func w(_ i: Int) -> UInt32 { UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24 }
        return (w(0), w(4), w(8))
    }

    public static func query(leaf: UInt32, subleaf: UInt32, apicID: UInt32, cr4: UInt64, level: X86CPULevel = .default) -> (UInt32, UInt32, UInt32, UInt32) {
        switch leaf {
        case 0:
            let v = str("GenuineIntel")
            return (0x16, v.0, v.2, v.1)
        case 1:
            // Family 6, model 0x3A (Ivy Bridge-like), stepping 9.
            let eax: UInt32 = 0x0003_06A9
            let ebx: UInt32 = (apicID << 24) | (1 << 16) | (8 << 8)
            // ECX: the level's features (CPUIDLevel.swift), TSC-deadline(24), hypervisor(31).
            let ecx: UInt32 = level.leaf1ECX | (1 << 24) | (1 << 31)
            // EDX: FPU PSE TSC MSR PAE CX8 APIC SEP PGE CMOV PAT CLFSH MMX FXSR SSE SSE2
            let edx: UInt32 = (1 << 0) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 9)
                | (1 << 11) | (1 << 13) | (1 << 15) | (1 << 16) | (1 << 19) | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 26)
            return (eax, ebx, ecx, edx)
        case 0x15:
            // TSC = crystal (25 MHz) * 40 / 1.
            return (1, UInt32(tscHz / 25_000_000), 25_000_000, 0)
        case 0x16:
            let mhz = UInt32(tscHz / 1_000_000)
            return (mhz, mhz, 100, 0)
        case 0x8000_0000:
            return (0x8000_0008, 0, 0, 0)
        case 0x8000_0001:
            // ECX: LAHF/SAHF in 64-bit mode. EDX: SYSCALL, NX, LM.
            return (0, 0, 1, (1 << 11) | (1 << 20) | (1 << 29))
        case 0x8000_0002, 0x8000_0003, 0x8000_0004:
            let name = Array("swiftvmm software x86-64 CPU".utf8) + [UInt8](repeating: 0, count: 48)
            let base = Int(leaf - 0x8000_0002) * 16
            func w(_ i: Int) -> UInt32 { UInt32(name[i]) | UInt32(name[i + 1]) << 8 | UInt32(name[i + 2]) << 16 | UInt32(name[i + 3]) << 24 }
            return (w(base), w(base + 4), w(base + 8), w(base + 12))
        case 0x8000_0008:
            return (0x3028, 0, 0, 0)  // 40-bit physical, 48-bit virtual
        default:
            return (0, 0, 0, 0)
        }
    }
}

// MARK: - Run

/// What stopped a slice of execution inside the CPU.
public enum X86StopReason: Equatable {
    /// A port or MMIO access for the VMM (see `X86CPU.takeExit`).
    case exit
    /// HLT with no interrupt able to wake the CPU before `wakeDeadline`.
    case halted
    /// Triple fault: see `shutdownReason`.
    case shutdown
    /// The instruction budget ran out.
    case budget
    /// Something asked the loop to stop (`attention`).
    case attention
}

extension X86CPU {
    /// Executes one instruction (or delivers one interrupt/exception).
    @inline(__always)
    func step() {
        let exitsBefore = pendingExits.count
        do {
            let len = try decodeCached()
            nextRIP = (rip &+ UInt64(len)) & ipMask
            try execute()
            rip = nextRIP
            instructions &+= 1
        } catch {
            handle(error, exitsBefore: exitsBefore)
        }
    }

    @inline(never)
    func handle(_ error: X86Fault, exitsBefore: Int) {
        switch error {
        case .needsExit:
            // Keep only the read that needs the VMM (the last entry); writes queued by
            // this instruction are redone when it runs again.
            if let last = pendingExits.last {
                pendingExits.removeSubrange(exitsBefore..<pendingExits.count)
                pendingExits.append(last)
            }
        case let .exception(vector, code):
            if pendingExits.count > exitsBefore { pendingExits.removeSubrange(exitsBefore..<pendingExits.count) }
            if EmulatorTrace.settings.exceptions { traceException(vector, code) }
            raiseException(vector, code)
        case .shutdown:
            break
        }
    }

    /// Delivers an exception for the instruction at RIP, escalating to #DF and triple fault.
    func raiseException(_ vector: UInt8, _ code: UInt32?) {
        interruptShadow = false
        do {
            try deliverInterrupt(vector, errorCode: code, software: false, returnIP: rip)
        } catch {
            guard case let .exception(v2, _) = error else { return }
            if vector == Vec.df {
                tripleFault("exception \(v2) while delivering a double fault")
                return
            }
            do {
                try deliverInterrupt(Vec.df, errorCode: 0, software: false, returnIP: rip)
            } catch {
                tripleFault("exception \(v2) while delivering exception \(vector), then a fault delivering #DF")
            }
        }
    }

    func tripleFault(_ why: String) {
        shutdownReason = "triple fault at RIP 0x\(String(rip, radix: 16)) (CS 0x\(String(seg[SReg.cs].selector, radix: 16))): \(why)"
    }

    /// Checks for a deliverable external interrupt and delivers it. Returns true if one was
    /// delivered (which also wakes the CPU from HLT).
    @inline(__always)
    func pollInterrupts() -> Bool {
        if apic.inboxFlag.load(ordering: .acquiring) { mergeInbox() }
        if nmiPending {
            nmiPending = false
            halted = false
            raiseInterrupt(Vec.nmi)
            return true
        }
        if !interruptsEnabled || interruptShadow { return false }
        if let v = apic.deliverableVector() {
            apic.acknowledge(v)
            halted = false
            raiseInterrupt(v)
            return true
        }
        // LINT0 first: once the guest masks it (IOAPIC mode) ExtINT stays pending without
        // touching the PIC object (no reference counting on the per-instruction path).
        if extINTPending, lint0AcceptsPIC {
            if let pic = extInt, pic.hasPendingInterrupt() {
                let v = pic.acknowledgeInterrupt()
                halted = false
                raiseInterrupt(v)
                return true
            }
            extINTPending = false
        }
        return false
    }

    /// `extINTPending && lint0AcceptsPIC` from stored fields only (the per-instruction check).
    @inline(__always) var picMayInterrupt: Bool {
        extINTPending && (apic.baseMSR & (1 << 11) == 0 || apic.lvtLint0 & 0x1_0700 == 0x700)
    }

    var lint0AcceptsPIC: Bool {
        if !apic.enabled { return true }
        return apic.lvtLint0 & 0x10000 == 0 && (apic.lvtLint0 >> 8) & 7 == 7
    }

    func mergeInbox() {
        let box = apic.drainInbox()
        for w in 0..<8 where box.irr[w] != 0 {
            apic.irr[w] |= box.irr[w]
            apic.irrAny = true
            apic.tmr[w] = (apic.tmr[w] & ~box.irr[w]) | (box.levelTriggered[w] & box.irr[w])
        }
        if box.nmi { nmiPending = true }
        if box.extINT { extINTPending = true }
        if box.initRequest { initPending = true }
        if let s = box.sipiVector { sipiPending = s }
    }

    func raiseInterrupt(_ vector: UInt8) {
        do {
            try deliverInterrupt(vector, errorCode: nil, software: false, returnIP: rip)
        } catch {
            if case let .exception(v, c) = error { raiseException(v, c) }
        }
    }

    /// Runs until an exit, HLT, shutdown, attention or `budget` instructions.
    public func run(budget: Int) -> X86StopReason {
        var left = budget
        var timerCountdown = 0
        while left > 0 {
            if timerCountdown <= 0 {
                timerCountdown = 2048
                if apic.timerDeadline != 0 { apic.checkTimer(now: HostClock.nanoseconds()) }
                if kickRequested.load(ordering: .relaxed) { return .attention }
                if yieldRequested { yieldRequested = false; return .attention }
                if let p = ripProfile, instructions &- profiledAt >= 2048 { profiledAt = instructions; p.sample(rip, cpl: cpl) }
            }
            timerCountdown &-= 1
            // Poll only when something could be delivered: an IRR bit or a PIC that may
            // have a vector (with IF=1), an NMI, or mail from other threads.
            if (interruptsEnabled && (apic.irrAny || picMayInterrupt)) || nmiPending || apic.inboxFlag.load(ordering: .relaxed) {
                _ = pollInterrupts()
            }
            if shutdownReason != nil { return .shutdown }
            if halted { return .halted }
            interruptShadow = false
            step()
            if !pendingExits.isEmpty { return .exit }
            left &-= 1
        }
        return .budget
    }
}
