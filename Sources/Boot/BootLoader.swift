import GuestMemory
import Hypervisor

/// What a load produced: the boot vCPU's entry state and where everything went.
public struct BootResult: Sendable {
    /// Registers and special registers for the boot processor (vCPU 0). Application
    /// processors start in the wait-for-SIPI state; the guest wakes them.
    public var cpuState: X86CPUState
    public var format: KernelFormat
    public var entryMode: EntryMode
    /// The e820 map handed to the guest (boot_params, PVH memmap or multiboot mmap).
    public var e820: [E820Entry]
    /// Physical range the kernel image occupies.
    public var kernelRange: Range<UInt64>
    public var initrdRange: Range<UInt64>?
    /// ACPI tables' addresses, when written.
    public var acpi: ACPITableInfo?
    /// MP floating pointer's address, when written.
    public var mpFloatingPointer: UInt64?
    /// boot_params (Linux), hvm_start_info (PVH) or multiboot_info; nil for a plain ELF.
    public var bootInfoAddress: UInt64?
}

/// The one entry point the VMM calls: detect the kernel's format by content, load it (and
/// the initrd), write the e820 map, ACPI and MP tables, and return the entry state.
///
///     let result = try BootLoader.load(kernel: "/boot/vmlinuz", initrd: "/boot/initrd.img",
///                                      cmdline: "console=ttyS0", memory: memory, vcpus: 2,
///                                      pciRoutes: host.routes)
///     try vcpu0.setState(result.cpuState)
///
/// - bzImage: Linux boot protocol, 64-bit entry when `preferLongMode` and the kernel has it,
///   otherwise the 32-bit entry (always for i386 kernels).
/// - ELF with a PVH note: PVH entry (32-bit, ebx = hvm_start_info).
/// - Multiboot: eax = 0x2BADB002, ebx = multiboot_info (the initrd is module 0).
/// - ELF32 Linux kernel (a "Linux" ELF note, no PVH note; the vmlinux inside an i386
///   bzImage): the 32-bit Linux boot protocol at e_entry with a synthetic boot_params.
/// - Other ELF64: long mode at e_entry with identity paging; ELF32: 32-bit protected mode.
///   The command line is still written at `BootLayout.cmdline` and rsi/esi point at it.
public enum BootLoader {
    public static func load(kernel: String, initrd: String? = nil, cmdline: String = "",
                            memory: GuestMemory, vcpus: Int = 1, pciRoutes: [PCIRoutingEntry] = [],
                            preferLongMode: Bool = true, options: FirmwareOptions = FirmwareOptions()) throws -> BootResult {
        let image = try KernelImage(path: kernel)
        let initrdBytes = try initrd.map { try readFile($0) }
        return try load(image: image, initrd: initrdBytes, initrdPath: initrd, cmdline: cmdline, memory: memory,
                        vcpus: vcpus, pciRoutes: pciRoutes, preferLongMode: preferLongMode, options: options)
    }

