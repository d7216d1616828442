import GuestMemory
import Hypervisor

/// The PVH boot protocol (Xen's direct boot, also used by Linux, FreeBSD and QEMU's
/// microvm): the kernel's ELF note XEN_ELFNOTE_PHYS32_ENTRY gives a 32-bit entry point,
/// entered in flat protected mode with paging off and ebx pointing at `hvm_start_info`.
public enum PVH {
    public static let startInfoMagic: UInt32 = 0x336E_C578
    /// hvm_start_info (version 1, with memmap) is 0x38 bytes.
    public static let startInfoSize = 0x38
    public static let modlistEntrySize = 32
    public static let memmapEntrySize = 24

    public struct Loaded: Sendable {
        public var cpuState: X86CPUState
        public var kernelRange: Range<UInt64>
        public var initrdRange: Range<UInt64>?
    }

    /// Loads a PVH ELF and writes hvm_start_info with the command line, the initrd as
    /// module 0, the memory map and the RSDP address.
    public static func load(kernel: KernelImage, elf: ELFImage, pvhEntry: UInt64, initrd: [UInt8]?,
                            cmdline: String, memory: GuestMemory, e820: [E820Entry], rsdp: UInt64?) throws -> Loaded {
        let range = try elf.load(bytes: kernel.bytes, into: memory, path: kernel.path)
        guard pvhEntry <= 0xFFFF_FFFF else {
            throw BootError.invalidKernel(path: kernel.path, reason: "PVH entry 0x\(String(pvhEntry, radix: 16)) is above 4 GiB")
        }
        try writeCmdline(cmdline, memory: memory)
        let initrdRange = try placeInitrd(initrd, above: range.upperBound, e820: e820, memory: memory)

        var info = [UInt8]()
        info.appendLE(startInfoMagic)
        info.appendLE(UInt32(1)) // version
        info.appendLE(UInt32(0)) // flags
        info.appendLE(UInt32(initrdRange == nil ? 0 : 1)) // nr_modules
        info.appendLE(initrdRange == nil ? UInt64(0) : BootLayout.moduleList)
        info.appendLE(BootLayout.cmdline)
        info.appendLE(rsdp ?? 0)
        info.appendLE(BootLayout.memoryMap)
        info.appendLE(UInt32(e820.count))
        info.appendLE(UInt32(0))
        try guestWrite {
            try memory.fill(0, at: BootLayout.zeroPage, length: 0x1000)
            try memory.write(bytes: info, at: BootLayout.zeroPage)
            if let r = initrdRange {
                var mod = [UInt8]()
                mod.appendLE(r.lowerBound)
                mod.appendLE(r.upperBound - r.lowerBound)
                mod.appendLE(UInt64(0)) // cmdline_paddr
                mod.appendLE(UInt64(0))
                try memory.write(bytes: mod, at: BootLayout.moduleList)
            }
            try memory.write(bytes: memmapBytes(e820), at: BootLayout.memoryMap)
        }
        var state = try EntryState.prepare(.protected32, entry: pvhEntry, memory: memory)
        state.regs.rbx = BootLayout.zeroPage
        return Loaded(cpuState: state, kernelRange: range, initrdRange: initrdRange)
    }

    /// hvm_memmap_table_entry array: addr u64, size u64, type u32, reserved u32.
    static func memmapBytes(_ e820: [E820Entry]) -> [UInt8] {
        var out = [UInt8]()
        for e in e820.prefix(0x1000 / memmapEntrySize) {
            out.appendLE(e.address); out.appendLE(e.size); out.appendLE(e.kind.rawValue); out.appendLE(UInt32(0))
        }
        return out
    }
}

/// Writes the NUL-terminated command line at `BootLayout.cmdline`.
func writeCmdline(_ cmdline: String, memory: GuestMemory) throws {
    let cmd = Array(cmdline.utf8)
    guard cmd.count < BootLayout.cmdlineMax else {
        throw BootError.invalidParameter("kernel command line is \(cmd.count) bytes; at most \(BootLayout.cmdlineMax - 1) are supported")
    }
    try guestWrite { try memory.write(bytes: cmd + [0], at: BootLayout.cmdline) }
}

/// Places an initrd (module) page aligned as high as possible in the RAM run from 1 MiB
/// (below 4 GiB), above `above` (the kernel's end). Returns its range, or nil for none.
func placeInitrd(_ initrd: [UInt8]?, above: UInt64, below limit: UInt64 = 0x1_0000_0000,
                 e820: [E820Entry], memory: GuestMemory) throws -> Range<UInt64>? {
    guard let initrd, !initrd.isEmpty else { return nil }
    let top = min(E820.lowRAMEnd(e820), limit)
    let size = UInt64(initrd.count)
    let floor = (above + 0xFFF) & ~0xFFF
    guard top > size, (top - size) & ~0xFFF >= floor else {
        throw BootError.insufficientMemory("the initrd (\(initrd.count) bytes) does not fit between the kernel (ending at 0x\(String(above, radix: 16))) and 0x\(String(top, radix: 16))")
    }
    let addr = (top - size) & ~0xFFF
    try guestWrite { try memory.write(bytes: initrd, at: addr) }
    return addr..<(addr + size)
}
