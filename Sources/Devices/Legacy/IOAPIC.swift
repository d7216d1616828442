import GuestMemory

/// How an interrupt message is delivered to local APICs (the delivery-mode field of an
/// IOAPIC redirection entry, an MSI data word or an ICR).
public enum APICDeliveryMode: UInt8, Sendable, Codable {
    case fixed = 0, lowestPriority = 1, smi = 2, reserved3 = 3, nmi = 4, initialize = 5, startup = 6, extINT = 7
}

/// One interrupt message on the APIC bus: what an IOAPIC redirection entry or an MSI
/// produces, and what a local APIC accepts.
public struct APICMessage: Sendable, Equatable, Codable {
    public var vector: UInt8
    public var deliveryMode: APICDeliveryMode
    /// Logical (true) or physical (false) destination mode.
    public var logicalDestination: Bool
    /// APIC ID (physical) or logical destination bitmap (flat/cluster model).
    public var destination: UInt8
    /// Level-triggered: the target LAPIC sets the TMR bit and must send EOI back
    /// (`IOAPIC.endOfInterrupt(vector:)`).
    public var levelTriggered: Bool

    public init(vector: UInt8, deliveryMode: APICDeliveryMode = .fixed, logicalDestination: Bool = false,
                destination: UInt8, levelTriggered: Bool = false) {
        self.vector = vector; self.deliveryMode = deliveryMode; self.logicalDestination = logicalDestination
        self.destination = destination; self.levelTriggered = levelTriggered
    }

    /// Decodes a PCI MSI write (address 0xFEExxxxx: destination ID in bits 19:12,
    /// destination mode bit 2; data: vector 7:0, delivery mode 10:8, trigger mode bit 15).
    /// Nil when the address is not in the 0xFEE00000 window.
    public init?(msiAddress address: UInt64, data: UInt32) {
        guard address >> 20 == 0xFEE else { return nil }
        vector = UInt8(truncatingIfNeeded: data)
        deliveryMode = APICDeliveryMode(rawValue: UInt8((data >> 8) & 7)) ?? .fixed
        levelTriggered = data & 0x8000 != 0
        destination = UInt8(truncatingIfNeeded: address >> 12)
        logicalDestination = address & 0x4 != 0
    }
}

extension APICMessage {
    /// The message as an MSI write (the inverse of `init(msiAddress:data:)`): how a
    /// userspace IOAPIC hands interrupts to KVM's in-kernel LAPICs with a split irqchip
    /// (KVM_SIGNAL_MSI), as QEMU does.
    public var msi: (address: UInt64, data: UInt32) {
        let address = 0xFEE0_0000 | UInt64(destination) << 12 | (logicalDestination ? 0x4 : 0)
        let data = UInt32(vector) | UInt32(deliveryMode.rawValue) << 8 | (levelTriggered ? 0xC000 : 0)
        return (address, data)
    }
}

/// Where the IOAPIC (and the machine's MSI path) sends interrupt messages: the emulator's
/// local APICs. The emulator helper implements it. Inside a `UserspaceIRQChip`, `deliver`
/// runs with the chip's lock held (the innermost lock): it must not call back into the
/// chip (nor the IOAPIC) nor take the machine's device lock or a device's lock.
public protocol APICMessageSink: AnyObject {
    func deliver(_ message: APICMessage)
}

/// The I/O APIC (82093AA compatible, version 0x11, 24 pins) at 0xFEC00000:
/// IOREGSEL at +0x00, IOWIN at +0x10 (32-bit accesses), plus the EOI register at +0x40
/// of later versions (harmless here). Registers: 0x00 ID, 0x01 version (max entry 23),
/// 0x02 arbitration, 0x10 + 2n / 0x11 + 2n redirection entry n (low / high dword).
///
/// Pins: `setIRQ(_:level:)` with `level` meaning asserted (the polarity bit is stored but,
/// as in KVM, the input is taken as already active-high). Edge pins deliver on a rising
/// edge when unmasked (an edge arriving while masked is lost). Level pins deliver while
/// asserted and unmasked with remote IRR clear, set remote IRR, and deliver again after
/// the LAPIC's EOI (`endOfInterrupt(vector:)`) if still asserted; unmasking an asserted
/// level pin delivers too.
///
/// Not thread safe: in the machine it lives in a `UserspaceIRQChip`, which serialises every
/// call under its lock.
public final class IOAPIC: MMIODevice {
    public static let pinCount = 24
    public static let version: UInt32 = 0x11
    public static let mmioSize: UInt64 = 0x1000

    /// Redirection entry bits.
    public enum Entry {
        public static let deliveryStatus: UInt64 = 1 << 12
        public static let polarityLow: UInt64 = 1 << 13
        public static let remoteIRR: UInt64 = 1 << 14
        public static let levelTriggered: UInt64 = 1 << 15
        public static let masked: UInt64 = 1 << 16
    }

    public var sink: APICMessageSink?
    public private(set) var id: UInt8 = 0
    public private(set) var registerSelect: UInt8 = 0
    public private(set) var redirection = [UInt64](repeating: Entry.masked, count: IOAPIC.pinCount)
    /// Current input levels.
    public private(set) var irr: UInt32 = 0

    /// Messages sent (for metrics).
    public private(set) var deliveries: UInt64 = 0

