import Hypervisor

/// AVX/AVX2 in the VEX 0F 38 (0x5xx) and 0F 3A (0x6xx) maps, all 66-prefixed: the SSSE3
/// and SSE4.1 lane operations (`SSSE3.swift`, `SSE41.swift`) per 128-bit lane,
/// broadcasts, cross-lane permutes, 128-bit inserts/extracts, variable shifts, masked
/// moves, blends, PMOVSX/ZX, the extracts/inserts and string compares (VEX.128). The float
/// ones (rounding, dot products, FMA, F16C) are in `AVXFloat.swift`.
extension X86CPU {
    // swiftlint:disable:next cyclomatic_complexity function_body_length
    func vexMap2(_ b: Int) throws(X86Fault) {
        if d.vexPP != 1 { throw udFault() }
        let g = d.reg, v = d.vexV, wide = d.vexL, w = d.rexW
        if try avxFloatMap2(b) { return }
        switch b {
        case 0x00...0x0B:
            ywL(g, perLane(yr(v), try vsrc()) { x, y, _ in X86CPU.ssse3Lanes(b, x, y, width: 16, imm: 0) })
        case 0x1C, 0x1D, 0x1E:
            try vexNoV()
            ywL(g, perLane(V4(0, 0, 0, 0), try vsrc()) { x, y, _ in X86CPU.ssse3Lanes(b, x, y, width: 16, imm: 0) })
        case 0x0C, 0x0D:
            if w { throw udFault() }
            ywL(g, perLane(yr(v), try vsrc()) { x, c, _ in
                if b == 0x0D { return V2(x[Int(c[0] >> 1) & 1], x[Int(c[1] >> 1) & 1]) }
                let a = asD(x), k = asD(c)
                return fromD(D4(a[Int(k[0] & 3)], a[Int(k[1] & 3)], a[Int(k[2] & 3)], a[Int(k[3] & 3)]))
            })
        case 0x0E, 0x0F, 0x17:
            // VTESTPS/VTESTPD (sign bits only) and VPTEST: ZF = (a AND s) = 0, CF = (NOT a AND s) = 0.
            if b != 0x17 && w { throw udFault() }
            try vexNoV()
            let a = yr(g), s = try vsrc()
            let m: UInt64 = b == 0x0E ? 0x8000_0000_8000_0000 : (b == 0x0F ? 0x8000_0000_0000_0000 : .max)
            let mv = V4(repeating: m)
            setEager(((a & s & mv) == V4(0, 0, 0, 0) ? Flag.zf : 0) | ((~a & s & mv) == V4(0, 0, 0, 0) ? Flag.cf : 0))
        case 0x16, 0x36:
            // VPERMPS/VPERMD: dwords of r/m chosen by the indices in vvvv (VEX.256 only).
            if !wide || w { throw udFault() }
            let idx = X86CPU.dwords(yr(v)), s = X86CPU.dwords(try vsrc())
            yw(g, X86CPU.fromDwords((0..<8).map { s[Int(idx[$0] & 7)] }))
        case 0x18, 0x19, 0x58, 0x59, 0x78, 0x79:
            // Broadcasts: VBROADCASTSS/SD, VPBROADCASTD/Q/B/W (register source: AVX2).
            if w || (b == 0x19 && !wide) { throw udFault() }
            try vexNoV()
            let size = [0x18: 4, 0x19: 8, 0x58: 4, 0x59: 8, 0x78: 1, 0x79: 2][b]!
            let e = try vsrcLow(size)
            var q = e
            var bits = size * 8
            while bits < 64 { q |= q << UInt64(bits); bits *= 2 }
            ywL(g, V4(repeating: q))
        case 0x1A, 0x5A:
            // VBROADCASTF128/I128: memory only, VEX.256.
            if !wide || d.mod == 3 || w { throw udFault() }
            try vexNoV()
            let s = try vload(16, aligned: false).lowHalf
            yw(g, V4(lowHalf: s, highHalf: s))
        case 0x20...0x25, 0x30...0x35:
            try vexNoV()
            let k = b & 7
            let srcBytes = [8, 4, 2, 8, 4, 8][k] * (wide ? 2 : 1)
            let s: V2 = d.mod == 3 ? xr(d.rm) : (srcBytes == 16 ? try vload(16, aligned: false).lowHalf : V2(try vsrcLow(srcBytes), 0))
            let half = srcBytes / (wide ? 2 : 1)
            let lo = half == 8 ? s[0] : s[0] & ((1 << UInt64(half * 8)) - 1)
            let hi = half == 8 ? s[1] : (s[0] >> UInt64(half * 8)) & ((1 << UInt64(half * 8)) - 1)
            let signed = b < 0x30
            ywL(g, V4(lowHalf: X86CPU.extend(lo, kind: k, signed: signed), highHalf: X86CPU.extend(hi, kind: k, signed: signed)))
        case 0x28, 0x29, 0x2B, 0x38...0x40:
            ywL(g, perLane(yr(v), try vsrc()) { x, y, _ in X86CPU.sse41Lanes(0x200 | b, x, y, imm: 0, mask: x) })
        case 0x37:
            func gt(_ x: UInt64, _ y: UInt64) -> UInt64 { Int64(bitPattern: x) > Int64(bitPattern: y) ? .max : 0 }
            ywL(g, perLane(yr(v), try vsrc()) { x, y, _ in V2(gt(x[0], y[0]), gt(x[1], y[1])) })
        case 0x2A:
            if d.mod == 3 { throw udFault() }
            try vexNoV()
            ywL(g, try vsrc(aligned: true))
        case 0x41:
            if wide { throw udFault() }
            try vexNoV()
            yw128(g, X86CPU.sse41Lanes(0x241, xr(g), try vsrc128(), imm: 0, mask: V2(0, 0)))
        case 0x45, 0x46, 0x47:
            // VPSRLVD/Q, VPSRAVD, VPSLLVD/Q: per-element counts from r/m.
            if b == 0x46 && w { throw udFault() }
            let a = yr(v), c = try vsrc()
            if w {
                ywL(g, V4((0..<4).map { i -> UInt64 in
                    c[i] > 63 ? 0 : (b == 0x45 ? a[i] >> c[i] : a[i] << c[i])
                }))
            } else {
                let x = X86CPU.dwords(a), n = X86CPU.dwords(c)
                let o = (0..<8).map { i -> UInt32 in
                    switch b {
                    case 0x45: return n[i] > 31 ? 0 : x[i] >> n[i]
                    case 0x47: return n[i] > 31 ? 0 : x[i] << n[i]
                    default: return UInt32(bitPattern: Int32(bitPattern: x[i]) >> Int32(min(n[i], 31)))
                    }
                }
                ywL(g, X86CPU.fromDwords(o))
            }
        case 0x2C, 0x2D, 0x2E, 0x2F, 0x8C, 0x8E:
            try vexMaskMove(b, w)
        case 0x90...0x93:
            try vexGather(b)
        default:
            throw udFault()
        }
    }

