/// What one local interface's DHCP server hands out (vmd(8) "LOCAL INTERFACES").
public struct LocalLease: Equatable, Sendable, Codable {
    public var link: LocalLink
    /// The guest's MAC: only requests from it (Ethernet source and chaddr) are answered.
    public var guestMAC: MACAddress
    /// The Ethernet source of replies: the host side of the tap.
    public var serverMAC: MACAddress
    /// The VM name, sent as the host name (option 12) when it is a valid host name.
    public var hostName: String?
    /// Seconds; 0xFFFF_FFFF is infinite.
    public var leaseSeconds: UInt32
    /// `local inet6`: the interface's /64, advertised for SLAAC (LocalIPv6Server).
    public var inet6: LocalInet6?
    /// Network boot (`boot device net`): the boot file the DHCP replies name (BOOTP `file`,
    /// option 67, the host address as next server and option 66) and the directory the
    /// built-in TFTP server (LocalTFTPServer) serves.
    public var netBoot: LocalNetBoot?

    public static let defaultLeaseSeconds: UInt32 = 86_400

    public init(link: LocalLink, guestMAC: MACAddress, serverMAC: MACAddress, hostName: String?,
                leaseSeconds: UInt32 = LocalLease.defaultLeaseSeconds) {
        self.link = link; self.guestMAC = guestMAC; self.serverMAC = serverMAC
        self.hostName = hostName; self.leaseSeconds = leaseSeconds
    }
}

/// The DHCP server of one local interface, a pure function of the guest's frames (plus a
/// rate limit): it sits in the VM's transmit path, takes every IPv4 UDP datagram for port
/// 67 (so none reaches the tap) and answers those it should with one frame for the guest.
///
/// Answered: DHCPDISCOVER → OFFER, DHCPREQUEST for the guest's address (selecting us, or
/// renewing/rebinding) → ACK, for another address → NAK, DHCPINFORM → ACK without a lease,
/// and plain BOOTP requests → BOOTREPLY. Never answered: anything not from the guest's MAC
/// (Ethernet source and chaddr), htype ≠ 1 or hlen ≠ 6, relayed requests (giaddr, hops),
/// a REQUEST selecting another server, DECLINE and RELEASE, a message the strict parser
/// rejects, and anything over the rate limit (a burst of 16, then 8 answers per second).
/// There is no state beyond the limit: the answer is always the same lease, as in OpenBSD's
/// vmd.
public struct LocalDHCPServer: Sendable {
    public enum Verdict: Equatable, Sendable {
        /// Not for the server: the frame goes on to the tap.
        case pass
        /// Taken; `reply` (a whole frame) goes to the guest, or nothing when nil.
        case consumed(reply: [UInt8]?)
    }

    public static let serverPort: UInt16 = 67
    public static let clientPort: UInt16 = 68
    public static let burst = 16.0
    public static let answersPerSecond = 8.0

    public let lease: LocalLease
    private var limiter = RateLimiter(burst: LocalDHCPServer.burst, perSecond: LocalDHCPServer.answersPerSecond)
    /// Counters for tests and logs.
    public private(set) var answered: UInt64 = 0
    public private(set) var ignored: UInt64 = 0
    public private(set) var rateLimited: UInt64 = 0

    public init(lease: LocalLease) { self.lease = lease }

    /// Looks at one frame the guest sent. `now` is a monotonic time in nanoseconds (for the
    /// rate limit only).
    public mutating func handle(frame: UnsafeRawBufferPointer, now: UInt64) -> Verdict {
        guard let ports = UDPDatagram.ports(frame), ports.destination == Self.serverPort else { return .pass }
        guard let reply = answer(frame: frame) else { ignored &+= 1; return .consumed(reply: nil) }
        guard limiter.take(now: now) else { rateLimited &+= 1; return .consumed(reply: nil) }
        answered &+= 1
        return .consumed(reply: reply)
    }

    public mutating func handle(frame: [UInt8], now: UInt64) -> Verdict {
        frame.withUnsafeBytes { handle(frame: $0, now: now) }
    }

