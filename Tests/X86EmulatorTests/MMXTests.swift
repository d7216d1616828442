import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// MMX differential cases: mm0/mm1 load from the record's xmm0/xmm1 slots, the
/// other six from the rsi area (so no register keeps an earlier case's value), the
/// instruction runs, and FNSAVE stores the x87 image (tags, TOP, exponents 0xFFFF, the
/// registers) into the record, which is compared bit for bit with the host's.
func mmxCase(_ insn: String, fix: ((inout [UInt64], inout SplitMix) -> Void)? = nil) -> DiffCase {
    let load = (2..<8).map { "movq mm\($0), [r15+\(328 + $0 * 8)]" }.joined(separator: "\n")
    return DiffCase(asm: "movq mm0, [r15+256]\nmovq mm1, [r15+272]\n\(load)\n\(insn)\nfnsave [r15+144]", flags: allF, fix: fix)
}

enum MMXCases {
    static let binary = ["paddb", "paddw", "paddd", "paddq", "psubb", "psubw", "psubd", "psubq", "paddsb", "paddsw",
                         "paddusb", "paddusw", "psubsb", "psubsw", "psubusb", "psubusw", "pcmpeqb", "pcmpeqw", "pcmpeqd",
                         "pcmpgtb", "pcmpgtw", "pcmpgtd", "pand", "pandn", "por", "pxor", "punpcklbw", "punpcklwd",
                         "punpckldq", "punpckhbw", "punpckhwd", "punpckhdq", "packsswb", "packssdw", "packuswb",
                         "pmullw", "pmulhw", "pmulhuw", "pmuludq", "pmaddwd", "psadbw", "pavgb", "pavgw", "pminub",
                         "pmaxub", "pminsw", "pmaxsw", "psrlw", "psrld", "psrlq", "psllw", "pslld", "psllq", "psraw",
                         "psrad"]

    static var all: [DiffCase] {
        var c = binary.map { mmxCase("\($0) mm0, mm1") }
        c += ["psrlw", "psrld", "psrlq", "psllw", "pslld", "psllq", "psraw", "psrad"].map {
            mmxCase("\($0) mm0, mm1", fix: { r, g in r[7] = g.next() % 70 })
        }
        c += [
            mmxCase("paddd mm0, [rsi]"), mmxCase("pmaddwd mm1, [rsi+3]"), mmxCase("punpckhbw mm0, [rsi]"),
            mmxCase("psrlw mm0, 3\npsllw mm1, 15\npsraw mm0, 16"), mmxCase("psrld mm0, 31\npslld mm1, 7\npsrad mm1, 40"),
            mmxCase("psrlq mm0, 63\npsllq mm1, 1"), mmxCase("psrlq mm1, 64\npsllq mm0, 200"),
            mmxCase("movd mm0, eax\nmovd ebx, mm1\nmovq rcx, mm1\nmovq mm1, rdx"),
            mmxCase("movd mm2, [rsi]\nmovd [rdi], mm1\nmovq [rdi+8], mm0\nmovq mm3, [rsi+8]\nmovq mm4, mm1"),
            mmxCase("movntq [rdi], mm1\nmovq mm7, mm0"),
            mmxCase("pshufw mm0, mm1, 0x1b"), mmxCase("pshufw mm1, [rsi], 0xd2"),
            mmxCase("pinsrw mm0, ebx, 2\npextrw eax, mm1, 3\npextrw ecx, mm0, 6"),
            mmxCase("pmovmskb eax, mm0\npmovmskb ecx, mm1"),
            mmxCase("maskmovq mm0, mm1"),
            mmxCase("movq2dq xmm0, mm1\nmovdq2q mm0, xmm1"),
            mmxCase("paddb mm0, mm1\nemms"),
            mmxCase("cvtpi2ps xmm0, mm1\ncvtpi2pd xmm1, mm0"), mmxCase("cvtpi2ps xmm1, [rsi]\ncvtpi2pd xmm0, [rsi+8]"),
            mmxCase("cvtps2pi mm0, xmm1\ncvttps2pi mm1, xmm0"), mmxCase("cvtpd2pi mm2, xmm1\ncvttpd2pi mm3, xmm0"),
            mmxCase("cvtps2pi mm0, [rsi]\ncvttpd2pi mm1, [rsi+16]"),
        ]
        return c
    }
}

@Suite struct MMXTests {
    @Test func instructionsMatchTheHost() throws { try DifferentialTests().check(MMXCases.all, seed: 60) }

    @Test func faultsFollowCR0() throws {
        #expect(try X87Tests.vectorRaised("movq mm0, mm1") == nil)
        #expect(try X87Tests.vectorRaised("movq mm0, mm1", cr0Set: X86Bits.cr0EM) == 6)
        #expect(try X87Tests.vectorRaised("paddb mm0, mm1", cr0Set: X86Bits.cr0TS) == 7)
        #expect(try X87Tests.vectorRaised("emms", cr0Set: X86Bits.cr0TS) == 7)
        #expect(try X87Tests.vectorRaised("emms", cr0Set: X86Bits.cr0EM) == 6)
        // A pending unmasked x87 error is reported by the next MMX instruction.
        let pending = "sub rsp, 16\nfninit\nmov word ptr [rsp], 0x37b\nfldcw [rsp]\nfld1\nfldz\nfdivp st(1), st\n"
        #expect(try X87Tests.vectorRaised(pending + "movq mm0, mm1") == 16)
        // Encodings without an MMX form.
        for bytes in ["0x0f, 0x6c, 0xc1", "0x0f, 0x6d, 0xc1", "0x0f, 0x73, 0xd8, 1", "0x0f, 0x73, 0xf8, 1", "0x0f, 0x71, 0xc0, 1",
                      "0x0f, 0xd6, 0xc1", "0x0f, 0xe6, 0xc1", "0x0f, 0xe7, 0xc1", "0x0f, 0xf0, 0xc1"] {
            #expect(try X87Tests.vectorRaised(".byte \(bytes)") == 6, "\(bytes)")
        }
    }

    @Test func writesAliasTheX87Registers() throws {
        // An MMX write makes all tags valid, TOP 0 and the exponent all ones; EMMS empties.
        let m = try TestMachine()
        try m.setupLongMode()
        let asm = """
            sub rsp, 256
            fninit
            fld1
            mov rax, 0x1122334455667788
            movq mm3, rax
            fnstenv [rsp]
            mov ebx, [rsp+8]
            fnstsw ax
            mov cx, ax
            emms
            fnstenv [rsp+64]
            mov edx, [rsp+72]
            fld1
            fstp qword ptr [rsp+128]
            mov rax, [rsp+128]
            hlt
            """
        try m.load(try Assembler.assemble(asm))
        #expect(try m.run().isHalt)
        let r = m.cpu.registers()
        #expect(r.rbx & 0xFFFF == 0x1595)      // all valid: st7 = 1.0 valid, mm3 special (exponent 0xFFFF), the rest zero
        #expect(r.rcx & 0x3800 == 0)           // TOP 0
        #expect(r.rdx & 0xFFFF == 0xFFFF)      // EMMS: all empty
        #expect(r.rax == Double(1).bitPattern)
    }
}
