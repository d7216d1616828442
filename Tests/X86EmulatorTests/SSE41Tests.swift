import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

enum SSE41Cases {
    static var integer: [DiffCase] {
        var c: [DiffCase] = []
        for op in ["pmulld", "pmuldq", "pminsb", "pminsd", "pminuw", "pminud", "pmaxsb", "pmaxsd", "pmaxuw", "pmaxud",
                   "packusdw", "pcmpeqq", "phminposuw"] {
            c.append(LaneGen.xmm("\(op) xmm0, xmm1", dwords: true))
            c.append(LaneGen.xmm("\(op) xmm1, [rsi+16]", dwords: true))
        }
        for kind in ["bw", "bd", "bq", "wd", "wq", "dq"] {
            c.append(LaneGen.xmm("pmovsx\(kind) xmm0, xmm1\npmovzx\(kind) xmm1, xmm1", dwords: true))
            c.append(LaneGen.xmm("pmovsx\(kind) xmm0, [rsi+8]\npmovzx\(kind) xmm1, [rsi+3]", dwords: true))
        }
        c.append(LaneGen.xmm("pcmpeqq xmm0, xmm0\npcmpeqq xmm1, [rsi]"))
        c.append(LaneGen.xmm("movntdqa xmm0, [rsi+16]\nmovntdqa xmm1, [rsi+32]"))
        // PTEST: every flag compared (AF/PF/SF/OF are cleared); zero results made likely.
        c += ["ptest xmm0, xmm1", "ptest xmm0, xmm0", "ptest xmm1, [rsi]", "pxor xmm2, xmm2\nptest xmm2, xmm1",
              "pcmpeqb xmm2, xmm2\nptest xmm2, xmm1", "movdqa xmm2, xmm0\npandn xmm2, xmm1\nptest xmm0, xmm2",
              "movdqa xmm2, xmm1\npor xmm2, xmm0\nptest xmm2, xmm0"].map { LaneGen.xmm($0) }
        return c
    }

    static var blendsInsertsExtracts: [DiffCase] {
        var c: [DiffCase] = []
        for imm in [0, 1, 0x5A, 0x81, 0xFF] {
            c.append(LaneGen.xmm("pblendw xmm0, xmm1, \(imm)"))
            c.append(LaneGen.xmm("blendps xmm0, xmm1, \(imm & 15)\nblendpd xmm1, [rsi], \(imm & 3)"))
        }
        c.append(LaneGen.xmm("blendps xmm0, xmm1, 0xf6\nblendpd xmm1, xmm0, 0xfe\npblendw xmm1, [rsi+16], 0x3c"))
        c += ["movdqu xmm2, [rsi]\npblendvb xmm2, xmm1, xmm0\nmovdqa xmm1, xmm2",
              "movdqu xmm2, [rsi]\nblendvps xmm2, xmm1, xmm0\nmovdqa xmm1, xmm2",
              "movdqu xmm2, [rsi]\nblendvpd xmm2, xmm1, xmm0\nmovdqa xmm1, xmm2",
              "movdqa xmm2, xmm1\npblendvb xmm2, [rsi+16], xmm0\nblendvpd xmm1, [rsi+32], xmm0\nmovdqa xmm0, xmm2"].map { LaneGen.xmm($0) }
        for i in [0, 5, 9, 15, 16, 0xF3] {
            c.append(LaneGen.xmm("pextrb eax, xmm1, \(i)\npextrb rcx, xmm0, \(i + 3)\npextrb [rdi+5], xmm1, \(i)\npinsrb xmm0, ebx, \(i)"))
        }
        c += [
            // ESP (ModRM.rm 4 is not AH here): its low byte made the same natively and emulated.
            LaneGen.xmm("pinsrb xmm1, [rsi+7], 12\nmov r10, rsp\nand rsp, -256\nsub rsp, 0x38\npinsrb xmm0, esp, 3\nmov rsp, r10\npinsrb xmm0, r9d, 15"),
            // PEXTRW's SSE4.1 form (66 0F 3A 15) to a register and to memory.
            LaneGen.xmm(".byte 0x66, 0x0f, 0x3a, 0x15, 0xc8, 5\npextrw [rdi+3], xmm0, 7\n.byte 0x66, 0x0f, 0x3a, 0x15, 0xc3, 10"),
            LaneGen.xmm("pextrd eax, xmm1, 1\npextrd ecx, xmm0, 3\npextrd [rdi+4], xmm1, 2\npextrq rdx, xmm1, 1\npextrq [rdi+16], xmm0, 0"),
            LaneGen.xmm("pinsrd xmm0, ebx, 2\npinsrd xmm1, [rsi+4], 3\npinsrq xmm0, rcx, 1\npinsrq xmm1, [rsi+8], 0"),
            LaneGen.xmm("extractps eax, xmm1, 1\nextractps rcx, xmm0, 3\nextractps [rdi+4], xmm1, 2"),
        ]
        for imm in [0x00, 0x1F, 0x40, 0x9C, 0xE1, 0x35, 0xFF, 0x0F, 0xB0] {
            c.append(LaneGen.xmm("insertps xmm0, xmm1, \(imm)\ninsertps xmm1, [rsi+4], \(imm)"))
        }
        for imm in 0..<8 {
            c.append(LaneGen.xmm("mpsadbw xmm0, xmm1, \(imm)\nmpsadbw xmm1, [rsi], \(7 - imm)"))
        }
        return c
    }

