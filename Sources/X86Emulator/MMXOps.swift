import Hypervisor

/// The MMX instructions (0F 60-7F and 0F D0-FF without a 66/F2/F3 prefix), the SSE and SSE2
/// integer instructions on MMX registers (PSHUFW, PINSRW, PEXTRW, PMOVMSKB, PAVG, PMINMAX,
/// PSADBW, PMULHUW, MOVNTQ, MASKMOVQ, PADDQ/PSUBQ, PMULUDQ) and MOVQ2DQ/MOVDQ2Q.
///
/// The lane arithmetic is the 128-bit SSE integer code run on the 64-bit value in the low
/// lane (the high lane zero and discarded); only the packs and the high unpacks, whose lanes
/// cross the 64-bit boundary, rearrange their inputs first.
extension X86CPU {
    /// The opcodes (second byte after 0F) that, without a mandatory prefix, are MMX forms.
    static func isMMXOpcode(_ b: Int) -> Bool {
        switch b {
        case 0x60...0x6B, 0x6E, 0x6F, 0x70...0x76, 0x7E, 0x7F, 0xC4, 0xC5, 0xD1...0xD5, 0xD7...0xE5, 0xE7...0xEF,
             0xF1...0xFE:
            return true
        default:
            return false
        }
    }

    @inline(__always) func mmRead(_ i: Int) -> UInt64 { fpu.mant[i & 7] }

    /// A write to an MMX register: the significand, and the sign/exponent all ones.
    @inline(__always) func mmWrite(_ i: Int, _ v: UInt64) {
        fpu.mant[i & 7] = v
        fpu.sexp[i & 7] = 0xFFFF
    }

    /// The 64-bit source operand: an MMX register or memory.
    func mmSource() throws(X86Fault) -> UInt64 {
        if d.mod == 3 { return mmRead(d.rm) }
        return try readMem(d.seg, effectiveAddress(), 8)
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    func mmx(_ b: Int) throws(X86Fault) {
        let g = d.reg & 7
        // Encoding faults, then CR0.EM/TS and a pending x87 error, then the operands.
        switch b {
        case 0xE7: if d.mod == 3 { throw udFault() }
        case 0x71, 0x72: if d.mod != 3 || (d.reg & 7) & 1 != 0 || d.reg & 7 == 0 { throw udFault() }
        case 0x73: if d.mod != 3 || (d.reg & 7 != 2 && d.reg & 7 != 6) { throw udFault() }
        case 0xC5, 0xD7, 0xF7: if d.mod != 3 { throw udFault() }
        default: break
        }
        try mmxEnter()
        switch b {
        case 0x6E:
            let v = try readRM(d.rexW ? 8 : 4)
            mmWrite(g, v)
        case 0x7E:
            let v = mmRead(g)
            try writeRM(d.rexW ? 8 : 4, d.rexW ? v : v & 0xFFFF_FFFF)
        case 0x6F:
            let v = try mmSource()
            mmWrite(g, v)
        case 0x7F, 0xE7:
            if d.mod == 3 { mmWrite(d.rm, mmRead(g)) } else { try writeMem(d.seg, effectiveAddress(), 8, mmRead(g)) }
        case 0x70:
            let s = try mmSource()
            var o: UInt64 = 0
            for k in 0..<4 { o |= (s >> UInt64(16 * ((Int(d.imm) >> (2 * k)) & 3)) & 0xFFFF) << UInt64(16 * k) }
            mmWrite(g, o)
        case 0x71, 0x72, 0x73:
            let v = V2(mmRead(d.rm), 0), n = d.imm
            let r: V2
            switch (b, d.reg & 7) {
            case (0x71, 2): r = shiftW(v, n, 0)
            case (0x71, 4): r = shiftW(v, n, 2)
            case (0x71, 6): r = shiftW(v, n, 1)
            case (0x72, 2): r = shiftD(v, n, 0)
            case (0x72, 4): r = shiftD(v, n, 2)
            case (0x72, 6): r = shiftD(v, n, 1)
            case (0x73, 2): r = shiftQ(v, n, 0)
            case (0x73, 6): r = shiftQ(v, n, 1)
            default: throw udFault()
            }
            mmWrite(d.rm, r[0])
        case 0xC4:
            let w = try readRM(2) & 0xFFFF
            let sh = UInt64(16 * (d.imm & 3))
            mmWrite(g, mmRead(g) & ~(0xFFFF << sh) | w << sh)
        case 0xC5:
            setReg(d.reg, 4, (mmRead(d.rm) >> UInt64(16 * (d.imm & 3))) & 0xFFFF)
        case 0xD7:
            let v = mmRead(d.rm)
            var m: UInt64 = 0
            for i in 0..<8 where v >> UInt64(8 * i + 7) & 1 != 0 { m |= 1 << UInt64(i) }
            setReg(d.reg, 4, m)
        case 0xF7:
            let v = mmRead(g), mask = mmRead(d.rm)
            let base = reg(7, d.addrSize)
            for i in 0..<8 where mask >> UInt64(8 * i + 7) & 1 != 0 {
                try writeMem(d.seg, (base &+ UInt64(i)) & sizeMask(d.addrSize), 1, (v >> UInt64(8 * i)) & 0xFF)
            }
        default:
            let s = try mmSource()
            let a = mmRead(g)
            let r: UInt64
            switch b {
            case 0xDB: r = a & s
            case 0xDF: r = ~a & s
            case 0xEB: r = a | s
            case 0xEF: r = a ^ s
            // Packs: the four (two) source elements of each operand land in one 64-bit half.
            case 0x63, 0x67, 0x6B: r = try sseInteger(b, V2(a, s), V2(0, 0))[0]
            // High unpacks interleave the upper halves: the low unpack of the shifted values.
            case 0x68, 0x69, 0x6A: r = try sseInteger(b - 8, V2(a >> 32, 0), V2(s >> 32, 0))[0]
            default: r = try sseInteger(b, V2(a, 0), V2(s, 0))[0]
            }
            mmWrite(g, r)
        }
    }

    /// F3 0F D6 MOVQ2DQ xmm, mm and F2 0F D6 MOVDQ2Q mm, xmm (register forms only).
    func movqBetweenMMXAndXMM(toXMM: Bool) throws(X86Fault) {
        if d.mod != 3 { throw udFault() }
        try sseCheck()
        try mmxEnter()
        if toXMM { xw(d.reg, V2(mmRead(d.rm), 0)) } else { mmWrite(d.reg, xmm[d.rm * 2]) }
    }
}
