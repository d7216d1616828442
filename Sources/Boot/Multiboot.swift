import GuestMemory
import Hypervisor

/// A multiboot (v1) header found in the first 8 KiB of a kernel image.
public struct MultibootHeader: Equatable, Sendable {
    public static let magic: UInt32 = 0x1BAD_B002
    public static let bootloaderMagic: UInt32 = 0x2BAD_B002
    public static let searchLength = 8192
    public static let flagPageAlign: UInt32 = 1 << 0
    public static let flagMemoryInfo: UInt32 = 1 << 1
    public static let flagVideoMode: UInt32 = 1 << 2
    public static let flagAddresses: UInt32 = 1 << 16

    /// File offset of the header.
    public var offset: Int
    public var flags: UInt32
    public var headerAddr: UInt32 = 0
    public var loadAddr: UInt32 = 0
    public var loadEndAddr: UInt32 = 0
    public var bssEndAddr: UInt32 = 0
    public var entryAddr: UInt32 = 0

    /// The first valid header (magic, and magic + flags + checksum == 0), 4-byte aligned.
    public static func find(in bytes: [UInt8]) -> MultibootHeader? {
        var off = 0
        while off + 12 <= min(bytes.count, searchLength) {
            if bytes.le(UInt32.self, at: off) == magic,
               let flags = bytes.le(UInt32.self, at: off + 4), let sum = bytes.le(UInt32.self, at: off + 8),
               magic &+ flags &+ sum == 0 {
                var h = MultibootHeader(offset: off, flags: flags)
                if flags & flagAddresses != 0 {
                    h.headerAddr = bytes.le(UInt32.self, at: off + 12) ?? 0
                    h.loadAddr = bytes.le(UInt32.self, at: off + 16) ?? 0
                    h.loadEndAddr = bytes.le(UInt32.self, at: off + 20) ?? 0
                    h.bssEndAddr = bytes.le(UInt32.self, at: off + 24) ?? 0
                    h.entryAddr = bytes.le(UInt32.self, at: off + 28) ?? 0
                }
                return h
            }
            off += 4
        }
        return nil
    }
}

/// Loads a multiboot (v1) kernel as GRUB and QEMU do: the a.out kludge address fields when
/// flag 16 is set, the ELF program headers otherwise; the initrd becomes module 0 and the
/// command line starts with the kernel's path. Entry: 32-bit flat protected mode, paging
/// off, eax = 0x2BADB002, ebx = multiboot_info.
public enum Multiboot {
    public static let infoSize = 116
    // multiboot_info flags
    static let infoMemory: UInt32 = 1 << 0
    static let infoCmdline: UInt32 = 1 << 2
    static let infoModules: UInt32 = 1 << 3
    static let infoMmap: UInt32 = 1 << 6
    static let infoLoaderName: UInt32 = 1 << 9

    public struct Loaded: Sendable {
        public var cpuState: X86CPUState
        public var kernelRange: Range<UInt64>
        public var initrdRange: Range<UInt64>?
    }

