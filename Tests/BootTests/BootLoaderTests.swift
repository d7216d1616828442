import Testing
import GuestMemory
@testable import Boot

@Suite struct BootLoaderTests {
    @Test func rejectsBadParameters() throws {
        let mem = try Support.memory()
        let image = try KernelImage(bytes: SyntheticBzImage().bytes, path: "bz")
        #expect(throws: BootError.self) { try BootLoader.load(image: image, memory: mem, vcpus: 0) }
        #expect(throws: BootError.self) { try BootLoader.load(image: image, memory: mem, vcpus: 256) }
        #expect(throws: BootError.self) {
            try BootLoader.load(image: image, memory: mem, pciRoutes: [PCIRoutingEntry(slot: 1, pin: 0, gsi: 16)])
        }
        #expect(throws: BootError.self) {
            try BootLoader.load(image: image, memory: mem, pciRoutes: [PCIRoutingEntry(slot: 1, pin: 1, gsi: 24)])
        }
    }

    @Test func oneMiBGuestCannotHoldAKernel() throws {
        let mem = try Support.memory(1 << 20)
        do {
            _ = try BootLoader.load(image: KernelImage(bytes: SyntheticBzImage().bytes, path: "bz"), memory: mem)
            Issue.record("expected an error")
        } catch let BootError.insufficientMemory(why) {
            #expect(why.contains("1 MiB"))
        }
    }

    @Test func manyCPUsFitTheTables() throws {
        let mem = try Support.memory()
        let routes = (0..<32).flatMap { s in (UInt8(1)...4).map { PCIRoutingEntry(slot: s, pin: $0, gsi: 16 + UInt32((s + Int($0)) % 4)) } }
        let r = try BootLoader.load(image: KernelImage(bytes: SyntheticBzImage().bytes, path: "bz"),
                                    memory: mem, vcpus: 255, pciRoutes: routes)
        #expect(r.acpi != nil && r.mpFloatingPointer != nil)
    }

    @Test func firmwareTablesCanBeTurnedOff() throws {
        let mem = try Support.memory()
        var options = FirmwareOptions()
        options.acpi = false
        options.mpTable = false
        let r = try BootLoader.load(image: KernelImage(bytes: SyntheticBzImage().bytes, path: "bz"),
                                    memory: mem, options: options)
        #expect(r.acpi == nil && r.mpFloatingPointer == nil)
        #expect(try mem.read(UInt64.self, at: BootLayout.zeroPage + 0x70) == 0)
        #expect(try mem.read(UInt32.self, at: 0xE_0000) == 0)
    }
}
