// virtio-vsock (device id 19) packet header and per-connection credit state machine,
// per virtio 1.2 section 5.10. Pure logic, no I/O: the device (VirtioVsock.swift) feeds
// it headers parsed from guest buffers and host socket events, and sends what it returns.
// Everything the guest writes is hostile: parsing never traps, and a guest that
// overruns the credit we advertised gets its connection reset, never a bigger buffer.

/// The 44-byte little-endian `struct virtio_vsock_hdr`.
public struct VsockHeader: Equatable, Sendable {
    public static let size = 44
    public var srcCID: UInt64
    public var dstCID: UInt64
    public var srcPort: UInt32
    public var dstPort: UInt32
    public var len: UInt32
    public var type: UInt16
    public var op: UInt16
    public var flags: UInt32
    public var bufAlloc: UInt32
    public var fwdCnt: UInt32

    public init(srcCID: UInt64, dstCID: UInt64, srcPort: UInt32, dstPort: UInt32, len: UInt32 = 0,
                type: UInt16 = VsockHeader.typeStream, op: UInt16, flags: UInt32 = 0,
                bufAlloc: UInt32 = 0, fwdCnt: UInt32 = 0) {
        self.srcCID = srcCID; self.dstCID = dstCID; self.srcPort = srcPort; self.dstPort = dstPort
        self.len = len; self.type = type; self.op = op; self.flags = flags
        self.bufAlloc = bufAlloc; self.fwdCnt = fwdCnt
    }

    public static let typeStream: UInt16 = 1
    public static let opRequest: UInt16 = 1
    public static let opResponse: UInt16 = 2
    public static let opRst: UInt16 = 3
    public static let opShutdown: UInt16 = 4
    public static let opRW: UInt16 = 5
    public static let opCreditUpdate: UInt16 = 6
    public static let opCreditRequest: UInt16 = 7
    public static let shutdownReceive: UInt32 = 1
    public static let shutdownSend: UInt32 = 2
    /// The host's CID (VMADDR_CID_HOST).
    public static let hostCID: UInt64 = 2

    /// Parses a header from the first 44 bytes; nil if fewer are given.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count >= Self.size else { return nil }
        let b = Array(bytes.prefix(Self.size))
        func le<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T {
            var v: T = 0
            for i in 0..<(T.bitWidth / 8) { v |= T(b[at + i]) << (8 * i) }
            return v
        }
        self.init(srcCID: le(0, UInt64.self), dstCID: le(8, UInt64.self), srcPort: le(16, UInt32.self),
                  dstPort: le(20, UInt32.self), len: le(24, UInt32.self), type: le(28, UInt16.self),
                  op: le(30, UInt16.self), flags: le(32, UInt32.self), bufAlloc: le(36, UInt32.self),
                  fwdCnt: le(40, UInt32.self))
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.size)
        func put<T: FixedWidthInteger>(_ v: T) {
            for i in 0..<(T.bitWidth / 8) { out.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
        }
        put(srcCID); put(dstCID); put(srcPort); put(dstPort); put(len)
        put(type); put(op); put(flags); put(bufAlloc); put(fwdCnt)
        return out
    }
}

/// One stream connection between a guest port and a host port, seen from the host.
/// Counters wrap modulo 2^32 as the spec requires; all differences use wrapping arithmetic.
public struct VsockConnection: Sendable {
    public enum State: Equatable, Sendable { case connecting, established, closed }
    public enum Event: Equatable, Sendable {
        /// Send this header (with `payload` bytes for RW) to the guest.
        case send(VsockHeader)
        /// Deliver these guest bytes to the host socket.
        case deliver([UInt8])
        /// The guest will send no more (SHUTDOWN send), or the connection is gone.
        case peerClosed
        /// The connection is over; forget it after sending what precedes this.
        case reset
    }

    public let guestCID: UInt64
    public let guestPort: UInt32
    public let hostPort: UInt32
    public private(set) var state: State
    /// Our receive buffer, advertised to the guest.
    public let bufAlloc: UInt32
    /// Bytes of guest data we have handed to the host socket.
    public private(set) var fwdCnt: UInt32 = 0
    /// Bytes of guest data received (so `rxCnt - fwdCnt` are buffered here).
    public private(set) var rxCnt: UInt32 = 0
    /// Bytes we have sent to the guest.
    public private(set) var txCnt: UInt32 = 0
    public private(set) var peerBufAlloc: UInt32 = 0
    public private(set) var peerFwdCnt: UInt32 = 0
    /// fwdCnt last advertised to the guest, to decide when a CREDIT_UPDATE is due.
    private var advertisedFwdCnt: UInt32 = 0

