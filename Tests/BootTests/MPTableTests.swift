import Testing
import GuestMemory
@testable import Boot

@Suite struct MPTableTests {
    @Test func floatingPointerAndConfigTable() throws {
        let mem = try Support.memory()
        let routes = [PCIRoutingEntry(slot: 1, pin: 1, gsi: 17), PCIRoutingEntry(slot: 2, pin: 2, gsi: 19)]
        let fp = try MPTable.write(into: mem, vcpus: 3, pciRoutes: routes, options: FirmwareOptions())
        #expect(fp == 0x9_FC00)
        let f = try Support.bytes(mem, fp, 16)
        #expect(Array(f[0..<4]) == Array("_MP_".utf8))
        #expect(Support.sum(f) == 0)
        #expect(f[8] == 1 && f[9] == 4 && f[11] == 0)
        let cfg = UInt64(f.le(UInt32.self, at: 4)!)
        #expect(cfg == 0xF_0000)
        let len = Int(try mem.read(UInt16.self, at: cfg + 4))
        let t = try Support.bytes(mem, cfg, len)
        #expect(Array(t[0..<4]) == Array("PCMP".utf8))
        #expect(Support.sum(t) == 0)
        #expect(t.le(UInt32.self, at: 36) == 0xFEE0_0000)
        // Walk the entries.
        let count = Int(t.le(UInt16.self, at: 34)!)
        var off = 44, cpus: [(UInt8, UInt8)] = [], buses: [String] = [], ioapic = 0
        var intr: [(UInt8, UInt8, UInt8, UInt8)] = [] // type, bus, irq, pin
        for _ in 0..<count {
            switch t[off] {
            case 0: cpus.append((t[off + 1], t[off + 3])); off += 20
            case 1: buses.append(String(decoding: t[(off + 2)..<(off + 8)], as: UTF8.self)); off += 8
            case 2: ioapic += 1; #expect(t.le(UInt32.self, at: off + 4) == 0xFEC0_0000); off += 8
            case 3: intr.append((t[off + 1], t[off + 4], t[off + 5], t[off + 7])); off += 8
            case 4: off += 8
            default: Issue.record("bad entry type \(t[off])"); return
            }
        }
        #expect(off == len)
        #expect(cpus.map(\.0) == [0, 1, 2])
        #expect(cpus.map(\.1) == [3, 1, 1]) // BSP flag on CPU 0 only
        #expect(buses == ["PCI   ", "ISA   "])
        #expect(ioapic == 1)
        #expect(intr.contains { $0 == (0, MPTable.isaBusID, 0, 2) })      // IRQ0 -> pin 2
        #expect(intr.contains { $0 == (0, MPTable.isaBusID, 4, 4) })      // COM1
        #expect(intr.contains { $0 == (0, MPTable.pciBusID, 1 << 2 | 0, 17) })
        #expect(intr.contains { $0 == (0, MPTable.pciBusID, 2 << 2 | 1, 19) })
    }

    @Test func biosDataAreaPointsAtTheEBDA() throws {
        let mem = try Support.memory()
        let bz = SyntheticBzImage()
        _ = try BootLoader.load(image: KernelImage(bytes: bz.bytes, path: "bz"), memory: mem)
        #expect(try mem.read(UInt16.self, at: 0x40E) == 0x9FC0)
        #expect(try mem.read(UInt16.self, at: 0x413) == 639)
    }
}
