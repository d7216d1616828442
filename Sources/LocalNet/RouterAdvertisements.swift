/// When a local interface's router sends unsolicited Router Advertisements (RFC 4861
/// section 6.2.4): the first when the interface starts advertising, then at intervals drawn
/// uniformly from [MinRtrAdvInterval, MaxRtrAdvInterval]; for the first
/// MAX_INITIAL_RTR_ADVERTISEMENTS an interval longer than MAX_INITIAL_RTR_ADVERT_INTERVAL is
/// cut to it, so a host that missed the first hears the router again soon.
public struct RouterAdvertisementIntervals: Sendable, Equatable {
    /// MinRtrAdvInterval.
    public var minimum: Duration
    /// MaxRtrAdvInterval (the RA's router lifetime, 1800 s, must not be shorter).
    public var maximum: Duration
    /// MAX_INITIAL_RTR_ADVERT_INTERVAL.
    public var initialMaximum: Duration
    /// MAX_INITIAL_RTR_ADVERTISEMENTS.
    public var initialCount: Int

    /// Nil unless 0 < minimum <= maximum, initialMaximum > 0 and initialCount >= 0.
    public init?(minimum: Duration, maximum: Duration, initialMaximum: Duration, initialCount: Int) {
        guard minimum > .zero, minimum <= maximum, initialMaximum > .zero, initialCount >= 0 else { return nil }
        self.minimum = minimum; self.maximum = maximum
        self.initialMaximum = initialMaximum; self.initialCount = initialCount
    }

    /// The RFC's defaults: MaxRtrAdvInterval 600 s, MinRtrAdvInterval 0.33 of it (198 s),
    /// the first 3 advertisements at most 16 s apart.
    public static let rfc4861 = RouterAdvertisementIntervals(minimum: .seconds(198), maximum: .seconds(600),
                                                             initialMaximum: .seconds(16), initialCount: 3)!
}

/// The unsolicited-advertisement timer of one interface, in the caller's monotonic
/// nanoseconds.
struct AdvertisementSchedule: Sendable {
    let intervals: RouterAdvertisementIntervals
    /// When the next one is due; nil before the first.
    private(set) var next: UInt64?
    private(set) var sent = 0

    init(_ intervals: RouterAdvertisementIntervals) { self.intervals = intervals }

    /// Whether one is due at `now`; if so it counts as sent and the next is scheduled.
    mutating func take(now: UInt64) -> Bool {
        if let next, now < next { return false }
        sent += 1
        next = now &+ interval()
        return true
    }

    /// The interval after the advertisement just sent (the `sent`-th).
    func interval() -> UInt64 {
        let lo = Self.nanoseconds(intervals.minimum), hi = Self.nanoseconds(intervals.maximum)
        let drawn = UInt64.random(in: lo...hi)
        return sent <= intervals.initialCount ? min(drawn, Self.nanoseconds(intervals.initialMaximum)) : drawn
    }

    static func nanoseconds(_ d: Duration) -> UInt64 {
        let c = d.components
        return UInt64(max(0, c.seconds)) &* 1_000_000_000 &+ UInt64(max(0, c.attoseconds) / 1_000_000_000)
    }
}
