import GuestMemory
import Hypervisor

public enum PCIHostError: Error, Equatable, CustomStringConvertible {
    case slotInUse(slot: Int, function: Int, existing: String)
    case badAddress(slot: Int, function: Int)
    case windowFull(device: String, bar: Int, size: UInt64)

    public var description: String {
        switch self {
        case let .slotInUse(slot, function, existing):
            return "PCI slot \(slot) function \(function) is already used by \(existing); pick another slot"
        case let .badAddress(slot, function):
            return "PCI address \(slot).\(function) is invalid: slots are 0-31 and functions 0-7 (slot 0 is the host bridge)"
        case let .windowFull(device, bar, size):
            return "PCI device \(device): BAR \(bar) of 0x\(String(size, radix: 16)) bytes does not fit in the PCI window"
        }
    }
}

/// The PCI host bridge: configuration mechanism #1 at ports 0xCF8-0xCFF, bus 0 with up to
/// 32 slots x 8 functions, the bridge itself at 0:0.0 (an Intel 440FX, 8086:1237, class
/// 06/00 — what Linux's `pci_sanity_check` and SeaBIOS recognise), BAR assignment and
/// mapping of BARs onto the IOBus.
///
/// Ports: 0xCF8 (dword) is the address register (bit 31 enable, bus 23:16, device 15:11,
/// function 10:8, register 7:2); 0xCFC-0xCFF are the data window (byte/word/dword).
/// 0xCF9 (byte) is the PIIX reset control register: writing a value with bit 2 set calls
/// `onReset` (Linux's `reboot=pci`). Functions that do not exist, and every bus but 0,
/// read all ones.
///
/// BARs: `register` gives every BAR an address (memory BARs, 64-bit ones too, from
/// `mmioWindow`; I/O BARs from `ioWindow`) and enables decode, as firmware would. After any
/// config write touching the command register or a BAR, the host re-reads them and maps an
/// adaptor object per enabled, programmed BAR on `IOBus.mmio` / `IOBus.ports` (unmapping
/// the old place). A BAR the guest moves onto another device is left unmapped and counted
/// in `mappingConflicts`.
///
/// Map it with `bus.mapPorts(host, name: "pci", base: PCIHost.basePort, count: PCIHost.portCount)`.
public final class PCIHost: PortIODevice {
    public static let basePort: UInt16 = 0xCF8
    public static let portCount: UInt16 = 8
    /// The I/O port window I/O BARs are assigned from.
    public static let defaultIOWindow: Range<UInt32> = 0xC000..<0x1_0000

    /// Called when the guest resets the machine through port 0xCF9.
    public var onReset: (() -> Void)?

    public let routing: PCIInterruptRouting
    public private(set) var configAddress: UInt32 = 0
    public private(set) var resetControl: UInt8 = 0
    /// Guest BAR placements that collided with another mapping.
    public private(set) var mappingConflicts = 0

    private weak var bus: IOBus?
    private let sharing: PCIInterruptSharing
    /// Where memory BARs are assigned from (the DSDT _CRS must include it).
    public let mmioWindow: Range<UInt64>
    /// Where I/O BARs are assigned from (the DSDT _CRS must include it).
    public let ioWindow: Range<UInt32>
    private var nextMMIO: UInt64
    private var nextIO: UInt32

    private struct Mapping: Equatable {
        var isIO: Bool
        var base: UInt64
        var length: UInt64
    }

    private final class Function {
        let device: any PCIDevice
        var mappings: [Int: Mapping] = [:]
        init(device: any PCIDevice) { self.device = device }
    }

    /// Indexed by slot * 8 + function.
    private var functions: [Function?] = Array(repeating: nil, count: 256)

    /// The bridge's own function at 0:0.0.
    public let bridge: PCIHostBridgeFunction

    /// - Parameters:
    ///   - bus: where BARs are mapped (held weakly: the bus owns the host, not the reverse).
    ///   - interrupts: the machine's interrupt controller, for INTx lines.
    ///   - routing: how slot/pin pairs reach GSIs (default: PIRQA-D on GSIs 16-19).
    ///   - mmioWindow / ioWindow: where BARs are placed.
    public init(bus: IOBus, interrupts: any InterruptController,
                routing: PCIInterruptRouting = .ioapic,
                mmioWindow: Range<UInt64> = PhysicalMap.pciMMIOWindow,
                ioWindow: Range<UInt32> = PCIHost.defaultIOWindow) {
        self.bus = bus
        self.sharing = PCIInterruptSharing(controller: interrupts)
        self.routing = routing
        self.mmioWindow = mmioWindow
        self.ioWindow = ioWindow
        self.nextMMIO = mmioWindow.lowerBound
        self.nextIO = ioWindow.lowerBound
        self.bridge = PCIHostBridgeFunction()
        functions[0] = Function(device: bridge)
    }

