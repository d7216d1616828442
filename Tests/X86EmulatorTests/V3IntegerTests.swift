import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// The x86-64-v3 general-purpose instructions (MOVBE, LZCNT, TZCNT, BMI1, BMI2) against the
/// host CPU, and their #UD rules (below the level, bad VEX forms, LOCK).
enum V3IntegerCases {
    /// The host's CPU flags (/proc/cpuinfo), to skip the differential tests on a host
    /// without these extensions.
    static let hostFlags: Set<String> = {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return [] }
        return Set(line.split(separator: " ").map(String.init))
    }()
    static let hostHasV3Integer = ["movbe", "abm", "bmi1", "bmi2"].allSatisfy(hostFlags.contains)

    /// SF ZF CF OF (ANDN, BLSI/BLSMSK/BLSR, BZHI define them; AF/PF are undefined).
    static let szcoF: UInt64 = 0x8C1
    /// ZF CF OF (BEXTR).
    static let zcoF: UInt64 = 0x841
    /// CF ZF (LZCNT, TZCNT).
    static let czF: UInt64 = 0x41

    /// Sources with few or many leading/trailing zeros (and 0): rbx, rcx, r9; the upper
    /// halves random, so 32/16-bit forms see garbage above their operand.
    static func zeroRuns(_ r: inout [UInt64], _ g: inout SplitMix) {
        for i in [1, 2, 5] {
            switch g.next() % 5 {
            case 0: r[i] = 0
            case 1: r[i] = (g.next() | 1) << (g.next() % 64)
            case 2: r[i] = g.next() >> (g.next() % 64)
            case 3: r[i] = (g.next() & ~0xFFFF_FFFF) | (g.next() % 2 == 0 ? 0 : UInt64(1) << (g.next() % 32))
            default: break
            }
        }
    }

    /// BEXTR controls (start in bits 7:0, length in 15:8) and BZHI indexes around the
    /// operand sizes in rcx and r8; the rest of those registers random.
    static func controls(_ r: inout [UInt64], _ g: inout SplitMix) {
        for i in [2, 4] {
            let start = [0, 1, 15, 16, 31, 32, 33, 63, 64, 65, 200, 255][Int(g.next() % 12)]
            let len = [0, 1, 8, 31, 32, 33, 63, 64, 65, 128, 255][Int(g.next() % 11)]
            let hi = g.next() % 3 == 0 ? g.next() & ~0xFFFF : 0
            r[i] = hi | UInt64(len) << 8 | UInt64(start)
        }
    }

    static var movbe: [DiffCase] {
        ["movbe ax, word ptr [rsi]\nmovbe ebx, dword ptr [rsi+1]\nmovbe rcx, qword ptr [rsi+3]\nmovbe r9, qword ptr [rsi+13]",
         "movbe word ptr [rdi], ax\nmovbe dword ptr [rdi+2], ebx\nmovbe qword ptr [rdi+7], rcx\nmovbe qword ptr [rdi+17], r8",
         "movbe r8w, word ptr [rsi+5]\nmovbe r9d, dword ptr [rsi+9]"].map { DiffCase(asm: $0, flags: allF) }
    }

    static var counts: [DiffCase] {
        var c: [DiffCase] = []
        for op in ["lzcnt", "tzcnt"] {
            for (d, s) in [("rax", "rbx"), ("eax", "ecx"), ("ax", "r9w"), ("r8", "r9"), ("r8d", "ebx")] {
                c.append(DiffCase(asm: "\(op) \(d), \(s)", flags: czF, fix: zeroRuns))
            }
            c.append(DiffCase(asm: "\(op) rax, qword ptr [rsi]\n\(op) ebx, dword ptr [rsi+3]\n\(op) cx, word ptr [rsi+7]", flags: czF))
        }
        return c
    }

    static var bmi1: [DiffCase] {
        var c: [DiffCase] = []
        for (d, a, b) in [("rax", "rbx", "rcx"), ("eax", "ebx", "ecx"), ("r8", "r9", "rax"), ("ebx", "r8d", "r9d"), ("rdx", "rdx", "rdx")] {
            c.append(DiffCase(asm: "andn \(d), \(a), \(b)", flags: szcoF, fix: zeroRuns))
        }
        c.append(DiffCase(asm: "andn rax, rbx, qword ptr [rsi]\nandn ecx, edx, dword ptr [rsi+5]", flags: szcoF))
        for op in ["blsi", "blsmsk", "blsr"] {
            for (d, s) in [("rax", "rbx"), ("eax", "ecx"), ("r8", "r9"), ("r9d", "eax"), ("rdx", "rdx")] {
                c.append(DiffCase(asm: "\(op) \(d), \(s)", flags: szcoF, fix: zeroRuns))
            }
            c.append(DiffCase(asm: "\(op) rax, qword ptr [rsi+1]\n\(op) ebx, dword ptr [rsi+9]", flags: szcoF))
        }
        for (d, s, ctl) in [("rax", "rbx", "rcx"), ("eax", "ebx", "ecx"), ("r9", "rdx", "r8"), ("r8d", "r9d", "r8d")] {
            c.append(DiffCase(asm: "bextr \(d), \(s), \(ctl)", flags: zcoF, fix: controls))
        }
        c.append(DiffCase(asm: "bextr rax, qword ptr [rsi], rcx\nbextr ebx, dword ptr [rsi+3], r8d", flags: zcoF, fix: controls))
        return c
    }

    static var bmi2: [DiffCase] {
        var c: [DiffCase] = []
        for (d, s, n) in [("rax", "rbx", "rcx"), ("eax", "ebx", "ecx"), ("r9", "rdx", "r8"), ("r8d", "r9d", "r8d")] {
            c.append(DiffCase(asm: "bzhi \(d), \(s), \(n)", flags: szcoF, fix: controls))
        }
        c.append(DiffCase(asm: "bzhi rax, qword ptr [rsi], rcx\nbzhi ebx, dword ptr [rsi+3], r8d", flags: szcoF, fix: controls))
        // No flags change: compare all of them (the inputs' random flags must survive).
        for op in ["pdep", "pext"] {
            for (d, a, m) in [("rax", "rbx", "rcx"), ("eax", "ebx", "ecx"), ("r8", "r9", "rdx"), ("r9d", "r8d", "eax")] {
                c.append(DiffCase(asm: "\(op) \(d), \(a), \(m)", flags: allF, fix: zeroRuns))
            }
            c.append(DiffCase(asm: "\(op) rax, rbx, qword ptr [rsi]\n\(op) ecx, edx, dword ptr [rsi+7]", flags: allF))
        }
        for (hi, lo, s) in [("rax", "rbx", "rcx"), ("eax", "ebx", "ecx"), ("r8", "r9", "rdx"), ("rcx", "rcx", "rbx"),
                            ("r9d", "r9d", "r8d"), ("rdx", "rax", "rdx")] {
            c.append(DiffCase(asm: "mulx \(hi), \(lo), \(s)", flags: allF))
        }
        c.append(DiffCase(asm: "mulx rax, rbx, qword ptr [rsi]\nmulx ecx, r8d, dword ptr [rsi+3]", flags: allF))
        for imm in [0, 1, 7, 31, 32, 33, 63, 64, 255] {
            c.append(DiffCase(asm: "rorx rax, rbx, \(imm)\nrorx ecx, edx, \(imm)\nrorx r8, qword ptr [rsi+1], \(imm)", flags: allF))
        }
        for op in ["sarx", "shlx", "shrx"] {
            for (d, s, n) in [("rax", "rbx", "rcx"), ("eax", "ebx", "ecx"), ("r8", "r9", "rdx"), ("r9d", "r9d", "r8d")] {
                c.append(DiffCase(asm: "\(op) \(d), \(s), \(n)", flags: allF, fix: smallCount(70)))
            }
            c.append(DiffCase(asm: "\(op) rax, qword ptr [rsi], rcx\n\(op) ebx, dword ptr [rsi+3], edx", flags: allF))
        }
        return c
    }
}

