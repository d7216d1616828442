/// The kind of a base address register.
public enum PCIBarKind: Sendable, Equatable, Codable {
    case memory32
    case memory64
    case io
}

/// A BAR a device decodes: its index (0-5; a 64-bit BAR also uses index+1), kind and size
/// (a power of two).
public struct PCIBar: Sendable, Equatable, Codable {
    public var index: Int
    public var kind: PCIBarKind
    public var size: UInt64
    public var prefetchable: Bool

    public init(index: Int, kind: PCIBarKind, size: UInt64, prefetchable: Bool = false) {
        self.index = index; self.kind = kind; self.size = size; self.prefetchable = prefetchable
    }
}

/// A PCI function on the host bridge's bus 0.
///
/// The host bridge (Legacy/PCIHost.swift) routes configuration cycles (mechanism #1,
/// 0xCF8/0xCFC) to `configRead/configWrite`, and accesses inside a programmed, enabled BAR
/// to `barRead/barWrite` with the offset inside that BAR. Config space is 256 bytes.
///
/// After every config write that touches the command register or a BAR (offsets 0x04-0x27)
/// the host re-reads the command register and the BARs through `configRead` and remaps the
/// function's BARs on the IOBus. A device that embeds a `PCIConfigHeader` and forwards
/// header accesses to it gets sizing and remapping for free.
public protocol PCIDevice: AnyObject {
    /// A short name for logs ("virtio-blk").
    var pciName: String { get }
    /// The BARs this function decodes.
    var bars: [PCIBar] { get }
    func configRead(offset: Int, size: Int) -> UInt32
    func configWrite(offset: Int, size: Int, value: UInt32)
    func barRead(index: Int, offset: UInt64, size: Int) -> UInt64
    func barWrite(index: Int, offset: UInt64, size: Int, value: UInt64)
}

/// Offsets and bits of the type-0 configuration header (PCI Local Bus spec 3.0, 6.1).
public enum PCIConfig {
    public static let vendorID = 0x00
    public static let deviceID = 0x02
    public static let command = 0x04
    public static let status = 0x06
    public static let revisionID = 0x08
    public static let progIF = 0x09
    public static let subclass = 0x0A
    public static let classCode = 0x0B
    public static let cacheLineSize = 0x0C
    public static let latencyTimer = 0x0D
    public static let headerType = 0x0E
    public static let bar0 = 0x10
    public static let subsystemVendorID = 0x2C
    public static let subsystemID = 0x2E
    public static let expansionROM = 0x30
    public static let capabilitiesPointer = 0x34
    public static let interruptLine = 0x3C
    public static let interruptPin = 0x3D
    /// First byte after the standard header: capabilities are placed from here.
    public static let firstCapability = 0x40
    public static let size = 256

    /// Command register bits.
    public static let commandIOSpace: UInt16 = 1 << 0
    public static let commandMemorySpace: UInt16 = 1 << 1
    public static let commandBusMaster: UInt16 = 1 << 2
    public static let commandInterruptDisable: UInt16 = 1 << 10
    /// Status register bits.
    public static let statusInterrupt: UInt16 = 1 << 3
    public static let statusCapabilitiesList: UInt16 = 1 << 4

    /// Well-known capability IDs.
    public static let capabilityMSI: UInt8 = 0x05
    public static let capabilityVendorSpecific: UInt8 = 0x09
    public static let capabilityMSIX: UInt8 = 0x11
}

/// A type-0 PCI configuration header as a value: the 256 bytes of config space plus which
/// bits the guest may write. Device models embed one and forward config cycles to
/// `read`/`write`; the header implements the BAR sizing protocol (a BAR reads back its
/// size mask after all ones are written), the read-only identification fields, the
/// command/status registers (status bits are write-one-to-clear), the interrupt line and a
/// capability list.
///
///     var header = PCIConfigHeader(vendorID: 0x1AF4, deviceID: 0x1042,
///                                  classCode: 0x01, subclass: 0x00, interruptPin: 1)
///     header.addBar(PCIBar(index: 4, kind: .memory64, size: 0x4000, prefetchable: true))
///     let cap = header.addCapability(id: PCIConfig.capabilityVendorSpecific, body: [...])
///
/// Everything is bounds-checked: accesses outside 0..<256 read all ones and are ignored on
/// write, so hostile offsets never trap.
public struct PCIConfigHeader: Sendable, Equatable, Codable {
    /// The current contents of config space.
    public private(set) var bytes: [UInt8]
    /// Bits the guest may set or clear by writing.
    public private(set) var writeMask: [UInt8]
    /// Bits the guest clears by writing one (status register error bits).
    public private(set) var writeOneToClearMask: [UInt8]
    /// The BARs, at most one per index (a 64-bit BAR occupies index and index+1).
    public private(set) var bars: [PCIBar] = []
    /// Offset of the last capability added, 0 when there is none.
    public private(set) var lastCapability: Int = 0
    /// First free byte for the next capability.
    public private(set) var nextCapabilityOffset: Int = PCIConfig.firstCapability

