/// The i8042 keyboard controller: data port 0x60, status/command port 0x64.
///
/// Enough for Linux's i8042 driver to probe it cleanly and for guests to reset the machine:
/// - Controller commands: 0x20-0x3F read RAM (0x20 = command byte), 0x60-0x7F write RAM,
///   0xA7/0xA8 AUX disable/enable, 0xA9 AUX test (0x00), 0xAA self-test (0x55),
///   0xAB keyboard test (0x00), 0xAD/0xAE keyboard disable/enable, 0xC0 input port,
///   0xD0/0xD1 read/write output port, 0xD2/0xD3 write keyboard/AUX output buffer
///   (0xD3 is the AUX loopback Linux uses), 0xD4 write to AUX device, 0xDD/0xDF A20,
///   0xE0 test inputs, 0xF0-0xFF pulse output lines.
/// - The reset line: command 0xFE (pulse bit 0), or an output-port write with bit 0 clear,
///   calls `onReset`.
/// - A minimal PS/2 keyboard is attached: it acknowledges commands (0xFA), answers reset
///   with 0xFA 0xAA, identify with 0xFA 0xAB 0x83 and echo with 0xEE; scancodes from the
///   host can be pushed with `keyboardInput(_:)`. No mouse: bytes sent to the AUX device
///   are answered with 0xFE and the timeout status bit, so drivers give up at once.
/// - Output bytes raise IRQ 1 (keyboard/controller) or IRQ 12 (AUX) when enabled in the
///   command byte, as levels that drop when the guest reads port 0x60.
///
/// Map both facets: `bus.mapPorts(kbc.dataPort, name: "i8042 data", base: 0x60, count: 1)`
/// and `bus.mapPorts(kbc.commandPort, name: "i8042 cmd", base: 0x64, count: 1)`
/// (port 0x61 between them belongs to the PIT/speaker), or call `map(on:)`.
public final class I8042 {
    public static let dataPortAddress: UInt16 = 0x60
    public static let commandPortAddress: UInt16 = 0x64

    /// Status register bits.
    public enum Status {
        public static let outputFull: UInt8 = 0x01
        public static let inputFull: UInt8 = 0x02
        public static let system: UInt8 = 0x04
        public static let command: UInt8 = 0x08
        public static let notInhibited: UInt8 = 0x10
        public static let auxData: UInt8 = 0x20
        public static let timeout: UInt8 = 0x40
        public static let parity: UInt8 = 0x80
    }
    /// Command byte (CTR) bits.
    public enum CommandByte {
        public static let keyboardInterrupt: UInt8 = 0x01
        public static let auxInterrupt: UInt8 = 0x02
        public static let system: UInt8 = 0x04
        public static let keyboardDisabled: UInt8 = 0x10
        public static let auxDisabled: UInt8 = 0x20
        public static let translate: UInt8 = 0x40
    }

    /// Called when the guest pulses or drives the reset line.
    public var onReset: (() -> Void)?
    /// Called when the guest changes the A20 gate (output port bit 1).
    public var onA20Change: ((Bool) -> Void)?

    public private(set) var commandByte: UInt8 = 0x45
    /// Output port: bit 0 = reset line (1 = running), bit 1 = A20 gate.
    public private(set) var outputPort: UInt8 = 0x03
    public private(set) var resetCount = 0

    private enum Source { case controller, keyboard, aux }
    private struct OutputByte { var value: UInt8; var source: Source; var timeout: Bool }
    private var output: [OutputByte] = []
    private static let outputLimit = 32
    private var pendingCommand: UInt8?
    private var lastWriteWasCommand = false
    private var ram = [UInt8](repeating: 0, count: 32)
    private var keyboardPendingCommand: UInt8?

    private let keyboardIRQ: IRQLine
    private let auxIRQ: IRQLine
    private var keyboardLevel = false
    private var auxLevel = false

    /// The two port facets to map on the bus.
    public private(set) lazy var dataPort = Port(controller: self, isCommand: false)
    public private(set) lazy var commandPort = Port(controller: self, isCommand: true)

    /// - Parameters:
    ///   - keyboardIRQ: IRQ 1.
    ///   - auxIRQ: IRQ 12.
    public init(keyboardIRQ: IRQLine, auxIRQ: IRQLine) {
        self.keyboardIRQ = keyboardIRQ
        self.auxIRQ = auxIRQ
    }

