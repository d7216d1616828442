// MARK: - JIT compiler: decoded guest instructions -> host x86-64

/// One guest operation the JIT can translate. Guest register operands are byte offsets
/// into the register file `X86CPU.r` (high-byte registers AH..BH are offset + 1).
enum JITOp {
    enum Source { case reg(Int), imm(UInt64) }
    /// kind 0-7: add or adc sbb and sub xor cmp; 8: test.
    case alu(kind: Int, dst: Int, src: Source, size: Int)
    case mov(dst: Int, src: Source, size: Int)
    /// 0 inc, 1 dec, 2 not, 3 neg.
    case unary(kind: Int, loc: Int, size: Int)
    /// kind as ModRM.reg of C0 (0 rol, 1 ror, 4 shl, 5 shr, 7 sar); count already masked.
    case shift(kind: Int, loc: Int, size: Int, count: Int)
    case extend(dst: Int, src: Int, from: Int, signed: Bool, size: Int)
    case lea(dst: Int, base: Int, index: Int, scale: Int, disp: UInt64, ripRelative: Bool, addrSize: Int, size: Int)
    case setcc(cc: Int, dst: Int)
    case cmov(cc: Int, dst: Int, src: Int, size: Int)
    case xchg(a: Int, b: Int, size: Int)
    /// 0x98 (CBW/CWDE/CDQE) or 0x99 (CWD/CDQ/CQO).
    case signExtendA(opcode: UInt8, size: Int)
    /// CMC (0xF5), CLC (0xF8), STC (0xF9).
    case carry(opcode: UInt8)
    case nop
    /// The block's last instruction: Jcc (cc) or JMP (cc nil) with a displacement from the
    /// end of the instruction.
    case branch(cc: Int?, rel: UInt64)
    /// A load (64-bit mode, 64-bit addressing, a segment with base 0) through the inline TLB
    /// probe: kind 0-7 ALU, 8 test, 9 mov. `memIsDst`: the memory operand is the first one
    /// (CMP/TEST [m], other: nothing stored); else `other` is the destination register.
    case memALU(kind: Int, mem: JITMem, other: Source, size: Int, memIsDst: Bool)
    case memExtend(dst: Int, mem: JITMem, from: Int, signed: Bool, size: Int)
    /// A store (MOV [m], reg/imm) through the inline write-TLB probe (same address forms
    /// as the loads).
    case memStore(mem: JITMem, src: Source, size: Int)
    /// A read-modify-write of memory through the write-TLB probe: kind 0-6 ALU [m], src
    /// (not CMP); not LOCK-prefixed ones.
    case memRMW(kind: Int, mem: JITMem, src: Source, size: Int)
    /// INC/DEC/NOT/NEG [m] (kind as `unary`) through the write-TLB probe.
    case memUnary(kind: Int, mem: JITMem, size: Int)
    /// PUSH reg/imm (64-bit mode: 8 bytes, 2 with 0x66 alone; a flat 32-bit stack: the
    /// operand size): a store at RSP - size through the write-TLB probe, RSP lowered only
    /// after it (the value is read first: PUSH RSP pushes the old RSP). The stack pointer
    /// is RSP, or ESP wrapping at 32 bits (`JITCompiler.compile`'s `flatStack32`).
    case push(src: Source, size: Int)
    /// POP reg (sizes as `push`): a load at RSP through the read-TLB probe, RSP raised,
    /// then the register written (POP RSP leaves the loaded value in RSP).
    case pop(dst: Int, size: Int)
    /// The block's last instruction: CALL rel32 (64-bit mode, 0x66 ignored; or 32-bit code
    /// and operand size on a flat 32-bit stack): pushes the return address like `push`
    /// (8 or 4 bytes), then ends the block at the target like JMP.
    case call(rel: UInt64)
    /// The block's last instruction: RET (same conditions): pops the target like `pop`
    /// and returns its distance from the block's RIP.
    case ret
    /// IMUL r, r/m (0F AF: a = dst, b = the source) or IMUL r, r/m, imm (69, 6B: a = the
    /// source, b = the immediate) of 2, 4 or 8 bytes into register `dst`.
    case imul(dst: Int, a: Source, b: Source, size: Int)
    /// The same with a memory source through the read-TLB probe: [m] times register `dst`
    /// (`imm` nil, 0F AF) or times `imm` (69, 6B).
    case memImul(dst: Int, mem: JITMem, imm: UInt64?, size: Int)

    /// Whether the operation may leave the compiled code before it runs (a load or store
    /// whose probe misses): every flag is live there.
    var mayExit: Bool {
        switch self {
        case .memALU, .memExtend, .memStore, .memRMW, .memUnary, .push, .pop, .call, .ret, .memImul: return true
        default: return false
        }
    }

    /// A control transfer: only as the block's last instruction.
    var endsBlock: Bool {
        switch self {
        case .branch, .call, .ret: return true
        default: return false
        }
    }

