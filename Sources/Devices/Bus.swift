import Hypervisor

/// A device on the port-I/O bus. `offset` is relative to the base the device was mapped
/// at; `size` is 1, 2 or 4. Reads of unimplemented registers return all ones, as on a PC.
public protocol PortIODevice: AnyObject {
    func ioRead(offset: UInt16, size: Int) -> UInt32
    func ioWrite(offset: UInt16, size: Int, value: UInt32)
}

/// A device on the MMIO bus. `offset` is relative to the mapping's base; `size` is 1-8.
public protocol MMIODevice: AnyObject {
    func mmioRead(offset: UInt64, size: Int) -> UInt64
    func mmioWrite(offset: UInt64, size: Int, value: UInt64)
}

public enum BusError: Error, Equatable, CustomStringConvertible {
    case overlap(name: String, base: UInt64, length: UInt64, existing: String)
    case empty(name: String)

    public var description: String {
        switch self {
        case let .overlap(name, base, length, existing):
            return "device \(name) at 0x\(String(base, radix: 16)) (+0x\(String(length, radix: 16))) overlaps \(existing)"
        case let .empty(name):
            return "device \(name) was mapped with length 0"
        }
    }
}

/// An address-range map from addresses to devices: sorted, non-overlapping, looked up by
/// binary search. Used for both the port-I/O space and the MMIO space.
public struct AddressMap<Device>: ~Copyable {
    public struct Entry {
        public let base: UInt64
        public let length: UInt64
        public let name: String
        public let device: Device
        public var end: UInt64 { base + length }
    }

    public private(set) var entries: [Entry] = []

    public init() {}

    public mutating func insert(_ device: Device, name: String, base: UInt64, length: UInt64) throws {
        guard length > 0 else { throw BusError.empty(name: name) }
        let index = entries.firstIndex { $0.base >= base } ?? entries.count
        if index > 0, entries[index - 1].end > base {
            throw BusError.overlap(name: name, base: base, length: length, existing: entries[index - 1].name)
        }
        if index < entries.count, base + length > entries[index].base {
            throw BusError.overlap(name: name, base: base, length: length, existing: entries[index].name)
        }
        entries.insert(Entry(base: base, length: length, name: name, device: device), at: index)
    }

    /// Removes the mapping that starts at `base`; returns whether one was removed.
    @discardableResult
    public mutating func remove(base: UInt64) -> Bool {
        guard let index = entries.firstIndex(where: { $0.base == base }) else { return false }
        entries.remove(at: index)
        return true
    }

    /// The entry containing `address`, if any.
    @inline(__always)
    public func lookup(_ address: UInt64) -> Entry? {
        var lo = 0, hi = entries.count
        while lo < hi {
            let mid = (lo + hi) / 2
            let e = entries[mid]
            if address < e.base { hi = mid } else if address >= e.end { lo = mid + 1 } else { return e }
        }
        return nil
    }
}

/// The machine's two buses. Not thread safe by itself: the VMM serialises device access
/// (one device lock per machine, like QEMU's BQL), so device models stay plain state machines.
public final class IOBus: @unchecked Sendable {
    public var ports = AddressMap<any PortIODevice>()
    public var mmio = AddressMap<any MMIODevice>()

    /// Counts accesses that hit no device (for logs and metrics).
    public private(set) var unhandledPortAccesses: UInt64 = 0
    public private(set) var unhandledMMIOAccesses: UInt64 = 0

    public init() {}

    public func mapPorts(_ device: any PortIODevice, name: String, base: UInt16, count: UInt16) throws {
        try ports.insert(device, name: name, base: UInt64(base), length: UInt64(count))
    }

    public func mapMMIO(_ device: any MMIODevice, name: String, base: UInt64, length: UInt64) throws {
        try mmio.insert(device, name: name, base: base, length: length)
    }

    public func portRead(_ port: UInt16, size: Int) -> UInt32 {
        guard let e = ports.lookup(UInt64(port)) else {
            unhandledPortAccesses &+= 1
            return size >= 4 ? 0xFFFF_FFFF : (UInt32(1) << (size * 8)) - 1
        }
        return e.device.ioRead(offset: UInt16(UInt64(port) - e.base), size: size)
    }

    public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        guard let e = ports.lookup(UInt64(port)) else { unhandledPortAccesses &+= 1; return }
        e.device.ioWrite(offset: UInt16(UInt64(port) - e.base), size: size, value: value)
    }

    public func mmioRead(_ address: UInt64, size: Int) -> UInt64 {
        guard let e = mmio.lookup(address) else {
            unhandledMMIOAccesses &+= 1
            return size >= 8 ? UInt64.max : (UInt64(1) << (size * 8)) - 1
        }
        return e.device.mmioRead(offset: address - e.base, size: size)
    }

    public func mmioWrite(_ address: UInt64, size: Int, value: UInt64) {
        guard let e = mmio.lookup(address) else { unhandledMMIOAccesses &+= 1; return }
        e.device.mmioWrite(offset: address - e.base, size: size, value: value)
    }
}

/// One interrupt line of a device: a GSI on the machine's interrupt controller.
public struct IRQLine: Sendable {
    public let controller: any InterruptController
    public let gsi: UInt32

    public init(controller: any InterruptController, gsi: UInt32) {
        self.controller = controller
        self.gsi = gsi
    }

    public func set(_ level: Bool) { controller.setIRQ(gsi, level: level) }
    public func raise() { set(true) }
    public func lower() { set(false) }
    /// An edge: raise then lower (ISA devices on the PIC/IOAPIC edge-triggered pins).
    public func pulse() { set(true); set(false) }
}

/// An interrupt controller that only records what it was told: for device unit tests.
public final class RecordingInterruptController: InterruptController, @unchecked Sendable {
    public enum Event: Equatable, Sendable {
        case irq(UInt32, Bool)
        case msi(address: UInt64, data: UInt32)
    }
    public private(set) var events: [Event] = []
    public private(set) var levels: [UInt32: Bool] = [:]

    public init() {}

    public func setIRQ(_ gsi: UInt32, level: Bool) {
        events.append(.irq(gsi, level))
        levels[gsi] = level
    }

    public func signalMSI(address: UInt64, data: UInt32) {
        events.append(.msi(address: address, data: data))
    }

    public func level(_ gsi: UInt32) -> Bool { levels[gsi] ?? false }
    public func clear() { events.removeAll() }
}
