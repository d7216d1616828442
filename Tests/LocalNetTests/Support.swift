@testable import LocalNet

let guestMAC: MACAddress = [0xFE, 0xE1, 0xBA, 0xD0, 0x12, 0x34]
let serverMAC: MACAddress = [0xFE, 0xE1, 0xBA, 0xD1, 0x12, 0x34]
let link = LocalLink(host: IPv4Address("100.64.1.2")!, guest: IPv4Address("100.64.1.3")!)
let lease = LocalLease(link: link, guestMAC: guestMAC, serverMAC: serverMAC, hostName: "myvm", leaseSeconds: 3600)

/// A client's DHCP message as a DHCP client would send it.
func clientMessage(_ type: DHCPMessage.MessageType?, xid: UInt32 = 0x1234_5678,
                   extra: [(UInt8, [UInt8])] = [], ciaddr: IPv4Address = .zero) -> DHCPMessage {
    var m = DHCPMessage(op: .request)
    m.xid = xid
    m.ciaddr = ciaddr
    m.chaddr = guestMAC + [UInt8](repeating: 0, count: 10)
    m.hasCookie = type != nil
    if let type { m.options.append((DHCPMessage.Option.messageType, [type.rawValue])) }
    for (c, v) in extra { m.options.append((c, v)) }
    m.options.append((DHCPMessage.Option.parameterRequestList, [1, 3, 6, 12, 15, 51]))
    return m
}

/// The frame around a DHCP payload, from the guest's MAC, 0.0.0.0:68 → 255.255.255.255:67.
func clientFrame(payload: [UInt8], sourceMAC: MACAddress = guestMAC, source: IPv4Address = .zero,
                 destination: IPv4Address = .broadcast, sourcePort: UInt16 = 68, destinationPort: UInt16 = 67) -> [UInt8] {
    UDPDatagram(sourceMAC: sourceMAC, destinationMAC: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], source: source,
                destination: destination, sourcePort: sourcePort, destinationPort: destinationPort, payload: payload).frame
}

func clientFrame(_ m: DHCPMessage) -> [UInt8] { clientFrame(payload: m.bytes) }

/// Parses a reply frame back into its datagram and DHCP message.
func parseReply(_ frame: [UInt8]?) -> (UDPDatagram, DHCPMessage)? {
    guard let frame, let d = UDPDatagram(frame: frame), let m = try? DHCPMessage(parsing: d.payload) else { return nil }
    return (d, m)
}

/// A small deterministic generator (tests must be reproducible).
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
