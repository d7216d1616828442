import Hypervisor

/// The x87 register file as the architecture defines it: eight physical 80-bit registers
/// (significand + sign/exponent), the control, status and tag words, and the last
/// instruction/data pointers and opcode. MMX registers alias the significands.
struct X87State {
    var fcw: UInt16 = 0x037F
    var fsw: UInt16 = 0
    /// Abridged tag word (the FXSAVE format), physical register order: 1 = not empty.
    var ftw: UInt8 = 0
    var mant = SIMD8<UInt64>()
    var sexp = SIMD8<UInt16>()
    var fop: UInt16 = 0
    var fip: UInt64 = 0, fdp: UInt64 = 0
    var fcs: UInt16 = 0, fds: UInt16 = 0

    var top: Int { Int((fsw >> 11) & 7) }

    /// A control word as loaded: reserved bits 7 and 13-15 clear, bit 6 set.
    static func loadedFCW(_ v: UInt64) -> UInt16 { UInt16(truncatingIfNeeded: v) & 0x1F3F | 0x40 }

    /// FNINIT: control, status, tags and pointers reset; register contents kept.
    mutating func initialize() {
        fcw = 0x037F; fsw = 0; ftw = 0; fop = 0; fip = 0; fdp = 0; fcs = 0; fds = 0
    }

    /// ES and B follow the exception flags and masks (as after FLDCW/FLDENV/FRSTOR).
    mutating func updateSummary() {
        if fsw & 0x3F & ~fcw != 0 { fsw |= 0x8080 } else { fsw &= ~0x8080 }
    }

    /// The full 2-bit tag of physical register `i` (FSAVE/FSTENV format).
    func fullTag(_ i: Int) -> UInt16 {
        if ftw & (1 << i) == 0 { return 3 }
        let e = sexp[i] & 0x7FFF, m = mant[i]
        if e == 0x7FFF { return 2 }
        if e == 0 { return m == 0 ? 1 : 2 }
        return m >> 63 == 0 ? 2 : 0
    }

    var fullTagWord: UInt16 {
        var t: UInt16 = 0
        for i in 0..<8 { t |= fullTag(i) << UInt16(i * 2) }
        return t
    }

    mutating func setTags(fromFull tw: UInt16) {
        var a: UInt8 = 0
        for i in 0..<8 where (tw >> UInt16(i * 2)) & 3 != 3 { a |= UInt8(1 << i) }
        ftw = a
    }
}

/// The x87 unit. Arithmetic, comparisons, loads, stores, conversions, BCD and the
/// transcendental instructions run on the host's x87 (see `HostFloat`), so results, C0-C3,
/// stack faults and exception flags are the hardware's in every rounding and precision
/// mode; control instructions (FNINIT, FNCLEX, FNSTSW, FLDCW/FNSTCW, FLDENV/FNSTENV,
/// FRSTOR/FNSAVE in their 16- and 32-bit formats) are done here. Unmasked exceptions set
/// ES/B and raise #MF (CR0.NE=1) at the next waiting x87 instruction, FWAIT or MMX
/// instruction; with CR0.NE=0 the error is left pending (no FERR#/IRQ 13 wiring).
extension X86CPU {
    /// #MF for a pending unmasked x87 exception, before a waiting instruction.
    func x87Pending() throws(X86Fault) {
        if fpu.fsw & 0x80 != 0 && cr0 & X86Bits.cr0NE != 0 { throw fault(Vec.mf) }
    }

    /// FWAIT/WAIT.
    func fwait() throws(X86Fault) {
        if cr0 & (X86Bits.cr0MP | X86Bits.cr0TS) == (X86Bits.cr0MP | X86Bits.cr0TS) { throw fault(Vec.nm) }
        try x87Pending()
    }

    /// Register forms the x87 defines (documented and the aliases hardware executes).
    static func x87RegisterFormValid(_ op: Int, _ m: Int) -> Bool {
        switch op {
        case 0xD8, 0xDC: return true
        case 0xD9:
            switch m {
            case 0xC0...0xD0, 0xD8...0xE1, 0xE4, 0xE5, 0xE8...0xEE, 0xF0...0xFF: return true
            default: return false
            }
        case 0xDA: return m < 0xE0 || m == 0xE9
        case 0xDB: return m < 0xE0 || (m >= 0xE8 && m < 0xF8)
        case 0xDD: return m < 0xF0
        case 0xDE: return m != 0xD8 && (m < 0xDA || m >= 0xE0)
        case 0xDF: return m < 0xE0 || (m >= 0xE8 && m < 0xF8)
        default: return false
        }
    }

