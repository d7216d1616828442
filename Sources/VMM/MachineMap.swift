import Boot
import Devices
import Hypervisor

/// The machine's device models, as built by `MachineMap.build`. Touch them only with the
/// machine's device lock held.
public final class MachineDevices: @unchecked Sendable {
    public let com1: NS8250
    public let keyboardController: I8042
    public let rtc: MC146818
    public let pciHost: PCIHost
    public let debugExit: DebugExit
    public let acpiPM: ACPIPMBlock
    public let post: POSTCodeSink
    /// The user-space 8259 pair + IOAPIC and the 8254 PIT: only on the software CPU
    /// (KVM has them in-kernel). See MachineEmulator.swift.
    public let irqChip: UserspaceIRQChip?
    public let pit: I8254?
    /// Firmware boots only: fw_cfg (0x510/0x511, DMA 0x514) and the PIIX3 ISA bridge (0:1.0).
    public let firmwareConfig: FirmwareConfig?
    public let isaBridge: PIIX3ISABridge?
    /// Runs after every guest write to the RTC or the PIT (the machine re-arms its device timer).
    let rtcWritten: Notifier

    /// Console input not yet taken by COM1's receive FIFO (bounded).
    private var pendingInput: [UInt8] = []
    static let pendingInputLimit = 64 * 1024

    init(com1: NS8250, keyboardController: I8042, rtc: MC146818, pciHost: PCIHost,
         debugExit: DebugExit, acpiPM: ACPIPMBlock, post: POSTCodeSink, rtcWritten: Notifier,
         irqChip: UserspaceIRQChip? = nil, pit: I8254? = nil,
         firmwareConfig: FirmwareConfig? = nil, isaBridge: PIIX3ISABridge? = nil) {
        self.firmwareConfig = firmwareConfig; self.isaBridge = isaBridge
        self.rtcWritten = rtcWritten
        self.irqChip = irqChip; self.pit = pit
        self.com1 = com1; self.keyboardController = keyboardController; self.rtc = rtc
        self.pciHost = pciHost; self.debugExit = debugExit; self.acpiPM = acpiPM; self.post = post
        com1.onReceiveSpace = { [weak self] in self?.flushInput() }
    }

    /// Feeds console input to COM1, keeping what does not fit until the guest reads.
    /// Call with the device lock held.
    public func consoleInput(_ bytes: [UInt8]) {
        let room = Self.pendingInputLimit - pendingInput.count
        pendingInput.append(contentsOf: bytes.prefix(max(0, room)))
        flushInput()
    }

    private func flushInput() {
        guard !pendingInput.isEmpty else { return }
        let taken = com1.receive(pendingInput)
        pendingInput.removeFirst(min(taken, pendingInput.count))
    }

    /// The PCI interrupt routing the firmware tables describe.
    public var pciRoutes: [PCIRoutingEntry] {
        pciHost.routing.routes().map { PCIRoutingEntry(slot: $0.slot, pin: $0.pin, gsi: $0.gsi) }
    }
}

/// THE port-I/O and MMIO map of the machine, in one place. Every device the guest can
/// reach through the bus is created and mapped in `build` and nowhere else:
///
///     port 0x0020-0x0021, 0x00a0-0x00a1   i8259 PICs            in-kernel (KVM irqchip)
///     port 0x04d0-0x04d1                  i8259 ELCR            in-kernel (KVM irqchip)
///     port 0x0040-0x0043, 0x0061          i8254 PIT, port B     in-kernel (KVM PIT)
///     port 0x0060, 0x0064                 I8042 keyboard controller, IRQ 1/12 (reset line)
///     port 0x0070-0x0071                  MC146818 RTC/CMOS, IRQ 8
///     port 0x0080                         POST-code / I/O-delay sink
///     port 0x00f4                         DebugExit (QEMU isa-debug-exit)
///     port 0x03f8-0x03ff                  NS8250 COM1, IRQ 4
///     port 0x0600-0x0603                  ACPI PM1a event block (PM1_STS, PM1_EN), SCI IRQ 9
///     port 0x0604-0x0605                  ACPI PM1a control block (S5 write = power off)
///     port 0x0402                         firmware debug console (firmware boot, debug log level)
///     port 0x0510-0x0511, 0x0514-0x051b   fw_cfg selector/data, DMA (firmware boot)
///     port 0x0cf8-0x0cff                  PCIHost: config mechanism #1, 0xcf9 reset control
///     PCI 00:01.0                         PIIX3 ISA bridge (firmware boot)
///     port 0xc000-0xffff                  PCI I/O BARs (assigned by PCIHost)
///     MMIO 0xc0000000-0xfdffffff          PCI memory BARs (assigned by PCIHost)
///     MMIO 0xfec00000                     IOAPIC                in-kernel (KVM irqchip)
///     MMIO 0xfee00000                     LAPIC                 in-kernel
///
/// "in-kernel" devices are mapped here (as `UserspaceIRQChip` and `I8254`) only when the
/// caller passes `userspaceIRQChip` (the software CPU; its LAPIC lives in the emulator).
///
/// Interrupts: ISA IRQ n is GSI n (PIC pin n and IOAPIC pin n; the PIT's IRQ 0 arrives at
/// IOAPIC pin 2); PCI INTx lines PIRQA-D are GSIs 16-19 (PCIInterruptRouting.ioapic).
public enum MachineMap {
    public static let postPort: UInt16 = 0x80

