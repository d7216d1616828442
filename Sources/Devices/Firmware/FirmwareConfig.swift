import GuestMemory

/// QEMU's firmware configuration device (fw_cfg), x86 I/O-port flavour, as QEMU's
/// docs/specs/fw_cfg.rst defines it: what SeaBIOS (and, on the same interface, OVMF) reads
/// to learn the machine: RAM, CPUs, the e820 map, the boot order, the ACPI tables, a kernel
/// to boot.
///
/// Ports (map with `map(on:)`):
///
///     0x510  selector, 16-bit write: picks an item and rewinds its offset to 0
///     0x511  data, 8-bit read: the next byte of the selected item (0 past its end)
///     0x514  DMA address, 64-bit big-endian, written as two 32-bit halves (0x514 high,
///            0x518 low); the write of the low half starts the transfer. Reading 0x514-0x51B
///            gives the DMA signature "QEMU CFG".
///
/// DMA: the guest points the address register at a `FWCfgDmaAccess` in guest memory
/// (big-endian `control`, `length`, `address`). Control bits: 0x01 error, 0x02 read,
/// 0x04 skip, 0x08 select (the selector in bits 31:16), 0x10 write. When done, the device
/// writes control back as 0, or with only the error bit set. Every guest address is
/// checked: a descriptor or buffer outside guest RAM, a length that wraps, a write to an
/// item that is not writable: the error bit, never a trap. A transfer is bounded by the
/// item's size (a read past the end fills zeros, as QEMU does, but at most
/// `maximumTransfer` bytes are touched per request).
///
/// Items are registered before the guest runs: the fixed keys (`Key`) and named files
/// (`addFile`), which get keys from 0x20 upwards and appear in the file directory (key
/// 0x19: big-endian count, then 64-byte entries {be32 size, be16 select, be16 reserved,
/// name[56]}) sorted by name, like QEMU's.
public final class FirmwareConfig: PortIODevice {
    public static let selectorPort: UInt16 = 0x510
    public static let dataPort: UInt16 = 0x511
    public static let dmaPort: UInt16 = 0x514
    /// "QEMU CFG", what a read of the DMA address register returns (big-endian).
    public static let dmaSignature: UInt64 = 0x5145_4D55_2043_4647
    /// Longest file name, NUL included.
    public static let maximumNameLength = 56
    /// A single DMA request never touches more than this many guest bytes.
    public static let maximumTransfer = 1 << 30

    /// The fixed keys (QEMU's FW_CFG_*). Arch-local x86 keys have bit 15 set.
    public enum Key {
        public static let signature: UInt16 = 0x00
        public static let id: UInt16 = 0x01
        public static let uuid: UInt16 = 0x02
        public static let ramSize: UInt16 = 0x03
        public static let noGraphic: UInt16 = 0x04
        public static let cpuCount: UInt16 = 0x05
        public static let machineID: UInt16 = 0x06
        public static let kernelAddress: UInt16 = 0x07
        public static let kernelSize: UInt16 = 0x08
        public static let kernelCmdline: UInt16 = 0x09
        public static let initrdAddress: UInt16 = 0x0A
        public static let initrdSize: UInt16 = 0x0B
        public static let bootDevice: UInt16 = 0x0C
        public static let numa: UInt16 = 0x0D
        public static let bootMenu: UInt16 = 0x0E
        public static let maximumCPUs: UInt16 = 0x0F
        public static let kernelEntry: UInt16 = 0x10
        public static let kernelData: UInt16 = 0x11
        public static let initrdData: UInt16 = 0x12
        public static let cmdlineAddress: UInt16 = 0x13
        public static let cmdlineSize: UInt16 = 0x14
        public static let cmdlineData: UInt16 = 0x15
        public static let setupAddress: UInt16 = 0x16
        public static let setupSize: UInt16 = 0x17
        public static let setupData: UInt16 = 0x18
        public static let fileDirectory: UInt16 = 0x19
        public static let firstFile: UInt16 = 0x20
        public static let acpiTables: UInt16 = 0x8000
        public static let smbiosEntries: UInt16 = 0x8001
        public static let irq0Override: UInt16 = 0x8002
        public static let e820Table: UInt16 = 0x8003
    }

    /// DMA control bits.
    public enum DMAControl {
        public static let error: UInt32 = 0x01
        public static let read: UInt32 = 0x02
        public static let skip: UInt32 = 0x04
        public static let select: UInt32 = 0x08
        public static let write: UInt32 = 0x10
    }

    /// FW_CFG_ID bits: the traditional interface and the DMA interface.
    public static let featureTraditional: UInt32 = 0x01
    public static let featureDMA: UInt32 = 0x02

