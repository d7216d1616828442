#if canImport(Glibc)
import Glibc
#endif
import Devices
import Testing
@testable import LocalNet

/// Unsolicited router advertisements (RFC 4861 6.2.4): nobody sends a solicitation here.
@Suite struct RouterAdvertisementTests {
    /// Checks an unsolicited RA frame: from the router to all nodes, valid checksum, our prefix.
    func expectMulticastAdvertisement(_ f: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(f.count > 54, sourceLocation: sourceLocation)
        guard f.count > 54 else { return }
        #expect(Array(f[0..<6]) == [0x33, 0x33, 0, 0, 0, 1] && Array(f[6..<12]) == serverMAC, sourceLocation: sourceLocation)
        #expect(f[12] == 0x86 && f[13] == 0xDD && f[20] == 58 && f[21] == 255, sourceLocation: sourceLocation)
        let src = Array(f[22..<38]), dst = Array(f[38..<54]), ra = Array(f[54...])
        #expect(src == linkLocalAddress(serverMAC) && LocalInet6.text(dst) == "ff02::1", sourceLocation: sourceLocation)
        #expect(LocalIPv6Server.checksum(src, dst, 58, ra) == 0 && ra[0] == 134, sourceLocation: sourceLocation)
        #expect(ra.count >= 72 && Array(ra[48..<64]) == inet6.prefix, "the prefix option", sourceLocation: sourceLocation)
    }

    @Test func theScheduleFollowsRFC4861() throws {
        // The defaults: 3 initial ones at most 16 s apart, then 198-600 s.
        var s = try #require(LocalIPv6Server(lease: lease6))
        #expect(s.intervals == .rfc4861 && s.nextAdvertisement == nil)
        let first = s.unsolicitedAdvertisement(now: 5)
        let ra = try #require(first, "the first is due at once")
        expectMulticastAdvertisement(ra)
        var now: UInt64 = 5
        var gaps: [UInt64] = []
        for _ in 0..<200 {
            let next = try #require(s.nextAdvertisement)
            #expect(next > now)
            let early = s.unsolicitedAdvertisement(now: next - 1), due = s.unsolicitedAdvertisement(now: next)
            #expect(early == nil, "never early")
            #expect(due != nil)
            gaps.append(next - now); now = next
        }
        #expect(s.unsolicitedSent == 201)
        let second: UInt64 = 1_000_000_000
        #expect(gaps.prefix(3).allSatisfy { $0 == 16 * second }, "\(gaps.prefix(3))")
        let later = gaps.dropFirst(3)
        #expect(later.allSatisfy { (198 * second...600 * second).contains($0) })
        #expect(Set(later).count > 100, "drawn at random, not fixed")

        // Initial ones shorter than MAX_INITIAL_RTR_ADVERT_INTERVAL stay as drawn.
        let short = try #require(RouterAdvertisementIntervals(minimum: .milliseconds(10), maximum: .milliseconds(20),
                                                              initialMaximum: .seconds(1), initialCount: 3))
        var t = try #require(LocalIPv6Server(lease: lease6, intervals: short))
        _ = t.unsolicitedAdvertisement(now: 0)
        let next = try #require(t.nextAdvertisement)
        #expect((10_000_000...20_000_000).contains(next))
        #expect(RouterAdvertisementIntervals(minimum: .seconds(2), maximum: .seconds(1), initialMaximum: .seconds(1), initialCount: 3) == nil)
        #expect(RouterAdvertisementIntervals(minimum: .zero, maximum: .seconds(1), initialMaximum: .seconds(1), initialCount: 3) == nil)
    }

    /// Through the network path as the VMM's network thread drives it: it calls
    /// `serviceTimers` and sleeps until the answer or the wake descriptor, whichever first.
    @Test func theBackendSendsThemWithoutASolicitation() throws {
        let intervals = try #require(RouterAdvertisementIntervals(minimum: .milliseconds(30), maximum: .milliseconds(60),
                                                                  initialMaximum: .milliseconds(20), initialCount: 2))
        let tap = MemoryNetworkBackend()
        let b = try LocalInterfaceBackend(inner: tap, lease: lease6, advertisements: intervals)
        let wake = try #require(b.wakeDescriptor)
        var buf = [UInt8](repeating: 0, count: 2048)
        var times: [ContinuousClock.Instant] = []   // when each arrived
        let deadline = ContinuousClock.now + .seconds(20)
        while times.count < 5, ContinuousClock.now < deadline {
            let now = ContinuousClock.now
            let due = try #require(b.serviceTimers(now: now), "always a next one")
            let c = (due - now).components
            var p = pollfd(fd: wake, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, Int32(c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000 + 1))
            while let n = buf.withUnsafeMutableBytes({ b.receive(into: $0) }) {
                expectMulticastAdvertisement(Array(buf.prefix(n)))
                times.append(ContinuousClock.now)
            }
        }
        #expect(times.count == 5)
        #expect(b.unsolicitedAdvertisements >= 5)
        #expect(tap.sent.isEmpty, "nothing crosses the tap")
        // One at most waits for a guest that does not read.
        for _ in 0..<4 { _ = b.serviceTimers(now: ContinuousClock.now + .seconds(60)) }
        let waiting = buf.withUnsafeMutableBytes { b.receive(into: $0) }, more = buf.withUnsafeMutableBytes { b.receive(into: $0) }
        #expect(waiting != nil && more == nil)
    }

    @Test func withoutInet6ThereIsNoTimer() throws {
        let b = try LocalInterfaceBackend(inner: MemoryNetworkBackend(), lease: lease)
        #expect(b.serviceTimers(now: .now) == nil)
    }
}
