import Foundation
import Testing
import GuestMemory
@testable import Boot

@Suite struct ACPITests {
    static let routes = (1..<5).flatMap { slot in
        (UInt8(1)...4).map { pin in PCIRoutingEntry(slot: slot, pin: pin, gsi: 16 + UInt32((slot + Int(pin) - 1) % 4)) }
    }

    func writeTables(vcpus: Int = 4) throws -> (GuestMemory, ACPITableInfo) {
        let mem = try Support.memory()
        let info = try ACPITables.write(into: mem, vcpus: vcpus, pciRoutes: Self.routes, options: FirmwareOptions())
        return (mem, info)
    }

    func table(_ mem: GuestMemory, _ at: UInt64) throws -> [UInt8] {
        let len = try mem.read(UInt32.self, at: at + 4)
        return try Support.bytes(mem, at, Int(len))
    }

    @Test func eisaIDAndPkgLengthEncodings() {
        #expect(AML.eisaIDValue("PNP0A03") == 0x030A_D041)
        #expect(AML.eisaIDValue("PNP0501") == 0x0105_D041)
        #expect(AML.pkgLength(10) == [11])
        #expect(AML.pkgLength(62) == [63])
        #expect(AML.pkgLength(63) == [0x41, 0x04])       // 65 = 0x41: nibble 1, next byte 4
        #expect(AML.pkgLength(4093) == [0x4F, 0xFF])     // 4095
        #expect(AML.pkgLength(4094) == [0x81, 0x00, 0x01]) // 4097 = 0x1001
        #expect(AML.integer(0) == [0]); #expect(AML.integer(1) == [1])
        #expect(AML.integer(0x1234) == [0x0B, 0x34, 0x12])
        #expect(AML.integer(0x1_0000_0000) == [0x0E, 0, 0, 0, 0, 1, 0, 0, 0])
        #expect(AML.nameString("\\_SB.PCI0") == Array("\\".utf8) + [0x2E] + Array("_SB_PCI0".utf8))
        #expect(AML.nameString("RTC") == Array("RTC_".utf8))
    }

    @Test func checksumsAndPointers() throws {
        let (mem, info) = try writeTables()
        let rsdp = try Support.bytes(mem, info.rsdp, 36)
        #expect(Array(rsdp[0..<8]) == Array("RSD PTR ".utf8))
        #expect(Support.sum(Array(rsdp[0..<20])) == 0)
        #expect(Support.sum(rsdp) == 0)
        #expect(rsdp[15] == 2)
        #expect(rsdp.le(UInt32.self, at: 16) == UInt32(info.rsdt))
        #expect(rsdp.le(UInt64.self, at: 24) == info.xsdt)
        for at in [info.xsdt, info.rsdt, info.fadt, info.dsdt, info.madt] {
            let t = try table(mem, at)
            #expect(Support.sum(t) == 0, "checksum of \(String(decoding: t[0..<4], as: UTF8.self))")
        }
        let xsdt = try table(mem, info.xsdt)
        #expect(xsdt.count == 36 + 16)
        #expect(xsdt.le(UInt64.self, at: 36) == info.fadt && xsdt.le(UInt64.self, at: 44) == info.madt)
        let rsdt = try table(mem, info.rsdt)
        #expect(rsdt.le(UInt32.self, at: 36) == UInt32(info.fadt))
        #expect(info.facs % 64 == 0)
        #expect(try Support.bytes(mem, info.facs, 4) == Array("FACS".utf8))
        #expect(info.end <= BootLayout.acpiTablesEnd)
    }

    @Test func fadtDescribesPM1BlocksAndSCI() throws {
        let (mem, info) = try writeTables()
        let f = try table(mem, info.fadt)
        #expect(f.count == 276 && f[8] == 6)
        #expect(f.le(UInt32.self, at: 40) == UInt32(info.dsdt))
        #expect(f.le(UInt64.self, at: 140) == info.dsdt)
        #expect(f.le(UInt16.self, at: 46) == 9)
        #expect(f.le(UInt32.self, at: 56) == 0x600 && f[88] == 4)
        #expect(f.le(UInt32.self, at: 64) == 0x604 && f[89] == 2)
        #expect(f.le(UInt32.self, at: 48) == 0) // no SMI command port: always in ACPI mode
        #expect((f.le(UInt32.self, at: 112) ?? 0) & (1 << 20) == 0) // not hardware-reduced
        #expect((f.le(UInt32.self, at: 112) ?? 0) & (1 << 4) == 0)  // fixed-feature power button
        #expect(f[172] == 1 && f.le(UInt64.self, at: 176) == 0x604) // X_PM1a_CNT_BLK in I/O space
    }

    @Test func s5WriteIsPowerOff() {
        typealias PM = ACPIPowerManagement
        #expect(PM.isPowerOff(controlWrite: 5 << 10 | 1 << 13))
        #expect(PM.isPowerOff(controlWrite: 5 << 10 | 1 << 13 | 1))
        #expect(!PM.isPowerOff(controlWrite: 5 << 10))       // SLP_EN missing
        #expect(!PM.isPowerOff(controlWrite: 1 << 13))       // S0
        #expect(!PM.isPowerOff(controlWrite: 3 << 10 | 1 << 13))
    }

