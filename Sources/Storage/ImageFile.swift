#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Errors about disk image files: every message names the file.
public enum StorageError: Error, Equatable, CustomStringConvertible {
    /// A system call failed on the file.
    case system(path: String, operation: String, errno: Int32)
    /// The image is damaged or hostile; `reason` says what was found.
    case corrupt(path: String, reason: String)
    /// A valid image that uses something this implementation does not do.
    case unsupported(path: String, feature: String)
    /// The image cannot be opened writable (corrupt bit, dirty bit, snapshots ...).
    case notWritable(path: String, reason: String)
    case backingMissing(path: String, backing: String)
    case backingLoop(path: String, backing: String)
    case backingTooDeep(path: String, limit: Int)
    case badSize(String)
    case badArgument(String)
    case exists(path: String)
    case refcountOverflow(path: String, cluster: UInt64)
    /// Another open of the image holds its lock (another VM or process, or another disk of
    /// the same machine naming the same file).
    case inUse(path: String, writable: Bool)

    public var description: String {
        switch self {
        case let .system(path, operation, errno):
            return "\(path): \(operation) failed: \(String(cString: strerror(errno)))"
        case let .corrupt(path, reason):
            return "\(path): the image is corrupt: \(reason); repair it with `qemu-img check -r all` or restore it from a copy"
        case let .unsupported(path, feature):
            return "\(path): \(feature) is not supported"
        case let .notWritable(path, reason):
            return "\(path): cannot open the image for writing: \(reason)"
        case let .backingMissing(path, backing):
            return "\(path): its backing file \(backing) cannot be found"
        case let .backingLoop(path, backing):
            return "\(path): the backing chain loops back to \(backing)"
        case let .backingTooDeep(path, limit):
            return "\(path): the backing chain is deeper than \(limit) images"
        case let .badSize(text):
            return "invalid size \"\(text)\": use a number of bytes with an optional K, M, G, T or P suffix"
        case let .badArgument(text):
            return text
        case let .exists(path):
            return "\(path): the file already exists; choose another name or remove it first"
        case let .inUse(path, writable):
            return writable
                ? "\(path): the image is in use (another process, or another disk of this machine, has it open); an image can be written by one user at a time"
                : "\(path): the image is being written by another process or another disk of this machine"
        case let .refcountOverflow(path, cluster):
            return "\(path): the reference count of host cluster \(cluster) would overflow"
        }
    }
}

/// Opens a path with open(2)-style `flags` and returns the descriptor, or throws a
/// `StorageError` naming the path. vmd passes one that opens as the VM's owner.
public typealias ImageOpener = (_ path: String, _ flags: Int32) throws -> Int32

/// An open file with positional I/O that retries short transfers and EINTR.
/// The file descriptor is closed when the object goes away.
final class ImageFile: @unchecked Sendable {
    let path: String
    let fd: Int32
    let isReadOnly: Bool
    /// False once `release()` gave the descriptor away.
    private var ownsFD = true

    private init(path: String, fd: Int32, readOnly: Bool) {
        self.path = path
        self.fd = fd
        self.isReadOnly = readOnly
    }

    /// Opens an image file: only a regular file or a block device (a FIFO, socket or
    /// character device is refused, and never blocks the open: O_NONBLOCK until the type is
    /// known). `lock`: take the image's OFD lock (`lockImage`), as every user of an image
    /// must. `opener` (vmd's: as the VM owner, no symbolic links) replaces open(2).
    static func open(_ path: String, readOnly: Bool, lock: Bool = true,
                     opener: ImageOpener? = nil) throws -> ImageFile {
        let flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NONBLOCK | O_NOCTTY
        let fd: Int32
        if let opener {
            fd = try opener(path, flags)
        } else {
            fd = Glibc.open(path, flags)
            if fd < 0 { throw StorageError.system(path: path, operation: "open", errno: errno) }
        }
        let file = ImageFile(path: path, fd: fd, readOnly: readOnly)
        try checkType(fd, path: path)
        if lock { try lockImage(fd, path: path, exclusive: !readOnly) }
        return file
    }

