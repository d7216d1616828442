/// The PC's cascaded pair of 8259A programmable interrupt controllers: master at
/// 0x20/0x21 (IRQ 0-7), slave at 0xA0/0xA1 (IRQ 8-15) cascaded on master IRQ 2, and the
/// edge/level control registers (ELCR) at 0x4D0/0x4D1. For the software-CPU backend and
/// the userspace-irqchip mode (with KVM the kernel has its own).
///
/// Supported: ICW1-ICW4 (single/cascade, ICW4 or not, vector base, auto-EOI, special fully
/// nested mode), OCW1 (mask), OCW2 (non-specific/specific EOI, rotation, set priority),
/// OCW3 (read IRR/ISR, poll, special mask mode), edge or level inputs per ELCR (master
/// IRQ 0-2 and slave IRQ 8/13 are always edge), spurious IRQ 7/15 when the request
/// vanished before the INTA cycle.
///
/// The CPU side: `pendingInterrupt()` is the INTR pin; `acknowledge()` performs the INTA
/// cycle and returns the vector. `onOutputChange` is called when INTR changes (to wake a
/// halted vCPU). Inputs arrive through `setIRQ(_:level:)` (IRQ 0-15).
///
/// Map with `map(on:)` or the three facets `masterPorts` (0x20, 2), `slavePorts`
/// (0xA0, 2) and `elcrPorts` (0x4D0, 2). Not thread safe: in the machine it lives in a
/// `UserspaceIRQChip`, which serialises every call (and maps locking proxies of the ports)
/// under its lock; `onOutputChange` then runs with that lock held.
public final class I8259 {
    /// One 8259A.
    public struct Chip: Sendable, Equatable, Codable {
        public var irr: UInt8 = 0
        public var isr: UInt8 = 0
        public var imr: UInt8 = 0
        /// Current input levels (edge detection).
        public var lines: UInt8 = 0
        /// Level-triggered inputs (ELCR).
        public var elcr: UInt8 = 0
        public var elcrMask: UInt8
        public var vectorBase: UInt8 = 0
        /// Lowest-priority rotation: priority 0 belongs to IR `priorityAdd`.
        public var priorityAdd: UInt8 = 0
        public var readISR = false
        public var poll = false
        public var specialMask = false
        public var autoEOI = false
        public var rotateOnAutoEOI = false
        public var specialFullyNested = false
        public var initState = 0
        public var needICW4 = false
        public var single = false
        public let isMaster: Bool

        init(isMaster: Bool) {
            self.isMaster = isMaster
            elcrMask = isMaster ? 0xF8 : 0xDE
        }

        mutating func reset() {
            lines = 0; irr &= elcr; imr = 0; isr = 0; priorityAdd = 0; vectorBase = 0
            readISR = false; poll = false; specialMask = false; autoEOI = false
            rotateOnAutoEOI = false; specialFullyNested = false; initState = 0
            needICW4 = false; single = false
        }

        mutating func setInput(_ irq: Int, level: Bool) {
            let bit = UInt8(1) << UInt8(irq & 7)
            if elcr & bit != 0 {
                if level { irr |= bit; lines |= bit } else { irr &= ~bit; lines &= ~bit }
            } else {
                if level {
                    if lines & bit == 0 { irr |= bit }
                    lines |= bit
                } else {
                    lines &= ~bit
                }
            }
        }

        /// 0 (highest) ... 7 (lowest) for the highest-priority bit in `mask`, 8 if none.
        func priority(of mask: UInt8) -> Int {
            guard mask != 0 else { return 8 }
            var p = 0
            while mask & (UInt8(1) << UInt8((p + Int(priorityAdd)) & 7)) == 0 { p += 1 }
            return p
        }

        /// The IR line this chip would interrupt with now, or nil.
        func highestPending() -> Int? {
            let p = priority(of: irr & ~imr)
            guard p < 8 else { return nil }
            var inService = isr
            if specialMask { inService &= ~imr }
            if specialFullyNested && isMaster { inService &= ~0x04 }
            guard p < priority(of: inService) else { return nil }
            return (p + Int(priorityAdd)) & 7
        }

        mutating func acknowledge(_ irq: Int) {
            let bit = UInt8(1) << UInt8(irq)
            if autoEOI {
                if rotateOnAutoEOI { priorityAdd = UInt8((irq + 1) & 7) }
            } else {
                isr |= bit
            }
            if elcr & bit == 0 { irr &= ~bit }
        }

        mutating func writeCommand(_ v: UInt8) {
            if v & 0x10 != 0 {
                // ICW1
                reset()
                initState = 1
                needICW4 = v & 0x01 != 0
                single = v & 0x02 != 0
            } else if v & 0x08 != 0 {
                // OCW3
                if v & 0x04 != 0 { poll = true }
                if v & 0x02 != 0 { readISR = v & 0x01 != 0 }
                if v & 0x40 != 0 { specialMask = v & 0x20 != 0 }
            } else {
                // OCW2
                let cmd = v >> 5
                switch cmd {
                case 0, 4:
                    rotateOnAutoEOI = cmd == 4
                case 1, 5:
                    let p = priority(of: isr)
                    if p < 8 {
                        let irq = (p + Int(priorityAdd)) & 7
                        isr &= ~(UInt8(1) << UInt8(irq))
                        if cmd == 5 { priorityAdd = UInt8((irq + 1) & 7) }
                    }
                case 3:
                    isr &= ~(UInt8(1) << (v & 7))
                case 6:
                    priorityAdd = (v &+ 1) & 7
                case 7:
                    isr &= ~(UInt8(1) << (v & 7))
                    priorityAdd = ((v & 7) + 1) & 7
                default:
                    break
                }
            }
        }