    /// Arithmetic flags this operation reads / always writes (RFLAGS bit masks).
    var flagsRead: UInt64 {
        switch self {
        case let .alu(kind, _, _, _), let .memALU(kind, _, _, _, _), let .memRMW(kind, _, _, _):
            return kind == 2 || kind == 3 ? Flag.cf : 0
        case let .setcc(cc, _), let .cmov(cc, _, _, _): return JITOp.conditionFlags(cc)
        case let .branch(cc, _): return cc.map(JITOp.conditionFlags) ?? 0
        case let .carry(op): return op == 0xF5 ? Flag.cf : 0
        default: return 0
        }
    }

    var flagsWritten: UInt64 {
        switch self {
        case .alu, .memRMW, .imul, .memImul: return Flag.arith
        case let .memALU(kind, _, _, _, _): return kind == 9 ? 0 : Flag.arith
        case let .unary(kind, _, _), let .memUnary(kind, _, _): return kind < 2 ? Flag.arith & ~Flag.cf : (kind == 3 ? Flag.arith : 0)
        case let .shift(kind, _, _, count): return count == 0 ? 0 : (kind < 2 ? Flag.cf | Flag.of : Flag.arith)
        case .carry: return Flag.cf
        default: return 0
        }
    }

    static func conditionFlags(_ cc: Int) -> UInt64 {
        switch cc >> 1 {
        case 0: return Flag.of
        case 1: return Flag.cf
        case 2: return Flag.zf
        case 3: return Flag.cf | Flag.zf
        case 4: return Flag.sf
        case 5: return Flag.pf
        case 6: return Flag.sf | Flag.of
        default: return Flag.zf | Flag.sf | Flag.of
        }
    }
}

/// A memory operand's address parts (`Insn`'s).
struct JITMem {
    var base: Int
    var index: Int
    var scale: Int
    var disp: UInt64
    var ripRelative: Bool
}

/// A compiled block prefix: host code, how many guest instructions and bytes it covers,
/// and whether it needs the guest's arithmetic flags on entry / produces them on exit.
struct JITCompiled {
    var code: [UInt8]
    var count: Int
    var byteLength: Int
    var flagsIn: Bool
    var flagsOut: Bool
    /// The byte offset of a block-ending JMP/Jcc (nil: none), so the caller can rewind to
    /// it when its target is not canonical.
    var branchStart: Int? = nil
    /// The code uses ESP as a flat 32-bit stack (see `compile`).
    var usesStack32 = false
}

/// Translates the longest prefix of a decoded block made only of supported operations
/// (register and immediate operands; a JMP/Jcc rel may end it) into host code with the
/// C signature `uint64_t f(uint64_t *regs, uint64_t *context)`:
///
/// - `regs` (rdi) is `X86CPU.r`; guest registers are read and written there.
/// - `context` (rsi): [0] the guest's arithmetic flags in (when `flagsIn`) and the host
///   RFLAGS after the block out (when `flagsOut`; the caller stores them as eager flags),
///   [1] the RIP of the block's first instruction (for RIP-relative LEA).
/// - returns the RIP increment (the covered bytes, or the branch target's distance).
///
/// The host ALU computes the guest's flags. Where the interpreter gives architecturally
/// undefined flags specific values (AF after shifts, OF after multi-bit shifts and
/// rotates), the generated code sets the interpreter's values when a later reader or the
/// block exit can see them, so every tier produces the same flags bit for bit.
enum JITCompiler {
    /// The guest-register-file offset of register `i` as an operand of `size` bytes.
    static func location(_ i: Int, _ size: Int, hasREX: Bool) -> Int {
        if size == 1 && !hasREX && i >= 4 && i < 8 { return (i - 4) * 8 + 1 }
        return i * 8
    }

