import Hypervisor

typealias V2 = SIMD2<UInt64>
typealias B16 = SIMD16<UInt8>
typealias W8 = SIMD8<UInt16>
typealias D4 = SIMD4<UInt32>

@inline(__always) func asB(_ v: V2) -> B16 { unsafeBitCast(v, to: B16.self) }
@inline(__always) func asW(_ v: V2) -> W8 { unsafeBitCast(v, to: W8.self) }
@inline(__always) func asD(_ v: V2) -> D4 { unsafeBitCast(v, to: D4.self) }
@inline(__always) func fromB(_ v: B16) -> V2 { unsafeBitCast(v, to: V2.self) }
@inline(__always) func fromW(_ v: W8) -> V2 { unsafeBitCast(v, to: V2.self) }
@inline(__always) func fromD(_ v: D4) -> V2 { unsafeBitCast(v, to: V2.self) }

@inline(__always) func satS8(_ x: Int) -> UInt8 { UInt8(bitPattern: Int8(clamping: x)) }
@inline(__always) func satS16(_ x: Int) -> UInt16 { UInt16(bitPattern: Int16(clamping: x)) }

extension X86CPU {
    @inline(__always) func xr(_ i: Int) -> V2 { V2(xmm[i &* 2], xmm[i &* 2 &+ 1]) }
    @inline(__always) func xw(_ i: Int, _ v: V2) { xmm[i &* 2] = v[0]; xmm[i &* 2 &+ 1] = v[1] }

    func sseCheck() throws(X86Fault) {
        if cr0 & X86Bits.cr0EM != 0 || cr4 & X86Bits.cr4OSFXSR == 0 { throw udFault() }
        if cr0 & X86Bits.cr0TS != 0 { throw fault(Vec.nm) }
    }

    /// The 128-bit source operand (register or memory).
    func xsrc(aligned: Bool) throws(X86Fault) -> V2 {
        if d.mod == 3 { return xr(d.rm) }
        let ea = effectiveAddress()
        let la = try linear(d.seg, ea)
        if aligned && la & 15 != 0 { throw gpFault() }
        let lo = try readLinear(la, 8, user: cpl == 3)
        let hi = try readLinear((la &+ 8) & linearMask, 8, user: cpl == 3)
        return V2(lo, hi)
    }

    func xstore(_ v: V2, aligned: Bool) throws(X86Fault) {
        if d.mod == 3 { xw(d.rm, v); return }
        let la = try linear(d.seg, effectiveAddress())
        if aligned && la & 15 != 0 { throw gpFault() }
        _ = try rmwPointer(la, 8); _ = try rmwPointer((la &+ 8) & linearMask, 8)
        try writeLinear(la, 8, v[0], user: cpl == 3)
        try writeLinear((la &+ 8) & linearMask, 8, v[1], user: cpl == 3)
    }

