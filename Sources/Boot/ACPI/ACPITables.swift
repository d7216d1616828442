import GuestMemory

/// One row of the machine's PCI INTx routing: device `slot` (0-31) on bus 0, interrupt
/// `pin` (1 = INTA# ... 4 = INTD#, as in the interrupt-pin config register) wired to IOAPIC
/// input `gsi`. Same fields and pin numbering as Devices' `PCIInterruptRoute`, so the VMM
/// converts with `PCIRoutingEntry(slot: $0.slot, pin: $0.pin, gsi: $0.gsi)`. It becomes
/// the DSDT's `_PRT` (through one level-triggered, active-high, shared link device per GSI)
/// and the MP table's PCI I/O interrupt entries.
public struct PCIRoutingEntry: Equatable, Sendable, Codable {
    public var slot: Int
    public var pin: UInt8
    public var gsi: UInt32
    public init(slot: Int, pin: UInt8, gsi: UInt32) { self.slot = slot; self.pin = pin; self.gsi = gsi }
}

/// What the firmware tables describe beyond RAM and CPUs.
public struct FirmwareOptions: Equatable, Sendable {
    /// Write ACPI tables (RSDP at 0xE0000) and pass the RSDP to the kernel.
    public var acpi = true
    /// Write an Intel MP table (for guests without ACPI).
    public var mpTable = true
    /// IOAPIC ID in the MADT and MP table (KVM's in-kernel IOAPIC reads 0).
    public var ioapicID: UInt8 = 0
    /// Number of IOAPIC inputs (KVM's in-kernel IOAPIC has 24).
    public var ioapicPins: UInt8 = 24
    /// Describe the i8042 (PNP0303) and the RTC (PNP0B00) in the DSDT.
    public var legacyDevices = true
    /// The 32-bit PCI memory window the DSDT's `_CRS` declares: where BARs are assigned
    /// (our PCIHost for direct boot; SeaBIOS assigns from the end of low RAM up to the IOAPIC).
    public var pciWindow: Range<UInt64> = PhysicalMap.pciMMIOWindow
    public init() {}
}

/// Where the ACPI tables went.
public struct ACPITableInfo: Equatable, Sendable {
    public var rsdp: UInt64
    public var xsdt: UInt64
    public var rsdt: UInt64
    public var fadt: UInt64
    public var facs: UInt64
    public var dsdt: UInt64
    public var madt: UInt64
    /// End of the last table (exclusive).
    public var end: UInt64
}

/// Builds and writes the ACPI tables: RSDP (revision 2) at 0xE0000, then XSDT, RSDT, FADT
/// (revision 6, PM1 blocks in I/O space, not hardware-reduced), FACS, DSDT and MADT.
public enum ACPITables {
    public static let oemID = "SWVMM "
    public static let oemTableID = "SWIFTVMM"
    public static let creatorID = "SWFT"

    /// The 8-bit sum of `bytes` is zero when the table is valid.
    public static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt8 {
        bytes.reduce(0, &+)
    }