    /// The operation for one decoded instruction, or nil when it is not supported.
    static func translate(_ d: Insn, mode64: Bool, ipMask: UInt64, flatStack32: Bool = false) -> JITOp? {
        let op = d.op
        let rex = d.hasREX
        func loc(_ i: Int, _ s: Int) -> Int { location(i, s, hasREX: rex) }
        func immZ(_ s: Int) -> UInt64 { signExtend(d.imm, s == 2 ? 2 : 4) & sizeMask(s) }
        let branchOK = mode64 || (d.opSize == 2) == (ipMask == 0xFFFF)
        // Outside 64-bit mode the stack ops need SS base 0 with B = 1 (the caller's
        // `flatStack32`); CALL/RET also 32-bit code without 0x66 (4-byte return addresses).
        let stackOK = mode64 || flatStack32
        let nearOK = mode64 || (flatStack32 && d.opSize == 4 && ipMask == 0xFFFF_FFFF)
        // Loads the inline TLB probe can do: 64-bit mode and addressing, not FS/GS.
        let mem: JITMem? = d.mod != 3 && mode64 && d.addrSize == 8 && d.seg < 4
            ? JITMem(base: d.base, index: d.index, scale: Int(d.scale), disp: d.disp, ripRelative: d.ripRelative) : nil
        if d.mod != 3, let m = mem {
            switch op {
            case 0x00...0x3F where op & 7 < 4:
                let k = op >> 3, s = op & 1 == 0 ? 1 : d.opSize
                if op & 2 != 0 { return .memALU(kind: k, mem: m, other: .reg(loc(d.reg, s)), size: s, memIsDst: false) }
                if k == 7 { return .memALU(kind: 7, mem: m, other: .reg(loc(d.reg, s)), size: s, memIsDst: true) }
                return d.lock ? nil : .memRMW(kind: k, mem: m, src: .reg(loc(d.reg, s)), size: s)
            case 0x80, 0x81, 0x83:
                let s = op == 0x80 ? 1 : d.opSize
                let imm = op == 0x80 ? d.imm & 0xFF : (op == 0x81 ? immZ(s) : signExtend(d.imm, 1) & sizeMask(s))
                if d.reg & 7 != 7 { return d.lock ? nil : .memRMW(kind: d.reg & 7, mem: m, src: .imm(imm), size: s) }
                return .memALU(kind: 7, mem: m, other: .imm(imm), size: s, memIsDst: true)
            case 0x88, 0x89:
                let s = op == 0x88 ? 1 : d.opSize
                return .memStore(mem: m, src: .reg(loc(d.reg, s)), size: s)
            case 0xC6, 0xC7:
                guard d.reg & 7 == 0 else { return nil }
                let s = op == 0xC6 ? 1 : d.opSize
                return .memStore(mem: m, src: .imm(op == 0xC6 ? d.imm & 0xFF : immZ(s)), size: s)
            // (One `case` per opcode group: a `where` after several patterns applies only to
            // the last one, which once turned F6 /0 TEST [m], imm8 into INC [m].)
            case 0xF6, 0xF7:
                let s = op == 0xF6 ? 1 : d.opSize
                switch d.reg & 7 {
                case 0: return .memALU(kind: 8, mem: m, other: .imm(op == 0xF6 ? d.imm & 0xFF : immZ(s)), size: s, memIsDst: true)
                case 2, 3: return d.lock ? nil : .memUnary(kind: d.reg & 7, mem: m, size: s)
                default: return nil
                }
            case 0xFE, 0xFF:
                guard d.reg & 7 < 2 else { return nil }
                return d.lock ? nil : .memUnary(kind: d.reg & 7, mem: m, size: op == 0xFE ? 1 : d.opSize)
            case 0x84, 0x85:
                let s = op == 0x84 ? 1 : d.opSize
                return .memALU(kind: 8, mem: m, other: .reg(loc(d.reg, s)), size: s, memIsDst: true)
            case 0x8A, 0x8B:
                let s = op == 0x8A ? 1 : d.opSize
                return .memALU(kind: 9, mem: m, other: .reg(loc(d.reg, s)), size: s, memIsDst: false)
            case 0x63:
                return .memExtend(dst: d.reg * 8, mem: m, from: 4, signed: d.opSize == 8, size: d.opSize)
            case 0x1B6, 0x1B7, 0x1BE, 0x1BF:
                return .memExtend(dst: d.reg * 8, mem: m, from: op & 1 == 0 ? 1 : 2, signed: op >= 0x1BE, size: d.opSize)
            case 0x1AF:
                return .memImul(dst: d.reg * 8, mem: m, imm: nil, size: d.opSize)
            case 0x69, 0x6B:
                let s = d.opSize
                let v = op == 0x6B ? signExtend(d.imm, 1) : signExtend(d.imm, s == 2 ? 2 : 4)
                return .memImul(dst: d.reg * 8, mem: m, imm: v & sizeMask(s), size: s)
            default:
                break
            }
        }
        switch op {
        case 0x00...0x3F where op & 7 < 6:
            let k = op >> 3
            switch op & 7 {
            case 0: return d.mod == 3 ? .alu(kind: k, dst: loc(d.rm, 1), src: .reg(loc(d.reg, 1)), size: 1) : nil
            case 1: let s = d.opSize; return d.mod == 3 ? .alu(kind: k, dst: loc(d.rm, s), src: .reg(loc(d.reg, s)), size: s) : nil
            case 2: return d.mod == 3 ? .alu(kind: k, dst: loc(d.reg, 1), src: .reg(loc(d.rm, 1)), size: 1) : nil
            case 3: let s = d.opSize; return d.mod == 3 ? .alu(kind: k, dst: loc(d.reg, s), src: .reg(loc(d.rm, s)), size: s) : nil
            case 4: return .alu(kind: k, dst: 0, src: .imm(d.imm & 0xFF), size: 1)
            default: let s = d.opSize; return .alu(kind: k, dst: 0, src: .imm(immZ(s)), size: s)
            }
        case 0x40...0x4F:
            // INC/DEC r16/r32: only outside 64-bit mode (REX there).
            let s = d.opSize
            return .unary(kind: op < 0x48 ? 0 : 1, loc: (op & 7) * 8, size: s)
        case 0x50...0x5F:
            // The stack in 64-bit mode (base 0, 64-bit RSP): 8 bytes, 2 with 0x66 (not with
            // REX.W too, which takes precedence: `X86CPU.stackOpSize`); a flat 32-bit stack:
            // the operand size.
            guard stackOK else { return nil }
            let s = mode64 ? (d.opSize == 2 ? 2 : 8) : d.opSize, r = ((op & 7) | (d.rexB ? 8 : 0)) * 8
            return op < 0x58 ? .push(src: .reg(r), size: s) : .pop(dst: r, size: s)
        case 0x68, 0x6A:
            guard stackOK else { return nil }
            let s = mode64 ? (d.opSize == 2 ? 2 : 8) : d.opSize
            let v = op == 0x6A ? signExtend(d.imm, 1) : signExtend(d.imm, s == 2 ? 2 : 4)
            return .push(src: .imm(v & sizeMask(s)), size: s)
        case 0x69, 0x6B:
            guard d.mod == 3 else { return nil }
            let s = d.opSize
            let v = op == 0x6B ? signExtend(d.imm, 1) : signExtend(d.imm, s == 2 ? 2 : 4)
            return .imul(dst: d.reg * 8, a: .reg(d.rm * 8), b: .imm(v & sizeMask(s)), size: s)
        case 0x1AF:
            guard d.mod == 3 else { return nil }
            return .imul(dst: d.reg * 8, a: .reg(d.reg * 8), b: .reg(d.rm * 8), size: d.opSize)
        case 0x63:
            guard mode64, d.mod == 3 else { return nil }
            return .extend(dst: d.reg * 8, src: d.rm * 8, from: 4, signed: d.opSize == 8, size: d.opSize)
        case 0x70...0x7F:
            return branchOK ? .branch(cc: op & 0xF, rel: signExtend(d.imm, 1)) : nil
        case 0x80, 0x81, 0x83:
            guard d.mod == 3 else { return nil }
            let s = op == 0x80 ? 1 : d.opSize
            let imm = op == 0x80 ? d.imm & 0xFF : (op == 0x81 ? immZ(s) : signExtend(d.imm, 1) & sizeMask(s))
            return .alu(kind: d.reg & 7, dst: loc(d.rm, s), src: .imm(imm), size: s)
        case 0x84, 0x85:
            guard d.mod == 3 else { return nil }
            let s = op == 0x84 ? 1 : d.opSize
            return .alu(kind: 8, dst: loc(d.rm, s), src: .reg(loc(d.reg, s)), size: s)
        case 0x86, 0x87:
            guard d.mod == 3 else { return nil }
            let s = op == 0x86 ? 1 : d.opSize
            return .xchg(a: loc(d.rm, s), b: loc(d.reg, s), size: s)
        case 0x88...0x8B:
            guard d.mod == 3 else { return nil }
            let s = op & 1 == 0 ? 1 : d.opSize
            return op < 0x8A ? .mov(dst: loc(d.rm, s), src: .reg(loc(d.reg, s)), size: s)
                : .mov(dst: loc(d.reg, s), src: .reg(loc(d.rm, s)), size: s)
        case 0x8D:
            guard d.mod != 3 else { return nil }
            return .lea(dst: d.reg * 8, base: d.base, index: d.index, scale: Int(d.scale), disp: d.disp,
                        ripRelative: d.ripRelative, addrSize: d.addrSize, size: d.opSize)
        case 0x90:
            if d.rep != 0 { return nil }   // PAUSE
            return d.rexB ? .xchg(a: 8 * 8, b: 0, size: d.opSize) : .nop
        case 0x91...0x97:
            return .xchg(a: ((op & 7) | (d.rexB ? 8 : 0)) * 8, b: 0, size: d.opSize)
        case 0x98, 0x99:
            return .signExtendA(opcode: UInt8(op), size: d.opSize)
        case 0xA8: return .alu(kind: 8, dst: 0, src: .imm(d.imm & 0xFF), size: 1)
        case 0xA9: let s = d.opSize; return .alu(kind: 8, dst: 0, src: .imm(immZ(s)), size: s)
        case 0xB0...0xB7:
            return .mov(dst: loc((op & 7) | (d.rexB ? 8 : 0), 1), src: .imm(d.imm & 0xFF), size: 1)
        case 0xB8...0xBF:
            let s = d.opSize
            return .mov(dst: ((op & 7) | (d.rexB ? 8 : 0)) * 8, src: .imm(d.imm & sizeMask(s)), size: s)
        case 0xC0, 0xC1, 0xD0, 0xD1:
            let k = d.reg & 7
            guard d.mod == 3, k != 2, k != 3 else { return nil }
            let s = op & 1 == 0 ? 1 : d.opSize
            let raw = op <= 0xC1 ? d.imm : 1
            let count = Int(raw & (s == 8 ? 0x3F : 0x1F))
            // SHL/SHR/SAR of a byte or word by its width or more: CF is undefined there and
            // the interpreter's choice is not the host's to make.
            if k >= 4 && s < 4 && count >= s * 8 { return nil }
            return .shift(kind: k == 6 ? 4 : k, loc: loc(d.rm, s), size: s, count: count)
        case 0xC6, 0xC7:
            guard d.mod == 3, d.reg & 7 == 0 else { return nil }
            let s = op == 0xC6 ? 1 : d.opSize
            return .mov(dst: loc(d.rm, s), src: .imm(op == 0xC6 ? d.imm & 0xFF : immZ(s)), size: s)
        case 0xC3:
            // 64-bit mode: the decoder forces the operand size of near branches to 8
            // (0x66 ignored, as on Intel).
            return nearOK ? .ret : nil
        case 0xE8:
            return nearOK ? .call(rel: signExtend(d.imm, 4)) : nil
        case 0xE9:
            return branchOK ? .branch(cc: nil, rel: d.opSize == 2 ? signExtend(d.imm, 2) : signExtend(d.imm, 4)) : nil
        case 0xEB:
            return branchOK ? .branch(cc: nil, rel: signExtend(d.imm, 1)) : nil
        case 0xF5, 0xF8, 0xF9:
            return .carry(opcode: UInt8(op))
        case 0xF6, 0xF7:
            guard d.mod == 3 else { return nil }
            let s = op == 0xF6 ? 1 : d.opSize
            switch d.reg & 7 {
            case 0: return .alu(kind: 8, dst: loc(d.rm, s), src: .imm(op == 0xF6 ? d.imm & 0xFF : immZ(s)), size: s)
            case 2, 3: return .unary(kind: d.reg & 7, loc: loc(d.rm, s), size: s)
            default: return nil
            }
        case 0xFE, 0xFF:
            guard d.mod == 3, d.reg & 7 < 2 else { return nil }
            let s = op == 0xFE ? 1 : d.opSize
            return .unary(kind: d.reg & 7, loc: loc(d.rm, s), size: s)
        case 0x140...0x14F:
            guard d.mod == 3 else { return nil }
            return .cmov(cc: op & 0xF, dst: d.reg * 8, src: d.rm * 8, size: d.opSize)
        case 0x180...0x18F:
            return branchOK ? .branch(cc: op & 0xF, rel: d.opSize == 2 ? signExtend(d.imm, 2) : signExtend(d.imm, 4)) : nil
        case 0x190...0x19F:
            guard d.mod == 3 else { return nil }
            return .setcc(cc: op & 0xF, dst: loc(d.rm, 1))
        case 0x1B6, 0x1B7, 0x1BE, 0x1BF:
            guard d.mod == 3 else { return nil }
            let from = op & 1 == 0 ? 1 : 2
            return .extend(dst: d.reg * 8, src: loc(d.rm, from), from: from, signed: op >= 0x1BE, size: d.opSize)
        default:
            return nil
        }
    }