    /// Maps the data port at 0x60 and the status/command port at 0x64.
    public func map(on bus: IOBus) throws {
        try bus.mapPorts(dataPort, name: "i8042 data", base: I8042.dataPortAddress, count: 1)
        try bus.mapPorts(commandPort, name: "i8042 command", base: I8042.commandPortAddress, count: 1)
    }

    /// One of the controller's two ports.
    public final class Port: PortIODevice {
        unowned let controller: I8042
        let isCommand: Bool
        init(controller: I8042, isCommand: Bool) { self.controller = controller; self.isCommand = isCommand }
        public func ioRead(offset: UInt16, size: Int) -> UInt32 {
            UInt32(isCommand ? controller.readStatus() : controller.readData())
        }
        public func ioWrite(offset: UInt16, size: Int, value: UInt32) {
            let v = UInt8(truncatingIfNeeded: value)
            if isCommand { controller.writeCommand(v) } else { controller.writeData(v) }
        }
    }

    // MARK: Host side

    /// Queues scancode bytes from the host's keyboard (in the current scancode set).
    public func keyboardInput(_ bytes: [UInt8]) {
        for b in bytes { enqueue(b, .keyboard) }
    }

    // MARK: Registers

    public func readStatus() -> UInt8 {
        var s: UInt8 = Status.notInhibited
        if commandByte & CommandByte.system != 0 { s |= Status.system }
        if lastWriteWasCommand { s |= Status.command }
        if let head = output.first {
            s |= Status.outputFull
            if head.source == .aux { s |= Status.auxData }
            if head.timeout { s |= Status.timeout }
        }
        return s
    }

    public func readData() -> UInt8 {
        guard !output.isEmpty else { return 0 }
        let b = output.removeFirst()
        // Reading empties the output buffer: the IRQ drops, and the next queued byte
        // raises it again (a fresh edge for edge-triggered PIC/IOAPIC pins).
        if keyboardLevel { keyboardLevel = false; keyboardIRQ.lower() }
        if auxLevel { auxLevel = false; auxIRQ.lower() }
        updateIRQ()
        return b.value
    }

    public func writeCommand(_ cmd: UInt8) {
        lastWriteWasCommand = true
        pendingCommand = nil
        switch cmd {
        case 0x20...0x3F:
            enqueue(cmd == 0x20 ? commandByte : ram[Int(cmd & 0x1F)], .controller)
        case 0x60...0x7F, 0xD1, 0xD2, 0xD3, 0xD4:
            pendingCommand = cmd
        case 0xA7: setCommandByte(commandByte | CommandByte.auxDisabled)
        case 0xA8: setCommandByte(commandByte & ~CommandByte.auxDisabled)
        case 0xA9: enqueue(0x00, .controller)
        case 0xAA:
            enqueue(0x55, .controller)
        case 0xAB: enqueue(0x00, .controller)
        case 0xAD: setCommandByte(commandByte | CommandByte.keyboardDisabled)
        case 0xAE: setCommandByte(commandByte & ~CommandByte.keyboardDisabled)
        case 0xC0: enqueue(0x80, .controller)
        case 0xD0: enqueue(outputPort, .controller)
        case 0xDD: writeOutputPort(outputPort & ~0x02)
        case 0xDF: writeOutputPort(outputPort | 0x02)
        case 0xE0: enqueue(0x00, .controller)
        case 0xF0...0xFF:
            // Pulse the output lines whose bit is 0; bit 0 is the CPU reset line.
            if cmd & 0x01 == 0 { reset() }
        default:
            break
        }
    }

    public func writeData(_ value: UInt8) {
        lastWriteWasCommand = false
        guard let cmd = pendingCommand else {
            keyboardReceive(value)
            return
        }
        pendingCommand = nil
        switch cmd {
        case 0x60: setCommandByte(value)
        case 0x61...0x7F: ram[Int(cmd & 0x1F)] = value
        case 0xD1: writeOutputPort(value)
        case 0xD2: enqueue(value, .keyboard)
        case 0xD3: enqueue(value, .aux)
        case 0xD4:
            // No mouse attached: answer like a controller whose AUX device timed out.
            setCommandByte(commandByte & ~CommandByte.auxDisabled)
            enqueue(0xFE, .aux, timeout: true)
        default: break
        }
    }