    /// A system description table: 36-byte header (checksum filled in) plus `body`.
    public static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var t = [UInt8]()
        t.appendASCII(signature, length: 4)
        t.appendLE(UInt32(36 + body.count))
        t.append(revision)
        t.append(0) // checksum
        t.appendASCII(oemID, length: 6)
        t.appendASCII(oemTableID, length: 8)
        t.appendLE(UInt32(1)) // OEM revision
        t.appendASCII(creatorID, length: 4)
        t.appendLE(UInt32(1)) // creator revision
        t += body
        t[9] = 0 &- checksum(t[...])
        return t
    }

    /// RSDP revision 2 (36 bytes) pointing at `rsdt` and `xsdt`.
    public static func rsdp(rsdt: UInt32, xsdt: UInt64) -> [UInt8] {
        var r = [UInt8]()
        r.appendASCII("RSD PTR ", length: 8)
        r.append(0) // checksum of the first 20 bytes
        r.appendASCII(oemID, length: 6)
        r.append(2) // revision: ACPI 2.0+
        r.appendLE(rsdt)
        r.appendLE(UInt32(36))
        r.appendLE(xsdt)
        r.append(0) // extended checksum
        r += [0, 0, 0]
        r[8] = 0 &- checksum(r[0..<20])
        r[32] = 0 &- checksum(r[...])
        return r
    }

    /// Generic Address Structure in system I/O space.
    static func gasIO(port: UInt16, bitWidth: UInt8, accessSize: UInt8) -> [UInt8] {
        var g: [UInt8] = [1, bitWidth, 0, accessSize]
        g.appendLE(UInt64(port))
        return g
    }

    /// FADT revision 6 (276 bytes).
    public static func fadt(dsdt: UInt64, facs: UInt64) -> [UInt8] {
        typealias PM = ACPIPowerManagement
        var b = [UInt8](repeating: 0, count: 276 - 36)
        func at(_ off: Int) -> Int { off - 36 }
        b.put(UInt32(truncatingIfNeeded: facs), at: at(36))  // FIRMWARE_CTRL
        b.put(UInt32(truncatingIfNeeded: dsdt), at: at(40))  // DSDT
        b[at(45)] = 0                                        // Preferred_PM_Profile: unspecified
        b.put(UInt16(PM.sciIRQ), at: at(46))                 // SCI_INT
        // SMI_CMD = 0: the machine is always in ACPI mode.
        b.put(UInt32(PM.pm1aEventPort), at: at(56))          // PM1a_EVT_BLK
        b.put(UInt32(PM.pm1aControlPort), at: at(64))        // PM1a_CNT_BLK
        b[at(88)] = PM.pm1EventLength                        // PM1_EVT_LEN
        b[at(89)] = PM.pm1ControlLength                      // PM1_CNT_LEN
        b.put(UInt16(101), at: at(96))                       // P_LVL2_LAT > 100: C2 unsupported
        b.put(UInt16(1001), at: at(98))                      // P_LVL3_LAT > 1000: C3 unsupported
        b[at(108)] = 0x32                                    // CENTURY: CMOS register 0x32
        b.put(UInt16(0x0003), at: at(109))                   // IAPC_BOOT_ARCH: LEGACY_DEVICES | 8042
        // Flags: WBINVD | PROC_C1 | SLP_BUTTON (none) | FIX_RTC. PWR_BUTTON (bit 4) is
        // clear: the power button is the fixed-feature one (PM1_STS/PM1_EN bit 8, the VMM's
        // graceful stop). HW_REDUCED_ACPI (bit 20) is clear.
        b.put(UInt32(1 << 0 | 1 << 2 | 1 << 5 | 1 << 6), at: at(112))
        b[at(131)] = 0                                       // FADT minor version
        b.put(facs, at: at(132))                             // X_FIRMWARE_CTRL
        b.put(dsdt, at: at(140))                             // X_DSDT
        b.replaceSubrange(at(148)..<at(160), with: gasIO(port: PM.pm1aEventPort, bitWidth: PM.pm1EventLength * 8, accessSize: 2))
        b.replaceSubrange(at(172)..<at(184), with: gasIO(port: PM.pm1aControlPort, bitWidth: PM.pm1ControlLength * 8, accessSize: 2))
        b.replaceSubrange(at(268)..<at(276), with: Array("SWIFTVMM".utf8)) // hypervisor vendor
        return table("FACP", revision: 6, body: b)
    }

    /// FACS (64 bytes, no header checksum), version 2.
    public static func facs() -> [UInt8] {
        var f = [UInt8](repeating: 0, count: 64)
        f.replaceSubrange(0..<4, with: Array("FACS".utf8))
        f.put(UInt32(64), at: 4)
        f[32] = 2 // version
        return f
    }

    /// MADT: a local APIC per vCPU (IDs 0..n-1), one IOAPIC, ISA overrides (IRQ0 -> GSI2,
    /// SCI level/active-high, level/active-high for PCI routes below GSI 16), LAPIC NMI on LINT1.
    public static func madt(vcpus: Int, options: FirmwareOptions, pciRoutes: [PCIRoutingEntry]) -> [UInt8] {
        var b = [UInt8]()
        b.appendLE(UInt32(PhysicalMap.lapicBase))
        b.appendLE(UInt32(1)) // PCAT_COMPAT: dual 8259s present
        for cpu in 0..<vcpus {
            b += [0, 8, UInt8(cpu), UInt8(cpu)]
            b.appendLE(UInt32(1)) // enabled
        }
        b += [1, 12, options.ioapicID, 0]
        b.appendLE(UInt32(PhysicalMap.ioapicBase))
        b.appendLE(UInt32(0)) // GSI base
        func override(_ irq: UInt8, gsi: UInt32, flags: UInt16) {
            b += [2, 10, 0, irq]
            b.appendLE(gsi)
            b.appendLE(flags)
        }
        override(0, gsi: 2, flags: 0) // timer: conforms to ISA (edge, active high)
        let levelHigh: UInt16 = 0x000D // trigger level (11b << 2) | polarity high (01b)
        var leveled: Set<UInt32> = [UInt32(ACPIPowerManagement.sciIRQ)]
        override(ACPIPowerManagement.sciIRQ, gsi: UInt32(ACPIPowerManagement.sciIRQ), flags: levelHigh)
        for gsi in pciRoutes.map(\.gsi).sorted() where gsi < 16 && gsi != 0 && gsi != 2 && !leveled.contains(gsi) {
            leveled.insert(gsi)
            override(UInt8(gsi), gsi: gsi, flags: levelHigh)
        }
        b += [4, 6, 0xFF] // LAPIC NMI for all processors
        b.appendLE(UInt16(0x0005)) // edge, active high
        b.append(1) // LINT1
        return table("APIC", revision: 4, body: b)
    }

    /// The DSDT: \_SB.PCI0 (host bridge with bus/IO/MMIO windows and _PRT), COM1, optionally
    /// the RTC and i8042, and \_S5.
    public static func dsdt(pciRoutes: [PCIRoutingEntry], options: FirmwareOptions) -> [UInt8] {
        typealias R = AML.Resource
        let window = options.pciWindow
        let crs = R.template([
            R.wordBusNumber(min: 0, max: 0xFF),
            R.io(min: 0xCF8, max: 0xCF8, alignment: 1, length: 8),
            R.wordIO(min: 0x0000, max: 0x0CF7),
            R.wordIO(min: 0x0D00, max: 0xFFFF),
            R.dwordMemory(min: 0x000A_0000, max: 0x000B_FFFF),
            R.dwordMemory(min: UInt32(window.lowerBound), max: UInt32(window.upperBound - 1)),
        ])
        // One link device per GSI, so the interrupt's mode is stated (level, active high,
        // shared) rather than implied (a bare GSI in _PRT means level, active low).
        let gsis = Array(Set(pciRoutes.map(\.gsi))).sorted()
        let links = gsis.map { gsi -> [UInt8] in
            let irq = R.template([R.extendedInterrupt(gsi, level: true, activeHigh: true, shared: true)])
            return AML.device(linkName(gsi), [
                AML.name("_HID", AML.eisaID("PNP0C0F")),
                AML.name("_UID", AML.integer(UInt64(gsi))),
                AML.name("_STA", AML.integer(0x0B)),
                AML.name("_PRS", irq),
                AML.name("_CRS", irq),
                AML.method("_SRS", args: 1, []),
                AML.method("_DIS", []),
            ])
        }
        let prt = AML.package(pciRoutes.sorted { ($0.slot, $0.pin) < ($1.slot, $1.pin) }.map { r in
            AML.package([AML.integer(UInt64(r.slot) << 16 | 0xFFFF), AML.integer(UInt64(r.pin &- 1) & 3),
                         AML.nameString(linkName(r.gsi)), AML.integer(0)])
        })
        let pci0 = AML.device("PCI0", [
            AML.name("_HID", AML.eisaID("PNP0A03")),
            AML.name("_ADR", AML.integer(0)),
            AML.name("_BBN", AML.integer(0)),
            AML.name("_UID", AML.integer(0)),
            AML.name("_CRS", crs),
            AML.name("_PRT", prt),
        ])
        let com1 = AML.device("COM1", [
            AML.name("_HID", AML.eisaID("PNP0501")),
            AML.name("_UID", AML.integer(1)),
            AML.name("_CRS", R.template([R.io(min: 0x3F8, max: 0x3F8, alignment: 0, length: 8), R.irqNoFlags(4)])),
        ])
        var sb: [[UInt8]] = links + [pci0, com1]
        if options.legacyDevices {
            sb.append(AML.device("RTC", [
                AML.name("_HID", AML.eisaID("PNP0B00")),
                AML.name("_CRS", R.template([R.io(min: 0x70, max: 0x70, alignment: 1, length: 2), R.irqNoFlags(8)])),
            ]))
            sb.append(AML.device("KBD", [
                AML.name("_HID", AML.eisaID("PNP0303")),
                AML.name("_CRS", R.template([R.io(min: 0x60, max: 0x60, alignment: 1, length: 1),
                                             R.io(min: 0x64, max: 0x64, alignment: 1, length: 1),
                                             R.irqNoFlags(1)])),
            ]))
        }
        let s5 = UInt64(ACPIPowerManagement.s5SleepType)
        let body = AML.scope("\\_SB", sb)
            + AML.name("_S5", AML.package([AML.integer(s5), AML.integer(s5), AML.integer(0), AML.integer(0)]))
        return table("DSDT", revision: 2, body: body)
    }

    /// The link device for `gsi`: "LG" and two hex digits (\_SB.LG10 for GSI 16).
    public static func linkName(_ gsi: UInt32) -> String {
        let hex = String(gsi & 0xFF, radix: 16, uppercase: true)
        return "LG" + (hex.count < 2 ? "0" + hex : hex)
    }

    /// Writes all tables from `BootLayout.acpiTables`, RSDP first.
    public static func write(into memory: GuestMemory, vcpus: Int, pciRoutes: [PCIRoutingEntry],
                             options: FirmwareOptions) throws -> ACPITableInfo {
        var cursor = BootLayout.acpiTables
        func place(_ bytes: [UInt8], align: UInt64 = 16) throws -> UInt64 {
            cursor = (cursor + align - 1) & ~(align - 1)
            let at = cursor
            guard at + UInt64(bytes.count) <= BootLayout.acpiTablesEnd else {
                throw BootError.invalidParameter("ACPI tables do not fit below 0x\(String(BootLayout.acpiTablesEnd, radix: 16)) (too many vCPUs or PCI routes)")
            }
            try guestWrite { try memory.write(bytes: bytes, at: at) }
            cursor += UInt64(bytes.count)
            return at
        }
        let rsdpAt = cursor
        cursor += 36
        let dsdtAt = try place(dsdt(pciRoutes: pciRoutes, options: options))
        let facsAt = try place(facs(), align: 64)
        let fadtAt = try place(fadt(dsdt: dsdtAt, facs: facsAt))
        let madtAt = try place(madt(vcpus: vcpus, options: options, pciRoutes: pciRoutes))
        let entries = [fadtAt, madtAt]
        var xb = [UInt8](), rb = [UInt8]()
        for e in entries { xb.appendLE(e); rb.appendLE(UInt32(e)) }
        let xsdtAt = try place(table("XSDT", revision: 1, body: xb))
        let rsdtAt = try place(table("RSDT", revision: 1, body: rb))
        try guestWrite { try memory.write(bytes: rsdp(rsdt: UInt32(rsdtAt), xsdt: xsdtAt), at: rsdpAt) }
        return ACPITableInfo(rsdp: rsdpAt, xsdt: xsdtAt, rsdt: rsdtAt, fadt: fadtAt, facs: facsAt,
                             dsdt: dsdtAt, madt: madtAt, end: cursor)
    }
}