        mutating func writeData(_ v: UInt8) {
            switch initState {
            case 1:
                vectorBase = v & 0xF8
                initState = single ? (needICW4 ? 3 : 0) : 2
            case 2:
                initState = needICW4 ? 3 : 0
            case 3:
                specialFullyNested = v & 0x10 != 0
                autoEOI = v & 0x02 != 0
                initState = 0
            default:
                imr = v
            }
        }
    }

    public private(set) var master = Chip(isMaster: true)
    public private(set) var slave = Chip(isMaster: false)
    /// Called when the INTR output changes.
    public var onOutputChange: ((Bool) -> Void)?
    private var output = false
    /// INTA cycles that found no request (spurious IRQ 7/15).
    public private(set) var spuriousCount = 0

    public private(set) lazy var masterPorts = Port(pic: self, kind: .master)
    public private(set) lazy var slavePorts = Port(pic: self, kind: .slave)
    public private(set) lazy var elcrPorts = Port(pic: self, kind: .elcr)

    public init() {}

    /// Maps 0x20-0x21, 0xA0-0xA1 and 0x4D0-0x4D1.
    public func map(on bus: IOBus) throws {
        try bus.mapPorts(masterPorts, name: "pic master", base: 0x20, count: 2)
        try bus.mapPorts(slavePorts, name: "pic slave", base: 0xA0, count: 2)
        try bus.mapPorts(elcrPorts, name: "pic elcr", base: 0x4D0, count: 2)
    }

    public final class Port: PortIODevice {
        enum Kind { case master, slave, elcr }
        unowned let pic: I8259
        let kind: Kind
        init(pic: I8259, kind: Kind) { self.pic = pic; self.kind = kind }
        public func ioRead(offset: UInt16, size: Int) -> UInt32 {
            UInt32(pic.read(kind, offset: Int(offset & 1)))
        }
        public func ioWrite(offset: UInt16, size: Int, value: UInt32) {
            pic.write(kind, offset: Int(offset & 1), value: UInt8(truncatingIfNeeded: value))
        }
    }

    // MARK: Inputs and the CPU side

    /// Sets the level of ISA IRQ `irq` (0-15). Edge inputs latch on a rising edge.
    public func setIRQ(_ irq: Int, level: Bool) {
        guard irq >= 0, irq < 16 else { return }
        if irq < 8 { master.setInput(irq, level: level) } else { slave.setInput(irq, level: level) }
        update()
    }

    /// The INTR pin: whether the CPU should take an interrupt (when IF allows).
    public func pendingInterrupt() -> Bool { output }

    /// The INTA cycle: returns the vector and moves the request into service.
    /// With no request left it returns the spurious vector (IRQ 7 or 15).
    public func acknowledge() -> UInt8 {
        let vector: UInt8
        if let irq = master.highestPending() {
            master.acknowledge(irq)
            if irq == 2 {
                if let irq2 = slave.highestPending() {
                    slave.acknowledge(irq2)
                    vector = slave.vectorBase &+ UInt8(irq2)
                } else {
                    spuriousCount += 1
                    vector = slave.vectorBase &+ 7
                }
            } else {
                vector = master.vectorBase &+ UInt8(irq)
            }
        } else {
            spuriousCount += 1
            vector = master.vectorBase &+ 7
        }
        update()
        return vector
    }

    private func update() {
        // The slave's INT output drives master IR2.
        master.setInput(2, level: slave.highestPending() != nil)
        let out = master.highestPending() != nil
        if out != output {
            output = out
            onOutputChange?(out)
        }
    }

    // MARK: Registers

    func read(_ kind: Port.Kind, offset: Int) -> UInt8 {
        switch kind {
        case .elcr:
            return offset == 0 ? master.elcr : slave.elcr
        case .master, .slave:
            let isMaster = kind == .master
            var chip = isMaster ? master : slave
            let value: UInt8
            if chip.poll {
                chip.poll = false
                if let irq = chip.highestPending() {
                    chip.acknowledge(irq)
                    value = 0x80 | UInt8(irq)
                } else {
                    value = 0
                }
            } else if offset == 0 {
                value = chip.readISR ? chip.isr : chip.irr
            } else {
                value = chip.imr
            }
            if isMaster { master = chip } else { slave = chip }
            update()
            return value
        }
    }

    func write(_ kind: Port.Kind, offset: Int, value: UInt8) {
        switch kind {
        case .elcr:
            if offset == 0 { master.elcr = value & master.elcrMask } else { slave.elcr = value & slave.elcrMask }
        case .master:
            if offset == 0 { master.writeCommand(value) } else { master.writeData(value) }
        case .slave:
            if offset == 0 { slave.writeCommand(value) } else { slave.writeData(value) }
        }
        update()
    }
}

// MARK: Snapshot

extension I8259 {
    public struct Snapshot: Sendable, Equatable, Codable {
        public var master: Chip
        public var slave: Chip
    }

    public func snapshot() -> Snapshot { Snapshot(master: master, slave: slave) }

    public func restore(_ s: Snapshot) {
        guard s.master.isMaster, !s.slave.isMaster else { return }
        master = s.master
        slave = s.slave
        output = false
        update()
    }
}