    func x87(_ op: Int) throws(X86Fault) {
        if cr0 & (X86Bits.cr0EM | X86Bits.cr0TS) != 0 { throw fault(Vec.nm) }
        let k = d.reg & 7
        if d.mod == 3 {
            let m = Int(d.modrm)
            if op == 0xDB && m >= 0xE0 && m <= 0xE4 {
                switch m {
                case 0xE2: fpu.fsw &= 0x7F00                 // fnclex
                case 0xE3: fpu.initialize()                  // fninit
                default: break                               // fneni/fndisi/fnsetpm: no-ops
                }
                return
            }
            if op == 0xDF && m == 0xE0 { setReg(0, 2, UInt64(fpu.fsw)); return }  // fnstsw ax
            guard X86CPU.x87RegisterFormValid(op, m) else { throw udFault() }
            try x87Pending()
            try x87Host(op, memSize: 0, store: false, ea: 0)
            return
        }
        let ea = effectiveAddress()
        switch (op, k) {
        case (0xD9, 4): try x87Pending(); try fldenv(ea)
        case (0xD9, 5):
            try x87Pending()
            fpu.fcw = X87State.loadedFCW(try readMem(d.seg, ea, 2)); fpu.updateSummary()
        case (0xD9, 6): try fnstenv(ea); fpu.fcw |= 0x3F; fpu.updateSummary()
        case (0xD9, 7): try writeMem(d.seg, ea, 2, UInt64(fpu.fcw))
        case (0xDD, 4): try x87Pending(); try frstor(ea)
        case (0xDD, 6): try fnsave(ea)
        case (0xDD, 7): try writeMem(d.seg, ea, 2, UInt64(fpu.fsw))
        case (0xD9, 1), (0xDB, 4), (0xDB, 6), (0xDD, 5): throw udFault()
        case (0xDB, 1), (0xDD, 1), (0xDF, 1):
            if !cpuLevelHas(.sse3) { throw udFault() }       // fisttp
            try x87Pending()
            try x87Host(op, memSize: op == 0xDB ? 4 : (op == 0xDD ? 8 : 2), store: true, ea: ea)
        default:
            try x87Pending()
            let size: Int, store: Bool
            switch op {
            case 0xD8, 0xDA: size = 4; store = false
            case 0xDC: size = 8; store = false
            case 0xDE: size = 2; store = false
            case 0xD9: size = 4; store = k != 0
            case 0xDB: size = k >= 4 ? 10 : 4; store = k != 0 && k != 5
            case 0xDD: size = 8; store = k != 0
            default: // 0xDF
                switch k {
                case 4, 6: size = 10
                case 5, 7: size = 8
                default: size = 2
                }
                store = k != 0 && k != 4 && k != 5
            }
            try x87Host(op, memSize: size, store: store, ea: ea)
        }
    }

