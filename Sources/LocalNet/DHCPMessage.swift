/// BOOTP/DHCP messages (RFC 951, RFC 2131, options RFC 2132): a strict parser and a builder.
///
/// The parser is for hostile input: every option is bounds-checked against its area, an
/// option running past its area, a missing end option or an oversized message is an error
/// (the server then does not answer). Option overload (option 52) is honoured: the `file`
/// and `sname` fields are parsed as further option areas, each at most once. Repeated
/// options are concatenated (RFC 3396).
public struct DHCPMessage: Equatable, Sendable {
    public enum Op: UInt8, Sendable { case request = 1, reply = 2 }

    public enum MessageType: UInt8, Sendable {
        case discover = 1, offer, request, decline, ack, nak, release, inform
    }

    public enum Option {
        public static let pad: UInt8 = 0
        public static let subnetMask: UInt8 = 1
        public static let router: UInt8 = 3
        public static let domainNameServer: UInt8 = 6
        public static let hostName: UInt8 = 12
        public static let requestedAddress: UInt8 = 50
        public static let leaseTime: UInt8 = 51
        public static let overload: UInt8 = 52
        public static let messageType: UInt8 = 53
        public static let serverIdentifier: UInt8 = 54
        public static let parameterRequestList: UInt8 = 55
        public static let renewalTime: UInt8 = 58
        public static let rebindingTime: UInt8 = 59
        public static let tftpServerName: UInt8 = 66
        public static let bootFileName: UInt8 = 67
        public static let end: UInt8 = 255
    }

    public static let fixedLength = 236            // op ... file
    public static let magicCookie: [UInt8] = [99, 130, 83, 99]
    /// A BOOTP message is at least 300 bytes (64 bytes of vendor area); replies are padded.
    public static let bootpMinimumLength = 300
    /// The largest message accepted: one 1500-byte IPv4 packet less the IP and UDP headers.
    public static let maximumLength = 1500 - 20 - 8

    public var op: UInt8
    public var htype: UInt8 = 1
    public var hlen: UInt8 = 6
    public var hops: UInt8 = 0
    public var xid: UInt32 = 0
    public var secs: UInt16 = 0
    public var flags: UInt16 = 0
    public var ciaddr = IPv4Address.zero
    public var yiaddr = IPv4Address.zero
    public var siaddr = IPv4Address.zero
    public var giaddr = IPv4Address.zero
    /// 16 bytes; the first `hlen` are the client's hardware address.
    public var chaddr = [UInt8](repeating: 0, count: 16)
    public var sname = [UInt8](repeating: 0, count: 64)
    public var file = [UInt8](repeating: 0, count: 128)
    /// DHCP options in order (code, value); empty and `isDHCP == false` for plain BOOTP.
    public var options: [(code: UInt8, value: [UInt8])] = []
    /// The magic cookie was present (a DHCP message, or BOOTP with RFC 1497 vendor options).
    public var hasCookie = false

    public static let broadcastFlag: UInt16 = 0x8000

    public init(op: Op) { self.op = op.rawValue }

    public static func == (a: DHCPMessage, b: DHCPMessage) -> Bool {
        a.op == b.op && a.htype == b.htype && a.hlen == b.hlen && a.hops == b.hops && a.xid == b.xid
            && a.secs == b.secs && a.flags == b.flags && a.ciaddr == b.ciaddr && a.yiaddr == b.yiaddr
            && a.siaddr == b.siaddr && a.giaddr == b.giaddr && a.chaddr == b.chaddr && a.sname == b.sname
            && a.file == b.file && a.hasCookie == b.hasCookie
            && a.options.map(\.code) == b.options.map(\.code) && a.options.map(\.value) == b.options.map(\.value)
    }

    public func option(_ code: UInt8) -> [UInt8]? { options.first { $0.code == code }?.value }

    /// Option 53; nil for BOOTP or a value that is not one byte of a known type.
    public var messageType: MessageType? {
        guard let v = option(Option.messageType), v.count == 1 else { return nil }
        return MessageType(rawValue: v[0])
    }

