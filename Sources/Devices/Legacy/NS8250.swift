/// A 16550A-compatible UART (the NS8250 family): the PC's serial ports.
///
/// Standard PC placement: COM1 0x3F8 IRQ 4, COM2 0x2F8 IRQ 3, COM3 0x3E8 IRQ 4,
/// COM4 0x2E8 IRQ 3 (see `NS8250.com1` ...); map 8 ports.
///
/// Model:
/// - Transmission is instantaneous: a THR write hands the byte to `output` at once, so the
///   transmitter is always empty again (LSR THRE|TEMT) and the THRE interrupt re-arms after
///   each write, exactly when Linux's 8250 driver expects it. With `tryOutput` the host
///   side may refuse bytes; they then wait in a 16-byte transmit FIFO (THRE clear) until
///   `transmitterReady()`.
/// - The receive FIFO holds 16 bytes (1 with FIFOs disabled). Input is pushed with
///   `receive(_:)`, which takes only what fits and returns the count; the VMM keeps the
///   rest and is called back through `onReceiveSpace` when the guest frees room
///   (backpressure instead of overruns).
/// - The receive interrupt fires as soon as data is present: IIR reports "data available"
///   (0x04) at or above the FCR trigger level and "character timeout" (0x0C) below it (the
///   timeout is modelled as immediate). Priority: line status > receive > THRE > modem status.
/// - THRE interrupt: pending when the transmitter empties or when IER's THRE bit is set
///   while it is empty; cleared by writing THR or by reading IIR while it is the reported
///   source (16550 datasheet; Linux's THRE and TXEN probes depend on this).
/// - The IRQ output follows "an enabled interrupt is pending" and, as on a PC, is gated by
///   MCR OUT2 and disconnected in loopback mode. Changes are sent to the `IRQLine` as
///   levels (raise/lower), so an edge-triggered PIC/IOAPIC pin sees a fresh edge for each
///   new event.
/// - Loopback (MCR bit 4): THR bytes go to the receive FIFO instead of `output`, and the
///   modem outputs loop to the inputs (RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD).
///   Outside loopback the modem inputs read DCD, DSR and CTS asserted.
///
/// Not thread safe: the VMM serialises every call (port accesses and `receive`) under its
/// device lock.
public final class NS8250: PortIODevice {
    public struct Placement: Sendable, Equatable {
        public let base: UInt16
        public let irq: UInt32
    }
    public static let com1 = Placement(base: 0x3F8, irq: 4)
    public static let com2 = Placement(base: 0x2F8, irq: 3)
    public static let com3 = Placement(base: 0x3E8, irq: 4)
    public static let com4 = Placement(base: 0x2E8, irq: 3)
    public static let portCount: UInt16 = 8
    public static let fifoSize = 16

    // Register bits.
    public enum IER { public static let rxData: UInt8 = 1, thre: UInt8 = 2, lineStatus: UInt8 = 4, modemStatus: UInt8 = 8 }
    public enum IIR {
        public static let noInterrupt: UInt8 = 0x01
        public static let modemStatus: UInt8 = 0x00
        public static let thre: UInt8 = 0x02
        public static let rxData: UInt8 = 0x04
        public static let lineStatus: UInt8 = 0x06
        public static let timeout: UInt8 = 0x0C
        public static let fifoEnabled: UInt8 = 0xC0
    }
    public enum LSR {
        public static let dataReady: UInt8 = 0x01, overrun: UInt8 = 0x02, parity: UInt8 = 0x04
        public static let framing: UInt8 = 0x08, breakInterrupt: UInt8 = 0x10
        public static let thre: UInt8 = 0x20, temt: UInt8 = 0x40, fifoError: UInt8 = 0x80
    }
    public enum MCR { public static let dtr: UInt8 = 1, rts: UInt8 = 2, out1: UInt8 = 4, out2: UInt8 = 8, loop: UInt8 = 0x10 }
    public enum MSR {
        public static let dcts: UInt8 = 0x01, ddsr: UInt8 = 0x02, teri: UInt8 = 0x04, ddcd: UInt8 = 0x08
        public static let cts: UInt8 = 0x10, dsr: UInt8 = 0x20, ri: UInt8 = 0x40, dcd: UInt8 = 0x80
    }

