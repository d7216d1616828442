import Hypervisor

/// The legacy INTx pins of a PCI function: INTA# = 1 ... INTD# = 4, as in the interrupt-pin
/// config register (0 means the function uses no INTx pin).
public enum PCIInterruptPin: UInt8, Sendable, Codable, CaseIterable {
    case intA = 1, intB = 2, intC = 3, intD = 4
}

/// One row of the machine's PCI interrupt routing: device `slot` on bus 0, its `pin`
/// (1 = INTA# ... 4 = INTD#) is wired to global system interrupt `gsi`. The boot helper
/// writes these into the DSDT `_PRT` (address `slot << 16 | 0xFFFF`, pin index `pin - 1`,
/// source 0, source index `gsi`) and into the MP table (I/O interrupt entries, bus = PCI,
/// source IRQ `slot << 2 | (pin - 1)`, destination IOAPIC pin `gsi`). The lines are
/// level-triggered and, as QEMU does it, delivered active-high to the interrupt controller
/// (`setIRQ(gsi, level: true)` means asserted).
public struct PCIInterruptRoute: Sendable, Equatable, Codable {
    public var slot: Int
    public var pin: UInt8
    public var gsi: UInt32

    public init(slot: Int, pin: UInt8, gsi: UInt32) {
        self.slot = slot; self.pin = pin; self.gsi = gsi
    }
}

/// How bus-0 INTx pins reach GSIs: the classic swizzle onto four lines (PIRQA-D),
/// `line = (slot + pin - 1) % 4`, each line wired to one GSI.
///
/// The default wires PIRQA-D to IOAPIC inputs 16-19, which no ISA device uses (no sharing
/// with the edge-triggered ISA interrupts). `.isaCompatible` wires them to ISA IRQs
/// 10, 11, 10, 11 for guests that only use the 8259 PIC (QEMU's default link routing is
/// similar); the firmware tables must then declare those IRQs level-triggered.
public struct PCIInterruptRouting: Sendable, Equatable, Codable {
    /// GSI of PIRQA, PIRQB, PIRQC, PIRQD.
    public var lineGSIs: [UInt32]

    public init(lineGSIs: [UInt32]) {
        precondition(lineGSIs.count == 4, "PCIInterruptRouting needs exactly four GSIs (PIRQA-D)")
        self.lineGSIs = lineGSIs
    }

    public static let ioapic = PCIInterruptRouting(lineGSIs: [16, 17, 18, 19])
    public static let isaCompatible = PCIInterruptRouting(lineGSIs: [10, 11, 10, 11])

    /// The GSI a slot's pin (1-4) is wired to; nil for pin 0 or pins above 4.
    public func gsi(slot: Int, pin: UInt8) -> UInt32? {
        guard pin >= 1, pin <= 4, slot >= 0 else { return nil }
        return lineGSIs[(slot + Int(pin) - 1) & 3]
    }

    /// The full table for `slots` (all four pins of each): what a DSDT `_PRT` lists.
    public func routes(slots: Range<Int> = 0..<32) -> [PCIInterruptRoute] {
        var table: [PCIInterruptRoute] = []
        for slot in slots {
            for pin in UInt8(1)...4 {
                if let g = gsi(slot: slot, pin: pin) { table.append(PCIInterruptRoute(slot: slot, pin: pin, gsi: g)) }
            }
        }
        return table
    }
}

/// Level-triggered PCI interrupt lines are shared: a GSI is asserted while any device on
/// it asserts. `PCIInterruptSharing` keeps one proxy controller per device pin and
/// forwards the OR of their levels to the machine's controller (MSIs pass straight through).
///
/// Lock rule: the lines are raised and lowered from several threads at once (vCPU threads
/// under the device lock, the virtio event thread and the virtio-net thread under their own
/// device locks), so the asserted sets live behind one lock (a `HostLocked`: a pthread
/// mutex, which ThreadSanitizer sees, unlike `Synchronization.Mutex`). The level change is forwarded
/// while that mutex is held, so two racing transitions reach the controller in the order
/// they were decided and the controller's final level is always the OR of the sources.
/// Lock order: this mutex, then whatever the controller takes; the controller never calls
/// back into a line.
public final class PCIInterruptSharing: Sendable {
    private struct State {
        var asserted: [UInt32: Set<Int>] = [:]
        var nextSource = 0
    }
    private let controller: any InterruptController
    private let state = HostLocked(State())

    public init(controller: any InterruptController) {
        self.controller = controller
    }

    /// A line for one device pin wired to `gsi`.
    public func line(gsi: UInt32) -> IRQLine {
        let id = state.withLock { s -> Int in
            defer { s.nextSource += 1 }
            return s.nextSource
        }
        return IRQLine(controller: Source(sharing: self, id: id), gsi: gsi)
    }

    fileprivate func set(source: Int, gsi: UInt32, level: Bool) {
        state.withLock { s in
            var set = s.asserted[gsi] ?? []
            let before = !set.isEmpty
            if level { set.insert(source) } else { set.remove(source) }
            s.asserted[gsi] = set
            let after = !set.isEmpty
            if before != after { controller.setIRQ(gsi, level: after) }
        }
    }

    fileprivate func msi(address: UInt64, data: UInt32) {
        controller.signalMSI(address: address, data: data)
    }

    private final class Source: InterruptController, Sendable {
        let sharing: PCIInterruptSharing
        let id: Int
        init(sharing: PCIInterruptSharing, id: Int) { self.sharing = sharing; self.id = id }
        func setIRQ(_ gsi: UInt32, level: Bool) { sharing.set(source: id, gsi: gsi, level: level) }
        func signalMSI(address: UInt64, data: UInt32) { sharing.msi(address: address, data: data) }
    }
}