    /// Runs the instruction in flight on the host x87 with the guest's state.
    func x87Host(_ op: Int, memSize: Int, store: Bool, ea: UInt64) throws(X86Fault) {
        var la: UInt64 = 0
        var memLo: UInt64 = 0, memHi: UInt64 = 0
        if memSize > 0 {
            la = try linear(d.seg, ea)
            if store {
                _ = try rmwPointer(la, min(memSize, 8))
                if memSize > 8 { _ = try rmwPointer((la &+ 8) & linearMask, 2) }
            } else {
                memLo = try readLinear(la, min(memSize, 8), user: cpl == 3)
                if memSize > 8 { memHi = try readLinear((la &+ 8) & linearMask, 2, user: cpl == 3) }
            }
        }
        let oldFlags = fpu.fsw & 0x7F
        var flagsOut: UInt64 = 0
        var outLo: UInt64 = 0, outHi: UInt64 = 0
        var s = fpu
        withUnsafeTemporaryAllocation(byteCount: HostFloat.x87ContextSize, alignment: 16) { buf in
            // SAFETY: a 144-byte scratch block laid out as HostFloat's x87 context.
            let p = buf.baseAddress!
            p.initializeMemory(as: UInt8.self, repeating: 0, count: HostFloat.x87ContextSize)
            s.fsw &= 0x7F00                                   // run with clear exception flags
            writeFSAVEImage(s, p)
            p.storeBytes(of: memLo, toByteOffset: HostFloat.x87Mem, as: UInt64.self)
            p.storeBytes(of: memHi, toByteOffset: HostFloat.x87Mem + 8, as: UInt64.self)
            p.storeBytes(of: (arithFlags() & Flag.arith) | 2, toByteOffset: HostFloat.x87Flags, as: UInt64.self)
            HostFloat.shared.runX87(op, Int(d.modrm), p)
            readFSAVEImage(&s, p)
            outLo = p.load(fromByteOffset: HostFloat.x87Mem, as: UInt64.self)
            outHi = p.load(fromByteOffset: HostFloat.x87Mem + 8, as: UInt64.self)
            flagsOut = p.load(fromByteOffset: HostFloat.x87Flags, as: UInt64.self)
        }
        let newFlags = s.fsw & 0x7F
        if store {
            // An unmasked invalid, denormal, overflow or underflow leaves memory unchanged.
            if newFlags & 0x1F & ~s.fcw == 0 {
                try writeLinear(la, min(memSize, 8), outLo, user: cpl == 3)
                if memSize > 8 { try writeLinear((la &+ 8) & linearMask, 2, outHi, user: cpl == 3) }
            }
        }
        s.fsw = (s.fsw & 0x7F00) | oldFlags | newFlags
        s.updateSummary()
        // Last instruction and data pointers.
        s.fop = UInt16((op & 7) << 8 | Int(d.modrm))
        s.fip = rip; s.fcs = seg[SReg.cs].selector
        if memSize > 0 { s.fdp = ea; s.fds = seg[d.seg].selector }
        fpu = s
        let m = Int(d.modrm)
        if (op == 0xDB || op == 0xDF) && m >= 0xE8 && m < 0xF8 {
            setEager(flagsOut & Flag.arith)                   // fcomi/fucomi (and popping forms)
        }
    }

    /// The 108-byte 32-bit protected-mode FSAVE image the host's FRSTOR reads.
    func writeFSAVEImage(_ s: X87State, _ p: UnsafeMutableRawPointer) {
        // SAFETY: p has at least 108 bytes.
        p.storeBytes(of: UInt32(s.fcw) | 0xFFFF_0000, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: UInt32(s.fsw) | 0xFFFF_0000, toByteOffset: 4, as: UInt32.self)
        p.storeBytes(of: UInt32(s.fullTagWord) | 0xFFFF_0000, toByteOffset: 8, as: UInt32.self)
        for i in 0..<8 {
            let r = (s.top + i) & 7
            p.storeBytes(of: s.mant[r], toByteOffset: 28 + i * 10, as: UInt64.self)
            p.storeBytes(of: s.sexp[r], toByteOffset: 36 + i * 10, as: UInt16.self)
        }
    }

    /// Registers, tags, control and status words back from an FSAVE image.
    func readFSAVEImage(_ s: inout X87State, _ p: UnsafeMutableRawPointer) {
        s.fcw = p.load(fromByteOffset: 0, as: UInt16.self)
        s.fsw = p.load(fromByteOffset: 4, as: UInt16.self)
        s.setTags(fromFull: p.load(fromByteOffset: 8, as: UInt16.self))
        for i in 0..<8 {
            let r = (s.top + i) & 7
            s.mant[r] = p.loadUnaligned(fromByteOffset: 28 + i * 10, as: UInt64.self)
            s.sexp[r] = p.loadUnaligned(fromByteOffset: 36 + i * 10, as: UInt16.self)
        }
    }

    // MARK: environment and state images (guest formats)

    /// 16-bit formats when the operand size is 16, else the 32-bit ones; real-mode layouts
    /// outside protected mode (and in virtual-8086 mode).
    private var envFormat: (wide: Bool, real: Bool) {
        (d.opSize != 2, !protectedMode || rflagsRest & Flag.vm != 0)
    }