    public func address(_ code: UInt8) -> IPv4Address? {
        guard let v = option(code), v.count == 4 else { return nil }
        return IPv4Address(bytes: v)
    }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case tooShort(Int), tooLong(Int), optionPastEnd(code: UInt8, area: String)
        case missingEnd(area: String), badOverload([UInt8])
        public var description: String {
            switch self {
            case let .tooShort(n): return "\(n) bytes, shorter than a BOOTP message (300) or a DHCP header with its cookie (240)"
            case let .tooLong(n): return "\(n) bytes, longer than \(DHCPMessage.maximumLength)"
            case let .optionPastEnd(c, a): return "option \(c) runs past the end of the \(a)"
            case let .missingEnd(a): return "the \(a) has no end option"
            case let .badOverload(v): return "option overload \(v) is not 1, 2 or 3"
            }
        }
    }

    public init(parsing b: [UInt8]) throws(ParseError) {
        guard b.count >= Self.fixedLength else { throw .tooShort(b.count) }
        guard b.count <= Self.maximumLength else { throw .tooLong(b.count) }
        func u32(_ at: Int) -> UInt32 { b[at..<(at + 4)].reduce(0) { $0 << 8 | UInt32($1) } }
        op = b[0]; htype = b[1]; hlen = b[2]; hops = b[3]
        xid = u32(4); secs = UInt16(b[8]) << 8 | UInt16(b[9]); flags = UInt16(b[10]) << 8 | UInt16(b[11])
        ciaddr = IPv4Address(u32(12)); yiaddr = IPv4Address(u32(16))
        siaddr = IPv4Address(u32(20)); giaddr = IPv4Address(u32(24))
        chaddr = Array(b[28..<44]); sname = Array(b[44..<108]); file = Array(b[108..<236])
        let rest = b[236...]
        guard rest.count >= 4, Array(rest.prefix(4)) == Self.magicCookie else {
            // BOOTP: RFC 951's message has its 64-byte vendor area, 300 bytes in all.
            guard b.count >= Self.bootpMinimumLength else { throw .tooShort(b.count) }
            return
        }
        hasCookie = true
        var parsed: [(code: UInt8, value: [UInt8])] = []
        try Self.parseOptions(b[240...], area: "options field", into: &parsed)
        if let o = parsed.first(where: { $0.code == Option.overload })?.value {
            guard o.count == 1, (1...3).contains(o[0]) else { throw .badOverload(o) }
            if o[0] & 1 != 0 { try Self.parseOptions(file[...], area: "file field", into: &parsed) }
            if o[0] & 2 != 0 { try Self.parseOptions(sname[...], area: "sname field", into: &parsed) }
        }
        // RFC 3396: several instances of one option are one option, concatenated.
        for (code, value) in parsed {
            if let i = options.firstIndex(where: { $0.code == code }) { options[i].value += value }
            else { options.append((code, value)) }
        }
    }

    private static func parseOptions(_ a: ArraySlice<UInt8>, area: String,
                                     into out: inout [(code: UInt8, value: [UInt8])]) throws(ParseError) {
        var i = a.startIndex
        while i < a.endIndex {
            let code = a[i]
            if code == Option.end { return }
            if code == Option.pad { i += 1; continue }
            guard i + 1 < a.endIndex else { throw .optionPastEnd(code: code, area: area) }
            let n = Int(a[i + 1])
            guard i + 2 + n <= a.endIndex else { throw .optionPastEnd(code: code, area: area) }
            out.append((code, Array(a[(i + 2)..<(i + 2 + n)])))
            i += 2 + n
        }
        throw .missingEnd(area: area)
    }

    /// The wire form: the fixed header, then (when `hasCookie`) the cookie, the options
    /// (values over 255 bytes split into several instances) and the end option; padded
    /// with zeros to the BOOTP minimum of 300 bytes.
    public var bytes: [UInt8] {
        var b: [UInt8] = [op, htype, hlen, hops]
        b.append(be: xid); b.append(be: secs); b.append(be: flags)
        for a in [ciaddr, yiaddr, siaddr, giaddr] { b += a.bytes }
        b += Self.fixed(chaddr, 16); b += Self.fixed(sname, 64); b += Self.fixed(file, 128)
        if hasCookie {
            b += Self.magicCookie
            for (code, value) in options {
                var rest = value[...]
                repeat {
                    let chunk = rest.prefix(255)
                    b.append(code); b.append(UInt8(chunk.count)); b += chunk
                    rest = rest.dropFirst(chunk.count)
                } while !rest.isEmpty
            }
            b.append(Option.end)
        }
        if b.count < Self.bootpMinimumLength { b += [UInt8](repeating: 0, count: Self.bootpMinimumLength - b.count) }
        return b
    }

    private static func fixed(_ v: [UInt8], _ n: Int) -> [UInt8] {
        Array(v.prefix(n)) + [UInt8](repeating: 0, count: max(0, n - v.count))
    }
}