    public init(guestCID: UInt64, guestPort: UInt32, hostPort: UInt32, bufAlloc: UInt32,
                initiatedByGuest: Bool) {
        self.guestCID = guestCID; self.guestPort = guestPort; self.hostPort = hostPort
        self.bufAlloc = bufAlloc
        state = initiatedByGuest ? .established : .connecting
    }

    /// A header from us to the guest with our current credit.
    public func header(op: UInt16, len: UInt32 = 0, flags: UInt32 = 0) -> VsockHeader {
        VsockHeader(srcCID: VsockHeader.hostCID, dstCID: guestCID, srcPort: hostPort, dstPort: guestPort,
                    len: len, op: op, flags: flags, bufAlloc: bufAlloc, fwdCnt: fwdCnt)
    }

    /// The REQUEST that opens a host-initiated connection.
    public func request() -> VsockHeader { header(op: VsockHeader.opRequest) }

    /// Accepts a guest-initiated connection: takes the guest's credit from its REQUEST and
    /// returns the RESPONSE to send.
    public mutating func accept(_ request: VsockHeader) -> VsockHeader {
        peerBufAlloc = request.bufAlloc
        peerFwdCnt = request.fwdCnt
        return response()
    }

    /// The RESPONSE that accepts a guest-initiated connection.
    public mutating func response() -> VsockHeader {
        advertisedFwdCnt = fwdCnt
        return header(op: VsockHeader.opResponse)
    }

    /// Bytes the guest can still take from us.
    public var peerCredit: UInt32 {
        let inFlight = txCnt &- peerFwdCnt
        return inFlight > peerBufAlloc ? 0 : peerBufAlloc &- inFlight
    }

    /// Bytes buffered here, not yet taken by the host socket.
    public var buffered: UInt32 { rxCnt &- fwdCnt }

    /// Handles one packet from the guest for this connection; `payload` is the RW data
    /// (already bounded by the device to `hdr.len` and the descriptor chain).
    public mutating func receive(_ hdr: VsockHeader, payload: [UInt8] = []) -> [Event] {
        guard state != .closed else { return [] }
        guard hdr.type == VsockHeader.typeStream else { return fail() }
        peerBufAlloc = hdr.bufAlloc
        peerFwdCnt = hdr.fwdCnt
        switch hdr.op {
        case VsockHeader.opResponse:
            guard state == .connecting else { return fail() }
            state = .established
            return []
        case VsockHeader.opRW:
            guard state == .established, Int(hdr.len) == payload.count else { return fail() }
            // The guest may send only what we advertised room for.
            guard UInt64(buffered) + UInt64(payload.count) <= UInt64(bufAlloc) else { return fail() }
            rxCnt &+= UInt32(payload.count)
            return payload.isEmpty ? [] : [.deliver(payload)]
        case VsockHeader.opCreditUpdate:
            return []
        case VsockHeader.opCreditRequest:
            advertisedFwdCnt = fwdCnt
            return [.send(header(op: VsockHeader.opCreditUpdate))]
        case VsockHeader.opShutdown:
            if hdr.flags & (VsockHeader.shutdownReceive | VsockHeader.shutdownSend)
                == (VsockHeader.shutdownReceive | VsockHeader.shutdownSend) {
                state = .closed
                return [.send(header(op: VsockHeader.opRst)), .peerClosed, .reset]
            }
            return hdr.flags & VsockHeader.shutdownSend != 0 ? [.peerClosed] : []
        case VsockHeader.opRst:
            state = .closed
            return [.peerClosed, .reset]
        default:
            return fail()
        }
    }

    /// The host socket took `count` buffered bytes; returns a CREDIT_UPDATE when the
    /// guest's view of our free space is stale by half the buffer or more.
    public mutating func forwarded(_ count: UInt32) -> [Event] {
        let n = min(count, buffered)
        fwdCnt &+= n
        guard state == .established, fwdCnt &- advertisedFwdCnt >= bufAlloc / 2, n > 0 else { return [] }
        advertisedFwdCnt = fwdCnt
        return [.send(header(op: VsockHeader.opCreditUpdate))]
    }

    /// Takes up to `want` bytes of host data to send now as one RW packet's length,
    /// bounded by the guest's credit; 0 means wait for a CREDIT_UPDATE.
    public mutating func reserveSend(_ want: Int) -> UInt32 {
        guard state == .established, want > 0 else { return 0 }
        let n = UInt32(min(UInt64(want), UInt64(peerCredit)))
        txCnt &+= n
        if n > 0 { advertisedFwdCnt = fwdCnt }
        return n
    }

    /// The host side closed: tell the guest, and forget the connection.
    public mutating func hostClosed() -> [Event] {
        guard state != .closed else { return [] }
        state = .closed
        return [.send(header(op: VsockHeader.opRst)), .reset]
    }

    private mutating func fail() -> [Event] {
        state = .closed
        return [.send(header(op: VsockHeader.opRst)), .reset]
    }
}
