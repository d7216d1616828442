import Hypervisor

/// SSE/SSE2 floating-point instructions run as the same instruction on the host (through
/// `HostFloat`'s fixed thunks): results in every MXCSR rounding mode with DAZ/FTZ, the
/// exception flags, and the reciprocal estimates (RCPSS/RCPPS/RSQRTSS/RSQRTPS) are what the
/// host CPU computes. The thunk runs with every exception masked; the guest's masks are then
/// applied here: an unmasked exception leaves the destination unchanged, sets its flags and
/// raises #XM (#UD when CR4.OSXMMEXCPT is clear).
extension X86CPU {
    /// The memory operand size of a host-run form, 16 for a full (aligned) vector; nil if
    /// the opcode/prefix pair is not run on the host.
    static func hostSSEOperandSize(_ b: Int, _ p: Int) -> Int? {
        switch b {
        case 0x51, 0x58, 0x59, 0x5C, 0x5D, 0x5E, 0x5F, 0xC2: return p == 3 ? 4 : (p == 2 ? 8 : 16)
        case 0x52, 0x53: return p == 3 ? 4 : (p == 0 ? 16 : nil)
        case 0x5A: return p == 3 ? 4 : (p == 1 ? 16 : 8)
        case 0x5B: return p == 2 ? nil : 16
        case 0xE6: return p == 0 ? nil : (p == 3 ? 8 : 16)
        case 0x2E, 0x2F: return p == 0 ? 4 : (p == 1 ? 8 : nil)
        case 0x2A: return p >= 2 ? 0 : nil
        case 0x2C, 0x2D: return p == 3 ? 4 : (p == 2 ? 8 : nil)
        default: return isSSE3Arithmetic(b, p) ? 16 : nil
        }
    }

    /// Runs `b` (with mandatory prefix `p`) on the host; false if it is not a host-run form.
    func sseOnHost(_ b: Int, _ p: Int) throws(X86Fault) -> Bool {
        guard let size = X86CPU.hostSSEOperandSize(b, p) else { return false }
        if X86CPU.isSSE3Arithmetic(b, p) && !cpuLevelHas(.sse3) { throw udFault() }
        let prefix: [UInt8] = [[], [0x66], [0xF2], [0xF3]][p]
        let gprForm = b == 0x2A || b == 0x2C || b == 0x2D
        var enc = prefix + (gprForm && d.rexW ? [0x48] : []) + [0x0F, UInt8(b), b == 0x2A ? 0xC0 : 0xC1]
        if b == 0xC2 { enc.append(UInt8(d.imm & 7)) }
        let a = xr(d.reg)
        var s = V2(0, 0), rax: UInt64 = 0
        if b == 0x2A {
            rax = try readRM(d.rexW ? 8 : 4)
        } else if d.mod == 3 {
            s = xr(d.rm)
        } else if size == 16 {
            s = try xsrc(aligned: true)
        } else {
            s = V2(try readMem(d.seg, effectiveAddress(), size), 0)
        }
        guard let (out, outRAX, outFlags, raised) = runHostSSE(enc, a, s, rax: rax) else { return false }
        try applySIMDExceptions(raised)
        switch b {
        case 0x2C, 0x2D: setReg(d.reg, d.rexW ? 8 : 4, outRAX)
        case 0x2E, 0x2F: setEager(outFlags & (Flag.zf | Flag.pf | Flag.cf))
        default: xw(d.reg, out)
        }
        return true
    }

    /// Runs one thunk encoding on (xmm0 = a, xmm1 = s, xmm2 = c, rax) under the guest's MXCSR
    /// with every exception masked: (xmm0, rax, rflags, the exception flags raised), or nil
    /// if the encoding is not in the table. With underflow unmasked (MXCSR.UM clear) the
    /// hardware ignores FTZ and signals underflow for every tiny result, exact ones too,
    /// while a masked run flags only inexact tiny ones: so the run is made without FTZ, and
    /// unless it already raised UE or an unmasked pre-computation exception (which stops
    /// the instruction first), once more with FTZ, which flags every tiny result with UE.
    func runHostSSE(_ enc: [UInt8], _ a: V2, _ s: V2, rax: UInt64 = 0, c: V2 = V2(0, 0)) -> (V2, UInt64, UInt64, UInt32)? {
        let ftz: UInt32 = 0x8000, ue: UInt32 = 0x10
        let underflowUnmasked = mxcsr & 0x800 == 0
        let control = (mxcsr & ~0x3F & (underflowUnmasked ? ~ftz : ~0)) | 0x1F80
        guard var result = runHostSSEOnce(enc, a, s, rax: rax, c: c, control: control) else { return nil }
        let masks = (mxcsr >> 7) & 0x3F
        if underflowUnmasked && result.3 & ue == 0 && result.3 & 7 & ~masks == 0,
           let flushed = runHostSSEOnce(enc, a, s, rax: rax, c: c, control: control | ftz) {
            result.3 |= flushed.3 & ue
        }
        return result
    }