    public static func load(kernel: KernelImage, initrd: [UInt8]?, initrdPath: String?, cmdline: String,
                            memory: GuestMemory, e820: [E820Entry]) throws -> Loaded {
        let path = kernel.path
        guard let header = MultibootHeader.find(in: kernel.bytes) else { throw BootError.notAKernel(path: path) }
        let unsupported = header.flags & 0xFFFF & ~(MultibootHeader.flagPageAlign | MultibootHeader.flagMemoryInfo | MultibootHeader.flagVideoMode)
        guard unsupported == 0 else {
            throw BootError.invalidKernel(path: path, reason: "multiboot header requires features 0x\(String(unsupported, radix: 16)) this loader does not provide")
        }
        let range: Range<UInt64>
        let entry: UInt64
        if header.flags & MultibootHeader.flagAddresses != 0 {
            (range, entry) = try loadKludge(header, kernel: kernel, memory: memory)
        } else {
            guard ELFImage.hasMagic(kernel.bytes) else {
                throw BootError.invalidKernel(path: path, reason: "multiboot header has no address fields (flag 16) and the image is not ELF")
            }
            let elf = try ELFImage(bytes: kernel.bytes, path: path)
            range = try elf.load(bytes: kernel.bytes, into: memory, path: path)
            entry = elf.physicalEntry
        }

        // Command line: "<kernel path> <cmdline>", as GRUB and QEMU pass it.
        let fullCmdline = cmdline.isEmpty ? path : path + " " + cmdline
        try writeCmdline(fullCmdline, memory: memory)
        let initrdRange = try placeInitrd(initrd, above: range.upperBound, e820: e820, memory: memory)

        var flags = infoMemory | infoCmdline | infoMmap | infoLoaderName
        var info = [UInt8](repeating: 0, count: infoSize)
        info.put(UInt32(truncatingIfNeeded: E820.lowerMemory(e820) / 1024), at: 4)
        info.put(UInt32(truncatingIfNeeded: min(E820.upperMemory(e820) / 1024, 0xFFFF_FFFF)), at: 8)
        info.put(UInt32(BootLayout.cmdline), at: 16)
        // Module list at moduleList; strings (module name, loader name) after it.
        let moduleString = BootLayout.moduleList + 0x100
        let loaderName = BootLayout.moduleList + 0x800
        try guestWrite {
            if let r = initrdRange {
                flags |= infoModules
                info.put(UInt32(1), at: 20)
                info.put(UInt32(BootLayout.moduleList), at: 24)
                var mod = [UInt8]()
                mod.appendLE(UInt32(r.lowerBound)); mod.appendLE(UInt32(r.upperBound))
                mod.appendLE(UInt32(moduleString)); mod.appendLE(UInt32(0))
                try memory.write(bytes: mod, at: BootLayout.moduleList)
                let name = Array((initrdPath ?? "initrd").utf8.prefix(0x6FF))
                try memory.write(bytes: name + [0], at: moduleString)
            }
            try memory.write(bytes: Array("swiftvmm".utf8) + [0], at: loaderName)
            var mmap = [UInt8]()
            for e in e820.prefix(0x1000 / 24) {
                mmap.appendLE(UInt32(20)); mmap.appendLE(e.address); mmap.appendLE(e.size); mmap.appendLE(e.kind.rawValue)
            }
            try memory.write(bytes: mmap, at: BootLayout.memoryMap)
            info.put(UInt32(mmap.count), at: 44)
            info.put(UInt32(BootLayout.memoryMap), at: 48)
            info.put(UInt32(loaderName), at: 64)
            info.put(flags, at: 0)
            try memory.fill(0, at: BootLayout.zeroPage, length: 0x1000)
            try memory.write(bytes: info, at: BootLayout.zeroPage)
        }
        var state = try EntryState.prepare(.protected32, entry: entry, memory: memory)
        state.regs.rax = UInt64(MultibootHeader.bootloaderMagic)
        state.regs.rbx = BootLayout.zeroPage
        return Loaded(cpuState: state, kernelRange: range, initrdRange: initrdRange)
    }

    /// The a.out kludge: the file from (header offset - (header_addr - load_addr)) is loaded
    /// at load_addr up to load_end_addr (0: end of file), then zeroed up to bss_end_addr.
    static func loadKludge(_ h: MultibootHeader, kernel: KernelImage, memory: GuestMemory) throws -> (Range<UInt64>, UInt64) {
        let path = kernel.path
        func bad(_ why: String) -> BootError { .invalidKernel(path: path, reason: "multiboot: \(why)") }
        guard h.headerAddr >= h.loadAddr, h.headerAddr - h.loadAddr <= UInt32(h.offset) else {
            throw bad("header_addr 0x\(String(h.headerAddr, radix: 16)) and load_addr 0x\(String(h.loadAddr, radix: 16)) place the load start before the file")
        }
        let fileStart = h.offset - Int(h.headerAddr - h.loadAddr)
        let available = UInt64(kernel.bytes.count - fileStart)
        let loadSize: UInt64
        if h.loadEndAddr == 0 {
            loadSize = available
        } else {
            guard h.loadEndAddr > h.loadAddr, UInt64(h.loadEndAddr - h.loadAddr) <= available else {
                throw bad("load_end_addr 0x\(String(h.loadEndAddr, radix: 16)) lies before load_addr or past the end of the file")
            }
            loadSize = UInt64(h.loadEndAddr - h.loadAddr)
        }
        let start = UInt64(h.loadAddr)
        var end = start + loadSize
        if h.bssEndAddr != 0 {
            guard UInt64(h.bssEndAddr) >= end else { throw bad("bss_end_addr 0x\(String(h.bssEndAddr, radix: 16)) lies before the loaded image's end") }
            end = UInt64(h.bssEndAddr)
        }
        guard UInt64(h.entryAddr) >= start, UInt64(h.entryAddr) < end else {
            throw bad("entry_addr 0x\(String(h.entryAddr, radix: 16)) lies outside the loaded image")
        }
        try ELFImage.checkPlacement(start..<end, what: "multiboot image", path: path, memory: memory)
        try guestWrite {
            try kernel.bytes[fileStart..<(fileStart + Int(loadSize))].withUnsafeBytes { try memory.write(from: $0, at: start) }
            try memory.fill(0, at: start + loadSize, length: Int(end - start - loadSize))
        }
        return (start..<end, UInt64(h.entryAddr))
    }
}