    // MARK: Devices

    /// Adds a function at `slot`.`function` of bus 0, assigns its BARs, enables decode
    /// (I/O and memory as its BARs need; bus mastering for DMA) and writes the interrupt
    /// line register from the routing table.
    public func register(_ device: any PCIDevice, slot: Int, function: Int = 0) throws {
        guard slot >= 0, slot < 32, function >= 0, function < 8 else {
            throw PCIHostError.badAddress(slot: slot, function: function)
        }
        let index = slot * 8 + function
        if let existing = functions[index] {
            throw PCIHostError.slotInUse(slot: slot, function: function, existing: existing.device.pciName)
        }
        // Assign BARs, biggest first for tight packing.
        var command = UInt16(device.configRead(offset: PCIConfig.command, size: 2))
        var plan: [(PCIBar, UInt64)] = []
        var mmio = nextMMIO, io = nextIO
        for bar in device.bars.sorted(by: { $0.size > $1.size }) {
            let size = max(bar.size, bar.kind == .io ? 4 : 16)
            if bar.kind == .io {
                let base = (UInt64(io) + size - 1) & ~(size - 1)
                guard base + size <= UInt64(ioWindow.upperBound) else {
                    throw PCIHostError.windowFull(device: device.pciName, bar: bar.index, size: size)
                }
                plan.append((bar, base)); io = UInt32(base + size)
                command |= PCIConfig.commandIOSpace
            } else {
                let base = (mmio + size - 1) & ~(size - 1)
                guard base.addingReportingOverflow(size).overflow == false, base + size <= mmioWindow.upperBound else {
                    throw PCIHostError.windowFull(device: device.pciName, bar: bar.index, size: size)
                }
                plan.append((bar, base)); mmio = base + size
                command |= PCIConfig.commandMemorySpace
            }
        }
        nextMMIO = mmio; nextIO = io
        let fn = Function(device: device)
        functions[index] = fn
        for (bar, base) in plan {
            let off = PCIConfig.bar0 + 4 * bar.index
            let low = device.configRead(offset: off, size: 4)
            let kindBits = low & (bar.kind == .io ? 0x3 : 0xF)
            device.configWrite(offset: off, size: 4, value: UInt32(truncatingIfNeeded: base) | kindBits)
            if bar.kind == .memory64 {
                device.configWrite(offset: off + 4, size: 4, value: UInt32(truncatingIfNeeded: base >> 32))
            }
        }
        let pin = UInt8(truncatingIfNeeded: device.configRead(offset: PCIConfig.interruptPin, size: 1))
        if let gsi = routing.gsi(slot: slot, pin: pin) {
            device.configWrite(offset: PCIConfig.interruptLine, size: 1, value: gsi & 0xFF)
        }
        command |= PCIConfig.commandBusMaster
        device.configWrite(offset: PCIConfig.command, size: 2, value: UInt32(command))
        updateMappings(fn)
    }

    /// The device at `slot`.`function`, if any.
    public func device(slot: Int, function: Int = 0) -> (any PCIDevice)? {
        guard slot >= 0, slot < 32, function >= 0, function < 8 else { return nil }
        return functions[slot * 8 + function]?.device
    }

    /// The INTx line for a device at `slot` using `pin` (1 = INTA#). Level-triggered and
    /// shared: the GSI is asserted while any device on it asserts. Nil for pin 0.
    public func interruptLine(slot: Int, pin: UInt8) -> IRQLine? {
        guard let gsi = routing.gsi(slot: slot, pin: pin) else { return nil }
        return sharing.line(gsi: gsi)
    }

    /// The routes of the functions registered now (each function's own pin).
    public var interruptRoutes: [PCIInterruptRoute] {
        var table: [PCIInterruptRoute] = []
        for (i, f) in functions.enumerated() {
            guard let f else { continue }
            let pin = UInt8(truncatingIfNeeded: f.device.configRead(offset: PCIConfig.interruptPin, size: 1))
            if let gsi = routing.gsi(slot: i / 8, pin: pin) {
                let r = PCIInterruptRoute(slot: i / 8, pin: pin, gsi: gsi)
                if !table.contains(r) { table.append(r) }
            }
        }
        return table
    }