    /// Refuses what is not a regular file or a block device, then clears O_NONBLOCK.
    static func checkType(_ fd: Int32, path: String) throws {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw StorageError.system(path: path, operation: "stat", errno: errno) }
        switch st.st_mode & S_IFMT {
        case S_IFREG, S_IFBLK: break
        case S_IFDIR: throw StorageError.badArgument("\(path): is a directory, not a disk image")
        default: throw StorageError.badArgument("\(path): not a regular file or block device")
        }
        let fl = fcntl(fd, F_GETFL)
        if fl >= 0 { _ = fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) }
    }

    static let F_OFD_GETLK: Int32 = 36
    static let F_OFD_SETLK: Int32 = 37

    /// Locks an image as QEMU does (block/file-posix.c), so that we, QEMU and other
    /// instances of us see each other: open-file-description locks, shared (F_RDLCK), on
    /// byte 100+p for each permission p held and on byte 200+p for each permission p not
    /// shared with others (p: 0 consistent read, 1 write, 2 write-unchanged, 3 resize).
    /// A writable image holds all four and shares neither write nor resize; a read-only one
    /// (backing file, cdrom) holds read and shares neither write nor resize either. So two
    /// writers, or a writer and a reader, of one image conflict; readers share; `qemu-img
    /// -U` may still look. OFD locks belong to the open file, not the process: they travel
    /// with a descriptor passed to another process (vmd → VM process), conflict between two
    /// opens in one process (one machine naming a file twice), and go with the last close.
    static func lockImage(_ fd: Int32, path: String, exclusive: Bool) throws {
        let held: [Int] = exclusive ? [0, 1, 2, 3] : [0]
        let unshared: [Int] = [1, 3]
        func lockByte(_ at: Int) -> Int32 {
            var fl = flock()
            fl.l_type = Int16(F_RDLCK)
            fl.l_whence = Int16(SEEK_SET)
            fl.l_start = at
            fl.l_len = 1
            // SAFETY: fl lives across the call; F_OFD_SETLK reads a struct flock.
            return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno
        }
        /// True when another open file holds a lock on byte `at`.
        func taken(_ at: Int) -> Bool {
            var fl = flock()
            fl.l_type = Int16(F_WRLCK)
            fl.l_whence = Int16(SEEK_SET)
            fl.l_start = at
            fl.l_len = 1
            // SAFETY: as above; F_OFD_GETLK writes the conflicting lock (or F_UNLCK) back.
            guard fcntl(fd, F_OFD_GETLK, &fl) == 0 else { return false }
            return Int32(fl.l_type) != F_UNLCK
        }
        // A conflict is looked at again for up to 100 ms: a process forked by anyone in this
        // process (posix_spawn, Foundation's Process) shares our open files until its exec,
        // so an image closed here a moment ago can still look held.
        for attempt in 0..<20 {
            var conflict = false
            for at in held.map({ 100 + $0 }) + unshared.map({ 200 + $0 }) {
                let e = lockByte(at)
                if e == 0 { continue }
                // File systems without locks (some FUSE, NFS without lockd): carry on unlocked.
                if e == ENOLCK || e == EINVAL || e == EOPNOTSUPP { return }
                if e == EAGAIN || e == EACCES { conflict = true; break }
                throw StorageError.system(path: path, operation: "lock", errno: e)
            }
            // Someone who does not share what we hold, or holds what we do not share.
            if !conflict {
                conflict = held.contains(where: { taken(200 + $0) }) || unshared.contains(where: { taken(100 + $0) })
            }
            if !conflict { return }
            if attempt < 19 { usleep(5_000) }
        }
        throw StorageError.inUse(path: path, writable: exclusive)
    }

    /// Wraps an already open descriptor (passed from vmd); it is closed with the object.
    static func adopt(fd: Int32, path: String, readOnly: Bool) -> ImageFile {
        ImageFile(path: path, fd: fd, readOnly: readOnly)
    }

    /// Creates a new file; fails if it exists (never overwrites a disk).
    static func create(_ path: String) throws -> ImageFile {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        if fd < 0 {
            if errno == EEXIST { throw StorageError.exists(path: path) }
            throw StorageError.system(path: path, operation: "create", errno: errno)
        }
        let file = ImageFile(path: path, fd: fd, readOnly: false)
        try lockImage(fd, path: path, exclusive: true)
        return file
    }

    deinit { if ownsFD { close(fd) } }

    /// Gives the descriptor to the caller: it is no longer closed with the object.
    func release() -> Int32 {
        ownsFD = false
        return fd
    }

    /// Current length of the file (works for block devices too).
    func length() throws -> UInt64 {
        let end = lseek(fd, 0, SEEK_END)
        if end < 0 { throw StorageError.system(path: path, operation: "seek", errno: errno) }
        return UInt64(end)
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        var done = 0
        while done < buffer.count {
            // SAFETY: base address + done stays inside `buffer` (done < count).
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw StorageError.system(path: path, operation: "read", errno: errno)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Reads exactly `buffer.count` bytes; bytes past the end of the file read as zeroes.
    func readZeroFilled(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        if buffer.isEmpty { return }
        let n = try read(into: buffer, at: offset)
        if n < buffer.count {
            // SAFETY: the tail [n, count) lies inside `buffer`.
            UnsafeMutableRawBufferPointer(rebasing: buffer[n...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    func readBytes(count: Int, at offset: UInt64) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let n = try bytes.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        if n < count { bytes.removeSubrange(n...) }
        return bytes
    }

    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            // SAFETY: base address + done stays inside `buffer` (done < count).
            let n = pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw StorageError.system(path: path, operation: "write", errno: errno)
            }
            done += n
        }
    }

    func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    func sync() throws {
        if fdatasync(fd) != 0 { throw StorageError.system(path: path, operation: "fdatasync", errno: errno) }
    }

    func truncate(to length: UInt64) throws {
        if ftruncate(fd, off_t(length)) != 0 {
            throw StorageError.system(path: path, operation: "truncate", errno: errno)
        }
    }

    typealias FallocateFunction = @convention(c) (Int32, Int32, Int64, Int64) -> Int32
    /// glibc's fallocate(2) wrapper, looked up at run time: Swift's Glibc module is built
    /// without _GNU_SOURCE, so the declaration is not visible.
    static let fallocateFunction: FallocateFunction? = {
        guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "fallocate64") ?? dlsym(dlopen(nil, RTLD_NOW), "fallocate") else { return nil }
        return unsafeBitCast(symbol, to: FallocateFunction.self)
    }()

    /// fallocate(2); false when unsupported.
    func allocate(mode: Int32, offset: UInt64, length: UInt64) -> Bool {
        guard let f = ImageFile.fallocateFunction else { return false }
        return f(fd, mode, Int64(offset), Int64(length)) == 0
    }

    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    static let fallocKeepSize: Int32 = 0x01
    static let fallocPunchHole: Int32 = 0x02
    static let fallocZeroRange: Int32 = 0x10

    /// Deallocates a range, keeping the size. Returns false when the file system cannot.
    func punchHole(offset: UInt64, length: UInt64) -> Bool {
        if length == 0 { return true }
        return allocate(mode: ImageFile.fallocPunchHole | ImageFile.fallocKeepSize, offset: offset, length: length)
    }

    /// Writes zeroes over a range by writing buffers (the fallback when fallocate cannot).
    func writeZeroBytes(offset: UInt64, length: UInt64) throws {
        let chunk = Int(min(length, 1 << 20))
        if chunk == 0 { return }
        let zeroes = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeroes.deallocate() }
        zeroes.initializeMemory(as: UInt8.self, repeating: 0)
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(UInt64(chunk), length - done))
            // SAFETY: n <= chunk, the buffer's size.
            try write(UnsafeRawBufferPointer(rebasing: zeroes[0..<n]), at: offset + done)
            done += UInt64(n)
        }
    }

    /// Where the next data region at or after `offset` starts (ImageFile.seekData), nil when none.
    func nextData(from offset: UInt64) -> UInt64? {
        let r = lseek(fd, off_t(offset), ImageFile.seekData)
        if r < 0 { return errno == ENXIO ? nil : offset }
        return UInt64(r)
    }

    /// Where the hole after `offset` starts (ImageFile.seekHole); the file end when none.
    func nextHole(from offset: UInt64) -> UInt64 {
        let r = lseek(fd, off_t(offset), ImageFile.seekHole)
        if r < 0 { return UInt64.max }
        return UInt64(r)
    }

    /// The real path of the file, used to detect loops in backing chains.
    static func canonicalPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }
}

