import GuestMemory

/// The Intel MultiProcessor Specification 1.4 tables, for guests that do not use ACPI:
/// the floating pointer structure at the start of the EBDA and the configuration table at
/// 0xF0000 with processors, the PCI and ISA buses, the IOAPIC and the interrupt wiring.
public enum MPTable {
    public static let pciBusID: UInt8 = 0
    public static let isaBusID: UInt8 = 1
    public static let lapicVersion: UInt8 = 0x14
    public static let ioapicVersion: UInt8 = 0x11

    /// The configuration table ("PCMP"), base table only.
    public static func configurationTable(vcpus: Int, pciRoutes: [PCIRoutingEntry], options: FirmwareOptions) -> [UInt8] {
        var entries = [UInt8]()
        var count = 0
        for cpu in 0..<vcpus {
            entries += [0, UInt8(cpu), lapicVersion, cpu == 0 ? 0x3 : 0x1] // enabled, BSP
            entries.appendLE(UInt32(0x0006_00)) // signature: family 6
            entries.appendLE(UInt32(0x201))     // features: FPU, APIC
            entries += [UInt8](repeating: 0, count: 8)
            count += 1
        }
        entries += [1, pciBusID]; entries.appendASCII("PCI", length: 6); count += 1
        entries += [1, isaBusID]; entries.appendASCII("ISA", length: 6); count += 1
        entries += [2, options.ioapicID, ioapicVersion, 1]
        entries.appendLE(UInt32(PhysicalMap.ioapicBase)); count += 1
        func ioInterrupt(type: UInt8, flags: UInt16, bus: UInt8, irq: UInt8, pin: UInt8) {
            entries += [3, type]
            entries.appendLE(flags)
            entries += [bus, irq, options.ioapicID, pin]
            count += 1
        }
        // ISA: the 8259 on pin 0 (ExtINT), IRQ0 on pin 2, the others identity-mapped.
        ioInterrupt(type: 3, flags: 0, bus: isaBusID, irq: 0, pin: 0)
        for irq in UInt8(0)..<16 where irq != 2 {
            let pin = irq == 0 ? 2 : irq
            let flags: UInt16 = irq == ACPIPowerManagement.sciIRQ ? 0x000D : 0 // SCI level/high
            ioInterrupt(type: 0, flags: flags, bus: isaBusID, irq: irq, pin: pin)
        }
        // PCI: source IRQ = slot << 2 | (pin - 1); level, active high (as the DSDT says).
        for r in pciRoutes where r.gsi < UInt32(options.ioapicPins) {
            ioInterrupt(type: 0, flags: 0x000D, bus: pciBusID, irq: UInt8(r.slot & 0x1F) << 2 | ((r.pin &- 1) & 3), pin: UInt8(r.gsi))
        }
        // Local interrupts: ExtINT on LINT0, NMI on LINT1 of every LAPIC.
        entries += [4, 3]; entries.appendLE(UInt16(0)); entries += [isaBusID, 0, 0xFF, 0]; count += 1
        entries += [4, 1]; entries.appendLE(UInt16(0)); entries += [isaBusID, 0, 0xFF, 1]; count += 1

        var t = [UInt8]()
        t.appendASCII("PCMP", length: 4)
        t.appendLE(UInt16(44 + entries.count))
        t.append(4) // spec revision 1.4
        t.append(0) // checksum
        t.appendASCII("SWIFTVMM", length: 8)
        t.appendASCII("SWIFTVMM", length: 12)
        t.appendLE(UInt32(0)); t.appendLE(UInt16(0)) // no OEM table
        t.appendLE(UInt16(count))
        t.appendLE(UInt32(PhysicalMap.lapicBase))
        t.appendLE(UInt16(0)); t.append(0); t.append(0) // no extended table
        t += entries
        t[7] = 0 &- ACPITables.checksum(t[...])
        return t
    }

    /// The 16-byte floating pointer ("_MP_") pointing at the configuration table.
    public static func floatingPointer(configTable: UInt32) -> [UInt8] {
        var f = [UInt8]()
        f.appendASCII("_MP_", length: 4)
        f.appendLE(configTable)
        f += [1, 4, 0] // length in 16-byte units, revision 1.4, checksum
        f += [0, 0, 0, 0, 0] // feature bytes: configuration table present, virtual wire mode
        f[10] = 0 &- ACPITables.checksum(f[...])
        return f
    }

    /// Writes the floating pointer (EBDA) and the configuration table (0xF0000).
    /// Returns the floating pointer's address.
    @discardableResult
    public static func write(into memory: GuestMemory, vcpus: Int, pciRoutes: [PCIRoutingEntry],
                             options: FirmwareOptions) throws -> UInt64 {
        let table = configurationTable(vcpus: vcpus, pciRoutes: pciRoutes, options: options)
        guard BootLayout.mpConfigTable + UInt64(table.count) <= BootLayout.mpConfigTableEnd else {
            throw BootError.invalidParameter("the MP table does not fit below 1 MiB (too many vCPUs or PCI routes)")
        }
        try guestWrite {
            try memory.write(bytes: table, at: BootLayout.mpConfigTable)
            try memory.write(bytes: floatingPointer(configTable: UInt32(BootLayout.mpConfigTable)), at: BootLayout.mpFloatingPointer)
        }
        return BootLayout.mpFloatingPointer
    }
}