    private struct Item {
        var data: [UInt8]
        var writable: Bool
    }

    private var items: [UInt16: Item] = [:]
    private var files: [(name: String, key: UInt16)] = []
    private var nextFileKey = Key.firstFile
    private let memory: GuestMemory

    public private(set) var selector: UInt16 = 0
    private var offset = 0
    private var dmaAddressHigh: UInt32 = 0
    /// Completed and failed DMA requests (tests, logs).
    public private(set) var dmaRequests = 0
    public private(set) var dmaErrors = 0
    /// Called after a guest DMA write changed a writable item (key, new contents).
    public var onWrite: ((UInt16, [UInt8]) -> Void)?

    public enum ConfigError: Error, Equatable, CustomStringConvertible {
        case badName(String)
        case duplicate(String)
        case full
        public var description: String {
            switch self {
            case let .badName(n): return "fw_cfg file name '\(n)' is empty or longer than 55 bytes"
            case let .duplicate(n): return "fw_cfg file '\(n)' is added twice"
            case .full: return "fw_cfg has no free file keys"
            }
        }
    }

    /// A device with the signature and the ID (traditional + DMA) items.
    public init(memory: GuestMemory) {
        self.memory = memory
        items[Key.signature] = Item(data: Array("QEMU".utf8), writable: false)
        items[Key.id] = Item(data: le(Self.featureTraditional | Self.featureDMA, 4), writable: false)
        rebuildDirectory()
    }

    // MARK: Items

    /// Sets a fixed-key item.
    public func set(_ key: UInt16, _ data: [UInt8]) {
        items[key] = Item(data: data, writable: false)
    }

    /// Sets a fixed-key item to a little-endian integer of `size` bytes.
    public func set(_ key: UInt16, integer: UInt64, size: Int) {
        set(key, le(integer, size))
    }

    /// Adds a named file; returns its key. Names are unique, 1-55 bytes.
    @discardableResult
    public func addFile(_ name: String, _ data: [UInt8], writable: Bool = false) throws -> UInt16 {
        let n = Array(name.utf8)
        guard !n.isEmpty, n.count < Self.maximumNameLength, !n.contains(0) else { throw ConfigError.badName(name) }
        guard !files.contains(where: { $0.name == name }) else { throw ConfigError.duplicate(name) }
        guard nextFileKey < 0x4000 else { throw ConfigError.full }
        let key = nextFileKey
        nextFileKey += 1
        items[key] = Item(data: data, writable: writable)
        files.append((name, key))
        rebuildDirectory()
        return key
    }

    /// The contents of an item (nil when absent).
    public func item(_ key: UInt16) -> [UInt8]? { items[key]?.data }

    /// The key of a named file.
    public func fileKey(_ name: String) -> UInt16? { files.first { $0.name == name }?.key }

    /// The names in the directory, in directory order.
    public var fileNames: [String] { files.map(\.name).sorted(by: Self.nameOrder) }

    private static func nameOrder(_ a: String, _ b: String) -> Bool {
        Array(a.utf8).lexicographicallyPrecedes(Array(b.utf8))
    }

    private func rebuildDirectory() {
        let sorted = files.sorted { Self.nameOrder($0.name, $1.name) }
        var d = be(UInt64(sorted.count), 4)
        for f in sorted {
            d += be(UInt64(items[f.key]?.data.count ?? 0), 4)
            d += be(UInt64(f.key), 2)
            d += [0, 0]
            var name = Array(f.name.utf8)
            name += [UInt8](repeating: 0, count: Self.maximumNameLength - name.count)
            d += name
        }
        items[Key.fileDirectory] = Item(data: d, writable: false)
    }

    // MARK: Ports

    /// Maps the selector/data pair at 0x510 and the DMA register at 0x514.
    public func map(on bus: IOBus) throws {
        try bus.mapPorts(self, name: "fw_cfg", base: Self.selectorPort, count: 2)
        try bus.mapPorts(DMAPorts(owner: self), name: "fw_cfg dma", base: Self.dmaPort, count: 8)
    }

    /// Offsets relative to 0x510: 0 selector (16-bit), 1 data (8-bit).
    public func ioRead(offset port: UInt16, size: Int) -> UInt32 {
        switch port {
        case 1:
            // Wider reads of the data port return consecutive bytes (QEMU's x86 port is
            // byte-wide; the extra bytes come from the same stream, low byte first).
            var v: UInt32 = 0
            for i in 0..<min(size, 4) { v |= UInt32(nextByte()) << (8 * i) }
            return v
        default:
            return size >= 4 ? 0xFFFF_FFFF : (UInt32(1) << (size * 8)) &- 1
        }
    }

