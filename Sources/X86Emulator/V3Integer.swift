/// The x86-64-v3 general-purpose instructions, at level v3 only (#UD below it, as on a CPU
/// whose CPUID lacks them): MOVBE (0F 38 F0/F1), LZCNT (F3 0F BD), TZCNT (F3 0F BC),
/// BMI1 (ANDN, BEXTR, BLSI, BLSMSK, BLSR) and BMI2 (BZHI, MULX, PDEP, PEXT, RORX, SARX,
/// SHLX, SHRX), the last two groups VEX-encoded (`VEX.swift`). Flags the SDM leaves
/// undefined are cleared. None of them depends on CR0.EM/TS, CR4.OSFXSR/OSXSAVE or XCR0.
/// (XSAVE, also v3, is in `XSave.swift`.)
extension X86CPU {
    /// MOVBE r, m (F0) / MOVBE m, r (F1): a load or store with the bytes reversed; 16, 32
    /// or 64 bits. The register form and an F3 prefix raise #UD (F2 is CRC32).
    func movbe(_ op: Int) throws(X86Fault) {
        if !cpuLevelHas(.movbe) || d.mod == 3 || d.rep == 0xF3 { throw udFault() }
        let s = d.opSize
        func swap(_ v: UInt64) -> UInt64 {
            switch s {
            case 2: return UInt64(UInt16(truncatingIfNeeded: v).byteSwapped)
            case 4: return UInt64(UInt32(truncatingIfNeeded: v).byteSwapped)
            default: return v.byteSwapped
            }
        }
        if op == 0x2F0 {
            setReg(d.reg, s, swap(try readRM(s)))
        } else {
            try writeRM(s, swap(reg(d.reg, s)))
        }
    }

    /// LZCNT/TZCNT: the number of leading/trailing zero bits (the operand size when the
    /// source is 0). CF = source was 0, ZF = result is 0.
    func countZeros(trailing: Bool) throws(X86Fault) {
        let s = d.opSize
        let v = try readRM(s)
        let bits = s &* 8
        let n: Int
        if v == 0 {
            n = bits
        } else if trailing {
            n = v.trailingZeroBitCount
        } else {
            n = v.leadingZeroBitCount &- (64 &- bits)
        }
        setReg(d.reg, s, UInt64(n))
        setEager((v == 0 ? Flag.cf : 0) | (n == 0 ? Flag.zf : 0))
    }

    /// SF and ZF of a result, with CF as given (OF cleared, AF/PF undefined: cleared).
    private func setLogicFlags(_ res: UInt64, _ s: Int, cf: Bool) {
        var f: UInt64 = cf ? Flag.cf : 0
        if res & sizeMask(s) == 0 { f |= Flag.zf }
        if res & signBit(s) != 0 { f |= Flag.sf }
        setEager(f)
    }

    /// The VEX-encoded BMI1/BMI2 instructions; false when `op` is none of them. VEX.L = 1
    /// raises #UD. Operands: reg = ModRM.reg, rm = ModRM.rm or memory, v = VEX.vvvv.
    func bmiVEX(_ op: Int) throws(X86Fault) -> Bool {
        let pp = d.vexPP
        let ext: ISAExtension
        switch (op, pp) {
        case (0x5F2, 0), (0x5F3, 0), (0x5F7, 0): ext = .bmi1
        case (0x5F5, 0), (0x5F5, 2), (0x5F5, 3), (0x5F6, 3), (0x5F7, 1), (0x5F7, 2), (0x5F7, 3), (0x6F0, 3): ext = .bmi2
        default: return false
        }
        if !cpuLevelHas(ext) || d.vexL { throw udFault() }
        let s = d.opSize
        let bits = UInt64(s &* 8)
        let m = sizeMask(s)
        let v = d.vexV
        switch (op, pp) {
        case (0x5F2, _):   // ANDN reg, v, rm
            let res = ~reg(v, s) & (try readRM(s)) & m
            setReg(d.reg, s, res)
            setLogicFlags(res, s, cf: false)
        case (0x5F3, _):   // BLSR/BLSMSK/BLSI v, rm
            let kind = d.reg & 7
            if kind < 1 || kind > 3 { throw udFault() }
            let src = try readRM(s)
            let res: UInt64
            switch kind {
            case 1: res = src & (src &- 1) & m            // BLSR
            case 2: res = (src ^ (src &- 1)) & m          // BLSMSK
            default: res = (0 &- src) & src & m           // BLSI
            }
            setReg(v, s, res)
            setLogicFlags(res, s, cf: kind == 3 ? src != 0 : src == 0)
        case (0x5F7, 0):   // BEXTR reg, rm, v: start = v[7:0], length = v[15:8]
            let src = try readRM(s), ctl = reg(v, s)
            let start = ctl & 0xFF, len = (ctl >> 8) & 0xFF
            var res: UInt64 = start < bits ? src >> start : 0
            if len < 64 { res &= (UInt64(1) << len) &- 1 }
            res &= m
            setReg(d.reg, s, res)
            setEager(res == 0 ? Flag.zf : 0)
        case (0x5F5, 0):   // BZHI reg, rm, v: zero the bits from index v[7:0] up
            let src = try readRM(s), n = reg(v, s) & 0xFF
            let res = n < bits ? src & ((UInt64(1) << n) &- 1) : src & m
            setReg(d.reg, s, res)
            setLogicFlags(res, s, cf: n >= bits)
        case (0x5F5, 2):   // PEXT reg, v, rm (mask)
            let src = reg(v, s), mask = try readRM(s)
            var res: UInt64 = 0, k: UInt64 = 0, bitsLeft = mask
            while bitsLeft != 0 {
                let low = bitsLeft & (0 &- bitsLeft)
                if src & low != 0 { res |= UInt64(1) << k }
                k &+= 1; bitsLeft &= bitsLeft &- 1
            }
            setReg(d.reg, s, res)
        case (0x5F5, _):   // PDEP reg, v, rm (mask)
            let src = reg(v, s), mask = try readRM(s)
            var res: UInt64 = 0, k: UInt64 = 0, bitsLeft = mask
            while bitsLeft != 0 {
                let low = bitsLeft & (0 &- bitsLeft)
                if src & (UInt64(1) << k) != 0 { res |= low }
                k &+= 1; bitsLeft &= bitsLeft &- 1
            }
            setReg(d.reg, s, res)
        case (0x5F6, _):   // MULX reg (high), v (low), rm * EDX/RDX, unsigned, no flags
            let src = try readRM(s), a = reg(2, s)
            let hi: UInt64, lo: UInt64
            if s == 8 {
                (hi, lo) = a.multipliedFullWidth(by: src)
            } else {
                let p = a &* src
                hi = p >> 32; lo = p & 0xFFFF_FFFF
            }
            setReg(v, s, lo)
            setReg(d.reg, s, hi)   // the high half wins when both name one register
        case (0x5F7, _):   // SHLX (66) / SARX (F3) / SHRX (F2) reg, rm, v; no flags
            let src = try readRM(s), c = reg(v, s) & (bits &- 1)
            let res: UInt64
            switch pp {
            case 1: res = (src << c) & m
            case 2: res = UInt64(bitPattern: Int64(bitPattern: src << (64 &- bits)) >> Int64(c)) >> (64 &- bits)
            default: res = src >> c
            }
            setReg(d.reg, s, res)
        default:           // RORX reg, rm, imm8; no flags
            let src = try readRM(s), c = d.imm & (bits &- 1)
            let res = c == 0 ? src : ((src >> c) | (src << (bits &- c))) & m
            setReg(d.reg, s, res)
        }
        return true
    }
}
