import Testing
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// The decoded-instruction cache must never run stale code: the guest patching its own
/// instructions, a store through another mapping of the same page, the VMM (DMA) writing
/// guest memory between runs, and the same bytes run in another mode must all take effect.
/// Each test runs on every tier: the interpreter's decoded-instruction cache, the block
/// tier's decoded blocks (where the patched instruction is often in the running block) and
/// the JIT tier compiling every block at first sight.
@Suite struct DecodeCacheTests {
    func machine(_ asm: String, _ tier: CPUTier) throws -> TestMachine {
        let m = try TestMachine()
        m.cpu.tier = tier
        m.cpu.jitThreshold = 0
        try m.setupLongMode()
        try m.load(try Assembler.assemble(asm + "\nhlt\n"))
        return m
    }

    @Test func entriesAreOneCacheLine() {
        #expect(MemoryLayout<Insn>.size <= 40)
        #expect(MemoryLayout<DecodedInsn>.stride == 64)
        #expect(DecodedInsn.mask0(1) == 0xFF && DecodedInsn.mask1(1) == 0)
        #expect(DecodedInsn.mask0(8) == .max && DecodedInsn.mask1(8) == 0)
        #expect(DecodedInsn.mask0(15) == .max && DecodedInsn.mask1(15) == 0x00FF_FFFF_FFFF_FFFF)
    }

    @Test(arguments: [CPUTier.interp, .block, .jit]) func patchedImmediateTakesEffect(tier: CPUTier) throws {
        // Each iteration rewrites the imm32 of the `mov edx` it runs next.
        let m = try machine("""
            lea rdi, [rip + imm_insn]
            mov ecx, 100
            xor ebx, ebx
        1:  mov dword ptr [rdi + 1], ecx
        imm_insn:
            mov edx, 0
            add ebx, edx
            dec ecx
            jnz 1b
        """, tier)
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rbx == 5050)
        // The block tier rebuilds the block every iteration (its bytes changed): no hit to see.
        #expect(tier == .interp ? m.cpu.icacheHits > 0 : m.cpu.blockBuilds > 0)
    }

    @Test(arguments: [CPUTier.interp, .block, .jit]) func patchedOpcodeTakesEffect(tier: CPUTier) throws {
        // After 51 iterations of `add eax, 1` the loop turns it into `sub eax, 1`.
        let m = try machine("""
            lea rsi, [rip + patch]
            mov ecx, 100
            xor eax, eax
        1:
        patch:
            add eax, 1
            cmp ecx, 50
            jne 2f
            mov byte ptr [rsi + 1], 0xE8
        2:  dec ecx
            jnz 1b
        """, tier)
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 51 - 49)
    }

    @Test(arguments: [CPUTier.interp, .block, .jit]) func storeThroughAnAliasMappingTakesEffect(tier: CPUTier) throws {
        // Linear 200 MiB maps the first 2 MiB (the code) a second time; the patch goes
        // through that alias while the code runs through the identity mapping.
        let m = try machine("""
            lea rsi, [rip + patch]
            add rsi, 0xC800000
            mov ecx, 100
            xor eax, eax
        1:
        patch:
            add eax, 1
            cmp ecx, 50
            jne 2f
            mov byte ptr [rsi + 1], 0xE8
        2:  dec ecx
            jnz 1b
        """, tier)
        try m.memory.write(UInt64(0) | 0x83, at: 0x3000 + 100 * 8)
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 51 - 49)
    }

    @Test(arguments: [CPUTier.interp, .block, .jit]) func hostWriteBetweenRunsTakesEffect(tier: CPUTier) throws {
        // The VMM (a DMA-capable device) rewrites code the CPU has already run.
        let m = try machine("""
            mov eax, 1
            mov ecx, 3
        1:  dec ecx
            jnz 1b
        """, tier)
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 1)
        // mov eax, imm32 is B8 imm32 at the start of the code.
        try m.memory.write(UInt32(2), at: TestMachine.codeBase + 1)
        var regs = m.cpu.registers()
        regs.rip = TestMachine.codeBase
        m.cpu.setRegisters(regs)
        m.cpu.halted = false
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 2)
    }

    @Test func sameBytesInAnotherModeDecodeAgain() throws {
        // 40 90: REX + NOP in 64-bit code, INC EAX; NOP in 32-bit code.
        let m = try TestMachine()
        try m.setupLongMode()
        try m.load([0x40, 0x90, 0xF4])
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 0)
        var s = m.cpu.specialRegisters()
        s.cs = .flat32(selector: 0x20, code: true)   // compatibility mode
        m.cpu.setSpecialRegisters(s)
        var regs = m.cpu.registers()
        regs.rip = TestMachine.codeBase
        m.cpu.setRegisters(regs)
        m.cpu.halted = false
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 1)
    }

    @Test(arguments: [CPUTier.interp, .block, .jit]) func patchTwoInstructionsAheadInTheRunningBlock(tier: CPUTier) throws {
        // The store rewrites the imm8 of an `add` two instructions later in the same
        // straight-line block; the block must not run its stale decoding.
        let m = try machine("""
            lea rdi, [rip + patch]
            mov ecx, 10
            xor eax, eax
        1:  mov byte ptr [rdi + 3], cl
            nop
            nop
        patch:
            add rax, 0
            dec ecx
            jnz 1b
        """, tier)
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 55)
    }
}