    /// Where transmitted bytes go (stdout, a pty: the VMM decides). Always accepts.
    public var output: (UInt8) -> Void
    /// Optional output with backpressure: returns false when the byte cannot be taken now
    /// (a full pty nobody reads). Refused bytes wait in the 16-byte transmit FIFO, LSR
    /// THRE/TEMT read clear and the guest waits; the VMM calls `transmitterReady()` when it
    /// can take more. When set, it is used instead of `output`.
    public var tryOutput: ((UInt8) -> Bool)?
    /// Called when the guest has read from a receive FIFO that earlier refused input.
    public var onReceiveSpace: (() -> Void)?
    /// Whether MCR OUT2 must be set for the IRQ to reach the interrupt controller (PC wiring).
    public var interruptRequiresOUT2 = true

    private let irq: IRQLine
    private var irqLevel = false

    public private(set) var ier: UInt8 = 0
    public private(set) var lcr: UInt8 = 0
    public private(set) var mcr: UInt8 = 0
    public private(set) var fcr: UInt8 = 0
    public private(set) var scratch: UInt8 = 0
    /// The divisor latch (115200 / divisor = baud rate).
    public private(set) var divisor: UInt16 = 12
    private var lsrErrors: UInt8 = 0
    private var msrDeltas: UInt8 = 0
    private var msrLines: UInt8 = MSR.dcd | MSR.dsr | MSR.cts
    private var thrInterruptPending = false
    private var rx: [UInt8] = []
    private var tx: [UInt8] = []
    private var inputRefused = false

    /// Counters (for metrics).
    public private(set) var bytesTransmitted: UInt64 = 0
    public private(set) var bytesReceived: UInt64 = 0

    /// - Parameters:
    ///   - irq: the UART's interrupt line (GSI 4 for COM1).
    ///   - output: receives every byte the guest transmits (not called in loopback).
    public init(irq: IRQLine, output: @escaping (UInt8) -> Void = { _ in }) {
        self.irq = irq
        self.output = output
        rx.reserveCapacity(NS8250.fifoSize)
    }

    // MARK: Host side

    private var fifoEnabled: Bool { fcr & 1 != 0 }
    private var rxCapacity: Int { fifoEnabled ? NS8250.fifoSize : 1 }
    private var loopback: Bool { mcr & MCR.loop != 0 }
    private var dlab: Bool { lcr & 0x80 != 0 }

    /// Free bytes in the receive FIFO.
    public var receiveSpace: Int { max(0, rxCapacity - rx.count) }

    /// Pushes input from the host side (keyboard, pty). Takes what fits in the receive FIFO
    /// and returns how many bytes were taken; when fewer than offered, `onReceiveSpace` is
    /// called once the guest reads. In loopback mode external input is ignored (returns all).
    @discardableResult
    public func receive<C: Collection>(_ bytes: C) -> Int where C.Element == UInt8 {
        if loopback { return bytes.count }
        var taken = 0
        for b in bytes {
            guard rx.count < rxCapacity else { break }
            rx.append(b)
            taken += 1
        }
        bytesReceived &+= UInt64(taken)
        if taken < bytes.count { inputRefused = true }
        if taken > 0 { updateIRQ() }
        return taken
    }

    // MARK: Registers

    private var rxTriggerLevel: Int {
        switch fcr >> 6 { case 0: return 1; case 1: return 4; case 2: return 8; default: return 14 }
    }

    private var lsr: UInt8 {
        var v = lsrErrors | (tx.isEmpty ? LSR.thre | LSR.temt : 0)
        if !rx.isEmpty { v |= LSR.dataReady }
        return v
    }