    /// VMASKMOVPS/PD (0F 38 2C-2F) and VPMASKMOVD/Q (8C/8E, W = quadwords): the elements
    /// whose mask (vvvv) has its sign bit set are loaded (others zero) or stored; masked-off
    /// elements are not accessed, so they cannot fault.
    func vexMaskMove(_ b: Int, _ w: Bool) throws(X86Fault) {
        if d.mod == 3 || (b < 0x80 && w) { throw udFault() }
        let quad = b == 0x2D || b == 0x2F || (b >= 0x80 && w)
        let size = quad ? 8 : 4, count = (d.vexL ? 32 : 16) / size
        let mask = yr(d.vexV), ea = effectiveAddress()
        func bit(_ x: V4, _ i: Int) -> Bool { quad ? x[i] >> 63 != 0 : (x[i / 2] >> UInt64((i % 2) * 32 + 31)) & 1 != 0 }
        func element(_ x: V4, _ i: Int) -> UInt64 { quad ? x[i] : (x[i / 2] >> UInt64((i % 2) * 32)) & 0xFFFF_FFFF }
        if b == 0x2C || b == 0x2D || b == 0x8C {
            var o = V4(0, 0, 0, 0)
            for i in 0..<count where bit(mask, i) {
                let e = try readMem(d.seg, (ea &+ UInt64(i * size)) & sizeMask(d.addrSize), size)
                if quad { o[i] = e } else { o[i / 2] |= e << UInt64((i % 2) * 32) }
            }
            ywL(d.reg, o)
        } else {
            let src = yr(d.reg)
            for i in 0..<count where bit(mask, i) {
                _ = try rmwPointer(try linear(d.seg, (ea &+ UInt64(i * size)) & sizeMask(d.addrSize)), size)
            }
            for i in 0..<count where bit(mask, i) {
                try writeMem(d.seg, (ea &+ UInt64(i * size)) & sizeMask(d.addrSize), size, element(src, i))
            }
        }
    }

