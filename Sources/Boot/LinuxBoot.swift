import GuestMemory
import Hypervisor

/// The Linux x86 boot protocol setup header (Documentation/arch/x86/boot.rst), parsed from
/// the first sector(s) of a bzImage. Offsets below are file offsets, which equal the
/// offsets inside `struct boot_params`.
public struct LinuxSetupHeader: Equatable, Sendable {
    public static let magicOffset = 0x202
    public static let magic: UInt32 = 0x5372_6448 // "HdrS"

    // loadflags
    public static let loadedHigh: UInt8 = 0x01
    public static let keepSegments: UInt8 = 0x40
    public static let canUseHeap: UInt8 = 0x80
    // xloadflags
    public static let xlfKernel64: UInt16 = 1 << 0
    public static let xlfCanBeLoadedAbove4G: UInt16 = 1 << 1

    public var setupSects: UInt8
    public var bootFlag: UInt16
    public var version: UInt16
    public var loadflags: UInt8
    public var code32Start: UInt32
    public var initrdAddrMax: UInt32
    public var kernelAlignment: UInt32
    public var relocatable: Bool
    public var xloadflags: UInt16
    public var cmdlineSize: UInt32
    public var prefAddress: UInt64
    public var initSize: UInt32
    /// Bytes 0x1F1 ..< 0x202 + byte[0x201]: the header as a loader copies it into boot_params.
    public var rawHeader: [UInt8]

    /// "major.minor" of the protocol version.
    public var versionString: String { "\(version >> 8).\(String(format2: version & 0xFF))" }
    public var supports64BitEntry: Bool { version >= 0x20C && xloadflags & Self.xlfKernel64 != 0 }
    /// The number of 512-byte real-mode setup sectors (0 means 4).
    public var setupSectorCount: Int { setupSects == 0 ? 4 : Int(setupSects) }
    /// File offset of the protected-mode kernel.
    public var protectedModeOffset: Int { (setupSectorCount + 1) * 512 }

    static func hasMagic(_ bytes: [UInt8]) -> Bool {
        bytes.le(UInt32.self, at: magicOffset) == magic
    }

    /// Parses the header of a bzImage. Requires protocol 2.06 or later (cmdline_size,
    /// initrd_addr_max and a protected-mode kernel loaded high).
    public init(bytes: [UInt8], path: String) throws {
        guard Self.hasMagic(bytes) else { throw BootError.notAKernel(path: path) }
        func field<T: FixedWidthInteger>(_ t: T.Type, _ off: Int) throws -> T {
            guard let v = bytes.le(t, at: off) else {
                throw BootError.invalidKernel(path: path, reason: "bzImage setup header is truncated at offset 0x\(String(off, radix: 16))")
            }
            return v
        }
        setupSects = try field(UInt8.self, 0x1F1)
        bootFlag = try field(UInt16.self, 0x1FE)
        version = try field(UInt16.self, 0x206)
        guard version >= 0x206 else {
            throw BootError.invalidKernel(path: path, reason: "Linux boot protocol \(version >> 8).\(version & 0xFF) is too old (2.06 or later is required)")
        }
        loadflags = try field(UInt8.self, 0x211)
        code32Start = try field(UInt32.self, 0x214)
        initrdAddrMax = try field(UInt32.self, 0x22C)
        kernelAlignment = try field(UInt32.self, 0x230)
        relocatable = try field(UInt8.self, 0x234) != 0
        cmdlineSize = try field(UInt32.self, 0x238)
        xloadflags = version >= 0x20C ? try field(UInt16.self, 0x236) : 0
        prefAddress = version >= 0x20A ? try field(UInt64.self, 0x258) : 0
        initSize = version >= 0x20A ? try field(UInt32.self, 0x260) : 0
        let end = 0x202 + Int(try field(UInt8.self, 0x201))
        guard end <= bytes.count, end > 0x1F1 else {
            throw BootError.invalidKernel(path: path, reason: "bzImage setup header end 0x\(String(end, radix: 16)) lies past the end of the file")
        }
        rawHeader = Array(bytes[0x1F1..<end])
        guard bootFlag == 0xAA55 else {
            throw BootError.invalidKernel(path: path, reason: "bzImage boot_flag is 0x\(String(bootFlag, radix: 16)), expected 0xaa55")
        }
        guard loadflags & Self.loadedHigh != 0 else {
            throw BootError.invalidKernel(path: path, reason: "zImage kernels (loaded below 1 MiB) are not supported; use a bzImage")
        }
        guard protectedModeOffset < bytes.count else {
            throw BootError.invalidKernel(path: path, reason: "bzImage has \(setupSectorCount) setup sectors but the file ends at \(bytes.count) bytes")
        }
    }
}

extension String {
    init<T: BinaryInteger>(format2 v: T) {
        self = v < 10 ? "0\(v)" : "\(v)"
    }
}

