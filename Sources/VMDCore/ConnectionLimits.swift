import Synchronization

/// How many control connections vmd serves at once (issue 11, hole 5: one member of the
/// socket's group held ~1020 idle connections, a thread each, and locked root out).
/// Each non-root user may hold `perUser`; all non-root users together `total - reservedForRoot`,
/// so root always finds `reservedForRoot` free; root alone may use all of `total`.
public struct ConnectionLimits: Sendable, Equatable {
    public var perUser: Int
    public var total: Int
    public var reservedForRoot: Int
    /// Seconds a connection may stay silent waiting for its next request (the first
    /// included) before vmd closes it; also the longest a reply may wait to be taken.
    public var idleTimeout: Double

    public init(perUser: Int = 16, total: Int = 128, reservedForRoot: Int = 16, idleTimeout: Double = 10) {
        self.perUser = perUser
        self.total = total
        self.reservedForRoot = reservedForRoot
        self.idleTimeout = idleTimeout
    }
}

/// Counts open control connections per uid: `admit` before serving one, `release` after.
public final class ConnectionGate: Sendable {
    public let limits: ConnectionLimits
    private let counts = Mutex<[UInt32: Int]>([:])

    public init(_ limits: ConnectionLimits) { self.limits = limits }

    /// Takes a slot for `uid`, or says why there is none.
    public func admit(uid: UInt32) -> String? {
        counts.withLock { c in
            let all = c.values.reduce(0, +)
            let mine = c[uid, default: 0]
            if uid == 0 {
                if all >= limits.total { return "too many connections to vmd (\(limits.total))" }
            } else {
                if mine >= limits.perUser { return "too many connections from uid \(uid) (at most \(limits.perUser))" }
                let users = all - c[0, default: 0]
                if users >= limits.total - limits.reservedForRoot || all >= limits.total { return "too many connections to vmd" }
            }
            c[uid] = mine + 1
            return nil
        }
    }

    public func release(uid: UInt32) {
        counts.withLock { c in
            let n = c[uid, default: 0] - 1
            c[uid] = n > 0 ? n : nil
        }
    }

    /// Open connections of `uid`, or of everyone (nil).
    public func open(uid: UInt32? = nil) -> Int {
        counts.withLock { c in uid.map { c[$0, default: 0] } ?? c.values.reduce(0, +) }
    }
}