    public func ioWrite(offset port: UInt16, size: Int, value: UInt32) {
        switch port {
        case 0 where size >= 2:
            select(UInt16(truncatingIfNeeded: value))
        default:
            break   // writes through the data port are not supported (as in QEMU ≥ 2.4)
        }
    }

    /// Selects `key` and rewinds its offset.
    public func select(_ key: UInt16) {
        selector = key
        offset = 0
    }

    private func nextByte() -> UInt8 {
        guard let item = items[selector & ~0x4000], offset < item.data.count else { return 0 }
        defer { offset += 1 }
        return item.data[offset]
    }

    // MARK: DMA

    final class DMAPorts: PortIODevice {
        unowned let owner: FirmwareConfig
        init(owner: FirmwareConfig) { self.owner = owner }
        func ioRead(offset: UInt16, size: Int) -> UInt32 {
            // The signature, big-endian, one byte per port.
            var v: UInt32 = 0
            for i in 0..<min(size, 4) where Int(offset) + i < 8 {
                let byte = UInt8(truncatingIfNeeded: FirmwareConfig.dmaSignature >> (8 * (7 - (Int(offset) + i))))
                v |= UInt32(byte) << (8 * i)
            }
            return v
        }
        func ioWrite(offset: UInt16, size: Int, value: UInt32) {
            guard size == 4 else { return }
            // The guest writes big-endian halves: the value as the port sees it is byte-swapped.
            let v = value.byteSwapped
            switch offset {
            case 0: owner.dmaAddressHigh = v
            case 4:
                let address = UInt64(owner.dmaAddressHigh) << 32 | UInt64(v)
                owner.dmaAddressHigh = 0
                owner.runDMA(descriptor: address)
            default: break
            }
        }
    }

    /// Performs one DMA request described at guest-physical `descriptor`.
    public func runDMA(descriptor: UInt64) {
        dmaRequests += 1
        guard descriptor.addingReportingOverflow(16).overflow == false,
              let head = try? memory.readBytes(at: descriptor, count: 16) else {
            dmaErrors += 1
            return   // nowhere to report: the descriptor itself is outside RAM
        }
        let control = UInt32(beBytes: head[0..<4])
        let length = Int(UInt32(beBytes: head[4..<8]))
        let address = UInt64(beBytes: head[8..<16])
        let ok = transfer(control: control, length: length, address: address)
        if !ok { dmaErrors += 1 }
        // SAFETY of the write-back: the descriptor's first word was readable above.
        try? memory.write(ok ? UInt32(0) : DMAControl.error.bigEndian, at: descriptor)
    }

    private func transfer(control: UInt32, length: Int, address: UInt64) -> Bool {
        if control & DMAControl.select != 0 { select(UInt16(truncatingIfNeeded: control >> 16)) }
        let op = control & (DMAControl.read | DMAControl.skip | DMAControl.write)
        if op == 0 { return true }   // a bare select
        guard length <= Self.maximumTransfer else { return false }
        let key = selector & ~0x4000
        let data = items[key]?.data ?? []
        let available = max(0, data.count - offset)
        if op & DMAControl.read != 0 {
            guard address.addingReportingOverflow(UInt64(length)).overflow == false,
                  memory.isRAM(address, length: length) else { return false }
            let n = min(length, available)
            do {
                if n > 0 { try memory.write(bytes: Array(data[offset..<(offset + n)]), at: address) }
                if length > n { try memory.fill(0, at: address + UInt64(n), length: length - n) }
            } catch { return false }
            offset += n
            return true
        }
        if op & DMAControl.write != 0 {
            guard var item = items[key], item.writable, length <= available,
                  address.addingReportingOverflow(UInt64(length)).overflow == false,
                  let bytes = try? memory.readBytes(at: address, count: length) else { return false }
            item.data.replaceSubrange(offset..<(offset + length), with: bytes)
            items[key] = item
            offset += length
            onWrite?(key, item.data)
            return true
        }
        // skip
        offset += min(length, available)
        return true
    }
}

private func le(_ v: UInt64, _ size: Int) -> [UInt8] {
    (0..<size).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
}

private func le(_ v: UInt32, _ size: Int) -> [UInt8] { le(UInt64(v), size) }

private func be(_ v: UInt64, _ size: Int) -> [UInt8] {
    (0..<size).reversed().map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
}

extension FixedWidthInteger {
    init(beBytes bytes: ArraySlice<UInt8>) {
        var v: Self = 0
        for b in bytes { v = v << 8 | Self(b) }
        self = v
    }
}
