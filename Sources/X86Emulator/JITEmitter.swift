// MARK: - Host x86-64 instruction emitter for the JIT

/// Host register numbers (the encoding's, 0...15).
enum HostReg {
    static let rax = 0, rcx = 1, rdx = 2, rsi = 6, rdi = 7, r8 = 8
}

/// Appends host x86-64 machine code to a byte buffer: only the instruction forms the JIT
/// compiler needs, each encoded here from the SDM's tables (REX, ModRM, SIB). Operand
/// sizes are 1, 2, 4 or 8 bytes; byte operations use only rax/rcx/rdx (al/cl/dl), so no
/// REX-only byte registers appear. Memory operands are `[base + disp8]` with base rdi (the
/// guest register file) or rsi (the call context).
struct X64Emitter {
    var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(512) }

    mutating func byte(_ b: UInt8) { bytes.append(b) }
    mutating func imm32(_ v: Int32) {
        let u = UInt32(bitPattern: v)
        for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: u >> UInt32(i * 8))) }
    }
    mutating func imm64(_ v: UInt64) {
        for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(i * 8))) }
    }

    /// Operand-size prefix and REX for a `size`-byte operation with ModRM.reg = `reg`,
    /// ModRM.rm / opcode register = `rm` and SIB.index = `index`.
    private mutating func prefix(_ size: Int, reg: Int = 0, rm: Int = 0, index: Int = 0) {
        if size == 2 { byte(0x66) }
        var rex: UInt8 = 0x40
        if size == 8 { rex |= 8 }
        if reg >= 8 { rex |= 4 }
        if index >= 8 { rex |= 2 }
        if rm >= 8 { rex |= 1 }
        if rex != 0x40 { byte(rex) }
    }

    private mutating func modrm(_ mod: Int, _ reg: Int, _ rm: Int) {
        byte(UInt8(mod << 6 | (reg & 7) << 3 | (rm & 7)))
    }

    /// `op reg, rm` / `op rm, reg` with both operands registers.
    mutating func rr(_ opcode: [UInt8], _ size: Int, reg: Int, rm: Int) {
        prefix(size, reg: reg, rm: rm)
        bytes.append(contentsOf: opcode)
        modrm(3, reg, rm)
    }

    /// An instruction with a `[base + disp8]` memory operand (base not rsp/r12).
    mutating func rmem(_ opcode: [UInt8], _ size: Int, reg: Int, base: Int, disp: Int) {
        precondition(base & 7 != 4 && disp >= -128 && disp <= 127)
        prefix(size, reg: reg, rm: base)
        bytes.append(contentsOf: opcode)
        modrm(1, reg, base)
        byte(UInt8(bitPattern: Int8(disp)))
    }

    /// An instruction with a `[base + index * 2^scale]` memory operand (base not rbp/r13).
    mutating func rsib(_ opcode: [UInt8], _ size: Int, reg: Int, base: Int, index: Int, scale: Int) {
        precondition(base & 7 != 5 && index & 7 != 4)
        prefix(size, reg: reg, rm: base, index: index)
        bytes.append(contentsOf: opcode)
        modrm(0, reg, 4)
        byte(UInt8(scale << 6 | (index & 7) << 3 | (base & 7)))
    }

    /// `jcc rel32` to a label bound later (`bind`); returns the patch position.
    mutating func jccForward(_ cc: Int) -> Int {
        byte(0x0F); byte(UInt8(0x80 | cc)); imm32(0)
        return bytes.count
    }

    /// Points the jump whose rel32 ends at `patch` to the current position.
    mutating func bind(_ patch: Int) {
        let rel = UInt32(bitPattern: Int32(bytes.count - patch))
        for i in 0..<4 { bytes[patch - 4 + i] = UInt8(truncatingIfNeeded: rel >> UInt32(i * 8)) }
    }

    // MARK: moves

    /// `mov h, [rdi + off]` (size 1/2 leave the rest of h; 4 zero-extends).
    mutating func load(_ h: Int, _ off: Int, _ size: Int) {
        rmem([size == 1 ? 0x8A : 0x8B], size, reg: h, base: HostReg.rdi, disp: off)
    }

    /// `mov [rdi + off], h` for a guest operand of `size`: 1 and 2 store the low part; 4
    /// stores all 64 bits, so the caller guarantees h was produced by a 32-bit operation
    /// (upper half zero), which is the guest's zero-extension; 8 stores all.
    mutating func store(_ h: Int, _ off: Int, _ size: Int) {
        switch size {
        case 1: rmem([0x88], 1, reg: h, base: HostReg.rdi, disp: off)
        case 2: rmem([0x89], 2, reg: h, base: HostReg.rdi, disp: off)
        default: rmem([0x89], 8, reg: h, base: HostReg.rdi, disp: off)
        }
    }

    /// `mov h, [rsi + off]` (64-bit, from the call context).
    mutating func loadContext(_ h: Int, _ off: Int) {
        rmem([0x8B], 8, reg: h, base: HostReg.rsi, disp: off)
    }

    /// `mov h, imm` for a `size`-byte value (sizes up to 4 zero-extend into 64 bits).
    mutating func movImm(_ h: Int, _ v: UInt64, _ size: Int) {
        if size == 8 {
            let s = Int64(bitPattern: v)
            if s >= Int64(Int32.min) && s <= Int64(Int32.max) {
                prefix(8, rm: h); byte(0xC7); modrm(3, 0, h); imm32(Int32(s))
            } else {
                prefix(8, rm: h); byte(0xB8 | UInt8(h & 7)); imm64(v)
            }
        } else {
            prefix(4, rm: h); byte(0xB8 | UInt8(h & 7)); imm32(Int32(bitPattern: UInt32(truncatingIfNeeded: v)))
        }
    }

    /// `mov dst, src` (register to register; size 4 zero-extends).
    mutating func movRR(_ dst: Int, _ src: Int, _ size: Int) {
        rr([size == 1 ? 0x88 : 0x89], size, reg: src, rm: dst)
    }

    /// `movzx/movsx h, byte/word/dword [rdi + off]` into a 32-bit (`size` 4) or 64-bit
    /// register; a dword source means MOVSXD (signed) or a plain 32-bit load.
    mutating func extendLoad(_ h: Int, _ off: Int, from srcSize: Int, signed: Bool, _ size: Int) {
        switch (srcSize, signed) {
        case (1, false): rmem([0x0F, 0xB6], 4, reg: h, base: HostReg.rdi, disp: off)
        case (2, false): rmem([0x0F, 0xB7], 4, reg: h, base: HostReg.rdi, disp: off)
        case (1, true): rmem([0x0F, 0xBE], size, reg: h, base: HostReg.rdi, disp: off)
        case (2, true): rmem([0x0F, 0xBF], size, reg: h, base: HostReg.rdi, disp: off)
        case (_, true): rmem([0x63], 8, reg: h, base: HostReg.rdi, disp: off)
        default: load(h, off, 4)
        }
    }

    /// `movzx h32, h16`.
    mutating func zeroExtend16(_ h: Int) { rr([0x0F, 0xB7], 4, reg: h, rm: h) }

    /// `lea dst, [base + index << scale + disp32]` (64-bit; index < 0: none).
    mutating func lea(_ dst: Int, base: Int, index: Int, scale: Int, disp: Int32) {
        precondition(base & 7 != 4 && base & 7 != 5)
        prefix(8, reg: dst, rm: base, index: max(index, 0))
        byte(0x8D)
        if index >= 0 {
            modrm(2, dst, 4)
            byte(UInt8(scale << 6 | (index & 7) << 3 | (base & 7)))
        } else {
            modrm(2, dst, base)
        }
        imm32(disp)
    }

    // MARK: arithmetic

    /// ALU `kind` (0 add, 1 or, 2 adc, 3 sbb, 4 and, 5 sub, 6 xor, 7 cmp) `dst, src`.
    mutating func alu(_ kind: Int, _ dst: Int, _ src: Int, _ size: Int) {
        rr([UInt8(kind << 3 | (size == 1 ? 0 : 1))], size, reg: src, rm: dst)
    }

    /// `test dst, src`.
    mutating func test(_ dst: Int, _ src: Int, _ size: Int) {
        rr([size == 1 ? 0x84 : 0x85], size, reg: src, rm: dst)
    }

    /// ALU `kind` with an 8-bit sign-extended or 32-bit immediate (`and rcx, imm32` etc.).
    mutating func aluImm(_ kind: Int, _ h: Int, _ v: Int32, _ size: Int) {
        if v >= -128 && v <= 127 {
            rr([size == 1 ? 0x80 : 0x83], size, reg: kind, rm: h); byte(UInt8(bitPattern: Int8(v)))
        } else {
            rr([size == 1 ? 0x80 : 0x81], size, reg: kind, rm: h); imm32(v)
        }
    }

    /// INC (0), DEC (1) on a register.
    mutating func incDec(_ kind: Int, _ h: Int, _ size: Int) {
        rr([size == 1 ? 0xFE : 0xFF], size, reg: kind, rm: h)
    }

    /// NOT (2), NEG (3) on a register.
    mutating func notNeg(_ kind: Int, _ h: Int, _ size: Int) {
        rr([size == 1 ? 0xF6 : 0xF7], size, reg: kind, rm: h)
    }

    /// Shift/rotate `kind` (the ModRM.reg of C0/D0: 0 rol, 1 ror, 4 shl, 5 shr, 7 sar) by a constant.
    mutating func shift(_ kind: Int, _ h: Int, _ size: Int, _ count: Int) {
        if count == 1 {
            rr([size == 1 ? 0xD0 : 0xD1], size, reg: kind, rm: h)
        } else {
            rr([size == 1 ? 0xC0 : 0xC1], size, reg: kind, rm: h); byte(UInt8(count))
        }
    }

    /// `setcc h8` (h < 4).
    mutating func setcc(_ cc: Int, _ h: Int) { rr([0x0F, UInt8(0x90 | cc)], 1, reg: 0, rm: h) }

    /// `cmovcc dst, src`.
    mutating func cmov(_ cc: Int, _ dst: Int, _ src: Int, _ size: Int) {
        rr([0x0F, UInt8(0x40 | cc)], size, reg: dst, rm: src)
    }

    /// CBW/CWDE/CDQE (0x98) or CWD/CDQ/CQO (0x99) for operand `size`.
    mutating func signExtendA(_ opcode: UInt8, _ size: Int) {
        if size == 2 { byte(0x66) } else if size == 8 { byte(0x48) }
        byte(opcode)
    }

    // MARK: flags and control

    mutating func pushfq() { byte(0x9C) }
    mutating func popfq() { byte(0x9D) }
    mutating func push(_ h: Int) { if h >= 8 { byte(0x41) }; byte(0x50 | UInt8(h & 7)) }
    mutating func pop(_ h: Int) { if h >= 8 { byte(0x41) }; byte(0x58 | UInt8(h & 7)) }
    /// `push qword [rsi + off]`.
    mutating func pushContext(_ off: Int) { rmem([0xFF], 4, reg: 6, base: HostReg.rsi, disp: off) }
    /// `pop qword [rsi + off]`.
    mutating func popContext(_ off: Int) { rmem([0x8F], 4, reg: 0, base: HostReg.rsi, disp: off) }
    mutating func ret() { byte(0xC3) }
}
