/// Ethernet II / IPv4 / UDP framing for the services that answer inside a VM's network path
/// (the local interface's DHCP server). Decoding never traps: every length is checked
/// against the bytes at hand before it is used.

public typealias MACAddress = [UInt8]

public enum EtherType {
    public static let ipv4: UInt16 = 0x0800
    public static let arp: UInt16 = 0x0806
    public static let ipv6: UInt16 = 0x86DD
}

public enum IPProtocol {
    public static let udp: UInt8 = 17
    public static let icmpv6: UInt8 = 58
}

/// The fields of an Ethernet + IPv4 + UDP frame a service needs, and the UDP payload.
public struct UDPDatagram: Equatable, Sendable {
    public var sourceMAC: MACAddress
    public var destinationMAC: MACAddress
    public var source: IPv4Address
    public var destination: IPv4Address
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var payload: [UInt8]

    public init(sourceMAC: MACAddress, destinationMAC: MACAddress, source: IPv4Address, destination: IPv4Address,
                sourcePort: UInt16, destinationPort: UInt16, payload: [UInt8]) {
        self.sourceMAC = sourceMAC; self.destinationMAC = destinationMAC
        self.source = source; self.destination = destination
        self.sourcePort = sourcePort; self.destinationPort = destinationPort
        self.payload = payload
    }

    public static let ethernetHeaderLength = 14
    public static let ipv4HeaderLength = 20
    public static let udpHeaderLength = 8

    /// Only the UDP ports of an IPv4 frame, without copying anything (the per-frame test of
    /// the transmit path: is this for one of our services?). nil for anything else, and for
    /// fragments other than the first.
    public static func ports(_ f: UnsafeRawBufferPointer) -> (source: UInt16, destination: UInt16)? {
        guard f.count >= ethernetHeaderLength + ipv4HeaderLength + udpHeaderLength,
              be16(f, 12) == EtherType.ipv4, f[14] >> 4 == 4, f[23] == IPProtocol.udp else { return nil }
        let ihl = Int(f[14] & 0xF) * 4
        guard ihl >= ipv4HeaderLength, f.count >= ethernetHeaderLength + ihl + udpHeaderLength else { return nil }
        let u = ethernetHeaderLength + ihl
        return (be16(f, u), be16(f, u + 2))
    }

    /// Decodes a whole frame: Ethernet II (no VLAN tag), IPv4 (version 4, header length
    /// 20-60 inside the total length, valid header checksum, not a fragment), UDP (length
    /// inside the IP payload, checksum valid when present). nil when any of it is wrong.
    public init?(frame f: UnsafeRawBufferPointer) {
        let e = Self.ethernetHeaderLength
        guard f.count >= e + Self.ipv4HeaderLength + Self.udpHeaderLength,
              Self.be16(f, 12) == EtherType.ipv4 else { return nil }
        let vihl = f[e]
        let ihl = Int(vihl & 0xF) * 4
        guard vihl >> 4 == 4, ihl >= Self.ipv4HeaderLength else { return nil }
        let total = Int(Self.be16(f, e + 2))
        guard total >= ihl + Self.udpHeaderLength, e + total <= f.count else { return nil }
        // More-fragments set or a fragment offset: a fragment, which no DHCP client sends.
        guard Self.be16(f, e + 6) & 0x3FFF == 0, f[e + 9] == IPProtocol.udp else { return nil }
        guard Checksum.internet(UnsafeRawBufferPointer(rebasing: f[e..<(e + ihl)])) == 0 else { return nil }
        let u = e + ihl
        let udpLength = Int(Self.be16(f, u + 4))
        guard udpLength >= Self.udpHeaderLength, u + udpLength <= e + total else { return nil }
        let src = IPv4Address(bytes: f[(e + 12)..<(e + 16)]), dst = IPv4Address(bytes: f[(e + 16)..<(e + 20)])
        if Self.be16(f, u + 6) != 0 {
            let sum = Checksum.udp(source: src, destination: dst, datagram: UnsafeRawBufferPointer(rebasing: f[u..<(u + udpLength)]))
            guard sum == 0 else { return nil }
        }
        sourceMAC = Array(f[6..<12]); destinationMAC = Array(f[0..<6])
        source = src; destination = dst
        sourcePort = Self.be16(f, u); destinationPort = Self.be16(f, u + 2)
        payload = Array(f[(u + Self.udpHeaderLength)..<(u + udpLength)])
    }

