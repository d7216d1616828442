import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// Lane generators shared by the SSSE3/SSE4 differential cases: each 16-bit lane of xmm0,
/// xmm1 and the rsi memory area is, half the time, an edge value (0, ±1, the signed and
/// unsigned extremes of bytes and words, byte patterns that saturate), else random.
enum LaneGen {
    static let edges16: [UInt16] = [0, 1, 0xFFFF, 0x7FFF, 0x8000, 0x7F7F, 0x8080, 0x00FF, 0xFF00, 0x007F, 0x0080,
                                    0x7F80, 0x807F, 0xFF80, 0x80FF, 0x0101, 0x4000, 0xC000]

    static func edges(dwords: Bool = false) -> (inout [UInt8], Int, inout SplitMix) -> Void {
        { rec, base, g in
            for off in stride(from: 256, to: 384, by: 2) where g.next() % 2 == 0 {
                var v = edges16[Int(g.next() % UInt64(edges16.count))]
                // Dword extremes: pair a 0x8000/0x7FFF high half with a zero/all-ones low half.
                if dwords && off % 4 == 0 && g.next() % 2 == 0 { v = g.next() % 2 == 0 ? 0 : 0xFFFF }
                rec[base + off] = UInt8(v & 0xFF); rec[base + off + 1] = UInt8(v >> 8)
            }
        }
    }

    static func xmm(_ insn: String, dwords: Bool = false) -> DiffCase {
        DiffCase(asm: insn, flags: allF, record: edges(dwords: dwords))
    }
}

enum SSSE3Cases {
    static let binary = ["pshufb", "phaddw", "phaddd", "phaddsw", "phsubw", "phsubd", "phsubsw", "pmaddubsw",
                         "pmulhrsw", "psignb", "psignw", "psignd", "pabsb", "pabsw", "pabsd"]

    static var xmmForms: [DiffCase] {
        var c = binary.map { LaneGen.xmm("\($0) xmm0, xmm1", dwords: true) }
        c += binary.map { LaneGen.xmm("\($0) xmm1, [rsi]", dwords: true) }
        for imm in [0, 1, 3, 7, 8, 15, 16, 17, 24, 31, 32, 200, 255] {
            c.append(LaneGen.xmm("palignr xmm0, xmm1, \(imm)"))
        }
        c.append(LaneGen.xmm("palignr xmm1, [rsi+16], 5"))
        c.append(LaneGen.xmm("pshufb xmm0, xmm0\npabsw xmm1, xmm1"))
        return c
    }

    static var mmxForms: [DiffCase] {
        var c = binary.map { mmxCase("\($0) mm0, mm1") }
        c += ["pshufb", "phaddsw", "pmaddubsw", "psignw"].map { mmxCase("\($0) mm1, [rsi+8]") }
        for imm in [0, 1, 4, 7, 8, 9, 15, 16, 100] { c.append(mmxCase("palignr mm0, mm1, \(imm)")) }
        c.append(mmxCase("palignr mm1, [rsi], 3"))
        return c
    }
}

@Suite struct SSSE3Tests {
    @Test func xmmFormsMatchTheHost() throws { try DifferentialTests().check(SSSE3Cases.xmmForms, seed: 90) }
    @Test func mmxFormsMatchTheHost() throws { try DifferentialTests().check(SSSE3Cases.mmxForms, seed: 91) }

    @Test func faultsFollowTheLevelAndControlRegisters() throws {
        for insn in ["pshufb xmm0, xmm1", "phaddw mm0, mm1", "palignr xmm0, xmm1, 3", "pabsd mm0, mm1", "pmulhrsw xmm1, xmm0"] {
            #expect(try X87Tests.vectorRaised(insn, level: .baseline) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn) == nil, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, cr0Set: X86Bits.cr0EM) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, cr4Clear: X86Bits.cr4OSFXSR) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, cr0Set: X86Bits.cr0TS) == 7, "\(insn)")
        }
        // Only 66 selects the XMM form; F2/F3 are not SSSE3 encodings.
        #expect(try X87Tests.vectorRaised(".byte 0xf3, 0x0f, 0x38, 0x00, 0xc1") == 6)
        #expect(try X87Tests.vectorRaised(".byte 0xf2, 0x0f, 0x3a, 0x0f, 0xc1, 1") == 6)
        // An aligned-only XMM memory operand.
        #expect(try X87Tests.vectorRaised("sub rsp, 32\npshufb xmm0, [rsp+1]") == 13)
        #expect(try X87Tests.vectorRaised("sub rsp, 32\nand rsp, -16\npshufb mm0, [rsp+1]") == nil)
        // The MMX forms report a pending x87 error.
        let pending = "sub rsp, 16\nfninit\nmov word ptr [rsp], 0x37b\nfldcw [rsp]\nfld1\nfldz\nfdivp st(1), st\n"
        #expect(try X87Tests.vectorRaised(pending + "pshufb mm0, mm1") == 16)
        #expect(try X87Tests.vectorRaised(pending + "pshufb xmm0, xmm1") == nil)
    }

    @Test func cpuidOffersSSSE3AtV2Only() {
        let (_, _, base, _) = CPUIDTable.query(leaf: 1, subleaf: 0, apicID: 0, cr4: 0, level: .baseline)
        let (_, _, v2, _) = CPUIDTable.query(leaf: 1, subleaf: 0, apicID: 0, cr4: 0, level: .v2)
        #expect(base & (1 << 9) == 0)
        #expect(v2 & (1 << 9) != 0)
    }
}
