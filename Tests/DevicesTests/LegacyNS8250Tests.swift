import Testing
@testable import Devices

struct NS8250Tests {
    final class Harness {
        let irq = RecordingInterruptController()
        var out: [UInt8] = []
        var spaceCalls = 0
        let uart: NS8250
        init() {
            uart = NS8250(irq: IRQLine(controller: irq, gsi: 4))
            uart.output = { [unowned self] in self.out.append($0) }
            uart.onReceiveSpace = { [unowned self] in self.spaceCalls += 1 }
        }
        func r(_ reg: UInt16) -> UInt8 { UInt8(uart.ioRead(offset: reg, size: 1)) }
        func w(_ reg: UInt16, _ v: UInt8) { uart.ioWrite(offset: reg, size: 1, value: UInt32(v)) }
        var line: Bool { irq.level(4) }
    }

    /// drivers/tty/serial/8250/8250_port.c autoconfig(): IER test, loopback MSR test,
    /// FIFO detection, EFR probes, 16750 check, UUE bit. All must point at a 16550A.
    @Test func linuxAutoconfigFindsA16550A() {
        let h = Harness()
        h.w(1, 0)
        #expect(h.r(1) & 0x0F == 0)
        h.w(1, 0x0F)
        #expect(h.r(1) & 0x0F == 0x0F)
        h.w(1, 0)
        // Loopback test: MCR = LOOP | OUT2 | RTS -> MSR & 0xF0 == DCD | CTS.
        let saveMCR = h.r(4)
        h.w(4, 0x10 | 0x0A)
        #expect(h.r(6) & 0xF0 == 0x90)
        h.w(4, saveMCR)
        // FIFO check.
        h.w(2, 0x01)
        #expect(h.r(2) >> 6 == 3)
        // EFR probes with LCR 0x80 and 0xBF must not read 0 (that would be a 16650).
        h.w(3, 0x80)
        #expect(h.r(2) != 0)
        h.w(3, 0xBF)
        #expect(h.r(2) != 0)
        h.w(3, 0)
        // 16750 check: 64-byte FIFO bit does not stick.
        h.w(2, 0x21)
        let s1 = h.r(2) >> 5
        h.w(3, 0x80)
        h.w(2, 0x21)
        let s2 = h.r(2) >> 5
        h.w(3, 0)
        #expect(s1 == 6 && s2 == 6)
        // IER UUE bit (bit 6) does not stick: not an XScale UART.
        h.w(1, 0x40)
        #expect(h.r(1) & 0x40 == 0)
        #expect(h.r(5) != 0xFF)
        #expect(h.r(5) & 0x60 == 0x60)
    }

    @Test func loopbackDataAndModemDeltas() {
        let h = Harness()
        h.w(2, 0x07)
        h.w(4, 0x10)
        h.w(0, 0x55)
        h.w(0, 0xAA)
        #expect(h.out.isEmpty)
        #expect(h.r(5) & 1 == 1)
        #expect(h.r(0) == 0x55)
        #expect(h.r(0) == 0xAA)
        #expect(h.r(5) & 1 == 0)
        _ = h.r(6) // entering loopback changed the modem inputs: clear those deltas
        // Raising DTR in loopback sets DSR and its delta bit; reading MSR clears the delta.
        h.w(4, 0x11)
        #expect(h.r(6) == 0x20 | 0x02)
        #expect(h.r(6) == 0x20)
        // External input is ignored in loopback; no IRQ escapes in loopback.
        #expect(h.uart.receive([1, 2]) == 2)
        #expect(h.r(5) & 1 == 0)
        h.w(1, 0x0F)
        h.w(4, 0x1F)
        #expect(h.line == false)
    }

    @Test func divisorLatch() {
        let h = Harness()
        h.w(3, 0x83)
        h.w(0, 0x01)
        h.w(1, 0x00)
        #expect(h.uart.divisor == 1)
        #expect(h.r(0) == 1 && h.r(1) == 0)
        h.w(3, 0x03)
        #expect(h.out.isEmpty)
        h.w(1, 0x05)
        #expect(h.r(1) == 0x05) // IER, not DLM
        h.w(7, 0x42)
        #expect(h.r(7) == 0x42)
    }

    /// serial8250_do_startup(): THRE test. Setting IER.THRI with an empty transmitter must
    /// raise the THRE interrupt each time; reading IIR clears it.
    @Test func threInterruptReRaiseAndStartupProbes() {
        let h = Harness()
        h.w(4, 0x0B) // DTR RTS OUT2
        h.w(1, 0x02)
        #expect(h.line == true)
        #expect(h.r(2) & 0x0F == 0x02)
        #expect(h.line == false)
        h.w(1, 0)
        #expect(h.line == false)
        h.w(1, 0x02)
        #expect(h.line == true)
        let iir = h.r(2)
        #expect(iir & 0x01 == 0 && iir & 0x0E == 0x02)
        // That IIR read consumed the THRE interrupt.
        #expect(h.r(2) & 0x01 == 1)
        #expect(h.line == false)
        // Each transmitted byte re-arms THRE with a fresh edge.
        h.irq.clear()
        h.w(0, 0x41)
        h.w(0, 0x42)
        #expect(h.out == [0x41, 0x42])
        #expect(h.irq.events == [.irq(4, true), .irq(4, false), .irq(4, true)])
        #expect(h.r(2) & 0x0F == 0x02)
        #expect(h.uart.bytesTransmitted == 2)
    }

