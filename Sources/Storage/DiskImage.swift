#if canImport(Glibc)
import Glibc
#endif

/// The image formats this layer reads and writes.
public enum DiskImageFormat: String, Sendable, CaseIterable, Equatable {
    case raw
    case qcow2
}

/// Opening, creating, detecting and converting disk images.
public enum DiskImage {
    /// Splits an optional `raw:` / `qcow2:` prefix off a disk argument (vmctl/vm.conf syntax).
    public static func parseSpec(_ text: String) -> (format: DiskImageFormat?, path: String) {
        for format in DiskImageFormat.allCases {
            let prefix = format.rawValue + ":"
            if text.hasPrefix(prefix) { return (format, String(text.dropFirst(prefix.count))) }
        }
        return (nil, text)
    }

    /// The format given by the file's magic, or nil when the file has none we know
    /// (a raw image has no magic).
    public static func probeFormat(path: String) throws -> DiskImageFormat? {
        let file = try ImageFile.open(path, readOnly: true, lock: false)
        let head = try file.readBytes(count: 4, at: 0)
        if head.count == 4, head.be32(0) == Qcow2Header.magic { return .qcow2 }
        return nil
    }

    /// The format a file name's extension suggests (.qcow2, .qcow, .qcow3 → qcow2; .raw, .img → raw).
    public static func formatFromExtension(_ path: String) -> DiskImageFormat? {
        let name = path.split(separator: "/").last.map(String.init) ?? path
        guard let dot = name.lastIndex(of: ".") else { return nil }
        switch name[name.index(after: dot)...].lowercased() {
        case "qcow2", "qcow", "qcow3", "qcw": return .qcow2
        case "raw", "img", "iso": return .raw
        default: return nil
        }
    }

    /// Detects the format of a disk argument: the prefix, then the magic of an existing
    /// file (an existing file without qcow2 magic is raw), then the extension of a new
    /// file, else raw.
    public static func detectFormat(_ spec: String) throws -> (format: DiskImageFormat, path: String) {
        let (prefixed, path) = parseSpec(spec)
        if let prefixed { return (prefixed, path) }
        if access(path, F_OK) == 0 { return (try probeFormat(path: path) ?? .raw, path) }
        return (formatFromExtension(path) ?? .raw, path)
    }

    /// Opens an image named by a disk argument (`qcow2:/path`, `/path.img` ...).
    public static func open(_ spec: String, readOnly: Bool = false) throws -> any DiskBackend {
        let (format, path) = try detectFormat(spec)
        return try open(path: path, format: format, readOnly: readOnly)
    }

    public static func open(path: String, format: DiskImageFormat, readOnly: Bool = false) throws -> any DiskBackend {
        switch format {
        case .raw: return try RawImage(path: path, readOnly: readOnly)
        case .qcow2: return try Qcow2Image(path: path, readOnly: readOnly)
        }
    }

