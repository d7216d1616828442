import Hypervisor

/// The machine's interrupt wiring when the interrupt controllers live in user space (the
/// software-CPU backend, or KVM without its in-kernel irqchip): an `InterruptController`
/// that fans every GSI out the way a PC's board does.
///
/// - GSI 0-15 (ISA IRQs) go to the 8259 pair's inputs 0-15 and to IOAPIC pins; ISA IRQ 0
///   (the PIT) lands on IOAPIC pin 2, as the MADT's interrupt source override says
///   (pin 0 is the 8259's ExtINT output).
/// - GSI 16-23 go to IOAPIC pins 16-23 only (PCI INTx).
/// - MSIs are decoded into `APICMessage`s and handed to the `IOAPIC`'s sink (the LAPICs).
///
/// Not internally locked: like every device, it is driven under the VMM's device lock
/// (devices call `setIRQ` from inside their port/MMIO handlers, which already hold it).
public final class UserspaceIRQChip: InterruptController, @unchecked Sendable {
    public let pic: I8259
    public let ioapic: IOAPIC

    public init(pic: I8259 = I8259(), ioapic: IOAPIC = IOAPIC()) {
        self.pic = pic
        self.ioapic = ioapic
    }

    /// The IOAPIC pin a GSI arrives on.
    public static func ioapicPin(gsi: UInt32) -> Int { gsi == 0 ? 2 : Int(gsi) }

    public func setIRQ(_ gsi: UInt32, level: Bool) {
        if gsi < 16 { pic.setIRQ(Int(gsi), level: level) }
        if gsi < UInt32(IOAPIC.pinCount) { ioapic.setIRQ(UserspaceIRQChip.ioapicPin(gsi: gsi), level: level) }
    }

    public func signalMSI(address: UInt64, data: UInt32) {
        guard let message = APICMessage(msiAddress: address, data: data) else { return }
        ioapic.sink?.deliver(message)
    }
}
