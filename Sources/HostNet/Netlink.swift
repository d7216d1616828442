#if canImport(Glibc)
import Glibc
#endif

/// rtnetlink (NETLINK_ROUTE) message numbers and layouts from <linux/netlink.h>,
/// <linux/rtnetlink.h>, <linux/if_link.h> and <linux/if_addr.h>. They are fixed by the kernel
/// ABI; written out here because the headers' macros do not import into Swift.
enum RT {
    static let netlinkRoute: Int32 = 0
    static let newLink: UInt16 = 16, delLink: UInt16 = 17, getLink: UInt16 = 18
    static let newAddr: UInt16 = 20, delAddr: UInt16 = 21, getAddr: UInt16 = 22
    static let newLinkProp: UInt16 = 108
    static let msgError: UInt16 = 2, msgDone: UInt16 = 3
    static let fRequest: UInt16 = 0x1, fAck: UInt16 = 0x4, fDump: UInt16 = 0x300
    static let fExcl: UInt16 = 0x200, fCreate: UInt16 = 0x400
    // struct ifinfomsg attributes
    static let iflaAddress: UInt16 = 1, iflaIfname: UInt16 = 3, iflaMaster: UInt16 = 10
    static let iflaLinkinfo: UInt16 = 18, iflaIfalias: UInt16 = 20, iflaGroup: UInt16 = 27
    static let iflaPropList: UInt16 = 52, iflaAltIfname: UInt16 = 53
    static let infoKind: UInt16 = 1, infoData: UInt16 = 2
    static let vrfTable: UInt16 = 1
    // struct ifaddrmsg attributes
    static let ifaAddress: UInt16 = 1, ifaLocal: UInt16 = 2
    static let nested: UInt16 = 0x8000   // NLA_F_NESTED
    static let headerSize = 16            // struct nlmsghdr
    static let ifinfoSize = 16            // struct ifinfomsg
    static let ifaddrSize = 8             // struct ifaddrmsg
}

/// One rtnetlink request being built: header, fixed part, attributes (4-byte aligned,
/// host byte order as the kernel expects).
struct NetlinkMessage {
    private(set) var bytes: [UInt8]
    private var nests: [Int] = []

    init(type: UInt16, flags: UInt16, fixed: [UInt8]) {
        bytes = [UInt8](repeating: 0, count: RT.headerSize)
        Self.put16(&bytes, 4, type)
        Self.put16(&bytes, 6, flags | RT.fRequest)
        bytes += fixed
        align()
    }

    /// struct ifinfomsg: family AF_UNSPEC, index, flags and the change mask.
    static func ifinfo(index: Int32 = 0, flags: UInt32 = 0, change: UInt32 = 0) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: RT.ifinfoSize)
        put32(&b, 4, UInt32(bitPattern: index)); put32(&b, 8, flags); put32(&b, 12, change)
        return b
    }

    /// struct ifaddrmsg.
    static func ifaddr(family: Int32, prefixLength: Int, index: Int32) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: RT.ifaddrSize)
        b[0] = UInt8(family); b[1] = UInt8(prefixLength)
        put32(&b, 4, UInt32(bitPattern: index))
        return b
    }

    mutating func attribute(_ type: UInt16, _ payload: [UInt8]) {
        let start = bytes.count
        bytes += [0, 0, 0, 0] + payload
        Self.put16(&bytes, start, UInt16(4 + payload.count))
        Self.put16(&bytes, start + 2, type)
        align()
    }
    mutating func attribute(_ type: UInt16, string: String) { attribute(type, Array(string.utf8) + [0]) }
    mutating func attribute(_ type: UInt16, u32: UInt32) {
        attribute(type, [UInt8(truncatingIfNeeded: u32), UInt8(truncatingIfNeeded: u32 >> 8),
                         UInt8(truncatingIfNeeded: u32 >> 16), UInt8(truncatingIfNeeded: u32 >> 24)])
    }

    /// A nested attribute: everything added inside `body` is its payload.
    mutating func nest(_ type: UInt16, _ body: (inout NetlinkMessage) -> Void) {
        let start = bytes.count
        bytes += [0, 0, 0, 0]
        body(&self)
        Self.put16(&bytes, start, UInt16(bytes.count - start))
        Self.put16(&bytes, start + 2, type | RT.nested)
    }

    func finished(sequence: UInt32) -> [UInt8] {
        var b = bytes
        Self.put32(&b, 0, UInt32(b.count))
        Self.put32(&b, 8, sequence)
        return b
    }

    private mutating func align() { while bytes.count % 4 != 0 { bytes.append(0) } }
    static func put16(_ b: inout [UInt8], _ at: Int, _ v: UInt16) {
        b[at] = UInt8(truncatingIfNeeded: v); b[at + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
    static func put32(_ b: inout [UInt8], _ at: Int, _ v: UInt32) {
        for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }
}

/// A message the kernel sent back: its type, its fixed part and attributes, bounds-checked
/// (a short or overlong length ends the walk, never traps).
struct NetlinkReply {
    var type: UInt16
    var body: ArraySlice<UInt8>

    static func u16(_ b: ArraySlice<UInt8>, _ at: Int) -> UInt16 {
        let i = b.startIndex + at
        return UInt16(b[i]) | UInt16(b[i + 1]) << 8
    }
    static func u32(_ b: ArraySlice<UInt8>, _ at: Int) -> UInt32 {
        let i = b.startIndex + at
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[i + $1]) << (8 * UInt32($1)) }
    }

    /// Splits a datagram into messages.
    static func split(_ data: ArraySlice<UInt8>) -> [NetlinkReply] {
        var out: [NetlinkReply] = []
        var at = data.startIndex
        while data.endIndex - at >= RT.headerSize {
            let len = Int(u32(data[at...], 0))
            guard len >= RT.headerSize, len <= data.endIndex - at else { break }
            out.append(NetlinkReply(type: u16(data[at...], 4), body: data[(at + RT.headerSize)..<(at + len)]))
            at += (len + 3) & ~3
        }
        return out
    }

    /// The attributes after a fixed part of `fixed` bytes: type (nesting flag cleared) to payload.
    func attributes(after fixed: Int) -> [UInt16: ArraySlice<UInt8>] {
        guard body.count >= fixed else { return [:] }
        return Self.attributes(body.dropFirst(fixed))
    }

    static func attributes(_ data: ArraySlice<UInt8>) -> [UInt16: ArraySlice<UInt8>] {
        var out: [UInt16: ArraySlice<UInt8>] = [:]
        var at = data.startIndex
        while data.endIndex - at >= 4 {
            let len = Int(u16(data[at...], 0))
            guard len >= 4, len <= data.endIndex - at else { break }
            let type = u16(data[at...], 2) & 0x3FFF
            if out[type] == nil { out[type] = data[(at + 4)..<(at + len)] }
            at += (len + 3) & ~3
        }
        return out
    }

    static func string(_ p: ArraySlice<UInt8>?) -> String? {
        guard let p else { return nil }
        return String(decoding: p.prefix { $0 != 0 }, as: UTF8.self)
    }
}