    /// Parses sizes such as 512, 64K, 512M, 10G, 1T (binary units; an optional trailing B).
    public static func parseSize(_ text: String) throws -> UInt64 {
        var digits = text.trimmingCharacters(in: " ").uppercased()
        if digits.hasSuffix("IB") { digits.removeLast(2) } else if digits.hasSuffix("B"), digits.count > 1 { digits.removeLast() }
        var shift: UInt64 = 0
        if let unit = digits.last, !unit.isNumber {
            switch unit {
            case "K": shift = 10
            case "M": shift = 20
            case "G": shift = 30
            case "T": shift = 40
            case "P": shift = 50
            default: throw StorageError.badSize(text)
            }
            digits.removeLast()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let value = UInt64(digits) else {
            throw StorageError.badSize(text)
        }
        guard value <= UInt64(Int64.max) >> shift else { throw StorageError.badSize(text) }
        return value << shift
    }

    /// Progress of a copy: bytes done, bytes in all.
    public typealias Progress = (_ done: UInt64, _ total: UInt64) -> Void

    /// Creates a disk image.
    /// - `base`: makes a qcow2 overlay on this image (its size unless `size` is larger).
    /// - `input`: copies and converts this image (only data, zeroes are skipped).
    /// - otherwise `size` is required.
    /// The new file must not exist; on failure it is removed.
    @discardableResult
    public static func create(path: String, format: DiskImageFormat, size: UInt64?, base: String? = nil,
                              input: String? = nil, progress: Progress? = nil) throws -> any DiskBackend {
        if base != nil, input != nil { throw StorageError.badArgument("a base image (-b) and an input image (-i) cannot be used together") }
        if let base {
            guard format == .qcow2 else {
                throw StorageError.badArgument("\(path): a disk with a base image must use the qcow2 format")
            }
            let (baseFormat, basePath) = try detectFormat(base)
            let baseImage = try open(path: basePath, format: baseFormat, readOnly: true)
            let newSize = size ?? baseImage.size
            guard newSize >= baseImage.size else {
                throw StorageError.badArgument("\(path): the size \(newSize) is smaller than the base image's \(baseImage.size) bytes")
            }
            return try Qcow2Image.create(path: path, size: newSize, backingFile: backingName(basePath, for: path), backingFormat: baseFormat)
        }
        if let input {
            let (inFormat, inPath) = try detectFormat(input)
            let source = try open(path: inPath, format: inFormat, readOnly: true)
            let newSize = size ?? source.size
            guard newSize >= source.size else {
                throw StorageError.badArgument("\(path): the size \(newSize) is smaller than the input image's \(source.size) bytes")
            }
            let target = try createEmpty(path: path, format: format, size: newSize)
            do {
                try copy(from: source, to: target, progress: progress)
            } catch {
                unlink(path)
                throw error
            }
            return target
        }
        guard let size else { throw StorageError.badArgument("\(path): a size is needed (-s) unless a base (-b) or input (-i) image gives it") }
        return try createEmpty(path: path, format: format, size: size)
    }

    static func createEmpty(path: String, format: DiskImageFormat, size: UInt64) throws -> any DiskBackend {
        switch format {
        case .raw: return try RawImage.create(path: path, size: size)
        case .qcow2: return try Qcow2Image.create(path: path, size: size)
        }
    }

    /// The backing file name to store: relative names stay relative when they resolve
    /// from the new image's directory (as qemu resolves them); otherwise the absolute path.
    static func backingName(_ base: String, for path: String) -> String {
        if base.hasPrefix("/") { return base }
        let fromOverlay = Qcow2Image.resolveBacking(base, of: path)
        if let a = ImageFile.canonicalPath(fromOverlay), a == ImageFile.canonicalPath(base) { return base }
        return ImageFile.canonicalPath(base) ?? base
    }

    /// Copies every byte of `source` into `target`, which must read as zeroes (a new
    /// image). Ranges the source maps as holes or zero clusters, and chunks that are all
    /// zero, are not written, so the target stays sparse.
    public static func copy(from source: any DiskBackend, to target: any DiskBackend, progress: Progress? = nil) throws {
        let total = source.size
        guard target.size >= total else { throw DiskError.outOfRange(offset: 0, length: total, size: target.size) }
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        let map = source as? AllocationMapping
        var at: UInt64 = 0
        progress?(0, total)
        while at < total {
            var n = min(UInt64(chunk), total - at)
            if let map {
                let (state, length) = try map.allocation(at: at, length: n)
                n = max(1, min(n, length))
                if state == .zero {
                    at += n
                    progress?(at, total)
                    continue
                }
            }
            // SAFETY: n <= chunk, the buffer's size.
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(n)])
            try source.read(into: slice, at: at)
            if !UnsafeRawBufferPointer(slice).isAllZero() {
                try target.write(UnsafeRawBufferPointer(slice), at: at)
            }
            at += n
            progress?(at, total)
        }
        try target.flush()
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s.removeFirst() }
        while s.last == set { s.removeLast() }
        return String(s)
    }
}