    /// Low 64 or 32 bits of the source (register or memory of that size).
    func xsrcLow(_ size: Int) throws(X86Fault) -> UInt64 {
        if d.mod == 3 { return xmm[d.rm * 2] & sizeMask(size) }
        return try readMem(d.seg, effectiveAddress(), size)
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    func sse(_ b: Int) throws(X86Fault) {
        if d.rep == 0 && !d.has66 && X86CPU.isMMXOpcode(b) { try mmx(b); return }
        if b == 0xD6 && d.rep != 0 { try movqBetweenMMXAndXMM(toXMM: d.rep == 0xF3); return }
        try sseCheck()
        let p = d.rep == 0xF3 ? 3 : (d.rep == 0xF2 ? 2 : (d.has66 ? 1 : 0))
        if (b == 0x2A || b == 0x2C || b == 0x2D) && p < 2 { try mmxConvert(b, p); return }
        if try sseOnHost(b, p) { return }
        if p >= 2, try sse3Move(b, p) { return }
        let g = d.reg
        switch b {
        case 0x10, 0x11:
            switch p {
            case 0, 1:
                if b == 0x10 { xw(g, try xsrc(aligned: false)) } else { try xstore(xr(g), aligned: false) }
            case 3, 2:
                let sz = p == 3 ? 4 : 8
                if b == 0x10 {
                    if d.mod == 3 {
                        var v = xr(g); let m = sizeMask(sz)
                        v[0] = (v[0] & ~m) | (xmm[d.rm * 2] & m); xw(g, v)
                    } else {
                        xw(g, V2(try xsrcLow(sz), 0))
                    }
                } else {
                    if d.mod == 3 {
                        var v = xr(d.rm); let m = sizeMask(sz)
                        v[0] = (v[0] & ~m) | (xmm[g * 2] & m); xw(d.rm, v)
                    } else {
                        try writeMem(d.seg, effectiveAddress(), sz, xmm[g * 2] & sizeMask(sz))
                    }
                }
            default: throw udFault()
            }
        case 0x12, 0x13, 0x16, 0x17:
            if p > 1 { throw udFault() }
            let high = b >= 0x16
            if b == 0x12 || b == 0x16 {
                var v = xr(g)
                if d.mod == 3 {
                    if p != 0 { throw udFault() }
                    // movhlps / movlhps
                    if high { v[1] = xmm[d.rm * 2] } else { v[0] = xmm[d.rm * 2 + 1] }
                } else {
                    let m = try readMem(d.seg, effectiveAddress(), 8)
                    if high { v[1] = m } else { v[0] = m }
                }
                xw(g, v)
            } else {
                if d.mod == 3 { throw udFault() }
                try writeMem(d.seg, effectiveAddress(), 8, high ? xmm[g * 2 + 1] : xmm[g * 2])
            }
        case 0x14, 0x15:
            if p > 1 { throw udFault() }
            let a = xr(g), s = try xsrc(aligned: true)
            if p == 1 {
                xw(g, b == 0x14 ? V2(a[0], s[0]) : V2(a[1], s[1]))
            } else {
                let x = asD(a), y = asD(s)
                xw(g, fromD(b == 0x14 ? D4(x[0], y[0], x[1], y[1]) : D4(x[2], y[2], x[3], y[3])))
            }
        case 0x28, 0x29:
            if p > 1 { throw udFault() }
            if b == 0x28 { xw(g, try xsrc(aligned: true)) } else { try xstore(xr(g), aligned: true) }
        case 0x2B, 0xE7:
            if d.mod == 3 { throw udFault() }
            try xstore(xr(g), aligned: true)
        case 0x2A:
            if p < 2 { throw udFault() }
            let s = d.rexW ? 8 : 4
            let iv = Int64(bitPattern: signExtend(try readRM(s), s))
            var v = xr(g)
            if p == 3 { v[0] = (v[0] & ~0xFFFF_FFFF) | UInt64(Float(iv).bitPattern) }
            else { v[0] = Double(iv).bitPattern }
            xw(g, v)
        case 0x2C, 0x2D:
            if p < 2 { throw udFault() }
            let s = d.rexW ? 8 : 4
            let x: Double = p == 3 ? Double(Float(bitPattern: UInt32(truncatingIfNeeded: try xsrcLow(4)))) : Double(bitPattern: try xsrcLow(8))
            let rounded = b == 0x2C ? x.rounded(.towardZero) : x.rounded(.toNearestOrEven)
            let lim = s == 8 ? 9.223372036854775807e18 : 2147483648.0
            let res: UInt64
            if rounded.isNaN || rounded >= lim || rounded < -lim {
                res = s == 8 ? 0x8000_0000_0000_0000 : 0x8000_0000
            } else {
                res = UInt64(bitPattern: Int64(rounded)) & sizeMask(s)
            }
            setReg(d.reg, s, res)
        case 0x2E, 0x2F:
            if p > 1 { throw udFault() }
            let a: Double, c: Double
            if p == 0 {
                a = Double(Float(bitPattern: UInt32(truncatingIfNeeded: xmm[g * 2])))
                c = Double(Float(bitPattern: UInt32(truncatingIfNeeded: try xsrcLow(4))))
            } else {
                a = Double(bitPattern: xmm[g * 2]); c = Double(bitPattern: try xsrcLow(8))
            }
            var f: UInt64
            if a.isNaN || c.isNaN { f = Flag.zf | Flag.pf | Flag.cf }
            else if a < c { f = Flag.cf } else if a > c { f = 0 } else { f = Flag.zf }
            setEager(f)
        case 0x50:
            if p > 1 || d.mod != 3 { throw udFault() }
            let v = xr(d.rm)
            let m: UInt64
            if p == 0 {
                let x = asD(v)
                m = UInt64(x[0] >> 31) | UInt64(x[1] >> 31) << 1 | UInt64(x[2] >> 31) << 2 | UInt64(x[3] >> 31) << 3
            } else {
                m = (v[0] >> 63) | (v[1] >> 63) << 1
            }
            setReg(d.reg, 4, m)
        case 0x54, 0x55, 0x56, 0x57, 0xDB, 0xDF, 0xEB, 0xEF:
            if b >= 0xDB && p != 1 { throw udFault() }
            if b < 0x58 && p > 1 { throw udFault() }
            let a = xr(g), s = try xsrc(aligned: true)
            switch b {
            case 0x54, 0xDB: xw(g, a & s)
            case 0x55, 0xDF: xw(g, ~a & s)
            case 0x56, 0xEB: xw(g, a | s)
            default: xw(g, a ^ s)
            }
        case 0x51, 0x58, 0x59, 0x5C, 0x5D, 0x5E, 0x5F:
            try sseFloatArith(b, p)
        case 0x5A:
            switch p {
            case 3:
                var v = xr(g); v[0] = Double(Float(bitPattern: UInt32(truncatingIfNeeded: try xsrcLow(4)))).bitPattern; xw(g, v)
            case 2:
                var v = xr(g)
                v[0] = (v[0] & ~0xFFFF_FFFF) | UInt64(Float(Double(bitPattern: try xsrcLow(8))).bitPattern); xw(g, v)
            case 0:
                let lo = try xsrcLow(8)
                xw(g, V2(Double(Float(bitPattern: UInt32(truncatingIfNeeded: lo))).bitPattern,
                         Double(Float(bitPattern: UInt32(truncatingIfNeeded: lo >> 32))).bitPattern))
            default:
                let s = try xsrc(aligned: true)
                let lo = UInt64(Float(Double(bitPattern: s[0])).bitPattern) | UInt64(Float(Double(bitPattern: s[1])).bitPattern) << 32
                xw(g, V2(lo, 0))
            }
        case 0x5B:
            let s = asD(try xsrc(aligned: p != 3))
            var out = D4()
            for i in 0..<4 {
                if p == 0 {
                    out[i] = Float(Int32(bitPattern: s[i])).bitPattern
                } else {
                    let f = Float(bitPattern: s[i])
                    let x = p == 3 ? f.rounded(.towardZero) : f.rounded(.toNearestOrEven)
                    out[i] = (x.isNaN || x >= 2147483648.0 || x < -2147483648.0) ? 0x8000_0000 : UInt32(bitPattern: Int32(x))
                }
            }
            xw(g, fromD(out))
        case 0xE6:
            if p == 0 { throw udFault() }
            if p == 3 {
                let lo = try xsrcLow(8)
                xw(g, V2(Double(Int32(truncatingIfNeeded: lo)).bitPattern, Double(Int32(truncatingIfNeeded: lo >> 32)).bitPattern))
            } else {
                let s = try xsrc(aligned: true)
                func cv(_ x: UInt64) -> UInt64 {
                    let v = Double(bitPattern: x)
                    let r = p == 1 ? v.rounded(.towardZero) : v.rounded(.toNearestOrEven)
                    return (r.isNaN || r >= 2147483648.0 || r < -2147483648.0) ? 0x8000_0000 : UInt64(UInt32(bitPattern: Int32(r)))
                }
                xw(g, V2(cv(s[0]) | cv(s[1]) << 32, 0))
            }
        case 0x6E:
            if p != 1 { throw udFault() }
            xw(g, V2(try readRM(d.rexW ? 8 : 4), 0))
        case 0x7E:
            if p == 1 {
                let v = xmm[g * 2]
                try writeRM(d.rexW ? 8 : 4, d.rexW ? v : v & 0xFFFF_FFFF)
            } else if p == 3 {
                xw(g, V2(try xsrcLow(8), 0))
            } else { throw udFault() }
        case 0xD6:
            if p != 1 { throw udFault() }
            if d.mod == 3 { xw(d.rm, V2(xmm[g * 2], 0)) } else { try writeMem(d.seg, effectiveAddress(), 8, xmm[g * 2]) }
        case 0x6F, 0x7F:
            if p != 1 && p != 3 { throw udFault() }
            if b == 0x6F { xw(g, try xsrc(aligned: p == 1)) } else { try xstore(xr(g), aligned: p == 1) }
        case 0x70:
            let s = try xsrc(aligned: p == 1)
            let i = Int(d.imm)
            switch p {
            case 1:
                let x = asD(s)
                xw(g, fromD(D4(x[i & 3], x[(i >> 2) & 3], x[(i >> 4) & 3], x[(i >> 6) & 3])))
            case 2, 3:
                let w = asW(s)
                var o = w
                let base = p == 2 ? 0 : 4
                for k in 0..<4 { o[base + k] = w[base + ((i >> (2 * k)) & 3)] }
                xw(g, fromW(o))
            default: throw udFault()
            }
        case 0x71, 0x72, 0x73:
            if p != 1 || d.mod != 3 { throw udFault() }
            let v = xr(d.rm), n = d.imm
            let k = d.reg & 7
            switch (b, k) {
            case (0x71, 2): xw(d.rm, shiftW(v, n, 0))
            case (0x71, 4): xw(d.rm, shiftW(v, n, 2))
            case (0x71, 6): xw(d.rm, shiftW(v, n, 1))
            case (0x72, 2): xw(d.rm, shiftD(v, n, 0))
            case (0x72, 4): xw(d.rm, shiftD(v, n, 2))
            case (0x72, 6): xw(d.rm, shiftD(v, n, 1))
            case (0x73, 2): xw(d.rm, shiftQ(v, n, 0))
            case (0x73, 6): xw(d.rm, shiftQ(v, n, 1))
            case (0x73, 3): xw(d.rm, byteShift(v, Int(min(n, 16)), left: false))
            case (0x73, 7): xw(d.rm, byteShift(v, Int(min(n, 16)), left: true))
            default: throw udFault()
            }
        case 0xC2:
            try sseCompare(p)
        case 0xC4:
            if p != 1 { throw udFault() }
            var w = asW(xr(g))
            w[Int(d.imm & 7)] = UInt16(truncatingIfNeeded: try readRM(2))
            xw(g, fromW(w))
        case 0xC5:
            if p != 1 || d.mod != 3 { throw udFault() }
            setReg(d.reg, 4, UInt64(asW(xr(d.rm))[Int(d.imm & 7)]))
        case 0xC6:
            if p > 1 { throw udFault() }
            let a = xr(g), s = try xsrc(aligned: true)
            let i = Int(d.imm)
            if p == 1 {
                xw(g, V2(a[i & 1], s[(i >> 1) & 1]))
            } else {
                let x = asD(a), y = asD(s)
                xw(g, fromD(D4(x[i & 3], x[(i >> 2) & 3], y[(i >> 4) & 3], y[(i >> 6) & 3])))
            }
        case 0xF7:
            // MASKMOVDQU: the bytes of xmm(reg) whose mask byte has its top bit set go to DS:rDI.
            if p != 1 || d.mod != 3 { throw udFault() }
            let v = asB(xr(g)), mask = asB(xr(d.rm)), base = reg(7, d.addrSize)
            for i in 0..<16 where mask[i] & 0x80 != 0 {
                try writeMem(d.seg, (base &+ UInt64(i)) & sizeMask(d.addrSize), 1, UInt64(v[i]))
            }
        case 0xD7:
            if p != 1 || d.mod != 3 { throw udFault() }
            let v = asB(xr(d.rm))
            var m: UInt64 = 0
            for i in 0..<16 where v[i] & 0x80 != 0 { m |= 1 << UInt64(i) }
            setReg(d.reg, 4, m)
        case 0x60...0x6D, 0x74...0x76, 0xD1...0xD5, 0xD8...0xDE, 0xE0...0xE5, 0xE8...0xEE, 0xF1...0xF6, 0xF8...0xFE:
            if p != 1 { throw udFault() }
            xw(g, try sseInteger(b, xr(g), try xsrc(aligned: true)))
        default:
            throw udFault()
        }
    }

    func shiftW(_ v: V2, _ n: UInt64, _ kind: Int) -> V2 {
        var w = asW(v)
        for i in 0..<8 {
            switch kind {
            case 0: w[i] = n > 15 ? 0 : w[i] >> UInt16(n)
            case 1: w[i] = n > 15 ? 0 : w[i] << UInt16(n)
            default: w[i] = UInt16(bitPattern: Int16(bitPattern: w[i]) >> Int16(min(n, 15)))
            }
        }
        return fromW(w)
    }

    func shiftD(_ v: V2, _ n: UInt64, _ kind: Int) -> V2 {
        var w = asD(v)
        for i in 0..<4 {
            switch kind {
            case 0: w[i] = n > 31 ? 0 : w[i] >> UInt32(n)
            case 1: w[i] = n > 31 ? 0 : w[i] << UInt32(n)
            default: w[i] = UInt32(bitPattern: Int32(bitPattern: w[i]) >> Int32(min(n, 31)))
            }
        }
        return fromD(w)
    }

    func shiftQ(_ v: V2, _ n: UInt64, _ kind: Int) -> V2 {
        if n > 63 { return V2(0, 0) }
        return kind == 0 ? V2(v[0] >> n, v[1] >> n) : V2(v[0] << n, v[1] << n)
    }

    func byteShift(_ v: V2, _ n: Int, left: Bool) -> V2 {
        let b = asB(v)
        var o = B16()
        for i in 0..<16 {
            let j = left ? i - n : i + n
            o[i] = (j >= 0 && j < 16) ? b[j] : 0
        }
        return fromB(o)
    }

    // swiftlint:disable:next cyclomatic_complexity
    func sseInteger(_ b: Int, _ a: V2, _ s: V2) throws(X86Fault) -> V2 {
        switch b {
        case 0x60, 0x68:
            let x = asB(a), y = asB(s); var o = B16(); let base = b == 0x60 ? 0 : 8
            for i in 0..<8 { o[2 * i] = x[base + i]; o[2 * i + 1] = y[base + i] }
            return fromB(o)
        case 0x61, 0x69:
            let x = asW(a), y = asW(s); var o = W8(); let base = b == 0x61 ? 0 : 4
            for i in 0..<4 { o[2 * i] = x[base + i]; o[2 * i + 1] = y[base + i] }
            return fromW(o)
        case 0x62, 0x6A:
            let x = asD(a), y = asD(s); let base = b == 0x62 ? 0 : 2
            return fromD(D4(x[base], y[base], x[base + 1], y[base + 1]))
        case 0x6C: return V2(a[0], s[0])
        case 0x6D: return V2(a[1], s[1])
        case 0x63, 0x67:
            let x = asW(a), y = asW(s); var o = B16()
            for i in 0..<16 {
                let v = Int(Int16(bitPattern: i < 8 ? x[i] : y[i - 8]))
                o[i] = b == 0x63 ? satS8(v) : UInt8(clamping: v)
            }
            return fromB(o)
        case 0x6B:
            let x = asD(a), y = asD(s); var o = W8()
            for i in 0..<8 { o[i] = satS16(Int(Int32(bitPattern: i < 4 ? x[i] : y[i - 4]))) }
            return fromW(o)
        case 0x64:
            let x = asB(a), y = asB(s); var o = B16()
            for i in 0..<16 { o[i] = Int8(bitPattern: x[i]) > Int8(bitPattern: y[i]) ? 0xFF : 0 }
            return fromB(o)
        case 0x65:
            let x = asW(a), y = asW(s); var o = W8()
            for i in 0..<8 { o[i] = Int16(bitPattern: x[i]) > Int16(bitPattern: y[i]) ? 0xFFFF : 0 }
            return fromW(o)
        case 0x66:
            let x = asD(a), y = asD(s); var o = D4()
            for i in 0..<4 { o[i] = Int32(bitPattern: x[i]) > Int32(bitPattern: y[i]) ? 0xFFFF_FFFF : 0 }
            return fromD(o)
        case 0x74: return fromB(B16(repeating: 0).replacing(with: 0xFF, where: asB(a) .== asB(s)))
        case 0x75: return fromW(W8(repeating: 0).replacing(with: 0xFFFF, where: asW(a) .== asW(s)))
        case 0x76: return fromD(D4(repeating: 0).replacing(with: 0xFFFF_FFFF, where: asD(a) .== asD(s)))
        case 0xD1: return shiftW(a, s[0], 0)
        case 0xD2: return shiftD(a, s[0], 0)
        case 0xD3: return shiftQ(a, s[0], 0)
        case 0xF1: return shiftW(a, s[0], 1)
        case 0xF2: return shiftD(a, s[0], 1)
        case 0xF3: return shiftQ(a, s[0], 1)
        case 0xE1: return shiftW(a, s[0], 2)
        case 0xE2: return shiftD(a, s[0], 2)
        case 0xD4: return a &+ s
        case 0xFB: return a &- s
        case 0xFC: return fromB(asB(a) &+ asB(s))
        case 0xFD: return fromW(asW(a) &+ asW(s))
        case 0xFE: return fromD(asD(a) &+ asD(s))
        case 0xF8: return fromB(asB(a) &- asB(s))
        case 0xF9: return fromW(asW(a) &- asW(s))
        case 0xFA: return fromD(asD(a) &- asD(s))
        case 0xD5: return fromW(asW(a) &* asW(s))
        case 0xE5, 0xE4:
            let x = asW(a), y = asW(s); var o = W8()
            for i in 0..<8 {
                if b == 0xE5 { o[i] = UInt16(truncatingIfNeeded: (Int32(Int16(bitPattern: x[i])) * Int32(Int16(bitPattern: y[i]))) >> 16) }
                else { o[i] = UInt16(truncatingIfNeeded: (UInt32(x[i]) * UInt32(y[i])) >> 16) }
            }
            return fromW(o)
        case 0xF4:
            return V2((a[0] & 0xFFFF_FFFF) &* (s[0] & 0xFFFF_FFFF), (a[1] & 0xFFFF_FFFF) &* (s[1] & 0xFFFF_FFFF))
        case 0xF5:
            let x = asW(a), y = asW(s); var o = D4()
            for i in 0..<4 {
                let p0 = Int32(Int16(bitPattern: x[2 * i])) &* Int32(Int16(bitPattern: y[2 * i]))
                let p1 = Int32(Int16(bitPattern: x[2 * i + 1])) &* Int32(Int16(bitPattern: y[2 * i + 1]))
                o[i] = UInt32(bitPattern: p0 &+ p1)
            }
            return fromD(o)
        case 0xF6:
            let x = asB(a), y = asB(s)
            var s0: UInt64 = 0, s1: UInt64 = 0
            for i in 0..<8 { s0 += UInt64(x[i] > y[i] ? x[i] - y[i] : y[i] - x[i]) }
            for i in 8..<16 { s1 += UInt64(x[i] > y[i] ? x[i] - y[i] : y[i] - x[i]) }
            return V2(s0, s1)
        case 0xD8, 0xD9, 0xDC, 0xDD, 0xE8, 0xE9, 0xEC, 0xED:
            if b == 0xD8 || b == 0xDC || b == 0xE8 || b == 0xEC {
                let x = asB(a), y = asB(s); var o = B16()
                for i in 0..<16 {
                    switch b {
                    case 0xD8: o[i] = x[i] > y[i] ? x[i] - y[i] : 0
                    case 0xDC: o[i] = UInt8(clamping: Int(x[i]) + Int(y[i]))
                    case 0xE8: o[i] = satS8(Int(Int8(bitPattern: x[i])) - Int(Int8(bitPattern: y[i])))
                    default: o[i] = satS8(Int(Int8(bitPattern: x[i])) + Int(Int8(bitPattern: y[i])))
                    }
                }
                return fromB(o)
            }
            let x = asW(a), y = asW(s); var o = W8()
            for i in 0..<8 {
                switch b {
                case 0xD9: o[i] = x[i] > y[i] ? x[i] - y[i] : 0
                case 0xDD: o[i] = UInt16(clamping: Int(x[i]) + Int(y[i]))
                case 0xE9: o[i] = satS16(Int(Int16(bitPattern: x[i])) - Int(Int16(bitPattern: y[i])))
                default: o[i] = satS16(Int(Int16(bitPattern: x[i])) + Int(Int16(bitPattern: y[i])))
                }
            }
            return fromW(o)
        case 0xDA: return fromB(pointwiseMin(asB(a), asB(s)))
        case 0xDE: return fromB(pointwiseMax(asB(a), asB(s)))
        case 0xEA, 0xEE:
            let x = asW(a), y = asW(s); var o = W8()
            for i in 0..<8 {
                let p = Int16(bitPattern: x[i]), q = Int16(bitPattern: y[i])
                o[i] = UInt16(bitPattern: b == 0xEA ? min(p, q) : max(p, q))
            }
            return fromW(o)
        case 0xE0:
            let x = asB(a), y = asB(s); var o = B16()
            for i in 0..<16 { o[i] = UInt8((UInt16(x[i]) + UInt16(y[i]) + 1) >> 1) }
            return fromB(o)
        case 0xE3:
            let x = asW(a), y = asW(s); var o = W8()
            for i in 0..<8 { o[i] = UInt16((UInt32(x[i]) + UInt32(y[i]) + 1) >> 1) }
            return fromW(o)
        default:
            throw udFault()
        }
    }

    func sseFloatArith(_ b: Int, _ p: Int) throws(X86Fault) {
        let g = d.reg
        func opD(_ x: Double, _ y: Double) -> Double {
            switch b {
            case 0x51: return y.squareRoot()
            case 0x58: return x + y
            case 0x59: return x * y
            case 0x5C: return x - y
            case 0x5D: return (x < y) ? x : y
            case 0x5E: return x / y
            default: return (x > y) ? x : y
            }
        }
        func opF(_ x: Float, _ y: Float) -> Float {
            switch b {
            case 0x51: return y.squareRoot()
            case 0x58: return x + y
            case 0x59: return x * y
            case 0x5C: return x - y
            case 0x5D: return (x < y) ? x : y
            case 0x5E: return x / y
            default: return (x > y) ? x : y
            }
        }
        var a = xr(g)
        switch p {
        case 3:
            let y = Float(bitPattern: UInt32(truncatingIfNeeded: try xsrcLow(4)))
            let x = Float(bitPattern: UInt32(truncatingIfNeeded: a[0]))
            a[0] = (a[0] & ~0xFFFF_FFFF) | UInt64(opF(x, y).bitPattern)
        case 2:
            a[0] = opD(Double(bitPattern: a[0]), Double(bitPattern: try xsrcLow(8))).bitPattern
        case 1:
            let s = try xsrc(aligned: true)
            a = V2(opD(Double(bitPattern: a[0]), Double(bitPattern: s[0])).bitPattern,
                   opD(Double(bitPattern: a[1]), Double(bitPattern: s[1])).bitPattern)
        default:
            let s = asD(try xsrc(aligned: true)); var x = asD(a)
            for i in 0..<4 { x[i] = opF(Float(bitPattern: x[i]), Float(bitPattern: s[i])).bitPattern }
            a = fromD(x)
        }
        xw(g, a)
    }

    func sseCompare(_ p: Int) throws(X86Fault) {
        let g = d.reg, pred = Int(d.imm & 7)
        func cmp(_ x: Double, _ y: Double) -> Bool {
            switch pred {
            case 0: return x == y
            case 1: return x < y
            case 2: return x <= y
            case 3: return x.isNaN || y.isNaN
            case 4: return !(x == y)
            case 5: return !(x < y)
            case 6: return !(x <= y)
            default: return !(x.isNaN || y.isNaN)
            }
        }
        var a = xr(g)
        switch p {
        case 3:
            let y = Double(Float(bitPattern: UInt32(truncatingIfNeeded: try xsrcLow(4))))
            let x = Double(Float(bitPattern: UInt32(truncatingIfNeeded: a[0])))
            a[0] = (a[0] & ~0xFFFF_FFFF) | (cmp(x, y) ? 0xFFFF_FFFF : 0)
        case 2:
            a[0] = cmp(Double(bitPattern: a[0]), Double(bitPattern: try xsrcLow(8))) ? .max : 0
        case 1:
            let s = try xsrc(aligned: true)
            a = V2(cmp(Double(bitPattern: a[0]), Double(bitPattern: s[0])) ? .max : 0,
                   cmp(Double(bitPattern: a[1]), Double(bitPattern: s[1])) ? .max : 0)
        default:
            let s = asD(try xsrc(aligned: true)); var x = asD(a)
            for i in 0..<4 {
                x[i] = cmp(Double(Float(bitPattern: x[i])), Double(Float(bitPattern: s[i]))) ? 0xFFFF_FFFF : 0
            }
            a = fromD(x)
        }
        xw(g, a)
    }

    // MARK: FXSAVE / FXRSTOR

    func fxsave(_ ea: UInt64) throws(X86Fault) {
        let la = try linear(d.seg, ea)
        if la & 15 != 0 { throw gpFault() }
        for off in stride(from: UInt64(0), to: 512, by: 8) { _ = try rmwPointer((la &+ off) & linearMask, 8) }
        try saveX87Image(la)
        try saveMXCSRImage(la)
        if cr4 & X86Bits.cr4OSFXSR != 0 { try saveXMMImage(la) }
    }

    func fxrstor(_ ea: UInt64) throws(X86Fault) {
        let la = try linear(d.seg, ea)
        if la & 15 != 0 { throw gpFault() }
        _ = try imageRead(la, 511, 1)    // both pages readable before anything changes
        let newMXCSR = try loadMXCSRImage(la)
        var f = try loadX87Image(la)
        if cr4 & X86Bits.cr4OSFXSR != 0 { try loadXMMImage(la) }
        f.updateSummary()
        fpu = f
        mxcsr = newMXCSR
    }

    // The FXSAVE image's parts, also the XSAVE area's legacy region (`XSave.swift`): the
    // x87 state (bytes 0-23, 32-159; REX.W: 64-bit FIP/FDP), MXCSR and MXCSR_MASK (24-31),
    // the XMM registers (160-415; XMM8-15 in 64-bit mode only). `la` is checked already.

    private func imageWrite(_ la: UInt64, _ off: UInt64, _ size: Int, _ v: UInt64) throws(X86Fault) {
        try writeLinear((la &+ off) & linearMask, size, v, user: cpl == 3)
    }

    func imageRead(_ la: UInt64, _ off: UInt64, _ size: Int) throws(X86Fault) -> UInt64 {
        try readLinear((la &+ off) & linearMask, size, user: cpl == 3)
    }

    func saveX87Image(_ la: UInt64) throws(X86Fault) {
        func w(_ off: UInt64, _ size: Int, _ v: UInt64) throws(X86Fault) { try imageWrite(la, off, size, v) }
        try w(0, 2, UInt64(fpu.fcw))
        try w(2, 2, UInt64(fpu.fsw))
        try w(4, 1, UInt64(fpu.ftw))
        try w(5, 1, 0)
        try w(6, 2, UInt64(fpu.fop & 0x7FF))
        if d.rexW {
            try w(8, 8, fpu.fip); try w(16, 8, fpu.fdp)
        } else {
            try w(8, 4, fpu.fip & 0xFFFF_FFFF); try w(12, 4, UInt64(fpu.fcs))
            try w(16, 4, fpu.fdp & 0xFFFF_FFFF); try w(20, 4, UInt64(fpu.fds))
        }
        for i in 0..<8 {
            let r = (fpu.top + i) & 7
            try w(32 + UInt64(i) * 16, 8, fpu.mant[r])
            try w(40 + UInt64(i) * 16, 8, UInt64(fpu.sexp[r]))
        }
    }

    func saveMXCSRImage(_ la: UInt64) throws(X86Fault) {
        try imageWrite(la, 24, 4, UInt64(mxcsr))
        try imageWrite(la, 28, 4, 0xFFFF)   // MXCSR_MASK: DAZ supported
    }

    func saveXMMImage(_ la: UInt64) throws(X86Fault) {
        for i in 0..<(mode64 ? 16 : 8) {
            try imageWrite(la, 160 + UInt64(i) * 16, 8, xmm[i * 2])
            try imageWrite(la, 168 + UInt64(i) * 16, 8, xmm[i * 2 + 1])
        }
    }

    /// The image's MXCSR; #GP for reserved bits.
    func loadMXCSRImage(_ la: UInt64) throws(X86Fault) -> UInt32 {
        let v = UInt32(try imageRead(la, 24, 4))
        if v & 0xFFFF_0000 != 0 { throw gpFault() }
        return v
    }

    /// The x87 state of the image (the caller stores it and updates its summary).
    func loadX87Image(_ la: UInt64) throws(X86Fault) -> X87State {
        func rd(_ off: UInt64, _ size: Int) throws(X86Fault) -> UInt64 { try imageRead(la, off, size) }
        var f = fpu
        f.fcw = X87State.loadedFCW(try rd(0, 2)); f.fsw = UInt16(try rd(2, 2)); f.ftw = UInt8(try rd(4, 1))
        f.fop = UInt16(try rd(6, 2) & 0x7FF)
        if d.rexW {
            f.fip = try rd(8, 8); f.fdp = try rd(16, 8); f.fcs = 0; f.fds = 0
        } else {
            f.fip = try rd(8, 4); f.fcs = UInt16(try rd(12, 2)); f.fdp = try rd(16, 4); f.fds = UInt16(try rd(20, 2))
        }
        for i in 0..<8 {
            let r = (f.top + i) & 7
            f.mant[r] = try rd(32 + UInt64(i) * 16, 8)
            f.sexp[r] = UInt16(try rd(40 + UInt64(i) * 16, 2))
        }
        return f
    }

    func loadXMMImage(_ la: UInt64) throws(X86Fault) {
        for i in 0..<(mode64 ? 16 : 8) {
            xmm[i * 2] = try imageRead(la, 160 + UInt64(i) * 16, 8)
            xmm[i * 2 + 1] = try imageRead(la, 168 + UInt64(i) * 16, 8)
        }
    }
}