/// An rtnetlink socket: one request at a time, answered by an ack or a dump.
final class NetlinkSocket {
    private let fd: Int32
    private var sequence: UInt32 = 1

    init() throws(HostNetError) {
        fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), RT.netlinkRoute)
        guard fd >= 0 else { throw .systemCall("socket(AF_NETLINK)", errno: errno) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    private func send(_ m: NetlinkMessage) throws(HostNetError) -> UInt32 {
        sequence &+= 1
        let bytes = m.finished(sequence: sequence)
        // struct sockaddr_nl { nl_family, nl_pad, nl_pid = 0 (the kernel), nl_groups }: 12 bytes.
        var sa = [UInt8](repeating: 0, count: 12)
        sa[0] = UInt8(AF_NETLINK)
        // SAFETY: sendto reads bytes.count bytes and the 12-byte address.
        let n = bytes.withUnsafeBytes { b in
            sa.withUnsafeBytes {
                sendto(fd, b.baseAddress, b.count, 0, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 12)
            }
        }
        guard n == bytes.count else { throw .systemCall("sendto(netlink)", errno: errno) }
        return sequence
    }

    private func receive() throws(HostNetError) -> [NetlinkReply] {
        var buf = [UInt8](repeating: 0, count: 65536)
        // SAFETY: recv writes at most buf.count bytes into buf.
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw .systemCall("recv(netlink)", errno: n < 0 ? errno : EPROTO) }
        return NetlinkReply.split(buf[0..<n])
    }

    /// Sends a request with NLM_F_ACK and waits for its ack; a kernel error is thrown as
    /// `what` with the errno.
    func request(_ m: NetlinkMessage, _ what: String) throws(HostNetError) {
        var m = m
        m.addFlags(RT.fAck)
        _ = try send(m)
        while true {
            for r in try receive() where r.type == RT.msgError {
                guard r.body.count >= 4 else { throw .systemCall(what, errno: EPROTO) }
                let e = Int32(bitPattern: NetlinkReply.u32(r.body, 0))
                if e == 0 { return }
                throw .netlink(what, errno: -e)
            }
        }
    }

    /// Sends a dump request and collects the messages of `type` until NLMSG_DONE.
    func dump(_ m: NetlinkMessage, type: UInt16) throws(HostNetError) -> [NetlinkReply] {
        _ = try send(m)
        var out: [NetlinkReply] = []
        while true {
            for r in try receive() {
                if r.type == RT.msgDone { return out }
                if r.type == RT.msgError {
                    let e = r.body.count >= 4 ? Int32(bitPattern: NetlinkReply.u32(r.body, 0)) : -EPROTO
                    throw .netlink("dump", errno: -e)
                }
                if r.type == type { out.append(r) }
            }
        }
    }
}

extension NetlinkMessage {
    mutating func addFlags(_ f: UInt16) {
        Self.put16(&bytes, 6, NetlinkReply.u16(bytes[...], 6) | f)
    }
}

public enum HostNetError: Error, Equatable, CustomStringConvertible {
    case systemCall(String, errno: Int32)
    case netlink(String, errno: Int32)
    case invalidInterfaceName(String)
    case noSuchInterface(String)
    case tapUnavailable(reason: String)
    case interface(String, operation: String, errno: Int32)

    public var description: String {
        func s(_ e: Int32) -> String { String(cString: strerror(e)) }
        switch self {
        case let .systemCall(c, e): return "\(c): \(s(e))"
        case let .netlink(what, e): return "\(what): \(s(e))"
        case let .invalidInterfaceName(n): return "\"\(n)\" is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        case let .noSuchInterface(n): return "\(n): no such interface"
        case let .tapUnavailable(r): return "cannot create a tap: \(r)"
        case let .interface(n, op, e): return "\(n): \(op): \(s(e))"
        }
    }
}