    /// The same for an image already in memory (tests, or a kernel passed by fd).
    public static func load(image: KernelImage, initrd: [UInt8]? = nil, initrdPath: String? = nil, cmdline: String = "",
                            memory: GuestMemory, vcpus: Int = 1, pciRoutes: [PCIRoutingEntry] = [],
                            preferLongMode: Bool = true, options: FirmwareOptions = FirmwareOptions()) throws -> BootResult {
        guard (1...255).contains(vcpus) else {
            throw BootError.invalidParameter("vCPU count \(vcpus) is out of range (1 to 255 with xAPIC IDs)")
        }
        for r in pciRoutes {
            guard (0..<32).contains(r.slot), (1...4).contains(r.pin), r.gsi < UInt32(options.ioapicPins) else {
                throw BootError.invalidParameter("PCI route slot \(r.slot) pin \(r.pin) -> GSI \(r.gsi) is invalid (slot 0-31, pin 1-4 for INTA#-INTD#, GSI below \(options.ioapicPins))")
            }
        }
        let e820 = E820.table(for: memory)
        guard E820.lowRAMEnd(e820) > PhysicalMap.highMemoryStart, memory.isRAM(0, length: Int(PhysicalMap.highMemoryStart)) else {
            throw BootError.insufficientMemory("guest RAM must start at 0 and extend past 1 MiB to load a kernel")
        }

        // Firmware tables first: they live below 1 MiB, apart from anything a kernel loads.
        try guestWrite {
            try memory.fill(0, at: 0, length: Int(BootLayout.loaderArea.upperBound))
            try memory.fill(0, at: PhysicalMap.ebdaStart, length: 0x400)
            try memory.write(UInt16(truncatingIfNeeded: PhysicalMap.ebdaStart >> 4), at: BootLayout.bdaEBDASegment)
            try memory.write(UInt16(truncatingIfNeeded: PhysicalMap.ebdaStart >> 10), at: BootLayout.bdaBaseMemoryKiB)
        }
        let acpi = options.acpi ? try ACPITables.write(into: memory, vcpus: vcpus, pciRoutes: pciRoutes, options: options) : nil
        let mp = options.mpTable ? try MPTable.write(into: memory, vcpus: vcpus, pciRoutes: pciRoutes, options: options) : nil

        var result: BootResult
        switch image.format {
        case .bzImage:
            let l = try LinuxBoot.load(kernel: image, initrd: initrd, cmdline: cmdline, memory: memory,
                                       e820: e820, rsdp: acpi?.rsdp, preferLongMode: preferLongMode)
            result = BootResult(cpuState: l.cpuState, format: image.format, entryMode: l.mode, e820: e820,
                                kernelRange: l.kernelRange, initrdRange: l.initrdRange, bootInfoAddress: BootLayout.zeroPage)
        case let .elf(is64, pvh?):
            _ = is64
            let elf = try ELFImage(bytes: image.bytes, path: image.path)
            let l = try PVH.load(kernel: image, elf: elf, pvhEntry: pvh, initrd: initrd, cmdline: cmdline,
                                 memory: memory, e820: e820, rsdp: acpi?.rsdp)
            result = BootResult(cpuState: l.cpuState, format: image.format, entryMode: .protected32, e820: e820,
                                kernelRange: l.kernelRange, initrdRange: l.initrdRange, bootInfoAddress: BootLayout.zeroPage)
        case .elf(false, nil) where (try? ELFImage(bytes: image.bytes, path: image.path))?.isLinuxKernel == true:
            // An uncompressed i386 Linux kernel: the 32-bit Linux boot protocol.
            let elf = try ELFImage(bytes: image.bytes, path: image.path)
            let l = try LinuxBoot.loadVmlinux32(kernel: image, elf: elf, initrd: initrd, cmdline: cmdline,
                                                memory: memory, e820: e820, rsdp: acpi?.rsdp)
            result = BootResult(cpuState: l.cpuState, format: image.format, entryMode: .protected32, e820: e820,
                                kernelRange: l.kernelRange, initrdRange: l.initrdRange, bootInfoAddress: BootLayout.zeroPage)
        case let .elf(is64, nil):
            let elf = try ELFImage(bytes: image.bytes, path: image.path)
            let range = try elf.load(bytes: image.bytes, into: memory, path: image.path)
            try writeCmdline(cmdline, memory: memory)
            let initrdRange = try placeInitrd(initrd, above: range.upperBound, e820: e820, memory: memory)
            let mode: EntryMode = is64 ? .long64 : .protected32
            var state = try EntryState.prepare(mode, entry: elf.physicalEntry, memory: memory)
            state.regs.rsi = BootLayout.cmdline
            result = BootResult(cpuState: state, format: image.format, entryMode: mode, e820: e820,
                                kernelRange: range, initrdRange: initrdRange, bootInfoAddress: nil)
        case .multiboot:
            let l = try Multiboot.load(kernel: image, initrd: initrd, initrdPath: initrdPath, cmdline: cmdline,
                                       memory: memory, e820: e820)
            result = BootResult(cpuState: l.cpuState, format: image.format, entryMode: .protected32, e820: e820,
                                kernelRange: l.kernelRange, initrdRange: l.initrdRange, bootInfoAddress: BootLayout.zeroPage)
        }
        result.acpi = acpi
        result.mpFloatingPointer = mp
        return result
    }
}
