#if canImport(Glibc)
import Glibc
#endif
import Boot
import Devices
import GuestMemory
import Storage

/// A BIOS image (SeaBIOS's bios-256k.bin by default): read, checked, and placed the way
/// QEMU's i440FX machine places it: the whole image ends at 4 GiB, and its last 128 KiB
/// also sit below 1 MiB (0xE0000-0xFFFFF), where the reset vector's far jump lands.
///
/// Shadow RAM: the area below 1 MiB is ordinary guest RAM, filled with the image before
/// the first instruction. SeaBIOS reads PAM0 = 0 ("RAM not present"), runs its unlock code
/// from the high copy, sets the PAM registers, and copies itself from the high copy to
/// 0xE0000 — the same bytes. The PAM registers are stored and read back; a "read-only"
/// setting does not stop writes (the area stays RAM), which SeaBIOS never relies on.
struct FirmwareImage {
    static let defaultPath = "/usr/share/seabios/bios-256k.bin"
    /// The part of the image mirrored below 1 MiB.
    static let legacyWindow = 128 << 10
    static let minimumSize = 64 << 10
    static let maximumSize = 16 << 20

    let path: String
    let bytes: [UInt8]

    init(path: String) throws {
        let data: [UInt8]
        do { data = try readFile(path, limit: Self.maximumSize) } catch let BootError.unreadableFile(p, reason) {
            throw VMMError.firmwareUnreadable(path: p, reason: reason == "not a regular file" ? "it is not a regular file" : reason)
        }
        try self.init(path: path, bytes: data)
    }

    init(path: String, bytes data: [UInt8]) throws {
        guard data.count >= Self.minimumSize, data.count % (64 << 10) == 0 else {
            throw VMMError.notFirmware(path: path, reason: "its size (\(data.count) bytes) is not a multiple of 64 KiB between 64 KiB and 16 MiB")
        }
        // The reset vector (16 bytes below the top) must start with a jump.
        let reset = data[data.count - 16]
        guard reset == 0xEA || reset == 0xE9 || reset == 0xEB else {
            throw VMMError.notFirmware(path: path, reason: "it has no x86 reset vector (a jump 16 bytes below its end)")
        }
        self.path = path
        self.bytes = data
    }

    /// Guest-physical base of the image (it ends at 4 GiB).
    var base: UInt64 { (1 << 32) - UInt64(bytes.count) }

    /// Guest RAM plus the image's region at the top of 4 GiB.
    func memoryLayout(ramSize: UInt64) -> [(base: UInt64, size: Int)] {
        PhysicalMap.ramLayout(ramSize: ramSize) + [(base: base, size: bytes.count)]
    }

    /// Copies the image to the top of 4 GiB and its last 128 KiB below 1 MiB.
    func install(into memory: GuestMemory) throws {
        try memory.write(bytes: bytes, at: base)
        let n = min(Self.legacyWindow, bytes.count)
        try memory.write(bytes: Array(bytes[(bytes.count - n)...]), at: PhysicalMap.highMemoryStart - UInt64(n))
    }
}

extension Machine {
    /// The CD-ROM for `-r`: the ISO opened read-only after a look at its volume descriptor.
    /// `-B cdrom` without `-r` gets an empty drive (the firmware reports it cannot boot it).
    static func cdrom(config: MachineConfig) throws -> SCSICDROM? {
        guard let path = config.cdromPath else {
            return config.bootDevice == .cdrom ? SCSICDROM(medium: nil) : nil
        }
        let fd = config.passedFiles?.cdrom
        try checkISO(path: path, fd: fd)
        do {
            let medium = try fd.map { try RawImage(fileDescriptor: $0, path: path, readOnly: true) }
                ?? RawImage(path: path, readOnly: true)
            return SCSICDROM(medium: medium)
        } catch {
            throw VMMError.cdromUnreadable(path: path, reason: "\(error)")
        }
    }