    /// One thunk run under MXCSR `control` (flags clear, every exception masked).
    private func runHostSSEOnce(_ enc: [UInt8], _ a: V2, _ s: V2, rax: UInt64, c: V2, control guestMXCSR: UInt32) -> (V2, UInt64, UInt64, UInt32)? {
        var out = a, outRAX: UInt64 = 0, outFlags: UInt64 = 0, raised: UInt32 = 0
        let ran = withUnsafeTemporaryAllocation(byteCount: HostFloat.sseContextSize, alignment: 16) { buf -> Bool in
            // SAFETY: the buffer is sseContextSize bytes, 16-aligned, and only the thunk and
            // these stores/loads at the context offsets touch it.
            let ctx = buf.baseAddress!
            ctx.storeBytes(of: a[0], toByteOffset: HostFloat.sseX0, as: UInt64.self)
            ctx.storeBytes(of: a[1], toByteOffset: HostFloat.sseX0 + 8, as: UInt64.self)
            ctx.storeBytes(of: s[0], toByteOffset: HostFloat.sseX1, as: UInt64.self)
            ctx.storeBytes(of: s[1], toByteOffset: HostFloat.sseX1 + 8, as: UInt64.self)
            ctx.storeBytes(of: c[0], toByteOffset: HostFloat.sseX2, as: UInt64.self)
            ctx.storeBytes(of: c[1], toByteOffset: HostFloat.sseX2 + 8, as: UInt64.self)
            ctx.storeBytes(of: rax, toByteOffset: HostFloat.sseRAX, as: UInt64.self)
            ctx.storeBytes(of: 0x2, toByteOffset: HostFloat.sseFlags, as: UInt64.self)
            ctx.storeBytes(of: guestMXCSR, toByteOffset: HostFloat.sseMXCSR, as: UInt32.self)
            guard HostFloat.shared.runSSE(HostFloat.sseKey(enc), ctx) else { return false }
            out = V2(ctx.load(fromByteOffset: HostFloat.sseX0, as: UInt64.self),
                     ctx.load(fromByteOffset: HostFloat.sseX0 + 8, as: UInt64.self))
            outRAX = ctx.load(fromByteOffset: HostFloat.sseRAX, as: UInt64.self)
            outFlags = ctx.load(fromByteOffset: HostFloat.sseFlags, as: UInt64.self)
            raised = ctx.load(fromByteOffset: HostFloat.sseMXCSR, as: UInt32.self) & 0x3F
            return true
        }
        return ran ? (out, outRAX, outFlags, raised) : nil
    }

    /// CVTPI2PS/CVTPS2PI/CVTTPS2PI (0F 2A/2D/2C) and CVTPI2PD/CVTPD2PI/CVTTPD2PI (66 0F
    /// 2A/2D/2C): run as the xmm conversion of the same lanes (CVTDQ2PS, CVTPS2DQ, CVTTPS2DQ,
    /// CVTDQ2PD, CVTPD2DQ, CVTTPD2DQ) with the unused lanes zero, which convert exactly.
    /// An MMX register operand switches the x87 unit to MMX use.
    func mmxConvert(_ b: Int, _ p: Int) throws(X86Fault) {
        let toMMX = b != 0x2A
        let mmOperand = toMMX || d.mod == 3
        if mmOperand { try mmxEnter() }
        let s: V2
        if b == 0x2A {
            s = V2(try mmSource(), 0)
        } else if p == 1 {
            s = try xsrc(aligned: true)
        } else {
            s = d.mod == 3 ? V2(xmm[d.rm * 2], 0) : V2(try readMem(d.seg, effectiveAddress(), 8), 0)
        }
        let enc: [UInt8]
        switch (b, p) {
        case (0x2A, 0): enc = [0x0F, 0x5B, 0xC1]
        case (0x2D, 0): enc = [0x66, 0x0F, 0x5B, 0xC1]
        case (0x2C, 0): enc = [0xF3, 0x0F, 0x5B, 0xC1]
        case (0x2A, _): enc = [0xF3, 0x0F, 0xE6, 0xC1]
        case (0x2D, _): enc = [0xF2, 0x0F, 0xE6, 0xC1]
        default: enc = [0x66, 0x0F, 0xE6, 0xC1]
        }
        guard let (out, _, _, raised) = runHostSSE(enc, V2(0, 0), s) else { throw udFault() }
        try applySIMDExceptions(raised)
        if toMMX { mmWrite(d.reg, out[0]) } else if p == 0 { xw(d.reg, V2(out[0], xr(d.reg)[1])) } else { xw(d.reg, out) }
    }

    /// Records the exception flags an SSE operation raised (with every exception masked);
    /// if one is unmasked, the instruction faults instead of completing. Pre-computation
    /// exceptions (invalid, denormal, divide) take precedence: when one of them is unmasked,
    /// the post-computation flags are not set.
    func applySIMDExceptions(_ raised: UInt32) throws(X86Fault) {
        let masks = (mxcsr >> 7) & 0x3F
        let pre = raised & 0x7
        if pre & ~masks != 0 {
            mxcsr |= pre
            throw simdFault()
        }
        mxcsr |= raised
        if raised & ~masks != 0 { throw simdFault() }
    }

    func simdFault() -> X86Fault { cr4 & X86Bits.cr4OSXMMEXCPT != 0 ? fault(Vec.xm) : udFault() }
}
