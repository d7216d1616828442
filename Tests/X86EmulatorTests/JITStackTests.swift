import Testing
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// Compiled PUSH/POP (the stack through the JIT's write/read TLB probes): registers, flags,
/// exits and guest memory are the interpreter's, also for PUSH/POP RSP, 16-bit forms, a
/// misaligned RSP, a push or pop that crosses a page, faults (#PF, #SS) or hits MMIO, and
/// a push into the running block itself.
@Suite struct JITStackTests {
    static let registers = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]

    /// RSP is pinned into the data (at a random misalignment), r15 points at the data, r10
    /// at a read-only alias of it (CR0.WP: a push faults, a pop reads), r11 at a page that
    /// is not present (#PF), r13 at a non-RAM address (MMIO exit), r12 is not canonical
    /// (#SS; a triple fault here).
    static let ops: [String] = {
        var ops: [String] = []
        for r in registers { ops += ["push \(r)", "pop \(r)"] }
        ops += ["push ax", "pop bx", "push sp", "pop sp", "push r9w\npop r10w", "pushw 0x1234", "pushw -3",
                "push 5", "push -1", "push 0x12345678", "push -0x80000000", "push 300",
                "push rax\npush rbx\npop rcx\npop rdx", "push rsp\npop rax", "push rsp\npop rsp",
                "add rax, rbx\npush rax\nadc rcx, rdx\npop rsi\nsbb rdi, rsi",
                "push rax\nmov rbx, [rsp]\nadd qword ptr [rsp], 7\npop rcx",
                "cmp rax, rbx\npush rcx\njb 1f\npop rdx\n1:",
                "lea rsp, [r15 + 4100]\npush rax", "lea rsp, [r15 + 4093]\npop rax",
                "lea rsp, [r15 + 4097]\npush ax", "lea rsp, [r15 + 4095]\npop bx",
                "inc rbx\nmov rsp, r10\npush rbx", "mov rsp, r10\npop rax\npop rcx",
                "inc rax\nmov rsp, r11\npush rax", "dec rcx\nlea rsp, [r11 + 8]\npop rcx",
                "inc rdx\nmov rsp, r13\npush rdx", "mov rsp, r13\npop rcx",
                "inc rax\nmov rsp, r12\npush rax", "lea rsp, [r12 + 8]\npop rax",
                "lea rsp, [r15 + 4096 * 4]\npush rax\npush rbx",
                "mov rsp, r15\npush rax\npop rbx", ".byte 0x66, 0x48, 0x50"]
        // CALL rel32 and RET end their block (RET at a target pushed just before).
        ops += ["call 1f\n1:", "inc rax\ncall 1f\nnop\n1:", "call 1f\njmp 2f\n1: inc rax\nret\n2:",
                "lea rax, [rip + 1f]\npush rax\nret\nnop\n1:", "lea rcx, [rip + 1f]\npush rcx\nrep ret\n1:",
                "lea rsp, [r15 + 4100]\ncall 1f\n1:", "lea rcx, [rip + 1f]\nmov [r15 + 4092], rcx\nlea rsp, [r15 + 4092]\nret\n1:",
                "inc rax\nmov rsp, r11\ncall 1f\n1:", "inc rax\nlea rsp, [r11 + 8]\nret",
                "mov rsp, r10\ncall 1f\n1:", "inc rdx\nmov rsp, r13\ncall 1f\n1:", "mov rsp, r12\ncall 1f\n1:",
                "lea rsp, [r12 + 8]\nret", ".byte 0x66\ncall 1f\n.byte 0, 0\n1:"]
        return ops
    }()

    static let dataBase: UInt64 = 0x20_0000
    /// Linear 202 MiB: the data again, read-only; 204 MiB: not present.
    static let readOnlyAlias: UInt64 = 101 << 21
    static let notPresent: UInt64 = 102 << 21

    static func prepare(_ m: TestMachine) throws {
        try m.setupLongMode()
        try m.memory.write(dataBase | 0x81, at: 0x3000 + 101 * 8)
        try m.memory.write(UInt64(0), at: 0x3000 + 102 * 8)
        var s = m.cpu.specialRegisters()
        s.cr0 |= X86Bits.cr0WP
        m.cpu.setSpecialRegisters(s)
    }

    @Test func pushAndPopMatchTheInterpreterIncludingMissesAndFaults() throws {
        let (jit, failures) = try JITTests.compareMemoryOps(JITStackTests.ops, seed: 13, dataBase: JITStackTests.dataBase,
                                                            prepare: JITStackTests.prepare) { r, index in
            r.rsp = JITStackTests.dataBase + 0x1800 + index
            r.r15 = JITStackTests.dataBase; r.r10 = JITStackTests.readOnlyAlias + 128
            r.r11 = JITStackTests.notPresent + 0x100; r.r13 = 0x3000_0000; r.r12 = 0x8000_0000_0000_0000
        }
        #expect(jit.cpu.jitRuns > jit.cpu.jitSideExits)
        for f in failures.prefix(20) { Issue.record(Comment(rawValue: f)) }
        #expect(failures.isEmpty)
    }

    @Test func pushPopLoopRunsCompiled() throws {
        // After the first iteration (TLB fills through the side exits) every push and pop
        // runs as compiled code.
        let m = try JITTests.ran("""
            mov ecx, 1000
            xor eax, eax
            mov rbx, rsp
        1:  push rcx
            push 3
            pop rdx
            pop rsi
            add rax, rsi
            add rax, rdx
            dec ecx
            jnz 1b
            sub rbx, rsp
            hlt
        """)
        let r = m.cpu.registers()
        #expect(r.rax == 500_500 + 3000 && r.rbx == 0 && r.rdx == 3)
        #expect(m.cpu.jitRuns >= 1000)
        #expect(m.cpu.jitSideExits <= 3)
    }

    @Test func callRetLoopRunsCompiled() throws {
        // CALL and RET end their blocks as compiled code: the loop block (call), the
        // callee (add, ret) and the return block (dec, jnz).
        let m = try JITTests.ran("""
            mov ecx, 1000
            xor eax, eax
            mov rbx, rsp
        1:  call 2f
            dec ecx
            jnz 1b
            sub rbx, rsp
            hlt
        2:  add rax, rcx
            push rcx
            pop rdx
            ret
        """)
        let r = m.cpu.registers()
        #expect(r.rax == 500_500 && r.rbx == 0 && r.rdx == 1)
        #expect(m.cpu.jitRuns >= 3000)
        #expect(m.cpu.jitSideExits <= 3)
    }

    @Test(arguments: [UInt64(0), 0xC80_0000]) func callPushingIntoItsOwnBlockIsExact(alias: UInt64) throws {
        // The CALL's return address goes into the imm64 of the block's own `mov rbx, imm64`
        // (directly or through the alias): the compiled CALL leaves before its push, the
        // block tier pushes; later runs of the block load the return address.
        for tier in [CPUTier.interp, .block, .jit] {
            let m = try JITTests.ran("""
                mov ecx, 10
                xor edx, edx
                lea r8, [rip + 3f]
                lea r9, [rip + 1f + 10]
            1:  movabs rbx, 0
                inc edx
                lea rsp, [rip + 1b + 10]
                add rsp, \(alias)
                call 2f
            3:  dec ecx
                jnz 1b
                hlt
            2:  ret
            """, tier: tier)
            let r = m.cpu.registers()
            #expect(r.rbx == r.r8 && r.rdx == 10, "tier \(tier)")
            #expect(r.rsp == r.r9 &+ alias, "tier \(tier)")
            if tier == .jit { #expect(m.cpu.jitSideExits >= 10) }
        }
    }

    @Test(arguments: [UInt64(0), 0xC80_0000]) func pushIntoItsOwnBlockRunsTheNewCode(alias: UInt64) throws {
        // The loop's `push rbx` writes the 8 bytes at `patch + 2` (the imm8 of `add eax, 1`,
        // then `dec ecx; jnz` and beyond) with their own values except the imm8, now 5,
        // directly or through an alias mapping (linear 200 MiB = physical 0): the compiled
        // push leaves before it, the block tier pushes and ends the block, so every
        // iteration adds 5.
        for tier in [CPUTier.interp, .block, .jit] {
            let m = try JITTests.ran("""
                lea rsi, [rip + patch]
                mov rbx, [rsi + 2]
                mov bl, 5
                lea rdi, [rsi + 10]
                add rdi, \(alias)
                mov ecx, 10
                xor eax, eax
                xor edx, edx
                mov rsp, rdi
                push rbx
                mov rsp, rdi
                mov byte ptr [rsi + 2], 1
            1:  inc edx
                mov rsp, rdi
                push rbx
            patch:
                add eax, 1
                dec ecx
                jnz 1b
                hlt
            """, tier: tier)
            #expect(m.cpu.registers().rax == 50, "tier \(tier)")
            #expect(m.cpu.registers().rdx == 10, "tier \(tier)")
            if tier == .jit { #expect(m.cpu.jitSideExits >= 10) }
        }
    }
}
