#if canImport(Glibc)
import Glibc
#endif
import Devices
import Synchronization

/// A local interface's network path: the VM's virtio-net device talks to this backend, which
/// hands the guest's frames to the tap except those its services take (DHCP; with
/// `local inet6` router solicitations and DHCPv6; with network boot TFTP to the host
/// address), and
/// gives the guest the services' replies before the tap's frames. Nothing listens on the
/// host: the answers never cross the tap.
///
/// Replies wait in a bounded queue (at most `maximumQueuedReplies`, more are dropped). The
/// VMM's network thread polls `pollDescriptor` (the tap) and `wakeDescriptor`, the read end
/// of a pipe that holds one byte exactly while replies wait (written and drained under the
/// queue's lock, so the two never disagree). With `local inet6` the thread also calls
/// `serviceTimers`, which queues the unsolicited router advertisements when they are due
/// (one at most waits: a guest that does not read gets no pile of them).
public final class LocalInterfaceBackend: NetworkBackend, @unchecked Sendable {
    private struct State {
        var dhcp: LocalDHCPServer
        var ipv6: LocalIPv6Server?
        var tftp: LocalTFTPServer?
        var replies: [[UInt8]] = []
    }
    public let inner: any NetworkBackend
    private let state: Mutex<State>
    private let pipeRead: Int32
    private let pipeWrite: Int32
    public static let maximumQueuedReplies = 32
    private let clock = ContinuousClock()
    private let start: ContinuousClock.Instant

    /// - advertisements: when unsolicited router advertisements go out (`local inet6`).
    public init(inner: any NetworkBackend, lease: LocalLease,
                advertisements: RouterAdvertisementIntervals = .rfc4861) throws {
        self.inner = inner
        let tftp = try lease.netBoot.map { boot throws(NetworkError) in try LocalTFTPServer(lease: lease, directory: boot.directory) }
        state = Mutex(State(dhcp: LocalDHCPServer(lease: lease), ipv6: LocalIPv6Server(lease: lease, intervals: advertisements),
                            tftp: tftp))
        start = clock.now
        var fds: [Int32] = [-1, -1]
        guard fds.withUnsafeMutableBufferPointer({ pipe($0.baseAddress) }) == 0 else {
            throw NetworkError.systemCall("pipe", errno: errno)
        }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        pipeRead = fds[0]; pipeWrite = fds[1]
    }

    deinit { close(pipeRead); close(pipeWrite) }

    public var name: String { "local \(inner.name)" }
    public var pollDescriptor: Int32? { inner.pollDescriptor }
    public var wakeDescriptor: Int32? { pipeRead }

    /// DHCP counters (answered, ignored, over the rate limit).
    public var dhcpCounters: (answered: UInt64, ignored: UInt64, rateLimited: UInt64) {
        state.withLock { ($0.dhcp.answered, $0.dhcp.ignored, $0.dhcp.rateLimited) }
    }

    /// Nanoseconds since the backend was made (the services' clock); 0 before it.
    private func nanoseconds(_ instant: ContinuousClock.Instant) -> UInt64 {
        let elapsed = (instant - start).components
        guard elapsed.seconds >= 0, elapsed.attoseconds >= 0 else { return 0 }
        return UInt64(elapsed.seconds) &* 1_000_000_000 &+ UInt64(elapsed.attoseconds / 1_000_000_000)
    }

    public func serviceTimers(now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        let ns = nanoseconds(now)
        let next = state.withLock { s -> UInt64? in
            guard s.ipv6 != nil else { return nil }
            if let ra = s.ipv6!.unsolicitedAdvertisement(now: ns), !s.replies.contains(ra) { queue(ra, &s) }
            return s.ipv6!.nextAdvertisement
        }
        return next.map { start + .nanoseconds(Int64(clamping: $0)) }
    }

    /// Unsolicited advertisements sent so far (`local inet6`).
    public var unsolicitedAdvertisements: Int { state.withLock { $0.ipv6?.unsolicitedSent ?? 0 } }

    private func queue(_ reply: [UInt8], _ s: inout State) {
        guard s.replies.count < Self.maximumQueuedReplies else { return }
        s.replies.append(reply)
        if s.replies.count == 1 { signal() }
    }