    private func setCommandByte(_ v: UInt8) {
        commandByte = v
        updateIRQ()
    }

    private func writeOutputPort(_ v: UInt8) {
        let oldA20 = outputPort & 0x02 != 0
        outputPort = v
        if (v & 0x02 != 0) != oldA20 { onA20Change?(v & 0x02 != 0) }
        if v & 0x01 == 0 {
            reset()
            outputPort |= 0x01 // the reset is a pulse as far as we are concerned
        }
    }

    private func reset() {
        resetCount += 1
        onReset?()
    }

    // MARK: The attached keyboard

    private func keyboardReceive(_ b: UInt8) {
        // Writing to the keyboard re-enables its interface, as on real controllers.
        commandByte &= ~CommandByte.keyboardDisabled
        if let pending = keyboardPendingCommand {
            keyboardPendingCommand = nil
            if pending == 0xF0 && b == 0 {
                enqueue(0xFA, .keyboard); enqueue(0x02, .keyboard)
            } else {
                enqueue(0xFA, .keyboard)
            }
            return
        }
        switch b {
        case 0xFF:
            enqueue(0xFA, .keyboard); enqueue(0xAA, .keyboard)
        case 0xF2:
            enqueue(0xFA, .keyboard); enqueue(0xAB, .keyboard); enqueue(0x83, .keyboard)
        case 0xEE:
            enqueue(0xEE, .keyboard)
        case 0xED, 0xF0, 0xF3:
            keyboardPendingCommand = b
            enqueue(0xFA, .keyboard)
        default:
            enqueue(0xFA, .keyboard)
        }
    }

    // MARK: Output buffer and interrupts

    private func enqueue(_ value: UInt8, _ source: Source, timeout: Bool = false) {
        guard output.count < I8042.outputLimit else { return }
        output.append(OutputByte(value: value, source: source, timeout: timeout))
        updateIRQ()
    }

    private func updateIRQ() {
        var kbd = false, aux = false
        if let head = output.first {
            if head.source == .aux {
                aux = commandByte & CommandByte.auxInterrupt != 0
            } else {
                kbd = commandByte & CommandByte.keyboardInterrupt != 0
            }
        }
        if kbd != keyboardLevel { keyboardLevel = kbd; keyboardIRQ.set(kbd) }
        if aux != auxLevel { auxLevel = aux; auxIRQ.set(aux) }
    }
}

// MARK: Snapshot

extension I8042 {
    public struct Snapshot: Sendable, Equatable, Codable {
        public struct Byte: Sendable, Equatable, Codable {
            public var value: UInt8
            /// 0 controller, 1 keyboard, 2 AUX.
            public var source: UInt8
            public var timeout: Bool
        }
        public var commandByte, outputPort: UInt8
        public var output: [Byte]
        public var pendingCommand, keyboardPendingCommand: UInt8?
        public var lastWriteWasCommand: Bool
        public var ram: [UInt8]
    }

    public func snapshot() -> Snapshot {
        Snapshot(commandByte: commandByte, outputPort: outputPort,
                 output: output.map { Snapshot.Byte(value: $0.value, source: $0.source == .controller ? 0 : $0.source == .keyboard ? 1 : 2,
                                                    timeout: $0.timeout) },
                 pendingCommand: pendingCommand, keyboardPendingCommand: keyboardPendingCommand,
                 lastWriteWasCommand: lastWriteWasCommand, ram: ram)
    }

    /// Restores a snapshot into a freshly built controller (raising IRQ 1/12 if data waits).
    public func restore(_ s: Snapshot) {
        commandByte = s.commandByte
        outputPort = s.outputPort | 0x01
        output = s.output.prefix(I8042.outputLimit).map {
            OutputByte(value: $0.value, source: $0.source == 0 ? .controller : $0.source == 1 ? .keyboard : .aux, timeout: $0.timeout)
        }
        pendingCommand = s.pendingCommand
        keyboardPendingCommand = s.keyboardPendingCommand
        lastWriteWasCommand = s.lastWriteWasCommand
        ram = s.ram.count == 32 ? s.ram : [UInt8](repeating: 0, count: 32)
        keyboardLevel = false; auxLevel = false
        updateIRQ()
    }
}
