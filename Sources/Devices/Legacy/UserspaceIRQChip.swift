#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import GuestMemory
import Hypervisor

/// The machine's interrupt wiring when the interrupt controllers live in user space (the
/// software-CPU backend): an `InterruptController` that fans every GSI out the way a PC's
/// board does, and the owner of the 8259 pair and the IOAPIC.
///
/// - GSI 0-15 (ISA IRQs) go to the 8259 pair's inputs 0-15 and to IOAPIC pins; ISA IRQ 0
///   (the PIT) lands on IOAPIC pin 2, as the MADT's interrupt source override says
///   (pin 0 is the 8259's ExtINT output).
/// - GSI 16-23 go to IOAPIC pins 16-23 only (PCI INTx).
/// - MSIs are decoded into `APICMessage`s and handed to the `IOAPIC`'s sink (the LAPICs).
///
/// Locking: the chip has its own lock and every access to PIC or IOAPIC state takes it —
/// `setIRQ` (legacy devices under the machine's device lock, virtio devices under their
/// own lock from the event, virtio-net and vCPU threads), the CPU side (`pendingInterrupt`,
/// `acknowledge`, `endOfInterrupt`, from vCPU threads holding no lock), the guest's port
/// and MMIO accesses (`map(on:)` maps locking proxies, reached under the device lock) and
/// `withChips` (wiring, snapshots, tests). Lock order: machine device lock → a device's
/// lock → this lock; it is the innermost one. While it is held the chip calls out only
/// through the PIC's `onOutputChange` and the IOAPIC sink's `deliver`, which must not call
/// back into the chip nor take the device lock or a device's lock (posting to a LAPIC's
/// inbox and waking its vCPU is fine). MSIs are delivered after the lock is released.
public final class UserspaceIRQChip: InterruptController, @unchecked Sendable {
    private let pic: I8259
    private let ioapic: IOAPIC
    private let lock = HostMutex()

    /// Takes ownership of `pic` and `ioapic`: from now on reach them only through the
    /// chip (`withChips` or the other methods), never directly.
    public init(pic: I8259 = I8259(), ioapic: IOAPIC = IOAPIC()) {
        self.pic = pic
        self.ioapic = ioapic
    }

    /// The IOAPIC pin a GSI arrives on.
    public static func ioapicPin(gsi: UInt32) -> Int { gsi == 0 ? 2 : Int(gsi) }

    /// Runs `body` with the chip lock held and both controllers in hand: for wiring
    /// (`onOutputChange`, `sink`), snapshots and inspection. `body` must not call any other
    /// method of this chip (the lock is not recursive) nor keep the references.
    public func withChips<R>(_ body: (I8259, IOAPIC) throws -> R) rethrows -> R {
        try lock.withLock { try body(pic, ioapic) }
    }

    // MARK: InterruptController (any thread)

    public func setIRQ(_ gsi: UInt32, level: Bool) {
        lock.withLock {
            if gsi < 16 { pic.setIRQ(Int(gsi), level: level) }
            if gsi < UInt32(IOAPIC.pinCount) { ioapic.setIRQ(UserspaceIRQChip.ioapicPin(gsi: gsi), level: level) }
        }
    }

    public func signalMSI(address: UInt64, data: UInt32) {
        guard let message = APICMessage(msiAddress: address, data: data) else { return }
        // An MSI touches no chip state: only the sink is read under the lock.
        let sink = lock.withLock { ioapic.sink }
        sink?.deliver(message)
    }

    // MARK: The CPU side (vCPU threads)

    /// The PIC's INTR output.
    public func pendingInterrupt() -> Bool { lock.withLock { pic.pendingInterrupt() } }

    /// The PIC's INTA cycle: the vector (spurious IRQ 7/15 when the request went away).
    public func acknowledge() -> UInt8 { lock.withLock { pic.acknowledge() } }

    /// A LAPIC's EOI broadcast of a level-triggered vector, to the IOAPIC.
    public func endOfInterrupt(vector: UInt8) { lock.withLock { ioapic.endOfInterrupt(vector: vector) } }

    // MARK: The guest's registers

    /// Maps the PIC ports (0x20-0x21, 0xA0-0xA1, ELCR 0x4D0-0x4D1) and the IOAPIC window
    /// (`PhysicalMap.ioapicBase`) as proxies that take the chip lock around each access.
    public func map(on bus: IOBus) throws {
        let (master, slave, elcr) = lock.withLock { (pic.masterPorts, pic.slavePorts, pic.elcrPorts) }
        try bus.mapPorts(LockedPorts(chip: self, ports: master), name: "pic master", base: 0x20, count: 2)
        try bus.mapPorts(LockedPorts(chip: self, ports: slave), name: "pic slave", base: 0xA0, count: 2)
        try bus.mapPorts(LockedPorts(chip: self, ports: elcr), name: "pic elcr", base: 0x4D0, count: 2)
        try bus.mapMMIO(LockedMMIO(chip: self), name: "ioapic", base: PhysicalMap.ioapicBase, length: IOAPIC.mmioSize)
    }

    private final class LockedPorts: PortIODevice {
        let chip: UserspaceIRQChip
        let ports: I8259.Port
        init(chip: UserspaceIRQChip, ports: I8259.Port) { self.chip = chip; self.ports = ports }
        func ioRead(offset: UInt16, size: Int) -> UInt32 {
            chip.lock.withLock { ports.ioRead(offset: offset, size: size) }
        }
        func ioWrite(offset: UInt16, size: Int, value: UInt32) {
            chip.lock.withLock { ports.ioWrite(offset: offset, size: size, value: value) }
        }
    }

    private final class LockedMMIO: MMIODevice {
        let chip: UserspaceIRQChip
        init(chip: UserspaceIRQChip) { self.chip = chip }
        func mmioRead(offset: UInt64, size: Int) -> UInt64 {
            chip.lock.withLock { chip.ioapic.mmioRead(offset: offset, size: size) }
        }
        func mmioWrite(offset: UInt64, size: Int, value: UInt64) {
            chip.lock.withLock { chip.ioapic.mmioWrite(offset: offset, size: size, value: value) }
        }
    }
}
