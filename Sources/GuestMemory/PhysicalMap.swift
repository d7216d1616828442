/// The guest-physical map of the PC we build, in one place. Loaders (e820, ACPI),
/// the PCI host bridge (BAR windows) and the VMM (memory slots) all read it from here.
///
///     0x0000_0000 ..  0x0009_FC00   low RAM (real-mode IVT, BDA, boot structures)
///     0x0009_FC00 ..  0x000A_0000   EBDA (MP table lives here)
///     0x000A_0000 ..  0x0010_0000   VGA hole + BIOS area (ACPI RSDP at 0xE0000, BIOS at 0xF0000)
///     0x0010_0000 ..  lowRAMEnd     RAM (kernel, initrd)
///     0xC000_0000 ..  0xFEC0_0000   PCI MMIO window (32-bit BARs)
///     0xFEC0_0000                   IOAPIC
///     0xFEE0_0000                   LAPIC
///     0x1_0000_0000 ..              RAM above 4 GiB when the guest has more than 3 GiB
public enum PhysicalMap {
    /// Start of the 32-bit PCI hole; RAM below 4 GiB ends here at the latest.
    public static let pciHoleStart: UInt64 = 0xC000_0000
    /// The window 32-bit PCI BARs are assigned from.
    public static let pciMMIOWindow: Range<UInt64> = 0xC000_0000..<0xFE00_0000
    /// PCI express ECAM is not used (config mechanism #1 only); reserved for later.
    public static let ioapicBase: UInt64 = 0xFEC0_0000
    public static let lapicBase: UInt64 = 0xFEE0_0000
    public static let highRAMStart: UInt64 = 0x1_0000_0000
    /// Where the legacy BIOS/option-ROM area starts (not RAM in e820).
    public static let ebdaStart: UInt64 = 0x9_FC00
    public static let biosAreaStart: UInt64 = 0xA_0000
    public static let highMemoryStart: UInt64 = 0x10_0000

    /// Smallest and largest guest RAM we accept (1 MiB covers real-mode test guests;
    /// the upper bound keeps the guest within 46-bit guest-physical space).
    public static let minimumRAM: UInt64 = 1 << 20
    public static let maximumRAM: UInt64 = 1 << 40

    /// The RAM regions for a guest of `ramSize` bytes: everything up to the PCI hole
    /// below 4 GiB, the rest above 4 GiB.
    public static func ramLayout(ramSize: UInt64) -> [(base: UInt64, size: Int)] {
        if ramSize <= pciHoleStart {
            return [(base: 0, size: Int(ramSize))]
        }
        return [(base: 0, size: Int(pciHoleStart)),
                (base: highRAMStart, size: Int(ramSize - pciHoleStart))]
    }
}