    /// Throws one sentence unless `path` (or `fd`, the same file opened by vmd) is a
    /// readable ISO 9660 image.
    static func checkISO(path: String, fd: Int32? = nil) throws {
        let head = try fd.map { try readHead(fd: $0, path: path, count: 0x8006, unreadable: VMMError.cdromUnreadable) }
            ?? readHead(path: path, count: 0x8006, unreadable: VMMError.cdromUnreadable)
        guard SCSICDROM.looksLikeISO9660(head) else {
            throw VMMError.cdromUnreadable(path: path, reason: "it is not an ISO 9660 image (no CD001 volume descriptor at sector 16)")
        }
    }
}

/// What the firmware is told through fw_cfg (FirmwareConfig), QEMU's way, so SeaBIOS — and
/// later OVMF — configure the machine from it.
enum FirmwareSetup {
    /// SeaBIOS assigns 32-bit BARs from 2 GiB (RAM ≤ 2 GiB), 3 GiB (RAM ≤ 3 GiB) or 3.5 GiB
    /// up to the IOAPIC (its i440fx_mem_addr_setup); the DSDT declares that window.
    static func pciWindow(lowRAMEnd: UInt64) -> Range<UInt64> {
        let start: UInt64 = lowRAMEnd <= 0x8000_0000 ? 0x8000_0000 : lowRAMEnd <= 0xC000_0000 ? 0xC000_0000 : 0xE000_0000
        return start..<PhysicalMap.ioapicBase
    }

    /// The boot order as OpenFirmware device paths SeaBIOS matches (its
    /// `bootprio_find_pci_device` / `bootprio_find_scsi_device` / `bootprio_find_pci_rom`
    /// globs), then HALT so it tries nothing else (no floppy; an option ROM's network boot
    /// only as `netSlot`, the virtio-net device whose ROM boots with `-B net`).
    static func bootOrder(diskSlots: [Int], cdromSlot: Int?, first: BootDevice?, netSlot: Int? = nil) -> [String] {
        func hex(_ s: Int) -> String { String(s, radix: 16) }
        let disks = diskSlots.map { "/pci@i0cf8/scsi@\(hex($0))/disk@0,0" }
        let cdrom = cdromSlot.map { ["/pci@i0cf8/scsi@\(hex($0))/channel@0/disk@0,0"] } ?? []
        let net = first == .net ? netSlot.map { ["/pci@i0cf8/ethernet@\(hex($0))"] } ?? [] : []
        let order = first == .cdrom ? cdrom + disks : net + disks + cdrom
        return order + ["HALT"]
    }

    /// Debian's ipxe-qemu BIOS ROM for virtio-net (1af4:1041; pxe-virtio.rom, which
    /// virtio-net.rom links to).
    static let defaultNetBootROM = "/usr/lib/ipxe/qemu/pxe-virtio.rom"
    static let maximumROMSize = 1 << 20

    /// The fw_cfg file SeaBIOS deploys as the option ROM of PCI device vendor:device (its
    /// `lookup_hardcode`, tried before the device's ROM BAR): `pciVVVV,DDDD.rom`.
    static func romFileName(vendor: UInt16, device: UInt16) -> String {
        func h(_ v: UInt16) -> String { let s = String(v, radix: 16); return String(repeating: "0", count: 4 - s.count) + s }
        return "pci\(h(vendor)),\(h(device)).rom"
    }

    /// Reads and checks a PCI option ROM: 0x55AA, a size (byte 2, in 512-byte units) inside
    /// the file, a "PCIR" structure inside it, code type 0 (x86 BIOS). Returns its bytes.
    static func optionROM(path: String) throws -> [UInt8] {
        let data: [UInt8]
        do { data = try readFile(path, limit: maximumROMSize) } catch let BootError.unreadableFile(p, reason) {
            throw VMMError.firmwareUnreadable(path: p, reason: reason)
        }
        func bad(_ why: String) -> VMMError { .notFirmware(path: path, reason: "it is not a BIOS option ROM: \(why)") }
        guard data.count >= 0x1A, data[0] == 0x55, data[1] == 0xAA else { throw bad("no 55 AA signature") }
        let size = Int(data[2]) * 512
        guard size > 0, size <= data.count else { throw bad("its size byte says \(size) bytes, the file has \(data.count)") }
        let pcir = Int(data[0x18]) | Int(data[0x19]) << 8
        guard pcir + 0x18 <= size, data[pcir..<(pcir + 4)].elementsEqual("PCIR".utf8) else { throw bad("no PCIR structure") }
        guard data[pcir + 0x14] == 0 else { throw bad("code type \(data[pcir + 0x14]), not x86 BIOS") }
        return Array(data[0..<size])
    }