    public init?(frame: [UInt8]) {
        guard let d = frame.withUnsafeBytes({ UDPDatagram(frame: $0) }) else { return nil }
        self = d
    }

    /// The frame: Ethernet II, IPv4 (TTL 64, DF clear, id 0), UDP with its checksum.
    public var frame: [UInt8] {
        let ipTotal = Self.ipv4HeaderLength + Self.udpHeaderLength + payload.count
        var f: [UInt8] = []
        f.reserveCapacity(Self.ethernetHeaderLength + ipTotal)
        f += destinationMAC.prefix(6); f += sourceMAC.prefix(6)
        f.append(be: EtherType.ipv4)
        let ip = f.count
        f += [0x45, 0]; f.append(be: UInt16(truncatingIfNeeded: ipTotal))
        f += [0, 0, 0, 0, 64, IPProtocol.udp, 0, 0]
        f += source.bytes; f += destination.bytes
        let ipSum = f.withUnsafeBytes { Checksum.internet(UnsafeRawBufferPointer(rebasing: $0[ip..<(ip + Self.ipv4HeaderLength)])) }
        f[ip + 10] = UInt8(ipSum >> 8); f[ip + 11] = UInt8(truncatingIfNeeded: ipSum)
        let u = f.count
        f.append(be: sourcePort); f.append(be: destinationPort)
        f.append(be: UInt16(truncatingIfNeeded: Self.udpHeaderLength + payload.count)); f += [0, 0]
        f += payload
        var sum = f.withUnsafeBytes { Checksum.udp(source: source, destination: destination, datagram: UnsafeRawBufferPointer(rebasing: $0[u...])) }
        if sum == 0 { sum = 0xFFFF }   // RFC 768: a computed 0 is sent as all ones
        f[u + 6] = UInt8(sum >> 8); f[u + 7] = UInt8(truncatingIfNeeded: sum)
        return f
    }

    static func be16(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt16 { UInt16(b[at]) << 8 | UInt16(b[at + 1]) }
}

/// RFC 1071 ones'-complement sums.
public enum Checksum {
    /// The 16-bit ones' complement of the ones' complement sum (0 over data that carries a
    /// correct checksum).
    public static func internet(_ data: UnsafeRawBufferPointer, initial: UInt32 = 0) -> UInt16 {
        var sum = UInt64(initial)
        var i = 0
        while i + 1 < data.count { sum += UInt64(data[i]) << 8 | UInt64(data[i + 1]); i += 2 }
        if i < data.count { sum += UInt64(data[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }

    /// The UDP checksum over the IPv4 pseudo-header and the datagram.
    public static func udp(source: IPv4Address, destination: IPv4Address, datagram: UnsafeRawBufferPointer) -> UInt16 {
        var pseudo = (source.value >> 16) + (source.value & 0xFFFF) + (destination.value >> 16) + (destination.value & 0xFFFF)
        pseudo += UInt32(IPProtocol.udp) + UInt32(datagram.count & 0xFFFF)
        return internet(datagram, initial: pseudo)
    }
}

extension Array where Element == UInt8 {
    mutating func append(be v: UInt16) { append(UInt8(v >> 8)); append(UInt8(truncatingIfNeeded: v)) }
    mutating func append(be v: UInt32) { for s in stride(from: 24, through: 0, by: -8) { append(UInt8(truncatingIfNeeded: v >> UInt32(s))) } }
}
