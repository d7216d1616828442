import Testing
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// 64-bit mode operand sizes of the stack and near branches, and their non-canonical
/// targets, on every tier: PUSH/POP with both 0x66 and REX.W use 64 bits (REX.W takes
/// precedence); near CALL/RET/JMP/Jcc ignore 0x66 (Intel; SDM Vol. 1 6.3.7: forced to 64
/// bits, a relative one keeps its 32-bit displacement); a near branch to a non-canonical
/// target raises #GP(0) at the branch with RSP and RIP unchanged (SDM CALL/RET/JMP/Jcc).
@Suite struct NearBranch64Tests {
    static let tiers: [CPUTier] = [.interp, .block, .jit]
    /// The #GP handler: a HLT (interrupt gate, vector 13, IDT at 0x7000).
    static let handler: UInt64 = 0x8_0000
    /// Linear 0x7FFF_FFE0_0000 (the last 2 MiB below the canonical hole) maps physical
    /// 2 MiB; code placed at `topCode` ends 256 bytes below the hole.
    static let topCode: UInt64 = 0x7FFF_FFFF_FF00
    static let topPhysical: UInt64 = 0x3F_FF00

    static func machine(_ tier: CPUTier) throws -> TestMachine {
        let m = try JITTests.machine(tier)
        let gate = 0x7000 + 13 * 16
        let low = (handler & 0xFFFF) | 0x10 << 16 | UInt64(0x8E00) << 32 | (handler >> 16 & 0xFFFF) << 48
        try m.memory.write(low, at: UInt64(gate))
        try m.memory.write(handler >> 32, at: UInt64(gate + 8))
        try m.load([0xF4], at: handler)
        // pml4[255] -> 0x4000, pdpt[511] -> 0x5000, pd[511] = physical 2 MiB (large page).
        try m.memory.write(UInt64(0x4003), at: 0x1000 + 255 * 8)
        try m.memory.write(UInt64(0x5003), at: 0x4000 + 511 * 8)
        try m.memory.write(UInt64(0x20_0083), at: 0x5000 + 511 * 8)
        var s = m.cpu.specialRegisters()
        s.idt = X86DescriptorTable(base: 0x7000, limit: 0xFFF)
        m.cpu.setSpecialRegisters(s)
        return m
    }

    /// Runs `asm` (loaded at the code base, or at `topCode` with `top`) to a HLT.
    static func ran(_ asm: String, tier: CPUTier, top: Bool = false) throws -> TestMachine {
        let m = try machine(tier)
        let code = try Assembler.assemble(asm)
        if top {
            try m.load(code, at: topPhysical)
            var r = m.cpu.registers(); r.rip = topCode; m.cpu.setRegisters(r)
        } else {
            try m.load(code)
        }
        #expect(try m.run().isHalt, "tier \(tier)")
        return m
    }

    /// The #GP frame the handler found: error code, RIP and RSP of the faulting instruction.
    static func gpFrame(_ m: TestMachine) throws -> (error: UInt64, rip: UInt64, rsp: UInt64)? {
        let r = m.cpu.registers()
        guard r.rip == handler + 1 else { return nil }
        let f: (UInt64) throws -> UInt64 = { try m.memory.read(at: r.rsp + $0) }
        return (try f(0), try f(8), try f(32))
    }

    @Test(arguments: NearBranch64Tests.tiers) func pushAndPopWith66AndREXWAre64Bit(tier: CPUTier) throws {
        let m = try NearBranch64Tests.ran("""
            mov rax, 0x1122334455667788
            mov rbx, rsp
            .byte 0x66, 0x48, 0x50
            mov rcx, rbx
            sub rcx, rsp
            mov rdx, [rsp]
            .byte 0x66, 0x48, 0x5e
            .byte 0x66, 0x48, 0x6a, 0xfb
            mov rdi, [rsp]
            .byte 0x66, 0x48, 0xff, 0x34, 0x24
            .byte 0x66, 0x48, 0x8f, 0xc5
            .byte 0x66, 0x48, 0x5f
            .byte 0x66, 0x50
            mov r8, rbx
            sub r8, rsp
            pop ax
            sub rbx, rsp
            hlt
        """, tier: tier)
        let r = m.cpu.registers()
        #expect(r.rcx == 8 && r.rdx == r.rax && r.rsi == r.rax, "tier \(tier)")
        #expect(r.rdi == 0xFFFF_FFFF_FFFF_FFFB && r.rbp == r.rdi, "tier \(tier)")
        #expect(r.r8 == 2 && r.rbx == 0, "tier \(tier)")
    }

