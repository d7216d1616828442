import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// Generated x87 and floating-point operands with the special values over-represented.
enum FloatGen {
    /// An 80-bit register value (significand, sign/exponent).
    static func ext(_ g: inout SplitMix) -> (UInt64, UInt16) {
        let sign: UInt16 = g.next() & 1 == 0 ? 0 : 0x8000
        let r = g.next()
        switch g.next() % 18 {
        case 0: return (0, sign)                                            // ±0
        case 1: return (r >> 1 | 1, sign)                                   // denormal
        case 2: return (r | 1 << 63, sign)                                  // pseudo-denormal
        case 3: return (r & ~(1 << 63), sign | UInt16(1 + g.next() % 0x7FFE))  // unnormal
        case 4: return (1 << 63, sign | 0x7FFF)                             // ±infinity
        case 5: return (0xC000_0000_0000_0000 | (r & 0xFFFF), sign | 0x7FFF)  // QNaN
        case 6: return (0x8000_0000_0000_0001 | (r & 0x3FFF_FFFF_FFFF_FFFF), sign | 0x7FFF)  // SNaN
        case 7: return (r & ~(1 << 63), sign | 0x7FFF)                      // pseudo-infinity/NaN
        case 8: return (.max, sign | 0x7FFE)                                // largest
        case 9: return (1 << 63, sign | 1)                                  // smallest normal
        case 10: return (1 << 63 | (r & 0xFF) << 55, sign | UInt16(0x3FFF + g.next() % 8))  // small exact
        case 11: return (1 << 63 | r >> 1, sign | UInt16(0x3FFF - g.next() % 70))  // in (-1, 1)
        case 12: return (1 << 63 | r >> 1, sign | UInt16(0x3FFF + 64 - g.next() % 3))  // near 2^63
        default: return (1 << 63 | r, sign | UInt16(0x3FFF + Int(g.next() % 80) - 40))
        }
    }

    static let f32: [UInt32] = [0, 0x8000_0000, 1, 0x8000_0001, 0x007F_FFFF, 0x0080_0000, 0x7F7F_FFFF, 0xFF7F_FFFF,
                                0x7F80_0000, 0xFF80_0000, 0x7FC0_0000, 0xFFC0_0001, 0x7F80_0001, 0xFFA0_0000,
                                0x3F80_0000, 0xBF80_0000, 0x3F00_0000, 0x4F00_0000, 0xCF00_0000, 0x5F00_0000]
    static let f64: [UInt64] = [0, 0x8000_0000_0000_0000, 1, 0x800F_FFFF_FFFF_FFFF, 0x0010_0000_0000_0000,
                                0x7FEF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000, 0xFFF0_0000_0000_0000,
                                0x7FF8_0000_0000_0000, 0x7FF0_0000_0000_0001, 0xFFF4_0000_0000_0000,
                                0x3FF0_0000_0000_0000, 0xBFE0_0000_0000_0000, 0x41E0_0000_0000_0000,
                                0xC3E0_0000_0000_0000, 0x43E0_0000_0000_0000, 0x3FF0_0000_0000_0001]

    static func float32(_ g: inout SplitMix) -> UInt32 {
        g.next() % 3 == 0 ? UInt32(truncatingIfNeeded: g.next()) : f32[Int(g.next() % UInt64(f32.count))]
    }
    static func float64(_ g: inout SplitMix) -> UInt64 {
        g.next() % 3 == 0 ? g.next() : f64[Int(g.next() % UInt64(f64.count))]
    }