    /// Builds the devices and maps them on `bus`. Devices report machine events (reset,
    /// power off, debug exit) to `events`; COM1 output goes to `console`.
    public static func build(bus: IOBus, interrupts: any InterruptController, events: MachineEvents,
                             console: Console, memorySize: UInt64, vcpus: Int,
                             clock: DeviceClock = .host,
                             userspaceIRQChip: UserspaceIRQChip? = nil,
                             firmware: FirmwareConfig? = nil,
                             firmwareLog: ((String) -> Void)? = nil) throws -> MachineDevices {
        func irq(_ gsi: UInt32) -> IRQLine { IRQLine(controller: interrupts, gsi: gsi) }
        let timerWritten = Notifier()

        var pit: I8254?
        if let chip = userspaceIRQChip {
            try chip.map(on: bus) // PIC ports and IOAPIC window, behind the chip's lock
            let p = I8254(irq: irq(0), clock: clock)
            try bus.mapPorts(WriteNotifyingPorts(p.counterPorts) { timerWritten.action?() }, name: "pit",
                             base: I8254.basePort, count: 4)
            try bus.mapPorts(p.portB, name: "port b", base: I8254.portBAddress, count: 1)
            pit = p
        }

        let com1 = NS8250(irq: irq(NS8250.com1.irq), output: { console.write($0) })
        try bus.mapPorts(com1, name: "com1", base: NS8250.com1.base, count: NS8250.portCount)

        let kbc = I8042(keyboardIRQ: irq(1), auxIRQ: irq(12))
        kbc.onReset = { events.request(.reset(reason: "the guest pulsed the i8042 reset line")) }
        try kbc.map(on: bus)

        let rtc = MC146818(ramSize: memorySize, cpus: vcpus, irq: irq(MC146818.irq), clock: clock)
        let rtcWritten = timerWritten
        try bus.mapPorts(WriteNotifyingPorts(rtc) { rtcWritten.action?() }, name: "rtc",
                         base: MC146818.basePort, count: MC146818.portCount)

        let post = POSTCodeSink()
        try bus.mapPorts(post, name: "post", base: postPort, count: 1)

        let debugExit = DebugExit(onExit: { events.request(.debugExit(status: $0)) })
        try bus.mapPorts(debugExit, name: "debug-exit", base: DebugExit.defaultPort, count: 1)

        let pm = ACPIPMBlock(sci: irq(UInt32(ACPIPowerManagement.sciIRQ)))
        pm.onPowerOff = { events.request(.poweredOff) }
        try bus.mapPorts(pm.eventPorts, name: "acpi pm1a event", base: ACPIPowerManagement.pm1aEventPort,
                         count: UInt16(ACPIPowerManagement.pm1EventLength))
        try bus.mapPorts(pm.controlPorts, name: "acpi pm1a control", base: ACPIPowerManagement.pm1aControlPort,
                         count: UInt16(ACPIPowerManagement.pm1ControlLength))

        let pci = PCIHost(bus: bus, interrupts: interrupts)
        pci.onReset = { events.request(.reset(reason: "the guest reset the machine through port 0xcf9")) }
        try bus.mapPorts(pci, name: "pci", base: PCIHost.basePort, count: PCIHost.portCount)

        var isa: PIIX3ISABridge?
        if let firmware {
            try firmware.map(on: bus)
            let bridge = PIIX3ISABridge()
            try pci.register(bridge, slot: 1)
            isa = bridge
            if let firmwareLog {
                try bus.mapPorts(FirmwareDebugConsole(emit: firmwareLog), name: "firmware debug console",
                                 base: FirmwareDebugConsole.port, count: 1)
            }
        }

        return MachineDevices(com1: com1, keyboardController: kbc, rtc: rtc, pciHost: pci,
                              debugExit: debugExit, acpiPM: pm, post: post, rtcWritten: rtcWritten,
                              irqChip: userspaceIRQChip, pit: pit, firmwareConfig: firmware, isaBridge: isa)
    }
}

/// A settable action, for wiring a device callback before its target exists.
final class Notifier: @unchecked Sendable {
    var action: (() -> Void)?
}