    /// ROUND in every imm8 mode (rounding control, MXCSR.RC, precision suppression; bits
    /// 7:4 ignored) and DPPS/DPPD over the MXCSR generator of `SSEHostTests`.
    static var rounding: [DiffCase] {
        var c: [DiffCase] = []
        for imm in Array(0..<16) + [0x13, 0xFC] {
            c.append(SSECases.sse("roundps xmm0, xmm1, \(imm)", double: false))
            c.append(SSECases.sse("roundpd xmm0, xmm1, \(imm)", double: true))
            c.append(SSECases.sse("roundss xmm0, xmm1, \(imm)", double: false))
            c.append(SSECases.sse("roundsd xmm0, xmm1, \(imm)", double: true))
        }
        c += [SSECases.sse("roundps xmm1, [rsi], 4", double: false), SSECases.sse("roundsd xmm1, [rsi+8], 9", double: true),
              SSECases.sse("roundss xmm0, [rsi+4], 2", double: false), SSECases.sse("roundpd xmm0, [rsi+16], 11", double: true)]
        for imm in [0xFF, 0xF1, 0x31, 0x7F, 0x00, 0x55, 0xAA, 0x3C, 0xC3, 0x1E] {
            c.append(SSECases.sse("dpps xmm0, xmm1, \(imm)", double: false))
            c.append(SSECases.sse("dppd xmm0, xmm1, \(imm)", double: true))
        }
        c.append(SSECases.sse("dpps xmm1, [rsi], 0xf3", double: false))
        c.append(SSECases.sse("dppd xmm1, [rsi+16], 0x33", double: true))
        return c
    }
}

@Suite struct SSE41Tests {
    @Test func integerMatchesTheHost() throws { try DifferentialTests().check(SSE41Cases.integer, seed: 100) }
    @Test func blendsInsertsExtractsMatchTheHost() throws { try DifferentialTests().check(SSE41Cases.blendsInsertsExtracts, seed: 101) }
    @Test func roundAndDotProductMatchTheHost() throws { try DifferentialTests().check(SSE41Cases.rounding, seed: 102) }

    @Test func faultsFollowTheLevelAndControlRegisters() throws {
        for insn in ["pmulld xmm0, xmm1", "ptest xmm0, xmm1", "pmovzxbw xmm0, xmm1", "roundps xmm0, xmm1, 1",
                     "pextrb eax, xmm1, 1", "insertps xmm0, xmm1, 3", "pblendvb xmm1, xmm2, xmm0", "dppd xmm0, xmm1, 0x31"] {
            #expect(try X87Tests.vectorRaised(insn, level: .baseline) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn) == nil, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, cr0Set: X86Bits.cr0EM) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, cr4Clear: X86Bits.cr4OSFXSR) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, cr0Set: X86Bits.cr0TS) == 7, "\(insn)")
        }
        // Without 66 the 0F 38 1x/2x/3x rows are not encodings; MOVNTDQA has no register form.
        #expect(try X87Tests.vectorRaised(".byte 0x0f, 0x38, 0x40, 0xc1") == 6)
        #expect(try X87Tests.vectorRaised(".byte 0x66, 0x0f, 0x38, 0x2a, 0xc1") == 6)
        #expect(try X87Tests.vectorRaised("sub rsp, 32\npmulld xmm0, [rsp+4]") == 13)
        #expect(try X87Tests.vectorRaised("sub rsp, 32\npmovsxbw xmm0, [rsp+1]") == nil)
    }

    @Test func roundPrecisionExceptionFollowsImm8Bit3() throws {
        // 1.5 rounds inexactly: PE unmasked raises #XM unless imm8 bit 3 suppresses it.
        let setup = "sub rsp, 16\nmov dword ptr [rsp], 0x0f80\nldmxcsr [rsp]\nmov eax, 0x3fc00000\nmovd xmm1, eax\n"
        #expect(try X87Tests.vectorRaised(setup + "roundss xmm0, xmm1, 0") == 19)
        #expect(try X87Tests.vectorRaised(setup + "roundss xmm0, xmm1, 8") == nil)
        #expect(try X87Tests.vectorRaised(setup + "roundps xmm0, xmm1, 1", cr4Clear: X86Bits.cr4OSXMMEXCPT) == 6)
    }

    @Test func cpuidOffersSSE41AndSSE42AtV2Only() {
        let (_, _, base, _) = CPUIDTable.query(leaf: 1, subleaf: 0, apicID: 0, cr4: 0, level: .baseline)
        let (_, _, v2, _) = CPUIDTable.query(leaf: 1, subleaf: 0, apicID: 0, cr4: 0, level: .v2)
        #expect(base & (3 << 19) == 0)
        #expect(v2 & (3 << 19) == 3 << 19)
    }
}
