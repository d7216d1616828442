import Testing
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// Instructions that only exist outside 64-bit mode (so the host-native differential tests
/// cannot cover them) and 32-bit interrupt paths an i386 kernel uses: the one-byte INC/DEC
/// forms, PUSHA/POPA, BCD adjusts, PUSH/POP of segment registers, operand-size prefixes,
/// INT n through a 32-bit trap gate with IRET back at the same privilege.
@Suite struct I386LegacyTests {
    func run32(_ source: String, idt: [(vector: Int, handler: String)] = [],
               extra: [(at: UInt64, source: String)] = []) throws -> (TestMachine, X86Registers) {
        let m = try TestMachine()
        let mem = m.memory
        // 0x08 kernel code, 0x10 kernel data, 0x18 user code (DPL 3), 0x20 user data (DPL 3).
        let gdt: [UInt64] = [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00CF_FB00_0000_FFFF,
                             0x00CF_F300_0000_FFFF]
        for (at, src) in extra { try m.load(try Assembler.assemble(src, bits: 32), at: at) }
        for (i, e) in gdt.enumerated() { try mem.write(e, at: 0x500 + UInt64(i * 8)) }
        var handlerAt: UInt64 = 0x10_0800
        for (v, src) in idt {
            let h = UInt32(handlerAt)
            let g = 0x6000 + UInt64(v * 8)
            try mem.write(UInt16(h & 0xFFFF), at: g)
            try mem.write(UInt16(0x08), at: g + 2)
            try mem.write(UInt16(0x8F00), at: g + 4)   // present 32-bit trap gate, DPL 0
            try mem.write(UInt16(h >> 16), at: g + 6)
            try m.load(try Assembler.assemble(src, bits: 32), at: handlerAt)
            handlerAt += 0x100
        }
        var s = X86SpecialRegisters()
        s.cs = .flat32(selector: 0x08, code: true)
        let data = X86Segment.flat32(selector: 0x10, code: false)
        s.ds = data; s.es = data; s.ss = data; s.fs = data; s.gs = data
        s.gdt = X86DescriptorTable(base: 0x500, limit: UInt16(gdt.count * 8 - 1))
        s.idt = X86DescriptorTable(base: 0x6000, limit: 0x7FF)
        s.cr0 = X86Bits.cr0PE | X86Bits.cr0ET
        m.cpu.setSpecialRegisters(s)
        var r = X86Registers()
        r.rip = TestMachine.codeBase
        r.rsp = 0x9_0000
        r.rflags = 0x2
        m.cpu.setRegisters(r)
        try m.load(try Assembler.assemble(source, bits: 32))
        let exit = try m.run()
        #expect(exit.isHalt, "\(exit)")
        return (m, m.cpu.registers())
    }

    @Test func incDecOneByteFormsAndFlags() throws {
        let (_, r) = try run32("""
            mov eax, 0x7fffffff
            inc eax
            seto cl
            mov edx, 0
            dec edx
            sets ch
            stc
            inc ebx
            setc bl
            hlt
        """)
        #expect(r.rax & 0xFFFF_FFFF == 0x8000_0000)
        #expect(r.rcx & 0xFF == 1, "INC sets OF on 0x7fffffff")
        #expect(r.rdx & 0xFFFF_FFFF == 0xFFFF_FFFF)
        #expect((r.rcx >> 8) & 0xFF == 1)
        #expect(r.rbx & 0xFF == 1, "INC leaves CF alone")
    }

    @Test func pushaPopaRoundTripAndLayout() throws {
        let (m, r) = try run32("""
            mov eax, 0xA1
            mov ecx, 0xC1
            mov edx, 0xD1
            mov ebx, 0xB1
            mov ebp, 0xE1
            mov esi, 0x51
            mov edi, 0xD2
            pusha
            mov eax, [esp + 12]
            mov [0x8000], eax
            mov eax, [esp + 28]
            mov [0x8004], eax
            mov eax, [esp]
            mov [0x8008], eax
            xor eax, eax
            xor ecx, ecx
            xor edx, edx
            xor ebx, ebx
            xor ebp, ebp
            xor esi, esi
            xor edi, edi
            popa
            hlt
        """)
        #expect(try m.memory.read(UInt32.self, at: 0x8000) == 0x9_0000, "PUSHA stores the original ESP")
        #expect(try m.memory.read(UInt32.self, at: 0x8004) == 0xA1, "EAX is pushed first")
        #expect(try m.memory.read(UInt32.self, at: 0x8008) == 0xD2, "EDI is pushed last")
        #expect(r.rax == 0xA1 && r.rcx == 0xC1 && r.rdx == 0xD1 && r.rbx == 0xB1)
        #expect(r.rbp == 0xE1 && r.rsi == 0x51 && r.rdi == 0xD2)
        #expect(r.rsp == 0x9_0000)
    }