    private var msr: UInt8 {
        if loopback {
            var v: UInt8 = 0
            if mcr & MCR.rts != 0 { v |= MSR.cts }
            if mcr & MCR.dtr != 0 { v |= MSR.dsr }
            if mcr & MCR.out1 != 0 { v |= MSR.ri }
            if mcr & MCR.out2 != 0 { v |= MSR.dcd }
            return v | msrDeltas
        }
        return msrLines | msrDeltas
    }

    /// The highest-priority pending enabled interrupt, as IIR bits 3:0.
    private var pendingInterrupt: UInt8 {
        if ier & IER.lineStatus != 0, lsrErrors & (LSR.overrun | LSR.parity | LSR.framing | LSR.breakInterrupt) != 0 {
            return IIR.lineStatus
        }
        if ier & IER.rxData != 0, !rx.isEmpty {
            return (fifoEnabled && rx.count < rxTriggerLevel) ? IIR.timeout : IIR.rxData
        }
        if ier & IER.thre != 0, thrInterruptPending { return IIR.thre }
        if ier & IER.modemStatus != 0, msrDeltas & 0x0F != 0 { return IIR.modemStatus }
        return IIR.noInterrupt
    }

    private func updateIRQ() {
        var level = pendingInterrupt != IIR.noInterrupt
        if interruptRequiresOUT2 && (mcr & MCR.out2 == 0 || loopback) { level = false }
        if level != irqLevel {
            irqLevel = level
            irq.set(level)
        }
    }

    public func ioRead(offset: UInt16, size: Int) -> UInt32 {
        // Wider accesses read the addressed register only (the UART has an 8-bit bus).
        let value: UInt8
        switch offset {
        case 0:
            if dlab { value = UInt8(truncatingIfNeeded: divisor) } else { value = readRBR() }
        case 1:
            value = dlab ? UInt8(truncatingIfNeeded: divisor >> 8) : ier
        case 2:
            let id = pendingInterrupt
            value = id | (fifoEnabled ? IIR.fifoEnabled : 0)
            if id == IIR.thre {
                thrInterruptPending = false
                updateIRQ()
            }
        case 3: value = lcr
        case 4: value = mcr
        case 5:
            value = lsr
            if lsrErrors != 0 {
                lsrErrors = 0
                updateIRQ()
            }
        case 6:
            value = msr
            if msrDeltas != 0 {
                msrDeltas = 0
                updateIRQ()
            }
        case 7: value = scratch
        default: return 0xFF
        }
        return UInt32(value)
    }

    private func readRBR() -> UInt8 {
        guard !rx.isEmpty else { return 0 }
        let b = rx.removeFirst()
        if inputRefused {
            inputRefused = false
            onReceiveSpace?()
        }
        updateIRQ()
        return b
    }

    public func ioWrite(offset: UInt16, size: Int, value: UInt32) {
        let v = UInt8(truncatingIfNeeded: value)
        switch offset {
        case 0:
            if dlab {
                divisor = (divisor & 0xFF00) | UInt16(v)
            } else {
                transmit(v)
            }
        case 1:
            if dlab {
                divisor = (divisor & 0x00FF) | UInt16(v) << 8
            } else {
                let old = ier
                ier = v & 0x0F
                // Enabling the THRE interrupt while the transmitter is empty raises it.
                if ier & IER.thre != 0 && old & IER.thre == 0 && tx.isEmpty { thrInterruptPending = true }
                updateIRQ()
            }
        case 2:
            let wasEnabled = fifoEnabled
            if v & 1 != wasEnabled.toBit {
                rx.removeAll(keepingCapacity: true)
            }
            if v & 1 != 0 {
                if v & 0x02 != 0 { rx.removeAll(keepingCapacity: true) }
                if v & 0x04 != 0 && !tx.isEmpty {
                    tx.removeAll(keepingCapacity: true)
                    thrInterruptPending = true
                }
                fcr = v & 0xC1
            } else {
                fcr = 0
            }
            if inputRefused && rx.count < rxCapacity {
                inputRefused = false
                onReceiveSpace?()
            }
            updateIRQ()
        case 3:
            lcr = v
        case 4:
            let old = msr & 0xF0
            mcr = v & 0x1F
            if loopback {
                // Loopback modem inputs change: record deltas as a real UART does.
                let new = msr & 0xF0
                let changed = old ^ new
                if changed & MSR.cts != 0 { msrDeltas |= MSR.dcts }
                if changed & MSR.dsr != 0 { msrDeltas |= MSR.ddsr }
                if changed & MSR.dcd != 0 { msrDeltas |= MSR.ddcd }
                if old & MSR.ri != 0 && new & MSR.ri == 0 { msrDeltas |= MSR.teri }
            }
            updateIRQ()
        case 5:
            break // LSR is read-only (factory test)
        case 6:
            break
        case 7:
            scratch = v
        default:
            break
        }
    }

