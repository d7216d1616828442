#if canImport(Glibc)
import Glibc
#endif
import Devices
import Hypervisor
import Synchronization
import Testing
@testable import VMM

/// The quiesce gate on its own, and the runner's side of pause: pending exits completed
/// before a vCPU parks, work run on the paused vCPUs' own threads.
@Suite struct QuiesceGateTests {
    @Test func closeWaitsForTheThreadInsideToLeave() throws {
        let gate = QuiesceGate()
        let entered = Flag(), release = Flag(), left = Flag()
        let inside = try HostThread(name: "gate-inside") {
            gate.pass {
                entered.set(true)
                while !release.value { usleep(100) }
                left.set(true)
            }
        }
        #expect(eventually { entered.value })
        let sawLeft = Flag()
        let closer = try HostThread(name: "gate-closer") {
            gate.close()
            sawLeft.set(left.value)
        }
        // The closer has closed the gate (new arrivals would wait) but must still be
        // waiting for the thread inside.
        #expect(eventually { gate.isClosed })
        release.set(true)
        closer.join()
        inside.join()
        #expect(sawLeft.value, "close() returned while a thread was still inside")
        gate.open()
    }

    @Test func anArrivalWaitsWhileClosedAndGoesOnWhenOpened() throws {
        let gate = QuiesceGate()
        gate.close()
        let ran = Flag()
        let arrival = try HostThread(name: "gate-arrival") { gate.pass { ran.set(true) } }
        #expect(gate.waitForHeldArrivals(atLeast: 1, seconds: 10) == 1)
        #expect(!ran.value)
        gate.open()
        arrival.join()
        #expect(ran.value)
        #expect(gate.completedPasses == 1)
    }

    /// Quick pause/resume rounds must not starve a device thread: a close right after an
    /// open first lets the arrivals that open released go through.
    @Test func anOpenReleasesTheHeldArrivalsEvenIfTheGateClosesAtOnce() throws {
        let gate = QuiesceGate()
        gate.close()
        let ran = Flag()
        let arrival = try HostThread(name: "gate-arrival") { gate.pass { ran.set(true) } }
        #expect(gate.waitForHeldArrivals(atLeast: 1, seconds: 10) == 1)
        gate.open()
        gate.close()
        #expect(ran.value, "the released arrival did not get through before the next close")
        arrival.join()
        gate.open()
    }

    @Test func dissolvingLetsWaitersThroughForGood() throws {
        let gate = QuiesceGate()
        gate.close()
        let arrival = try HostThread(name: "gate-arrival") { gate.pass {} }
        #expect(gate.waitForHeldArrivals(atLeast: 1, seconds: 10) == 1)
        gate.dissolve()
        arrival.join()
        gate.close()          // no effect any more: the machine is going away
        #expect(!gate.isClosed)
        gate.pass {}
        #expect(gate.completedPasses == 2)
    }

    /// Four threads hammer the gate; each of 200 closes must freeze the shared counter
    /// until the open (checked after one more thread was seen held at the gate), and each
    /// open must let them go on.
    @Test func nothingPassesBetweenCloseAndOpenUnderLoad() throws {
        let gate = QuiesceGate()
        let counter = Tally()
        let stop = Flag()
        let workers = try (0..<4).map { i in
            try HostThread(name: "gate-w\(i)") {
                while !stop.value {
                    gate.pass { counter.add() }
                }
            }
        }
        var frozenRounds = 0, thawedRounds = 0
        for _ in 0..<200 {
            let held = gate.heldArrivals
            gate.close()
            let atClose = counter.value
            _ = gate.waitForHeldArrivals(atLeast: held + 1, seconds: 10)
            if counter.value == atClose { frozenRounds += 1 }
            gate.open()
            // The held workers go on (else the next close would find them still waiting).
            if eventually({ counter.value > atClose }) { thawedRounds += 1 }
        }
        stop.set(true)
        for w in workers { w.join() }
        #expect(frozenRounds == 200)
        #expect(thawedRounds == 200)
        #expect(counter.value > 0)
    }
}

@Suite struct PauseRunnerTests {
    func makeRunner(_ cpus: [FakeVCPU], bus: IOBus = IOBus(), lock: DeviceLock = DeviceLock()) -> MachineRunner {
        MachineRunner(vcpus: cpus, handler: ExitHandler(bus: bus, deviceLock: lock, events: MachineEvents()))
    }