    @Test func bcdAdjusts() throws {
        let (m, _) = try run32("""
            mov al, 0x79
            add al, 0x35
            daa
            setc bl
            mov [0x8000], al
            mov [0x8001], bl
            mov al, 0x35
            sub al, 0x47
            das
            setc bl
            mov [0x8002], al
            mov [0x8003], bl
            mov ax, 0x0009
            add al, 8
            aaa
            mov [0x8004], ax
            mov al, 0x3f
            aam
            mov [0x8006], ax
            aad
            mov [0x8008], ax
            hlt
        """)
        #expect(try m.memory.read(UInt8.self, at: 0x8000) == 0x14)      // 79 + 35 = 114
        #expect(try m.memory.read(UInt8.self, at: 0x8001) == 1)
        #expect(try m.memory.read(UInt8.self, at: 0x8002) == 0x88)      // 35 - 47 = -12 -> 88, borrow
        #expect(try m.memory.read(UInt8.self, at: 0x8003) == 1)
        #expect(try m.memory.read(UInt16.self, at: 0x8004) == 0x0107)   // 9 + 8 = 17 unpacked
        #expect(try m.memory.read(UInt16.self, at: 0x8006) == 0x0603)   // 63 = 6,3
        #expect(try m.memory.read(UInt16.self, at: 0x8008) == 0x003F)
    }

    @Test func segmentPushPopAndOperandSizePrefix() throws {
        let (m, r) = try run32("""
            mov eax, 0xFFFFFFFF
            push ds
            pop es
            mov ax, es
            mov ebx, 0x12345678
            mov bx, 0xABCD
            push word ptr 0x4242
            pop cx
            mov [0x8000], esp
            hlt
        """)
        #expect(r.rax & 0xFFFF_FFFF == 0xFFFF_0010, "mov ax, es writes 16 bits")
        #expect(r.rbx & 0xFFFF_FFFF == 0x1234_ABCD)
        #expect(r.rcx & 0xFFFF == 0x4242)
        #expect(try m.memory.read(UInt32.self, at: 0x8000) == 0x9_0000, "16-bit push/pop move ESP by 2")
    }

    @Test func intThroughTrapGateAndIretAtTheSamePrivilege() throws {
        let (m, r) = try run32("""
            mov eax, 1
            mov ebx, 0
            int 0x80
            mov [0x8000], esp
            pushfd
            pop edx
            hlt
        """, idt: [(0x80, """
            mov ebx, eax
            add ebx, 41
            mov ecx, [esp + 4]
            mov [0x8008], ecx
            iretd
        """)])
        #expect(r.rbx == 42, "the handler ran")
        #expect(try m.memory.read(UInt32.self, at: 0x8008) == 0x08, "CS pushed by INT")
        #expect(try m.memory.read(UInt32.self, at: 0x8000) == 0x9_0000, "IRET at CPL 0 pops EIP, CS, EFLAGS only")
        #expect(r.rdx & 0x2 != 0)
    }

    @Test func sysexitToUserAndSysenterBack() throws {
        let (m, r) = try run32("""
            mov ecx, 0x174
            xor edx, edx
            mov eax, 0x08
            wrmsr
            mov ecx, 0x175
            mov eax, 0x88000
            wrmsr
            mov ecx, 0x176
            mov eax, 0x100900
            wrmsr
            mov ecx, 0x70000
            mov edx, 0x100A00
            sysexit
        """, extra: [(0x10_0900, """
            mov ebx, cs
            mov edx, ss
            hlt
        """), (0x10_0A00, """
            mov eax, cs
            mov [0x8000], eax
            mov eax, ss
            mov [0x8004], eax
            mov [0x8008], esp
            mov eax, 7
            sysenter
        """)])
        // SYSEXIT: CPL 3 with CS = SYSENTER_CS + 16 | 3, SS = + 24 | 3, ESP = ECX, EIP = EDX.
        #expect(try m.memory.read(UInt32.self, at: 0x8000) & 0xFFFF == 0x1B)
        #expect(try m.memory.read(UInt32.self, at: 0x8004) & 0xFFFF == 0x23)
        #expect(try m.memory.read(UInt32.self, at: 0x8008) == 0x7_0000)
        // SYSENTER: CPL 0 with CS = SYSENTER_CS, SS = + 8, ESP and EIP from the MSRs.
        #expect(r.rbx & 0xFFFF == 0x08 && r.rdx & 0xFFFF == 0x10)
        #expect(r.rsp == 0x8_8000)
        #expect(r.rax == 7)
    }
}