/// Loads a bzImage per the Linux boot protocol and writes its boot_params (zero page).
public enum LinuxBoot {
    // boot_params offsets
    static let acpiRSDPAddr = 0x070
    static let extRamdiskImage = 0x0C0
    static let extRamdiskSize = 0x0C4
    static let extCmdLinePtr = 0x0C8
    static let e820Entries = 0x1E8
    static let setupHeader = 0x1F1
    static let e820Table = 0x2D0
    // setup header fields, as boot_params offsets
    static let vidMode = 0x1FA
    static let typeOfLoader = 0x210
    static let loadflags = 0x211
    static let code32Start = 0x214
    static let ramdiskImage = 0x218
    static let ramdiskSize = 0x21C
    static let heapEndPtr = 0x224
    static let cmdLinePtr = 0x228
    static let hardwareSubarch = 0x23C

    public struct Loaded: Sendable {
        public var header: LinuxSetupHeader
        public var mode: EntryMode
        public var cpuState: X86CPUState
        public var kernelRange: Range<UInt64>
        public var initrdRange: Range<UInt64>?
    }

    /// Loads `kernel` (a bzImage) and `initrd` into `memory` and writes boot_params with
    /// `e820`, the command line and `rsdp`. Long mode entry is chosen when `preferLongMode`
    /// and the kernel has the 64-bit entry (XLF_KERNEL_64); otherwise the 32-bit entry.
    public static func load(kernel: KernelImage, initrd: [UInt8]?, cmdline: String,
                            memory: GuestMemory, e820: [E820Entry], rsdp: UInt64?,
                            preferLongMode: Bool) throws -> Loaded {
        let header = try LinuxSetupHeader(bytes: kernel.bytes, path: kernel.path)
        let mode: EntryMode = preferLongMode && header.supports64BitEntry ? .long64 : .protected32
        let payload = kernel.bytes[header.protectedModeOffset...]
        let load = BootLayout.linuxKernel
        let lowEnd = E820.lowRAMEnd(e820)
        // The kernel decompresses in place up to init_size bytes from its runtime address,
        // which is at least pref_address (LOAD_PHYSICAL_ADDR) for a 64-bit kernel.
        let runtime = max(load, header.prefAddress < lowEnd ? header.prefAddress : load)
        let kernelEnd = max(load + UInt64(payload.count), runtime + UInt64(header.initSize))
        guard kernelEnd <= lowEnd else {
            throw BootError.insufficientMemory("\(kernel.path) needs RAM up to 0x\(String(kernelEnd, radix: 16)) (init_size \(header.initSize) bytes) but low RAM ends at 0x\(String(lowEnd, radix: 16))")
        }
        try guestWrite { try payload.withUnsafeBytes { try memory.write(from: $0, at: load) } }

        let initrdRange = try writeZeroPage(rawHeader: header.rawHeader, flags: header.loadflags,
                                            cmdlineSize: header.cmdlineSize, initrdAddrMax: header.initrdAddrMax,
                                            code32Start: load, kernelEnd: kernelEnd, kernelPath: kernel.path,
                                            initrd: initrd, cmdline: cmdline, memory: memory, e820: e820, rsdp: rsdp)

        let entry: UInt64 = mode == .long64 ? load + 0x200 : load
        var state = try EntryState.prepare(mode, entry: entry, memory: memory)
        state.regs.rsi = BootLayout.zeroPage
        return Loaded(header: header, mode: mode, cpuState: state,
                      kernelRange: load..<(load + UInt64(payload.count)), initrdRange: initrdRange)
    }

