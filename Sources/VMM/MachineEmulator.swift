import Devices
import GuestMemory
import Hypervisor
import X86Emulator

/// The glue between the software CPU (`EmulatorVirtualMachine`, whose vCPUs carry their
/// local APICs) and the user-space interrupt chips the machine maps for it (8259 pair and
/// IOAPIC in a `UserspaceIRQChip`; the 8254 PIT is mapped by `MachineMap.build`):
///
/// - `vm.interrupts.setIRQ` (every device's IRQ line) → the chip (PIC inputs, IOAPIC pins);
/// - IOAPIC redirection entries and MSIs → `deliver(_:)` → the local APICs;
/// - the boot vCPU's LINT0 (ExtINT) asks `hasPendingInterrupt`/`acknowledgeInterrupt`
///   (the PIC's INTA cycle), and a change of the PIC's output wakes it;
/// - a local APIC's EOI of a level-triggered vector → `endOfInterrupt` → the IOAPIC's
///   remote IRR.
///
/// Locking: every chip call goes through the `UserspaceIRQChip`'s own lock (the innermost
/// lock: machine device lock → a device's lock → chip lock), not the device lock, because
/// virtio devices raise interrupts from their own threads under their own locks. INTA and
/// EOI from a vCPU thread take only the chip lock. `deliver` and the PIC's output callback
/// run with the chip lock held (and maybe the device lock or a virtio device's lock): they
/// only post to the LAPICs' inboxes and wake the vCPU (`vcpuTable`, the APIC inbox and the
/// parker are leaf locks), and never call back into the chip or take a device lock.
/// See docs/emulator.md.
final class EmulatorMachineGlue: APICMessageSink, ExternalInterruptSource, EOIListener, @unchecked Sendable {
    let vm: EmulatorVirtualMachine
    let chip: UserspaceIRQChip

    /// Wires `chip` into `vm`. Call after every vCPU was created (the EOI listener and the
    /// external interrupt source are set on existing vCPUs).
    init(vm: EmulatorVirtualMachine, chip: UserspaceIRQChip) {
        self.vm = vm
        self.chip = chip
        chip.withChips { pic, ioapic in
            ioapic.sink = self
            pic.onOutputChange = { [weak vm] _ in vm?.notifyExternalInterrupt() }
        }
        vm.setLegacyInterruptSink(chip)
        vm.setExternalInterruptSource(self)
        vm.setEOIListener(self)
    }

    /// The software CPU backend for a machine.
    static func makeBackend(memory: GuestMemory, cpuLevel: X86CPULevel) -> EmulatorVirtualMachine {
        EmulatorVirtualMachine(memory: memory, cpuLevel: cpuLevel)
    }

    // MARK: APICMessageSink (called with the chip lock held, or after it for MSIs)

    func deliver(_ m: APICMessage) {
        guard let mode = X86Emulator.APICDeliveryMode(rawValue: m.deliveryMode.rawValue) else { return }
        vm.deliverInterrupt(vector: m.vector, destination: m.destination, logical: m.logicalDestination,
                            mode: mode, levelTriggered: m.levelTriggered)
    }

    // MARK: ExternalInterruptSource, EOIListener (called on a vCPU thread)

    func hasPendingInterrupt() -> Bool { chip.pendingInterrupt() }
    func acknowledgeInterrupt() -> UInt8 { chip.acknowledge() }
    func endOfInterrupt(vector: UInt8) { chip.endOfInterrupt(vector: vector) }
}
