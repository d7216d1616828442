import GuestMemory

/// One entry of the BIOS e820 memory map (also the PVH memmap and multiboot mmap).
public struct E820Entry: Equatable, Sendable, Codable, CustomStringConvertible {
    public enum Kind: UInt32, Sendable, Codable {
        case ram = 1
        case reserved = 2
        case acpi = 3
        case nvs = 4
        case unusable = 5
    }
    public var address: UInt64
    public var size: UInt64
    public var kind: Kind

    public init(address: UInt64, size: UInt64, kind: Kind) {
        self.address = address; self.size = size; self.kind = kind
    }

    public var end: UInt64 { address &+ size }

    public var description: String {
        "[0x\(String(address, radix: 16))-0x\(String(end &- 1, radix: 16))] \(kind)"
    }
}

/// Builds the e820 map every boot protocol hands the guest, from the guest's RAM regions
/// and `PhysicalMap`: RAM below the EBDA, the EBDA/VGA/BIOS area reserved, RAM from 1 MiB
/// up to the end of low RAM (at most the PCI hole), and RAM above 4 GiB.
public enum E820 {
    /// Linux's boot_params holds at most this many entries.
    public static let maxEntries = 128

    public static func table(for memory: GuestMemory) -> [E820Entry] {
        table(regions: memory.regions.map { (base: $0.guestBase, size: UInt64($0.size)) })
    }

    /// The map for a guest of `ramSize` bytes laid out by `PhysicalMap.ramLayout`.
    public static func table(ramSize: UInt64) -> [E820Entry] {
        table(regions: PhysicalMap.ramLayout(ramSize: ramSize).map { (base: $0.base, size: UInt64($0.size)) })
    }

    public static func table(regions: [(base: UInt64, size: UInt64)]) -> [E820Entry] {
        var out: [E820Entry] = []
        let reservedLow = PhysicalMap.ebdaStart..<PhysicalMap.highMemoryStart
        var reservedAdded = false
        for region in regions.sorted(by: { $0.base < $1.base }) where region.size > 0 {
            let start = region.base
            let end = region.base &+ region.size
            // The part below the EBDA.
            if start < reservedLow.lowerBound {
                let e = min(end, reservedLow.lowerBound)
                out.append(E820Entry(address: start, size: e - start, kind: .ram))
            }
            // The firmware area is reported reserved whenever RAM reaches into it, so the
            // guest never allocates the EBDA, ACPI tables or MP table.
            if start < reservedLow.upperBound && end > reservedLow.lowerBound && !reservedAdded {
                out.append(E820Entry(address: reservedLow.lowerBound,
                                     size: UInt64(reservedLow.count), kind: .reserved))
                reservedAdded = true
            }
            // RAM from 1 MiB up.
            let s = max(start, reservedLow.upperBound)
            if end > s {
                out.append(E820Entry(address: s, size: end - s, kind: .ram))
            }
        }
        return merged(out)
    }

    /// Adjacent entries of the same kind joined (keeps tables short and canonical).
    static func merged(_ entries: [E820Entry]) -> [E820Entry] {
        var out: [E820Entry] = []
        for entry in entries {
            if let last = out.last, last.kind == entry.kind, last.end == entry.address {
                out[out.count - 1].size += entry.size
            } else {
                out.append(entry)
            }
        }
        return out
    }

    /// Bytes of RAM below 1 MiB usable by a real-mode guest (multiboot mem_lower, in bytes).
    public static func lowerMemory(_ table: [E820Entry]) -> UInt64 {
        table.first(where: { $0.kind == .ram && $0.address == 0 }).map { min($0.size, PhysicalMap.ebdaStart) } ?? 0
    }

    /// Bytes of contiguous RAM starting at 1 MiB (multiboot mem_upper, in bytes).
    public static func upperMemory(_ table: [E820Entry]) -> UInt64 {
        table.first(where: { $0.kind == .ram && $0.address == PhysicalMap.highMemoryStart }).map { $0.size } ?? 0
    }

    /// The end of the RAM run that starts at 1 MiB (kernels and initrds are placed below it).
    public static func lowRAMEnd(_ table: [E820Entry]) -> UInt64 {
        table.first(where: { $0.kind == .ram && $0.address == PhysicalMap.highMemoryStart }).map { $0.end }
            ?? PhysicalMap.highMemoryStart
    }
}
