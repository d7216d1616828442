#if canImport(Glibc)
import Glibc
#endif
import Devices
import Hypervisor
import Synchronization
import Testing
@testable import VMM

/// A port device counting writes, touched only under the device lock.
final class CountingDevice: PortIODevice, @unchecked Sendable {
    var count = 0
    func ioRead(offset: UInt16, size: Int) -> UInt32 { 0 }
    func ioWrite(offset: UInt16, size: Int, value: UInt32) { count += 1 }
}

/// Polls `condition` for up to 10 s (the machine may be loaded by parallel builds).
func eventually(_ condition: () -> Bool) -> Bool {
    for _ in 0..<10_000 {
        if condition() { return true }
        usleep(1000)
    }
    return condition()
}

@Suite struct MachineRunnerTests {
    func makeRunner(_ cpus: [FakeVCPU], bus: IOBus = IOBus(), lock: DeviceLock = DeviceLock(),
                    states: [Int: X86CPUState] = [:]) -> MachineRunner {
        MachineRunner(vcpus: cpus, handler: ExitHandler(bus: bus, deviceLock: lock, events: MachineEvents()),
                      initialStates: states)
    }

    @Test func aDebugExitOnOneVCPUStopsAllOfThem() throws {
        let bus = IOBus()
        let events = MachineEvents()
        let exitDev = DebugExit(onExit: { events.request(.debugExit(status: $0)) })
        try bus.mapPorts(exitDev, name: "debug-exit", base: 0xF4, count: 1)
        let buf = ExitBuffer(bytes: [3])
        let bsp = FakeVCPU(index: 0) { n in
            n < 100 ? .exit(.interrupted) : .exit(.io(IOExit(port: 0xF4, size: 1, isWrite: true, data: buf.pointer)))
        }
        let aps = (1..<4).map { i in FakeVCPU(index: i) { _ in .spinUntilKicked } }
        let runner = MachineRunner(vcpus: [bsp] + aps, handler: ExitHandler(bus: bus, deviceLock: DeviceLock(), events: events))
        try runner.start()
        #expect(runner.wait() == .debugExit(status: 7))
        #expect(runner.state == .stopped)
    }

    @Test func pauseParksEveryVCPUAndResumeLetsThemRun() throws {
        let bus = IOBus(), lock = DeviceLock()
        let counter = CountingDevice()
        try bus.mapPorts(counter, name: "counter", base: 0x80, count: 1)
        let buf = ExitBuffer(bytes: [1])
        let cpus = (0..<2).map { i in
            FakeVCPU(index: i) { _ in usleep(100); return .exit(.io(IOExit(port: 0x80, size: 1, isWrite: true, data: buf.pointer))) }
        }
        let runner = makeRunner(cpus, bus: bus, lock: lock)
        try runner.start()
        #expect(eventually { lock.withLock { counter.count } > 0 })
        runner.pause()
        #expect(runner.state == .paused)
        let atPause = lock.withLock { counter.count }
        #expect(atPause > 0)
        usleep(30_000)
        #expect(lock.withLock { counter.count } == atPause)
        runner.resume()
        #expect(eventually { lock.withLock { counter.count } > atPause })
        runner.stop(.stopped(reason: "test over"))
        #expect(runner.wait() == .stopped(reason: "test over"))
    }

    @Test func pauseInterruptsAVCPUThatNeverExitsOnItsOwn() throws {
        let cpus = (0..<3).map { i in FakeVCPU(index: i) { _ in .spinUntilKicked } }
        let runner = makeRunner(cpus)
        try runner.start()
        runner.pause()
        #expect(runner.state == .paused)
        runner.resume()
        runner.stop(.stopped(reason: "done"))
        #expect(runner.wait() == .stopped(reason: "done"))
    }

    @Test func everyVCPUHaltedEndsTheRun() throws {
        let cpus = (0..<2).map { i in FakeVCPU(index: i) { _ in .exit(.halt) } }
        let runner = makeRunner(cpus)
        try runner.start()
        #expect(runner.wait() == .halted)
    }

    @Test func aHaltedVCPUWaitsWhileAnotherRuns() throws {
        let ap = FakeVCPU(index: 1) { _ in .exit(.halt) }
        let bsp = FakeVCPU(index: 0) { n in
            n < 50 || ap.runs.load(ordering: .relaxed) == 0 ? .exit(.interrupted) : .exit(.systemShutdown)
        }
        let runner = makeRunner([bsp, ap])
        try runner.start()
        #expect(runner.wait() == .poweredOff)
        #expect(ap.runs.load(ordering: .relaxed) == 1)
    }

    @Test func aBackendErrorBecomesTheOutcome() throws {
        let cpu = FakeVCPU(index: 0) { _ in .fail("KVM_RUN failed: Bad address") }
        let runner = makeRunner([cpu])
        try runner.start()
        guard case let .error(why) = runner.wait() else { Issue.record("expected an error"); return }
        #expect(why.contains("vCPU 0") && why.contains("Bad address"))
    }

    @Test func theBootVCPUGetsItsEntryStateBeforeItRuns() throws {
        var state = X86CPUState()
        state.regs.rip = 0x10_0000
        state.regs.rbx = 0x7000
        let cpu = FakeVCPU(index: 0) { _ in .exit(.systemShutdown) }
        let runner = makeRunner([cpu], states: [0: state])
        try runner.start()
        #expect(runner.wait() == .poweredOff)
        #expect(cpu.lastState.regs.rip == 0x10_0000)
        #expect(cpu.lastState.regs.rbx == 0x7000)
    }

    @Test func stopBeforeStartEndsAtOnce() throws {
        let cpu = FakeVCPU(index: 0) { _ in .spinUntilKicked }
        let runner = makeRunner([cpu])
        runner.stop(.stopped(reason: "early"))
        try runner.start()
        #expect(runner.wait() == .stopped(reason: "early"))
        #expect(cpu.runs.load(ordering: .relaxed) == 0)
    }

    @Test func theFirstOutcomeWins() {
        let events = MachineEvents()
        events.request(.poweredOff)
        events.request(.error("later"))
        #expect(events.outcome == .poweredOff)
        #expect(events.isRequested)
    }
}
