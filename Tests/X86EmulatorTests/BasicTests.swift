import Testing
import GuestMemory
import Hypervisor
@testable import X86Emulator

@Suite struct BasicTests {
    func runSnippet(_ asm: String) throws -> TestMachine {
        let m = try TestMachine()
        try m.setupLongMode()
        try m.load(try Assembler.assemble(asm + "\nhlt\n"))
        let exit = try m.run()
        #expect(exit.isHalt, "expected HLT, got \(exit)")
        return m
    }

    @Test func arithmeticAndLoops() throws {
        let m = try runSnippet("""
            mov rcx, 10
            xor eax, eax
        1:  add rax, rcx
            dec rcx
            jnz 1b
            mov rbx, 0x123456789
            imul rbx, rbx, 3
        """)
        let r = m.cpu.registers()
        #expect(r.rax == 55)
        #expect(r.rbx == 0x123456789 * 3)
    }

    @Test func memoryAndStack() throws {
        let m = try runSnippet("""
            mov rax, 0x1122334455667788
            push rax
            pop rbx
            mov qword ptr [0x200000], rbx
            mov ecx, dword ptr [0x200004]
            call 2f
            jmp 3f
        2:  mov rdx, 42
            ret
        3:
        """)
        let r = m.cpu.registers()
        #expect(r.rbx == 0x1122334455667788)
        #expect(r.rcx == 0x11223344)
        #expect(r.rdx == 42)
        #expect(try m.memory.read(UInt64.self, at: 0x200000) == 0x1122334455667788)
    }

    @Test func portOutputAndInput() throws {
        let m = try TestMachine()
        try m.setupLongMode()
        m.ioReads[0x60] = 0xAB
        try m.load(try Assembler.assemble("""
            mov al, 'O'
            out 0xe9, al
            mov al, 'K'
            out 0xe9, al
            in al, 0x60
            mov bl, al
            hlt
        """))
        #expect(try m.run().isHalt)
        #expect(m.outputString == "OK")
        #expect(m.cpu.registers().rbx & 0xFF == 0xAB)
    }

    @Test func mmioGoesToTheVMM() throws {
        let m = try TestMachine(memorySize: 16 << 20)
        try m.setupLongMode()
        // 0xC0000000 is outside RAM: map it through the identity page tables (PDPT entry 3).
        try m.memory.write(UInt64(0xC000_0000) | 0x83, at: 0x2000 + 3 * 8)
        m.mmio[0xC000_0010] = 0x55
        try m.load(try Assembler.assemble("""
            mov rdi, 0xC0000000
            mov dword ptr [rdi + 8], 0x12345678
            mov eax, dword ptr [rdi + 0x10]
            add dword ptr [rdi + 0x10], 1
            hlt
        """))
        #expect(try m.run().isHalt)
        #expect(m.mmio[0xC000_0008] == 0x12345678)
        #expect(m.cpu.registers().rax == 0x55)
        #expect(m.mmio[0xC000_0010] == 0x56)
    }

    @Test func undefinedOpcodeRaisesUDInTheGuest() throws {
        // IDT with a #UD handler that writes 'U' to port 0xE9 and halts.
        let m = try TestMachine()
        try m.setupLongMode()
        let handler: UInt64 = 0x10_1000
        try m.load(try Assembler.assemble("mov al, 'U'\nout 0xe9, al\nhlt\n"), at: handler)
        let lo: UInt64 = (handler & 0xFFFF) | (0x10 << 16) | (UInt64(0x8E) << 40) | ((handler >> 16) & 0xFFFF) << 48
        try m.memory.write(lo, at: 0x8000 + 6 * 16)
        try m.memory.write(UInt64(0), at: 0x8000 + 6 * 16 + 8)
        var s = m.cpu.specialRegisters()
        s.idt = X86DescriptorTable(base: 0x8000, limit: 0xFFF)
        m.cpu.setSpecialRegisters(s)
        try m.load([0x0F, 0x0B, 0xF4])  // ud2; hlt
        #expect(try m.run().isHalt)
        #expect(m.outputString == "U")
    }

    @Test func tripleFaultStopsWithReason() throws {
        let m = try TestMachine()
        try m.setupLongMode()
        try m.load([0x0F, 0x0B])  // ud2 with an empty IDT
        let exit = try m.run()
        let reason = try #require(exit.shutdownReason)
        #expect(reason.contains("triple fault"))
        #expect(reason.contains("0x100000"))
    }

    @Test func divideErrorIsAnException() throws {
        let m = try TestMachine()
        try m.setupLongMode()
        try m.load(try Assembler.assemble("xor ecx, ecx\ndiv rcx\nhlt"))
        let exit = try m.run()
        #expect(exit.shutdownReason != nil)  // #DE with no IDT escalates to a triple fault
    }

    @Test func realModeToLongModeTransition() throws {
        // Start in real mode and switch all the way to long mode, as a boot loader does.
        let m = try TestMachine()
        let pml4: UInt64 = 0x1000
        try m.memory.write(UInt64(0x2000 | 3), at: pml4)
        try m.memory.write(UInt64(0x3000 | 3), at: 0x2000)
        for i in 0..<4 { try m.memory.write(UInt64(i) << 21 | 0x83, at: 0x3000 + UInt64(i) * 8) }
        let gdt: [UInt64] = [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00CF_9B00_0000_FFFF]
        for (i, e) in gdt.enumerated() { try m.memory.write(e, at: 0x600 + UInt64(i * 8)) }
        try m.memory.write(UInt16(31), at: 0x5F0)
        try m.memory.write(UInt32(0x600), at: 0x5F2)
        let code16 = try Assembler.assemble("""
            cli
            lgdt [0x5f0]
            mov eax, cr0
            or eax, 1
            mov cr0, eax
            .byte 0x66, 0xea
            .long 0x7c40
            .word 0x18
        """, bits: 16)
        let code32 = try Assembler.assemble("""
            mov ax, 0x10
            mov ds, ax
            mov ss, ax
            mov eax, cr4
            or eax, 0x20
            mov cr4, eax
            mov eax, 0x1000
            mov cr3, eax
            mov ecx, 0xC0000080
            rdmsr
            or eax, 0x100
            wrmsr
            mov eax, cr0
            or eax, 0x80000000
            mov cr0, eax
            .byte 0xea
            .long 0x7c80
            .word 0x08
        """, bits: 32)
        let code64 = try Assembler.assemble("""
            mov rax, 0x1234567890
            mov al, '6'
            out 0xe9, al
            hlt
        """)
        try m.load(code16, at: 0x7C00)
        try m.load(code32, at: 0x7C40)
        try m.load(code64, at: 0x7C80)
        var s = X86SpecialRegisters()
        s.cs = .realMode(selector: 0, code: true)
        m.cpu.setSpecialRegisters(s)
        var r = X86Registers(); r.rip = 0x7C00; r.rsp = 0x7000
        m.cpu.setRegisters(r)
        let exit = try m.run()
        #expect(exit.isHalt, "\(exit)")
        #expect(m.outputString == "6")
        #expect(m.cpu.registers().rax == 0x1234567836)
        #expect(m.cpu.mode64)
    }
}