    public init(vendorID: UInt16, deviceID: UInt16,
                classCode: UInt8, subclass: UInt8, progIF: UInt8 = 0, revision: UInt8 = 0,
                subsystemVendorID: UInt16 = 0, subsystemID: UInt16 = 0,
                headerType: UInt8 = 0, interruptPin: UInt8 = 0) {
        bytes = [UInt8](repeating: 0, count: PCIConfig.size)
        writeMask = [UInt8](repeating: 0, count: PCIConfig.size)
        writeOneToClearMask = [UInt8](repeating: 0, count: PCIConfig.size)
        setRaw(PCIConfig.vendorID, size: 2, value: UInt32(vendorID))
        setRaw(PCIConfig.deviceID, size: 2, value: UInt32(deviceID))
        bytes[PCIConfig.revisionID] = revision
        bytes[PCIConfig.progIF] = progIF
        bytes[PCIConfig.subclass] = subclass
        bytes[PCIConfig.classCode] = classCode
        bytes[PCIConfig.headerType] = headerType
        setRaw(PCIConfig.subsystemVendorID, size: 2, value: UInt32(subsystemVendorID))
        setRaw(PCIConfig.subsystemID, size: 2, value: UInt32(subsystemID))
        bytes[PCIConfig.interruptPin] = interruptPin
        // Command: I/O, memory, bus master, interrupt disable are writable.
        let cmdMask = PCIConfig.commandIOSpace | PCIConfig.commandMemorySpace
            | PCIConfig.commandBusMaster | PCIConfig.commandInterruptDisable
        setMask(PCIConfig.command, size: 2, mask: UInt32(cmdMask))
        // Status: the error bits 15..11 and 8 are write-one-to-clear.
        writeOneToClearMask[PCIConfig.status] = 0x00
        writeOneToClearMask[PCIConfig.status + 1] = 0xF9
        writeMask[PCIConfig.cacheLineSize] = 0xFF
        writeMask[PCIConfig.latencyTimer] = 0xFF
        writeMask[PCIConfig.interruptLine] = 0xFF
    }

    private enum CodingKeys: String, CodingKey {
        case bytes, writeMask, writeOneToClearMask, bars, lastCapability, nextCapabilityOffset
    }

