#if canImport(Glibc)
import Glibc
#endif

/// The device side of a consistent stop (docs/snapshot.md, "Pausing").
///
/// Every thread that works on devices or guest memory outside a vCPU — the virtio event
/// loop (ioeventfd notifies), the virtio-net receive thread, the device timer, the console
/// input — does each unit of work inside `pass { ... }`. `close()` (the machine's pause)
/// waits until no thread is inside and keeps new arrivals waiting at the gate until
/// `open()`; so between `close()` returning and `open()` nothing but the caller touches
/// device state or guest memory. vCPU threads do not pass the gate: the `MachineRunner`
/// parks them first.
///
/// One owner: the `Machine` creates the gate, hands it to the threads it starts, and is
/// the only one to close and open it. Lock rule: the gate is the outermost lock — pass it
/// before taking the device lock or a virtio function's lock, never while holding one, and
/// never from inside another `pass` (a nested pass would wait for its own close).
public final class QuiesceGate: @unchecked Sendable {
    private let control = ConditionLock()
    // All below guarded by `control`.
    private var closed = false
    private var dissolved = false
    private var inside = 0
    private var held: UInt64 = 0
    private var passes: UInt64 = 0
    /// Bumped by every `open()`.
    private var openings: UInt64 = 0
    /// Arrivals waiting at the closed gate.
    private var waiting = 0
    /// Arrivals an `open()` released that have not gone in yet: the next `close()` lets
    /// them through first, so quick pause/resume rounds cannot starve a device thread.
    private var released = 0

    public init() {}

    /// Runs `body` as one unit of device work; waits first while the gate is closed.
    @discardableResult
    public func pass<R>(_ body: () throws -> R) rethrows -> R {
        control.withLock {
            if closed && !dissolved {
                held &+= 1
                waiting += 1
                control.broadcast()
                let generation = openings
                while closed && !dissolved && generation == openings { control.wait() }
                if generation != openings { released -= 1 } else { waiting -= 1 }
            }
            inside += 1
            passes &+= 1
        }
        defer {
            control.withLock {
                inside -= 1
                if inside == 0 { control.broadcast() }
            }
        }
        return try body()
    }

    /// Closes the gate and waits for the threads inside to leave (and for the ones the last
    /// `open()` released to go in and leave).
    func close() {
        control.withLock {
            closed = true
            while (inside > 0 || released > 0) && !dissolved { control.wait() }
        }
    }

    /// Lets waiting and new arrivals through again.
    func open() {
        control.withLock {
            closed = false
            openings &+= 1
            released += waiting
            waiting = 0
            control.broadcast()
        }
    }

    /// Opens the gate for good (the machine is stopping: its threads must be able to run
    /// to their exit and be joined, paused or not).
    func dissolve() {
        control.withLock {
            dissolved = true
            control.broadcast()
        }
    }

    public var isClosed: Bool { control.withLock { closed && !dissolved } }

    /// Arrivals that found the gate closed and waited (each is a device thread that would
    /// have touched the machine during a pause). Tests wait on it instead of sleeping.
    public var heldArrivals: UInt64 { control.withLock { held } }

    /// Units of work that went through.
    public var completedPasses: UInt64 { control.withLock { passes } }

    /// Waits until `heldArrivals` is at least `count` or `seconds` pass; returns the value.
    public func waitForHeldArrivals(atLeast count: UInt64, seconds: Double) -> UInt64 {
        let deadline = monotonicSeconds() + seconds
        return control.withLock {
            while held < count {
                let left = deadline - monotonicSeconds()
                if left <= 0 { break }
                control.wait(seconds: left)
            }
            return held
        }
    }
}

private func monotonicSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}
