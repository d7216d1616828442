/// A virtual disk as a device sees it: a byte-addressed image of a fixed size.
/// virtio-blk talks to this protocol only; raw files and qcow2 images implement it.
///
/// Offsets and lengths are in bytes; devices pass whole 512-byte sectors.
/// Implementations must reject accesses past `size` with an error, never extend the image.
public protocol DiskBackend: AnyObject, Sendable {
    /// Virtual size in bytes.
    var size: UInt64 { get }
    var isReadOnly: Bool { get }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
    /// Makes every completed write durable (fdatasync).
    func flush() throws
    /// Deallocates a range; reads of it then return zeroes.
    func discard(offset: UInt64, length: UInt64) throws
    /// Makes a range read as zeroes.
    func writeZeroes(offset: UInt64, length: UInt64) throws
}

/// A disk held in memory: for device unit tests and as a scratch disk.
public final class MemoryDisk: DiskBackend, @unchecked Sendable {
    public private(set) var bytes: [UInt8]
    public let isReadOnly: Bool
    public private(set) var flushCount = 0

    public init(size: Int, readOnly: Bool = false) {
        bytes = [UInt8](repeating: 0, count: size)
        isReadOnly = readOnly
    }

    public init(bytes: [UInt8], readOnly: Bool = false) {
        self.bytes = bytes
        isReadOnly = readOnly
    }

    public var size: UInt64 { UInt64(bytes.count) }

    private func check(_ offset: UInt64, _ length: Int) throws -> Int {
        guard offset <= size, UInt64(length) <= size - offset else {
            throw DiskError.outOfRange(offset: offset, length: UInt64(length), size: size)
        }
        return Int(offset)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        let start = try check(offset, buffer.count)
        bytes.withUnsafeBytes { src in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[start..<start + buffer.count]))
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        if isReadOnly { throw DiskError.readOnly }
        let start = try check(offset, buffer.count)
        bytes.withUnsafeMutableBytes { dst in
            UnsafeMutableRawBufferPointer(rebasing: dst[start..<start + buffer.count]).copyMemory(from: buffer)
        }
    }

    public func flush() throws { flushCount += 1 }

    public func discard(offset: UInt64, length: UInt64) throws { try writeZeroes(offset: offset, length: length) }

    public func writeZeroes(offset: UInt64, length: UInt64) throws {
        if isReadOnly { throw DiskError.readOnly }
        let start = try check(offset, Int(clamping: length))
        bytes.withUnsafeMutableBytes { dst in
            UnsafeMutableRawBufferPointer(rebasing: dst[start..<start + Int(length)]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }
}

public enum DiskError: Error, Equatable, CustomStringConvertible {
    case outOfRange(offset: UInt64, length: UInt64, size: UInt64)
    case readOnly
    case io(path: String, operation: String, errno: Int32)

    public var description: String {
        switch self {
        case let .outOfRange(offset, length, size):
            return "disk access of \(length) bytes at offset \(offset) is past the end of the \(size)-byte disk"
        case .readOnly:
            return "the disk is read-only"
        case let .io(path, operation, errno):
            return "\(path): \(operation) failed (errno \(errno))"
        }
    }
}
