/// A token bucket for the services' answers: `burst` at once, then `perSecond`. `now` is
/// a monotonic time in nanoseconds; time going backwards refills nothing.
public struct RateLimiter: Sendable {
    public let burst: Double
    public let perSecond: Double
    private var tokens: Double
    private var lastRefill: UInt64?

    public init(burst: Double, perSecond: Double) {
        self.burst = burst; self.perSecond = perSecond; tokens = burst
    }

    public mutating func take(now: UInt64) -> Bool {
        if let last = lastRefill, now > last {
            tokens = min(burst, tokens + Double(now - last) / 1e9 * perSecond)
        }
        lastRefill = max(lastRefill ?? now, now)
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}
