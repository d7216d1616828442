import Devices
import Hypervisor
import Testing
@testable import VMM

@Suite struct ExitHandlerTests {
    let bus = IOBus()
    let events = MachineEvents()
    var handler: ExitHandler { ExitHandler(bus: bus, deviceLock: DeviceLock(), events: events) }

    @Test func portWriteReachesTheDeviceAtItsOffset() throws {
        let dev = RecordingPortDevice()
        try bus.mapPorts(dev, name: "dev", base: 0x3F8, count: 8)
        let buf = ExitBuffer(bytes: [0x41])
        let action = handler.handle(.io(IOExit(port: 0x3F9, size: 1, isWrite: true, data: buf.pointer)), vcpu: 0)
        #expect(action == .resume)
        #expect(dev.writes.count == 1)
        #expect(dev.writes.first?.offset == 1)
        #expect(dev.writes.first?.value == 0x41)
    }

    @Test func portReadStoresLittleEndianValueOfTheAccessSize() throws {
        let dev = RecordingPortDevice()
        dev.answers = [0xAABB_CCDD]
        try bus.mapPorts(dev, name: "dev", base: 0xCF8, count: 8)
        let buf = ExitBuffer(bytes: [0x11, 0x22, 0x33, 0x44, 0x55])
        _ = handler.handle(.io(IOExit(port: 0xCFC, size: 2, isWrite: false, data: buf.pointer)), vcpu: 0)
        #expect(buf.bytes(5) == [0xDD, 0xCC, 0x33, 0x44, 0x55])
        #expect(dev.reads.first?.size == 2)
    }

    @Test func stringOutputWritesEveryItemInOrder() throws {
        let dev = RecordingPortDevice()
        try bus.mapPorts(dev, name: "dev", base: 0x3F8, count: 8)
        let buf = ExitBuffer(bytes: Array("hello".utf8))
        _ = handler.handle(.io(IOExit(port: 0x3F8, size: 1, count: 5, isWrite: true, data: buf.pointer)), vcpu: 0)
        #expect(dev.writes.map { UInt8($0.value) } == Array("hello".utf8))
    }

    @Test func stringInputFillsEveryItem() throws {
        let dev = RecordingPortDevice()
        dev.answers = [0x1234, 0x5678, 0x9ABC]
        try bus.mapPorts(dev, name: "dev", base: 0x1F0, count: 8)
        let buf = ExitBuffer()
        _ = handler.handle(.io(IOExit(port: 0x1F0, size: 2, count: 3, isWrite: false, data: buf.pointer)), vcpu: 0)
        #expect(buf.bytes(6) == [0x34, 0x12, 0x78, 0x56, 0xBC, 0x9A])
        #expect(dev.reads.count == 3)
    }

    @Test func unmappedPortReadsAllOnes() {
        let buf = ExitBuffer()
        _ = handler.handle(.io(IOExit(port: 0x2F8, size: 4, isWrite: false, data: buf.pointer)), vcpu: 0)
        #expect(buf.bytes(4) == [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(bus.unhandledPortAccesses == 1)
    }

    @Test func mmioAccessesUseTheMMIOBus() throws {
        let dev = RecordingMMIODevice()
        dev.readValue = 0x0102_0304_0506_0708
        try bus.mapMMIO(dev, name: "dev", base: 0xC000_0000, length: 0x1000)
        let buf = ExitBuffer(bytes: [0xEF, 0xBE, 0xAD, 0xDE])
        _ = handler.handle(.mmio(MMIOExit(address: 0xC000_0010, size: 4, isWrite: true, data: buf.pointer)), vcpu: 1)
        #expect(dev.writes.first?.offset == 0x10)
        #expect(dev.writes.first?.value == 0xDEAD_BEEF)
        let out = ExitBuffer()
        _ = handler.handle(.mmio(MMIOExit(address: 0xC000_0000, size: 8, isWrite: false, data: out.pointer)), vcpu: 1)
        #expect(out.bytes(8) == [8, 7, 6, 5, 4, 3, 2, 1])
    }

    @Test func impossibleAccessSizesStopTheMachineWithAMessage() {
        let buf = ExitBuffer()
        let a = handler.handle(.io(IOExit(port: 0x80, size: 3, isWrite: true, data: buf.pointer)), vcpu: 2)
        guard case let .stop(.error(why)) = a else { Issue.record("expected an error, got \(a)"); return }
        #expect(why.contains("vCPU 2") && why.contains("0x80"))
        let b = handler.handle(.io(IOExit(port: 0x80, size: 1, count: 5000, isWrite: true, data: buf.pointer)), vcpu: 0)
        #expect(b != .resume)
        let c = handler.handle(.mmio(MMIOExit(address: 0, size: 16, isWrite: false, data: buf.pointer)), vcpu: 0)
        #expect(c != .resume)
    }

    @Test func aDeviceEventDuringTheAccessStopsTheMachine() throws {
        let events = self.events
        let dev = DebugExit(onExit: { events.request(.debugExit(status: $0)) })
        try bus.mapPorts(dev, name: "debug-exit", base: 0xF4, count: 1)
        let buf = ExitBuffer(bytes: [0x10])
        let action = handler.handle(.io(IOExit(port: 0xF4, size: 1, isWrite: true, data: buf.pointer)), vcpu: 0)
        #expect(action == .stop(.debugExit(status: 0x21)))
        #expect(MachineOutcome.debugExit(status: 0x21).exitStatus == 0x21)
    }

    @Test func backendEventsMapToOutcomes() {
        let h = handler
        #expect(h.handle(.halt, vcpu: 0) == .halted)
        #expect(h.handle(.interrupted, vcpu: 0) == .interrupted)
        #expect(h.handle(.systemShutdown, vcpu: 0) == .stop(.poweredOff))
        guard case .stop(.reset(let why)) = h.handle(.shutdown(reason: "triple fault"), vcpu: 3) else {
            Issue.record("a shutdown exit must reset"); return
        }
        #expect(why.contains("triple fault") && why.contains("vCPU 3"))
        guard case .stop(.reset) = h.handle(.systemReset, vcpu: 0) else { Issue.record("system reset"); return }
        guard case .stop(.error(let e)) = h.handle(.failure("KVM_EXIT_INTERNAL_ERROR at rip 0x1000"), vcpu: 0) else {
            Issue.record("failure"); return
        }
        #expect(e.contains("rip 0x1000"))
    }

    @Test func outcomesHaveTheDocumentedExitStatuses() {
        #expect(MachineOutcome.poweredOff.exitStatus == 0)
        #expect(MachineOutcome.reset(reason: "i8042").exitStatus == 0)
        #expect(MachineOutcome.stopped(reason: "x").exitStatus == 0)
        #expect(MachineOutcome.debugExit(status: 1).exitStatus == 1)
        #expect(MachineOutcome.debugExit(status: 0x1FF).exitStatus == 0xFF)
        #expect(MachineOutcome.error("x").exitStatus == 2)
        #expect(MachineOutcome.halted.exitStatus == 2)
    }
}