    static func put<T: FixedWidthInteger>(_ v: T, _ rec: inout [UInt8], _ at: Int) {
        withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { rec[at + i] = b } }
    }

    /// An FSAVE image at record+144 (random rounding/precision control, usually all
    /// exceptions masked, masked flags only, random TOP, tags and registers) and special
    /// operands at the rsi area.
    static func x87Record(unmasked: Bool) -> (inout [UInt8], Int, inout SplitMix) -> Void {
        { rec, base, g in
            let pc: [UInt16] = [0, 2, 3, 3]
            var mask: UInt16 = 0x3F
            if unmasked && g.next() % 2 == 0 { mask = UInt16(g.next() & 0x3F) }
            let fcw = 0x40 | mask | pc[Int(g.next() % 4)] << 8 | UInt16(g.next() % 4) << 10
            let fsw = UInt16(g.next() & 0x4700) | UInt16(g.next() % 8) << 11 | (UInt16(g.next() & 0x3F) & mask)
            var ftw: UInt16 = 0
            for i in 0..<8 where g.next() % 5 == 0 { ftw |= 3 << UInt16(i * 2) }
            let img = base + 144
            for i in 0..<28 { rec[img + i] = 0 }
            put(UInt32(fcw) | 0xFFFF_0000, &rec, img)
            put(UInt32(fsw) | 0xFFFF_0000, &rec, img + 4)
            put(UInt32(ftw) | 0xFFFF_0000, &rec, img + 8)
            for i in 0..<8 {
                let (m, e) = ext(&g)
                put(m, &rec, img + 28 + i * 10); put(e, &rec, img + 36 + i * 10)
            }
            // Memory operand at rsi: a float, a double, an 80-bit value, a BCD or integer.
            let mem = base + 288
            switch g.next() % 5 {
            case 0: put(float32(&g), &rec, mem)
            case 1: put(float64(&g), &rec, mem)
            case 2: let (m, e) = ext(&g); put(m, &rec, mem); put(e, &rec, mem + 8)
            case 3:
                var bcd: UInt64 = 0
                for k in 0..<16 { bcd |= (g.next() % 10) << UInt64(k * 4) }
                put(bcd, &rec, mem); put(UInt16(g.next() & 0x8000), &rec, mem + 8)
            default: break
            }
        }
    }
}

func x87Case(_ insn: String, unmasked: Bool = true) -> DiffCase {
    DiffCase(asm: "frstor [r15+144]\n\(insn)\nfnsave [r15+144]", flags: allF, record: FloatGen.x87Record(unmasked: unmasked))
}

enum X87Cases {
    /// The instructions that raised #UD before (issue 17) and the constants that ignored
    /// the rounding control.
    static var previouslyMissing: [DiffCase] {
        ["fucom st(1)", "fucom st(3)", "fucomp st(2)", "f2xm1", "fbstp tbyte ptr [rdi]", "fpatan", "fscale", "fxam",
         "fxtract", "fyl2x", "fyl2xp1", "frndint", "fldl2t", "fldl2e", "fldpi", "fldlg2", "fldln2"].map { x87Case($0) }
    }

    static var arithmetic: [DiffCase] {
        ["fadd st, st(1)", "fadd st(2), st", "faddp st(1), st", "fsub st, st(3)", "fsub st(1), st", "fsubp st(2), st",
         "fsubr st, st(1)", "fsubrp st(1), st", "fmul st, st(5)", "fmulp st(2), st", "fdiv st, st(1)", "fdiv st(3), st",
         "fdivp st(1), st", "fdivr st, st(2)", "fdivrp st(1), st", "fsqrt", "fprem", "fprem1", "fchs", "fabs",
         "fadd dword ptr [rsi]", "fmul qword ptr [rsi]", "fsub dword ptr [rsi]", "fsubr qword ptr [rsi]",
         "fdiv dword ptr [rsi]", "fdivr qword ptr [rsi]", "fiadd dword ptr [rsi]", "fimul word ptr [rsi]",
         "fisub word ptr [rsi]", "fisubr dword ptr [rsi]", "fidiv dword ptr [rsi]", "fidivr word ptr [rsi]"].map { x87Case($0) }
    }

    static var transcendental: [DiffCase] {
        ["fsin", "fcos", "fsincos", "fptan", "f2xm1", "fyl2x", "fyl2xp1", "fpatan", "fscale", "fxtract", "frndint"]
            .map { x87Case($0) }
    }

    static var compareAndMove: [DiffCase] {
        ["fcom st(1)", "fcomp st(2)", "fcompp", "fucompp", "ftst", "fxam", "fcom dword ptr [rsi]", "fcomp qword ptr [rsi]",
         "ficom word ptr [rsi]", "ficomp dword ptr [rsi]", "fcomi st, st(1)", "fucomi st, st(2)", "fcomip st, st(1)",
         "fucomip st, st(3)", "fcmovb st, st(1)", "fcmove st, st(2)", "fcmovbe st, st(3)", "fcmovu st, st(1)",
         "fcmovnb st, st(4)", "fcmovne st, st(1)", "fcmovnbe st, st(2)", "fcmovnu st, st(7)", "fld st(3)", "fxch st(2)",
         "fst st(3)", "fstp st(1)", "ffree st(2)", "fincstp", "fdecstp", "fnop", "fnstsw ax", "fnclex", "fninit",
         "fldz", "fld1", "fnstcw [rdi]", "fldcw [rsi]", "fldenv [rsi]"].map { x87Case($0) }
    }

