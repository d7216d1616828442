import Testing
@testable import Devices

struct I8259Tests {
    final class Harness {
        let pic = I8259()
        let bus = IOBus()
        var outputs: [Bool] = []
        init() {
            try! pic.map(on: bus)
            pic.onOutputChange = { [unowned self] in self.outputs.append($0) }
        }
        func out(_ port: UInt16, _ v: UInt8) { bus.portWrite(port, size: 1, value: UInt32(v)) }
        func inb(_ port: UInt16) -> UInt8 { UInt8(bus.portRead(port, size: 1)) }

        /// arch/x86/kernel/i8259.c init_8259A(auto_eoi) then unmask.
        func linuxInit(autoEOI: Bool = false, masterMask: UInt8 = 0xFB, slaveMask: UInt8 = 0xFF) {
            out(0x21, 0xFF); out(0xA1, 0xFF)
            out(0x20, 0x11); out(0x21, 0x30); out(0x21, 0x04); out(0x21, autoEOI ? 0x03 : 0x01)
            out(0xA0, 0x11); out(0xA1, 0x38); out(0xA1, 0x02); out(0xA1, 0x01)
            out(0x21, masterMask); out(0xA1, slaveMask)
        }
    }

    @Test func linuxProbeAndInitGiveTheRightVectors() {
        let h = Harness()
        // probe_8259A: the mask register reads back.
        h.out(0xA1, 0xFF)
        h.out(0x21, 0xFB)
        #expect(h.inb(0x21) == 0xFB)
        h.linuxInit(masterMask: 0xFA, slaveMask: 0xEF) // IRQ0, cascade, IRQ12 unmasked
        #expect(h.pic.pendingInterrupt() == false)
        h.pic.setIRQ(0, level: true)
        h.pic.setIRQ(0, level: false)
        #expect(h.pic.pendingInterrupt() == true)
        #expect(h.pic.acknowledge() == 0x30)
        #expect(h.pic.pendingInterrupt() == false)
        // In service: ISR via OCW3 read-ISR (Linux's spurious check), then EOI.
        h.out(0x20, 0x0B)
        #expect(h.inb(0x20) == 0x01)
        h.out(0x20, 0x0A)
        h.out(0x20, 0x60) // specific EOI IRQ 0
        h.out(0x20, 0x0B)
        #expect(h.inb(0x20) == 0x00)
        h.out(0x20, 0x0A)
        // Slave IRQ 12 arrives through the cascade: vector 0x38 + 4.
        h.pic.setIRQ(12, level: true)
        #expect(h.pic.pendingInterrupt())
        #expect(h.pic.acknowledge() == 0x3C)
        h.out(0xA0, 0x64) // Linux: specific EOI on the slave, then on master IR2
        h.out(0x20, 0x62)
        #expect(h.pic.master.isr == 0 && h.pic.slave.isr == 0)
        // Masked inputs latch in IRR but do not interrupt.
        h.pic.setIRQ(1, level: true)
        #expect(h.pic.pendingInterrupt() == false)
        #expect(h.inb(0x20) & 0x02 != 0)
        h.out(0x21, 0xF8)
        #expect(h.pic.acknowledge() == 0x31)
        #expect(h.outputs.first == true)
    }

    @Test func priorityNestingAndNonSpecificEOI() {
        let h = Harness()
        h.linuxInit(masterMask: 0x00, slaveMask: 0x00)
        h.pic.setIRQ(3, level: true)
        #expect(h.pic.acknowledge() == 0x33)
        // A lower-priority request waits, a higher one nests.
        h.pic.setIRQ(5, level: true)
        #expect(h.pic.pendingInterrupt() == false)
        h.pic.setIRQ(1, level: true)
        #expect(h.pic.pendingInterrupt() == true)
        #expect(h.pic.acknowledge() == 0x31)
        h.out(0x20, 0x20) // non-specific EOI ends IRQ 1 (highest in service)
        #expect(h.pic.master.isr == 0x08)
        h.out(0x20, 0x20)
        #expect(h.pic.acknowledge() == 0x35)
        h.out(0x20, 0x20)
        // Rotation: set lowest priority to IR 5, so IR 6 is now the highest.
        h.out(0x20, 0xC5)
        h.pic.setIRQ(4, level: false); h.pic.setIRQ(4, level: true)
        h.pic.setIRQ(6, level: false); h.pic.setIRQ(6, level: true)
        #expect(h.pic.acknowledge() == 0x36)
    }

    @Test func autoEOISpuriousPollAndLevelMode() {
        let h = Harness()
        h.linuxInit(autoEOI: true, masterMask: 0x00, slaveMask: 0x00)
        h.pic.setIRQ(4, level: true)
        #expect(h.pic.acknowledge() == 0x34)
        #expect(h.pic.master.isr == 0)
        // No request: spurious IRQ 7.
        #expect(h.pic.acknowledge() == 0x37)
        #expect(h.pic.spuriousCount == 1)
        // Poll mode: OCW3 with P set, next read returns 0x80 | IR.
        h.pic.setIRQ(4, level: false)
        h.pic.setIRQ(6, level: true)
        h.out(0x20, 0x0C)
        #expect(h.inb(0x20) == 0x86)
        // ELCR: IRQ 10 level-triggered stays requested until the line drops.
        h.out(0x4D1, 0x04)
        #expect(h.inb(0x4D1) == 0x04)
        h.out(0x4D0, 0xFF)
        #expect(h.inb(0x4D0) == 0xF8) // IRQ 0-2 cannot be level
        h.pic.setIRQ(10, level: true)
        #expect(h.pic.acknowledge() == 0x3A)
        #expect(h.pic.slave.irr & 0x04 != 0)
        h.pic.setIRQ(10, level: false)
        #expect(h.pic.slave.irr & 0x04 == 0)
        // Edge requests (IRQ 1 cannot be level) stay latched in IRR after the line drops;
        // level requests (IRQ 3 now, per ELCR) do not.
        h.pic.setIRQ(1, level: true); h.pic.setIRQ(1, level: false)
        #expect(h.pic.master.irr & 0x02 != 0)
        h.pic.setIRQ(3, level: true); h.pic.setIRQ(3, level: false)
        #expect(h.pic.master.irr & 0x08 == 0)
    }

    @Test func slaveSpuriousGives15() {
        let h = Harness()
        h.linuxInit(masterMask: 0x00, slaveMask: 0x00)
        h.out(0xA1, 0x00)
        h.out(0x4D1, 0x08) // IRQ 11 level
        h.pic.setIRQ(11, level: true)
        #expect(h.pic.pendingInterrupt())
        // Master has IR2 latched (edge); the slave request goes away before INTA.
        h.pic.setIRQ(11, level: false)
        #expect(h.pic.acknowledge() == 0x3F)
    }
}
