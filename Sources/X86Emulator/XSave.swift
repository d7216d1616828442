import Hypervisor

/// XSAVE, XRSTOR, XGETBV, XSETBV and XCR0 at level v3 (with CR4.OSXSAVE), for the state
/// components implemented: x87 (bit 0), SSE (bit 1) and AVX (bit 2, the YMM upper halves).
/// CPUID leaf 0xD offers 0x7 and the standard form: the FXSAVE-format legacy region, the
/// 64-byte header, AVX at 576 (256 bytes), 832 bytes in all; no XSAVEC/XSAVES/XGETBV1.
/// XINUSE is taken as always 1 (allowed: an XSAVE may report a component in its initial
/// state as in use), so XSAVE sets XSTATE_BV for every requested component. XSAVEOPT
/// (0F AE /6, CPUID 0xD.1:EAX[0]) is XSAVE: its init and modified optimizations may skip
/// writes, never required, and with XINUSE 1 it writes what XSAVE writes.
extension X86Bits {
    static let cr4OSXSAVE: UInt64 = 1 << 18
}

extension X86CPU {
    /// The XCR0 bits this CPU supports.
    static let xcr0Supported: UInt64 = 0x7
    /// The AVX component (YMM0-15 bits 255:128) in the standard form.
    static let ymmHighOffset: UInt32 = 576, ymmHighSize: UInt32 = 256

    /// Bytes of the standard-form XSAVE area holding the components in `features`.
    static func xsaveAreaSize(_ features: UInt64) -> UInt32 {
        features & 4 != 0 ? ymmHighOffset + ymmHighSize : 576
    }

    /// XGETBV (0F 01 D0) and XSETBV (0F 01 D1).
    func xgetbvXsetbv(set: Bool) throws(X86Fault) {
        if !cpuLevelHas(.xsave) || cr4 & X86Bits.cr4OSXSAVE == 0 { throw udFault() }
        if r[1] & 0xFFFF_FFFF != 0 { throw gpFault() }     // only XCR0 (no XGETBV1)
        if !set {
            r[0] = xcr0 & 0xFFFF_FFFF; r[2] = xcr0 >> 32
            return
        }
        if cpl != 0 { throw gpFault() }
        let v = (r[2] & 0xFFFF_FFFF) << 32 | (r[0] & 0xFFFF_FFFF)
        if v & ~X86CPU.xcr0Supported != 0 || v & 1 == 0 || v & 6 == 4 { throw gpFault() }   // AVX needs SSE
        xcr0 = v
    }

    /// The common checks of XSAVE/XRSTOR; returns the area's linear address and the
    /// requested-feature bitmap (XCR0 & EDX:EAX).
    private func xsaveArea(_ ea: UInt64) throws(X86Fault) -> (UInt64, UInt64) {
        if !cpuLevelHas(.xsave) || cr4 & X86Bits.cr4OSXSAVE == 0 || d.has66 || d.rep != 0 { throw udFault() }
        if cr0 & X86Bits.cr0TS != 0 { throw fault(Vec.nm) }
        let la = try linear(d.seg, ea)
        if la & 63 != 0 { throw gpFault() }
        return (la, xcr0 & ((r[2] & 0xFFFF_FFFF) << 32 | (r[0] & 0xFFFF_FFFF)))
    }

    /// XSAVE (0F AE /4; REX.W: XSAVE64, 64-bit FIP/FDP): the requested components, MXCSR
    /// with SSE, and XSTATE_BV (the rest of the header and the area are left alone).
    func xsave(_ ea: UInt64) throws(X86Fault) {
        let (la, rfbm) = try xsaveArea(ea)
        // Every byte writable (and the dirty bits set) before anything is stored.
        for off in stride(from: UInt64(0), to: UInt64(X86CPU.xsaveAreaSize(rfbm)), by: 8) {
            _ = try rmwPointer((la &+ off) & linearMask, 8)
        }
        if rfbm & 1 != 0 { try saveX87Image(la) }
        if rfbm & 2 != 0 {
            try saveMXCSRImage(la)
            try saveXMMImage(la)
        }
        if rfbm & 4 != 0 { try saveYMMHighImage(la) }
        let bv = try imageRead(la, 512, 8)
        try writeLinear((la &+ 512) & linearMask, 8, (bv & ~rfbm) | (rfbm & X86CPU.xcr0Supported), user: cpl == 3)
    }

    /// XRSTOR (0F AE /5; REX.W: XRSTOR64), standard form only: #GP for a compacted or
    /// reserved header (XCOMP_BV or the next 8 bytes nonzero) or XSTATE_BV bits outside
    /// XCR0; each requested component is loaded where XSTATE_BV has it, else initialized
    /// (x87: FNINIT state with empty registers cleared; SSE: XMM registers zeroed; MXCSR
    /// is loaded with SSE either way; AVX: the upper halves zeroed).
    func xrstor(_ ea: UInt64) throws(X86Fault) {
        let (la, rfbm) = try xsaveArea(ea)
        _ = try imageRead(la, UInt64(X86CPU.xsaveAreaSize(rfbm)) - 1, 1)   // the whole area readable first
        let bv = try imageRead(la, 512, 8)
        let comp = try imageRead(la, 520, 8), reserved = try imageRead(la, 528, 8)
        if comp != 0 || reserved != 0 || bv & ~xcr0 != 0 { throw gpFault() }
        var newMXCSR: UInt32? = nil
        if rfbm & 2 != 0 { newMXCSR = try loadMXCSRImage(la) }
        var f = fpu
        if rfbm & 1 != 0 {
            if bv & 1 != 0 { f = try loadX87Image(la) } else { f = X87State() }
        }
        if rfbm & 2 != 0 {
            if bv & 2 != 0 {
                try loadXMMImage(la)
            } else {
                for i in 0..<(mode64 ? 32 : 16) { xmm[i] = 0 }
            }
        }
        if rfbm & 4 != 0 {
            if bv & 4 != 0 { try loadYMMHighImage(la) } else { clearYMMHigh() }
        }
        f.updateSummary()
        fpu = f
        if let m = newMXCSR { mxcsr = m }
    }
}
