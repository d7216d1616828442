import Hypervisor

typealias V4 = SIMD4<UInt64>

/// The AVX register state: YMM0-15 are the XMM registers (`xmm[0..<32]`) and their upper
/// halves, bits 255:128, kept after them (`xmm[32 + 2i]`, `xmm[33 + 2i]`). Legacy SSE
/// instructions leave the upper halves alone; VEX.128 instructions zero them. Here: the
/// register and operand accessors of the VEX instructions, the #UD/#NM rules, VZEROUPPER/
/// VZEROALL, and the AVX component of the XSAVE area (`XSave.swift`).
extension X86CPU {
    @inline(__always) func yr(_ i: Int) -> V4 {
        V4(xmm[i &* 2], xmm[i &* 2 &+ 1], xmm[32 &+ i &* 2], xmm[33 &+ i &* 2])
    }

    @inline(__always) func yw(_ i: Int, _ v: V4) {
        xmm[i &* 2] = v[0]; xmm[i &* 2 &+ 1] = v[1]; xmm[32 &+ i &* 2] = v[2]; xmm[33 &+ i &* 2] = v[3]
    }

    /// Writes a VEX result of the instruction's width: a 128-bit one zeroes bits 255:128.
    @inline(__always) func ywL(_ i: Int, _ v: V4) { yw(i, d.vexL ? v : V4(lowHalf: v.lowHalf, highHalf: V2(0, 0))) }
    /// Writes a 128-bit VEX result (bits 255:128 zeroed).
    @inline(__always) func yw128(_ i: Int, _ v: V2) { yw(i, V4(lowHalf: v, highHalf: V2(0, 0))) }

    /// The checks every VEX vector instruction makes: #UD below v3, with CR4.OSXSAVE clear
    /// or XCR0 not enabling SSE and AVX state; #NM with CR0.TS. (CR0.EM does not apply.)
    func avxCheck() throws(X86Fault) {
        if !cpuLevelHas(.avx) || cr4 & X86Bits.cr4OSXSAVE == 0 || xcr0 & 6 != 6 { throw udFault() }
        if cr0 & X86Bits.cr0TS != 0 { throw fault(Vec.nm) }
    }

    /// #UD unless VEX.vvvv is 1111b (instructions without a second source).
    @inline(__always) func vexNoV() throws(X86Fault) { if d.vexV != 0 { throw udFault() } }

    /// VZEROUPPER (VEX.128 0F 77) and VZEROALL (VEX.256): registers 0-7 outside 64-bit mode.
    func vzero(all: Bool) {
        for i in 0..<(mode64 ? 16 : 8) {
            if all { yw(i, V4(0, 0, 0, 0)) } else { xmm[32 + i * 2] = 0; xmm[33 + i * 2] = 0 }
        }
    }

    /// Reads `bytes` (16 or 32) at the memory operand; #GP if `aligned` and the linear
    /// address is not a multiple of `bytes`.
    func vload(_ bytes: Int, aligned: Bool) throws(X86Fault) -> V4 {
        let la = try linear(d.seg, effectiveAddress())
        if aligned && la & UInt64(bytes - 1) != 0 { throw gpFault() }
        var v = V4(0, 0, 0, 0)
        for k in 0..<(bytes / 8) {
            v[k] = try readLinear((la &+ UInt64(k * 8)) & linearMask, 8, user: cpl == 3)
        }
        return v
    }

    /// The r/m source of the instruction's width (bits 255:128 zero for VEX.128).
    @inline(__always) func vsrc(aligned: Bool = false) throws(X86Fault) -> V4 {
        if d.mod == 3 { return d.vexL ? yr(d.rm) : V4(lowHalf: xr(d.rm), highHalf: V2(0, 0)) }
        return try vload(d.vexL ? 32 : 16, aligned: aligned)
    }

    /// The 128-bit r/m source whatever VEX.L says.
    @inline(__always) func vsrc128() throws(X86Fault) -> V2 {
        if d.mod == 3 { return xr(d.rm) }
        return try vload(16, aligned: false).lowHalf
    }

    /// The low `size` bytes of the r/m source (register or memory of that size).
    @inline(__always) func vsrcLow(_ size: Int) throws(X86Fault) -> UInt64 { try xsrcLow(size) }

    /// Stores `bytes` (16 or 32) of `v` to the memory operand, every byte checked writable
    /// first; a register destination gets the value with bits above `bytes` zeroed.
    func vstore(_ v: V4, _ bytes: Int, aligned: Bool) throws(X86Fault) {
        if d.mod == 3 { yw(d.rm, bytes == 32 ? v : V4(lowHalf: v.lowHalf, highHalf: V2(0, 0))); return }
        let la = try linear(d.seg, effectiveAddress())
        if aligned && la & UInt64(bytes - 1) != 0 { throw gpFault() }
        for k in 0..<(bytes / 8) { _ = try rmwPointer((la &+ UInt64(k * 8)) & linearMask, 8) }
        for k in 0..<(bytes / 8) { try writeLinear((la &+ UInt64(k * 8)) & linearMask, 8, v[k], user: cpl == 3) }
    }

    /// `f` on each 128-bit lane of `a` and `s` (the high lane only for VEX.256; else zero).
    @inline(__always) func perLane(_ a: V4, _ s: V4, _ f: (V2, V2, Int) -> V2) -> V4 {
        V4(lowHalf: f(a.lowHalf, s.lowHalf, 0), highHalf: d.vexL ? f(a.highHalf, s.highHalf, 1) : V2(0, 0))
    }

    // MARK: the XSAVE area's AVX component (standard form, offset 576)

    func saveYMMHighImage(_ la: UInt64) throws(X86Fault) {
        for i in 0..<(mode64 ? 16 : 8) {
            let off = (la &+ UInt64(X86CPU.ymmHighOffset) &+ UInt64(i * 16)) & linearMask
            try writeLinear(off, 8, xmm[32 + i * 2], user: cpl == 3)
            try writeLinear((off &+ 8) & linearMask, 8, xmm[33 + i * 2], user: cpl == 3)
        }
    }

    func loadYMMHighImage(_ la: UInt64) throws(X86Fault) {
        for i in 0..<(mode64 ? 16 : 8) {
            xmm[32 + i * 2] = try imageRead(la, UInt64(X86CPU.ymmHighOffset) + UInt64(i * 16), 8)
            xmm[33 + i * 2] = try imageRead(la, UInt64(X86CPU.ymmHighOffset) + UInt64(i * 16 + 8), 8)
        }
    }

    func clearYMMHigh() {
        for i in 0..<(mode64 ? 16 : 8) { xmm[32 + i * 2] = 0; xmm[33 + i * 2] = 0 }
    }
}