    /// A vCPU whose last exit needs two more exits to finish (a read, then a write) has
    /// both handled on its own thread before `pause()` returns.
    @Test func pauseCompletesThePendingExitBeforeTheVCPUParks() throws {
        let bus = IOBus(), lock = DeviceLock()
        let device = RecordingPortDevice()
        device.answers = [0x5A]
        try bus.mapPorts(device, name: "probe", base: 0x60, count: 1)
        let readBuf = ExitBuffer(), writeBuf = ExitBuffer(bytes: [0x77])
        let cpu = FakeVCPU(index: 0) { _ in .spinUntilKicked }
        cpu.completionScript.withLock {
            $0 = [.io(IOExit(port: 0x60, size: 1, isWrite: false, data: readBuf.pointer)),
                  .io(IOExit(port: 0x60, size: 1, isWrite: true, data: writeBuf.pointer))]
        }
        let runner = makeRunner([cpu], bus: bus, lock: lock)
        try runner.start()
        runner.pause()
        #expect(runner.state == .paused)
        #expect(lock.withLock { device.reads.count } == 1)
        #expect(readBuf.bytes(1) == [0x5A], "the read's value is stored before the vCPU parks")
        #expect(lock.withLock { device.writes.map(\.value) } == [0x77])
        // Two exits handed out, then the call that reports nothing left.
        #expect(cpu.completionCalls.load(ordering: .relaxed) == 3)
        runner.resume()
        runner.stop(.stopped(reason: "done"))
        #expect(runner.wait() == .stopped(reason: "done"))
    }

    @Test func workPostedToPausedVCPUsRunsOnTheirOwnThreads() throws {
        let cpus = (0..<3).map { i in FakeVCPU(index: i) { _ in .spinUntilKicked } }
        let runner = makeRunner(cpus)
        try runner.start()
        runner.pause()
        let names = try runner.onEachPausedVCPU { cpu in "\(cpu.index):\(currentThreadName())" }
        #expect(names == ["0:vcpu0", "1:vcpu1", "2:vcpu2"])
        runner.resume()
        #expect(throws: VMMError.self) { _ = try runner.onEachPausedVCPU { $0.index } }
        runner.stop(.stopped(reason: "done"))
        #expect(runner.wait() == .stopped(reason: "done"))
    }

    /// 300 pause/resume rounds on two busy vCPUs: while paused, the device they write to
    /// does not change across a round trip to every vCPU thread; after each resume they
    /// make progress again.
    @Test func repeatedPauseAndResumeFreezesAndThawsTheVCPUs() throws {
        let bus = IOBus(), lock = DeviceLock()
        let counter = CountingDevice()
        try bus.mapPorts(counter, name: "counter", base: 0x80, count: 1)
        let buf = ExitBuffer(bytes: [1])
        let cpus = (0..<2).map { i in
            FakeVCPU(index: i) { _ in .exit(.io(IOExit(port: 0x80, size: 1, isWrite: true, data: buf.pointer))) }
        }
        let runner = makeRunner(cpus, bus: bus, lock: lock)
        try runner.start()
        var frozen = 0, thawed = 0
        for _ in 0..<300 {
            runner.pause()
            let atPause = lock.withLock { counter.count }
            let indices = try runner.onEachPausedVCPU { $0.index }
            if indices == [0, 1] && lock.withLock({ counter.count }) == atPause { frozen += 1 }
            runner.resume()
            if eventually({ lock.withLock { counter.count } > atPause }) { thawed += 1 }
        }
        #expect(frozen == 300)
        #expect(thawed == 300)
        runner.stop(.stopped(reason: "done"))
        #expect(runner.wait() == .stopped(reason: "done"))
    }

    /// A vCPU waiting in its halt (backend reported `.halt`) leaves the wait to park, so a
    /// pause returns and work runs on it; after the resume it halts again.
    @Test func aHaltedVCPUParksForAPause() throws {
        let halting = FakeVCPU(index: 0) { _ in .exit(.halt) }
        let spinning = FakeVCPU(index: 1) { _ in .spinUntilKicked }
        let runner = makeRunner([halting, spinning])
        try runner.start()
        #expect(eventually { halting.runs.load(ordering: .relaxed) > 0 })
        runner.pause()
        #expect(try runner.onEachPausedVCPU { $0.index } == [0, 1])
        let runsAtPause = halting.runs.load(ordering: .relaxed)
        runner.resume()
        #expect(eventually { halting.runs.load(ordering: .relaxed) > runsAtPause })
        runner.stop(.stopped(reason: "done"))
        #expect(runner.wait() == .stopped(reason: "done"))
    }
}

/// The calling thread's name (/proc/thread-self/comm), as HostThread set it.
func currentThreadName() -> String {
    let fd = open("/proc/thread-self/comm", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 32)
    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    return String(decoding: buf.prefix(max(0, n)).filter { $0 != 10 }, as: UTF8.self)
}

/// A flag shared with test threads.
final class Flag: Sendable {
    private let bit = Atomic<Bool>(false)
    var value: Bool { bit.load(ordering: .acquiring) }
    func set(_ v: Bool = true) { bit.store(v, ordering: .releasing) }
}

/// A counter shared with test threads.
final class Tally: Sendable {
    private let n = Atomic<Int>(0)
    var value: Int { n.load(ordering: .acquiring) }
    func add() { n.add(1, ordering: .acquiringAndReleasing) }
}
