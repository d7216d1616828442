import Boot
import Devices
import Hypervisor
import Synchronization
import Testing
@testable import VMM

final class OutputCollector: @unchecked Sendable {
    private let lock = DeviceLock()
    private var bytes: [UInt8] = []
    func append(_ b: [UInt8]) { lock.withLock { bytes += b } }
    var text: String { lock.withLock { String(decoding: bytes, as: UTF8.self) } }
}

@Suite struct MachineMapTests {
    let bus = IOBus()
    let events = MachineEvents()
    let irqs = RecordingInterruptController()
    let output = OutputCollector()

    func build() throws -> MachineDevices {
        let out = output
        let console = try Console(sink: .callback { out.append($0) })
        return try MachineMap.build(bus: bus, interrupts: irqs, events: events, console: console,
                                    memorySize: 64 << 20, vcpus: 2)
    }

    func outb(_ port: UInt16, _ value: UInt8) -> ExitAction {
        let buf = ExitBuffer(bytes: [value])
        return ExitHandler(bus: bus, deviceLock: DeviceLock(), events: events)
            .handle(.io(IOExit(port: port, size: 1, isWrite: true, data: buf.pointer)), vcpu: 0)
    }

    func inb(_ port: UInt16) -> UInt8 {
        let buf = ExitBuffer()
        _ = ExitHandler(bus: bus, deviceLock: DeviceLock(), events: events)
            .handle(.io(IOExit(port: port, size: 1, isWrite: false, data: buf.pointer)), vcpu: 0)
        return buf.bytes(1)[0]
    }

    @Test func thePCPortMapIsWhereGuestsLookAndHasNoOverlaps() throws {
        let devices = try build()
        defer { withExtendedLifetime(devices) {} }   // the bus holds the i8042's ports unowned
        let entries = bus.ports.entries
        for (a, b) in zip(entries, entries.dropFirst()) {
            #expect(a.end <= b.base, "\(a.name) overlaps \(b.name)")
        }
        let expected: [(UInt16, String)] = [(0x3F8, "com1"), (0x3FF, "com1"), (0x60, "i8042 data"),
                                            (0x64, "i8042 command"), (0x70, "rtc"), (0x71, "rtc"),
                                            (0x80, "post"), (0xF4, "debug-exit"), (0xCF8, "pci"), (0xCFF, "pci"),
                                            (ACPIPowerManagement.pm1aEventPort, "acpi pm1a event"),
                                            (ACPIPowerManagement.pm1aControlPort, "acpi pm1a control")]
        for (port, name) in expected {
            #expect(bus.ports.lookup(UInt64(port))?.name == name, "port 0x\(String(port, radix: 16))")
        }
        // Ports the in-kernel irqchip and PIT own stay unmapped in user space.
        for port: UInt16 in [0x20, 0x21, 0xA0, 0x40, 0x43, 0x61] {
            #expect(bus.ports.lookup(UInt64(port)) == nil)
        }
        #expect(throws: BusError.self) { try bus.mapPorts(POSTCodeSink(), name: "clash", base: 0x3FC, count: 8) }
    }

    @Test func com1OutputReachesTheConsoleAndInputReachesTheGuest() throws {
        let devices = try build()
        defer { withExtendedLifetime(devices) {} }
        for b in Array("hi!\n".utf8) { _ = outb(0x3F8, b) }
        #expect(output.text == "hi!\n")
        devices.consoleInput(Array("ab".utf8))
        #expect(inb(0x3FD) & 1 == 1)          // LSR data ready
        #expect(inb(0x3F8) == UInt8(ascii: "a"))
        #expect(inb(0x3F8) == UInt8(ascii: "b"))
        #expect(inb(0x3FD) & 1 == 0)
    }