    /// With the tap's virtio-net header (passed through: the guest's offloads reach the
    /// tap) the services see the frame after it, their replies get an empty one in front.
    public var carriesVirtioHeader: Bool { inner.carriesVirtioHeader }
    public func setReceiveOffloads(_ offloads: NetworkOffloads) -> Bool { inner.setReceiveOffloads(offloads) }

    public func send(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard inner.carriesVirtioHeader else { return send(frame, plain: frame) }
        let h = VirtioNetHeader.length
        guard frame.count > h else { return false }
        let plain = UnsafeRawBufferPointer(rebasing: frame[h...])
        // A small UDP datagram with a partial checksum (the guest's kernel leaves it to the
        // device) may be for a service, which checks checksums: it sees a completed copy.
        let header = VirtioNetHeader(frame)
        if header.flags & VirtioNetHeader.Flag.needsChecksum != 0, header.gsoType == VirtioNetHeader.GSO.none,
           plain.count <= 2048, Self.isUDP(plain) {
            var copy = Array(plain)
            let start = Int(header.checksumStart), field = start + Int(header.checksumOffset)
            guard start < field, field + 2 <= copy.count else { return false }   // the device checked; be safe
            var sum = copy.withUnsafeBytes { Checksum.internet(UnsafeRawBufferPointer(rebasing: $0[start...])) }
            if sum == 0 { sum = 0xFFFF }
            copy[field] = UInt8(sum >> 8); copy[field + 1] = UInt8(truncatingIfNeeded: sum)
            return copy.withUnsafeBytes { send(frame, plain: $0) }
        }
        return send(frame, plain: plain)
    }

    /// IPv4 or IPv6 (no VLAN tag, no IPv6 extension header) carrying UDP.
    static func isUDP(_ f: UnsafeRawBufferPointer) -> Bool {
        guard f.count >= 34 else { return false }
        switch UDPDatagram.be16(f, 12) {
        case EtherType.ipv4: return f[23] == IPProtocol.udp
        case EtherType.ipv6: return f.count >= 54 && f[20] == IPProtocol.udp
        default: return false
        }
    }

    /// `plain`: the frame as the services read it; `frame`: what goes to the tap.
    private func send(_ frame: UnsafeRawBufferPointer, plain: UnsafeRawBufferPointer) -> Bool {
        let now = nanoseconds(clock.now)
        let wire = frame, frame = plain
        let verdict = state.withLock { s -> LocalDHCPServer.Verdict in
            var v = s.dhcp.handle(frame: frame, now: now)
            if v == .pass, s.ipv6 != nil { v = s.ipv6!.handle(frame: frame, now: now) }
            if v == .pass, let tftp = s.tftp, tftp.wants(frame) {
                let (taken, reply) = tftp.handle(frame: frame, now: now)
                if taken { v = .consumed(reply: reply) }
            }
            if case let .consumed(reply?) = v { queue(reply, &s) }
            return v
        }
        switch verdict {
        case .pass:
            return inner.send(wire)
        case .consumed:
            return true
        }
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        let reply = state.withLock { s -> [UInt8]? in
            guard !s.replies.isEmpty else { return nil }
            let r = s.replies.removeFirst()
            if s.replies.isEmpty { drain() }
            return r
        }
        if let reply {
            // The services' frames are whole and checksummed: an empty header in front.
            let h = inner.carriesVirtioHeader ? VirtioNetHeader.length : 0
            guard buffer.count >= h else { return 0 }
            if h > 0 { VirtioNetHeader().store(into: buffer) }
            let n = min(reply.count, buffer.count - h)
            reply.withUnsafeBytes { src in
                // SAFETY: h + n <= buffer.count, n <= reply.count.
                if n > 0 { (buffer.baseAddress! + h).copyMemory(from: src.baseAddress!, byteCount: n) }
            }
            return h + n
        }
        return inner.receive(into: buffer)
    }

    private func signal() {
        var one: UInt8 = 1
        // SAFETY: writes the one byte of `one`.
        _ = write(pipeWrite, &one, 1)
    }

    private func drain() {
        var byte: UInt8 = 0
        // SAFETY: reads at most one byte into `byte`; the pipe is non-blocking.
        while read(pipeRead, &byte, 1) > 0 {}
    }
}