    /// Decodes a saved header, rejecting one whose arrays are not 256 bytes long.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        bytes = try c.decode([UInt8].self, forKey: .bytes)
        writeMask = try c.decode([UInt8].self, forKey: .writeMask)
        writeOneToClearMask = try c.decode([UInt8].self, forKey: .writeOneToClearMask)
        bars = try c.decode([PCIBar].self, forKey: .bars)
        lastCapability = try c.decode(Int.self, forKey: .lastCapability)
        nextCapabilityOffset = try c.decode(Int.self, forKey: .nextCapabilityOffset)
        guard bytes.count == PCIConfig.size, writeMask.count == PCIConfig.size,
              writeOneToClearMask.count == PCIConfig.size,
              (0..<PCIConfig.size).contains(lastCapability),
              (PCIConfig.firstCapability...PCIConfig.size + 3).contains(nextCapabilityOffset),
              bars.allSatisfy({ (0..<6).contains($0.index) && $0.size > 0 && $0.size & ($0.size - 1) == 0 }) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                    debugDescription: "PCI config header snapshot is malformed"))
        }
    }

    // MARK: Guest accesses

    /// A config read of 1, 2 or 4 bytes (little endian). Out-of-range reads return all ones.
    public func read(offset: Int, size: Int) -> UInt32 {
        guard size >= 1, size <= 4, offset >= 0, offset + size <= PCIConfig.size else {
            return size >= 4 ? 0xFFFF_FFFF : (UInt32(1) << (max(size, 1) * 8)) &- 1
        }
        return raw(offset, size: size)
    }

    /// A config write of 1, 2 or 4 bytes: only writable bits change, write-one-to-clear bits
    /// clear. Out-of-range writes are ignored.
    public mutating func write(offset: Int, size: Int, value: UInt32) {
        guard size >= 1, size <= 4, offset >= 0, offset + size <= PCIConfig.size else { return }
        for i in 0..<size {
            let o = offset + i
            let v = UInt8(truncatingIfNeeded: value >> (8 * i))
            let m = writeMask[o]
            var b = (bytes[o] & ~m) | (v & m)
            b &= ~(v & writeOneToClearMask[o])
            bytes[o] = b
        }
    }

    // MARK: Device-side setup

    /// Declares a BAR. Its size is rounded up to a power of two (at least 16 bytes for
    /// memory, 4 for I/O). The BAR's low bits encode its kind; the writable bits are the
    /// address bits above the size, so writing all ones reads back the size mask.
    public mutating func addBar(_ bar: PCIBar) {
        guard bar.index >= 0, bar.index < 6, !(bar.kind == .memory64 && bar.index == 5) else { return }
        var b = bar
        let minimum: UInt64 = bar.kind == .io ? 4 : 16
        var size = max(bar.size, minimum)
        if size & (size - 1) != 0 {
            size = UInt64(1) << (64 - (size - 1).leadingZeroBitCount)
        }
        b.size = size
        bars.removeAll { $0.index == b.index || ($0.kind == .memory64 && $0.index + 1 == b.index)
            || (b.kind == .memory64 && $0.index == b.index + 1) }
        bars.append(b)
        bars.sort { $0.index < $1.index }
        let off = PCIConfig.bar0 + 4 * b.index
        let sizeMask = ~(size - 1)
        switch b.kind {
        case .io:
            setRaw(off, size: 4, value: 0x1)
            setMask(off, size: 4, mask: UInt32(truncatingIfNeeded: sizeMask) & 0xFFFF_FFFC)
        case .memory32:
            setRaw(off, size: 4, value: b.prefetchable ? 0x8 : 0)
            setMask(off, size: 4, mask: UInt32(truncatingIfNeeded: sizeMask) & 0xFFFF_FFF0)
        case .memory64:
            setRaw(off, size: 4, value: 0x4 | (b.prefetchable ? 0x8 : 0))
            setMask(off, size: 4, mask: UInt32(truncatingIfNeeded: sizeMask) & 0xFFFF_FFF0)
            setRaw(off + 4, size: 4, value: 0)
            setMask(off + 4, size: 4, mask: UInt32(truncatingIfNeeded: sizeMask >> 32))
        }
    }

    /// Appends a capability: `id`, the next pointer (filled in), then `body` (the bytes after
    /// the two-byte header). `writableMask`, if given, is per byte of `body`. Returns the
    /// capability's offset in config space, or nil when config space is full.
    @discardableResult
    public mutating func addCapability(id: UInt8, body: [UInt8], writableMask: [UInt8]? = nil) -> Int? {
        let offset = nextCapabilityOffset
        let length = 2 + body.count
        guard offset + length <= PCIConfig.size else { return nil }
        bytes[offset] = id
        bytes[offset + 1] = 0
        for (i, b) in body.enumerated() {
            bytes[offset + 2 + i] = b
            if let m = writableMask, i < m.count { writeMask[offset + 2 + i] = m[i] }
        }
        if lastCapability == 0 {
            bytes[PCIConfig.capabilitiesPointer] = UInt8(offset)
            setRaw(PCIConfig.status, size: 2, value: UInt32(status | PCIConfig.statusCapabilitiesList))
        } else {
            bytes[lastCapability + 1] = UInt8(offset)
        }
        lastCapability = offset
        nextCapabilityOffset = (offset + length + 3) & ~3
        return offset
    }

    /// Sets bytes directly, ignoring write masks (for the device's own registers).
    public mutating func setRaw(_ offset: Int, size: Int, value: UInt32) {
        guard size >= 1, size <= 4, offset >= 0, offset + size <= PCIConfig.size else { return }
        for i in 0..<size { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }

    /// Reads bytes directly (little endian).
    public func raw(_ offset: Int, size: Int) -> UInt32 {
        guard size >= 1, size <= 4, offset >= 0, offset + size <= PCIConfig.size else { return 0 }
        var v: UInt32 = 0
        for i in 0..<size { v |= UInt32(bytes[offset + i]) << (8 * i) }
        return v
    }

    /// Sets which bits of a range the guest may write.
    public mutating func setMask(_ offset: Int, size: Int, mask: UInt32) {
        guard size >= 1, size <= 4, offset >= 0, offset + size <= PCIConfig.size else { return }
        for i in 0..<size { writeMask[offset + i] = UInt8(truncatingIfNeeded: mask >> (8 * i)) }
    }

    // MARK: Decoded fields

    public var vendorID: UInt16 { UInt16(raw(PCIConfig.vendorID, size: 2)) }
    public var deviceID: UInt16 { UInt16(raw(PCIConfig.deviceID, size: 2)) }
    public var command: UInt16 { UInt16(raw(PCIConfig.command, size: 2)) }
    public var status: UInt16 { UInt16(raw(PCIConfig.status, size: 2)) }
    public var ioDecodeEnabled: Bool { command & PCIConfig.commandIOSpace != 0 }
    public var memoryDecodeEnabled: Bool { command & PCIConfig.commandMemorySpace != 0 }
    public var busMasterEnabled: Bool { command & PCIConfig.commandBusMaster != 0 }
    /// INTx is masked by the command register's interrupt-disable bit.
    public var interruptDisabled: Bool { command & PCIConfig.commandInterruptDisable != 0 }
    public var interruptLine: UInt8 { bytes[PCIConfig.interruptLine] }
    public var interruptPin: UInt8 { bytes[PCIConfig.interruptPin] }

    /// Sets the status register's interrupt-status bit (devices mirror their INTx level).
    public mutating func setInterruptStatus(_ on: Bool) {
        var s = status
        if on { s |= PCIConfig.statusInterrupt } else { s &= ~PCIConfig.statusInterrupt }
        setRaw(PCIConfig.status, size: 2, value: UInt32(s))
    }

    /// The address BAR `index` is programmed to (without the kind bits), or nil when the
    /// index holds no BAR.
    public func barAddress(_ index: Int) -> UInt64? {
        guard let bar = bars.first(where: { $0.index == index }) else { return nil }
        return PCIConfigHeader.decodeBar(bar, low: raw(PCIConfig.bar0 + 4 * index, size: 4),
                                         high: bar.kind == .memory64 ? raw(PCIConfig.bar0 + 4 * index + 4, size: 4) : 0)
    }

    /// Decodes a BAR's address from its register value(s).
    public static func decodeBar(_ bar: PCIBar, low: UInt32, high: UInt32) -> UInt64 {
        switch bar.kind {
        case .io: return UInt64(low & 0xFFFF_FFFC)
        case .memory32: return UInt64(low & 0xFFFF_FFF0)
        case .memory64: return (UInt64(high) << 32) | UInt64(low & 0xFFFF_FFF0)
        }
    }

    /// Programs a BAR's address (what firmware does), ignoring the guest write masks
    /// except that the address is aligned down to the BAR's size.
    public mutating func setBarAddress(_ index: Int, _ address: UInt64) {
        guard let bar = bars.first(where: { $0.index == index }) else { return }
        let off = PCIConfig.bar0 + 4 * index
        let aligned = address & ~(bar.size - 1)
        let kindBits = raw(off, size: 4) & (bar.kind == .io ? 0x3 : 0xF)
        setRaw(off, size: 4, value: UInt32(truncatingIfNeeded: aligned) | kindBits)
        if bar.kind == .memory64 { setRaw(off + 4, size: 4, value: UInt32(truncatingIfNeeded: aligned >> 32)) }
    }

    /// Sets the command register directly (firmware enabling decode).
    public mutating func setCommand(_ value: UInt16) {
        setRaw(PCIConfig.command, size: 2, value: UInt32(value))
    }
}
