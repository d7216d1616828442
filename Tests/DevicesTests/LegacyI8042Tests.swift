import Testing
@testable import Devices

struct I8042Tests {
    final class Harness {
        let irq = RecordingInterruptController()
        let kbc: I8042
        let bus = IOBus()
        var resets = 0
        init() {
            kbc = I8042(keyboardIRQ: IRQLine(controller: irq, gsi: 1), auxIRQ: IRQLine(controller: irq, gsi: 12))
            try! kbc.map(on: bus)
            kbc.onReset = { [unowned self] in self.resets += 1 }
        }
        var status: UInt8 { UInt8(bus.portRead(0x64, size: 1)) }
        func command(_ c: UInt8) { bus.portWrite(0x64, size: 1, value: UInt32(c)) }
        func data(_ d: UInt8) { bus.portWrite(0x60, size: 1, value: UInt32(d)) }
        func read() -> UInt8? {
            guard status & 1 != 0 else { return nil }
            return UInt8(bus.portRead(0x60, size: 1))
        }
    }

    /// drivers/input/serio/i8042.c: flush, self-test, CTR read/write, AUX checks.
    @Test func linuxProbeSequence() {
        let h = Harness()
        #expect(h.read() == nil) // i8042_flush finds nothing
        h.command(0xAA)
        #expect(h.read() == 0x55)
        h.command(0x20)
        let ctr = h.read()
        #expect(ctr == 0x45)
        h.command(0x60)
        h.data(0x45 & ~0x03 | 0x30) // interrupts off, both ports disabled
        h.command(0x20)
        #expect(h.read() == 0x74)
        // AUX loopback: 0xD3 0x5A comes back as AUX data.
        h.command(0xD3)
        h.data(0x5A)
        #expect(h.status & 0x21 == 0x21)
        #expect(h.read() == 0x5A)
        // Bit assignment test.
        h.command(0xA7)
        h.command(0x20)
        #expect(h.read()! & 0x20 != 0)
        h.command(0xA8)
        h.command(0x20)
        #expect(h.read()! & 0x20 == 0)
        // AUX IRQ test: with AUX interrupts on, loopback data raises IRQ 12.
        h.command(0x60)
        h.data(0x47)
        h.irq.clear()
        h.command(0xD3)
        h.data(0xA5)
        #expect(h.irq.level(12) == true)
        #expect(h.irq.level(1) == false)
        #expect(h.read() == 0xA5)
        #expect(h.irq.level(12) == false)
        h.command(0xA9)
        #expect(h.read() == 0x00)
        h.command(0xAB)
        #expect(h.read() == 0x00)
    }

    @Test func keyboardAnswersAndMouseTimesOut() {
        let h = Harness()
        h.data(0xF2)
        #expect(h.read() == 0xFA)
        #expect(h.read() == 0xAB)
        #expect(h.read() == 0x83)
        #expect(h.read() == nil)
        h.data(0xFF)
        #expect(h.read() == 0xFA)
        #expect(h.read() == 0xAA)
        h.data(0xED)
        #expect(h.read() == 0xFA)
        h.data(0x07)
        #expect(h.read() == 0xFA)
        h.command(0xD4)
        h.data(0xFF)
        #expect(h.status & 0x61 == 0x61) // output full, AUX, timeout
        #expect(h.read() == 0xFE)
    }

    @Test func eachQueuedByteGivesAFreshIRQEdge() {
        let h = Harness()
        h.data(0xF2)
        #expect(h.irq.events == [.irq(1, true)])
        _ = h.read()
        #expect(h.irq.events == [.irq(1, true), .irq(1, false), .irq(1, true)])
        _ = h.read(); _ = h.read()
        #expect(h.irq.level(1) == false)
        h.kbc.keyboardInput([0x1E, 0x9E])
        #expect(h.irq.level(1) == true)
        #expect(h.read() == 0x1E)
        #expect(h.read() == 0x9E)
    }

    @Test func resetLineAndA20() {
        let h = Harness()
        var a20: [Bool] = []
        h.kbc.onA20Change = { a20.append($0) }
        h.command(0xFF) // pulse nothing
        #expect(h.resets == 0)
        h.command(0xFE)
        #expect(h.resets == 1)
        h.command(0xD0)
        #expect(h.read() == 0x03)
        h.command(0xD1)
        h.data(0x01) // A20 off, reset line high
        #expect(h.resets == 1)
        #expect(a20 == [false])
        h.command(0xD1)
        h.data(0x02) // bit 0 clear: reset
        #expect(h.resets == 2)
        #expect(a20 == [false, true])
        #expect(h.kbc.resetCount == 2)
        #expect(h.status & 0x04 != 0) // system flag from the command byte
        #expect(h.status & 0x08 == 0) // last write was data
    }
}

struct DebugExitTests {
    @Test func statusIsValueShiftedOrOne() {
        var got: [Int32] = []
        let dev = DebugExit(onExit: { got.append($0) })
        dev.ioWrite(offset: 0, size: 1, value: 0)
        dev.ioWrite(offset: 0, size: 1, value: 0x10)
        dev.ioWrite(offset: 0, size: 2, value: 0x1234) // 1-byte device: low byte only
        #expect(got == [1, 0x21, 0x69])
        let wide = DebugExit(width: 4)
        wide.ioWrite(offset: 0, size: 4, value: 0x100)
        #expect(wide.exitStatus == 0x201)
    }
}
