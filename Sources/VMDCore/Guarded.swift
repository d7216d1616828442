import Foundation

/// State with one owner and one lock rule: every access goes through `withLock` (scoped:
/// no hand-placed lock/unlock pairs), which wakes every `wait` when it returns, so a
/// waiter re-checks its condition after each change.
public final class Guarded<State>: @unchecked Sendable {
    private let cond = NSCondition()
    // Only touched with `cond` held.
    private var state: State

    public init(_ state: State) { self.state = state }

    /// Runs `body` with the lock held; waiters are woken afterwards.
    @discardableResult
    public func withLock<T>(_ body: (inout State) throws -> T) rethrows -> T {
        cond.lock()
        defer {
            cond.broadcast()
            cond.unlock()
        }
        return try body(&state)
    }

    /// Sleeps until `ready` returns a value (checked with the lock held, after each change).
    public func wait<T>(until ready: (inout State) -> T?) -> T {
        cond.lock()
        defer { cond.unlock() }
        while true {
            if let v = ready(&state) { return v }
            cond.wait()
        }
    }

    /// As `wait(until:)`, giving up at `deadline` (nil then).
    public func wait<T>(until ready: (inout State) -> T?, deadline: Date) -> T? {
        cond.lock()
        defer { cond.unlock() }
        while true {
            if let v = ready(&state) { return v }
            if Date() >= deadline { return nil }
            _ = cond.wait(until: min(deadline, Date().addingTimeInterval(0.2)))
        }
    }
}