    @Test func out2GatesTheInterruptLine() {
        let h = Harness()
        h.w(1, 0x02)
        #expect(h.line == false) // OUT2 clear: pending but not driven
        h.w(4, 0x08)
        #expect(h.line == true)
        h.w(4, 0x00)
        #expect(h.line == false)
    }

    @Test func receiveFIFOTriggerTimeoutAndBackpressure() {
        let h = Harness()
        h.w(2, 0x81) // FIFO on, trigger 8
        h.w(4, 0x08)
        h.w(1, 0x01)
        #expect(h.line == false)
        #expect(h.uart.receive([0x31, 0x32]) == 2)
        #expect(h.line == true)
        #expect(h.r(2) == 0xCC) // below trigger: character timeout
        #expect(h.uart.receive(Array(repeating: 0x33, count: 20)) == 14)
        #expect(h.uart.receiveSpace == 0)
        #expect(h.r(2) == 0xC4) // at/above trigger: data available
        #expect(h.r(0) == 0x31)
        #expect(h.spaceCalls == 1)
        #expect(h.r(0) == 0x32)
        #expect(h.spaceCalls == 1)
        for _ in 0..<14 { #expect(h.r(0) == 0x33) }
        #expect(h.r(5) & 0x01 == 0)
        #expect(h.r(2) == 0xC1)
        #expect(h.line == false)
        #expect(h.r(5) & 0x02 == 0) // never an overrun
        // FIFOs off: one byte holds.
        h.w(2, 0x00)
        #expect(h.uart.receive([1, 2, 3]) == 1)
        #expect(h.r(2) == 0x04)
        #expect(h.uart.bytesReceived == 17)
    }

    @Test func interruptPriority() {
        let h = Harness()
        h.w(4, 0x08)
        h.w(2, 0x01)
        h.w(1, 0x0B) // rx, thre, msr
        #expect(h.r(2) & 0x0F == 0x02)
        h.w(1, 0x00)
        h.w(1, 0x0B)
        h.uart.receive([7])
        #expect(h.r(2) & 0x0F == 0x04) // receive (trigger level 1) beats THRE
        _ = h.r(0)
        #expect(h.r(2) & 0x0F == 0x02) // then THRE
        #expect(h.r(2) & 0x0F == 0x01)
        // Modem status interrupt (lowest): loopback changes set deltas, but the IRQ pin
        // is disconnected in loopback; IIR still reports it.
        h.w(4, 0x1A)
        #expect(h.r(2) & 0x0F == 0x00)
        _ = h.r(6)
        #expect(h.r(2) & 0x0F == 0x01)
    }

    @Test func loopbackOverrunSetsLineStatus() {
        let h = Harness()
        h.w(4, 0x10)
        h.w(1, 0x04)
        h.w(0, 1) // FIFOs off: 1-byte holding register
        h.w(0, 2)
        #expect(h.r(2) & 0x0F == 0x06)
        #expect(h.r(5) & 0x02 != 0)
        #expect(h.r(5) & 0x02 == 0)
        #expect(h.r(0) == 1)
    }
}

struct NS8250TransmitBackpressureTests {
    @Test func refusedBytesWaitInTheFIFOUntilTheHostIsReady() {
        let irq = RecordingInterruptController()
        let uart = NS8250(irq: IRQLine(controller: irq, gsi: 4))
        var accepted: [UInt8] = []
        var room = 2
        uart.tryOutput = { b in
            guard room > 0 else { return false }
            room -= 1
            accepted.append(b)
            return true
        }
        uart.ioWrite(offset: 2, size: 1, value: 0x01) // FIFOs on
        uart.ioWrite(offset: 4, size: 1, value: 0x08) // OUT2
        uart.ioWrite(offset: 1, size: 1, value: 0x02) // THRI
        _ = uart.ioRead(offset: 2, size: 1)           // consume the enable-time THRE
        for b: UInt8 in [1, 2, 3, 4] { uart.ioWrite(offset: 0, size: 1, value: UInt32(b)) }
        #expect(accepted == [1, 2])
        #expect(uart.transmitPending == 2)
        #expect(uart.ioRead(offset: 5, size: 1) & 0x60 == 0) // THRE and TEMT clear
        #expect(irq.level(4) == false)
        #expect(uart.ioRead(offset: 2, size: 1) & 0x0F == 0x01)
        // Re-enabling THRI while the FIFO holds data does not fake an empty transmitter.
        uart.ioWrite(offset: 1, size: 1, value: 0x00)
        uart.ioWrite(offset: 1, size: 1, value: 0x02)
        #expect(irq.level(4) == false)
        room = 1
        uart.transmitterReady()
        #expect(accepted == [1, 2, 3])
        #expect(irq.level(4) == false)
        room = 10
        uart.transmitterReady()
        #expect(accepted == [1, 2, 3, 4])
        #expect(uart.ioRead(offset: 5, size: 1) & 0x60 == 0x60)
        #expect(irq.level(4) == true)
        #expect(uart.ioRead(offset: 2, size: 1) & 0x0F == 0x02)
        #expect(uart.bytesTransmitted == 4)
        // FCR "clear transmit FIFO" drops waiting bytes and frees the transmitter.
        room = 0
        uart.ioWrite(offset: 0, size: 1, value: 9)
        #expect(uart.transmitPending == 1)
        uart.ioWrite(offset: 2, size: 1, value: 0x05)
        #expect(uart.transmitPending == 0)
        #expect(uart.ioRead(offset: 5, size: 1) & 0x20 != 0)
    }
}
