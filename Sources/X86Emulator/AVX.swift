import Hypervisor

/// AVX/AVX2 in the VEX 0F map (0x4xx): moves, logic, the integer lane operations (the
/// SSE2 ones of `SSE.swift` applied to each 128-bit lane, from VEX.vvvv and r/m to
/// ModRM.reg), shuffles, shifts, VZEROUPPER/VZEROALL, VLDMXCSR/VSTMXCSR. The float
/// arithmetic, compares and conversions run on the host (`AVXFloat.swift`).
extension X86CPU {
    /// SSE2 integer opcodes whose VEX form is `reg = op(vvvv, r/m)` lane by lane (66 only).
    static func isVEXIntegerLaneOpcode(_ b: Int) -> Bool {
        switch b {
        case 0x60...0x6D, 0x74...0x76, 0xD1...0xD5, 0xD8...0xDF, 0xE0...0xE5, 0xE8...0xEF, 0xF1...0xF6, 0xF8...0xFE:
            return true
        default:
            return false
        }
    }

    /// Shifts whose count is the low quadword of a 128-bit source for both lanes.
    static func isVEXShiftByXMM(_ b: Int) -> Bool {
        switch b {
        case 0xD1, 0xD2, 0xD3, 0xE1, 0xE2, 0xF1, 0xF2, 0xF3: return true
        default: return false
        }
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    func vexMap1(_ b: Int) throws(X86Fault) {
        let g = d.reg, v = d.vexV, p = d.vexPP, wide = d.vexL
        let bytes = wide ? 32 : 16
        if try avxFloatMap1(b, p) { return }
        if p == 1 && X86CPU.isVEXIntegerLaneOpcode(b) {
            let a = yr(v)
            if X86CPU.isVEXShiftByXMM(b) {
                let s = try vsrc128()
                ywL(g, perLane(a, V4(lowHalf: s, highHalf: s)) { x, y, _ in (try? self.sseInteger(b, x, y)) ?? x })
            } else {
                let s = try vsrc()
                ywL(g, perLane(a, s) { x, y, _ in X86CPU.vexLogic(b, x, y) ?? ((try? self.sseInteger(b, x, y)) ?? x) })
            }
            return
        }
        switch b {
        case 0x10, 0x11:
            if p <= 1 {
                try vexNoV()
                if b == 0x10 { ywL(g, try vsrc()) } else { try vstore(yr(g), bytes, aligned: false) }
                return
            }
            // VMOVSS/VMOVSD: memory forms move the scalar (a load zeroes the rest); the
            // register forms merge it with bits 127:size of vvvv.
            let m = p == 2 ? UInt64(0xFFFF_FFFF) : UInt64.max, size = p == 2 ? 4 : 8
            if d.mod != 3 {
                try vexNoV()
                if b == 0x10 { yw128(g, V2(try vsrcLow(size), 0)) } else { try writeMem(d.seg, effectiveAddress(), size, xmm[g * 2] & m) }
                return
            }
            let (dst, src) = b == 0x10 ? (g, d.rm) : (d.rm, g)
            var x = xr(v); x[0] = (x[0] & ~m) | (xmm[src * 2] & m)
            yw128(dst, x)
        case 0x12, 0x13, 0x16, 0x17:
            try vexMoveHalves(b, p)
        case 0x14, 0x15:
            if p > 1 { throw udFault() }
            let lo = b == 0x14
            ywL(g, perLane(yr(v), try vsrc()) { x, y, _ in
                if p == 1 { return lo ? V2(x[0], y[0]) : V2(x[1], y[1]) }
                let a = asD(x), c = asD(y)
                return fromD(lo ? D4(a[0], c[0], a[1], c[1]) : D4(a[2], c[2], a[3], c[3]))
            })
        case 0x28, 0x29:
            if p > 1 { throw udFault() }
            try vexNoV()
            if b == 0x28 { ywL(g, try vsrc(aligned: true)) } else { try vstore(yr(g), bytes, aligned: true) }
        case 0x2B, 0xE7:
            if (b == 0x2B && p > 1) || (b == 0xE7 && p != 1) || d.mod == 3 { throw udFault() }
            try vexNoV()
            try vstore(yr(g), bytes, aligned: true)
        case 0x50:
            if p > 1 || d.mod != 3 { throw udFault() }
            try vexNoV()
            let y = yr(d.rm)
            var m: UInt64 = 0
            if p == 0 {
                for i in 0..<(wide ? 8 : 4) { m |= ((y[i / 2] >> UInt64(i % 2 == 0 ? 31 : 63)) & 1) << UInt64(i) }
            } else {
                for i in 0..<(wide ? 4 : 2) { m |= (y[i] >> 63) << UInt64(i) }
            }
            setReg(g, 4, m)
        case 0x54, 0x55, 0x56, 0x57:
            if p > 1 { throw udFault() }
            let op = [0xDB, 0xDF, 0xEB, 0xEF][b - 0x54]
            ywL(g, perLane(yr(v), try vsrc()) { x, y, _ in X86CPU.vexLogic(op, x, y)! })
        case 0x6E where p == 1, 0x7E where p == 1:
            if wide { throw udFault() }
            try vexNoV()
            let size = d.opSize == 8 ? 8 : 4
            if b == 0x6E { yw128(g, V2(try readRM(size), 0)) } else { try writeRM(size, xmm[g * 2] & sizeMask(size)) }
        case 0x7E, 0xD6:
            // VMOVQ xmm, xmm/m64 (F3 0F 7E) and VMOVQ xmm/m64, xmm (66 0F D6).
            if wide || (b == 0x7E && p != 2) || (b == 0xD6 && p != 1) { throw udFault() }
            try vexNoV()
            if b == 0x7E { yw128(g, V2(try vsrcLow(8), 0)) } else if d.mod == 3 { yw128(d.rm, V2(xmm[g * 2], 0)) } else {
                try writeMem(d.seg, effectiveAddress(), 8, xmm[g * 2])
            }
        case 0x6F, 0x7F:
            if p != 1 && p != 2 { throw udFault() }
            try vexNoV()
            if b == 0x6F { ywL(g, try vsrc(aligned: p == 1)) } else { try vstore(yr(g), bytes, aligned: p == 1) }
        case 0xF0:
            if p != 3 || d.mod == 3 { throw udFault() }
            try vexNoV()
            ywL(g, try vsrc())
        case 0x70:
            if p == 0 { throw udFault() }
            try vexNoV()
            let i = Int(d.imm & 0xFF)
            ywL(g, perLane(try vsrc(), V4(0, 0, 0, 0)) { s, _, _ in
                if p == 1 {
                    let x = asD(s)
                    return fromD(D4(x[i & 3], x[(i >> 2) & 3], x[(i >> 4) & 3], x[(i >> 6) & 3]))
                }
                let w = asW(s); var o = w
                let base = p == 3 ? 0 : 4
                for k in 0..<4 { o[base + k] = w[base + ((i >> (2 * k)) & 3)] }
                return fromW(o)
            })
        case 0x71, 0x72, 0x73:
            // Shift by imm8: the destination is VEX.vvvv, the source ModRM.rm.
            if p != 1 || d.mod != 3 { throw udFault() }
            let n = d.imm & 0xFF, k = d.reg & 7
            let kind: Int
            switch (b, k) {
            case (0x71, 2), (0x72, 2), (0x73, 2): kind = 0
            case (0x71, 4), (0x72, 4): kind = 2
            case (0x71, 6), (0x72, 6), (0x73, 6): kind = 1
            case (0x73, 3), (0x73, 7): kind = 3
            default: throw udFault()
            }
            ywL(v, perLane(try vsrc(), V4(0, 0, 0, 0)) { s, _, _ in
                switch (b, kind) {
                case (0x71, _): return self.shiftW(s, n, kind)
                case (0x72, _): return self.shiftD(s, n, kind)
                case (_, 3): return self.byteShift(s, Int(min(n, 16)), left: k == 7)
                default: return self.shiftQ(s, n, kind)
                }
            })
        case 0x77:
            if p != 0 { throw udFault() }
            try vexNoV()
            vzero(all: wide)
        case 0xAE:
            // VLDMXCSR (/2), VSTMXCSR (/3): memory only, VEX.128, no vvvv.
            if p != 0 || d.mod == 3 || wide || ((d.reg & 7) != 2 && (d.reg & 7) != 3) { throw udFault() }
            try vexNoV()
            if d.reg & 7 == 2 {
                let m = UInt32(try readMem(d.seg, effectiveAddress(), 4))
                if m & 0xFFFF_0000 != 0 { throw gpFault() }
                mxcsr = m
            } else {
                try writeMem(d.seg, effectiveAddress(), 4, UInt64(mxcsr))
            }
        case 0xC4:
            if p != 1 || wide { throw udFault() }
            var w = asW(xr(v)); w[Int(d.imm & 7)] = UInt16(truncatingIfNeeded: try d.mod == 3 ? r[d.rm] : readMem(d.seg, effectiveAddress(), 2))
            yw128(g, fromW(w))
        case 0xC5:
            if p != 1 || wide || d.mod != 3 { throw udFault() }
            try vexNoV()
            setReg(g, 4, UInt64(asW(xr(d.rm))[Int(d.imm & 7)]))
        case 0xC6:
            if p > 1 { throw udFault() }
            let i = Int(d.imm & 0xFF)
            ywL(g, perLane(yr(v), try vsrc()) { x, y, lane in
                if p == 1 { let j = i >> (lane * 2); return V2(x[j & 1], y[(j >> 1) & 1]) }
                let a = asD(x), c = asD(y)
                return fromD(D4(a[i & 3], a[(i >> 2) & 3], c[(i >> 4) & 3], c[(i >> 6) & 3]))
            })
        case 0xD7:
            if p != 1 || d.mod != 3 { throw udFault() }
            try vexNoV()
            let y = yr(d.rm)
            var m: UInt64 = 0
            for q in 0..<(wide ? 4 : 2) {
                for k in 0..<8 where (y[q] >> UInt64(k * 8 + 7)) & 1 != 0 { m |= 1 << UInt64(q * 8 + k) }
            }
            setReg(g, 4, m)
        case 0xF7:
            // VMASKMOVDQU: VEX.128, register mask, bytes to DS:rDI.
            if p != 1 || wide || d.mod != 3 { throw udFault() }
            try vexNoV()
            let x = asB(xr(g)), mask = asB(xr(d.rm)), base = reg(7, d.addrSize)
            for i in 0..<16 where mask[i] & 0x80 != 0 {
                try writeMem(d.seg, (base &+ UInt64(i)) & sizeMask(d.addrSize), 1, UInt64(x[i]))
            }
        default:
            throw udFault()
        }
    }

    /// PAND/PANDN/POR/PXOR (DB, DF, EB, EF; also the ANDPS.. forms); nil for other opcodes.
    static func vexLogic(_ b: Int, _ a: V2, _ s: V2) -> V2? {
        switch b {
        case 0xDB: return a & s
        case 0xDF: return ~a & s
        case 0xEB: return a | s
        case 0xEF: return a ^ s
        default: return nil
        }
    }

    /// VMOVLPS/LPD/HPS/HPD, VMOVHLPS/LHPS (VEX.128 only) and VMOVSLDUP/VMOVSHDUP/VMOVDDUP.
    func vexMoveHalves(_ b: Int, _ p: Int) throws(X86Fault) {
        let g = d.reg, v = d.vexV
        if p >= 2 {
            // F3 12 MOVSLDUP, F3 16 MOVSHDUP, F2 12 MOVDDUP.
            if b == 0x13 || b == 0x17 || (b == 0x16 && p == 3) { throw udFault() }
            try vexNoV()
            if p == 3 && !d.vexL {
                let q = try vsrcLow(8)
                yw128(g, V2(q, q)); return
            }
            let s = try vsrc()
            ywL(g, perLane(s, s) { x, _, _ in
                if p == 3 { return V2(x[0], x[0]) }
                let a = asD(x), o = b == 0x12 ? 0 : 1
                return fromD(D4(a[o], a[o], a[o + 2], a[o + 2]))
            })
            return
        }
        if d.vexL { throw udFault() }
        let high = b >= 0x16
        if b == 0x13 || b == 0x17 {
            if d.mod == 3 { throw udFault() }
            try vexNoV()
            try writeMem(d.seg, effectiveAddress(), 8, high ? xmm[g * 2 + 1] : xmm[g * 2])
            return
        }
        var x = xr(v)
        if d.mod == 3 {
            if p != 0 { throw udFault() }
            if high { x[1] = xmm[d.rm * 2] } else { x[0] = xmm[d.rm * 2 + 1] }
        } else {
            let m = try readMem(d.seg, effectiveAddress(), 8)
            if high { x[1] = m } else { x[0] = m }
        }
        yw128(g, x)
    }
}
