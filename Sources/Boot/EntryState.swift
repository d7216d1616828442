import GuestMemory
import Hypervisor

/// The CPU mode a kernel is entered in.
public enum EntryMode: String, Equatable, Sendable, Codable {
    /// 32-bit protected mode, flat segments, paging off.
    case protected32
    /// 64-bit long mode with identity-mapped page tables.
    case long64
}

/// Builds the boot vCPU's entry state: GDT, identity page tables, segment and control
/// registers. Selectors follow Linux's boot protocol: __BOOT_CS = 0x10, __BOOT_DS = 0x18.
public enum EntryState {
    public static let codeSelector: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18

    /// A GDT descriptor as the CPU stores it.
    static func descriptor(base: UInt32, limit: UInt32, access: UInt8, flags: UInt8) -> UInt64 {
        var d: UInt64 = UInt64(limit & 0xFFFF)
        d |= UInt64(base & 0xFF_FFFF) << 16
        d |= UInt64(access) << 40
        d |= UInt64((limit >> 16) & 0xF) << 48
        d |= UInt64(flags & 0xF) << 52
        d |= UInt64(base >> 24) << 56
        return d
    }

    /// The four GDT entries for `mode`: null, null, code (0x10), data (0x18).
    public static func gdtEntries(_ mode: EntryMode) -> [UInt64] {
        // access: present | S | type (code 0xB execute/read accessed, data 0x3 read/write accessed)
        // flags: G (0x8) | D/B (0x4) | L (0x2)
        let code = descriptor(base: 0, limit: 0xF_FFFF, access: 0x9B, flags: mode == .long64 ? 0xA : 0xC)
        let data = descriptor(base: 0, limit: 0xF_FFFF, access: 0x93, flags: 0xC)
        return [0, 0, code, data]
    }

    /// Writes the GDT for `mode` at `BootLayout.gdt`.
    public static func writeGDT(_ mode: EntryMode, into memory: GuestMemory) throws {
        for (i, entry) in gdtEntries(mode).enumerated() {
            try guestWrite { try memory.write(entry, at: BootLayout.gdt + UInt64(i * 8)) }
        }
    }

    /// Writes identity page tables mapping the first 4 GiB with 2 MiB pages
    /// (1 GiB pages are not guaranteed on every host CPU).
    public static func writeIdentityPageTables(into memory: GuestMemory) throws {
        let present: UInt64 = 1, writable: UInt64 = 2, pageSize: UInt64 = 0x80
        try guestWrite {
            try memory.fill(0, at: BootLayout.pml4, length: 0x1000 * (2 + BootLayout.pageDirectoryCount))
            try memory.write(BootLayout.pdpt | present | writable, at: BootLayout.pml4)
            for d in 0..<BootLayout.pageDirectoryCount {
                let pd = BootLayout.pageDirectories + UInt64(d) * 0x1000
                try memory.write(pd | present | writable, at: BootLayout.pdpt + UInt64(d) * 8)
                for e in 0..<512 {
                    let phys = (UInt64(d) << 30) | (UInt64(e) << 21)
                    try memory.write(phys | present | writable | pageSize, at: pd + UInt64(e) * 8)
                }
            }
        }
    }

    /// The register state for entering at `entry` in `mode`, with the GDT (and for long
    /// mode the page tables) at their `BootLayout` addresses. General registers are zero but
    /// for rip and rsp; callers set the protocol's argument registers.
    public static func cpuState(_ mode: EntryMode, entry: UInt64) -> X86CPUState {
        var s = X86CPUState()
        s.regs.rip = entry
        s.regs.rsp = BootLayout.stackTop
        s.regs.rflags = 0x2 // interrupts off
        let code: X86Segment
        let data: X86Segment
        switch mode {
        case .protected32:
            code = .flat32(selector: codeSelector, code: true)
            data = .flat32(selector: dataSelector, code: false)
            s.sregs.cr0 = X86Bits.cr0PE | X86Bits.cr0ET
            s.sregs.cr4 = 0
            s.sregs.efer = 0
        case .long64:
            code = .flat64(selector: codeSelector, code: true)
            data = .flat64(selector: dataSelector, code: false)
            s.sregs.cr0 = X86Bits.cr0PE | X86Bits.cr0ET | X86Bits.cr0PG
            s.sregs.cr3 = BootLayout.pml4
            s.sregs.cr4 = X86Bits.cr4PAE
            s.sregs.efer = X86Bits.eferLME | X86Bits.eferLMA
        }
        s.sregs.cs = code
        s.sregs.ds = data; s.sregs.es = data; s.sregs.fs = data; s.sregs.gs = data; s.sregs.ss = data
        // A busy 32-bit TSS (type 11) with a 0x67 limit, as PVH and VMX entry require.
        s.sregs.tr = X86Segment(base: 0, limit: 0x67, selector: 0, type: 0xB, db: false, s: false, l: false, g: false)
        s.sregs.gdt = X86DescriptorTable(base: BootLayout.gdt, limit: UInt16(gdtEntries(mode).count * 8 - 1))
        s.sregs.idt = X86DescriptorTable(base: 0, limit: 0)
        return s
    }

    /// Writes the GDT (and page tables for long mode) and returns the entry state.
    public static func prepare(_ mode: EntryMode, entry: UInt64, memory: GuestMemory) throws -> X86CPUState {
        try writeGDT(mode, into: memory)
        if mode == .long64 { try writeIdentityPageTables(into: memory) }
        return cpuState(mode, entry: entry)
    }
}