    /// VPGATHERDD/DQ/QD/QQ and VGATHERDPS/DPD/QPS/QPD (0F 38 90-93; W = quadword data,
    /// odd opcodes quadword indices). VSIB addressing: base + disp from ModRM/SIB, the
    /// index register is a vector (the decoder keeps the scale even for index 4, xmm4).
    /// The elements whose mask (vvvv) has its sign bit set are loaded in order, each
    /// clearing its mask element, so a fault leaves the progress made (restartable); at the
    /// end the mask is zero. #UD without a SIB byte, with 16-bit addressing, or when any two
    /// of destination, index and mask are the same register.
    func vexGather(_ b: Int) throws(X86Fault) {
        if d.mod == 3 || d.modrm & 7 != 4 || d.addrSize == 2 { throw udFault() }
        let size = d.rexW ? 8 : 4, qIndex = b & 1 != 0
        let count = (qIndex || d.rexW) ? (d.vexL ? 4 : 2) : (d.vexL ? 8 : 4)
        let g = d.reg, m = d.vexV, xi = d.index >= 0 ? d.index : 4
        if g == m || g == xi || m == xi { throw udFault() }
        let savedIndex = d.index
        d.index = -1
        let base = effectiveAddress()
        d.index = savedIndex
        let idx = yr(xi)
        var dst = yr(g), mask = yr(m)
        func get(_ v: V4, _ i: Int, _ sz: Int) -> UInt64 {
            sz == 8 ? v[i] : (v[i / 2] >> UInt64((i % 2) * 32)) & 0xFFFF_FFFF
        }
        func put(_ v: inout V4, _ i: Int, _ x: UInt64) {
            if size == 8 { v[i] = x } else {
                let sh = UInt64((i % 2) * 32)
                v[i / 2] = (v[i / 2] & ~(0xFFFF_FFFF << sh)) | (x << sh)
            }
        }
        // Bits above the gathered elements are zeroed in both registers.
        let keep = count * size / 8
        func finish() {
            for k in keep..<4 { dst[k] = 0; mask[k] = 0 }
            yw(g, dst); yw(m, mask)
        }
        for i in 0..<count where get(mask, i, size) >> UInt64(size * 8 - 1) != 0 {
            let ix = qIndex ? idx[i] : UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: get(idx, i, 4))))
            let ea = (base &+ (ix << d.scale)) & sizeMask(d.addrSize)
            let x: UInt64
            do { x = try readMem(d.seg, ea, size) } catch { finish(); throw error }
            put(&dst, i, x)
            put(&mask, i, 0)
        }
        mask = V4(0, 0, 0, 0)
        finish()
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    func vexMap3(_ b: Int) throws(X86Fault) {
        if d.vexPP != 1 { throw udFault() }
        let g = d.reg, v = d.vexV, wide = d.vexL, w = d.rexW
        let imm = Int(d.imm & 0xFF)
        if try avxFloatMap3(b) { return }
        switch b {
        case 0x00, 0x01:
            // VPERMQ/VPERMPD: W1, VEX.256 only.
            if !wide || !w { throw udFault() }
            try vexNoV()
            let s = try vsrc()
            yw(g, V4(s[imm & 3], s[(imm >> 2) & 3], s[(imm >> 4) & 3], s[(imm >> 6) & 3]))
        case 0x02:
            if w { throw udFault() }
            let a = X86CPU.dwords(yr(v)), s = X86CPU.dwords(try vsrc())
            ywL(g, X86CPU.fromDwords((0..<8).map { imm >> $0 & 1 != 0 ? s[$0] : a[$0] }))
        case 0x04, 0x05:
            if w { throw udFault() }
            try vexNoV()
            ywL(g, perLane(try vsrc(), V4(0, 0, 0, 0)) { x, _, lane in
                if b == 0x05 { let j = imm >> (lane * 2); return V2(x[j & 1], x[(j >> 1) & 1]) }
                let a = asD(x)
                return fromD(D4(a[imm & 3], a[(imm >> 2) & 3], a[(imm >> 4) & 3], a[(imm >> 6) & 3]))
            })
        case 0x06, 0x46:
            if !wide || w { throw udFault() }
            let a = yr(v), s = try vsrc()
            let halves = [a.lowHalf, a.highHalf, s.lowHalf, s.highHalf]
            func pick(_ c: Int) -> V2 { c & 8 != 0 ? V2(0, 0) : halves[c & 3] }
            yw(g, V4(lowHalf: pick(imm & 0xF), highHalf: pick(imm >> 4)))
        case 0x0C, 0x0D, 0x0E:
            ywL(g, perLane(yr(v), try vsrc()) { x, y, lane in
                let li = b == 0x0C ? imm >> (lane * 4) : (b == 0x0D ? imm >> (lane * 2) : imm)
                return X86CPU.sse41Lanes(0x300 | b, x, y, imm: li, mask: x)
            })
        case 0x0F:
            ywL(g, perLane(yr(v), try vsrc()) { x, y, _ in X86CPU.ssse3Lanes(0x0F, x, y, width: 16, imm: imm) })
        case 0x42:
            ywL(g, perLane(yr(v), try vsrc()) { x, y, lane in X86CPU.sse41Lanes(0x342, x, y, imm: imm >> (lane * 3), mask: x) })
        case 0x4A, 0x4B, 0x4C:
            if w { throw udFault() }
            let m = yr((imm >> 4) & (mode64 ? 15 : 7))
            let op = [0x4A: 0x214, 0x4B: 0x215, 0x4C: 0x210][b]!
            let a = yr(v), s = try vsrc()
            ywL(g, V4(lowHalf: X86CPU.sse41Lanes(op, a.lowHalf, s.lowHalf, imm: 0, mask: m.lowHalf),
                      highHalf: X86CPU.sse41Lanes(op, a.highHalf, s.highHalf, imm: 0, mask: m.highHalf)))
        case 0x14, 0x15, 0x16, 0x17:
            if wide { throw udFault() }
            try vexNoV()
            try sse41Extract(0x300 | b)
        case 0x20, 0x21, 0x22:
            if wide { throw udFault() }
            let a = xr(v)
            var x = a
            switch b {
            case 0x20:
                let e = try d.mod == 3 ? r[d.rm] & 0xFF : readMem(d.seg, effectiveAddress(), 1)
                var y = asB(a); y[imm & 15] = UInt8(e); x = fromB(y)
            case 0x21:
                let e: UInt32 = try d.mod == 3 ? asD(xr(d.rm))[imm >> 6] : UInt32(readMem(d.seg, effectiveAddress(), 4))
                var y = asD(a); y[(imm >> 4) & 3] = e
                for i in 0..<4 where imm >> i & 1 != 0 { y[i] = 0 }
                x = fromD(y)
            default:
                if d.opSize == 8 { x[imm & 1] = try readRM(8) } else { var y = asD(a); y[imm & 3] = UInt32(try readRM(4)); x = fromD(y) }
            }
            yw128(g, x)
        case 0x18, 0x38:
            if !wide || w { throw udFault() }
            var a = yr(v)
            let s = try vsrc128()
            if imm & 1 == 0 { a.lowHalf = s } else { a.highHalf = s }
            yw(g, a)
        case 0x19, 0x39:
            if !wide || w { throw udFault() }
            try vexNoV()
            let a = yr(g)
            let h = imm & 1 == 0 ? a.lowHalf : a.highHalf
            try vstore(V4(lowHalf: h, highHalf: V2(0, 0)), 16, aligned: false)
        case 0x60...0x63:
            // VPCMPESTRM/ESTRI/ISTRM/ISTRI: VEX.128; the mask forms zero YMM0's upper half.
            // The VEX checks (`avxCheck`) replace legacy SSE's: CR0.EM and CR4.OSFXSR do not apply.
            if wide { throw udFault() }
            try vexNoV()
            try stringCompareInsn(0x300 | b)
            if b & 1 == 0 { xmm[32] = 0; xmm[33] = 0 }
        default:
            throw udFault()
        }
    }

    static func dwords(_ v: V4) -> [UInt32] {
        (0..<8).map { UInt32(truncatingIfNeeded: v[$0 / 2] >> UInt64(($0 % 2) * 32)) }
    }

    static func fromDwords(_ x: [UInt32]) -> V4 {
        var o = V4(0, 0, 0, 0)
        for i in 0..<8 { o[i / 2] |= UInt64(x[i]) << UInt64((i % 2) * 32) }
        return o
    }
}
