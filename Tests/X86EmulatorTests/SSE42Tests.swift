import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

enum SSE42Cases {
    /// String operands: lanes from a small alphabet (so equal-any/each/ordered match),
    /// occasional zero bytes and words (implicit ends), signed extremes (ranges); xmm1 is
    /// sometimes xmm0, or holds xmm0's prefix at an offset (equal ordered finds it).
    static func strings(_ rec: inout [UInt8], _ base: Int, _ g: inout SplitMix) {
        let words: [UInt16] = [0x6161, 0x6162, 0x6261, 0x6361, 0x0061, 0x6100, 0x8080, 0x7F7F, 0xFF61, 0x61FF,
                               0x8000, 0x7FFF, 0x6262, 0x0000]
        for off in stride(from: 256, to: 288, by: 2) {
            let w = g.next() % 24 == 0 ? 0 : words[Int(g.next() % UInt64(words.count - 1))]
            rec[base + off] = UInt8(w & 0xFF); rec[base + off + 1] = UInt8(w >> 8)
        }
        switch g.next() % 4 {
        case 0: for k in 0..<16 { rec[base + 272 + k] = rec[base + 256 + k] }
        case 1:
            let shift = Int(g.next() % 12)
            for k in 0..<(16 - shift) { rec[base + 272 + shift + k] = rec[base + 256 + k] }
        default: break
        }
    }

    /// Explicit lengths: small (inside and past the element count, negative) and extreme.
    static func lengths(_ r: inout [UInt64], _ g: inout SplitMix) {
        let extremes: [UInt64] = [0x8000_0000, 0x7FFF_FFFF, 0xFFFF_FFFF_8000_0000, 0x8000_0000_0000_0000,
                                  0x7FFF_FFFF_FFFF_FFFF, 0x1_0000_0003, 0xFFFF_FFFF_0000_0010]
        for i in [0, 3] {
            r[i] = g.next() % 8 == 0 ? extremes[Int(g.next() % UInt64(extremes.count))]
                : UInt64(bitPattern: Int64(g.next() % 41) - 20)
        }
    }

    /// Every imm8 with bits 6:0 (bit 7 ignored), `perCase` modes per case, each result
    /// (ECX or xmm0, and the flags) stored in the record's memory areas.
    static func stringCases(_ insn: String, index: Bool) -> [DiffCase] {
        let perCase = index ? 16 : 8
        var c: [DiffCase] = []
        for first in stride(from: 0, to: 128, by: perCase) {
            var asm = index ? "" : "movdqa xmm2, xmm0\n"
            for k in 0..<perCase {
                let imm = first + k | (k == 5 ? 0x80 : 0)
                let op = "\(insn) \(index ? "xmm0" : "xmm2"), xmm1, \(imm)"
                asm += op + "\npushfq\npop r8\nand r8d, 0x8d5\n"
                if index { asm += "mov [rdi+\(8 * k)], ecx\nmov [rdi+\(8 * k + 4)], r8d\n" }
                else { asm += "movdqu [rdi+\(16 * k)], xmm0\nmov [rsi+\(4 * k)], r8d\n" }
            }
            c.append(DiffCase(asm: asm, flags: allF, fix: lengths, record: strings))
        }
        return c
    }

    static var stringCompares: [DiffCase] {
        stringCases("pcmpistri", index: true) + stringCases("pcmpestri", index: true)
            + stringCases("pcmpistrm", index: false) + stringCases("pcmpestrm", index: false)
    }

    static var wideLengths: [DiffCase] {
        [0x0C, 0x45, 0x3A, 0x01].map { imm in
            DiffCase(asm: ".byte 0x66, 0x48, 0x0f, 0x3a, 0x61, 0xc1, \(imm)\nmov ebx, ecx\n.byte 0x66, 0x48, 0x0f, 0x3a, 0x60, 0xc1, \(imm ^ 0x40)",
                     flags: allF, fix: lengths, record: strings)
        }
    }

