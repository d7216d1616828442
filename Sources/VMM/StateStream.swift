#if canImport(Glibc)
import Glibc
#endif
import CZlib

// The machine state stream's framing (docs/snapshot.md, "The state stream"): the file
// header, then tagged, length-prefixed, checksummed sections. What the sections mean is
// MachineSnapshot.swift's business; this file only frames them and never trusts a length.

/// Why a state stream cannot be read. One clear message; nothing was started.
public enum StateStreamError: Error, CustomStringConvertible, Equatable {
    case notAStateStream
    case unsupportedVersion(UInt32)
    case truncated(String)
    case sectionTooLarge(tag: String, length: UInt64, limit: UInt64)
    case unknownSection(String)
    case checksumMismatch(String)
    case malformed(String)
    case io(String)

    public var description: String {
        switch self {
        case .notAStateStream: return "not a swiftvmm state stream (bad magic)"
        case .unsupportedVersion(let v):
            return "state stream format version \(v) is not supported (this vmm reads version \(StateStream.version))"
        case .truncated(let what): return "the state stream is truncated (\(what))"
        case let .sectionTooLarge(tag, length, limit):
            return "state stream section \(tag) claims \(length) bytes (at most \(limit) allowed)"
        case .unknownSection(let tag): return "unknown state stream section \(tag)"
        case .checksumMismatch(let tag): return "state stream section \(tag) is corrupt (checksum mismatch)"
        case .malformed(let what): return "malformed state stream: \(what)"
        case .io(let what): return "state stream I/O error: \(what)"
        }
    }
}

/// Constants of the format.
public enum StateStream {
    /// "SVMSTATE".
    public static let magic: [UInt8] = Array("SVMSTATE".utf8)
    public static let version: UInt32 = 1
    /// Section tags, four ASCII bytes.
    public static let config = tag("CONF"), devices = tag("DEVS"), vcpu = tag("VCPU")
    public static let memory = tag("MEM "), end = tag("END ")
    /// Structured sections (JSON) are small; memory sections carry at most 1 MiB of pages.
    public static let structuredLimit: UInt64 = 16 << 20
    public static let memoryChunk = 1 << 20
    public static let pageSize = 4096

    static func tag(_ s: String) -> UInt32 {
        let b = Array(s.utf8)
        return UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
    }

    static func tagName(_ t: UInt32) -> String {
        let bytes = (0..<4).map { UInt8(truncatingIfNeeded: t >> ($0 * 8)) }
        if bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return "'" + String(decoding: bytes, as: UTF8.self) + "'" }
        return "0x" + String(t, radix: 16)
    }

    static func limit(for tag: UInt32) -> UInt64? {
        switch tag {
        case config, devices, vcpu: return structuredLimit
        case memory: return UInt64(8 + memoryChunk)
        case end: return 0
        default: return nil
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) over section payloads: zlib's.
enum CRC32 {
    static func checksum(_ data: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = data.baseAddress, data.count > 0 else { return 0 }
        // SAFETY: zlib reads exactly `count` bytes from `base`; sections are at most
        // `StateStream.structuredLimit` (16 MiB), well inside zlib's 32-bit length.
        return UInt32(truncatingIfNeeded: crc32(0, base.assumingMemoryBound(to: UInt8.self), UInt32(data.count)))
    }

    static func checksum(_ data: [UInt8]) -> UInt32 { data.withUnsafeBytes { checksum($0) } }
}

/// Writes a stream to a file descriptor (a file or a pipe): header, sections, end.
public final class StateStreamWriter {
    let fd: Int32
    public private(set) var bytesWritten: UInt64 = 0

    public init(fd: Int32) throws {
        self.fd = fd
        var head = StateStream.magic
        head += le(StateStream.version) + le(UInt32(0))
        try writeAll(head)
    }

    /// One section: tag, payload length (u64), payload, CRC-32 of the payload.
    public func section(_ tag: UInt32, _ payload: UnsafeRawBufferPointer) throws {
        try writeAll(le(tag) + le(UInt64(payload.count)))
        try writeAll(payload)
        try writeAll(le(CRC32.checksum(payload)))
    }

    public func section(_ tag: UInt32, _ payload: [UInt8]) throws {
        try payload.withUnsafeBytes { try section(tag, $0) }
    }

    public func finish() throws { try section(StateStream.end, []) }

    private func writeAll(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try writeAll($0) } }

    private func writeAll(_ buf: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < buf.count {
            // SAFETY: writes from inside the caller's buffer, `count - done` bytes after `done`.
            let n = write(fd, buf.baseAddress! + done, buf.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw StateStreamError.io(String(cString: strerror(errno)))
            }
            done += n
        }
        bytesWritten += UInt64(buf.count)
    }
}