    /// Where BAR `index` of the function at `slot`.`function` is mapped now (nil when not).
    public func mappedBar(slot: Int, function: Int = 0, index: Int) -> (base: UInt64, isIO: Bool)? {
        guard slot >= 0, slot < 32, function >= 0, function < 8,
              let m = functions[slot * 8 + function]?.mappings[index] else { return nil }
        return (m.base, m.isIO)
    }

    // MARK: Port I/O

    public func ioRead(offset: UInt16, size: Int) -> UInt32 {
        switch offset {
        case 0 where size == 4:
            return configAddress
        case 1 where size == 1:
            return UInt32(resetControl)
        case 4...7:
            return configData(read: true, portOffset: Int(offset) - 4, size: size, value: 0)
        default:
            return size >= 4 ? 0xFFFF_FFFF : (UInt32(1) << (size * 8)) &- 1
        }
    }

    public func ioWrite(offset: UInt16, size: Int, value: UInt32) {
        switch offset {
        case 0 where size == 4:
            configAddress = value & 0x80FF_FFFC
        case 1 where size == 1:
            resetControl = UInt8(truncatingIfNeeded: value) & 0x0E
            if value & 0x04 != 0 { onReset?() }
        case 4...7:
            _ = configData(read: false, portOffset: Int(offset) - 4, size: size, value: value)
        default:
            break
        }
    }

    private func configData(read: Bool, portOffset: Int, size: Int, value: UInt32) -> UInt32 {
        let allOnes: UInt32 = size >= 4 ? 0xFFFF_FFFF : (UInt32(1) << (size * 8)) &- 1
        guard size == 1 || size == 2 || size == 4, portOffset + size <= 4,
              configAddress & 0x8000_0000 != 0 else { return allOnes }
        let busNumber = (configAddress >> 16) & 0xFF
        let devfn = Int((configAddress >> 8) & 0xFF)
        let register = Int(configAddress & 0xFC) + portOffset
        guard busNumber == 0, let fn = functions[devfn] else { return allOnes }
        if read {
            return fn.device.configRead(offset: register, size: size) & allOnes
        }
        fn.device.configWrite(offset: register, size: size, value: value & allOnes)
        if register < 0x28 && register + size > PCIConfig.command {
            updateMappings(fn)
        }
        return 0
    }

    // MARK: BAR mapping

    private func updateMappings(_ fn: Function) {
        let device = fn.device
        let command = UInt16(truncatingIfNeeded: device.configRead(offset: PCIConfig.command, size: 2))
        for bar in device.bars {
            let off = PCIConfig.bar0 + 4 * bar.index
            let low = device.configRead(offset: off, size: 4)
            let high = bar.kind == .memory64 ? device.configRead(offset: off + 4, size: 4) : 0
            let base = PCIConfigHeader.decodeBar(bar, low: low, high: high)
            var wanted: Mapping?
            switch bar.kind {
            case .io:
                if command & PCIConfig.commandIOSpace != 0, base != 0, base + bar.size <= 0x1_0000 {
                    wanted = Mapping(isIO: true, base: base, length: bar.size)
                }
            case .memory32, .memory64:
                if command & PCIConfig.commandMemorySpace != 0, base != 0,
                   !base.addingReportingOverflow(bar.size).overflow {
                    wanted = Mapping(isIO: false, base: base, length: bar.size)
                }
            }
            let current = fn.mappings[bar.index]
            if current == wanted { continue }
            if let current { unmap(current) }
            fn.mappings[bar.index] = nil
            if let wanted, map(wanted, device: device, index: bar.index) {
                fn.mappings[bar.index] = wanted
            }
        }
    }

    private func unmap(_ m: Mapping) {
        guard let bus else { return }
        if m.isIO { bus.ports.remove(base: m.base) } else { bus.mmio.remove(base: m.base) }
    }

    private func map(_ m: Mapping, device: any PCIDevice, index: Int) -> Bool {
        guard let bus else { return false }
        let name = "\(device.pciName) BAR\(index)"
        do {
            if m.isIO {
                try bus.ports.insert(PCIBarPortAdaptor(device: device, index: index), name: name, base: m.base, length: m.length)
            } else {
                try bus.mmio.insert(PCIBarMMIOAdaptor(device: device, index: index), name: name, base: m.base, length: m.length)
            }
            return true
        } catch {
            mappingConflicts += 1
            return false
        }
    }
}