    @Test func consoleInputBeyondTheFIFOIsKeptUntilTheGuestReads() throws {
        let devices = try build()
        defer { withExtendedLifetime(devices) {} }
        _ = outb(0x3FA, 0x01)                 // FCR: enable FIFOs (16 bytes)
        let text = Array("0123456789abcdefghijklmnopqrstuvwxyz".utf8)
        devices.consoleInput(text)
        var got: [UInt8] = []
        for _ in 0..<100 where inb(0x3FD) & 1 == 1 { got.append(inb(0x3F8)) }
        #expect(got == text)
    }

    @Test func debugExitStopsWithTheGuestsStatus() throws {
        let devices = try build()
        defer { withExtendedLifetime(devices) {} }   // the bus holds the i8042's ports unowned
        #expect(outb(0xF4, 0x00) == .stop(.debugExit(status: 1)))
        #expect(events.outcome?.exitStatus == 1)
    }

    @Test func theI8042ResetLineResetsTheMachine() throws {
        let devices = try build()
        defer { withExtendedLifetime(devices) {} }   // the bus holds the i8042's ports unowned
        guard case .stop(.reset(let why)) = outb(0x64, 0xFE) else { Issue.record("no reset"); return }
        #expect(why.contains("i8042"))
    }

    @Test func anACPIS5WritePowersOff() throws {
        let devices = try build()
        defer { withExtendedLifetime(devices) {} }   // the bus holds the i8042's ports unowned
        let value = ACPIPowerManagement.sleepEnable | (ACPIPowerManagement.s5SleepType << ACPIPowerManagement.sleepTypeShift)
        let buf = ExitBuffer(bytes: [UInt8(value & 0xFF), UInt8(value >> 8)])
        let action = ExitHandler(bus: bus, deviceLock: DeviceLock(), events: events)
            .handle(.io(IOExit(port: ACPIPowerManagement.pm1aControlPort, size: 2, isWrite: true, data: buf.pointer)), vcpu: 0)
        #expect(action == .stop(.poweredOff))
    }

    @Test func pm1ControlReadsInACPIModeAndOtherSleepStatesDoNotPowerOff() throws {
        let devices = try build()
        defer { withExtendedLifetime(devices) {} }   // the bus holds the i8042's ports unowned
        let s3 = ACPIPowerManagement.sleepEnable | (1 << ACPIPowerManagement.sleepTypeShift)
        let buf = ExitBuffer(bytes: [UInt8(s3 & 0xFF), UInt8(s3 >> 8)])
        let action = ExitHandler(bus: bus, deviceLock: DeviceLock(), events: events)
            .handle(.io(IOExit(port: ACPIPowerManagement.pm1aControlPort, size: 2, isWrite: true, data: buf.pointer)), vcpu: 0)
        #expect(action == .resume)
        #expect(inb(ACPIPowerManagement.pm1aControlPort) & 1 == 1)   // SCI_EN
    }

    @Test func theRTCKnowsTheMemorySize() throws {
        let devices = try build()
        defer { withExtendedLifetime(devices) {} }   // the bus holds the i8042's ports unowned
        // CMOS 0x34/0x35: memory above 16 MiB in 64 KiB units.
        _ = outb(0x70, 0x34)
        let lo = inb(0x71)
        _ = outb(0x70, 0x35)
        let hi = inb(0x71)
        #expect(UInt32(lo) | UInt32(hi) << 8 == (64 - 16) * 16)
    }

    @Test func pciConfigSpaceShowsTheHostBridge() throws {
        let devices = try build()
        defer { withExtendedLifetime(devices) {} }   // the bus holds the i8042's ports unowned
        let addr = ExitBuffer(bytes: [0x00, 0x00, 0x00, 0x80])
        let h = ExitHandler(bus: bus, deviceLock: DeviceLock(), events: events)
        _ = h.handle(.io(IOExit(port: 0xCF8, size: 4, isWrite: true, data: addr.pointer)), vcpu: 0)
        let data = ExitBuffer()
        _ = h.handle(.io(IOExit(port: 0xCFC, size: 4, isWrite: false, data: data.pointer)), vcpu: 0)
        #expect(data.bytes(4) == [0x86, 0x80, 0x37, 0x12])     // 8086:1237
    }
}