func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
    (0..<(T.bitWidth / 8)).map { UInt8(truncatingIfNeeded: v >> ($0 * 8)) }
}

/// Reads a stream section by section, checking each length against its tag's limit
/// before reading the payload, and each checksum after.
public final class StateStreamReader {
    private let readBytes: (UnsafeMutableRawBufferPointer) -> Int
    private var finished = false

    /// Reads from a file descriptor (a file or a pipe). `continuing`: the header (and
    /// perhaps sections) was read from `fd` already, by another reader, maybe in another
    /// process; this one goes on from there. `timeoutSeconds`: each read waits at most that
    /// long for data (a peer that sends nothing fails with ETIMEDOUT instead of hanging).
    public convenience init(fd: Int32, continuing: Bool = false, timeoutSeconds: Int32? = nil) throws {
        try self.init(readHeader: !continuing) { buf in
            while true {
                if let timeoutSeconds {
                    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    let r = poll(&p, 1, timeoutSeconds * 1000)
                    if r < 0 && errno == EINTR { continue }
                    if r == 0 { errno = ETIMEDOUT; return -1 }
                }
                // SAFETY: reads into the caller's buffer, at most its size.
                let n = read(fd, buf.baseAddress, buf.count)
                if n < 0 && errno == EINTR { continue }
                return n
            }
        }
    }

    /// Reads from bytes in memory (tests).
    public convenience init(bytes: [UInt8]) throws {
        var offset = 0
        try self.init { buf in
            let n = min(buf.count, bytes.count - offset)
            for i in 0..<n { buf[i] = bytes[offset + i] }
            offset += n
            return n
        }
    }

    init(readHeader: Bool = true, source: @escaping (UnsafeMutableRawBufferPointer) -> Int) throws {
        readBytes = source
        guard readHeader else { return }
        let head = try readExactly(16, what: "header")
        guard Array(head[0..<8]) == StateStream.magic else { throw StateStreamError.notAStateStream }
        let version = u32(head, 8)
        guard version == StateStream.version else { throw StateStreamError.unsupportedVersion(version) }
        guard u32(head, 12) == 0 else { throw StateStreamError.malformed("unknown header flags") }
    }

    /// The next section, or nil after the end section (a stream must end with one).
    public func next() throws -> (tag: UInt32, payload: [UInt8])? {
        if finished { return nil }
        let head = try readExactly(12, what: "section header")
        let tag = u32(head, 0), length = u64(head, 4)
        guard let limit = StateStream.limit(for: tag) else { throw StateStreamError.unknownSection(StateStream.tagName(tag)) }
        guard length <= limit else {
            throw StateStreamError.sectionTooLarge(tag: StateStream.tagName(tag), length: length, limit: limit)
        }
        let payload = try readExactly(Int(length), what: "section \(StateStream.tagName(tag))")
        let crc = try readExactly(4, what: "checksum of \(StateStream.tagName(tag))")
        guard u32(crc, 0) == CRC32.checksum(payload) else { throw StateStreamError.checksumMismatch(StateStream.tagName(tag)) }
        if tag == StateStream.end { finished = true; return nil }
        return (tag, payload)
    }

    private func readExactly(_ count: Int, what: String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { readBytes(UnsafeMutableRawBufferPointer(rebasing: $0[done...])) }
            if n < 0 { throw StateStreamError.io(String(cString: strerror(errno))) }
            if n == 0 { throw StateStreamError.truncated("end of input in the \(what)") }
            done += n
        }
        return out
    }
}

func u32(_ b: [UInt8], _ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << ($1 * 8) } }
func u64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << ($1 * 8) } }
