#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import VMM
@testable import VMMTool
import Devices
import GuestMemory

/// The firmware boot's settings, image checks and fw_cfg contents (no guest runs here).
@Suite struct FirmwareBootConfigTests {
    @Test func parsesTheFirmwareFlags() throws {
        let c = try VMMCommand.parse(["-r", "cd.iso", "-B", "cdrom", "--firmware", "/fw.bin", "-d", "a.img"]).machineConfig()
        #expect(c.bootsFirmware && c.cdromPath == "cd.iso" && c.bootDevice == .cdrom && c.firmwarePath == "/fw.bin")
        let l = try VMMCommand.parse(["--cdrom", "x.iso", "--boot-device", "disk"]).machineConfig()
        #expect(l.cdromPath == "x.iso" && l.bootDevice == .disk && l.firmwarePath == nil)
        #expect(try VMMCommand.parse([]).machineConfig().bootsFirmware)
    }

    @Test func rejectsCombinationsThatCannotWork() {
        #expect(throws: (any Error).self) { try VMMCommand.parse(["-B", "net"]).machineConfig() }
        #expect(throws: (any Error).self) { try VMMCommand.parse(["-k", "k", "-B", "disk"]).machineConfig() }
        #expect(throws: (any Error).self) { try VMMCommand.parse(["-k", "k", "--firmware", "f"]).machineConfig() }
        #expect(throws: (any Error).self) { try VMMCommand.parse(["-i", "initrd"]).machineConfig() }
    }

    func build(_ config: MachineConfig) throws -> Machine {
        try Machine(config: config, host: HostCapabilities(kvmProblem: nil, isPVM: false, emulatorAvailable: false),
                    backendFactory: { memory, _, _ in
                        FakeBackend(memory: memory) { i in FakeVCPU(index: i) { _ in .exit(.systemShutdown) } }
                    })
    }

    func firmwareConfig(_ extra: (inout MachineConfig) -> Void = { _ in }) -> MachineConfig {
        var c = MachineConfig(kernelPath: "", memorySize: 64 << 20, vcpus: 2, console: .none)
        extra(&c)
        return c
    }

    @Test func badFirmwareFilesAreNamed() throws {
        #expect(throws: VMMError.firmwareUnreadable(path: "/no/bios.bin", reason: "No such file or directory")) {
            _ = try build(firmwareConfig { $0.firmwarePath = "/no/bios.bin" })
        }
        let junk = temporaryFile([UInt8](repeating: 0x41, count: 1000))
        defer { unlink(junk) }
        #expect(throws: VMMError.notFirmware(path: junk, reason: "its size (1000 bytes) is not a multiple of 64 KiB between 64 KiB and 16 MiB")) {
            _ = try build(firmwareConfig { $0.firmwarePath = junk })
        }
        let noVector = temporaryFile([UInt8](repeating: 0, count: 64 << 10))
        defer { unlink(noVector) }
        #expect(throws: VMMError.notFirmware(path: noVector, reason: "it has no x86 reset vector (a jump 16 bytes below its end)")) {
            _ = try build(firmwareConfig { $0.firmwarePath = noVector })
        }
        #expect(throws: VMMError.cdromUnreadable(path: "/no/cd.iso", reason: "No such file or directory")) {
            _ = try build(firmwareConfig { $0.cdromPath = "/no/cd.iso"; $0.firmwarePath = Self.fakeBIOS })
        }
    }

    /// A 64 KiB "BIOS": a far jump at the reset vector, a marker at its start.
    static let fakeBIOS: String = {
        var b = [UInt8](repeating: 0xF4, count: 64 << 10)
        b.replaceSubrange(0..<4, with: Array("BIOS".utf8))
        b.replaceSubrange((b.count - 16)..<(b.count - 11), with: [0xEA, 0x5B, 0xE0, 0x00, 0xF0])
        return temporaryFile(b, name: "fakebios")
    }()

    @Test func imageIsAtTheTopOf4GiBAndBelow1MiBWithFwCfgFilled() throws {
        let disk = temporaryFile([UInt8](repeating: 0, count: 1 << 20), name: "fwdisk")
        defer { unlink(disk) }
        let m = try build(firmwareConfig { $0.firmwarePath = Self.fakeBIOS; $0.diskPaths = [disk] })
        #expect(m.kernelKind == .firmware && m.bootResult == nil)
        #expect(try m.memory.readBytes(at: 0xFFFF_0000, count: 4) == Array("BIOS".utf8))
        #expect(try m.memory.readBytes(at: 0xF0000, count: 4) == Array("BIOS".utf8))
        #expect(try m.memory.read(UInt8.self, at: 0xFFFF0) == 0xEA && m.memory.read(UInt8.self, at: 0xFFFF_FFF0) == 0xEA)
        let fw = try #require(m.devices.firmwareConfig)
        typealias K = FirmwareConfig.Key
        #expect(fw.item(K.ramSize) == [0, 0, 0, 4, 0, 0, 0, 0])        // 64 MiB
        #expect(fw.item(K.cpuCount) == [2, 0] && fw.item(K.maximumCPUs) == [2, 0])
        let order = String(decoding: try #require(fw.fileKey("bootorder").flatMap(fw.item)), as: UTF8.self)
        #expect(order == "/pci@i0cf8/scsi@3/disk@0,0\nHALT\0")
        #expect(fw.fileKey("etc/sercon-port").flatMap(fw.item) == [0xF8, 0x03])
        let e820 = try #require(fw.fileKey("etc/e820").flatMap(fw.item))
        #expect(e820.count == 20 && e820[8..<16] == [0, 0, 0, 4, 0, 0, 0, 0] && e820[16] == 1)
        for f in ["etc/acpi/tables", "etc/acpi/rsdp", "etc/table-loader", "etc/boot-fail-wait"] {
            #expect(fw.fileKey(f) != nil, "\(f)")
        }
        // The PIIX3 ISA bridge at 0:1.0.
        #expect(m.devices.pciHost.device(slot: 1)?.configRead(offset: 0, size: 4) == 0x7000_8086)
    }

    @Test func bootOrderFollowsTheBootDevice() {
        #expect(FirmwareSetup.bootOrder(diskSlots: [3, 4], cdromSlot: 12, first: nil)
                == ["/pci@i0cf8/scsi@3/disk@0,0", "/pci@i0cf8/scsi@4/disk@0,0", "/pci@i0cf8/scsi@c/channel@0/disk@0,0", "HALT"])
        #expect(FirmwareSetup.bootOrder(diskSlots: [3], cdromSlot: 12, first: .cdrom)
                == ["/pci@i0cf8/scsi@c/channel@0/disk@0,0", "/pci@i0cf8/scsi@3/disk@0,0", "HALT"])
        #expect(FirmwareSetup.pciWindow(lowRAMEnd: 512 << 20) == 0x8000_0000..<0xFEC0_0000)
        #expect(FirmwareSetup.pciWindow(lowRAMEnd: 3 << 30) == 0xC000_0000..<0xFEC0_0000)
    }
}