    /// Compiles the supported prefix of `count` decoded instructions (nil if empty).
    /// `flatStack32`: outside 64-bit mode, SS has base 0 and B = 1 (ESP, wrapping at 32
    /// bits): the stack ops are compiled and the result says so (`usesStack32`), so the
    /// caller runs it only while that still holds.
    static func compile(_ insns: UnsafePointer<Insn>, count: Int, mode64: Bool, ipMask: UInt64,
                        flatStack32: Bool = false) -> JITCompiled? {
        var ops: [JITOp] = []
        var ends: [Int] = []   // byte offset after each instruction
        var len = 0
        for i in 0..<count {
            guard let o = translate(insns[i], mode64: mode64, ipMask: ipMask, flatStack32: !mode64 && flatStack32) else { break }
            if o.endsBlock, i != count - 1 { break }
            len += insns[i].len
            ops.append(o)
            ends.append(len)
            if o.endsBlock { break }
        }
        guard !ops.isEmpty else { return nil }
        // The whole block's bytes (also past the compiled prefix: the block tier runs the
        // rest from the decoded copy): a compiled store into them leaves before it.
        var blockLen = 0
        for i in 0..<count { blockLen += insns[i].len }
        // Flag liveness, backwards from the exit (where all six are live: they become the
        // CPU's flag state).
        var liveAfter = [UInt64](repeating: 0, count: ops.count)
        var live = Flag.arith
        var writes: UInt64 = 0
        for i in stride(from: ops.count - 1, through: 0, by: -1) {
            liveAfter[i] = live
            live = (live & ~ops[i].flagsWritten) | ops[i].flagsRead
            // A side exit before the operation hands every flag to the CPU.
            if ops[i].mayExit { live = Flag.arith }
            writes |= ops[i].flagsWritten
        }
        let flagsIn = live != 0
        let flagsOut = writes != 0
        var e = X64Emitter()
        if flagsIn { e.pushContext(0); e.popfq() }
        var branch: (cc: Int?, rel: UInt64)? = nil
        var returns = false
        var exits: [SideExit] = []
        for (i, o) in ops.enumerated() {
            if case let .branch(cc, rel) = o { branch = (cc, rel); continue }
            if case let .call(rel) = o { branch = (nil, rel) }
            if case .ret = o { returns = true }
            let start = i == 0 ? 0 : ends[i - 1]
            guard emit(o, into: &e, liveAfter: liveAfter[i], end: ends[i], blockLen: blockLen, stack: mode64 ? 8 : 4,
                       exit: SideExit(patches: [], index: i, start: start), exits: &exits) else { return nil }
        }
        if flagsOut { e.pushfq(); e.popContext(0) }
        let A = HostReg.rax, D = HostReg.rdx
        if returns {
            // rax already holds the popped target minus the block's RIP (`.ret`).
        } else if let b = branch {
            let taken = Int64(len) &+ Int64(bitPattern: b.rel)
            guard taken >= Int64(Int32.min), taken <= Int64(Int32.max) else { return nil }
            if let cc = b.cc {
                e.movImm(A, UInt64(len), 4)
                e.movImm(D, UInt64(bitPattern: taken), 8)
                e.cmov(cc, A, D, 8)
            } else {
                e.movImm(A, UInt64(bitPattern: taken), 8)
            }
        } else {
            e.movImm(A, UInt64(len), 4)
        }
        e.ret()
        // Side exits (a probe missed with the guest flags pushed): the instruction at
        // `index` has not run; the CPU's flags, the count done ([2]) and its offset go back.
        for x in exits {
            for p in x.patches { e.bind(p) }
            e.popfq()
            if flagsOut { e.pushfq(); e.popContext(0) }
            e.movImm(A, UInt64(x.index), 4)
            e.rmem([0x89], 8, reg: A, base: HostReg.rsi, disp: 16)
            e.movImm(A, UInt64(x.start), 4)
            e.ret()
        }
        var branchStart: Int? = nil
        if case .branch = ops[ops.count - 1] { branchStart = ops.count == 1 ? 0 : ends[ops.count - 2] }
        let usesStack32 = !mode64 && ops.contains {
            switch $0 { case .push, .pop, .call, .ret: return true; default: return false }
        }
        return JITCompiled(code: e.bytes, count: ops.count, byteLength: len, flagsIn: flagsIn, flagsOut: flagsOut,
                           branchStart: branchStart, usesStack32: usesStack32)
    }