/// A lock for the image objects: each public operation holds it, so an image can be
/// shared between threads (operations on one image are serialised).
final class ImageLock: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    @inline(__always)
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}

extension UnsafeRawBufferPointer {
    /// True when every byte is zero (word-at-a-time).
    func isAllZero() -> Bool {
        guard let base = baseAddress else { return true }
        var i = 0
        let n = count
        // SAFETY: unaligned loads stay inside [0, count).
        while i + 8 <= n {
            if base.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
            i += 8
        }
        while i < n {
            if base.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
            i += 1
        }
        return true
    }
}

@inline(__always) func loadBE64(_ p: UnsafeRawPointer, _ offset: Int) -> UInt64 {
    UInt64(bigEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
}

extension Array where Element == UInt8 {
    func be64(_ at: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(self[at + i]) }
        return v
    }
    func be32(_ at: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(self[at + i]) }
        return v
    }
    mutating func putBE64(_ v: UInt64, at: Int) {
        for i in 0..<8 { self[at + i] = UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64(i))) }
    }
    mutating func putBE32(_ v: UInt32, at: Int) {
        for i in 0..<4 { self[at + i] = UInt8(truncatingIfNeeded: v >> (24 - 8 * UInt32(i))) }
    }
}

/// Decodes a big-endian UInt64 table (L1, L2, refcount table).
func decodeBE64Table(_ raw: [UInt8], count: Int) -> [UInt64] {
    [UInt64](unsafeUninitializedCapacity: count) { out, initialized in
        raw.withUnsafeBytes { src in
            // SAFETY: i * 8 + 8 <= count * 8 <= raw.count for every i read.
            for i in 0..<count { out[i] = i * 8 + 8 <= src.count ? loadBE64(src.baseAddress!, i * 8) : 0 }
        }
        initialized = count
    }
}

/// Encodes a UInt64 table big-endian.
func encodeBE64Table(_ table: [UInt64]) -> [UInt8] {
    [UInt8](unsafeUninitializedCapacity: table.count * 8) { out, initialized in
        let raw = UnsafeMutableRawBufferPointer(out)
        // SAFETY: i * 8 + 8 <= table.count * 8, the buffer's size.
        for (i, v) in table.enumerated() { raw.storeBytes(of: v.bigEndian, toByteOffset: i * 8, as: UInt64.self) }
        initialized = table.count * 8
    }
}

func be64Bytes(_ v: UInt64) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: 8)
    b.putBE64(v, at: 0)
    return b
}