/// Puts one memory BAR of a PCI function on the MMIO bus.
final class PCIBarMMIOAdaptor: MMIODevice {
    let device: any PCIDevice
    let index: Int
    init(device: any PCIDevice, index: Int) { self.device = device; self.index = index }
    func mmioRead(offset: UInt64, size: Int) -> UInt64 { device.barRead(index: index, offset: offset, size: size) }
    func mmioWrite(offset: UInt64, size: Int, value: UInt64) { device.barWrite(index: index, offset: offset, size: size, value: value) }
}

/// Puts one I/O BAR of a PCI function on the port bus.
final class PCIBarPortAdaptor: PortIODevice {
    let device: any PCIDevice
    let index: Int
    init(device: any PCIDevice, index: Int) { self.device = device; self.index = index }
    func ioRead(offset: UInt16, size: Int) -> UInt32 {
        UInt32(truncatingIfNeeded: device.barRead(index: index, offset: UInt64(offset), size: size))
    }
    func ioWrite(offset: UInt16, size: Int, value: UInt32) {
        device.barWrite(index: index, offset: UInt64(offset), size: size, value: UInt64(value))
    }
}

/// The host bridge's own function at 0:0.0: an Intel 82441FX (i440FX) PMC, 8086:1237
/// revision 2, class 06/00 (host bridge), subsystem 1AF4:1100 (what SeaBIOS's `qemu_detect`
/// requires before it uses fw_cfg). No BARs, no interrupt. The PAM registers (0x59-0x5F)
/// and SMRAM control (0x72) read back what firmware writes (SeaBIOS programs them to shadow
/// itself); they change nothing: 0xC0000-0xFFFFF is plain RAM here, which the VMM fills
/// with the firmware's last 128 KiB before the first instruction (docs/firmware.md).
public final class PCIHostBridgeFunction: PCIDevice {
    public private(set) var header: PCIConfigHeader
    public init() {
        header = PCIConfigHeader(vendorID: 0x8086, deviceID: 0x1237, classCode: 0x06, subclass: 0x00, revision: 0x02,
                                 subsystemVendorID: 0x1AF4, subsystemID: 0x1100)
        header.setMask(0x58, size: 4, mask: 0xFFFF_FF00) // PAM0-PAM2 (0x59-0x5B)
        header.setMask(0x5C, size: 4, mask: 0xFFFF_FFFF) // PAM3-PAM6
        header.setMask(0x72, size: 1, mask: 0x78)        // SMRAM: D_OPEN, D_CLS, D_LCK, G_SMRAME
        header.setRaw(0x72, size: 1, value: 0x02)        // C_BASE_SEG = 010 (A0000)
    }
    public var pciName: String { "i440fx-host-bridge" }
    public var bars: [PCIBar] { [] }
    public func configRead(offset: Int, size: Int) -> UInt32 { header.read(offset: offset, size: size) }
    public func configWrite(offset: Int, size: Int, value: UInt32) { header.write(offset: offset, size: size, value: value) }
    public func barRead(index: Int, offset: UInt64, size: Int) -> UInt64 { 0 }
    public func barWrite(index: Int, offset: UInt64, size: Int, value: UInt64) {}
    func restoreHeader(_ h: PCIConfigHeader) {
        if h.bytes.count == PCIConfig.size && h.writeMask.count == PCIConfig.size { header = h }
    }
}

// MARK: Snapshot

extension PCIHost {
    /// The host bridge's own registers. The functions' config spaces belong to their
    /// devices' snapshots; after restoring those, call `restore` to remap every BAR.
    public struct Snapshot: Sendable, Equatable, Codable {
        public var configAddress: UInt32
        public var resetControl: UInt8
        public var bridgeHeader: PCIConfigHeader
    }

    public func snapshot() -> Snapshot {
        Snapshot(configAddress: configAddress, resetControl: resetControl, bridgeHeader: bridge.header)
    }

    public func restore(_ s: Snapshot) {
        configAddress = s.configAddress & 0x80FF_FFFC
        resetControl = s.resetControl & 0x0E
        bridge.restoreHeader(s.bridgeHeader)
        for case let fn? in functions { updateMappings(fn) }
    }
}