    /// Emits one non-branch operation. `end` is the byte offset after the instruction.
    /// `stack`: the stack pointer's width (8: RSP; 4: ESP of a flat 32-bit stack).
    static func emit(_ o: JITOp, into e: inout X64Emitter, liveAfter: UInt64, end: Int, blockLen: Int, stack: Int,
                     exit: SideExit, exits: inout [SideExit]) -> Bool {
        let A = HostReg.rax, C = HostReg.rcx, D = HostReg.rdx, R9 = 9, R8 = HostReg.r8
        switch o {
        case let .memALU(kind, m, other, s, memIsDst):
            // The loaded value in r9 (a 32-bit load zero-extends it).
            guard emitProbe(m, size: s, end: end, into: &e, exit: exit, exits: &exits, load: { e, _ in
                e.rsib([s == 1 ? 0x8A : 0x8B], s, reg: R9, base: R8, index: A, scale: 0)
            }) else { return false }
            if memIsDst {
                switch other {
                case let .reg(off): e.load(C, off, s)
                case let .imm(v): e.movImm(C, v, s)
                }
                if kind == 8 { e.test(R9, C, s) } else { e.alu(kind, R9, C, s) }
            } else if case let .reg(dst) = other {
                if kind == 9 {
                    e.store(R9, dst, s)
                } else {
                    e.load(A, dst, s)
                    if kind == 8 { e.test(A, R9, s) } else { e.alu(kind, A, R9, s) }
                    if kind != 7 && kind != 8 { e.store(A, dst, s) }
                }
            } else {
                return false
            }
        case let .memStore(m, src, s):
            // The value in r9 first, then the probe stores it.
            switch src {
            case let .reg(off): e.load(R9, off, s)
            case let .imm(v): e.movImm(R9, v, s)
            }
            guard emitProbe(m, size: s, end: end, into: &e, exit: exit, exits: &exits, blockLen: blockLen, load: { e, _ in
                e.rsib([s == 1 ? 0x88 : 0x89], s, reg: R9, base: R8, index: A, scale: 0)
            }) else { return false }
        case let .memRMW(kind, m, src, s):
            // The source in r9; after the probe (guest flags back) the host does the same
            // read-modify-write on the guest's RAM and computes the flags.
            switch src {
            case let .reg(off): e.load(R9, off, s)
            case let .imm(v): e.movImm(R9, v, s)
            }
            guard emitProbe(m, size: s, end: end, into: &e, exit: exit, exits: &exits, blockLen: blockLen,
                            load: { _, _ in }) else { return false }
            e.rsib([UInt8(kind << 3 | (s == 1 ? 0 : 1))], s, reg: R9, base: R8, index: A, scale: 0)
        case let .memUnary(kind, m, s):
            guard emitProbe(m, size: s, end: end, into: &e, exit: exit, exits: &exits, blockLen: blockLen,
                            load: { _, _ in }) else { return false }
            let opcode: UInt8 = kind < 2 ? (s == 1 ? 0xFE : 0xFF) : (s == 1 ? 0xF6 : 0xF7)
            e.rsib([opcode], s, reg: kind, base: R8, index: A, scale: 0)
        case let .push(src, s):
            // The value in r9 first (the old RSP for PUSH RSP); the probe stores it at
            // RSP - s and only then is RSP lowered.
            switch src {
            case let .reg(off): e.load(R9, off, s)
            case let .imm(v): e.movImm(R9, v, s)
            }
            let top = JITMem(base: 4, index: -1, scale: 0, disp: UInt64(bitPattern: Int64(-s)), ripRelative: false)
            guard emitProbe(top, size: s, end: end, into: &e, exit: exit, exits: &exits, blockLen: blockLen,
                            addr32: stack == 4, load: { e, _ in
                e.rsib([0x89], s, reg: R9, base: R8, index: A, scale: 0)
                emitMoveSP(-s, stack, into: &e)
            }) else { return false }
        case let .pop(dst, s):
            // Load at RSP, raise RSP, then write the register (POP RSP: the loaded value).
            let top = JITMem(base: 4, index: -1, scale: 0, disp: 0, ripRelative: false)
            guard emitProbe(top, size: s, end: end, into: &e, exit: exit, exits: &exits, addr32: stack == 4, load: { e, _ in
                e.rsib([0x8B], s, reg: R9, base: R8, index: A, scale: 0)
                emitMoveSP(s, stack, into: &e)
                e.store(R9, dst, s)
            }) else { return false }
        case let .call(rel):
            // Push the return address (the block's RIP + `end`; 8 or 4 bytes); the block
            // end jumps. In 64-bit mode a non-canonical target leaves before the push (the
            // block tier raises #GP).
            let taken = Int64(end) &+ Int64(bitPattern: rel)
            guard taken >= Int64(Int32.min), taken <= Int64(Int32.max) else { return false }
            e.loadContext(R9, 8)
            e.lea(R9, base: R9, index: -1, scale: 0, disp: Int32(end))
            let top = JITMem(base: 4, index: -1, scale: 0, disp: UInt64(bitPattern: Int64(-stack)), ripRelative: false)
            guard emitProbe(top, size: stack, end: end, into: &e, exit: exit, exits: &exits, blockLen: blockLen,
                            addr32: stack == 4, load: { e, x in
                if stack == 8 {
                    e.loadContext(D, 8)
                    e.lea(D, base: D, index: -1, scale: 0, disp: Int32(taken))
                    emitCanonicalCheck(D, into: &e, exit: &x)
                }
                e.rsib([0x89], stack, reg: R9, base: R8, index: A, scale: 0)
                emitMoveSP(-stack, stack, into: &e)
            }) else { return false }
        case .ret:
            // Pop the target (8 or 4 bytes, zero-extended), raise RSP; rax = target - the
            // block's RIP (the return value, nothing after this touches rax; the flags are
            // saved around it; the caller masks RIP). In 64-bit mode a non-canonical target
            // leaves before RSP moves (the block tier raises #GP).
            let top = JITMem(base: 4, index: -1, scale: 0, disp: 0, ripRelative: false)
            guard emitProbe(top, size: stack, end: end, into: &e, exit: exit, exits: &exits, addr32: stack == 4, load: { e, x in
                e.rsib([0x8B], stack, reg: R9, base: R8, index: A, scale: 0)
                if stack == 8 { emitCanonicalCheck(R9, into: &e, exit: &x) }
                emitMoveSP(stack, stack, into: &e)
                e.movRR(A, R9, 8)
                e.rmem([0x2B], 8, reg: A, base: HostReg.rsi, disp: 8)
            }) else { return false }
        case let .memExtend(dst, m, from, signed, s):
            guard emitProbe(m, size: from, end: end, into: &e, exit: exit, exits: &exits, load: { e, _ in
                let w = s == 8 ? 8 : 4
                switch (from, signed) {
                case (1, false): e.rsib([0x0F, 0xB6], 4, reg: R9, base: R8, index: A, scale: 0)
                case (2, false): e.rsib([0x0F, 0xB7], 4, reg: R9, base: R8, index: A, scale: 0)
                case (1, true): e.rsib([0x0F, 0xBE], w, reg: R9, base: R8, index: A, scale: 0)
                case (2, true): e.rsib([0x0F, 0xBF], w, reg: R9, base: R8, index: A, scale: 0)
                case (_, true): e.rsib([0x63], 8, reg: R9, base: R8, index: A, scale: 0)
                default: e.rsib([0x8B], 4, reg: R9, base: R8, index: A, scale: 0)
                }
            }) else { return false }
            e.store(R9, dst, s)
        case let .imul(dst, a, b, s):
            switch a {
            case let .reg(off): e.load(A, off, s)
            case let .imm(v): e.movImm(A, v, s)
            }
            switch b {
            case let .reg(off): e.load(C, off, s)
            case let .imm(v): e.movImm(C, v, s)
            }
            emitImul(C, s, liveAfter: liveAfter, into: &e)
            e.store(A, dst, s)
        case let .memImul(dst, m, imm, s):
            // The loaded factor in r9; after the probe the other one in rax.
            guard emitProbe(m, size: s, end: end, into: &e, exit: exit, exits: &exits, load: { e, _ in
                e.rsib([0x8B], s, reg: R9, base: R8, index: A, scale: 0)
            }) else { return false }
            if let imm { e.movImm(A, imm, s) } else { e.load(A, dst, s) }
            emitImul(R9, s, liveAfter: liveAfter, into: &e)
            e.store(A, dst, s)
        case let .alu(kind, dst, src, s):
            e.load(A, dst, s)
            switch src {
            case let .reg(off): e.load(C, off, s)
            case let .imm(v): e.movImm(C, v, s)
            }
            if kind == 8 { e.test(A, C, s) } else { e.alu(kind, A, C, s) }
            if kind != 7 && kind != 8 { e.store(A, dst, s) }
        case let .mov(dst, src, s):
            switch src {
            case let .reg(off): e.load(A, off, s)
            case let .imm(v): e.movImm(A, v, s)
            }
            e.store(A, dst, s)
        case let .unary(kind, loc, s):
            e.load(A, loc, s)
            if kind < 2 { e.incDec(kind, A, s) } else { e.notNeg(kind, A, s) }
            e.store(A, loc, s)
        case let .shift(kind, loc, s, count):
            e.load(A, loc, s)
            if count != 0 {
                let bits = s * 8
                // The interpreter's values for the flags the SDM leaves undefined: AF = 0
                // after SHL/SHR/SAR; OF after a count above 1 as for a count of 1 (SHL/ROL:
                // MSB(result) ^ CF; SHR: MSB(operand); SAR: 0; ROR: the two top result bits).
                let fixAF = kind >= 4 && liveAfter & Flag.af != 0
                let fixOF = count > 1 && liveAfter & Flag.of != 0
                if fixOF && kind == 5 { e.movRR(D, A, 8) }
                e.shift(kind, A, s, count)
                if fixAF || fixOF {
                    e.pushfq(); e.pop(C)
                    if fixOF {
                        switch kind {
                        case 4, 0:
                            e.movRR(D, A, 8); e.shift(5, D, 8, bits - 1)
                            e.alu(6, D, C, 4)   // ^ CF (bit 0)
                        case 5:
                            e.shift(5, D, 8, bits - 1)
                        case 1:
                            e.movRR(D, A, 8); e.shift(5, D, 8, bits - 2)
                            e.movRR(HostReg.r8, D, 8); e.shift(5, HostReg.r8, 8, 1)
                            e.alu(6, D, HostReg.r8, 4)
                        default:
                            e.movImm(D, 0, 4)
                        }
                        e.aluImm(4, D, 1, 4)
                        e.shift(4, D, 4, 11)   // to OF's position
                    }
                    e.aluImm(4, C, Int32(bitPattern: ~UInt32((fixOF ? Flag.of : 0) | (fixAF ? Flag.af : 0))), 8)
                    if fixOF { e.alu(1, C, D, 8) }
                    e.push(C); e.popfq()
                }
            }
            e.store(A, loc, s)
        case let .extend(dst, src, from, signed, s):
            e.extendLoad(A, src, from: from, signed: signed, s == 8 ? 8 : 4)
            e.store(A, dst, s)
        case let .lea(dst, base, index, scale, disp, ripRelative, addrSize, s):
            var total = Int64(bitPattern: disp)
            if ripRelative { total &+= Int64(end) }
            if addrSize == 8 {
                guard total >= Int64(Int32.min), total <= Int64(Int32.max) else { return false }
            }
            let d32 = Int32(truncatingIfNeeded: total)
            if base >= 0 { e.load(A, base * 8, 8) }
            else if ripRelative { e.loadContext(A, 8) }
            else { e.movImm(A, 0, 4) }
            if index >= 0 { e.load(C, index * 8, 8) }
            e.lea(A, base: A, index: index >= 0 ? C : -1, scale: scale, disp: d32)
            if addrSize == 2 { e.zeroExtend16(A) }
            else if addrSize == 4 || s == 4 { e.movRR(A, A, 4) }
            e.store(A, dst, s)
        case let .setcc(cc, dst):
            e.setcc(cc, A)
            e.store(A, dst, 1)
        case let .cmov(cc, dst, src, s):
            e.load(A, dst, s)
            e.load(C, src, s)
            e.cmov(cc, A, C, s)
            e.store(A, dst, s)
        case let .xchg(a, b, s):
            e.load(A, a, s)
            e.load(C, b, s)
            e.store(A, b, s)
            e.store(C, a, s)
        case let .signExtendA(opcode, s):
            e.load(A, 0, 8)
            e.signExtendA(opcode, s)
            if opcode == 0x98 { e.store(A, 0, s) } else { e.store(D, 2 * 8, s) }
        case let .carry(opcode):
            e.byte(opcode)
        case .nop:
            break
        case .branch:
            return false
        }
        return true
    }
}
