/// The VEX prefixes (C4: three bytes, C5: two bytes). VEX-encoded opcodes are numbered
/// 0x400 | (map - 1) << 8 | opcode (map 1 = 0F, 2 = 0F 38, 3 = 0F 3A). The decoder keeps
/// VEX.pp in the legacy prefix fields (`has66`, `rep` = F3/F2, which VEX forbids as real
/// prefixes), VEX.R/X/B/W as REX bits, and VEX.vvvv and VEX.L in `imm2` (no VEX
/// instruction has a second immediate).
struct VEXPrefix {
    var op: Int
    var attr: UInt8
    /// REX-equivalent bits (W R X B as 8 4 2 1; R/X/B only in 64-bit mode).
    var rex: UInt8
    var pp: UInt8
    /// vvvv (bits 0-3) | L << 4.
    var vl: UInt64
}

extension Insn {
    /// VEX.vvvv (the extra register operand; 0-7 outside 64-bit mode).
    var vexV: Int { Int(imm2 & 0xF) }
    /// VEX.L (256-bit vectors; must be 0 for the scalar and GPR instructions).
    var vexL: Bool { imm2 & 0x10 != 0 }
    /// VEX.pp as 0 (none), 1 (66), 2 (F3), 3 (F2).
    var vexPP: Int { has66 ? 1 : rep == 0xF3 ? 2 : rep == 0xF2 ? 3 : 0 }

    /// Stores the VEX fields after the decoder's legacy-prefix setup. The operand size of
    /// VEX GPR instructions is 64 bits with VEX.W in 64-bit mode, else 32 (W is ignored
    /// outside 64-bit mode, as are the 16-bit code segment's defaults).
    mutating func applyVEX(_ v: VEXPrefix, mode64: Bool) {
        has66 = v.pp == 1
        rep = v.pp == 2 ? 0xF3 : v.pp == 3 ? 0xF2 : 0
        imm2 = v.vl
        opSize = mode64 && v.rex & 8 != 0 ? 8 : 4
        rexW = v.rex & 8 != 0
    }
}

extension X86CPU {
    /// Decodes the VEX prefix whose first byte `b` (C4 or C5) is at `n - 1`, moving `n` past
    /// the prefix and the opcode byte. Returns nil where the byte is LES/LDS: real mode,
    /// and outside 64-bit mode when the next byte's top bits are not 11 (a memory ModRM).
    /// A VEX prefix after 66, F2, F3, LOCK or REX, and a reserved opcode map, raise #UD.
    @inline(never)
    func decodeVEX(_ b: UInt8, _ n: inout Int, prefixed: Bool) throws(X86Fault) -> VEXPrefix? {
        let b1 = try fetch8(n)
        if !mode64 && (!protectedMode || b1 < 0xC0) { return nil }
        if prefixed { throw udFault() }
        var rex: UInt8 = 0
        let map: Int, last: UInt8
        if b == 0xC5 {
            if mode64 && b1 & 0x80 == 0 { rex |= 4 }
            map = 1; last = b1; n &+= 1
        } else {
            let b2 = try fetch8(n &+ 1)
            if mode64 {
                if b1 & 0x80 == 0 { rex |= 4 }
                if b1 & 0x40 == 0 { rex |= 2 }
                if b1 & 0x20 == 0 { rex |= 1 }
            }
            if b2 & 0x80 != 0 { rex |= 8 }
            map = Int(b1 & 0x1F); last = b2; n &+= 2
            if map < 1 || map > 3 { throw udFault() }
        }
        var vvvv = UInt64(~last >> 3) & 0xF
        if !mode64 { vvvv &= 7 }
        let opByte = Int(try fetch8(n)); n &+= 1
        let attr: UInt8
        switch map {
        case 1: attr = opcodeAttributes[256 &+ opByte]
        case 2: attr = 0x80
        default: attr = 0x80 | ImmKind.ib.rawValue
        }
        return VEXPrefix(op: 0x400 | (map &- 1) << 8 | opByte, attr: attr, rex: rex, pp: last & 3,
                         vl: vvvv | UInt64(last & 4) << 2)
    }

    /// Executes a VEX-encoded instruction: the BMI1/BMI2 GPR instructions
    /// (`V3Integer.swift`), else AVX/AVX2/FMA/F16C (`AVX.swift`, `AVX2.swift`,
    /// `AVXFloat.swift`) after the AVX state checks (`AVXState.swift`).
    func executeVEX(_ op: Int) throws(X86Fault) {
        if try bmiVEX(op) { return }
        try avxCheck()
        switch op >> 8 {
        case 4: try vexMap1(op & 0xFF)
        case 5: try vexMap2(op & 0xFF)
        default: try vexMap3(op & 0xFF)
        }
    }
}
