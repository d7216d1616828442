#if canImport(Glibc)
import Glibc
#endif

/// `local inet6` for one local interface: its /64 (vmd's choice out of the `local inet6`
/// prefix). The host side of the tap holds prefix::1, which is also the DNS server.
public struct LocalInet6: Equatable, Sendable, Codable {
    /// 16 bytes, the low 64 bits zero.
    public var prefix: [UInt8]
    public init?(prefix: [UInt8]) {
        guard prefix.count == 16, prefix[8...].allSatisfy({ $0 == 0 }) else { return nil }
        self.prefix = prefix
    }
    /// prefix::1, the host side's address.
    public var hostAddress: [UInt8] { var a = prefix; a[15] = 1; return a }

    /// The 16 bytes of an IPv6 address in text ("fd00:1::1"), nil when it is not one.
    public static func address(_ text: String) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: 16)
        // SAFETY: inet_pton writes 16 bytes for AF_INET6.
        return text.withCString { inet_pton(AF_INET6, $0, &out) } == 1 ? out : nil
    }

    public static func text(_ a: [UInt8]) -> String {
        guard a.count == 16 else { return "?" }
        var buf = [CChar](repeating: 0, count: 64)
        // SAFETY: inet_ntop reads 16 bytes and writes at most buf.count.
        return a.withUnsafeBytes { inet_ntop(AF_INET6, $0.baseAddress, &buf, socklen_t(buf.count)) } != nil
            ? String(cString: buf) : "?"
    }
}

/// The link-local address of a MAC (modified EUI-64, RFC 4291 appendix A): what Linux gives
/// the host side of the tap, so the RA's source is an address the host answers for.
public func linkLocalAddress(_ mac: MACAddress) -> [UInt8] {
    [0xFE, 0x80, 0, 0, 0, 0, 0, 0] + eui64(mac)
}

func eui64(_ mac: MACAddress) -> [UInt8] {
    let m = mac.count == 6 ? mac : [UInt8](repeating: 0, count: 6)
    return [m[0] ^ 0x02, m[1], m[2], 0xFF, 0xFE, m[3], m[4], m[5]]
}

/// IPv6 for a local interface, in the VM's network path like the DHCP server: a Router
/// Solicitation from the guest gets a Router Advertisement (the /64 with the on-link and
/// autonomous flags for SLAAC, the O flag, router lifetime, MTU, RDNSS = prefix::1, source
/// link-layer address), a DHCPv6 Information-Request (stateless, RFC 8415 18.2.6) gets a
/// Reply with the DNS server (option 23). Solicitations and everything to UDP 547 are taken
/// (never reach the tap); other IPv6 passes. Never answered: a frame not from the guest's
/// MAC, an RS whose hop limit is not 255 or whose ICMPv6 checksum or options are wrong
/// (RFC 4861 6.1.1), IPv6 with extension headers, DHCPv6 other than Information-Request,
/// a DHCPv6 option walk that runs past the message; rate limit as DHCP's. Unsolicited
/// advertisements to all nodes (ff02::1) come from `unsolicitedAdvertisement(now:)`, which
/// the network path calls when `nextAdvertisement` is due (RFC 4861 6.2.4, `intervals`).
public struct LocalIPv6Server: Sendable {
    public let lease: LocalLease
    public let inet6: LocalInet6
    private var schedule: AdvertisementSchedule
    private var limiter = RateLimiter(burst: LocalDHCPServer.burst, perSecond: LocalDHCPServer.answersPerSecond)
    public private(set) var answered: UInt64 = 0
    public private(set) var ignored: UInt64 = 0

    public static let routerLifetime: UInt16 = 1800
    public static let validLifetime: UInt32 = 86_400
    public static let preferredLifetime: UInt32 = 14_400
    public static let mtu: UInt32 = 1500
    static let ipv6HeaderLength = 40
    static let routerSolicitation: UInt8 = 133, routerAdvertisement: UInt8 = 134
    static let dhcpClientPort: UInt16 = 546, dhcpServerPort: UInt16 = 547
    static let informationRequest: UInt8 = 11, reply: UInt8 = 7

    public init?(lease: LocalLease, intervals: RouterAdvertisementIntervals = .rfc4861) {
        guard let i = lease.inet6 else { return nil }
        self.lease = lease; inet6 = i
        schedule = AdvertisementSchedule(intervals)
    }

