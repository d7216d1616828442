import Hypervisor

/// The state of a PCI MSI-X capability (PCI 3.0 §6.8.2): the vector table and pending-bit
/// array a function exposes in a BAR, plus the enable and function-mask bits of the
/// capability's message control. Delivery goes to `InterruptController.signalMSI`.
public struct PCIMSIX: Sendable, Codable, Equatable {
    public struct Entry: Sendable, Codable, Equatable {
        public var address: UInt64 = 0
        public var data: UInt32 = 0
        /// Bit 0: the vector is masked (set after reset).
        public var control: UInt32 = 1
        public var isMasked: Bool { control & 1 != 0 }
    }

    public static let capabilityID: UInt8 = 0x11
    public static let entrySize = 16

    public private(set) var entries: [Entry]
    public private(set) var pending: [Bool]
    public var isEnabled = false
    public var isFunctionMasked = false

    public init(vectors: Int) {
        entries = Array(repeating: Entry(), count: vectors)
        pending = Array(repeating: false, count: vectors)
    }

    public var vectorCount: Int { entries.count }

    /// Message control as the capability shows it: table size - 1, function mask, enable.
    public var messageControl: UInt16 {
        UInt16(vectorCount - 1) | (isFunctionMasked ? 0x4000 : 0) | (isEnabled ? 0x8000 : 0)
    }

    /// Applies a write of the message control's writable bits; delivers pending vectors
    /// that became deliverable.
    public mutating func setMessageControl(_ value: UInt16, controller: any InterruptController) {
        isEnabled = value & 0x8000 != 0
        isFunctionMasked = value & 0x4000 != 0
        deliverPending(controller: controller)
    }

    public mutating func reset() {
        self = PCIMSIX(vectors: vectorCount)
    }

    /// Reads the vector table (offset relative to the table start).
    public func readTable(offset: UInt64, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<size {
            value |= UInt64(tableByte(offset &+ UInt64(i))) << (8 * UInt64(i))
        }
        return value
    }

    private func tableByte(_ offset: UInt64) -> UInt8 {
        let index = Int(offset / UInt64(Self.entrySize))
        guard index < entries.count else { return 0 }
        let e = entries[index]
        let field = Int(offset % UInt64(Self.entrySize))
        let word: UInt32
        switch field / 4 {
        case 0: word = UInt32(truncatingIfNeeded: e.address)
        case 1: word = UInt32(truncatingIfNeeded: e.address >> 32)
        case 2: word = e.data
        default: word = e.control
        }
        return UInt8(truncatingIfNeeded: word >> (8 * UInt32(field % 4)))
    }

    /// Writes the vector table; unmasking a vector with its pending bit set delivers it.
    public mutating func writeTable(offset: UInt64, size: Int, value: UInt64, controller: any InterruptController) {
        var touched = Set<Int>()
        for i in 0..<size {
            let o = offset &+ UInt64(i)
            let index = Int(o / UInt64(Self.entrySize))
            guard index < entries.count else { continue }
            let field = Int(o % UInt64(Self.entrySize))
            let shift = UInt32(8 * (field % 4))
            let byte = UInt32(UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))))
            func merge(_ w: UInt32) -> UInt32 { (w & ~(0xFF << shift)) | (byte << shift) }
            switch field / 4 {
            case 0:
                let lo = merge(UInt32(truncatingIfNeeded: entries[index].address))
                entries[index].address = (entries[index].address & 0xFFFF_FFFF_0000_0000) | UInt64(lo)
            case 1:
                let hi = merge(UInt32(truncatingIfNeeded: entries[index].address >> 32))
                entries[index].address = (entries[index].address & 0xFFFF_FFFF) | (UInt64(hi) << 32)
            case 2: entries[index].data = merge(entries[index].data)
            default: entries[index].control = merge(entries[index].control) & 1
            }
            touched.insert(index)
        }
        if !touched.isEmpty { deliverPending(controller: controller) }
    }

    /// Reads the pending-bit array.
    public func readPBA(offset: UInt64, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<size {
            let bit0 = Int(offset &+ UInt64(i)) * 8
            var byte: UInt64 = 0
            for b in 0..<8 where bit0 + b < pending.count && pending[bit0 + b] { byte |= 1 << UInt64(b) }
            value |= byte << (8 * UInt64(i))
        }
        return value
    }

    /// Raises `vector`: delivered now, or remembered in the PBA while masked.
    /// Returns whether a message was sent.
    @discardableResult
    public mutating func signal(_ vector: Int, controller: any InterruptController) -> Bool {
        guard vector >= 0, vector < entries.count else { return false }
        if isFunctionMasked || entries[vector].isMasked {
            pending[vector] = true
            return false
        }
        controller.signalMSI(address: entries[vector].address, data: entries[vector].data)
        return true
    }

    private mutating func deliverPending(controller: any InterruptController) {
        guard isEnabled, !isFunctionMasked else { return }
        for v in 0..<entries.count where pending[v] && !entries[v].isMasked {
            pending[v] = false
            controller.signalMSI(address: entries[v].address, data: entries[v].data)
        }
    }
}