    static var loadStore: [DiffCase] {
        ["fld dword ptr [rsi]", "fld qword ptr [rsi]", "fld tbyte ptr [rsi]", "fild word ptr [rsi]", "fild dword ptr [rsi]",
         "fild qword ptr [rsi]", "fbld tbyte ptr [rsi]", "fst dword ptr [rdi]", "fstp dword ptr [rdi+4]",
         "fst qword ptr [rdi]", "fstp qword ptr [rdi+8]", "fstp tbyte ptr [rdi]", "fist word ptr [rdi]",
         "fistp word ptr [rdi]", "fist dword ptr [rdi]", "fistp dword ptr [rdi]", "fistp qword ptr [rdi]",
         "fisttp word ptr [rdi]", "fisttp dword ptr [rdi]", "fisttp qword ptr [rdi]", "fbstp tbyte ptr [rdi]",
         "fisttp qword ptr [rdi]"].map { x87Case($0) }
            // Two waiting instructions: an unmasked error of the first would fault the second.
            + ["fld dword ptr [rsi]\nfstp qword ptr [rdi]", "fld tbyte ptr [rsi]\nfbstp tbyte ptr [rdi+16]"].map { x87Case($0, unmasked: false) }
    }
}

@Suite struct X87Tests {
    @Test func previouslyMissingInstructionsMatchTheHost() throws {
        try DifferentialTests().check(X87Cases.previouslyMissing, seed: 170)
    }
    @Test func arithmeticMatchesTheHost() throws { try DifferentialTests().check(X87Cases.arithmetic, seed: 171) }
    @Test func transcendentalsMatchTheHost() throws { try DifferentialTests().check(X87Cases.transcendental, perCase: 300, seed: 172) }
    @Test func comparesAndMovesMatchTheHost() throws { try DifferentialTests().check(X87Cases.compareAndMove, seed: 173) }
    @Test func loadsAndStoresMatchTheHost() throws { try DifferentialTests().check(X87Cases.loadStore, seed: 174) }

    /// Runs `asm` (long mode, with a handler for every vector 0-31 that reports the vector
    /// on port 0xE9 and halts); returns the vector raised, or nil if `asm` reached its hlt.
    static func vectorRaised(_ asm: String, cr0Set: UInt64 = 0, cr0Clear: UInt64 = 0, cr4Clear: UInt64 = 0,
                             level: X86CPULevel = .v2) throws -> UInt8? {
        try vectorRaisedOn(asm, cr0Set: cr0Set, cr0Clear: cr0Clear, cr4Clear: cr4Clear, level: level).0
    }

    /// `vectorRaised`, and the machine afterwards (its state at the fault).
    static func vectorRaisedOn(_ asm: String, cr0Set: UInt64 = 0, cr0Clear: UInt64 = 0, cr4Clear: UInt64 = 0,
                               level: X86CPULevel = .v2) throws -> (UInt8?, TestMachine) {
        let m = try TestMachine()
        m.cpu.cpuLevel = level
        try m.setupLongMode()
        for v in 0..<32 {
            let handler = UInt64(0x10_8000 + v * 16)
            try m.load([0xB0, UInt8(v), 0xE6, 0xE9, 0xF4], at: handler)   // mov al, v; out 0xe9, al; hlt
            let lo: UInt64 = (handler & 0xFFFF) | (0x10 << 16) | (UInt64(0x8E) << 40) | ((handler >> 16) & 0xFFFF) << 48
            try m.memory.write(lo, at: 0x8000 + UInt64(v) * 16)
            try m.memory.write(handler >> 32, at: 0x8000 + UInt64(v) * 16 + 8)
        }
        var s = m.cpu.specialRegisters()
        s.idt = X86DescriptorTable(base: 0x8000, limit: 0xFFF)
        s.cr0 = (s.cr0 | cr0Set) & ~cr0Clear
        s.cr4 &= ~cr4Clear
        m.cpu.setSpecialRegisters(s)
        try m.load(try Assembler.assemble(asm + "\nhlt"))
        #expect(try m.run().isHalt)
        return (m.output.first, m)
    }

