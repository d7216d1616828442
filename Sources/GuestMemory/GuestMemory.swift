#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Errors raised by guest-memory accesses. Every guest address is checked: an access that
/// is not wholly inside one RAM region fails with `outOfBounds` and touches nothing.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible {
    case outOfBounds(address: UInt64, length: Int)
    case mapFailed(size: Int, errno: Int32)
    case invalidLayout(String)

    public var description: String {
        switch self {
        case let .outOfBounds(address, length):
            return "guest memory access of \(length) bytes at 0x\(String(address, radix: 16)) is outside guest RAM"
        case let .mapFailed(size, err):
            return "cannot map \(size) bytes of guest memory: \(String(cString: strerror(err)))"
        case let .invalidLayout(why):
            return "invalid guest memory layout: \(why)"
        }
    }
}

/// One contiguous range of guest-physical RAM backed by host memory.
public struct MemoryRegion: Sendable {
    /// Guest-physical address of the first byte.
    public let guestBase: UInt64
    /// Size in bytes (a multiple of the host page size).
    public let size: Int
    /// Host virtual address of the first byte.
    // SAFETY: the pointer is owned by the GuestMemory that created the region and stays
    // valid until that object is deinitialised; regions never escape it without it.
    nonisolated(unsafe) public let host: UnsafeMutableRawPointer

    public var guestEnd: UInt64 { guestBase &+ UInt64(size) }

    @inline(__always)
    public func contains(_ address: UInt64, length: Int) -> Bool {
        address >= guestBase && length >= 0 && address &- guestBase <= UInt64(size)
            && UInt64(size) - (address &- guestBase) >= UInt64(length)
    }
}

/// The guest-physical address space: RAM regions mmap'd anonymously (MAP_NORESERVE, so
/// untouched guest RAM costs nothing), with bounds-checked typed little-endian accessors.
///
/// The same object serves KVM (its regions become memory slots), the software CPU and
/// device unit tests, which simply create a small `GuestMemory(size:)`.
///
/// Thread safety: the region table is immutable after init. Concurrent accesses to the
/// same bytes from several threads race exactly as they would on real hardware; devices
/// and vCPUs coordinate through the guest's own protocols (virtqueue barriers).
public final class GuestMemory: @unchecked Sendable {
    public let regions: [MemoryRegion]

    /// Creates guest RAM with the given regions (guest base and size in bytes).
    /// Sizes are rounded up to whole 4 KiB pages. Regions must not overlap.
    public init(layout: [(base: UInt64, size: Int)]) throws {
        let page = 4096
        var made: [MemoryRegion] = []
        let sorted = layout.sorted { $0.base < $1.base }
        var lastEnd: UInt64 = 0
        for (index, entry) in sorted.enumerated() {
            guard entry.size > 0 else { continue }
            guard entry.base % UInt64(page) == 0 else {
                throw GuestMemoryError.invalidLayout("region base 0x\(String(entry.base, radix: 16)) is not page aligned")
            }
            if index > 0 && entry.base < lastEnd {
                throw GuestMemoryError.invalidLayout("regions overlap at 0x\(String(entry.base, radix: 16))")
            }
            let size = (entry.size + page - 1) / page * page
            let ptr = mmap(nil, size, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            guard let ptr, ptr != MAP_FAILED else {
                let err = errno
                for region in made { munmap(region.host, region.size) }
                throw GuestMemoryError.mapFailed(size: size, errno: err)
            }
            made.append(MemoryRegion(guestBase: entry.base, size: size, host: ptr))
            lastEnd = entry.base + UInt64(size)
        }
        self.regions = made
    }

    /// A single RAM region of `size` bytes at guest-physical address 0 (unit tests).
    public convenience init(size: Int) throws {
        try self.init(layout: [(base: 0, size: size)])
    }

    deinit {
        for region in regions { munmap(region.host, region.size) }
    }

    /// Total bytes of guest RAM.
    public var totalSize: Int { regions.reduce(0) { $0 + $1.size } }

    /// The host pointer for `length` bytes at `address`, or nil unless all of them lie
    /// inside one RAM region. This is the one bounds check every access goes through.
    @inline(__always)
    public func hostPointer(_ address: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        for region in regions where region.contains(address, length: length) {
            return region.host + Int(address - region.guestBase)
        }
        return nil
    }

    /// True when `length` bytes at `address` are all guest RAM.
    public func isRAM(_ address: UInt64, length: Int = 1) -> Bool {
        hostPointer(address, length: length) != nil
    }

    @inline(__always)
    func checked(_ address: UInt64, _ length: Int) throws -> UnsafeMutableRawPointer {
        guard let p = hostPointer(address, length: length) else {
            throw GuestMemoryError.outOfBounds(address: address, length: length)
        }
        return p
    }

    // MARK: typed little-endian access

    @inline(__always)
    public func read<T: FixedWidthInteger>(_ type: T.Type = T.self, at address: UInt64) throws -> T {
        let p = try checked(address, MemoryLayout<T>.size)
        // SAFETY: `checked` proved the bytes lie inside a live region; loadUnaligned
        // copes with any alignment.
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    @inline(__always)
    public func write<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws {
        let p = try checked(address, MemoryLayout<T>.size)
        // SAFETY: bounds proved by `checked`.
        p.storeBytes(of: value.littleEndian, as: T.self)
    }

    // MARK: byte ranges

    /// Copies guest bytes into `buffer`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at address: UInt64) throws {
        guard buffer.count > 0 else { return }
        let p = try checked(address, buffer.count)
        // SAFETY: source bounds proved by `checked`; destination is the caller's buffer.
        buffer.baseAddress!.copyMemory(from: p, byteCount: buffer.count)
    }

    /// Copies `buffer` into guest memory.
    public func write(from buffer: UnsafeRawBufferPointer, at address: UInt64) throws {
        guard buffer.count > 0 else { return }
        let p = try checked(address, buffer.count)
        // SAFETY: destination bounds proved by `checked`.
        p.copyMemory(from: buffer.baseAddress!, byteCount: buffer.count)
    }

    public func readBytes(at address: UInt64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(into: $0, at: address) }
        return out
    }

    public func write(bytes: [UInt8], at address: UInt64) throws {
        try bytes.withUnsafeBytes { try write(from: $0, at: address) }
    }

    /// Fills `length` bytes at `address` with `byte`.
    public func fill(_ byte: UInt8, at address: UInt64, length: Int) throws {
        guard length > 0 else { return }
        let p = try checked(address, length)
        // SAFETY: bounds proved by `checked`.
        memset(p, Int32(byte), length)
    }

    /// Reads a NUL-terminated string of at most `maxLength` bytes.
    public func readCString(at address: UInt64, maxLength: Int) throws -> String {
        var bytes: [UInt8] = []
        var a = address
        while bytes.count < maxLength {
            let b: UInt8 = try read(at: a)
            if b == 0 { break }
            bytes.append(b)
            a &+= 1
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