@Suite struct V3IntegerTests {
    static let host = V3IntegerCases.hostHasV3Integer

    @Test(.enabled(if: host, "the host CPU lacks MOVBE/LZCNT/BMI1/BMI2"))
    func movbeMatchesTheHost() throws { try DifferentialTests().check(V3IntegerCases.movbe, seed: 300) }

    @Test(.enabled(if: host, "the host CPU lacks MOVBE/LZCNT/BMI1/BMI2"))
    func lzcntAndTzcntMatchTheHost() throws { try DifferentialTests().check(V3IntegerCases.counts, seed: 301) }

    @Test(.enabled(if: host, "the host CPU lacks MOVBE/LZCNT/BMI1/BMI2"))
    func bmi1MatchesTheHost() throws { try DifferentialTests().check(V3IntegerCases.bmi1, perCase: 200, seed: 302) }

    @Test(.enabled(if: host, "the host CPU lacks MOVBE/LZCNT/BMI1/BMI2"))
    func bmi2MatchesTheHost() throws { try DifferentialTests().check(V3IntegerCases.bmi2, perCase: 200, seed: 303) }

    static let v3Only = ["movbe eax, dword ptr [rsp]", "movbe word ptr [rsp], ax", "andn eax, ebx, ecx",
                         "bextr rax, rbx, rcx", "blsi eax, ebx", "blsmsk rax, rbx", "blsr eax, ebx",
                         "bzhi eax, ebx, ecx", "mulx rax, rbx, rcx", "pdep eax, ebx, ecx", "pext rax, rbx, rcx",
                         "rorx eax, ebx, 3", "sarx eax, ebx, ecx", "shlx rax, rbx, rcx", "shrx eax, ebx, ecx"]

