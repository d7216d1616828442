import Testing
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// Compiled stores and read-modify-writes of memory (the JIT's write-TLB probe): registers,
/// flags, exits and guest memory are the interpreter's, also when the probe misses, the
/// access crosses a page, hits MMIO, faults, or writes into the running block itself.
@Suite struct JITStoreTests {
    /// r15 and rbp point at random data (r14 a small index), r13 at a non-RAM address
    /// (MMIO exit), r12 is not canonical (#GP, a triple fault here), r10 at a read-only
    /// mapping of the data with CR0.WP set (#PF); page crossings and the first touch of a
    /// page leave through the side exit.
    static let ops: [String] = [
        "mov [r15 + 8], rax", "mov [r15 + r14 * 4], ecx", "mov [r15 + 2], dx", "mov [r15 + r14], bl",
        "mov [rbp + 1], ah", "mov [r15 + 5], r9b", "mov qword ptr [r15 + 16], -5",
        "mov dword ptr [r15 + 12], 0x80000001", "mov word ptr [r15 + 6], 0x1234", "mov byte ptr [r15 + 3], 0x81",
        "mov qword ptr [r15 + 24], 0x7fffffff", "mov [rip - 16], rax",
        "add [r15], rax", "or [r15 + 8], ecx", "adc [r15 + 16], dx\nsbb [rbp + 20], bh\nadc [r15], rsi",
        "and [r15 + r14 * 8], rdi", "sub [r15 + 4], r9d", "xor [rbp + 3], cl", "add qword ptr [r15 + 8], -3",
        "sub dword ptr [r15], 0x12345678", "and word ptr [r15 + 2], 0x8001", "or byte ptr [r15 + 1], 0x81",
        "xor qword ptr [r15 + 32], 0x7f", "adc dword ptr [r15 + 4], 1", "sbb byte ptr [r15 + 9], 0x80",
        "inc qword ptr [r15]", "dec dword ptr [r15 + 4]", "not word ptr [r15 + 2]", "neg byte ptr [r15 + 1]",
        "inc byte ptr [rbp + 7]\njz 1f\nmov esi, 1\n1:", "neg qword ptr [r15 + 40]\nsetc al",
        "mov [r15 + 8], rax\nmov rbx, [r15 + 8]\nadd [r15 + 8], rbx\nmov rcx, [r15 + 8]",
        "mov rax, [r15]\nadd rax, rcx\nmov [r15 + 8], rax\nxor rdx, rax\nmov [r15 + 16], rdx\ndec rcx",
        "mov [r15 + 0xffd], rax", "inc rax\nadd [r15 + 0xffe], eax\nadd rax, rcx",
        "inc rcx\nmov [r13], rax\nadd rax, rcx", "inc rdx\nadd [r13 + 8], edx", "dec rdx\nmov [r12], rax",
        "inc rbx\nmov rax, [r10]\nmov [r10 + 8], rbx", "add rcx, rdx\nadd [r10], rcx",
        "mov [r15 + 4096 * 3], rbx", "lock add [r15], rax\nadd rax, [r15]",
        // The group-3/4/5 opcodes after a store (the write TLB holds the page from the second
        // run on): TEST [m], imm must not write, the invalid FE /2-/7 must raise #UD (an
        // overlapping `case ... where` once compiled F6 /0 as INC [m] and FE /7 as a host
        // FE /7).
        "mov [r15 + 7], al\ntest byte ptr [r15 + 7], 0x81\nsetz cl", "mov [r15], eax\ntest dword ptr [r15], 0x80000001",
        "mov [r15 + 2], ax\ntest word ptr [r15 + 2], 0x8001\nsets dl", "mov [r15], rax\ntest qword ptr [r15], -2",
        "mov [r15 + 9], bl\n.byte 0x41, 0xfe, 0x7f, 0x09", "mov [r15], bl\n.byte 0x41, 0xfe, 0x17",
        "mov [r15 + 8], rax\nnot qword ptr [r15 + 8]\nneg dword ptr [r15 + 8]\ninc word ptr [r15 + 8]\ndec byte ptr [r15 + 8]",
    ]