    public init(sink: APICMessageSink? = nil, id: UInt8 = 0) {
        self.sink = sink
        self.id = id
    }

    /// Maps the register window at `PhysicalMap.ioapicBase`.
    public func map(on bus: IOBus) throws {
        try bus.mapMMIO(self, name: "ioapic", base: PhysicalMap.ioapicBase, length: IOAPIC.mmioSize)
    }

    // MARK: Pins

    public func setIRQ(_ pin: Int, level: Bool) {
        guard pin >= 0, pin < IOAPIC.pinCount else { return }
        let bit = UInt32(1) << UInt32(pin)
        guard level else {
            irr &= ~bit
            return
        }
        let wasAsserted = irr & bit != 0
        irr |= bit
        let e = redirection[pin]
        if e & Entry.levelTriggered != 0 {
            if e & Entry.remoteIRR == 0 { service(pin) }
        } else if !wasAsserted {
            service(pin)
        }
    }

    private func service(_ pin: Int) {
        var e = redirection[pin]
        guard e & Entry.masked == 0 else { return }
        let level = e & Entry.levelTriggered != 0
        if level { e |= Entry.remoteIRR; redirection[pin] = e }
        let message = APICMessage(vector: UInt8(truncatingIfNeeded: e),
                                  deliveryMode: APICDeliveryMode(rawValue: UInt8((e >> 8) & 7)) ?? .fixed,
                                  logicalDestination: e & (1 << 11) != 0,
                                  destination: UInt8(truncatingIfNeeded: e >> 56),
                                  levelTriggered: level)
        deliveries &+= 1
        sink?.deliver(message)
    }

    /// The LAPIC's EOI broadcast for a level-triggered `vector`: clears remote IRR of the
    /// pins using it and re-delivers those still asserted.
    public func endOfInterrupt(vector: UInt8) {
        for pin in 0..<IOAPIC.pinCount {
            let e = redirection[pin]
            guard UInt8(truncatingIfNeeded: e) == vector, e & Entry.remoteIRR != 0 else { continue }
            redirection[pin] = e & ~Entry.remoteIRR
            if e & Entry.levelTriggered != 0, irr & (UInt32(1) << UInt32(pin)) != 0 { service(pin) }
        }
    }

    // MARK: Registers

    public func readRegister(_ index: UInt8) -> UInt32 {
        switch index {
        case 0x00: return UInt32(id & 0x0F) << 24
        case 0x01: return UInt32(IOAPIC.pinCount - 1) << 16 | IOAPIC.version
        case 0x02: return UInt32(id & 0x0F) << 24
        case 0x10..<(0x10 + UInt8(2 * IOAPIC.pinCount)):
            let pin = Int(index - 0x10) / 2
            let e = redirection[pin]
            return index & 1 == 0 ? UInt32(truncatingIfNeeded: e) : UInt32(truncatingIfNeeded: e >> 32)
        default: return 0
        }
    }

    public func writeRegister(_ index: UInt8, _ value: UInt32) {
        switch index {
        case 0x00:
            id = UInt8((value >> 24) & 0x0F)
        case 0x10..<(0x10 + UInt8(2 * IOAPIC.pinCount)):
            let pin = Int(index - 0x10) / 2
            var e = redirection[pin]
            let readOnly = Entry.deliveryStatus | Entry.remoteIRR
            if index & 1 == 0 {
                e = (e & 0xFFFF_FFFF_0000_0000) | (e & readOnly) | (UInt64(value) & ~readOnly & 0xFFFF_FFFF)
            } else {
                e = (e & 0xFFFF_FFFF) | UInt64(value & 0xFF00_0000) << 32
            }
            // An edge-triggered pin has no remote IRR.
            if e & Entry.levelTriggered == 0 { e &= ~Entry.remoteIRR }
            redirection[pin] = e
            if e & Entry.levelTriggered != 0, e & (Entry.masked | Entry.remoteIRR) == 0,
               irr & (UInt32(1) << UInt32(pin)) != 0 {
                service(pin)
            }
        default:
            break
        }
    }

    public func mmioRead(offset: UInt64, size: Int) -> UInt64 {
        switch offset {
        case 0x00: return UInt64(registerSelect)
        case 0x10: return UInt64(readRegister(registerSelect))
        default: return 0
        }
    }

    public func mmioWrite(offset: UInt64, size: Int, value: UInt64) {
        switch offset {
        case 0x00: registerSelect = UInt8(truncatingIfNeeded: value)
        case 0x10: writeRegister(registerSelect, UInt32(truncatingIfNeeded: value))
        case 0x40: endOfInterrupt(vector: UInt8(truncatingIfNeeded: value))
        default: break
        }
    }
}

// MARK: Snapshot

extension IOAPIC {
    public struct Snapshot: Sendable, Equatable, Codable {
        public var id: UInt8
        public var registerSelect: UInt8
        public var redirection: [UInt64]
        public var irr: UInt32
    }

    public func snapshot() -> Snapshot {
        Snapshot(id: id, registerSelect: registerSelect, redirection: redirection, irr: irr)
    }

    /// Restores the registers; nothing is delivered (the LAPICs' IRR/ISR are restored too).
    public func restore(_ s: Snapshot) {
        guard s.redirection.count == IOAPIC.pinCount else { return }
        id = s.id & 0x0F
        registerSelect = s.registerSelect
        redirection = s.redirection
        irr = s.irr
    }
}