    private func transmit(_ byte: UInt8) {
        if loopback {
            if rx.count < rxCapacity { rx.append(byte) } else { lsrErrors |= LSR.overrun }
        } else if let tryOutput {
            if tx.isEmpty && tryOutput(byte) {
                bytesTransmitted &+= 1
            } else {
                // Held until `transmitterReady()`; a guest overfilling the FIFO loses bytes.
                if tx.count < (fifoEnabled ? NS8250.fifoSize : 1) { tx.append(byte) }
                thrInterruptPending = false
                updateIRQ()
                return
            }
        } else {
            bytesTransmitted &+= 1
            output(byte)
        }
        // The byte left at once: THR is empty again, THRE re-arms (clear then set gives the
        // interrupt line a new edge when it was already up).
        thrInterruptPending = false
        updateIRQ()
        thrInterruptPending = true
        updateIRQ()
    }

    /// The output can take bytes again (see `tryOutput`): drains the transmit FIFO and,
    /// once it is empty, raises the THRE interrupt.
    public func transmitterReady() {
        guard !tx.isEmpty, let tryOutput else { return }
        while let b = tx.first, tryOutput(b) {
            tx.removeFirst()
            bytesTransmitted &+= 1
        }
        if tx.isEmpty {
            thrInterruptPending = true
            updateIRQ()
        }
    }

    /// Bytes waiting in the transmit FIFO (only with `tryOutput`).
    public var transmitPending: Int { tx.count }
}

private extension Bool {
    var toBit: UInt8 { self ? 1 : 0 }
}

// MARK: Snapshot

extension NS8250 {
    /// The UART's complete guest-visible state, for save/restore and migration.
    public struct Snapshot: Sendable, Equatable, Codable {
        public var ier, lcr, mcr, fcr, scratch: UInt8
        public var divisor: UInt16
        public var lsrErrors, msrDeltas: UInt8
        public var thrInterruptPending: Bool
        public var rx: [UInt8]
        public var tx: [UInt8]
    }

    public func snapshot() -> Snapshot {
        Snapshot(ier: ier, lcr: lcr, mcr: mcr, fcr: fcr, scratch: scratch, divisor: divisor,
                 lsrErrors: lsrErrors, msrDeltas: msrDeltas, thrInterruptPending: thrInterruptPending,
                 rx: rx, tx: tx)
    }

    /// Restores a snapshot (into a freshly built UART) and raises the IRQ line if an
    /// enabled interrupt is pending in it.
    public func restore(_ s: Snapshot) {
        ier = s.ier & 0x0F; lcr = s.lcr; mcr = s.mcr & 0x1F; fcr = s.fcr & 0xC1; scratch = s.scratch
        divisor = s.divisor; lsrErrors = s.lsrErrors; msrDeltas = s.msrDeltas
        thrInterruptPending = s.thrInterruptPending
        rx = Array(s.rx.prefix(NS8250.fifoSize))
        tx = Array(s.tx.prefix(NS8250.fifoSize))
        irqLevel = false
        updateIRQ()
    }
}
