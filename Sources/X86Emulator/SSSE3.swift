import Hypervisor

/// SSSE3 (x86-64-v2 and up): 0F 38 00-0B and 1C-1E, 0F 3A 0F, each in an MMX form (no
/// prefix, 64-bit mm registers) and an XMM form (66). PSHUFB, PHADDW/D, PHADDSW, PHSUBW/D,
/// PHSUBSW, PMADDUBSW, PMULHRSW, PSIGNB/W/D, PABSB/W/D and PALIGNR.
///
/// The lane arithmetic works on `width` bytes of the low end of a 128-bit value (8 for the
/// MMX forms, 16 for the XMM forms); the MMX form's high lane is zero and discarded.
extension X86CPU {
    /// True if `op` (0x200 | byte for 0F 38, 0x300 | byte for 0F 3A) is an SSSE3 opcode.
    static func isSSSE3Opcode(_ op: Int) -> Bool {
        switch op {
        case 0x200...0x20B, 0x21C...0x21E, 0x30F: return true
        default: return false
        }
    }

    /// Runs an SSSE3 instruction: the MMX form without a prefix, the XMM form with 66.
    func ssse3(_ op: Int) throws(X86Fault) {
        if !cpuLevelHas(.ssse3) || d.rep != 0 { throw udFault() }
        let imm = op == 0x30F ? Int(d.imm & 0xFF) : 0
        if d.has66 {
            try sseCheck()
            let a = xr(d.reg), s = try xsrc(aligned: true)
            xw(d.reg, X86CPU.ssse3Lanes(op & 0xFF, a, s, width: 16, imm: imm))
        } else {
            // The MMX forms are legacy SSE (exception type 4): CR4.OSFXSR applies too.
            try sseCheck()
            try mmxEnter()
            let g = d.reg & 7
            let s = try mmSource()
            mmWrite(g, X86CPU.ssse3Lanes(op & 0xFF, V2(mmRead(g), 0), V2(s, 0), width: 8, imm: imm)[0])
        }
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    /// The SSSE3 operation `b` (the opcode's last byte) on destination `a` and source `s`,
    /// `width` bytes wide.
    static func ssse3Lanes(_ b: Int, _ a: V2, _ s: V2, width: Int, imm: Int) -> V2 {
        switch b {
        case 0x00:  // PSHUFB
            let x = asB(a), y = asB(s); var o = B16()
            for i in 0..<width where y[i] & 0x80 == 0 { o[i] = x[Int(y[i]) & (width - 1)] }
            return fromB(o)
        case 0x01, 0x03, 0x05, 0x07:  // PHADDW, PHADDSW, PHSUBW, PHSUBSW
            let x = asW(a), y = asW(s); var o = W8()
            let n = width / 2, half = n / 2
            func h(_ v: W8, _ i: Int) -> UInt16 {
                let p = Int(Int16(bitPattern: v[2 * i])), q = Int(Int16(bitPattern: v[2 * i + 1]))
                let r = b <= 0x03 ? p + q : p - q
                return (b == 0x03 || b == 0x07) ? satS16(r) : UInt16(truncatingIfNeeded: r)
            }
            for i in 0..<half { o[i] = h(x, i); o[half + i] = h(y, i) }
            return fromW(o)
        case 0x02, 0x06:  // PHADDD, PHSUBD
            let x = asD(a), y = asD(s); var o = D4()
            let half = width / 8
            for i in 0..<half {
                o[i] = b == 0x02 ? x[2 * i] &+ x[2 * i + 1] : x[2 * i] &- x[2 * i + 1]
                o[half + i] = b == 0x02 ? y[2 * i] &+ y[2 * i + 1] : y[2 * i] &- y[2 * i + 1]
            }
            return fromD(o)
        case 0x04:  // PMADDUBSW: unsigned destination bytes times signed source bytes
            let x = asB(a), y = asB(s); var o = W8()
            for i in 0..<(width / 2) {
                let p0 = Int(x[2 * i]) * Int(Int8(bitPattern: y[2 * i]))
                let p1 = Int(x[2 * i + 1]) * Int(Int8(bitPattern: y[2 * i + 1]))
                o[i] = satS16(p0 + p1)
            }
            return fromW(o)
        case 0x08: return fromB(signLanes(asB(a), asB(s), count: width))      // PSIGNB
        case 0x09: return fromW(signLanes(asW(a), asW(s), count: width / 2))  // PSIGNW
        case 0x0A: return fromD(signLanes(asD(a), asD(s), count: width / 4))  // PSIGND
        case 0x0B:  // PMULHRSW
            let x = asW(a), y = asW(s); var o = W8()
            for i in 0..<(width / 2) {
                let p = Int32(Int16(bitPattern: x[i])) * Int32(Int16(bitPattern: y[i]))
                o[i] = UInt16(truncatingIfNeeded: ((p >> 14) + 1) >> 1)
            }
            return fromW(o)
        case 0x1C:  // PABSB
            let y = asB(s); var o = B16()
            for i in 0..<width { o[i] = Int8(bitPattern: y[i]).magnitude }
            return fromB(o)
        case 0x1D:  // PABSW
            let y = asW(s); var o = W8()
            for i in 0..<(width / 2) { o[i] = Int16(bitPattern: y[i]).magnitude }
            return fromW(o)
        case 0x1E:  // PABSD
            let y = asD(s); var o = D4()
            for i in 0..<(width / 4) { o[i] = Int32(bitPattern: y[i]).magnitude }
            return fromD(o)
        default:  // 0x0F PALIGNR: (a:s) shifted right by imm bytes
            let x = asB(a), y = asB(s); var o = B16()
            for i in 0..<width {
                let k = i + imm
                if k < width { o[i] = y[k] } else if k < 2 * width { o[i] = x[k - width] }
            }
            return fromB(o)
        }
    }

    /// PSIGN: each lane of `x` negated, zeroed or kept as the lane of `y` is negative,
    /// zero or positive (the first `count` lanes; the rest zero).
    static func signLanes<V: SIMD>(_ x: V, _ y: V, count: Int) -> V where V.Scalar: FixedWidthInteger & UnsignedInteger {
        var o = V()
        for i in 0..<count {
            let c = y[i]
            o[i] = c >> (V.Scalar.bitWidth - 1) != 0 ? 0 &- x[i] : (c == 0 ? 0 : x[i])
        }
        return o
    }
}