    func fnstenv(_ ea: UInt64) throws(X86Fault) {
        let (wide, real) = envFormat
        let step: UInt64 = wide ? 4 : 2
        let size = wide ? 4 : 2
        let fill: UInt64 = wide ? 0xFFFF_0000 : 0
        var words: [UInt64] = [UInt64(fpu.fcw) | fill, UInt64(fpu.fsw) | fill, UInt64(fpu.fullTagWord) | fill]
        let fop = UInt64(fpu.fop & 0x7FF)
        if real {
            let ip = fpu.fip &+ (UInt64(fpu.fcs) << 4), dp = fpu.fdp &+ (UInt64(fpu.fds) << 4)
            if wide {
                words += [(ip & 0xFFFF) | fill, ((ip >> 16) & 0xFFFF) << 12 | fop, (dp & 0xFFFF) | fill, ((dp >> 16) & 0xFFFF) << 12]
            } else {
                words += [ip & 0xFFFF, ((ip >> 16) & 0xF) << 12 | fop, dp & 0xFFFF, ((dp >> 16) & 0xF) << 12]
            }
        } else if wide {
            words += [fpu.fip & 0xFFFF_FFFF, UInt64(fpu.fcs) | fop << 16, fpu.fdp & 0xFFFF_FFFF, UInt64(fpu.fds) | fill]
        } else {
            words += [fpu.fip & 0xFFFF, UInt64(fpu.fcs), fpu.fdp & 0xFFFF, UInt64(fpu.fds)]
        }
        // Probe the whole area first so a fault leaves memory untouched.
        let la = try linear(d.seg, ea)
        _ = try rmwPointer(la, 1)
        _ = try rmwPointer((la &+ step * 7 - 1) & linearMask, 1)
        for (i, w) in words.enumerated() {
            try writeMem(d.seg, (ea &+ UInt64(i) * step) & sizeMask(d.addrSize), size, w & sizeMask(size))
        }
    }

    func fldenv(_ ea: UInt64) throws(X86Fault) {
        let (wide, real) = envFormat
        let step: UInt64 = wide ? 4 : 2
        let size = wide ? 4 : 2
        var w: [UInt64] = []
        for i in 0..<7 { w.append(try readMem(d.seg, (ea &+ UInt64(i) * step) & sizeMask(d.addrSize), size)) }
        var s = fpu
        s.fcw = X87State.loadedFCW(w[0]); s.fsw = UInt16(truncatingIfNeeded: w[1])
        s.setTags(fromFull: UInt16(truncatingIfNeeded: w[2]))
        if real {
            s.fcs = 0; s.fds = 0
            if wide {
                s.fip = (w[3] & 0xFFFF) | ((w[4] >> 12) & 0xFFFF) << 16; s.fop = UInt16(w[4] & 0x7FF)
                s.fdp = (w[5] & 0xFFFF) | ((w[6] >> 12) & 0xFFFF) << 16
            } else {
                s.fip = (w[3] & 0xFFFF) | ((w[4] >> 12) & 0xF) << 16; s.fop = UInt16(w[4] & 0x7FF)
                s.fdp = (w[5] & 0xFFFF) | ((w[6] >> 12) & 0xF) << 16
            }
        } else {
            s.fip = w[3]; s.fcs = UInt16(truncatingIfNeeded: w[4]); s.fdp = w[5]; s.fds = UInt16(truncatingIfNeeded: w[6])
            if wide { s.fop = UInt16((w[4] >> 16) & 0x7FF) }
        }
        s.updateSummary()
        fpu = s
    }

    func fnsave(_ ea: UInt64) throws(X86Fault) {
        let envBytes: UInt64 = envFormat.wide ? 28 : 14
        let la = try linear(d.seg, ea)
        _ = try rmwPointer((la &+ envBytes + 79) & linearMask, 1)
        try fnstenv(ea)
        for i in 0..<8 {
            let r = (fpu.top + i) & 7
            let a = (ea &+ envBytes &+ UInt64(i * 10)) & sizeMask(d.addrSize)
            try writeMem(d.seg, a, 8, fpu.mant[r])
            try writeMem(d.seg, (a &+ 8) & sizeMask(d.addrSize), 2, UInt64(fpu.sexp[r]))
        }
        fpu.initialize()
    }

    func frstor(_ ea: UInt64) throws(X86Fault) {
        let envBytes: UInt64 = envFormat.wide ? 28 : 14
        var m = SIMD8<UInt64>(), e = SIMD8<UInt16>()
        for i in 0..<8 {
            let a = (ea &+ envBytes &+ UInt64(i * 10)) & sizeMask(d.addrSize)
            m[i] = try readMem(d.seg, a, 8)
            e[i] = UInt16(try readMem(d.seg, (a &+ 8) & sizeMask(d.addrSize), 2))
        }
        try fldenv(ea)
        for i in 0..<8 {
            let r = (fpu.top + i) & 7
            fpu.mant[r] = m[i]; fpu.sexp[r] = e[i]
        }
    }
}
