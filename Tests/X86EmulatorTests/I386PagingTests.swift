import Testing
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// 32-bit protected mode with non-PAE two-level paging, as Debian's i386 (686) kernel runs:
/// 4 MiB PSE pages (the kernel's direct map at 0xC0000000), 4 KiB pages through a page
/// table, accessed/dirty bits, and #PF error codes and CR2 with and without CR0.WP.
@Suite struct I386PagingTests {
    static let pageDirectory: UInt64 = 0x4000
    static let pageTable: UInt64 = 0x5000
    static let idt: UInt64 = 0x6000
    static let handler: UInt64 = 0x10_0800

    /// Flat 32-bit segments (code 0x08, data 0x10), paging off, a 32-bit interrupt gate for
    /// #PF at `handler`, and the page tables (not yet enabled).
    func machine(writeProtect: Bool) throws -> TestMachine {
        let m = try TestMachine()
        let mem = m.memory
        let gdt: [UInt64] = [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF]
        for (i, e) in gdt.enumerated() { try mem.write(e, at: 0x500 + UInt64(i * 8)) }
        // #PF gate: offset, selector 0x08, present 32-bit interrupt gate.
        let h = UInt32(Self.handler)
        try mem.write(UInt16(h & 0xFFFF), at: Self.idt + 14 * 8)
        try mem.write(UInt16(0x08), at: Self.idt + 14 * 8 + 2)
        try mem.write(UInt16(0x8E00), at: Self.idt + 14 * 8 + 4)
        try mem.write(UInt16(h >> 16), at: Self.idt + 14 * 8 + 6)
        // PDE 0: 4 MiB identity (code, stack, tables). PDE 1: page table. PDE 0x300: 4 MiB
        // at 0xC0000000 -> physical 0x800000.
        let pd = Self.pageDirectory, pt = Self.pageTable
        try mem.write(UInt32(0x0000_0083), at: pd)
        try mem.write(UInt32(pt) | 0x3, at: pd + 4)
        try mem.write(UInt32(0x0080_0083), at: pd + 0x300 * 4)
        try mem.write(UInt32(0x0060_0003), at: pt)          // 0x400000 -> 0x600000 RW
        try mem.write(UInt32(0x0060_1001), at: pt + 4)      // 0x401000 -> 0x601000 RO
        try mem.write(UInt32(0x0060_2002), at: pt + 8)      // 0x402000: not present
        try mem.write(UInt32(0x5A5A_1234), at: 0x60_1000)

        var s = X86SpecialRegisters()
        s.cs = .flat32(selector: 0x08, code: true)
        let data = X86Segment.flat32(selector: 0x10, code: false)
        s.ds = data; s.es = data; s.ss = data; s.fs = data; s.gs = data
        s.gdt = X86DescriptorTable(base: 0x500, limit: UInt16(gdt.count * 8 - 1))
        s.idt = X86DescriptorTable(base: Self.idt, limit: 0xFF)
        s.cr0 = X86Bits.cr0PE | X86Bits.cr0ET | (writeProtect ? X86Bits.cr0WP : 0)
        m.cpu.setSpecialRegisters(s)
        var r = X86Registers()
        r.rip = TestMachine.codeBase
        r.rsp = 0x9_0000
        m.cpu.setRegisters(r)
        try m.load(try Assembler.assemble("""
            pop eax
            mov ecx, cr2
            hlt
        """, bits: 32), at: Self.handler)
        return m
    }

    static let enablePaging = """
        mov eax, cr4
        or eax, 0x10
        mov cr4, eax
        mov eax, 0x4000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
    """

    @Test(arguments: [true, false])
    func twoLevelPagingWithPSEPages(writeProtect: Bool) throws {
        let m = try machine(writeProtect: writeProtect)
        try m.load(try Assembler.assemble(Self.enablePaging + "\n" + """
            mov dword ptr [0xC0000010], 0x11223344
            mov dword ptr [0x400008], 0xCAFEBABE
            mov ebx, dword ptr [0x401000]
            mov eax, 0xFFFF
            mov dword ptr [0x401004], 0x77
            hlt
        """, bits: 32))
        #expect(try m.run().isHalt)
        let r = m.cpu.registers()
        // The 4 MiB page and the 4 KiB pages reach the physical addresses they name.
        #expect(try m.memory.read(UInt32.self, at: 0x80_0010) == 0x1122_3344)
        #expect(try m.memory.read(UInt32.self, at: 0x60_0008) == 0xCAFE_BABE)
        #expect(r.rbx & 0xFFFF_FFFF == 0x5A5A_1234)
        if writeProtect {
            // Supervisor write to a read-only page: #PF, error code P|W, CR2 = the address.
            #expect(r.rax & 0xFFFF_FFFF == 0x3, "error code 0x\(String(r.rax, radix: 16))")
            #expect(r.rcx & 0xFFFF_FFFF == 0x40_1004)
            #expect(try m.memory.read(UInt32.self, at: 0x60_1004) == 0)
        } else {
            // CR0.WP clear: the supervisor may write read-only pages.
            #expect(r.rax & 0xFFFF_FFFF == 0xFFFF)
            #expect(try m.memory.read(UInt32.self, at: 0x60_1004) == 0x77)
        }
        // Accessed and dirty bits as the walks set them.
        let pd = Self.pageDirectory, pt = Self.pageTable
        #expect(try m.memory.read(UInt32.self, at: pd + 0x300 * 4) & 0x60 == 0x60)   // 4M page: A|D
        #expect(try m.memory.read(UInt32.self, at: pd + 4) & 0x20 != 0)             // PDE: A
        #expect(try m.memory.read(UInt32.self, at: pt) & 0x60 == 0x60)               // written: A|D
        let ro = try m.memory.read(UInt32.self, at: pt + 4)
        #expect(ro & 0x20 != 0)
        #expect((ro & 0x40 != 0) == !writeProtect, "dirty only when the write happened")
    }

    @Test func notPresentPageFaultsWithItsAddress() throws {
        let m = try machine(writeProtect: true)
        try m.load(try Assembler.assemble(Self.enablePaging + "\n" + """
            mov eax, 0xFFFF
            mov edx, dword ptr [0x402ffc]
            hlt
        """, bits: 32))
        #expect(try m.run().isHalt)
        let r = m.cpu.registers()
        #expect(r.rax & 0xFFFF_FFFF == 0x0)          // read, not present, supervisor
        #expect(r.rcx & 0xFFFF_FFFF == 0x40_2FFC)
    }

    @Test func pseIgnoredWithoutCR4PSE() throws {
        // Without CR4.PSE the PS bit is ignored: PDE 0x300 is then a page-table pointer to
        // 0x800000, whose entry 0 (zero) is not present, so the access faults.
        let m = try machine(writeProtect: true)
        // PDE 0 through a page table at 0x7000 that identity-maps the first 4 MiB.
        for i in 0..<1024 { try m.memory.write(UInt32(i << 12) | 0x3, at: 0x7000 + UInt64(i * 4)) }
        try m.memory.write(UInt32(0x7003), at: Self.pageDirectory)
        try m.load(try Assembler.assemble("""
            mov eax, 0x4000
            mov cr3, eax
            mov eax, cr0
            or eax, 0x80000000
            mov cr0, eax
            mov eax, 0xFFFF
            mov edx, dword ptr [0xC0000010]
            hlt
        """, bits: 32))
        #expect(try m.run().isHalt)
        let r = m.cpu.registers()
        #expect(r.rcx & 0xFFFF_FFFF == 0xC000_0010)
        #expect(r.rax & 0xFFFF_FFFF == 0x0)
    }
}
