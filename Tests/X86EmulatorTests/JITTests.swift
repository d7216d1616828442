import Testing
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// The JIT tier (`SWIFTVMM_CPU_TIER=jit`, threshold 0 here: every block compiled at first
/// sight): each supported operation gives the interpreter's registers and flags bit for
/// bit; a compiled block that is rewritten runs the new code; a code cache too small for the
/// program is flushed and refilled with correct results.
@Suite struct JITTests {
    /// Every supported operation, in several operand sizes (each snippet is one block
    /// prefix: it ends at the HLT the test appends).
    static let ops: [String] = {
        var ops: [String] = []
        for k in ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp", "test"] {
            ops += ["\(k) rax, rbx", "\(k) ecx, edx", "\(k) si, di", "\(k) al, bh", "\(k) r9b, r10b",
                    "\(k) dh, cl", "\(k) eax, 0x12345678", "\(k) al, 0x81"]
            if k != "test" { ops += ["\(k) rdx, -3", "\(k) r11d, 0x7f", "\(k) bx, 0x8001", "\(k) rbx, rbx"] }
        }
        ops += ["adc rax, rbx\nsbb rcx, rdx\nadc edx, esi"]
        for k in ["inc", "dec", "not", "neg"] { ops += ["\(k) rax", "\(k) ecx", "\(k) dx", "\(k) bh", "\(k) r12b"] }
        for k in ["shl", "shr", "sar", "rol", "ror"] {
            ops += ["\(k) rax, 1", "\(k) ecx, 1", "\(k) dx, 1", "\(k) bl, 1", "\(k) rax, 3", "\(k) ecx, 31",
                    "\(k) rdx, 63", "\(k) si, 5", "\(k) ah, 7", "\(k) edi, 0", "\(k) r8, 17"]
        }
        ops += ["rol al, 9", "ror bx, 16", "rol ecx, 32", "shl rax, 3\nadc rbx, rcx", "shr edx, 4\njo 1f\nmov esi, 1\n1:"]
        ops += ["mov rax, rbx", "mov ecx, edx", "mov si, di", "mov ah, bl", "mov r13b, cl",
                "mov rax, 0x123456789abcdef0", "mov ecx, 0xfedcba98", "mov dx, 0x1234", "mov bh, 0x55",
                "mov rdi, -2", "mov r9w, 7"]
        ops += ["lea rax, [rbx + rcx * 4 + 8]", "lea ecx, [rdx + rsi - 5]", "lea dx, [rax + rbx * 2]",
                "lea rsi, [rip + 0x100]", "lea eax, [ebx + ecx * 8 + 0x7fffffff]", "lea rdi, [rdi * 2]",
                "lea r10, [0x1234]", "lea rax, [r9 + r15 * 8 - 0x80000000]"]
        ops += ["movzx eax, bl", "movzx rcx, dx", "movzx si, ah", "movsx eax, bl", "movsx rcx, dx",
                "movsx si, ch", "movsxd rdx, eax", "movsx rax, r8b"]
        for cc in ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"] {
            ops += ["cmp rax, rbx\nset\(cc) cl\ncmov\(cc) rdx, rsi\ncmov\(cc) edi, ebx"]
            ops += ["sub ecx, edx\nj\(cc) 1f\nmov esi, 1\n1:"]
        }
        ops += ["cmovb ax, bx", "setg ah", "xchg rax, rbx", "xchg ecx, edx", "xchg al, bh", "xchg r8, rax",
                "xchg eax, eax", "nop", "cbw", "cwde", "cdqe", "cwd", "cdq", "cqo",
                "clc\nadc rax, rbx", "stc\nsbb ecx, edx", "cmc\nadc dl, bl", "inc rax\njmp 1f\nnop\n1:"]
        // IMUL: random operands overflow most of the time, small ones do not.
        ops += ["imul rax, rbx", "imul ecx, edx", "imul si, di", "imul r9, r10", "imul rdx, rdx",
                "imul rax, rbx, 0x12345678", "imul ecx, edx, -3", "imul si, di, 0x7fff", "imul r11d, r12d, 0x7f",
                "imul rdx, rdx, -0x80000000", "imul r8w, r9w, -2", "imul eax, ebx, 1", "imul rcx, rsi, 0",
                "movzx eax, al\nmovzx ebx, bl\nimul eax, ebx", "movsx rcx, cx\nimul rcx, rcx, 3",
                "imul ax, bx\nsetc cl\nsets ch\nsetz dl\nsetp dh", "imul rax, rcx\njo 1f\nmov esi, 1\n1:",
                "imul ecx, ecx\nadc edx, 0", "imul rbx, rdi\ncmovs rax, rbx"]
        return ops
    }()

    static func machine(_ tier: CPUTier) throws -> TestMachine {
        let m = try TestMachine()
        m.cpu.tier = tier
        m.cpu.jitThreshold = 0
        try m.setupLongMode()
        return m
    }

    /// A machine on `tier` that has run `asm` to its HLT.
    static func ran(_ asm: String, tier: CPUTier = .jit) throws -> TestMachine {
        let m = try machine(tier)
        try m.memory.write(UInt64(0) | 0x83, at: 0x3000 + 100 * 8)   // linear 200 MiB = physical 0
        try m.load(try Assembler.assemble(asm))
        #expect(try m.run().isHalt)
        return m
    }

    /// Runs the snippet at `offset` of the loaded code with the given registers and flags.
    static func run(_ m: TestMachine, at offset: UInt64, _ regs: [UInt64], _ flags: UInt64,
                    fix: (inout X86Registers) -> Void = { _ in }) throws -> (X86Registers, VCPUExit) {
        var r = m.cpu.registers()
        r.rax = regs[0]; r.rcx = regs[1]; r.rdx = regs[2]; r.rbx = regs[3]
        r.rsi = regs[4]; r.rdi = regs[5]; r.r8 = regs[6]; r.r9 = regs[7]
        r.r10 = regs[8]; r.r11 = regs[9]; r.r12 = regs[10]; r.r13 = regs[11]; r.r15 = regs[12]
        r.rip = TestMachine.codeBase + offset
        r.rflags = flags | 2
        fix(&r)
        m.cpu.setRegisters(r)
        m.cpu.halted = false
        let exit = try m.run()
        return (m.cpu.registers(), exit)
    }

    @Test func everySupportedOperationMatchesTheInterpreterBitForBit() throws {
        let stride = 64
        let source = JITTests.ops.map { ".balign \(stride)\n\($0)\nhlt" }.joined(separator: "\n")
        let code = try Assembler.assemble(source)
        let interp = try JITTests.machine(.interp), jit = try JITTests.machine(.jit)
        try interp.load(code); try jit.load(code)
        #expect(jit.cpu.jitAvailable)
        var g = SplitMix(state: 10)
        var failures: [String] = []
        for (i, op) in JITTests.ops.enumerated() {
            let offset = UInt64(i * stride)
            let before = jit.cpu.jitRuns
            for _ in 0..<40 {
                let regs = (0..<13).map { _ in g.interesting() }
                let flags = g.next() & Flag.arith
                let (a, ea) = try JITTests.run(interp, at: offset, regs, flags)
                let (b, eb) = try JITTests.run(jit, at: offset, regs, flags)
                if !ea.isHalt || !eb.isHalt || a != b {
                    failures.append("\(op.replacingOccurrences(of: "\n", with: "; ")): inputs \(regs.map(hex)) flags \(hex(flags)): interp \(a) jit \(b)")
                    break
                }
            }
            // Each snippet ran as compiled code (none fell back to the block tier).
            if jit.cpu.jitRuns == before { failures.append("\(op): never ran compiled") }
        }
        for f in failures.prefix(20) { Issue.record(Comment(rawValue: f)) }
        #expect(failures.isEmpty)
    }

    /// Loads through the inline TLB probe: r15 and rbp point at random data (r14 a small index),
    /// r13 at a non-RAM address (MMIO exit), r12 is not canonical (#GP, here a triple
    /// fault); a page-crossing load and the first touch of a page leave through the side
    /// exit. Registers, flags and the exit must be the interpreter's.
    static let loadOps: [String] = [
        "mov rax, [r15 + 8]", "mov ecx, [r15 + r14 * 4]", "mov dx, [r15 + 2]", "mov bl, [r15 + r14]",
        "mov ah, [rbp + 1]", "mov r9b, [r15 + 5]", "add rax, [r15]", "sub ecx, [r15 + r14 * 8 + 16]",
        "adc rbx, [r15]\nsbb eax, [r15 + 4]\nxor dl, [r15 + 9]", "and si, [r15 + 6]", "or rdi, [r15 + 40]",
        "cmp [r15 + 24], ecx\njl 1f\nmov esi, 1\n1:", "cmp byte ptr [r15 + 3], 0x80", "cmp qword ptr [r15], -5",
        "cmp rax, [r15 + 32]\nsetb cl", "test [r15 + 16], rdx", "test byte ptr [r15 + 7], 0x81",
        "test dword ptr [r15 + 12], 0x80000001", "movzx eax, byte ptr [r15 + r14]", "movzx rcx, word ptr [r15 + 6]",
        "movsx rcx, word ptr [r15 + 6]", "movsx eax, byte ptr [r15 + 11]", "movsx si, byte ptr [r15 + 2]",
        "movsxd rdx, dword ptr [r15 + 12]", "mov rax, [rip - 16]", "inc rax\nmov rdx, [r15 + 0xffd]\nadd rdx, rax",
        "inc rcx\nmov rax, [r13]\nadd rax, rcx", "dec rdx\nmov rax, [r12]", "mov rbx, [r15 + 4096 * 3]",
        // Byte-sized group 3 and 5 forms other than NOT/NEG and INC/DEC (TEST, MUL, DIV,
        // and FE /2, which is #UD) were once compiled as read-modify-writes.
        "test byte ptr [r15 + 0x90], 1\nsetz cl", "mov [r15 + 0xa0], rax\ntest byte ptr [r15 + 0x90], 1\nje 1f\nmov esi, 1\n1:",
        "mul byte ptr [r15 + 3]", "imul byte ptr [r15 + 5]", "div byte ptr [r15 + 0x100]", ".byte 0x41, 0xfe, 0x57, 0x08",
        "call qword ptr [r15 + 8]",
        "imul rax, [r15 + 8]", "imul ecx, [r15 + r14 * 4]", "imul dx, [r15 + 2]", "imul rbx, [r15], -7",
        "imul esi, dword ptr [r15 + 12], 0x12345", "imul di, word ptr [r15 + 6], 300",
        "imul r9, qword ptr [rbp + 1], 0x7fffffff\nsetz al", "inc rax\nimul rax, [r13]", "dec rcx\nimul rcx, [r12]",
        "add rdx, rcx\nimul rdx, [r15 + 0xffd]",
    ]

    /// The memory-operand differential run the load and store tests share: each op (one per
    /// 64-byte slot, then HLT) runs 20 times from random registers and flags on the
    /// interpreter and on the JIT, over 5 pages of random data at `dataBase`; `prepare` sets
    /// a machine up before the code is loaded and again after every exit that is not HLT,
    /// `fix` pins the address registers (a shut-down CPU is revived first); `bits`: the
    /// code's mode (`prepare` sets up 32-bit mode for 32). Returns the JIT machine and one line per op whose
    /// registers, exit or data pages differ.
    static func compareMemoryOps(_ ops: [String], seed: UInt64, dataBase: UInt64, bits: Int = 64,
                                 prepare: (TestMachine) throws -> Void,
                                 fix: @escaping (inout X86Registers, UInt64) -> Void) throws -> (jit: TestMachine, failures: [String]) {
        let stride = 64
        let source = ops.map { ".balign \(stride)\n\($0)\nhlt" }.joined(separator: "\n")
        let code = try Assembler.assemble(source, bits: bits)
        let interp = try machine(.interp), jit = try machine(.jit)
        var g = SplitMix(state: seed)
        let data = (0..<(5 * 4096)).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        for m in [interp, jit] { try prepare(m); try m.load(code); try m.load(data, at: dataBase) }
        var failures: [String] = []
        for (i, op) in ops.enumerated() {
            let offset = UInt64(i * stride)
            for _ in 0..<20 {
                let regs = (0..<13).map { _ in g.interesting() }
                let flags = g.next() & Flag.arith
                let index = g.next() % 64
                let (a, ea) = try run(interp, at: offset, regs, flags, fix: { fix(&$0, index) })
                let (b, eb) = try run(jit, at: offset, regs, flags, fix: { fix(&$0, index) })
                let memA = try interp.memory.readBytes(at: dataBase, count: data.count)
                let memB = try jit.memory.readBytes(at: dataBase, count: data.count)
                if a != b || "\(ea)" != "\(eb)" || memA != memB {
                    failures.append("\(op.replacingOccurrences(of: "\n", with: "; ")): inputs \(regs.map(hex)) flags \(hex(flags)): interp \(a) \(ea) jit \(b) \(eb) memory equal: \(memA == memB)")
                    break
                }
                // A triple fault leaves the CPU shut down (every later run would return
                // at once): clear it so the following ops really run.
                if !ea.isHalt { for m in [interp, jit] { m.cpu.shutdownReason = nil; try prepare(m) } }
            }
        }
        return (jit, failures)
    }

    @Test func loadsMatchTheInterpreterIncludingMissesAndFaults() throws {
        let dataBase: UInt64 = 0x20_0000
        let (jit, failures) = try JITTests.compareMemoryOps(JITTests.loadOps, seed: 11, dataBase: dataBase,
                                                            prepare: { try $0.setupLongMode() }) { r, index in
            r.r15 = dataBase; r.rbp = dataBase + 64; r.r14 = index; r.r13 = 0x3000_0000; r.r12 = 0x8000_0000_0000_0000
        }
        #expect(jit.cpu.jitRuns > 0)
        for f in failures.prefix(20) { Issue.record(Comment(rawValue: f)) }
        #expect(failures.isEmpty)
    }

    @Test func imulLoopWithMemorySourceRunsCompiled() throws {
        // After the first iteration (TLB fill through the side exit) the loop body runs as
        // compiled code: rax = 3^10 * 5^10 (mod 2^64), rbx = 7 * 10.
        let m = try JITTests.ran("""
            lea rsi, [rip + data]
            mov ecx, 10
            mov eax, 1
            xor ebx, ebx
        1:  imul rax, [rsi]
            imul rax, rax, 5
            imul rdx, qword ptr [rsi + 8], 7
            add rbx, rdx
            dec ecx
            jnz 1b
            hlt
        data: .quad 3, 1
        """)
        let r = m.cpu.registers()
        #expect(r.rax == 576_650_390_625 && r.rbx == 70)
        #expect(m.cpu.jitRuns >= 10 && m.cpu.jitSideExits <= 2)
    }

    @Test func unsupportedInstructionsStayOnTheBlockTier() throws {
        // A LOCK-prefixed read-modify-write first: nothing to compile; the result is still right.
        let m = try JITTests.machine(.jit)
        try m.load(try Assembler.assemble("""
            lea rsi, [rip + data]
            mov ecx, 10
        1:  lock add [rsi], rcx
            dec ecx
            jnz 1b
            mov rax, [rsi]
            hlt
        data: .quad 7
        """))
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 62)
        #expect(m.cpu.jitUnsupported > 0)
    }

    @Test func rewrittenCompiledBlockRunsTheNewCode() throws {
        // The loop body is compiled; the VMM then rewrites its `add eax, 1` to `add eax, 3`
        // (83 C0 01 -> 83 C0 03) and runs it again: the stale code must not run.
        let m = try JITTests.machine(.jit)
        try m.load(try Assembler.assemble("""
            mov ecx, 100
            xor eax, eax
        1:  add eax, 1
            dec ecx
            jnz 1b
            hlt
        """))
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 100)
        let compiled = m.cpu.jitCompiled
        #expect(compiled > 0 && m.cpu.jitRuns >= 100)
        // mov ecx, imm32 (5 bytes) + xor eax, eax (2): the add's immediate is at offset 9.
        try m.memory.write(bytes: [3], at: TestMachine.codeBase + 9)
        var regs = m.cpu.registers()
        regs.rip = TestMachine.codeBase
        m.cpu.setRegisters(regs)
        m.cpu.halted = false
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 300)
        #expect(m.cpu.jitCompiled > compiled)
    }

    @Test func fullCodeCacheIsFlushedAndRefilled() throws {
        // 300 distinct blocks (`add rax, i; jmp next`), run 5 times, in a one-page cache.
        var source = "mov ecx, 5\nxor eax, eax\n2:\n"
        for i in 1...300 { source += "add rax, \(i)\njmp 3f\n3:\n" }
        source += "dec ecx\njnz 2b\nhlt\n"
        let code = try Assembler.assemble(source)
        let m = try JITTests.machine(.jit)
        m.cpu.jitCacheSize = 4096
        try m.load(code)
        #expect(try m.run().isHalt)
        #expect(m.cpu.registers().rax == 5 * 300 * 301 / 2)
        #expect(m.cpu.jitFlushes > 0)
        #expect(m.cpu.jitRuns >= 1500)
    }
}
