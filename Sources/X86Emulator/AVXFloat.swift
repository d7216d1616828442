import Hypervisor

/// The AVX float instructions, FMA3 and F16C, run on the host like the SSE ones
/// (`SSEHost.swift`): each 128-bit lane goes through the legacy SSE thunk of the same
/// operation (VEX's extra source is the thunk's destination input), so results and MXCSR
/// flags are the host's bit for bit; the flags of both lanes are combined before the
/// guest's masks are applied (an unmasked exception leaves the destination unchanged and
/// raises #XM/#UD). VCMP with predicates 8-31, FMA (one rounding: the host's fused
/// instruction) and F16C have no legacy form and run as VEX.128 thunks, so they need a
/// host with AVX/FMA/F16C (`HostFloat.hostHasAVX`; without it they raise #UD, and level
/// v3 is not offered there).
extension X86CPU {
    /// Runs one thunk; adds its exception flags to `raised`.
    private func onHost(_ enc: [UInt8], _ a: V2, _ s: V2, c: V2 = V2(0, 0), rax: UInt64 = 0,
                        _ raised: inout UInt32) throws(X86Fault) -> (V2, UInt64, UInt64) {
        if enc[0] == 0xC4 || enc[0] == 0xC5, !HostFloat.hostHasAVX { throw udFault() }
        guard let (o, outRAX, f, r) = runHostSSE(enc, a, s, rax: rax, c: c) else { throw udFault() }
        raised |= r
        return (o, outRAX, f)
    }

    /// `enc` on each lane of (a, s, c); the high lane only for VEX.256.
    private func onHostLanes(_ enc: [UInt8], _ a: V4, _ s: V4, c: V4 = V4(0, 0, 0, 0)) throws(X86Fault) -> V4 {
        var raised: UInt32 = 0
        let lo = try onHost(enc, a.lowHalf, s.lowHalf, c: c.lowHalf, &raised).0
        let hi = d.vexL ? try onHost(enc, a.highHalf, s.highHalf, c: c.highHalf, &raised).0 : V2(0, 0)
        try applySIMDExceptions(raised)
        return V4(lowHalf: lo, highHalf: hi)
    }

