#if canImport(Glibc)
import Glibc
#endif

/// A raw disk image: the file's bytes are the disk's bytes.
///
/// Thread-safety: the methods do only positional I/O on an fd, so a RawImage may be used
/// from several threads at once.
public final class RawImage: DiskBackend, @unchecked Sendable {
    public let path: String
    public let size: UInt64
    public let isReadOnly: Bool
    let file: ImageFile

    /// Opens an existing raw image (or block device).
    public init(path: String, readOnly: Bool = false) throws {
        file = try ImageFile.open(path, readOnly: readOnly)
        self.path = path
        self.isReadOnly = readOnly
        size = try file.length()
    }

    /// Uses an already open descriptor (e.g. passed by vmd to a sandboxed VM process);
    /// the image owns it from now on and closes it. `path` is used in messages only.
    public init(fileDescriptor: Int32, path: String, readOnly: Bool) throws {
        file = ImageFile.adopt(fd: fileDescriptor, path: path, readOnly: readOnly)
        self.path = path
        self.isReadOnly = readOnly
        size = try file.length()
    }

    init(file: ImageFile) throws {
        self.file = file
        self.path = file.path
        self.isReadOnly = file.isReadOnly
        size = try file.length()
    }

    /// Creates a sparse raw image of `size` bytes; fails if the file exists.
    @discardableResult
    public static func create(path: String, size: UInt64) throws -> RawImage {
        guard size <= UInt64(Int64.max) else { throw StorageError.badArgument("\(path): size \(size) is too large") }
        do {
            let file = try ImageFile.create(path)
            try file.truncate(to: size)
        }
        return try RawImage(path: path)
    }

    private func check(_ offset: UInt64, _ length: UInt64) throws {
        guard offset <= size, length <= size - offset else {
            throw DiskError.outOfRange(offset: offset, length: length, size: size)
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        try check(offset, UInt64(buffer.count))
        try file.readZeroFilled(into: buffer, at: offset)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        if isReadOnly { throw DiskError.readOnly }
        try check(offset, UInt64(buffer.count))
        try file.write(buffer, at: offset)
    }

    public func flush() throws {
        if isReadOnly { return }
        try file.sync()
    }

    public func discard(offset: UInt64, length: UInt64) throws {
        if isReadOnly { throw DiskError.readOnly }
        try check(offset, length)
        if !file.punchHole(offset: offset, length: length) {
            try file.writeZeroBytes(offset: offset, length: length)
        }
    }

    public func writeZeroes(offset: UInt64, length: UInt64) throws {
        if isReadOnly { throw DiskError.readOnly }
        try check(offset, length)
        if length == 0 { return }
        if file.allocate(mode: ImageFile.fallocZeroRange | ImageFile.fallocKeepSize, offset: offset, length: length) {
            return
        }
        if file.punchHole(offset: offset, length: length) { return }
        try file.writeZeroBytes(offset: offset, length: length)
    }
}

extension RawImage: AllocationMapping {
    public func allocation(at offset: UInt64, length: UInt64) throws -> (state: AllocationState, length: UInt64) {
        try check(offset, length)
        if length == 0 { return (.data, 0) }
        guard let data = file.nextData(from: offset) else { return (.zero, length) }
        if data > offset { return (.zero, min(length, data - offset)) }
        let hole = file.nextHole(from: offset)
        return (.data, min(length, max(hole, offset + 1) - offset))
    }
}

/// What a range of a disk holds, as far as the image's metadata knows.
public enum AllocationState: Sendable, Equatable {
    /// Reads as zeroes without reading data.
    case zero
    /// Holds (or may hold) data.
    case data
}

/// Images that can tell allocated ranges from holes (used by convert to skip zeroes).
public protocol AllocationMapping {
    /// The state of the range starting at `offset`, and how many bytes (≥ 1, ≤ length)
    /// from there share that state.
    func allocation(at offset: UInt64, length: UInt64) throws -> (state: AllocationState, length: UInt64)
}
