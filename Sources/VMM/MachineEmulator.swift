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
/// Chip calls made from the vCPU thread (INTA, EOI) take the machine's device lock; calls
/// from device code (`deliver`) already run under it. See docs/emulator.md.
final class EmulatorMachineGlue: APICMessageSink, ExternalInterruptSource, EOIListener, @unchecked Sendable {
    let vm: EmulatorVirtualMachine
    let chip: UserspaceIRQChip
    let deviceLock: DeviceLock

    /// Wires `chip` into `vm`. Call after every vCPU was created (the EOI listener and the
    /// external interrupt source are set on existing vCPUs).
    init(vm: EmulatorVirtualMachine, chip: UserspaceIRQChip, deviceLock: DeviceLock) {
        self.vm = vm
        self.chip = chip
        self.deviceLock = deviceLock
        deviceLock.withLock {
            chip.ioapic.sink = self
            chip.pic.onOutputChange = { [weak vm] _ in vm?.notifyExternalInterrupt() }
        }
        vm.setLegacyInterruptSink(chip)
        vm.setExternalInterruptSource(self)
        vm.setEOIListener(self)
    }

    /// The software CPU backend for a machine.
    static func makeBackend(memory: GuestMemory, cpuLevel: X86CPULevel) -> EmulatorVirtualMachine {
        EmulatorVirtualMachine(memory: memory, cpuLevel: cpuLevel)
    }

    // MARK: APICMessageSink (called under the device lock)

    func deliver(_ m: APICMessage) {
        guard let mode = X86Emulator.APICDeliveryMode(rawValue: m.deliveryMode.rawValue) else { return }
        vm.deliverInterrupt(vector: m.vector, destination: m.destination, logical: m.logicalDestination,
                            mode: mode, levelTriggered: m.levelTriggered)
    }

    // MARK: ExternalInterruptSource, EOIListener (called on a vCPU thread)

    func hasPendingInterrupt() -> Bool { deviceLock.withLock { chip.pic.pendingInterrupt() } }
    func acknowledgeInterrupt() -> UInt8 { deviceLock.withLock { chip.pic.acknowledge() } }
    func endOfInterrupt(vector: UInt8) { deviceLock.withLock { chip.ioapic.endOfInterrupt(vector: vector) } }
}
