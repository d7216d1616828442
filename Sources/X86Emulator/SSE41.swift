import Hypervisor

/// SSE4.1 (x86-64-v2 and up), all 66-prefixed: the integer instructions, blends, inserts
/// and extracts here; ROUNDPS/PD/SS/SD and DPPS/DPPD run on the host (`HostFloat`'s table)
/// under the guest's MXCSR, so the imm8 rounding control, the precision-exception
/// suppression bit, DAZ and the exception flags are the host CPU's.
extension X86CPU {
    /// 66 0F 38 xx / 66 0F 3A xx opcodes of SSE4.1.
    static func isSSE41Opcode(_ op: Int) -> Bool {
        switch op {
        case 0x210, 0x214, 0x215, 0x217, 0x220...0x225, 0x228...0x22B, 0x230...0x235, 0x238...0x241,
             0x308...0x30E, 0x314...0x317, 0x320...0x322, 0x340...0x342:
            return true
        default:
            return false
        }
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    func sse41(_ op: Int) throws(X86Fault) {
        if !cpuLevelHas(.sse41) || !d.has66 || d.rep != 0 { throw udFault() }
        try sseCheck()
        let g = d.reg
        switch op {
        case 0x308...0x30B, 0x340, 0x341:
            try sse41OnHost(op)
        case 0x220...0x225, 0x230...0x235:
            // PMOVSX/PMOVZX: the source is the low 8, 4 or 2 bytes.
            let k = op & 7
            let srcBytes = [8, 4, 2, 8, 4, 8][k]
            let v = try xsrcLow(srcBytes)
            xw(g, X86CPU.extend(v, kind: k, signed: op < 0x230))
        case 0x22A:
            // MOVNTDQA: memory only, aligned.
            if d.mod == 3 { throw udFault() }
            xw(g, try xsrc(aligned: true))
        case 0x314...0x317:
            try sse41Extract(op)
        case 0x320:
            // PINSRB: a register source is the low byte of r32 (never AH-BH).
            let v = try d.mod == 3 ? r[d.rm] & 0xFF : readMem(d.seg, effectiveAddress(), 1)
            var b = asB(xr(g)); b[Int(d.imm & 15)] = UInt8(v); xw(g, fromB(b))
        case 0x321:
            // INSERTPS: imm[7:6] source lane (register form), imm[5:4] destination lane, imm[3:0] zero mask.
            let imm = Int(d.imm & 0xFF)
            let v: UInt32 = try d.mod == 3 ? asD(xr(d.rm))[imm >> 6] : UInt32(readMem(d.seg, effectiveAddress(), 4))
            var x = asD(xr(g)); x[(imm >> 4) & 3] = v
            for i in 0..<4 where imm >> i & 1 != 0 { x[i] = 0 }
            xw(g, fromD(x))
        case 0x322:
            var v = xr(g)
            if d.rexW {
                v[Int(d.imm & 1)] = try readRM(8)
            } else {
                var x = asD(v); x[Int(d.imm & 3)] = UInt32(try readRM(4)); v = fromD(x)
            }
            xw(g, v)
        case 0x217:
            // PTEST: ZF if (a AND s) = 0, CF if (NOT a AND s) = 0; the other flags clear.
            let a = xr(g), s = try xsrc(aligned: true)
            setEager(((a & s) == V2(0, 0) ? Flag.zf : 0) | ((~a & s) == V2(0, 0) ? Flag.cf : 0))
        default:
            let a = xr(g), s = try xsrc(aligned: true)
            xw(g, X86CPU.sse41Lanes(op, a, s, imm: Int(d.imm & 0xFF), mask: xr(0)))
        }
    }

    /// ROUNDPS/PD/SS/SD and DPPS/DPPD as the same instruction on the host.
    func sse41OnHost(_ op: Int) throws(X86Fault) {
        let b = op & 0xFF
        let imm = b <= 0x0B ? UInt8(d.imm & 15) : UInt8(d.imm & 0xFF)
        let s: V2
        if d.mod == 3 {
            s = xr(d.rm)
        } else if b == 0x0A || b == 0x0B {
            s = V2(try readMem(d.seg, effectiveAddress(), b == 0x0A ? 4 : 8), 0)
        } else {
            s = try xsrc(aligned: true)
        }
        guard let (out, _, _, raised) = runHostSSE([0x66, 0x0F, 0x3A, UInt8(b), 0xC1, imm], xr(d.reg), s) else {
            throw udFault()
        }
        try applySIMDExceptions(raised)
        xw(d.reg, out)
    }

    /// PEXTRB/PEXTRW/PEXTRD/PEXTRQ/EXTRACTPS to a register (zero-extended) or memory.
    func sse41Extract(_ op: Int) throws(X86Fault) {
        let v = xr(d.reg), i = Int(d.imm)
        let (value, size): (UInt64, Int)
        switch op {
        case 0x314: (value, size) = (UInt64(asB(v)[i & 15]), 1)
        case 0x315: (value, size) = (UInt64(asW(v)[i & 7]), 2)
        case 0x316 where d.rexW: (value, size) = (v[i & 1], 8)
        default: (value, size) = (UInt64(asD(v)[i & 3]), 4)
        }
        if d.mod == 3 {
            setReg(d.rm, size == 8 ? 8 : 4, value)
        } else {
            try writeMem(d.seg, effectiveAddress(), size, value)
        }
    }

    /// PMOVSX/PMOVZX kind (the opcode's low three bits: BW BD BQ WD WQ DQ) of `v`.
    static func extend(_ v: UInt64, kind: Int, signed: Bool) -> V2 {
        let (from, to): (Int, Int) = [(1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (4, 8)][kind]
        var lo: UInt64 = 0, hi: UInt64 = 0
        let count = 16 / to
        for i in 0..<count {
            var e = (v >> UInt64(i * from * 8)) & sizeMaskFor(from)
            if signed && e >> UInt64(from * 8 - 1) != 0 { e |= ~sizeMaskFor(from) }
            e &= sizeMaskFor(to)
            let bit = (i * to * 8) % 64
            if i * to < 8 { lo |= e << UInt64(bit) } else { hi |= e << UInt64(bit) }
        }
        return V2(lo, hi)
    }

    static func sizeMaskFor(_ bytes: Int) -> UInt64 { bytes == 8 ? .max : (1 << UInt64(bytes * 8)) - 1 }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    /// The SSE4.1 lane operations on destination `a`, source `s` (`mask` is xmm0 for the
    /// variable blends).
    static func sse41Lanes(_ op: Int, _ a: V2, _ s: V2, imm: Int, mask: V2) -> V2 {
        switch op {
        case 0x210:  // PBLENDVB
            let x = asB(a), y = asB(s), m = asB(mask); var o = x
            for i in 0..<16 where m[i] & 0x80 != 0 { o[i] = y[i] }
            return fromB(o)
        case 0x214:  // BLENDVPS
            let x = asD(a), y = asD(s), m = asD(mask); var o = x
            for i in 0..<4 where m[i] >> 31 != 0 { o[i] = y[i] }
            return fromD(o)
        case 0x215:  // BLENDVPD
            return V2(mask[0] >> 63 != 0 ? s[0] : a[0], mask[1] >> 63 != 0 ? s[1] : a[1])
        case 0x30C:  // BLENDPS
            let x = asD(a), y = asD(s); var o = x
            for i in 0..<4 where imm >> i & 1 != 0 { o[i] = y[i] }
            return fromD(o)
        case 0x30D:  // BLENDPD
            return V2(imm & 1 != 0 ? s[0] : a[0], imm & 2 != 0 ? s[1] : a[1])
        case 0x30E:  // PBLENDW
            let x = asW(a), y = asW(s); var o = x
            for i in 0..<8 where imm >> i & 1 != 0 { o[i] = y[i] }
            return fromW(o)
        case 0x228:  // PMULDQ
            func m(_ x: UInt64, _ y: UInt64) -> UInt64 {
                UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: x)) &* Int64(Int32(truncatingIfNeeded: y)))
            }
            return V2(m(a[0], s[0]), m(a[1], s[1]))
        case 0x229:  // PCMPEQQ
            return V2(a[0] == s[0] ? .max : 0, a[1] == s[1] ? .max : 0)
        case 0x22B:  // PACKUSDW
            let x = asD(a), y = asD(s); var o = W8()
            for i in 0..<8 { o[i] = UInt16(clamping: Int32(bitPattern: i < 4 ? x[i] : y[i - 4])) }
            return fromW(o)
        case 0x238: return fromB(signedMinMax(asB(a), asB(s), Int8.self, max: false))  // PMINSB
        case 0x23C: return fromB(signedMinMax(asB(a), asB(s), Int8.self, max: true))   // PMAXSB
        case 0x239: return fromD(signedMinMax(asD(a), asD(s), Int32.self, max: false)) // PMINSD
        case 0x23D: return fromD(signedMinMax(asD(a), asD(s), Int32.self, max: true))  // PMAXSD
        case 0x23A: return fromW(pointwiseMin(asW(a), asW(s)))
        case 0x23E: return fromW(pointwiseMax(asW(a), asW(s)))
        case 0x23B: return fromD(pointwiseMin(asD(a), asD(s)))
        case 0x23F: return fromD(pointwiseMax(asD(a), asD(s)))
        case 0x240: return fromD(asD(a) &* asD(s))  // PMULLD
        case 0x241:  // PHMINPOSUW: the minimum word and its (lowest) index
            let y = asW(s)
            var best = 0
            for i in 1..<8 where y[i] < y[best] { best = i }
            return V2(UInt64(y[best]) | UInt64(best) << 16, 0)
        case 0x342:  // MPSADBW
            let x = asB(a), y = asB(s); var o = W8()
            let ao = (imm >> 2 & 1) * 4, so = (imm & 3) * 4
            for i in 0..<8 {
                var sum = 0
                for k in 0..<4 { sum += abs(Int(x[ao + i + k]) - Int(y[so + k])) }
                o[i] = UInt16(sum)
            }
            return fromW(o)
        default:
            return a
        }
    }

    /// Lane-wise signed minimum or maximum of unsigned-typed lanes.
    static func signedMinMax<V: SIMD, S: FixedWidthInteger & SignedInteger>(_ x: V, _ y: V, _: S.Type, max: Bool) -> V
        where V.Scalar: FixedWidthInteger {
        var o = x
        for i in x.indices {
            let p = S(truncatingIfNeeded: x[i]), q = S(truncatingIfNeeded: y[i])
            o[i] = V.Scalar(truncatingIfNeeded: max ? Swift.max(p, q) : Swift.min(p, q))
        }
        return o
    }
}
