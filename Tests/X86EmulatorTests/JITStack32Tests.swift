import Testing
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// Compiled PUSH/POP/CALL/RET in 32-bit protected mode (as Debian i386 runs): a flat SS
/// with B = 1, ESP wrapping at 32 bits, two-level paging. Registers, flags, exits and
/// guest memory are the interpreter's, also for 16-bit forms, a misaligned ESP, page
/// crossings, ESP wrapping through 0, #PF and MMIO; a stack segment that is not flat (or
/// becomes so after the block was compiled) runs on the block tier.
@Suite struct JITStack32Tests {
    static let registers = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]

    /// (Code addresses are absolute here: the code is loaded at `TestMachine.codeBase`.)
    /// ESP is pinned into the data (random misalignment); edi points at the data, esi at a
    /// read-only alias of it (CR0.WP: a push faults, a pop reads), ebp at a page that is
    /// not present (#PF), ebx at a non-RAM address (MMIO exit).
    static let ops: [String] = {
        var ops: [String] = []
        for r in registers { ops += ["push \(r)", "pop \(r)"] }
        ops += ["push ax", "pop bx", "push sp", "pop sp", "pushw 0x1234", "pushw -3", "push 5", "push -1",
                "push 0x12345678", "push 300", "push eax\npush ebx\npop ecx\npop edx", "push esp\npop eax",
                "push esp\npop esp", "add eax, ecx\npush eax\nadc ecx, edx\npop esi\nsbb edx, esi",
                "push eax\nmov ecx, [esp]\nadd dword ptr [esp], 7\npop ecx",
                "lea esp, [edi + 4098]\npush eax", "lea esp, [edi + 4093]\npop eax",
                "lea esp, [edi + 4097]\npush ax", "lea esp, [edi + 4095]\npop cx",
                "inc ecx\nmov esp, esi\npush ecx", "mov esp, esi\npop eax\npop ecx",
                "inc eax\nmov esp, ebp\npush eax", "dec ecx\nlea esp, [ebp + 8]\npop ecx",
                "inc edx\nmov esp, ebx\npush edx", "mov esp, ebx\npop ecx",
                "mov esp, 2\npush eax", "mov esp, 0xfffffffc\npop eax\nmov ecx, esp",
                "mov esp, 0xfffffffc\npush eax\npop ecx\npop edx\nmov eax, esp", "mov esp, 4\npush eax\npush ecx"]
        ops += ["call 1f\n1:", "inc eax\ncall 1f\nnop\n1:", "call 1f\njmp 2f\n1: inc eax\nret\n2:",
                "lea eax, [1f + 0x100000]\npush eax\nret\nnop\n1:", "lea ecx, [1f + 0x100000]\npush ecx\nrep ret\n1:",
                "lea esp, [edi + 4098]\ncall 1f\n1:", "lea ecx, [1f + 0x100000]\nmov [edi + 4094], ecx\nlea esp, [edi + 4094]\nret\n1:",
                "inc eax\nmov esp, ebp\ncall 1f\n1:", "inc eax\nlea esp, [ebp + 8]\nret",
                "mov esp, esi\ncall 1f\n1:", "inc edx\nmov esp, ebx\ncall 1f\n1:", "mov esp, 2\ncall 1f\n1:",
                "lea eax, [1f + 0x100000]\nmov esp, 0xfffffffc\nmov [esp], eax\nret\n1:",
                "lea eax, [1f + 0x100000]\npush eax\npush eax\nret 4\n1:"]
        return ops
    }()

    static let dataBase: UInt64 = 0x20_0000
    static let readOnlyAlias: UInt64 = 0x60_0000
    static let notPresent: UInt64 = 0x80_1000
    static let pageDirectory: UInt64 = 0x4000

    /// Flat 32-bit protected mode with two-level paging: PDE 0 identity 4 MiB; PDE 1: 4 MiB
    /// of physical 0 read-only (the data's alias at `readOnlyAlias`); PDE 2 not present;
    /// PDE 0xC0 identity (not RAM: MMIO); PDE 0x3FF: physical 4 MiB (the top of the
    /// address space, for ESP wrapping through 0).
    static func prepare(_ m: TestMachine) throws {
        let pd = pageDirectory
        for i in 0..<1024 { try m.memory.write(UInt32(0), at: pd + UInt64(i) * 4) }
        try m.memory.write(UInt32(0x83), at: pd)
        try m.memory.write(UInt32(0x81), at: pd + 4)
        try m.memory.write(UInt32(0x3000_0083), at: pd + 0xC0 * 4)
        try m.memory.write(UInt32(0x40_0083), at: pd + 0x3FF * 4)
        let gdt: [UInt64] = [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF]
        for (i, e) in gdt.enumerated() { try m.memory.write(e, at: 0x500 + UInt64(i * 8)) }
        var s = X86SpecialRegisters()
        s.cs = .flat32(selector: 0x08, code: true)
        let data = X86Segment.flat32(selector: 0x10, code: false)
        s.ds = data; s.es = data; s.ss = data; s.fs = data; s.gs = data
        s.gdt = X86DescriptorTable(base: 0x500, limit: UInt16(gdt.count * 8 - 1))
        s.idt = X86DescriptorTable(base: 0, limit: 0)
        s.cr0 = X86Bits.cr0PE | X86Bits.cr0PG | X86Bits.cr0ET | X86Bits.cr0WP
        s.cr3 = pd
        s.cr4 = X86Bits.cr4PSE
        m.cpu.setSpecialRegisters(s)
    }

    @Test func stackOpsMatchTheInterpreterIncludingMissesAndFaults() throws {
        let (jit, failures) = try JITTests.compareMemoryOps(JITStack32Tests.ops, seed: 17, dataBase: JITStack32Tests.dataBase,
                                                            bits: 32, prepare: JITStack32Tests.prepare) { r, index in
            r.rsp = JITStack32Tests.dataBase + 0x1800 + index
            r.rdi = JITStack32Tests.dataBase; r.rsi = JITStack32Tests.readOnlyAlias + 128
            r.rbp = JITStack32Tests.notPresent + 0x100; r.rbx = 0x3000_0000
        }
        #expect(jit.cpu.jitRuns > jit.cpu.jitSideExits)
        for f in failures.prefix(20) { Issue.record(Comment(rawValue: f)) }
        #expect(failures.isEmpty)
    }

    static let loop = """
        mov ecx, 1000
        xor eax, eax
        mov ebx, esp
    1:  call 2f
        dec ecx
        jnz 1b
        sub ebx, esp
        hlt
    2:  add eax, ecx
        push ecx
        push 3
        pop edx
        pop esi
        add eax, edx
        ret
    """

    /// A machine in 32-bit mode on `tier` with `ss` (default: flat) loaded with the loop.
    static func loopMachine(_ tier: CPUTier) throws -> TestMachine {
        let m = try JITTests.machine(tier)
        try prepare(m)
        try m.load(try Assembler.assemble(loop, bits: 32))
        var r = m.cpu.registers(); r.rip = TestMachine.codeBase; r.rsp = 0x9_0000; m.cpu.setRegisters(r)
        return m
    }

    @Test func callPushPopRetLoopRunsCompiled() throws {
        let m = try JITStack32Tests.loopMachine(.jit)
        #expect(try m.run().isHalt)
        let r = m.cpu.registers()
        #expect(r.rax == 500_500 + 3000 && r.rbx == 0 && r.rdx == 3 && r.rsi == 1)
        #expect(m.cpu.jitRuns >= 3000)
        #expect(m.cpu.jitSideExits <= 4)
    }

    @Test func stackSegmentNotFlatRunsOnTheBlockTier() throws {
        // First with a flat SS (compiled), then again with SS based at 64 KiB: the compiled
        // blocks must not run (they address the stack as ESP), every tier gives the
        // interpreter's result and the stack writes land at SS.base + ESP.
        var results: [[UInt64]] = []
        for tier in [CPUTier.interp, .jit] {
            let m = try JITStack32Tests.loopMachine(tier)
            #expect(try m.run().isHalt)
            var s = m.cpu.specialRegisters()
            s.ss.base = 0x1_0000
            m.cpu.setSpecialRegisters(s)
            try m.memory.write(UInt32(0), at: 0x1_0000 + 0x9_0000 - 4)
            var r = m.cpu.registers(); r.rip = TestMachine.codeBase; r.rsp = 0x9_0000; m.cpu.setRegisters(r)
            m.cpu.halted = false
            let runs = m.cpu.jitRuns
            #expect(try m.run().isHalt)
            let after = m.cpu.registers()
            let pushed: UInt32 = try m.memory.read(at: 0x1_0000 + 0x9_0000 - 4)
            results.append([after.rax, after.rbx, after.rdx, after.rsi, UInt64(pushed)])
            if tier == .jit {
                // Only the blocks without stack operations (dec ecx; jnz) ran compiled.
                #expect(m.cpu.jitRuns - runs <= 1001)
            }
        }
        #expect(results[0] == results[1])
        #expect(results[0][0] == 500_500 + 3000 && results[0][4] != 0)
    }
}
