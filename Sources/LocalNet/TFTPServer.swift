#if canImport(Glibc)
import Glibc
#endif
import Devices

/// What a local interface serves for network boot: the DHCP reply's boot file (the BOOTP
/// `file` field, option 67, next-server = the host address, option 66) and the directory
/// the built-in TFTP server reads it (and what it names) from.
public struct LocalNetBoot: Equatable, Sendable, Codable {
    /// A path relative to `directory`, e.g. "boot.ipxe" or "pxelinux.0".
    public var bootFile: String
    /// The one directory served; nothing outside it (no "..", no symbolic links) is.
    public var directory: String

    public init(bootFile: String, directory: String) { self.bootFile = bootFile; self.directory = directory }
}

/// A read-only TFTP server (RFC 1350) with the blksize, tsize and timeout options (RFC 2347,
/// 2348, 2349), answering inside a local interface's network path: it takes the guest's
/// IPv4 UDP datagrams to the host address, port 69 and the ports of its transfers, and
/// answers each with at most one frame for the guest. No timers: a client that loses a
/// block re-sends its previous ACK (its own timeout), which makes the server re-send the
/// block.
///
/// Bounded: at most `maximumTransfers` transfers (an idle one is reclaimed after
/// `idleSeconds`), files of at most `maximumFileSize` bytes, blocks of at most
/// `maximumBlockSize` (a 1500-byte packet), read requests rate-limited (a burst of 16, then
/// 8 a second). Only the guest's MAC is answered. Only "octet" mode is served.
///
/// The directory is read once, when the server is made (the VM process does that before
/// its sandbox, which allows no open): every regular file under it, at most
/// `maximumFiles` and `maximumDepth` levels deep, is opened then and kept open; requests
/// are looked up among those names (leading slashes and "." ignored, ".." refused), so
/// nothing outside the directory, no symbolic link (opened with O_NOFOLLOW, never
/// followed) and nothing added later is served. Since the VM process is still root then,
/// only what anyone may read is taken: files readable by others (S_IROTH) in directories
/// others may search (S_IXOTH). Used under the backend's lock only.
public final class LocalTFTPServer: @unchecked Sendable {
    public static let port: UInt16 = 69
    /// Transfers use ports transferBase ..< transferBase + maximumTransfers on the host address.
    public static let transferBase: UInt16 = 61_000
    public static let maximumTransfers = 4
    public static let idleSeconds: UInt64 = 30
    public static let maximumFileSize: Int64 = 1 << 30
    public static let defaultBlockSize = 512
    /// 1500 (MTU) - 20 (IPv4) - 8 (UDP) - 4 (TFTP header).
    public static let maximumBlockSize = 1468
    public static let maximumPathLength = 255
    public static let maximumDepth = 16
    public static let maximumFiles = 256

    public enum Opcode: UInt16 { case rrq = 1, wrq, data, ack, error, oack }
    public enum ErrorCode: UInt16, Error { case undefined = 0, notFound, accessViolation, diskFull, illegalOperation, unknownTID }

    private struct Transfer {
        var clientPort: UInt16
        var fd: Int32
        var size: Int64
        var blockSize: Int
        /// The block last sent (0 = the OACK), counted past 65535 (the wire number wraps).
        var block: UInt64
        var lastActive: UInt64
        /// The reply for `block`, kept to re-send it, and its data length (DATA only).
        var last: [UInt8]
        var lastLength = 0
    }

    public let lease: LocalLease
    /// Every file served, by its path under the directory ("pxelinux.cfg/default").
    private var files: [String: (fd: Int32, size: Int64)] = [:]
    private var transfers: [Transfer?] = Array(repeating: nil, count: LocalTFTPServer.maximumTransfers)
    private var limiter = RateLimiter(burst: 16, perSecond: 8)
    public private(set) var filesServed: UInt64 = 0
    public private(set) var refused: UInt64 = 0