    public var intervals: RouterAdvertisementIntervals { schedule.intervals }
    /// When the next unsolicited advertisement is due (the caller's nanoseconds); nil
    /// before the first, which is due at once.
    public var nextAdvertisement: UInt64? { schedule.next }
    /// Unsolicited advertisements sent so far.
    public var unsolicitedSent: Int { schedule.sent }

    /// The multicast Router Advertisement due at `now`, or nil when none is due yet; each
    /// one returned schedules the next.
    public mutating func unsolicitedAdvertisement(now: UInt64) -> [UInt8]? {
        schedule.take(now: now) ? advertisement(to: nil) : nil
    }

    public var routerAddress: [UInt8] { linkLocalAddress(lease.serverMAC) }

    public mutating func handle(frame f: UnsafeRawBufferPointer, now: UInt64) -> LocalDHCPServer.Verdict {
        let e = UDPDatagram.ethernetHeaderLength
        guard f.count >= e + Self.ipv6HeaderLength, UDPDatagram.be16(f, 12) == EtherType.ipv6 else { return .pass }
        let next = f[e + 6]
        let payloadStart = e + Self.ipv6HeaderLength
        let isRS = next == IPProtocol.icmpv6 && f.count > payloadStart && f[payloadStart] == Self.routerSolicitation
        let isDHCP = next == IPProtocol.udp && f.count >= payloadStart + 4 && UDPDatagram.be16(f, payloadStart + 2) == Self.dhcpServerPort
        guard isRS || isDHCP else { return .pass }
        guard let reply = isRS ? answerSolicitation(f) : answerDHCP(f) else { ignored &+= 1; return .consumed(reply: nil) }
        guard limiter.take(now: now) else { ignored &+= 1; return .consumed(reply: nil) }
        answered &+= 1
        return .consumed(reply: reply)
    }

    public mutating func handle(frame: [UInt8], now: UInt64) -> LocalDHCPServer.Verdict {
        frame.withUnsafeBytes { handle(frame: $0, now: now) }
    }

    /// The IPv6 packet of a frame from the guest: version 6, payload length inside the
    /// frame, the upper-layer checksum valid. (source, destination, hop limit, payload).
    func packet(_ f: UnsafeRawBufferPointer) -> (source: [UInt8], hopLimit: UInt8, payload: [UInt8])? {
        let e = UDPDatagram.ethernetHeaderLength
        guard Array(f[6..<12]) == lease.guestMAC, f[e] >> 4 == 6 else { return nil }
        let length = Int(UDPDatagram.be16(f, e + 4))
        guard length >= 4, f.count >= e + Self.ipv6HeaderLength + length else { return nil }
        let src = Array(f[(e + 8)..<(e + 24)]), dst = Array(f[(e + 24)..<(e + 40)])
        let payload = Array(f[(e + 40)..<(e + 40 + length)])
        guard Self.checksum(src, dst, f[e + 6], payload) == 0 else { return nil }
        return (src, f[e + 7], payload)
    }

    /// The upper-layer checksum over the IPv6 pseudo-header (RFC 8200 8.1).
    static func checksum(_ src: [UInt8], _ dst: [UInt8], _ next: UInt8, _ payload: [UInt8]) -> UInt16 {
        var pseudo: UInt32 = 0
        for a in [src, dst] { for i in stride(from: 0, to: 16, by: 2) { pseudo += UInt32(a[i]) << 8 | UInt32(a[i + 1]) } }
        pseudo += UInt32(payload.count >> 16) + UInt32(payload.count & 0xFFFF) + UInt32(next)
        return payload.withUnsafeBytes { Checksum.internet($0, initial: pseudo) }
    }

    func answerSolicitation(_ f: UnsafeRawBufferPointer) -> [UInt8]? {
        guard let p = packet(f), p.hopLimit == 255, p.payload.count >= 8, p.payload[1] == 0 else { return nil }
        // Options: every length non-zero and inside the message; a source link-layer option
        // is not allowed from the unspecified address.
        var at = 8
        var hasSLLA = false
        while at < p.payload.count {
            guard p.payload.count - at >= 2, p.payload[at + 1] > 0, at + Int(p.payload[at + 1]) * 8 <= p.payload.count else { return nil }
            if p.payload[at] == 1 { hasSLLA = true }
            at += Int(p.payload[at + 1]) * 8
        }
        let unspecified = p.source.allSatisfy { $0 == 0 }
        if unspecified && hasSLLA { return nil }
        return advertisement(to: unspecified ? nil : p.source)
    }