    @Test(arguments: NearBranch64Tests.tiers) func nearBranchesIgnore66(tier: CPUTier) throws {
        let m = try NearBranch64Tests.ran("""
            mov rbx, rsp
            .byte 0x66, 0xe8
            .long 1f - 2f
        2:  hlt
        1:  pop rcx
            lea r8, [rip + 2b]
            lea rdx, [rip + 3f]
            push rdx
            .byte 0x66, 0xc3
            hlt
        3:  lea rax, [rip + 4f]
            .byte 0x66, 0xff, 0xd0
        5:  hlt
        4:  pop rsi
            lea r9, [rip + 5b]
            lea rax, [rip + 6f]
            .byte 0x66, 0xff, 0xe0
            hlt
        6:  .byte 0x66, 0xe9
            .long 7f - 8f
        8:  hlt
        7:  xor eax, eax
            .byte 0x66, 0x0f, 0x84
            .long 9f - 10f
        10: hlt
        9:  mov edi, 1
            sub rbx, rsp
            hlt
        """, tier: tier)
        let r = m.cpu.registers()
        #expect(r.rcx == r.r8 && r.rsi == r.r9, "tier \(tier)")
        #expect(r.rdi == 1 && r.rbx == 0, "tier \(tier)")
    }

    /// RET, JMP r/m and CALL r/m to a non-canonical address: #GP at the branch.
    @Test(arguments: NearBranch64Tests.tiers) func indirectBranchToNonCanonicalTargetFaultsAtTheBranch(tier: CPUTier) throws {
        for branch in ["push rax\nmov rbx, rsp\nlea rcx, [rip + 1f]\n1: ret",
                       "push rax\nmov rbx, rsp\nlea rcx, [rip + 1f]\n1: ret 8",
                       "mov rbx, rsp\nlea rcx, [rip + 1f]\n1: jmp rax",
                       "mov rbx, rsp\nlea rcx, [rip + 1f]\n1: call rax",
                       "push rax\nmov rbx, rsp\nlea rcx, [rip + 1f]\n1: call [rsp]"] {
            let m = try NearBranch64Tests.ran("mov rax, 0x800000000000\ninc rdx\n" + branch, tier: tier)
            let r = m.cpu.registers()
            let frame = try NearBranch64Tests.gpFrame(m)
            #expect(frame?.error == 0 && frame?.rip == r.rcx && frame?.rsp == r.rbx, "tier \(tier): \(branch)")
            if tier == .jit && branch.hasSuffix("ret") { #expect(m.cpu.jitSideExits > 0) }
        }
    }

    /// Relative JMP/Jcc/CALL just below the canonical hole whose target is past it.
    @Test(arguments: NearBranch64Tests.tiers) func relativeBranchToNonCanonicalTargetFaultsAtTheBranch(tier: CPUTier) throws {
        for branch in [".byte 0xe9\n.long 0x1000", ".byte 0x66, 0xe9\n.long 0x1000",
                       "xor eax, eax\n1: .byte 0x0f, 0x84\n.long 0x1000", ".byte 0xe8\n.long 0x1000",
                       "add rax, rbx\njmp 1f\n1: .byte 0xe9\n.long 0x1000"] {
            let asm = "mov rbx, rsp\nlea rcx, [rip + 1f]\ninc rdx\n" + (branch.contains("1:") ? branch : "1: " + branch)
            let m = try NearBranch64Tests.ran(asm, tier: tier, top: true)
            let r = m.cpu.registers()
            let frame = try NearBranch64Tests.gpFrame(m)
            #expect(frame?.error == 0 && frame?.rip == r.rcx && frame?.rsp == r.rbx, "tier \(tier): \(branch)")
            // The compiled JMP/Jcc rewinds to itself, the compiled CALL leaves before it.
            if tier == .jit { #expect(m.cpu.jitSideExits > 0, "\(branch)") }
        }
    }
}
