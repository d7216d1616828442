import GuestMemory

/// Where the loaders put their boot structures in low guest memory. All of it lies below
/// the EBDA (`PhysicalMap.ebdaStart`) in RAM the e820 table reports as usable, which is
/// what Linux expects (it reserves the first megabyte itself).
///
///     0x0400  BIOS data area words: EBDA segment (0x40E), base memory in KiB (0x413)
///     0x0500  GDT (null, null, 0x10 code, 0x18 data)
///     0x1000  PML4, 0x2000 PDPT, 0x3000..0x6FFF four page directories (2 MiB pages, 4 GiB)
///     0x7000  boot_params (Linux) / hvm_start_info (PVH) / multiboot_info
///     0x8000  memory map (PVH memmap / multiboot mmap)
///     0x9000  module list (PVH / multiboot) and module strings
///     0xA000 .. 0x1_0000  boot stack (rsp/esp = 0x1_0000 at entry)
///     0x2_0000  command line (up to 64 KiB)
///     0x9_FC00  EBDA: MP floating pointer
///     0xE_0000  ACPI tables (RSDP first), 0xF_0000 MP configuration table
public enum BootLayout {
    public static let bdaEBDASegment: UInt64 = 0x40E
    public static let bdaBaseMemoryKiB: UInt64 = 0x413
    public static let gdt: UInt64 = 0x500
    public static let pml4: UInt64 = 0x1000
    public static let pdpt: UInt64 = 0x2000
    public static let pageDirectories: UInt64 = 0x3000
    /// Number of 2 MiB-page directories: 4 map the first 4 GiB.
    public static let pageDirectoryCount = 4
    public static let zeroPage: UInt64 = 0x7000
    public static let memoryMap: UInt64 = 0x8000
    public static let moduleList: UInt64 = 0x9000
    public static let stackTop: UInt64 = 0x1_0000
    public static let cmdline: UInt64 = 0x2_0000
    public static let cmdlineMax = 0x1_0000
    /// The loader's own area: kernels must not load into it.
    public static let loaderArea: Range<UInt64> = 0..<(cmdline + UInt64(cmdlineMax))
    public static let mpFloatingPointer: UInt64 = PhysicalMap.ebdaStart
    public static let acpiTables: UInt64 = 0xE_0000
    public static let acpiTablesEnd: UInt64 = 0xF_0000
    public static let mpConfigTable: UInt64 = 0xF_0000
    public static let mpConfigTableEnd: UInt64 = 0x10_0000
    /// The firmware area (EBDA, VGA hole, BIOS): e820-reserved, kernels must not load here.
    public static let firmwareArea: Range<UInt64> = PhysicalMap.ebdaStart..<PhysicalMap.highMemoryStart
    /// Where the Linux protected-mode kernel is loaded.
    public static let linuxKernel: UInt64 = 0x10_0000
}
