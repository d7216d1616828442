import Boot
import Devices
import Testing
@testable import VMM

/// The PM1a event block's fixed power button: PWRBTN_STS (PM1_STS bit 8) set by a press,
/// cleared by writing one, and the level-triggered SCI on IRQ 9 while status & enable.
@Suite struct ACPIPMBlockTests {
    let irqs = RecordingInterruptController()
    let sciGSI = UInt32(ACPIPowerManagement.sciIRQ)

    func make() -> (ACPIPMBlock, ACPIPMBlock.EventBlock) {
        let pm = ACPIPMBlock(sci: IRQLine(controller: irqs, gsi: sciGSI))
        return (pm, pm.eventPorts)
    }

    @Test func aPressSetsTheStatusBitWithoutAnSCIWhileDisabled() {
        let (pm, ev) = make()
        pm.pressPowerButton()
        #expect(ev.ioRead(offset: 0, size: 2) == 0x0100)
        #expect(!irqs.level(sciGSI))
        #expect(irqs.events.isEmpty)
        // Enabling it afterwards raises the pending SCI.
        ev.ioWrite(offset: 2, size: 2, value: 0x0100)
        #expect(irqs.level(sciGSI))
        #expect(pm.sciAsserted)
    }

    @Test func theSCIIsALevelThatDropsWhenTheGuestClearsTheStatus() {
        let (pm, ev) = make()
        ev.ioWrite(offset: 2, size: 2, value: UInt32(ACPIPMBlock.powerButtonEnable))
        #expect(ev.ioRead(offset: 2, size: 2) == 0x0100)
        #expect(!irqs.level(sciGSI))
        pm.pressPowerButton()
        #expect(irqs.events == [.irq(sciGSI, true)])
        // A second press while pending changes nothing (no new edge).
        pm.pressPowerButton()
        #expect(irqs.events == [.irq(sciGSI, true)])
        // Writing zero clears nothing; writing the bit (even as a byte to PM1_STS+1) clears it.
        ev.ioWrite(offset: 0, size: 2, value: 0)
        #expect(ev.ioRead(offset: 0, size: 2) == 0x0100)
        ev.ioWrite(offset: 1, size: 1, value: 0x01)
        #expect(ev.ioRead(offset: 0, size: 2) == 0)
        #expect(irqs.events == [.irq(sciGSI, true), .irq(sciGSI, false)])
        // The next press is a new rising edge.
        pm.pressPowerButton()
        #expect(irqs.events.last == .irq(sciGSI, true))
        // Disabling the event drops the line but keeps the status.
        ev.ioWrite(offset: 2, size: 2, value: 0)
        #expect(!irqs.level(sciGSI))
        #expect(ev.ioRead(offset: 0, size: 4) == 0x0000_0100)
    }

    @Test func aDwordReadShowsStatusAndEnable() {
        let (pm, ev) = make()
        ev.ioWrite(offset: 0, size: 4, value: 0x0100_0000)  // PM1_EN = 0x0100 through a dword write
        pm.pressPowerButton()
        #expect(ev.ioRead(offset: 0, size: 4) == 0x0100_0100)
        #expect(irqs.level(sciGSI))
    }

    @Test func theMachineMapWiresTheSCIToIRQ9() throws {
        let bus = IOBus()
        let console = try Console(sink: .callback { _ in })
        let devices = try MachineMap.build(bus: bus, interrupts: irqs, events: MachineEvents(), console: console,
                                           memorySize: 64 << 20, vcpus: 1)
        devices.acpiPM.eventPorts.ioWrite(offset: 2, size: 2, value: 0x0100)
        devices.acpiPM.pressPowerButton()
        #expect(irqs.level(9))
    }
}
