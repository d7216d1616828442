// Benchmark driver for bench/emulator-callgrind.sh: runs a fixed guest loop on the software
// CPU and prints the number of guest instructions it retired, so callgrind's host
// instruction count can be divided by it. No Foundation and no threads, so it runs under
// valgrind.
//
//   emulator-bench LOOP ITERATIONS      LOOP: alu | mix | reg
//
// The CPU tier comes from SWIFTVMM_CPU_TIER (interp, block, jit), as in the VMM.
#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Hypervisor
import X86Emulator

/// The loops as machine code (GNU as output; the source is in the comments). Both start
/// with `mov rcx, imm32` whose immediate (bytes 3...6) is the iteration count.
let loops: [String: [UInt8]] = [
    // alu: the 6-instruction loop of BenchmarkTests.cpuBoundLoop.
    //     mov rcx, N; xor eax, eax; lea rsi, [rip + 2f]
    // 1:  add rax, rcx; mov rdx, [rsi]; xor rdx, rax; mov [rsi], rdx; dec rcx; jnz 1b
    //     hlt
    // 2:  .quad 0
    "alu": [
        0x48, 0xc7, 0xc1, 0x44, 0x33, 0x22, 0x11, 0x31, 0xc0, 0x48, 0x8d, 0x35,
        0x12, 0x00, 0x00, 0x00, 0x48, 0x01, 0xc8, 0x48, 0x8b, 0x16, 0x48, 0x31,
        0xc2, 0x48, 0x89, 0x16, 0x48, 0xff, 0xc9, 0x75, 0xef, 0xf4, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ],
    // reg: 7 register-only instructions per iteration (no memory operand, no store into
    // the code page), what the first JIT stage compiles completely.
    //     mov rcx, N; xor eax, eax; xor edx, edx; xor ebx, ebx
    // 1:  add rax, rcx; mov rdx, rax; xor rdx, rbx; lea rbx, [rdx + rax * 2 + 7]
    //     shr rbx, 1; dec rcx; jnz 1b
    //     hlt
    "reg": [
        0x48, 0xc7, 0xc1, 0x44, 0x33, 0x22, 0x11, 0x31, 0xc0, 0x31, 0xd2, 0x31,
        0xdb, 0x48, 0x01, 0xc8, 0x48, 0x89, 0xc2, 0x48, 0x31, 0xda, 0x48, 0x8d,
        0x5c, 0x42, 0x07, 0x48, 0xd1, 0xeb, 0x48, 0xff, 0xc9, 0x75, 0xea, 0xf4,
    ],
    // mix: 21 instructions per iteration of what kernels run.
    //     mov rcx, N; xor eax, eax; xor ebx, ebx; xor edi, edi; lea rsi, [rip + 3f]
    // 1:  mov rax, [rsi]; add rax, rcx; adc rbx, rax; shl rax, 3; imul rdx, rax, 7
    //     inc rdi; cmp rax, rbx; setb r8b; cmovb rdx, rbx; movzx r9d, byte ptr [rsi + 1]
    //     test r9d, 1; jz 2f; add rdx, r9
    // 2:  push rdx; call 4f; pop rdx; lea rax, [rax + rdx * 2]; mov [rsi], rax
    //     dec rcx; jnz 1b
    //     hlt
    // 3:  .quad 0x1234
    // 4:  xor rdx, rdi; ret
    "mix": [
        0x48, 0xc7, 0xc1, 0x44, 0x33, 0x22, 0x11, 0x31, 0xc0, 0x31, 0xdb, 0x31,
        0xff, 0x48, 0x8d, 0x35, 0x44, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x06, 0x48,
        0x01, 0xc8, 0x48, 0x11, 0xc3, 0x48, 0xc1, 0xe0, 0x03, 0x48, 0x6b, 0xd0,
        0x07, 0x48, 0xff, 0xc7, 0x48, 0x39, 0xd8, 0x41, 0x0f, 0x92, 0xc0, 0x48,
        0x0f, 0x42, 0xd3, 0x44, 0x0f, 0xb6, 0x4e, 0x01, 0x41, 0xf7, 0xc1, 0x01,
        0x00, 0x00, 0x00, 0x74, 0x03, 0x4c, 0x01, 0xca, 0x52, 0xe8, 0x16, 0x00,
        0x00, 0x00, 0x5a, 0x48, 0x8d, 0x04, 0x50, 0x48, 0x89, 0x06, 0x48, 0xff,
        0xc9, 0x75, 0xbd, 0xf4, 0x34, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x48, 0x31, 0xfa, 0xc3,
    ],
]

func fail(_ message: String) -> Never {
    let line = "emulator-bench: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(2)
}

let args = CommandLine.arguments
guard args.count == 3, var code = loops[args[1]], let n = UInt32(args[2]), n > 0, n < 1 << 31 else {
    fail("usage: emulator-bench alu|mix|reg ITERATIONS (1 ... 2^31-1)")
}
withUnsafeBytes(of: n.littleEndian) { for i in 0..<4 { code[3 + i] = $0[i] } }

do {
    // Long mode, identity map of the first 1 GiB with 2 MiB pages, code at 1 MiB.
    let memory = try GuestMemory(size: 8 << 20)
    let pml4: UInt64 = 0x1000, pdpt: UInt64 = 0x2000, pd: UInt64 = 0x3000, codeBase: UInt64 = 0x10_0000
    try memory.write(pdpt | 3, at: pml4)
    try memory.write(pd | 3, at: pdpt)
    for i in 0..<512 { try memory.write(UInt64(i) << 21 | 0x83, at: pd + UInt64(i) * 8) }
    let gdt: [UInt64] = [0, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF]
    for (i, e) in gdt.enumerated() { try memory.write(e, at: 0x500 + UInt64(i * 8)) }
    try memory.write(bytes: code, at: codeBase)
    let vm = EmulatorVirtualMachine(memory: memory)
    let vcpu = try vm.createEmulatorVCPU(index: 0, startState: .runnable)
    var s = X86SpecialRegisters()
    s.cs = .flat64(selector: 0x10, code: true)
    let data = X86Segment.flat32(selector: 0x18, code: false)
    s.ds = data; s.es = data; s.ss = data; s.fs = data; s.gs = data
    s.gdt = X86DescriptorTable(base: 0x500, limit: UInt16(gdt.count * 8 - 1))
    s.cr0 = X86Bits.cr0PE | X86Bits.cr0PG | X86Bits.cr0ET | X86Bits.cr0MP | X86Bits.cr0NE
    s.cr3 = pml4
    s.cr4 = X86Bits.cr4PAE | X86Bits.cr4OSFXSR | X86Bits.cr4OSXMMEXCPT
    s.efer = X86Bits.eferLME | X86Bits.eferLMA | X86Bits.eferNXE | X86Bits.eferSCE
    try vcpu.setSpecialRegisters(s)
    var r = X86Registers()
    r.rip = codeBase
    r.rsp = 0x8_F000
    try vcpu.setRegisters(r)
    var t0 = timespec(), t1 = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0)
    while true {
        let exit = try vcpu.run()
        if case .halt = exit { break }
        if case .interrupted = exit { continue }
        fail("unexpected exit \(exit)")
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1)
    let cpu = Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9
    let count = vcpu.instructionCount
    let c = vcpu.cpu
    print("\(args[1]): \(count) guest instructions, \(Int(Double(count) / cpu / 1e6)) MIPS per CPU-second, tier \(c.tier.rawValue), jit runs \(c.jitRuns) side exits \(c.jitSideExits) compiled \(c.jitCompiled)")
} catch {
    fail("\(error)")
}