    /// The e820 RAM entries (SeaBIOS adds its own reservations), 20 bytes each:
    /// le64 address, le64 length, le32 type 1.
    static func e820(ramSize: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        for region in PhysicalMap.ramLayout(ramSize: ramSize) {
            out += le(region.base, 8) + le(UInt64(region.size), 8) + le(1, 4)
        }
        return out
    }

    /// Fills `fwcfg` for a machine of `ramSize` bytes and `vcpus` CPUs.
    static func populate(_ fwcfg: FirmwareConfig, ramSize: UInt64, vcpus: Int, pciRoutes: [PCIRoutingEntry],
                         bootOrder: [String]) throws {
        typealias K = FirmwareConfig.Key
        fwcfg.set(K.uuid, [UInt8](repeating: 0, count: 16))
        fwcfg.set(K.ramSize, integer: ramSize, size: 8)
        fwcfg.set(K.noGraphic, integer: 1, size: 2)
        fwcfg.set(K.cpuCount, integer: UInt64(vcpus), size: 2)
        fwcfg.set(K.maximumCPUs, integer: UInt64(vcpus), size: 2)
        fwcfg.set(K.bootMenu, integer: 0, size: 2)
        fwcfg.set(K.numa, integer: 0, size: 8)
        fwcfg.set(K.irq0Override, integer: 1, size: 4)
        fwcfg.set(K.acpiTables, integer: 0, size: 2)
        fwcfg.set(K.smbiosEntries, integer: 0, size: 2)
        fwcfg.set(K.e820Table, integer: 0, size: 4)
        try fwcfg.addFile("etc/e820", e820(ramSize: ramSize))
        // One path a line, the list ended by a NUL, as QEMU writes it.
        try fwcfg.addFile("bootorder", Array(bootOrder.joined(separator: "\n").utf8) + [0])
        try fwcfg.addFile("etc/sercon-port", le(UInt64(NS8250.com1.base), 2))
        // "No bootable device." then at once "Rebooting.": the reset stops the VM.
        try fwcfg.addFile("etc/boot-fail-wait", le(0, 4))
        var options = FirmwareOptions()
        let lowRAMEnd = PhysicalMap.ramLayout(ramSize: ramSize)[0].size
        options.pciWindow = pciWindow(lowRAMEnd: UInt64(lowRAMEnd))
        let acpi = ACPITables.firmwareBlobs(vcpus: vcpus, pciRoutes: pciRoutes, options: options)
        try fwcfg.addFile(ACPIFirmwareBlobs.tablesFile, acpi.tables)
        try fwcfg.addFile(ACPIFirmwareBlobs.rsdpFile, acpi.rsdp)
        try fwcfg.addFile(ACPIFirmwareBlobs.loaderFile, acpi.loader)
    }

    private static func le(_ v: UInt64, _ n: Int) -> [UInt8] {
        (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
    }
}

/// Port 0x402, QEMU's debug console (isa-debugcon): SeaBIOS probes it (a read returns
/// 0xE9) and then writes its debug log there, byte by byte. Mapped only when the VMM logs
/// at debug level; lines go to `emit`.
final class FirmwareDebugConsole: PortIODevice {
    static let port: UInt16 = 0x402
    private var line: [UInt8] = []
    private let emit: (String) -> Void
    init(emit: @escaping (String) -> Void) { self.emit = emit }
    func ioRead(offset: UInt16, size: Int) -> UInt32 { 0xE9 }
    func ioWrite(offset: UInt16, size: Int, value: UInt32) {
        let b = UInt8(truncatingIfNeeded: value)
        if b == 0x0A || line.count >= 512 {
            emit(String(decoding: line, as: UTF8.self))
            line.removeAll(keepingCapacity: true)
        } else if b != 0x0D {
            line.append(b)
        }
    }
}
