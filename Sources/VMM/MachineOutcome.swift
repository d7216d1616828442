import Synchronization

/// How a machine's run ended.
public enum MachineOutcome: Equatable, Sendable, CustomStringConvertible {
    /// The guest powered off (ACPI S5 through the PM1 control block, or the backend's
    /// system-shutdown event).
    case poweredOff
    /// The guest reset the machine: the i8042 reset line, a triple fault, the backend's
    /// system-reset event. We do not reboot: the run ends (status 0) with this reason.
    case reset(reason: String)
    /// The guest wrote value v to the debug-exit port; `status` is `(v << 1) | 1`, as with
    /// QEMU's isa-debug-exit, and becomes the process exit status (low 8 bits).
    case debugExit(status: Int32)
    /// The host stopped the machine (Ctrl-] on the console, SIGINT/SIGTERM, `stop()`).
    case stopped(reason: String)
    /// Every vCPU halted and nothing can wake them.
    case halted
    /// The machine could not continue.
    case error(String)

    /// The `vmm` process exit status for this outcome.
    public var exitStatus: Int32 {
        switch self {
        case .poweredOff, .reset, .stopped: return 0
        case let .debugExit(status): return status & 0xFF
        // Even, so it never looks like a debug-exit status (always odd).
        case .halted, .error: return 2
        }
    }

    public var description: String {
        switch self {
        case .poweredOff: return "guest powered off"
        case let .reset(reason): return "guest reset (\(reason)); the VM stops instead of rebooting"
        case let .debugExit(status):
            return "guest exited through the debug-exit port with status \(status & 0xFF)"
        case let .stopped(reason): return "VM stopped: \(reason)"
        case .halted: return "every vCPU halted with no interrupt to wake it; the VM stops"
        case let .error(why): return why
        }
    }
}

/// Where devices and exit handling report machine-level events (power off, reset,
/// debug exit, errors). The first request wins; it stops the machine.
public final class MachineEvents: @unchecked Sendable {
    private let lock = ConditionLock()
    private var first: MachineOutcome?
    private var onRequest: (@Sendable (MachineOutcome) -> Void)?
    private let requested = Atomic<Bool>(false)

    /// Cheap check (one atomic load) whether any stop was requested.
    @inline(__always) public var isRequested: Bool { requested.load(ordering: .acquiring) }

    public init() {}

    /// Installs the action run (once, outside this object's lock) for the first request.
    func setHandler(_ handler: @escaping @Sendable (MachineOutcome) -> Void) {
        lock.withLock { onRequest = handler }
    }

    /// Requests that the machine stop with `outcome`. Only the first request counts.
    public func request(_ outcome: MachineOutcome) {
        let handler: (@Sendable (MachineOutcome) -> Void)? = lock.withLock {
            guard first == nil else { return nil }
            first = outcome
            requested.store(true, ordering: .releasing)
            return onRequest
        }
        handler?(outcome)
    }

    /// The first outcome requested, if any.
    public var outcome: MachineOutcome? { lock.withLock { first } }
}