    static var other: [DiffCase] {
        [LaneGen.xmm("pcmpgtq xmm0, xmm1", dwords: true), LaneGen.xmm("pcmpgtq xmm1, [rsi]", dwords: true),
         LaneGen.xmm("movdqa xmm2, xmm0\npcmpgtq xmm2, xmm0\npcmpgtq xmm0, xmm2"),
         LaneGen.xmm("pcmpistri xmm0, [rsi+3], 0x0c\nmov eax, ecx\npcmpistrm xmm1, [rsi+1], 0x44"),
         DiffCase(asm: "crc32 eax, bl\ncrc32 ecx, bh\ncrc32 edx, r8b", flags: allF),
         DiffCase(asm: "crc32 eax, bx\ncrc32 ecx, r9w", flags: allF),
         DiffCase(asm: "crc32 eax, ebx\ncrc32 rcx, rdx\ncrc32 r8, r9b", flags: allF),
         DiffCase(asm: "crc32 eax, byte ptr [rsi]\ncrc32 ebx, word ptr [rsi+1]\ncrc32 ecx, dword ptr [rsi+3]\ncrc32 rdx, qword ptr [rsi+5]", flags: allF)]
    }
}

@Suite struct SSE42Tests {
    @Test func stringComparesMatchTheHostInEveryMode() throws { try DifferentialTests().check(SSE42Cases.stringCompares, perCase: 60, seed: 110) }
    @Test func explicitLengthsWithREXW() throws { try DifferentialTests().check(SSE42Cases.wideLengths, seed: 111) }
    @Test func crc32AndPCMPGTQMatchTheHost() throws { try DifferentialTests().check(SSE42Cases.other, seed: 112) }

    @Test func faultsFollowTheLevelAndControlRegisters() throws {
        for insn in ["pcmpgtq xmm0, xmm1", "pcmpistri xmm0, xmm1, 0", "pcmpestrm xmm0, xmm1, 0x40"] {
            #expect(try X87Tests.vectorRaised(insn, level: .baseline) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn) == nil, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, cr0Set: X86Bits.cr0EM) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, cr4Clear: X86Bits.cr4OSFXSR) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, cr0Set: X86Bits.cr0TS) == 7, "\(insn)")
        }
        // CRC32 is not an SSE state instruction: CR0.EM/TS and CR4.OSFXSR do not apply.
        #expect(try X87Tests.vectorRaised("crc32 eax, ebx", level: .baseline) == 6)
        #expect(try X87Tests.vectorRaised("crc32 eax, ebx", cr0Set: X86Bits.cr0EM | X86Bits.cr0TS, cr4Clear: X86Bits.cr4OSFXSR) == nil)
        // 0F 38 F0/F1 without F2 is MOVBE, outside v2.
        #expect(try X87Tests.vectorRaised(".byte 0x0f, 0x38, 0xf0, 0x06") == 6)
        // The string compares accept an unaligned memory operand.
        #expect(try X87Tests.vectorRaised("sub rsp, 32\npcmpistri xmm0, [rsp+1], 0") == nil)
    }

    @Test func crc32OfAKnownString() throws {
        // CRC-32C("123456789") = 0xE3069283 (with the conventional pre/post inversion).
        let m = try TestMachine()
        try m.setupLongMode()
        let asm = """
            mov eax, 0xffffffff
            mov rbx, 0x3837363534333231
            crc32 rax, rbx
            mov cl, 0x39
            crc32 eax, cl
            not eax
            hlt
            """
        try m.load(try Assembler.assemble(asm))
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 0xE306_9283)
    }

    @Test func lahfSahfIn64BitModeFollowTheLevel() throws {
        #expect(try X87Tests.vectorRaised("lahf", level: .baseline) == 6)
        #expect(try X87Tests.vectorRaised("sahf", level: .baseline) == 6)
        #expect(try X87Tests.vectorRaised("lahf\nsahf") == nil)
        let (_, _, base, _) = CPUIDTable.query(leaf: 0x8000_0001, subleaf: 0, apicID: 0, cr4: 0, level: .baseline)
        let (_, _, v2, _) = CPUIDTable.query(leaf: 0x8000_0001, subleaf: 0, apicID: 0, cr4: 0, level: .v2)
        #expect(base & 1 == 0)
        #expect(v2 & 1 == 1)
        let (_, _, leaf1, _) = CPUIDTable.query(leaf: 1, subleaf: 0, apicID: 0, cr4: 0, level: .v2)
        #expect(leaf1 & (1 << 20) != 0)
    }
}
