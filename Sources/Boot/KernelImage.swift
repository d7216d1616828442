#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The kernel formats the loaders recognise, by content (never by file name).
public enum KernelFormat: Equatable, Sendable, CustomStringConvertible {
    /// A Linux bzImage (setup header magic "HdrS" at 0x202).
    case bzImage
    /// An ELF executable; `pvhEntry` is the XEN_ELFNOTE_PHYS32_ENTRY address when present.
    case elf(is64Bit: Bool, pvhEntry: UInt64?)
    /// A multiboot (v1) image: header with magic 0x1BADB002 in the first 8 KiB.
    case multiboot

    public var description: String {
        switch self {
        case .bzImage: return "Linux bzImage"
        case let .elf(is64, pvh):
            return "ELF\(is64 ? "64" : "32")\(pvh != nil ? " (PVH)" : "")"
        case .multiboot: return "multiboot"
        }
    }
}

/// A kernel file's bytes with its detected format.
public struct KernelImage: Sendable {
    public let path: String
    public let bytes: [UInt8]
    public let format: KernelFormat
    /// A Linux kernel: a bzImage, or an ELF vmlinux (a "Linux" note, or the Xen guest-OS note "linux").
    public let isLinux: Bool

    /// Reads and classifies `path`.
    public init(path: String) throws {
        try self.init(bytes: readFile(path, check: { try KernelImage.checkHead($0, path: path) }), path: path)
    }

    /// How much of a file `checkHead` looks at: enough for every signature (the bzImage
    /// magic at 0x202, a multiboot header in the first 8 KiB, the ELF magic).
    public static let headLength = 64 << 10

    /// Throws `notAKernel` when the first `headLength` bytes of a file carry no kernel
    /// signature, so a large file that is no kernel is refused before it is read whole.
    public static func checkHead(_ head: [UInt8], path: String) throws {
        guard LinuxSetupHeader.hasMagic(head) || MultibootHeader.find(in: head) != nil || ELFImage.hasMagic(head) else {
            throw BootError.notAKernel(path: path)
        }
    }

    /// Classifies `bytes` (`path` only names the image in errors).
    ///
    /// Order: a bzImage is recognised first (it also carries an ELF-free real-mode header);
    /// multiboot before ELF, because a multiboot kernel is usually also an ELF and asks for
    /// the multiboot protocol by carrying the header. An ELF with a PVH note is loaded as PVH.
    public init(bytes: [UInt8], path: String) throws {
        self.path = path
        self.bytes = bytes
        if LinuxSetupHeader.hasMagic(bytes) {
            format = .bzImage
            isLinux = true
        } else if MultibootHeader.find(in: bytes) != nil {
            format = .multiboot
            isLinux = false
        } else if ELFImage.hasMagic(bytes) {
            let elf = try ELFImage(bytes: bytes, path: path)
            format = .elf(is64Bit: elf.is64Bit, pvhEntry: elf.pvhEntry)
            isLinux = elf.isLinuxKernel || elf.guestOS?.lowercased() == "linux"
        } else {
            throw BootError.notAKernel(path: path)
        }
    }
}

/// Reads a whole file with plain POSIX calls (no Foundation in the loader). `check` sees
/// the first `KernelImage.headLength` bytes before the rest is read (and may throw).
public func readFile(_ path: String, limit: Int = 1 << 31, check: (([UInt8]) throws -> Void)? = nil) throws -> [UInt8] {
    // O_NONBLOCK: a FIFO must not hang the open (it is refused below as not regular).
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
    guard fd >= 0 else {
        throw BootError.unreadableFile(path: path, reason: String(cString: strerror(errno)))
    }
    defer { close(fd) }
    return try readWholeFile(fd: fd, path: path, limit: limit, check: check) { reason in
        BootError.unreadableFile(path: path, reason: reason)
    }
}

/// Reads a whole regular file from an open descriptor (from offset 0), in two steps: the
/// head (given to `check`), then the rest. Errors come from `unreadable(reason)`.
public func readWholeFile(fd: Int32, path: String, limit: Int, check: (([UInt8]) throws -> Void)?,
                          unreadable: (String) -> any Error) throws -> [UInt8] {
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw unreadable(String(cString: strerror(errno))) }
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw unreadable("not a regular file") }
    guard st.st_size <= limit else { throw unreadable("file is larger than \(limit) bytes") }
    let size = Int(st.st_size)
    func readRange(into out: inout [UInt8], from start: Int) throws -> Int {
        var done = start
        while done < out.count {
            // SAFETY: reads into the array's own storage, never past its count.
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw unreadable(String(cString: strerror(errno)))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }
    var out = [UInt8](repeating: 0, count: min(size, KernelImage.headLength))
    var done = try readRange(into: &out, from: 0)
    if let check { try check(Array(out[0..<done])) }
    if done == out.count, size > out.count {
        out += [UInt8](repeating: 0, count: size - out.count)
        done = try readRange(into: &out, from: done)
    }
    if done < out.count { out.removeLast(out.count - done) }
    return out
}

// MARK: little-endian field access on byte arrays (bounds-checked, never traps)

extension Array where Element == UInt8 {
    /// The little-endian integer at `offset`, or nil when it does not fit in the array.
    func le<T: FixedWidthInteger>(_ type: T.Type = T.self, at offset: Int) -> T? {
        let n = MemoryLayout<T>.size
        guard offset >= 0, offset <= count - n else { return nil }
        var v: T = 0
        for i in 0..<n { v |= T(self[offset + i]) << (8 * i) }
        return v
    }

    func le<T: FixedWidthInteger>(_ type: T.Type = T.self, at offset: UInt64) -> T? {
        guard offset <= UInt64(Int.max) else { return nil }
        return le(type, at: Int(offset))
    }

    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        let n = MemoryLayout<T>.size
        if offset + n > count { append(contentsOf: [UInt8](repeating: 0, count: offset + n - count)) }
        for i in 0..<n { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }

    mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        for i in 0..<MemoryLayout<T>.size { append(UInt8(truncatingIfNeeded: value >> (8 * i))) }
    }

    mutating func appendASCII(_ s: String, length: Int) {
        var b = Array(s.utf8.prefix(length))
        b += [UInt8](repeating: 0x20, count: length - b.count)
        append(contentsOf: b)
    }
}