    static let dataBase: UInt64 = 0x20_0000
    /// Linear 202 MiB: the data again, read-only.
    static let readOnlyAlias: UInt64 = 101 << 21

    static func prepare(_ m: TestMachine) throws {
        try m.setupLongMode()
        try m.memory.write(dataBase | 0x81, at: 0x3000 + 101 * 8)
        var s = m.cpu.specialRegisters()
        s.cr0 |= X86Bits.cr0WP
        m.cpu.setSpecialRegisters(s)
    }

    @Test func storesMatchTheInterpreterIncludingMissesAndFaults() throws {
        let (jit, failures) = try JITTests.compareMemoryOps(JITStoreTests.ops, seed: 12, dataBase: JITStoreTests.dataBase,
                                                            prepare: JITStoreTests.prepare) { r, index in
            r.r15 = JITStoreTests.dataBase; r.rbp = JITStoreTests.dataBase + 64; r.r14 = index
            r.r13 = 0x3000_0000; r.r12 = 0x8000_0000_0000_0000; r.r10 = JITStoreTests.readOnlyAlias + 128
        }
        #expect(jit.cpu.jitRuns > jit.cpu.jitSideExits)
        for f in failures.prefix(20) { Issue.record(Comment(rawValue: f)) }
        #expect(failures.isEmpty)
    }

    @Test func storeLoopRunsCompiled() throws {
        // After the first iteration (write-TLB fill through the side exit) every store
        // runs as compiled code; the data is on the code page, outside the block.
        let m = try JITTests.ran("""
            lea rsi, [rip + data]
            mov ecx, 1000
        1:  mov [rsi], rcx
            add [rsi + 8], rcx
            inc qword ptr [rsi + 16]
            dec ecx
            jnz 1b
            mov rax, [rsi]
            mov rbx, [rsi + 8]
            mov rdx, [rsi + 16]
            hlt
            .balign 8
        data: .quad 0, 0, 0
        """)
        let r = m.cpu.registers()
        #expect(r.rax == 1 && r.rbx == 500_500 && r.rdx == 1000)
        #expect(m.cpu.jitRuns >= 1000)
        #expect(m.cpu.jitSideExits <= 2)
    }

    @Test(arguments: [UInt64(0), 0xC80_0000]) func storeIntoItsOwnBlockRunsTheNewCode(alias: UInt64) throws {
        // The block `inc edx; mov byte ptr [rsi + 2], 5; add eax, 1; dec ecx; jnz` patches
        // its own `add eax, 1` (83 C0 imm8) to `add eax, 5` on its first run, directly or
        // through an alias mapping (linear 200 MiB = physical 0; the store before the loop
        // fills the write TLB, so the loop's store would hit it): the compiled store
        // leaves before it, the block tier stores and ends the block, so every
        // iteration adds 5.
        for tier in [CPUTier.interp, .block, .jit] {
            let m = try JITTests.ran("""
                lea rsi, [rip + patch]
                add rsi, \(alias)
                mov ecx, 10
                xor eax, eax
                xor edx, edx
                mov byte ptr [rsi + 2], 1
            1:  inc edx
                mov byte ptr [rsi + 2], 5
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

    @Test func compiledStoreIntoTheNextBlockRunsTheNewCode() throws {
        // The first block's compiled store rewrites the immediate of the next block's
        // `add eax, imm8` with the loop counter each time: 10 + 9 + ... + 1.
        let m = try JITTests.ran("""
            lea rsi, [rip + patch]
            mov ecx, 10
            xor eax, eax
        1:  mov byte ptr [rsi + 2], cl
            jmp patch
        patch:
            add eax, 1
            dec ecx
            jnz 1b
            hlt
        """)
        #expect(m.cpu.registers().rax == 55)
        #expect(m.cpu.jitRuns > m.cpu.jitSideExits)
    }
}