    /// Reads `directory` (see above); throws the errno when it cannot be opened as one.
    public init(lease: LocalLease, directory: String) throws(NetworkError) {
        self.lease = lease
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw NetworkError.systemCall("open \(directory)", errno: errno) }
        var st = stat()
        if fstat(fd, &st) == 0, st.st_mode & S_IXOTH != 0 { scan(fd, prefix: "", depth: 1) }
        close(fd)
    }

    deinit {
        for f in files.values { close(f.fd) }
    }

    /// The paths served (for tests and logs), sorted.
    public var servedPaths: [String] { files.keys.sorted() }

    private func scan(_ dir: Int32, prefix: String, depth: Int) {
        let copy = dup(dir)
        guard copy >= 0, let stream = fdopendir(copy) else { if copy >= 0 { close(copy) }; return }
        defer { closedir(stream) }
        var names: [String] = []
        while names.count < 4 * Self.maximumFiles, let e = readdir(stream) {
            // SAFETY: d_name is a NUL-terminated array inside the dirent readdir returned,
            // valid until the next readdir; it is copied at once.
            let name = withUnsafePointer(to: &e.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        for name in names.sorted() where files.count < Self.maximumFiles {
            let path = prefix + name
            guard path.utf8.count <= Self.maximumPathLength else { continue }
            let fd = openat(dir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
            guard fd >= 0 else { continue }
            var st = stat()
            guard fstat(fd, &st) == 0 else { close(fd); continue }
            let kind = st.st_mode & S_IFMT
            if kind == S_IFREG, st.st_mode & S_IROTH != 0, Int64(st.st_size) <= Self.maximumFileSize {
                files[path] = (fd, Int64(st.st_size))
                continue
            }
            if kind == S_IFDIR, st.st_mode & S_IXOTH != 0, depth < Self.maximumDepth {
                scan(fd, prefix: path + "/", depth: depth + 1)
            }
            close(fd)
        }
    }

    /// How many transfers are open (for tests).
    public var openTransfers: Int { transfers.count { $0 != nil } }

    /// Whether the frame is for this server: IPv4 UDP to port 69 or a transfer port. Cheap.
    public func wants(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard let p = UDPDatagram.ports(frame) else { return false }
        return p.destination == Self.port
            || (p.destination >= Self.transferBase && p.destination < Self.transferBase + UInt16(Self.maximumTransfers))
    }

    /// The reply frame for one guest frame `wants` accepted, or nil (nothing to send; the
    /// frame is still taken when it was for the host address). `now` is monotonic ns.
    /// Returns (taken, reply): a frame to another address is not taken.
    public func handle(frame: UnsafeRawBufferPointer, now: UInt64) -> (taken: Bool, reply: [UInt8]?) {
        guard let d = UDPDatagram(frame: frame) else {
            // Undecodable: take it only when it is addressed to the host (checked raw).
            return (false, nil)
        }
        guard d.destination == lease.link.host else { return (false, nil) }
        guard d.sourceMAC == lease.guestMAC, d.payload.count >= 2 else { refused &+= 1; return (true, nil) }
        let op = UInt16(d.payload[0]) << 8 | UInt16(d.payload[1])
        if d.destinationPort == Self.port {
            guard op == Opcode.rrq.rawValue else {
                let code: ErrorCode = op == Opcode.wrq.rawValue ? .accessViolation : .illegalOperation
                refused &+= 1
                return (true, error(to: d, from: Self.port, code, op == Opcode.wrq.rawValue ? "read-only server" : "expected a read request"))
            }
            guard limiter.take(now: now) else { refused &+= 1; return (true, nil) }
            return (true, readRequest(d, now: now))
        }
        let slot = Int(d.destinationPort - Self.transferBase)
        guard var t = transfers[slot], t.clientPort == d.sourcePort else {
            // RFC 1350: a packet for no transfer of ours gets "Unknown transfer ID".
            return (true, op == Opcode.error.rawValue ? nil : error(to: d, from: d.destinationPort, .unknownTID, "unknown transfer"))
        }
        switch op {
        case Opcode.ack.rawValue where d.payload.count >= 4:
            let ack = UInt16(d.payload[2]) << 8 | UInt16(d.payload[3])
            t.lastActive = now
            if ack == UInt16(truncatingIfNeeded: t.block) {
                if t.block > 0 && t.lastLength < t.blockSize {   // the last (short) block is acknowledged
                    finish(slot)
                    filesServed &+= 1
                    return (true, nil)
                }
                t.block += 1
                guard let f = dataFrame(&t, to: d) else {
                    finish(slot)
                    return (true, error(to: d, from: d.destinationPort, .undefined, "read error"))
                }
                t.last = f
                transfers[slot] = t
                return (true, f)
            }
            transfers[slot] = t
            // The client did not get our last packet and acknowledges the one before: again.
            if ack == UInt16(truncatingIfNeeded: t.block &- 1) { return (true, t.last) }
            return (true, nil)
        case Opcode.error.rawValue:
            finish(slot)
            return (true, nil)
        default:
            finish(slot)
            return (true, error(to: d, from: d.destinationPort, .illegalOperation, "expected an acknowledgement"))
        }
    }

    public func handle(frame: [UInt8], now: UInt64) -> (taken: Bool, reply: [UInt8]?) {
        frame.withUnsafeBytes { handle(frame: $0, now: now) }
    }

    private func finish(_ slot: Int) { transfers[slot] = nil }

    /// RRQ: filename NUL mode NUL (option NUL value NUL)*, every string bounded by the packet.
    private func readRequest(_ d: UDPDatagram, now: UInt64) -> [UInt8]? {
        var fields: [[UInt8]] = []
        var cur: [UInt8] = []
        for b in d.payload[2...] {
            if b == 0 { fields.append(cur); cur = []; if fields.count > 32 { break } } else { cur.append(b) }
        }
        guard cur.isEmpty, fields.count >= 2, fields.count % 2 == 0 else {
            refused &+= 1
            return error(to: d, from: Self.port, .illegalOperation, "malformed request")
        }
        guard String(decoding: fields[1], as: UTF8.self).lowercased() == "octet" else {
            refused &+= 1
            return error(to: d, from: Self.port, .illegalOperation, "only octet mode is served")
        }
        // A repeated request from the same port (our first answer was lost) starts over.
        for i in transfers.indices where transfers[i]?.clientPort == d.sourcePort { finish(i) }
        let file: (fd: Int32, size: Int64)
        switch lookUp(fields[0]) {
        case .failure(let code):
            refused &+= 1
            return error(to: d, from: Self.port, code, code == .notFound ? "file not found" : "access violation")
        case .success(let f): file = f
        }
        guard let slot = freeSlot(now: now) else {
            refused &+= 1
            return error(to: d, from: Self.port, .undefined, "too many transfers")
        }
        var t = Transfer(clientPort: d.sourcePort, fd: file.fd, size: file.size, blockSize: Self.defaultBlockSize,
                         block: 0, lastActive: now, last: [])
        var acked: [(String, String)] = []
        var i = 2
        while i + 1 < fields.count {
            let name = String(decoding: fields[i], as: UTF8.self).lowercased()
            let value = String(decoding: fields[i + 1], as: UTF8.self)
            i += 2
            guard acked.contains(where: { $0.0 == name }) == false, value.utf8.count <= 20, let n = Int(value) else { continue }
            switch name {
            case "blksize" where n >= 8 && n <= 65_464:
                t.blockSize = min(n, Self.maximumBlockSize)
                acked.append((name, String(t.blockSize)))
            case "tsize" where n == 0:
                acked.append((name, String(t.size)))
            case "timeout" where n >= 1 && n <= 255:
                acked.append((name, value))
            default:
                continue
            }
        }
        let port = Self.transferBase + UInt16(slot)
        let reply: [UInt8]
        if acked.isEmpty {
            t.block = 1
            guard let f = dataFrame(&t, to: d, from: port) else {
                return error(to: d, from: Self.port, .undefined, "read error")
            }
            reply = f
        } else {
            var p: [UInt8] = []
            p.append(be: Opcode.oack.rawValue)
            for (k, v) in acked { p += Array(k.utf8) + [0] + Array(v.utf8) + [0] }
            reply = frame(to: d, from: port, payload: p)
        }
        t.last = reply
        transfers[slot] = t
        return reply
    }

    private func freeSlot(now: UInt64) -> Int? {
        if let i = transfers.firstIndex(where: { $0 == nil }) { return i }
        let idle = Self.idleSeconds * 1_000_000_000
        guard let i = transfers.indices.min(by: { transfers[$0]!.lastActive < transfers[$1]!.lastActive }),
              now &- transfers[i]!.lastActive >= idle else { return nil }
        finish(i)
        return i
    }

    /// The served file a request names: leading slashes and "." ignored, ".." refused.
    func lookUp(_ path: [UInt8]) -> Result<(fd: Int32, size: Int64), ErrorCode> {
        guard !path.isEmpty, path.count <= Self.maximumPathLength else { return .failure(.accessViolation) }
        let parts = path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true)
            .filter { !($0.count == 1 && $0.first == UInt8(ascii: ".")) }
        guard !parts.isEmpty, parts.count <= Self.maximumDepth else { return .failure(.accessViolation) }
        guard !parts.contains(where: { $0.elementsEqual("..".utf8) }) else { return .failure(.accessViolation) }
        let key = parts.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "/")
        guard let f = files[key] else { return .failure(.notFound) }
        return .success(f)
    }

    /// DATA for `t.block`: up to blockSize bytes at (block - 1) * blockSize.
    private func dataFrame(_ t: inout Transfer, to d: UDPDatagram, from port: UInt16? = nil) -> [UInt8]? {
        let offset = Int64(t.block - 1) * Int64(t.blockSize)
        guard offset <= t.size else { return nil }
        var p = [UInt8](repeating: 0, count: 4 + t.blockSize)
        p[0] = 0; p[1] = UInt8(Opcode.data.rawValue)
        p[2] = UInt8(truncatingIfNeeded: t.block >> 8); p[3] = UInt8(truncatingIfNeeded: t.block)
        let want = Int(min(Int64(t.blockSize), t.size - offset))
        var got = 0
        while got < want {
            // SAFETY: writes at most want - got bytes at 4 + got, inside p (4 + blockSize).
            let n = p.withUnsafeMutableBytes { pread(t.fd, $0.baseAddress! + 4 + got, want - got, off_t(offset) + off_t(got)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            got += n
        }
        p.removeLast(t.blockSize - want)
        t.lastLength = want
        return frame(to: d, from: port ?? d.destinationPort, payload: p)
    }

    private func error(to d: UDPDatagram, from port: UInt16, _ code: ErrorCode, _ message: String) -> [UInt8] {
        var p: [UInt8] = []
        p.append(be: Opcode.error.rawValue); p.append(be: code.rawValue)
        p += Array(message.utf8) + [0]
        return frame(to: d, from: port, payload: p)
    }

    private func frame(to d: UDPDatagram, from port: UInt16, payload: [UInt8]) -> [UInt8] {
        UDPDatagram(sourceMAC: lease.serverMAC, destinationMAC: lease.guestMAC, source: lease.link.host,
                    destination: d.source, sourcePort: port, destinationPort: d.sourcePort, payload: payload).frame
    }
}
