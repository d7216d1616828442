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
    private var parked = 0
    private var halted = 0
    private var exited = 0
    private var wakeGeneration: UInt64 = 0
    private var threads: [HostThread] = []
    private var started = false
    private var joined = false

    /// Register state set on a vCPU's own thread before it first runs (the boot vCPU's
    /// entry state from the loader).
    private let initialStates: [Int: X86CPUState]

    public init(vcpus: [any VirtualCPU], handler: ExitHandler, initialStates: [Int: X86CPUState] = [:]) {
        self.vcpus = vcpus
        self.initialStates = initialStates
        self.handler = handler
        self.events = handler.events
        events.setHandler { [weak self] _ in self?.stopAll() }
    }

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
    public func pause() {
        control.withLock {
            pauseRequested = true
            flags.bitwiseOr(Self.pauseFlag, ordering: .releasing)
        }
        for cpu in vcpus { cpu.kick() }
        control.withLock {
            while parked + exited < vcpus.count && !stopping { control.wait() }
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
            if flags.load(ordering: .acquiring) != 0 && !controlPoint() { break }
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

    /// Parks while a pause is requested. Returns false when the vCPU must stop.
    private func controlPoint() -> Bool {
        control.withLock {
            while true {
                if stopping { return false }
                guard pauseRequested else { return true }
                parked += 1
                control.broadcast()
                while pauseRequested && !stopping { control.wait() }
                parked -= 1
            }
        }
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
            while !stopping && generation == wakeGeneration { control.wait() }
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