    /// The Router Advertisement, unicast to `destination` (the guest's MAC) or, when nil,
    /// to all nodes (ff02::1, 33:33:00:00:00:01).
    func advertisement(to destination: [UInt8]?) -> [UInt8] {
        var ra: [UInt8] = [Self.routerAdvertisement, 0, 0, 0, 64, 0x40]
        ra.append(be: Self.routerLifetime)
        ra.append(be: UInt32(0)); ra.append(be: UInt32(0))          // reachable, retrans
        ra += [1, 1] + lease.serverMAC                               // source link-layer address
        ra += [5, 1, 0, 0]; ra.append(be: Self.mtu)                  // MTU
        ra += [3, 4, 64, 0xC0]                                       // prefix: /64, on-link, autonomous
        ra.append(be: Self.validLifetime); ra.append(be: Self.preferredLifetime)
        ra += [0, 0, 0, 0] + inet6.prefix
        ra += [25, 3, 0, 0]; ra.append(be: UInt32(Self.routerLifetime)); ra += inet6.hostAddress   // RDNSS
        let dst: [UInt8] = destination ?? [0xFF, 0x02] + [UInt8](repeating: 0, count: 13) + [1]
        let dstMAC: MACAddress = destination == nil ? [0x33, 0x33, 0, 0, 0, 1] : lease.guestMAC
        return frame(next: IPProtocol.icmpv6, destination: dst, destinationMAC: dstMAC, payload: ra, checksumAt: 2)
    }

    func answerDHCP(_ f: UnsafeRawBufferPointer) -> [UInt8]? {
        guard let p = packet(f), p.payload.count >= 8 + 4,
              UInt16(p.payload[0]) << 8 | UInt16(p.payload[1]) == Self.dhcpClientPort,
              Int(UInt16(p.payload[4]) << 8 | UInt16(p.payload[5])) == p.payload.count else { return nil }
        let m = Array(p.payload[8...])
        guard m[0] == Self.informationRequest else { return nil }
        var at = 4
        var clientID: [UInt8]?
        while at < m.count {
            guard m.count - at >= 4 else { return nil }
            let code = UInt16(m[at]) << 8 | UInt16(m[at + 1]), len = Int(UInt16(m[at + 2]) << 8 | UInt16(m[at + 3]))
            guard at + 4 + len <= m.count else { return nil }
            if code == 1 { clientID = Array(m[(at + 4)..<(at + 4 + len)]) }
            if code == 3 || code == 4 || code == 25 { return nil }   // IA options: not in an Information-Request
            at += 4 + len
        }
        var r: [UInt8] = [Self.reply] + m[1..<4]
        func option(_ code: UInt16, _ data: [UInt8]) { r.append(be: code); r.append(be: UInt16(data.count)); r += data }
        if let clientID { option(1, clientID) }
        option(2, [0, 3, 0, 1] + lease.serverMAC)                   // server id: DUID-LL, Ethernet
        option(23, inet6.hostAddress)                                // DNS recursive name servers
        var udp: [UInt8] = []
        udp.append(be: Self.dhcpServerPort); udp.append(be: Self.dhcpClientPort)
        udp.append(be: UInt16(8 + r.count)); udp += [0, 0]
        udp += r
        return frame(next: IPProtocol.udp, destination: p.source, destinationMAC: lease.guestMAC, payload: udp, checksumAt: 6)
    }

    /// Ethernet + IPv6 (from the router's link-local address, hop limit 255) around
    /// `payload`, whose checksum (at `checksumAt`) is filled in.
    func frame(next: UInt8, destination: [UInt8], destinationMAC: MACAddress, payload: [UInt8], checksumAt: Int) -> [UInt8] {
        var payload = payload
        var sum = Self.checksum(routerAddress, destination, next, payload)
        if next == IPProtocol.udp && sum == 0 { sum = 0xFFFF }
        payload[checksumAt] = UInt8(sum >> 8); payload[checksumAt + 1] = UInt8(truncatingIfNeeded: sum)
        var out = destinationMAC + lease.serverMAC
        out.append(be: EtherType.ipv6)
        out += [0x60, 0, 0, 0]
        out.append(be: UInt16(payload.count))
        out += [next, 255]
        out += routerAddress + destination + payload
        return out
    }
}