    /// Writes boot_params at `BootLayout.zeroPage`: the setup header `rawHeader` (bytes from
    /// 0x1F1), the command line, the initrd (placed high, above `kernelEnd`), e820 and RSDP.
    static func writeZeroPage(rawHeader: [UInt8], flags: UInt8, cmdlineSize: UInt32, initrdAddrMax: UInt32,
                              code32Start: UInt64, kernelEnd: UInt64, kernelPath: String, initrd: [UInt8]?,
                              cmdline: String, memory: GuestMemory, e820: [E820Entry], rsdp: UInt64?) throws -> Range<UInt64>? {
        var zp = [UInt8](repeating: 0, count: 4096)
        zp.replaceSubrange(setupHeader..<(setupHeader + rawHeader.count), with: rawHeader)
        zp.put(UInt16(0xFFFF), at: vidMode) // "normal"
        zp[typeOfLoader] = 0xFF // undefined boot loader
        zp[Self.loadflags] = flags | LinuxSetupHeader.canUseHeap
        zp.put(UInt16(0xFE00 - 0x200), at: heapEndPtr)
        zp.put(UInt32(0), at: hardwareSubarch) // default x86
        zp.put(UInt32(truncatingIfNeeded: code32Start), at: Self.code32Start)
        if let rsdp { zp.put(rsdp, at: acpiRSDPAddr) }

        // Command line: at most cmdline_size bytes (boot.rst: 255 when the field says less).
        let limit = min(max(Int(cmdlineSize), 255), BootLayout.cmdlineMax - 1)
        let cmd = Array(cmdline.utf8)
        guard cmd.count <= limit else {
            throw BootError.invalidParameter("kernel command line is \(cmd.count) bytes; \(kernelPath) accepts at most \(limit)")
        }
        try guestWrite { try memory.write(bytes: cmd + [0], at: BootLayout.cmdline) }
        zp.put(UInt32(BootLayout.cmdline), at: cmdLinePtr)

        // Initrd: as high as possible below min(initrd_addr_max, end of low RAM), page aligned.
        var initrdRange: Range<UInt64>?
        let lowEnd = E820.lowRAMEnd(e820)
        if let initrd, !initrd.isEmpty {
            let maxAddr = initrdAddrMax == 0 ? UInt64(0x37FF_FFFF) : UInt64(initrdAddrMax)
            let top = min(maxAddr + 1, lowEnd)
            let size = UInt64(initrd.count)
            guard top > size, (top - size) & ~0xFFF >= kernelEnd else {
                throw BootError.insufficientMemory("the initrd (\(initrd.count) bytes) does not fit between the kernel (ending at 0x\(String(kernelEnd, radix: 16))) and 0x\(String(top, radix: 16))")
            }
            let addr = (top - size) & ~0xFFF
            try guestWrite { try memory.write(bytes: initrd, at: addr) }
            zp.put(UInt32(truncatingIfNeeded: addr), at: ramdiskImage)
            zp.put(UInt32(truncatingIfNeeded: size), at: ramdiskSize)
            zp.put(UInt32(truncatingIfNeeded: addr >> 32), at: extRamdiskImage)
            zp.put(UInt32(truncatingIfNeeded: size >> 32), at: extRamdiskSize)
            initrdRange = addr..<(addr + size)
        }

        let table = Array(e820.prefix(E820.maxEntries))
        zp[e820Entries] = UInt8(table.count)
        for (i, entry) in table.enumerated() {
            let off = e820Table + i * 20
            zp.put(entry.address, at: off)
            zp.put(entry.size, at: off + 8)
            zp.put(entry.kind.rawValue, at: off + 16)
        }
        try guestWrite { try memory.write(bytes: zp, at: BootLayout.zeroPage) }

        return initrdRange
    }

    /// A setup header for a kernel loaded without its bzImage wrapper (an uncompressed i386
    /// vmlinux): boot_flag, "HdrS", protocol 2.15, loaded high, no KEEP_SEGMENTS (the kernel
    /// loads its own GDT), initrd below 896 MiB - 128 MiB, 2 KiB command line.
    static func syntheticSetupHeader() -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 0x268 - setupHeader)
        func put<T: FixedWidthInteger>(_ v: T, _ off: Int) { h.put(v, at: off - setupHeader) }
        put(UInt16(0xAA55), 0x1FE)
        put(UInt8(0x66), 0x201)              // header length - 2 (ends at 0x268)
        put(LinuxSetupHeader.magic, 0x202)
        put(UInt16(0x020F), 0x206)
        put(LinuxSetupHeader.loadedHigh, 0x211)
        put(UInt32(0x37FF_FFFF), 0x22C)      // initrd_addr_max
        put(UInt32(0x1000), 0x230)           // kernel_alignment
        put(UInt32(2047), 0x238)             // cmdline_size
        return h
    }

    /// Loads an uncompressed 32-bit Linux kernel (the vmlinux ELF inside an i386 bzImage)
    /// at its physical addresses and enters `startup_32` through the 32-bit boot protocol:
    /// flat protected mode, paging off, esi = boot_params with a synthetic setup header.
    /// This skips the in-guest decompression (minutes on the software CPU).
    public static func loadVmlinux32(kernel: KernelImage, elf: ELFImage, initrd: [UInt8]?, cmdline: String,
                                     memory: GuestMemory, e820: [E820Entry], rsdp: UInt64?) throws -> Loaded {
        guard !elf.is64Bit else {
            throw BootError.invalidKernel(path: kernel.path, reason: "a 64-bit vmlinux needs a PVH note to be booted directly")
        }
        let range = try elf.load(bytes: kernel.bytes, into: memory, path: kernel.path)
        // The kernel builds its early page tables in the brk area past _end: keep the initrd
        // well clear of it (init_size is not known without the bzImage header).
        let kernelEnd = range.upperBound + 0x100_0000
        let raw = syntheticSetupHeader()
        let initrdRange = try writeZeroPage(rawHeader: raw, flags: LinuxSetupHeader.loadedHigh, cmdlineSize: 2047,
                                            initrdAddrMax: 0x37FF_FFFF, code32Start: elf.physicalEntry,
                                            kernelEnd: kernelEnd, kernelPath: kernel.path, initrd: initrd,
                                            cmdline: cmdline, memory: memory, e820: e820, rsdp: rsdp)
        var state = try EntryState.prepare(.protected32, entry: elf.physicalEntry, memory: memory)
        state.regs.rsi = BootLayout.zeroPage
        var bytes = [UInt8](repeating: 0, count: 0x268)
        bytes.replaceSubrange(setupHeader..<0x268, with: raw)
        let header = try LinuxSetupHeader(bytes: bytes + [UInt8](repeating: 0, count: 0x1000), path: kernel.path)
        return Loaded(header: header, mode: .protected32, cpuState: state, kernelRange: range, initrdRange: initrdRange)
    }
}