    /// The scalar source: the low `size` bytes of a register or memory.
    private func scalarSource(_ size: Int) throws(X86Fault) -> V2 {
        d.mod == 3 ? xr(d.rm) : V2(try readMem(d.seg, effectiveAddress(), size), 0)
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    /// The VEX 0F-map float instructions; false if `b` with VEX.pp `p` is none of them.
    func avxFloatMap1(_ b: Int, _ p: Int) throws(X86Fault) -> Bool {
        let sp = [0, 1, 3, 2][p]     // SSE's prefix index: 0 none, 1 66, 2 F2, 3 F3
        let prefix: [UInt8] = [[], [0x66], [0xF2], [0xF3]][sp]
        let g = d.reg, v = d.vexV
        let scalarSize = sp == 3 ? 4 : 8
        var raised: UInt32 = 0
        switch b {
        case 0x51, 0x52, 0x53, 0x58, 0x59, 0x5C, 0x5D, 0x5E, 0x5F, 0xC2:
            if (b == 0x52 || b == 0x53) && sp != 0 && sp != 3 { return false }
            let unary = b <= 0x53
            let enc: [UInt8] = b == 0xC2 ? [0xC5, 0xF8 | UInt8(p), 0xC2, 0xC1, UInt8(d.imm & 31)] : prefix + [0x0F, UInt8(b), 0xC1]
            if sp >= 2 {
                let out = try onHost(enc, xr(v), try scalarSource(scalarSize), &raised).0
                try applySIMDExceptions(raised)
                yw128(g, out)
            } else {
                if unary { try vexNoV() }
                ywL(g, try onHostLanes(enc, unary ? V4(0, 0, 0, 0) : yr(v), try vsrc()))
            }
        case 0xD0, 0x7C, 0x7D:
            if sp != 1 && sp != 2 { return false }
            ywL(g, try onHostLanes(prefix + [0x0F, UInt8(b), 0xC1], yr(v), try vsrc()))
        case 0x5B:
            if sp == 2 { return false }
            try vexNoV()
            ywL(g, try onHostLanes(prefix + [0x0F, 0x5B, 0xC1], V4(0, 0, 0, 0), try vsrc()))
        case 0x5A, 0xE6:
            if b == 0xE6 && sp == 0 { return false }
            let enc = prefix + [0x0F, UInt8(b), 0xC1]
            if b == 0x5A && sp >= 2 {
                let out = try onHost(enc, xr(v), try scalarSource(scalarSize), &raised).0
                try applySIMDExceptions(raised)
                yw128(g, out)
                return true
            }
            try vexNoV()
            if (b == 0x5A && sp == 0) || (b == 0xE6 && sp == 3) {
                // Widening (CVTPS2PD, CVTDQ2PD): 64 source bits per 128-bit result lane.
                let s: V2 = d.vexL ? try vsrc128() : try scalarSource(8)
                let lo = try onHost(enc, V2(0, 0), V2(s[0], 0), &raised).0
                let hi = d.vexL ? try onHost(enc, V2(0, 0), V2(s[1], 0), &raised).0 : V2(0, 0)
                try applySIMDExceptions(raised)
                ywL(g, V4(lowHalf: lo, highHalf: hi))
            } else {
                // Narrowing (CVTPD2PS, CVT(T)PD2DQ): 64 result bits per 128-bit source lane.
                let s = try vsrc()
                let lo = try onHost(enc, V2(0, 0), s.lowHalf, &raised).0
                let hi = d.vexL ? try onHost(enc, V2(0, 0), s.highHalf, &raised).0 : V2(0, 0)
                try applySIMDExceptions(raised)
                yw128(g, V2(lo[0], hi[0]))
            }
        case 0x2A:
            if sp < 2 { return false }
            let size = d.opSize == 8 ? 8 : 4
            let enc = prefix + (size == 8 ? [0x48] : []) + [0x0F, 0x2A, 0xC0]
            let out = try onHost(enc, xr(v), V2(0, 0), rax: try readRM(size), &raised).0
            try applySIMDExceptions(raised)
            yw128(g, out)
        case 0x2C, 0x2D:
            if sp < 2 { return false }
            try vexNoV()
            let size = d.opSize == 8 ? 8 : 4
            let enc = prefix + (size == 8 ? [0x48] : []) + [0x0F, UInt8(b), 0xC1]
            let outRAX = try onHost(enc, V2(0, 0), try scalarSource(scalarSize), &raised).1
            try applySIMDExceptions(raised)
            setReg(g, size, outRAX)
        case 0x2E, 0x2F:
            if sp > 1 { return false }
            try vexNoV()
            let f = try onHost(prefix + [0x0F, UInt8(b), 0xC1], xr(g), try scalarSource(sp == 0 ? 4 : 8), &raised).2
            try applySIMDExceptions(raised)
            setEager(f & (Flag.zf | Flag.pf | Flag.cf))
        default:
            return false
        }
        return true
    }

    /// VCVTPH2PS (0F 38 13) and FMA3 (0F 38 96-9F, A6-AF, B6-BF; W0 single, W1 double);
    /// false for other opcodes.
    func avxFloatMap2(_ b: Int) throws(X86Fault) -> Bool {
        let g = d.reg, v = d.vexV, w = d.rexW
        var raised: UInt32 = 0
        switch b {
        case 0x13:
            if w { throw udFault() }
            try vexNoV()
            let enc: [UInt8] = [0xC4, 0xE2, 0x79, 0x13, 0xC1]
            let s: V2 = d.vexL ? try vsrc128() : try scalarSource(8)
            let lo = try onHost(enc, V2(0, 0), V2(s[0], 0), &raised).0
            let hi = d.vexL ? try onHost(enc, V2(0, 0), V2(s[1], 0), &raised).0 : V2(0, 0)
            try applySIMDExceptions(raised)
            ywL(g, V4(lowHalf: lo, highHalf: hi))
        case 0x96...0x9F, 0xA6...0xAF, 0xB6...0xBF:
            let enc: [UInt8] = [0xC4, 0xE2, w ? 0xF1 : 0x71, UInt8(b), 0xC2]
            let scalar = b & 0xF >= 9 && b & 1 == 1
            if scalar {
                let out = try onHost(enc, xr(g), xr(v), c: try scalarSource(w ? 8 : 4), &raised).0
                try applySIMDExceptions(raised)
                yw128(g, out)
            } else {
                ywL(g, try onHostLanes(enc, yr(g), yr(v), c: try vsrc()))
            }
        default:
            return false
        }
        return true
    }

    /// VROUNDPS/PD/SS/SD, VDPPS/VDPPD and VCVTPS2PH (0F 3A 08-0B, 40, 41, 1D); false for
    /// other opcodes.
    func avxFloatMap3(_ b: Int) throws(X86Fault) -> Bool {
        let g = d.reg, v = d.vexV
        var raised: UInt32 = 0
        switch b {
        case 0x08, 0x09:
            try vexNoV()
            ywL(g, try onHostLanes([0x66, 0x0F, 0x3A, UInt8(b), 0xC1, UInt8(d.imm & 15)], V4(0, 0, 0, 0), try vsrc()))
        case 0x0A, 0x0B:
            let out = try onHost([0x66, 0x0F, 0x3A, UInt8(b), 0xC1, UInt8(d.imm & 15)], xr(v), try scalarSource(b == 0x0A ? 4 : 8), &raised).0
            try applySIMDExceptions(raised)
            yw128(g, out)
        case 0x40, 0x41:
            if b == 0x41 && d.vexL { throw udFault() }
            ywL(g, try onHostLanes([0x66, 0x0F, 0x3A, UInt8(b), 0xC1, UInt8(d.imm & 0xFF)], yr(v), try vsrc()))
        case 0x1D:
            // VCVTPS2PH xmm/m64 (m128 for VEX.256), xmm/ymm, imm8 (bits 7:3 ignored).
            if d.rexW { throw udFault() }
            try vexNoV()
            let enc: [UInt8] = [0xC4, 0xE3, 0x79, 0x1D, 0xC8, UInt8(d.imm & 7)]
            let src = yr(g)
            let lo = try onHost(enc, V2(0, 0), src.lowHalf, &raised).0[0]
            let hi = d.vexL ? try onHost(enc, V2(0, 0), src.highHalf, &raised).0[0] : 0
            try applySIMDExceptions(raised)
            if d.mod == 3 {
                yw128(d.rm, V2(lo, hi))
            } else if d.vexL {
                try vstore(V4(lo, hi, 0, 0), 16, aligned: false)
            } else {
                try writeMem(d.seg, effectiveAddress(), 8, lo)
            }
        default:
            return false
        }
        return true
    }
}