    /// The reply frame for a request, or nil when it gets none. Pure.
    public func answer(frame: UnsafeRawBufferPointer) -> [UInt8]? {
        guard let d = UDPDatagram(frame: frame), d.sourcePort == Self.clientPort, d.destinationPort == Self.serverPort,
              d.sourceMAC == lease.guestMAC else { return nil }
        guard let m = try? DHCPMessage(parsing: d.payload) else { return nil }
        guard m.op == DHCPMessage.Op.request.rawValue, m.htype == 1, m.hlen == 6,
              Array(m.chaddr.prefix(6)) == lease.guestMAC, m.hops == 0, m.giaddr == .zero else { return nil }
        let guest = lease.link.guest, server = lease.link.host

        var r = DHCPMessage(op: .reply)
        r.xid = m.xid; r.flags = m.flags; r.chaddr = m.chaddr; r.hasCookie = true
        r.siaddr = server
        var type: DHCPMessage.MessageType?
        var leaseOptions = true
        if m.hasCookie, m.option(DHCPMessage.Option.messageType) != nil {
            guard let t = m.messageType else { return nil }
            switch t {
            case .discover:
                type = .offer
            case .request:
                if let sid = m.address(DHCPMessage.Option.serverIdentifier), sid != server { return nil }
                let wanted = m.address(DHCPMessage.Option.requestedAddress) ?? m.ciaddr
                type = wanted == guest ? .ack : .nak
            case .inform:
                type = .ack; leaseOptions = false
                r.ciaddr = m.ciaddr
            case .decline, .release, .offer, .ack, .nak:
                return nil
            }
        }
        // Plain BOOTP (no message type) gets a BOOTREPLY whose vendor area carries the
        // RFC 1497 options (mask, router, DNS), as OpenBSD's vmd sends.
        if type != .nak && leaseOptions { r.yiaddr = guest }
        if let type { r.options.append((DHCPMessage.Option.messageType, [type.rawValue])) }
        if type != nil { r.options.append((DHCPMessage.Option.serverIdentifier, server.bytes)) }
        if type == .nak {
            r.siaddr = .zero
        } else {
            if type != nil && leaseOptions {
                var lt: [UInt8] = []; lt.append(be: lease.leaseSeconds)
                r.options.append((DHCPMessage.Option.leaseTime, lt))
            }
            r.options.append((DHCPMessage.Option.subnetMask, IPv4Address(0xFFFF_FFFE).bytes))
            r.options.append((DHCPMessage.Option.router, server.bytes))
            r.options.append((DHCPMessage.Option.domainNameServer, server.bytes))
            if let h = lease.hostName, Self.isHostName(h) {
                r.options.append((DHCPMessage.Option.hostName, Array(h.utf8)))
            }
            if let boot = lease.netBoot, let file = Self.bootFileField(boot.bootFile) {
                // PXE clients read siaddr + file (BOOTP); others options 66/67.
                r.file = file
                r.options.append((DHCPMessage.Option.tftpServerName, Array("\(server)".utf8)))
                r.options.append((DHCPMessage.Option.bootFileName, Array(boot.bootFile.utf8)))
            }
        }
        // RFC 2131 4.1: to ciaddr when the client has one, broadcast for a NAK or when
        // the client asked for it, else to the leased address at the client's MAC.
        let broadcast = type == .nak || (m.ciaddr == .zero && m.flags & DHCPMessage.broadcastFlag != 0)
        let dst: IPv4Address = broadcast ? .broadcast : (m.ciaddr != .zero ? m.ciaddr : guest)
        let out = UDPDatagram(sourceMAC: lease.serverMAC, destinationMAC: broadcast ? [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] : lease.guestMAC,
                              source: server, destination: dst, sourcePort: Self.serverPort,
                              destinationPort: Self.clientPort, payload: r.bytes)
        return out.frame
    }

    public func answer(frame: [UInt8]) -> [UInt8]? { frame.withUnsafeBytes { answer(frame: $0) } }

    /// The 128-byte BOOTP `file` field for a boot file name (NUL-padded; nil when the name
    /// does not fit with its NUL or holds a NUL).
    public static func bootFileField(_ name: String) -> [UInt8]? {
        let b = Array(name.utf8)
        guard !b.isEmpty, b.count < 128, !b.contains(0) else { return nil }
        return b + [UInt8](repeating: 0, count: 128 - b.count)
    }

    /// RFC 1123 host names (letters, digits, '-', dot-separated labels of 1-63), as
    /// OpenBSD's res_hnok checks before vmd sends the VM name.
    public static func isHostName(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 253 else { return false }
        return s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            (1...63).contains(label.utf8.count) && label.first != "-" && label.last != "-"
                && label.utf8.allSatisfy { $0 < 128 && (Character(UnicodeScalar($0)).isLetter || Character(UnicodeScalar($0)).isNumber || $0 == UInt8(ascii: "-")) }
        }
    }
}
