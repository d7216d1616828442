#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Time sources for the timer chips, injectable so tests drive time by hand.
///
/// - `monotonicNanoseconds`: never goes back; the PIT, the RTC's periodic/update
///   interrupts and deadlines are measured on it.
/// - `wallClockNanoseconds`: nanoseconds since the Unix epoch (UTC); the RTC's calendar.
public struct DeviceClock: Sendable {
    public var monotonicNanoseconds: @Sendable () -> UInt64
    public var wallClockNanoseconds: @Sendable () -> Int64

    public init(monotonicNanoseconds: @escaping @Sendable () -> UInt64,
                wallClockNanoseconds: @escaping @Sendable () -> Int64) {
        self.monotonicNanoseconds = monotonicNanoseconds
        self.wallClockNanoseconds = wallClockNanoseconds
    }

    /// The host's CLOCK_MONOTONIC and CLOCK_REALTIME.
    public static let host = DeviceClock(
        monotonicNanoseconds: {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
        },
        wallClockNanoseconds: {
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            return Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec)
        })
}

/// A clock for tests: both time sources advance only when told.
public final class ManualClock: @unchecked Sendable {
    public var monotonic: UInt64
    public var wall: Int64

    public init(monotonic: UInt64 = 1_000_000_000, wall: Int64 = 0) {
        self.monotonic = monotonic
        self.wall = wall
    }

    public func advance(nanoseconds: UInt64) {
        monotonic &+= nanoseconds
        wall &+= Int64(truncatingIfNeeded: nanoseconds)
    }

    public var deviceClock: DeviceClock {
        DeviceClock(monotonicNanoseconds: { [self] in self.monotonic },
                    wallClockNanoseconds: { [self] in self.wall })
    }
}