    @Test func unmaskedExceptionRaisesMFAtTheNextWaitingInstruction() throws {
        // Unmask divide-by-zero, divide 1 by 0: no fault yet (the error is pending), the
        // next waiting instruction (fwait) raises #MF; fnstsw (no wait) does not.
        let setup = "sub rsp, 16\nfninit\nmov word ptr [rsp], 0x37b\nfldcw [rsp]\nfld1\nfldz\nfdivp st(1), st\nfnstsw ax\n"
        #expect(try X87Tests.vectorRaised(setup) == nil)
        #expect(try X87Tests.vectorRaised(setup + "fwait") == 16)
        #expect(try X87Tests.vectorRaised(setup + "fld1") == 16)
        #expect(try X87Tests.vectorRaised(setup + "fnclex\nfwait\nfld1") == nil)
        // Masked: no exception at all.
        #expect(try X87Tests.vectorRaised("fninit\nfld1\nfldz\nfdivp st(1), st\nfwait\nfld1") == nil)
        // MMX instructions also report a pending x87 error.
        #expect(try X87Tests.vectorRaised(setup + "emms") == 16)
    }

    @Test func pendingErrorStatusWordShowsESAndB() throws {
        let m = try TestMachine()
        try m.setupLongMode()
        try m.load(try Assembler.assemble("sub rsp, 16\nfninit\nmov word ptr [rsp], 0x37b\nfldcw [rsp]\nfld1\nfldz\nfdivp st(1), st\nfnstsw ax\nhlt"))
        #expect(try m.run().isHalt)
        let sw = m.cpu.registers().rax & 0xFFFF
        #expect(sw & 0x0004 != 0)       // ZE
        #expect(sw & 0x8080 == 0x8080)  // B and ES
    }

    @Test func emAndTSRaiseNM() throws {
        #expect(try X87Tests.vectorRaised("fld1", cr0Set: X86Bits.cr0EM) == 7)
        #expect(try X87Tests.vectorRaised("fld1", cr0Set: X86Bits.cr0TS) == 7)
        #expect(try X87Tests.vectorRaised("fwait", cr0Set: X86Bits.cr0TS) == 7)
        #expect(try X87Tests.vectorRaised("fwait", cr0Set: X86Bits.cr0TS, cr0Clear: X86Bits.cr0MP) == nil)
    }

    @Test func reservedEncodingsRaiseUD() throws {
        for bytes in ["0xd9, 0xd1", "0xd9, 0xe2", "0xd9, 0xef", "0xda, 0xe0", "0xdb, 0xf8", "0xdd, 0xf0", "0xde, 0xd8", "0xdf, 0xe1"] {
            #expect(try X87Tests.vectorRaised(".byte \(bytes)") == 6, "\(bytes)")
        }
    }

    @Test func fsaveFormatsRoundTripInEveryMode() throws {
        // 16-bit operand size uses the 94-byte image: save, change, restore, save again.
        let asm = """
            sub rsp, 256
            fninit
            fldpi
            fld1
            fnsave [rsp]
            fldz
            frstor [rsp]
            fstp qword ptr [rsp+200]
            fstp qword ptr [rsp+208]
            fldpi
            data16 fnsave [rsp]
            fld1
            data16 frstor [rsp]
            fstp qword ptr [rsp+216]
            mov rax, [rsp+200]
            mov rbx, [rsp+208]
            mov rcx, [rsp+216]
            hlt
            """
        let m = try TestMachine()
        try m.setupLongMode()
        try m.load(try Assembler.assemble(asm))
        #expect(try m.run().isHalt)
        let r = m.cpu.registers()
        #expect(r.rax == Double(1).bitPattern)
        #expect(r.rbx == Double.pi.bitPattern)
        #expect(r.rcx == Double.pi.bitPattern)   // restored from the 16-bit image after fstp of 1.0
    }
}
