/// struct virtio_net_hdr_v1 (virtio 1.x §5.1.6): the 12 bytes before every frame, both
/// ways, little-endian. With a backend that carries it (a tap with IFF_VNET_HDR) the header
/// passes through, so the guest's checksum and segmentation offloads reach the host kernel
/// and the host's reach the guest; the device checks it both ways first (`transmitProblem`,
/// `receiveProblem`): a header the negotiated features do not allow, or whose offsets point
/// outside the frame, drops the frame.
public struct VirtioNetHeader: Equatable, Sendable {
    public static let length = 12
    public enum Flag {
        public static let needsChecksum: UInt8 = 1   // VIRTIO_NET_HDR_F_NEEDS_CSUM
        public static let dataValid: UInt8 = 2       // VIRTIO_NET_HDR_F_DATA_VALID (receive only)
    }
    public enum GSO {
        public static let none: UInt8 = 0
        public static let tcpv4: UInt8 = 1
        public static let udp: UInt8 = 3
        public static let tcpv6: UInt8 = 4
        public static let ecn: UInt8 = 0x80
    }
    /// The shortest segment a GSO frame may ask for: below it a 64 KiB frame would fan out
    /// into thousands of segments on the host, and no TCP sends one that small (Linux's
    /// floor is 48 bytes less TCP options).
    public static let minimumSegmentSize: UInt16 = 8
    public static let ethernetHeaderLength = 14
    static let tcpChecksumOffset: UInt16 = 16
    static let tcpHeaderLength = 20

    public var flags: UInt8 = 0
    public var gsoType: UInt8 = GSO.none
    public var headerLength: UInt16 = 0
    public var gsoSize: UInt16 = 0
    public var checksumStart: UInt16 = 0
    public var checksumOffset: UInt16 = 0
    public var numBuffers: UInt16 = 0

    public init() {}

    /// Reads the first 12 bytes of `b` (which must have them).
    public init(_ b: UnsafeRawBufferPointer) {
        func le16(_ at: Int) -> UInt16 { UInt16(b[at]) | UInt16(b[at + 1]) << 8 }
        flags = b[0]; gsoType = b[1]
        headerLength = le16(2); gsoSize = le16(4)
        checksumStart = le16(6); checksumOffset = le16(8); numBuffers = le16(10)
    }

    public init(_ bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { Self($0) }
    }

    /// Writes the 12 bytes into `b` (which must have room).
    public func store(into b: UnsafeMutableRawBufferPointer) {
        func put(_ v: UInt16, _ at: Int) { b[at] = UInt8(truncatingIfNeeded: v); b[at + 1] = UInt8(truncatingIfNeeded: v >> 8) }
        b[0] = flags; b[1] = gsoType
        put(headerLength, 2); put(gsoSize, 4); put(checksumStart, 6); put(checksumOffset, 8); put(numBuffers, 10)
    }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.length)
        out.withUnsafeMutableBytes { store(into: $0) }
        return out
    }

    /// Why a frame of `frameLength` bytes the guest sends with this header must be dropped,
    /// or nil when it may go. `checksum`, `tso4`, `tso6`: VIRTIO_NET_F_CSUM, HOST_TSO4,
    /// HOST_TSO6 as negotiated (and offered only with a backend that carries the header).
    public func transmitProblem(frameLength: Int, checksum: Bool, tso4: Bool, tso6: Bool) -> String? {
        guard flags & ~Flag.needsChecksum == 0 else { return "flags 0x\(String(flags, radix: 16))" }
        guard Int(headerLength) <= frameLength else { return "hdr_len \(headerLength) past the frame" }
        if flags & Flag.needsChecksum != 0 {
            guard checksum else { return "NEEDS_CSUM without VIRTIO_NET_F_CSUM" }
            if let p = checksumProblem(frameLength: frameLength) { return p }
        }
        switch gsoType {
        case GSO.none:
            return nil
        case GSO.tcpv4 where tso4, GSO.tcpv6 where tso6:
            guard flags & Flag.needsChecksum != 0 else { return "GSO without NEEDS_CSUM" }
            guard checksumOffset == Self.tcpChecksumOffset,
                  Int(checksumStart) + Self.tcpHeaderLength <= frameLength else { return "GSO: no TCP header at csum_start" }
            guard gsoSize >= Self.minimumSegmentSize else { return "gso_size \(gsoSize)" }
            return nil
        default:
            return "gso_type \(gsoType) not negotiated"
        }
    }

    /// Why a frame the backend (the host kernel) hands over must not reach a guest that
    /// negotiated `checksum` (GUEST_CSUM), `tso4`, `tso6` (GUEST_TSO4/6), or nil.
    public func receiveProblem(frameLength: Int, checksum: Bool, tso4: Bool, tso6: Bool) -> String? {
        guard flags & ~(Flag.needsChecksum | Flag.dataValid) == 0 else { return "flags 0x\(String(flags, radix: 16))" }
        if flags & Flag.needsChecksum != 0 {
            guard checksum else { return "NEEDS_CSUM without GUEST_CSUM" }
            if let p = checksumProblem(frameLength: frameLength) { return p }
        }
        switch gsoType {
        case GSO.none: return nil
        case GSO.tcpv4 where tso4 && checksum, GSO.tcpv6 where tso6 && checksum:
            return gsoSize > 0 ? nil : "gso_size 0"
        default: return "gso_type \(gsoType) not negotiated"
        }
    }

    /// The checksum (2 bytes at csum_start + csum_offset) inside the frame, past Ethernet.
    private func checksumProblem(frameLength: Int) -> String? {
        guard Int(checksumStart) >= Self.ethernetHeaderLength,
              Int(checksumStart) + Int(checksumOffset) + 2 <= frameLength else {
            return "csum_start \(checksumStart) + csum_offset \(checksumOffset) outside the frame"
        }
        return nil
    }
}
