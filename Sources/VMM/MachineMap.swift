import Devices
import Hypervisor

/// The machine's device models, as built by `MachineMap.build`.
public final class MachineDevices: @unchecked Sendable {
    public let post = POSTCodeSink()
    /// Feeds console input to COM1 (called with the device lock held).
    public var consoleInput: (([UInt8]) -> Void)?
}

/// THE port-I/O and MMIO map of the machine, in one place. Every device the guest can
/// reach through the bus is mapped here and nowhere else:
///
///     port 0x0020-0x0021, 0x00a0-0x00a1   i8259 PICs         (in-kernel with KVM's irqchip)
///     port 0x0040-0x0043, 0x0061          i8254 PIT, port B  (in-kernel with KVM's PIT)
///     port 0x0060, 0x0064                 i8042 keyboard controller (reset line)
///     port 0x0070-0x0071                  MC146818 RTC/CMOS
///     port 0x0080                         POST-code / I/O-delay sink
///     port 0x00f4                         debug exit (QEMU isa-debug-exit)
///     port 0x03f8-0x03ff                  NS8250 COM1, IRQ 4
///     port 0x0cf8-0x0cff                  PCI host bridge, config mechanism #1
///     MMIO 0xfec00000                     IOAPIC             (in-kernel with KVM's irqchip)
///     MMIO 0xfee00000                     LAPIC              (in-kernel)
public enum MachineMap {
    public static let post: UInt16 = 0x80

    /// Builds the devices and maps them on `bus`. Devices report machine events (reset,
    /// power off, debug exit) to `events`; console output goes to `console`.
    public static func build(bus: IOBus, interrupts: any InterruptController, events: MachineEvents,
                             console: Console, memorySize: UInt64) throws -> MachineDevices {
        let devices = MachineDevices()
        try bus.mapPorts(devices.post, name: "post", base: post, count: 1)
        return devices
    }
}
