import Hypervisor

/// SSE4.2 (x86-64-v2 and up): PCMPGTQ, CRC32 (Castagnoli) and the string compares
/// PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM with the whole imm8: element format
/// (bits 1:0: unsigned/signed bytes/words), aggregation (bits 3:2: equal any, ranges,
/// equal each, equal ordered), polarity (bits 5:4) and output selection (bit 6: most
/// significant index / expanded mask). POPCNT is in `Execute0F.swift`.
extension X86CPU {
    static func isSSE42Opcode(_ op: Int) -> Bool {
        op == 0x237 || op == 0x2F0 || op == 0x2F1 || (0x360...0x363).contains(op)
    }

    func sse42(_ op: Int) throws(X86Fault) {
        if op == 0x2F0 || op == 0x2F1 {
            // CRC32 (F2; without it 0F 38 F0/F1 is MOVBE, `V3Integer.swift`).
            // CR0.EM/TS and CR4.OSFXSR do not apply.
            if !cpuLevelHas(.sse42) || d.rep != 0xF2 { throw udFault() }
            try crc32(op == 0x2F0 ? 1 : d.opSize)
            return
        }
        if !cpuLevelHas(.sse42) || !d.has66 || d.rep != 0 { throw udFault() }
        try sseCheck()
        if op == 0x237 {
            let a = xr(d.reg), s = try xsrc(aligned: true)
            func gt(_ x: UInt64, _ y: UInt64) -> UInt64 { Int64(bitPattern: x) > Int64(bitPattern: y) ? .max : 0 }
            xw(d.reg, V2(gt(a[0], s[0]), gt(a[1], s[1])))
            return
        }
        try stringCompareInsn(op)
    }

    /// PCMPESTRI/ESTRM/ISTRI/ISTRM (`op` 0x360-0x363) once the encoding's checks are made:
    /// legacy SSE's (CR0.EM, CR4.OSFXSR, CR0.TS) in `sse42`, VEX's (XCR0, CR4.OSXSAVE,
    /// CR0.TS; `avxCheck`) for VPCMPxSTRx. The memory operand need not be aligned.
    func stringCompareInsn(_ op: Int) throws(X86Fault) {
        let a = xr(d.reg), b = try xsrc(aligned: false)
        let imm = Int(d.imm & 0xFF)
        let n = imm & 1 != 0 ? 8 : 16
        let explicit = op <= 0x361
        let la: Int, lb: Int
        if explicit {
            la = X86CPU.explicitLength(r[0], wide: d.rexW, n: n)
            lb = X86CPU.explicitLength(r[2], wide: d.rexW, n: n)
        } else {
            la = X86CPU.implicitLength(a, n: n)
            lb = X86CPU.implicitLength(b, n: n)
        }
        let res = X86CPU.stringCompare(a, b, la: la, lb: lb, imm: imm)
        if op & 1 != 0 {
            // Index (ECX): n when no bit is set, else the least or most significant one.
            let idx = res == 0 ? n : (imm & 0x40 != 0 ? 31 - UInt32(res).leadingZeroBitCount : res.trailingZeroBitCount)
            setReg(1, 4, UInt64(idx))
        } else {
            xw(0, X86CPU.stringMask(res, n: n, expand: imm & 0x40 != 0))
        }
        var f: UInt64 = 0
        if res != 0 { f |= Flag.cf }
        if lb < n { f |= Flag.zf }
        if la < n { f |= Flag.sf }
        if res & 1 != 0 { f |= Flag.of }
        setEager(f)
    }

    /// CRC32 with the Castagnoli polynomial (reflected 0x82F63B78), no inversion: the
    /// 32-bit destination accumulates the `size`-byte source; the result is zero-extended.
    func crc32(_ size: Int) throws(X86Fault) {
        let v = try readRM(size)
        var crc = UInt32(truncatingIfNeeded: r[d.reg])
        for k in 0..<size {
            crc ^= UInt32(truncatingIfNeeded: v >> UInt64(8 * k)) & 0xFF
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        }
        setReg(d.reg, 4, UInt64(crc))
    }

    /// |EAX| (|RAX| with REX.W) saturated to the element count.
    static func explicitLength(_ v: UInt64, wide: Bool, n: Int) -> Int {
        let m = wide ? Int64(bitPattern: v).magnitude : UInt64(Int32(truncatingIfNeeded: v).magnitude)
        return m >= UInt64(n) ? n : Int(m)
    }

    /// The index of the first zero element, or `n`.
    static func implicitLength(_ v: V2, n: Int) -> Int {
        for i in 0..<n where stringElement(v, i, n: n, signed: false) == 0 { return i }
        return n
    }

    @inline(__always) static func stringElement(_ v: V2, _ i: Int, n: Int, signed: Bool) -> Int {
        if n == 16 {
            let x = asB(v)[i]
            return signed ? Int(Int8(bitPattern: x)) : Int(x)
        }
        let x = asW(v)[i]
        return signed ? Int(Int16(bitPattern: x)) : Int(x)
    }

    /// IntRes2 of a string compare: the aggregation of element comparisons between `a`
    /// (xmm1, `la` valid elements) and `b` (xmm2/m128, `lb` valid), with the polarity
    /// applied; bit j describes b's element j.
    static func stringCompare(_ a: V2, _ b: V2, la: Int, lb: Int, imm: Int) -> Int {
        let n = imm & 1 != 0 ? 8 : 16, signed = imm & 2 != 0
        // Fixed-size lanes (no heap arrays: glibc's string functions run this per 16 bytes).
        var ea = SIMD16<Int32>(), eb = SIMD16<Int32>()
        for i in 0..<n {
            ea[i] = Int32(stringElement(a, i, n: n, signed: signed))
            eb[i] = Int32(stringElement(b, i, n: n, signed: signed))
        }
        var r1 = 0
        switch (imm >> 2) & 3 {
        case 0:  // equal any: b[j] is one of a's valid elements
            for j in 0..<lb where (0..<la).contains(where: { ea[$0] == eb[j] }) { r1 |= 1 << j }
        case 1:  // ranges: a holds (low, high) pairs
            for j in 0..<lb {
                var i = 0
                while i + 1 < la {
                    if ea[i] <= eb[j] && eb[j] <= ea[i + 1] { r1 |= 1 << j; break }
                    i += 2
                }
            }
        case 2:  // equal each: both invalid compares true, one invalid false
            for i in 0..<n {
                let va = i < la, vb = i < lb
                if va && vb ? ea[i] == eb[i] : !va && !vb { r1 |= 1 << i }
            }
        default:  // equal ordered: a (as a substring) starts at b's element j
            for j in 0..<n {
                var match = true
                for k in 0..<(n - j) where k < la {
                    if j + k >= lb || ea[k] != eb[j + k] { match = false; break }
                }
                if match { r1 |= 1 << j }
            }
        }
        let all = (1 << n) - 1
        switch (imm >> 4) & 3 {
        case 1: return ~r1 & all
        case 3: return r1 ^ ((1 << lb) - 1)
        default: return r1
        }
    }

    /// PCMPxSTRM's xmm0: the bit mask zero-extended, or each element all ones or zero.
    static func stringMask(_ res: Int, n: Int, expand: Bool) -> V2 {
        if !expand { return V2(UInt64(res), 0) }
        if n == 16 {
            var o = B16()
            for i in 0..<16 where res >> i & 1 != 0 { o[i] = 0xFF }
            return fromB(o)
        }
        var o = W8()
        for i in 0..<8 where res >> i & 1 != 0 { o[i] = 0xFFFF }
        return fromW(o)
    }
}
