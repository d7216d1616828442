import Testing
@testable import Boot

/// The fw_cfg ACPI blobs, installed by a loader that follows the command list the way
/// SeaBIOS's romfile_loader does (allocate, add pointer, add checksum).
@Suite struct ACPITableLoaderTests {
    /// Runs the loader script over the blobs; returns the blobs' bytes and addresses.
    static func install(_ b: ACPIFirmwareBlobs, tablesAt: UInt64 = 0x7FF_0000, rsdpAt: UInt64 = 0xF5A30)
        throws -> (files: [String: [UInt8]], address: [String: UInt64]) {
        var files = [ACPIFirmwareBlobs.tablesFile: b.tables, ACPIFirmwareBlobs.rsdpFile: b.rsdp]
        var address: [String: UInt64] = [:]
        func name(_ e: ArraySlice<UInt8>) -> String {
            String(decoding: e.prefix { $0 != 0 }, as: UTF8.self)
        }
        func le(_ e: ArraySlice<UInt8>) -> UInt64 {
            e.reversed().reduce(0) { $0 << 8 | UInt64($1) }
        }
        #expect(b.loader.count % ACPITableLoader.entrySize == 0)
        var i = 0
        while i < b.loader.count {
            let e = b.loader[i..<(i + 128)]
            let body = e.dropFirst(4)
            switch le(e.prefix(4)) {
            case 1:
                let f = name(body.prefix(56))
                let zone = body[body.startIndex + 60]
                address[f] = zone == 2 ? rsdpAt : tablesAt
                #expect(files[f] != nil, "allocate of unknown \(f)")
            case 2:
                let dst = name(body.prefix(56)), src = name(body.dropFirst(56).prefix(56))
                let off = Int(le(body.dropFirst(112).prefix(4))), size = Int(body[body.startIndex + 116])
                var v = le(files[dst]![off..<(off + size)])
                v &+= try #require(address[src])
                for k in 0..<size { files[dst]![off + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
            case 3:
                let f = name(body.prefix(56))
                let off = Int(le(body.dropFirst(56).prefix(4)))
                let start = Int(le(body.dropFirst(60).prefix(4))), len = Int(le(body.dropFirst(64).prefix(4)))
                let sum = files[f]![start..<(start + len)].reduce(UInt8(0), &+)
                files[f]![off] &-= sum
            default:
                Issue.record("unknown loader command at \(i)")
            }
            i += 128
        }
        return (files, address)
    }

    @Test func installedTablesHaveValidChecksumsAndAbsolutePointers() throws {
        let routes = ACPITests.routes
        var options = FirmwareOptions()
        options.pciWindow = 0x8000_0000..<0xFEC0_0000
        let blobs = ACPITables.firmwareBlobs(vcpus: 2, pciRoutes: routes, options: options)
        let base: UInt64 = 0x7FF_0000
        let (files, address) = try Self.install(blobs, tablesAt: base)
        #expect(address[ACPIFirmwareBlobs.rsdpFile] == 0xF5A30)
        let t = try #require(files[ACPIFirmwareBlobs.tablesFile]), r = try #require(files[ACPIFirmwareBlobs.rsdpFile])
        func u32(_ a: [UInt8], _ o: Int) -> UInt64 { (0..<4).reduce(0) { $0 | UInt64(a[o + $1]) << (8 * $1) } }
        func u64(_ a: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(a[o + $1]) << (8 * $1) } }
        // RSDP: both checksums, RSDT/XSDT absolute.
        #expect(r[0..<20].reduce(UInt8(0), &+) == 0 && r.reduce(UInt8(0), &+) == 0)
        #expect(u32(r, 16) == base + UInt64(blobs.rsdt) && u64(r, 24) == base + UInt64(blobs.xsdt))
        // Every table sums to zero after patching.
        for at in [blobs.dsdt, blobs.fadt, blobs.madt, blobs.xsdt, blobs.rsdt] {
            let len = Int(u32(t, at + 4))
            #expect(t[at..<(at + len)].reduce(UInt8(0), &+) == 0, "table at \(at)")
        }
        // FADT points at the FACS and DSDT, both widths; the XSDT/RSDT at the FADT and MADT.
        #expect(u32(t, blobs.fadt + 36) == base + UInt64(blobs.facs) && u64(t, blobs.fadt + 132) == base + UInt64(blobs.facs))
        #expect(u32(t, blobs.fadt + 40) == base + UInt64(blobs.dsdt) && u64(t, blobs.fadt + 140) == base + UInt64(blobs.dsdt))
        #expect(u64(t, blobs.xsdt + 36) == base + UInt64(blobs.fadt) && u64(t, blobs.xsdt + 44) == base + UInt64(blobs.madt))
        #expect(u32(t, blobs.rsdt + 36) == base + UInt64(blobs.fadt) && u32(t, blobs.rsdt + 40) == base + UInt64(blobs.madt))
        #expect(Array(t[blobs.facs..<(blobs.facs + 4)]) == Array("FACS".utf8) && blobs.facs % 64 == 0)
    }

    @Test func dsdtDeclaresTheFirmwareWindow() {
        var options = FirmwareOptions()
        options.pciWindow = 0x8000_0000..<0xFEC0_0000
        let d = ACPITables.dsdt(pciRoutes: ACPITests.routes, options: options)
        // DWordMemory descriptor min/max as little-endian dwords.
        let minMax: [UInt8] = [0x00, 0x00, 0x00, 0x80, 0xFF, 0xFF, 0xBF, 0xFE]
        #expect(d.indices.contains { d[$0...].starts(with: minMax) })
    }
}