    @Test func v3InstructionsRaiseUDBelowV3() throws {
        for insn in Self.v3Only {
            #expect(try X87Tests.vectorRaised(insn, level: .v3) == nil, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, level: .v2) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, level: .baseline) == 6, "\(insn)")
            // GPR instructions: no SSE/AVX state, so CR0.EM/TS and CR4.OSFXSR do not matter.
            #expect(try X87Tests.vectorRaised(insn, cr0Set: X86Bits.cr0EM | X86Bits.cr0TS, cr4Clear: X86Bits.cr4OSFXSR,
                                              level: .v3) == nil, "\(insn)")
        }
    }

    /// Below v3, F3 0F BD / F3 0F BC are BSR / BSF with an ignored prefix (as on a CPU
    /// without LZCNT/BMI1), not #UD.
    @Test func lzcntAndTzcntAreBSRAndBSFBelowV3() throws {
        func run(_ level: X86CPULevel) throws -> (UInt64, UInt64) {
            let m = try TestMachine()
            m.cpu.cpuLevel = level
            try m.setupLongMode()
            try m.load(try Assembler.assemble("mov ebx, 0x10\nlzcnt eax, ebx\ntzcnt ecx, ebx\nhlt"))
            #expect(try m.run().isHalt)
            return (m.cpu.registers().rax, m.cpu.registers().rcx)
        }
        #expect(try run(.v3) == (27, 4))
        #expect(try run(.v2) == (4, 4))
    }

    @Test func badVEXFormsRaiseUD() throws {
        // andn eax, ebx, ecx is C4 E2 60 F2 C1; VEX.L=1 is C4 E2 64 F2 C1.
        let andn = "0xc4, 0xe2, 0x60, 0xf2, 0xc1"
        #expect(try X87Tests.vectorRaised(".byte \(andn)", level: .v3) == nil)
        #expect(try X87Tests.vectorRaised(".byte 0xc4, 0xe2, 0x64, 0xf2, 0xc1", level: .v3) == 6)      // VEX.L = 1
        for prefix in ["0x66", "0xf2", "0xf3", "0xf0", "0x40", "0x48"] {                                // before VEX
            #expect(try X87Tests.vectorRaised(".byte \(prefix), \(andn)", level: .v3) == 6, "\(prefix)")
        }
        #expect(try X87Tests.vectorRaised(".byte 0x26, \(andn)", level: .v3) == nil)                   // segment: allowed
        #expect(try X87Tests.vectorRaised(".byte 0xc4, 0xe0, 0x60, 0xf2, 0xc1", level: .v3) == 6)      // map 0
        #expect(try X87Tests.vectorRaised(".byte 0xc4, 0xe4, 0x60, 0xf2, 0xc1", level: .v3) == 6)      // map 4
        #expect(try X87Tests.vectorRaised(".byte 0xc4, 0xe2, 0x61, 0xf2, 0xc1", level: .v3) == 6)      // ANDN with 66
        #expect(try X87Tests.vectorRaised(".byte 0xc4, 0xe2, 0x60, 0xf3, 0xc1", level: .v3) == 6)      // BLS* /0
        #expect(try X87Tests.vectorRaised(".byte 0xc4, 0xe2, 0x60, 0xf3, 0xe1", level: .v3) == 6)      // BLS* /4
        // AVX is not implemented: VEX vector instructions raise #UD.
        #expect(try X87Tests.vectorRaised("vaddps xmm0, xmm1, xmm2", level: .v3) == 6)
        #expect(try X87Tests.vectorRaised("vpxor ymm0, ymm1, ymm2", level: .v3) == 6)
    }

    /// Outside 64-bit mode C4/C5 with a memory ModRM are LES/LDS; with 11 in the top bits
    /// a VEX prefix (whose R/X/B and vvvv[3] are not used).
    @Test func vexAndLESInCompatibilityMode() throws {
        let m = try TestMachine()
        m.cpu.cpuLevel = .v3
        try m.setupLongMode()
        // At 0x9000: a far pointer (offset 0x1234, selector 0x18) for LES.
        try m.memory.write(UInt32(0x1234), at: 0x9000)
        try m.memory.write(UInt16(0x18), at: 0x9004)
        let code = try Assembler.assemble("""
            mov ebx, 0xf0f0
            mov ecx, 0xff00
            andn eax, ebx, ecx
            mov edx, 0x9000
            les esi, [edx]
            rorx edi, ecx, 8
            hlt
            """, bits: 32)
        try m.load(code)
        var s = m.cpu.specialRegisters()
        s.cs = .flat32(selector: 0x20, code: true)
        m.cpu.setSpecialRegisters(s)
        var regs = m.cpu.registers()
        regs.rip = TestMachine.codeBase
        m.cpu.setRegisters(regs)
        #expect(try m.run().isHalt)
        let r = m.cpu.registers()
        #expect(r.rax == 0x0F00)
        #expect(r.rsi == 0x1234 && m.cpu.specialRegisters().es.selector == 0x18)
        #expect(r.rdi == 0xFF)
    }

    @Test func lockRaisesUDOutsideReadModifyWriteToMemory() throws {
        let udWithLock = ["crc32 eax, ebx", "crc32 eax, byte ptr [rsp]", "add eax, ebx", "cmp dword ptr [rsp], eax",
                          "mov dword ptr [rsp], eax", "nop", "bts eax, 3", "xchg eax, ebx", "inc eax",
                          "movbe dword ptr [rsp], eax", "lzcnt eax, dword ptr [rsp]", "popcnt eax, dword ptr [rsp]",
                          "movdqa xmm0, xmm1", "andn eax, ebx, ecx", "test dword ptr [rsp], eax", "lea eax, [rsp]"]
        for insn in udWithLock {
            #expect(try X87Tests.vectorRaised(".byte 0xf0\n" + insn, level: .v3) == 6, "lock \(insn)")
            #expect(try X87Tests.vectorRaised("sub rsp, 16\n" + insn, level: .v3) == nil, "\(insn)")
        }
        let locked = ["add dword ptr [rsp], eax", "sub qword ptr [rsp], 3", "xor byte ptr [rsp], bl",
                      "xchg dword ptr [rsp], eax", "inc dword ptr [rsp]", "neg qword ptr [rsp]", "not word ptr [rsp]",
                      "bts dword ptr [rsp], 3", "btc dword ptr [rsp], eax", "xadd dword ptr [rsp], eax",
                      "cmpxchg dword ptr [rsp], ebx", "cmpxchg8b qword ptr [rsp]", "cmpxchg16b xmmword ptr [rsp]"]
        for insn in locked {
            #expect(try X87Tests.vectorRaised("sub rsp, 32\nand rsp, -16\nlock " + insn, level: .v3) == nil, "lock \(insn)")
        }
    }

    @Test func cpuidOffersExactlyTheImplementedV3Bits() {
        func q(_ leaf: UInt32, _ level: X86CPULevel) -> (UInt32, UInt32, UInt32, UInt32) {
            CPUIDTable.query(leaf: leaf, subleaf: 0, apicID: 0, cr4: 0, level: level)
        }
        #expect(q(1, .v3).2 & (1 << 22) != 0 && q(1, .v2).2 & (1 << 22) == 0)               // MOVBE
        #expect(q(0x8000_0001, .v3).2 & (1 << 5) != 0 && q(0x8000_0001, .v2).2 & (1 << 5) == 0)  // ABM
        #expect(q(7, .v3).1 & ~2 == (1 << 3) | (1 << 5) | (1 << 8) && q(7, .v2).1 & ~2 == 0) // BMI1, AVX2, BMI2 (bit 1: TSC_ADJUST)
        // AVX (28), FMA (12), F16C (29) at v3 only. XSAVE: XSaveTests.
        let avx: UInt32 = (1 << 28) | (1 << 12) | (1 << 29)
        #expect(q(1, .v3).2 & avx == avx && q(1, .v2).2 & avx == 0)
    }
}
