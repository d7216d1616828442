import Hypervisor
import Synchronization

/// Runs a machine's vCPUs: one POSIX thread per vCPU looping `run()` → `ExitHandler`,
/// with pause/resume (kick every vCPU, park it), halted vCPUs, and a clean stop.
///
/// Run control lives in one small lock (`control`); the hot path only reads an atomic
/// word of request flags before each entry into the guest. A kick (`VirtualCPU.kick()`)
/// makes a running or about-to-run `run()` return `.interrupted`, so a flag set before the
/// kick is always seen before the vCPU enters the guest again.
public final class MachineRunner: @unchecked Sendable {
    public enum State: Equatable, Sendable { case created, running, paused, stopped }

    public let vcpus: [any VirtualCPU]
    public let handler: ExitHandler
    public let events: MachineEvents

    private static let stopFlag: UInt32 = 1
    private static let pauseFlag: UInt32 = 2
    private let flags = Atomic<UInt32>(0)

    private let control = ConditionLock()
    // All below guarded by `control`.
    private var stopping = false
    private var pauseRequested = false
    /// vCPUs parked by a pause (in `controlPoint`), their pending exits completed.
    private var paused = 0
    /// vCPUs waiting in `haltPoint`.
    private var parked = 0
    private var halted = 0
    /// Work posted by `onEachPausedVCPU`, run by parked vCPUs on their own threads.
    private var jobs: [Int: @Sendable () -> Void] = [:]
    private var jobsLeft = 0
    private var exited = 0
    private var wakeGeneration: UInt64 = 0
    private var threads: [HostThread] = []
    private var started = false
    private var joined = false

    /// Register state set on a vCPU's own thread before it first runs (the boot vCPU's
    /// entry state from the loader).
    private var initialStates: [Int: X86CPUState]

    public init(vcpus: [any VirtualCPU], handler: ExitHandler, initialStates: [Int: X86CPUState] = [:]) {
        self.vcpus = vcpus
        self.initialStates = initialStates
        self.handler = handler
        self.events = handler.events
        events.setHandler { [weak self] _ in self?.stopAll() }
    }

    /// Forgets the loader's entry states (a machine restored from a snapshot has its own).
    /// Call before `start()`.
    func discardInitialStates() { initialStates = [:] }

    public var state: State {
        control.withLock {
            if !started { return .created }
            if exited == vcpus.count || stopping { return .stopped }
            return pauseRequested ? .paused : .running
        }
    }

    /// Starts one thread per vCPU.
    public func start() throws {
        try control.withLock {
            guard !started else { return }
            started = true
            for i in vcpus.indices {
                do {
                    threads.append(try HostThread(name: "vcpu\(i)") { [self] in self.loop(i) })
                } catch {
                    // The threads already started stop again; the machine reports the error.
                    exited += vcpus.count - i
                    stopping = true
                    flags.store(Self.stopFlag, ordering: .releasing)
                    control.broadcast()
                    throw error
                }
            }
        }
    }

    /// Stops every vCPU and parks it; returns once all are parked (or the machine stopped).
    /// A parked vCPU has completed the exit its last run left half done
    /// (`VirtualCPU.completePendingExit`), so its registers are at an instruction boundary;
    /// a halted vCPU leaves its halt wait to park the same way.
    public func pause() {
        control.withLock {
            pauseRequested = true
            flags.bitwiseOr(Self.pauseFlag, ordering: .releasing)
            control.broadcast()
        }
        for cpu in vcpus { cpu.kick() }
        control.withLock {
            while paused + exited < vcpus.count && !stopping { control.wait() }
        }
    }

    /// Runs `body` on every vCPU's own thread while the machine is paused (KVM wants vCPU
    /// ioctls from the thread that runs the vCPU) and returns the results in vCPU order.
    /// Throws when the vCPUs are not all paused, or the machine stops meanwhile.
    public func onEachPausedVCPU<T: Sendable>(_ body: @escaping @Sendable (any VirtualCPU) throws -> T) throws -> [T] {
        let results = Mutex<[Int: Result<T, any Error>]>([:])
        try control.withLock {
            guard started, pauseRequested, !stopping, exited == 0, paused == vcpus.count, jobsLeft == 0 else {
                throw VMMError.machine("the vCPUs are not all paused")
            }
            for (i, cpu) in vcpus.enumerated() {
                jobs[i] = {
                    let r = Result { try body(cpu) }
                    results.withLock { $0[i] = r }
                }
            }
            jobsLeft = vcpus.count
            control.broadcast()
            while jobsLeft > 0 && !stopping { control.wait() }
            if jobsLeft > 0 {
                jobs.removeAll()
                jobsLeft = 0
                throw VMMError.machine("the machine stopped while its vCPUs were being read")
            }
        }
        let all = results.withLock { $0 }
        return try vcpus.indices.map { i in
            guard let r = all[i] else { throw VMMError.machine("vCPU \(i) did not run its work") }
            return try r.get()
        }
    }

