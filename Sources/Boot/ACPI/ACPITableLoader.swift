/// The ACPI tables as fw_cfg files for firmware (SeaBIOS, OVMF) to install, the way QEMU
/// hands them over (hw/acpi/bios-linker-loader.c): the tables in one blob
/// (`etc/acpi/tables`), the RSDP in another (`etc/acpi/rsdp`), and a command list
/// (`etc/table-loader`) of 128-byte entries telling the firmware where to put each blob
/// (ALLOCATE), which fields hold pointers to patch with the blob's final address
/// (ADD_POINTER: the field holds an offset into the source blob; the firmware adds the
/// blob's address) and which checksums to recompute (ADD_CHECKSUM). Same tables as the
/// direct-boot path (`ACPITables.write`), just relocatable.
public struct ACPIFirmwareBlobs: Equatable, Sendable {
    public static let tablesFile = "etc/acpi/tables"
    public static let rsdpFile = "etc/acpi/rsdp"
    public static let loaderFile = "etc/table-loader"

    public var tables: [UInt8]
    public var rsdp: [UInt8]
    public var loader: [UInt8]
    /// Offsets of each table inside `tables`.
    public var dsdt: Int, facs: Int, fadt: Int, madt: Int, xsdt: Int, rsdt: Int
}

/// The table-loader command encoding (one 128-byte entry each, little-endian).
public enum ACPITableLoader {
    public static let entrySize = 128
    public static let fileNameLength = 56
    public enum Command: UInt32 { case allocate = 1, addPointer = 2, addChecksum = 3 }
    /// ALLOCATE zones: anywhere in high memory, or the F-segment (where an RSDP must be).
    public enum Zone: UInt8 { case high = 1, fSegment = 2 }

    static func name(_ s: String) -> [UInt8] {
        var b = Array(s.utf8.prefix(fileNameLength - 1))
        b += [UInt8](repeating: 0, count: fileNameLength - b.count)
        return b
    }

    static func entry(_ command: Command, _ body: [UInt8]) -> [UInt8] {
        var e = [UInt8]()
        e.appendLE(command.rawValue)
        e += body
        e += [UInt8](repeating: 0, count: entrySize - e.count)
        return e
    }

    public static func allocate(_ file: String, alignment: UInt32, zone: Zone) -> [UInt8] {
        var b = name(file)
        b.appendLE(alignment)
        b.append(zone.rawValue)
        return entry(.allocate, b)
    }

    public static func addPointer(in file: String, offset: UInt32, size: UInt8, to source: String) -> [UInt8] {
        var b = name(file) + name(source)
        b.appendLE(offset)
        b.append(size)
        return entry(.addPointer, b)
    }

    public static func addChecksum(in file: String, offset: UInt32, start: UInt32, length: UInt32) -> [UInt8] {
        var b = name(file)
        b.appendLE(offset)
        b.appendLE(start)
        b.appendLE(length)
        return entry(.addChecksum, b)
    }
}

extension ACPITables {
    /// The tables, RSDP and loader script for firmware. `options.pciWindow` should be the
    /// window the firmware assigns BARs from.
    public static func firmwareBlobs(vcpus: Int, pciRoutes: [PCIRoutingEntry],
                                     options: FirmwareOptions) -> ACPIFirmwareBlobs {
        typealias L = ACPITableLoader
        let T = ACPIFirmwareBlobs.tablesFile, R = ACPIFirmwareBlobs.rsdpFile
        var blob = [UInt8]()
        func place(_ bytes: [UInt8], align: Int = 16) -> Int {
            while blob.count % align != 0 { blob.append(0) }
            let at = blob.count
            blob += bytes
            return at
        }
        let dsdtAt = place(dsdt(pciRoutes: pciRoutes, options: options))
        let facsAt = place(facs(), align: 64)
        let fadtAt = place(fadt(dsdt: UInt64(dsdtAt), facs: UInt64(facsAt)))
        let madtAt = place(madt(vcpus: vcpus, options: options, pciRoutes: pciRoutes))
        let entries = [fadtAt, madtAt]
        var xb = [UInt8](), rb = [UInt8]()
        for e in entries { xb.appendLE(UInt64(e)); rb.appendLE(UInt32(e)) }
        let xsdtAt = place(table("XSDT", revision: 1, body: xb))
        let rsdtAt = place(table("RSDT", revision: 1, body: rb))
        let rsdpBytes = rsdp(rsdt: UInt32(rsdtAt), xsdt: UInt64(xsdtAt))

        var loader = L.allocate(R, alignment: 16, zone: .fSegment)
        loader += L.allocate(T, alignment: 64, zone: .high)
        func pointer(_ file: String, _ offset: Int, _ size: UInt8) {
            loader += L.addPointer(in: file, offset: UInt32(offset), size: size, to: T)
        }
        func checksum(_ file: String, table start: Int, length: Int, at offset: Int) {
            loader += L.addChecksum(in: file, offset: UInt32(offset), start: UInt32(start), length: UInt32(length))
        }
        // FADT: FIRMWARE_CTRL (36), DSDT (40), X_FIRMWARE_CTRL (132), X_DSDT (140).
        pointer(T, fadtAt + 36, 4); pointer(T, fadtAt + 40, 4)
        pointer(T, fadtAt + 132, 8); pointer(T, fadtAt + 140, 8)
        for i in entries.indices {
            pointer(T, xsdtAt + 36 + 8 * i, 8)
            pointer(T, rsdtAt + 36 + 4 * i, 4)
        }
        pointer(R, 16, 4)   // RsdtAddress
        pointer(R, 24, 8)   // XsdtAddress
        func length(_ at: Int) -> Int {
            Int(blob[at]) | Int(blob[at + 1]) << 8 | Int(blob[at + 2]) << 16 | Int(blob[at + 3]) << 24
        }
        for at in [dsdtAt, fadtAt, madtAt, xsdtAt, rsdtAt] {
            checksum(T, table: at, length: length(at + 4), at: at + 9)
        }
        checksum(R, table: 0, length: 20, at: 8)
        checksum(R, table: 0, length: 36, at: 32)
        return ACPIFirmwareBlobs(tables: blob, rsdp: rsdpBytes, loader: loader, dsdt: dsdtAt, facs: facsAt,
                                 fadt: fadtAt, madt: madtAt, xsdt: xsdtAt, rsdt: rsdtAt)
    }
}