    @Test func madtListsEveryCPUAndTheIOAPIC() throws {
        let (mem, info) = try writeTables(vcpus: 4)
        let m = try table(mem, info.madt)
        #expect(m.le(UInt32.self, at: 36) == 0xFEE0_0000)
        var off = 44
        var lapics: [UInt8] = [], ioapics = 0, overrides: [(UInt8, UInt32, UInt16)] = [], nmis = 0
        while off + 2 <= m.count {
            let type = m[off], len = Int(m[off + 1])
            #expect(len >= 2)
            switch type {
            case 0: lapics.append(m[off + 3]); #expect(m.le(UInt32.self, at: off + 4) == 1)
            case 1: ioapics += 1; #expect(m.le(UInt32.self, at: off + 4) == 0xFEC0_0000); #expect(m.le(UInt32.self, at: off + 8) == 0)
            case 2: overrides.append((m[off + 3], m.le(UInt32.self, at: off + 4)!, m.le(UInt16.self, at: off + 8)!))
            case 4: nmis += 1; #expect(m[off + 5] == 1)
            default: Issue.record("unexpected MADT entry type \(type)")
            }
            off += max(len, 2)
        }
        #expect(off == m.count)
        #expect(lapics == [0, 1, 2, 3])
        #expect(ioapics == 1 && nmis == 1)
        #expect(overrides.contains { $0 == (0, 2, 0) })
        #expect(overrides.contains { $0 == (9, 9, 0x000D) })
    }

    @Test func dsdtHasTheDevicesAndRoutes() throws {
        let d = ACPITables.dsdt(pciRoutes: Self.routes, options: FirmwareOptions())
        func contains(_ s: [UInt8]) -> Bool {
            d.count >= s.count && (0...(d.count - s.count)).contains { Array(d[$0..<($0 + s.count)]) == s }
        }
        #expect(contains(Array("PCI0".utf8)) && contains(Array("COM1".utf8)) && contains(Array("_PRT".utf8)))
        #expect(contains(AML.name("_S5", AML.package([AML.integer(5), AML.integer(5), AML.integer(0), AML.integer(0)]))))
        #expect(contains(AML.eisaID("PNP0A03")))
        #expect(contains(Array("LG10".utf8)) && contains(Array("LG13".utf8)))
        #expect(contains(AML.Resource.dwordMemory(min: 0xC000_0000, max: 0xFDFF_FFFF)))
    }

    /// iasl (acpica-tools) must disassemble our DSDT without errors and see what we meant.
    @Test(.enabled(if: Support.which("iasl") != nil, "iasl not installed (apt-get install acpica-tools)"))
    func iaslDisassemblesTheTablesCleanly() throws {
        let iasl = try #require(Support.which("iasl"))
        let (mem, info) = try writeTables()
        let dir = try Support.tempDir()
        for (name, at) in [("dsdt", info.dsdt), ("facp", info.fadt), ("apic", info.madt)] {
            let file = dir.appendingPathComponent("\(name).dat")
            try Data(try table(mem, at)).write(to: file)
            let (status, output) = try Support.run(iasl, ["-d", file.path])
            #expect(status == 0, "iasl -d \(name): \(output)")
            #expect(!output.contains("Error"), "\(name): \(output)")
            let dsl = try String(contentsOf: dir.appendingPathComponent("\(name).dsl"), encoding: .utf8)
            switch name {
            case "dsdt":
                for needle in ["Device (PCI0)", "EisaId (\"PNP0A03\")", "Name (_BBN, Zero)", "WordBusNumber",
                               "0x0CF8", "0xC0000000", "0xFDFFFFFF", "Device (COM1)", "EisaId (\"PNP0501\")",
                               "Name (_S5, Package (0x04)", "Name (_PRT, Package (0x10)", "Device (LG10)",
                               "Interrupt (ResourceConsumer, Level, ActiveHigh, Shared, ,, )", "0x00000010",
                               "Device (RTC)", "Device (KBD)", "IRQNoFlags ()"] {
                    #expect(dsl.contains(needle), "DSDT lacks \(needle)")
                }
            case "facp":
                #expect(dsl.contains("PM1A Control Block Address : 00000604"))
                #expect(dsl.contains("SCI Interrupt : 0009"))
                #expect(dsl.contains("Hardware Reduced (V5) : 0"))
            default:
                #expect(dsl.contains("Processor Local APIC"))
                #expect(dsl.contains("I/O APIC"))
                #expect(dsl.contains("Interrupt Source Override"))
            }
        }
        // Recompiling the disassembly must work too (the AML round-trips).
        let (status, output) = try Support.run(iasl, ["-p", dir.appendingPathComponent("re").path, dir.appendingPathComponent("dsdt.dsl").path])
        #expect(status == 0, "iasl recompile: \(output)")
    }
}