    /// Lets parked vCPUs run again.
    public func resume() {
        control.withLock {
            pauseRequested = false
            flags.bitwiseAnd(~Self.pauseFlag, ordering: .releasing)
            control.broadcast()
        }
    }

    /// Wakes vCPUs that halted (an interrupt became pending for a backend that reports
    /// `.halt`). Any thread.
    public func wakeHalted() {
        control.withLock {
            wakeGeneration &+= 1
            control.broadcast()
        }
    }

    /// Asks the machine to stop; `wait()` then returns `outcome` (unless another outcome
    /// was requested first).
    public func stop(_ outcome: MachineOutcome) {
        events.request(outcome)
    }

    /// Waits until every vCPU thread has finished, then returns the machine's outcome.
    public func wait() -> MachineOutcome {
        let toJoin: [HostThread] = control.withLock {
            while exited < vcpus.count && started { control.wait() }
            if joined { return [] }
            joined = true
            return threads
        }
        for t in toJoin { t.join() }
        return events.outcome ?? .stopped(reason: "the machine was never started")
    }

    private func stopAll() {
        control.withLock {
            stopping = true
            flags.bitwiseOr(Self.stopFlag, ordering: .releasing)
            control.broadcast()
        }
        for cpu in vcpus { cpu.kick() }
    }

    // MARK: the vCPU thread

    private func loop(_ index: Int) {
        let cpu = vcpus[index]
        if let state = initialStates[index] {
            do { try cpu.setState(state) } catch {
                events.request(.error("cannot set the registers of vCPU \(index): \(error)"))
                control.withLock { exited += 1; control.broadcast() }
                return
            }
        }
        running: while true {
            if flags.load(ordering: .acquiring) != 0 && !controlPoint(index) { break }
            let exit: VCPUExit
            do {
                exit = try cpu.run()
            } catch {
                events.request(.error("vCPU \(index) cannot run: \(error)"))
                break
            }
            switch handler.handle(exit, vcpu: index) {
            case .resume, .interrupted:
                continue
            case .halted:
                if !haltPoint() { break running }
            case let .stop(outcome):
                events.request(outcome)
                break running
            }
        }
        control.withLock {
            exited += 1
            control.broadcast()
        }
    }

    /// Upper bound on follow-up exits completing one instruction (a `rep ins` of a whole
    /// buffer comes back a page at a time); past it the vCPU parks mid-instruction, which
    /// string instructions allow.
    static let maximumCompletionExits = 1 << 16

    private enum ParkStep { case stop, run, job(@Sendable () -> Void), wait }

    /// Parks while a pause is requested, running posted jobs (`onEachPausedVCPU`) on this
    /// thread. Returns false when the vCPU must stop.
    private func controlPoint(_ index: Int) -> Bool {
        var completed = false
        var counted = false
        while true {
            if !completed && flags.load(ordering: .acquiring) & Self.pauseFlag != 0 {
                completed = true
                if !completePendingExits(index) { return false }
            }
            let step: ParkStep = control.withLock {
                if stopping || !pauseRequested {
                    if counted { paused -= 1; counted = false }
                    return stopping ? .stop : .run
                }
                guard completed else { return .wait }   // pause requested after the check above
                if !counted {
                    counted = true
                    paused += 1
                    control.broadcast()
                }
                while pauseRequested && !stopping && jobs[index] == nil { control.wait() }
                if pauseRequested && !stopping, let job = jobs.removeValue(forKey: index) { return .job(job) }
                return .wait
            }
            switch step {
            case .stop: return false
            case .run: return true
            case .wait: continue
            case let .job(job):
                job()
                control.withLock {
                    jobsLeft -= 1
                    control.broadcast()
                }
            }
        }
    }

    /// Finishes the instruction the last exit left half done, handling any exits that
    /// needs. Returns false when the vCPU must stop.
    private func completePendingExits(_ index: Int) -> Bool {
        let cpu = vcpus[index]
        for _ in 0..<Self.maximumCompletionExits {
            let exit: VCPUExit?
            do {
                exit = try cpu.completePendingExit()
            } catch {
                events.request(.error("vCPU \(index) cannot complete its last exit: \(error)"))
                return false
            }
            guard let exit else { return true }
            switch handler.handle(exit, vcpu: index) {
            case .resume, .interrupted, .halted:
                continue
            case let .stop(outcome):
                events.request(outcome)
                return false
            }
        }
        return true
    }

    /// Waits while halted. Returns false when the vCPU must stop.
    private func haltPoint() -> Bool {
        let allHalted: Bool = control.withLock {
            halted += 1
            if halted == vcpus.count {
                halted -= 1
                return true
            }
            parked += 1
            control.broadcast()
            let generation = wakeGeneration
            // A pause takes the vCPU out of its halt to park in `controlPoint`; the next
            // run() after the resume reports the halt again.
            while !stopping && generation == wakeGeneration && !pauseRequested { control.wait() }
            parked -= 1
            halted -= 1
            return false
        }
        if allHalted {
            events.request(.halted)
            return false
        }
        return control.withLock { !stopping }
    }
}
