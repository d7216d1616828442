#if canImport(Glibc)
import Glibc
#endif
import CZlib

/// A qcow2 image (version 2 or 3), optionally on a chain of backing files.
///
/// Writes are ordered so that a crash (the process killed at any point) leaves an image
/// that `qemu-img check` accepts, with at worst leaked clusters:
///   refcount of a new cluster → its data → the L2 entry (or: new L2 table → L1 entry),
///   and only then the refcount decrement of a cluster no longer referenced.
/// New clusters are taken from clusters freed in this session, then from the file's end.
/// Refcounts are never lazy; the dirty bit is never set by us.
///
/// Thread-safety: every public operation takes the image's lock, so one image may be
/// used from several threads; operations on it are serialised.
public final class Qcow2Image: DiskBackend, AllocationMapping, @unchecked Sendable {
    public let path: String
    public let size: UInt64
    public let isReadOnly: Bool
    public let version: Int
    public let clusterSize: Int
    /// The backing file name as stored in the header, and its format if recorded.
    public let backingFile: String?
    public let backingFormat: String?
    /// The opened backing image (read-only), if any.
    public let backing: (any DiskBackend)?
    /// Set when corruption was detected: the image is then never written again.
    public private(set) var corruption: String?

    /// Deepest backing chain accepted (vmd allows 4).
    public static let maxChainDepth = 16

    let file: ImageFile
    let lock = ImageLock()
    let clusterBits: Int
    let l2Bits: Int
    let clusterMask: UInt64
    var l1: [UInt64]
    let l1Offset: UInt64
    var refcountTableOffset: UInt64
    var refcountTable: [UInt64]
    let refcountBits: Int
    let refcountMax: UInt64
    let refcountsPerBlock: UInt64
    var fileLength: UInt64
    var nextFreeCluster: UInt64
    var freeClusters: [UInt64] = []
    var l2Cache: ClusterCache<[UInt64]>
    var refcountCache: ClusterCache<[UInt8]>
    var compressedCache: (entry: UInt64, data: [UInt8])?
    /// Host clusters holding L2 tables or refcount blocks (what the L1 and refcount tables
    /// point at), kept up to date as tables are added: no data write, reuse or free may
    /// touch them (`checkNoOverlap`).
    var metadataClusters: Set<UInt64> = []
    /// The snapshot table's first cluster (0: none).
    let snapshotsOffset: UInt64

    // Table entry bits.
    static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let copiedFlag: UInt64 = 1 << 63
    static let compressedFlag: UInt64 = 1 << 62
    static let zeroFlag: UInt64 = 1

    public convenience init(path: String, readOnly: Bool = false) throws {
        try self.init(path: path, readOnly: readOnly, chain: [])
    }

    /// Uses an already open descriptor (e.g. passed by vmd); the image owns and closes it.
    /// A backing file is still opened by name, relative to `path`'s directory.
    public convenience init(fileDescriptor: Int32, path: String, readOnly: Bool) throws {
        try self.init(file: ImageFile.adopt(fd: fileDescriptor, path: path, readOnly: readOnly), chain: [])
    }

    /// `chain` holds the canonical paths of the images above this one (loop detection).
    convenience init(path: String, readOnly: Bool, chain: [String]) throws {
        try self.init(file: ImageFile.open(path, readOnly: readOnly), chain: chain)
    }

    /// Opens the backing image named in a header: (name, recorded format, this image's
    /// path, canonical paths above) → backend. By default by name (`openBacking`); an
    /// image built from descriptors passed by vmd takes the next descriptor instead.
    typealias BackingOpener = (_ name: String, _ format: String?, _ path: String, _ chain: [String]) throws -> any DiskBackend

    init(file: ImageFile, chain: [String], backingOpener: BackingOpener? = nil) throws {
        let path = file.path
        let readOnly = file.isReadOnly
        self.path = path
        self.isReadOnly = readOnly
        self.file = file
        fileLength = try file.length()
        let (h, first) = try Qcow2Image.readHeader(file)
        version = Int(h.version)
        clusterBits = Int(h.clusterBits)
        clusterSize = 1 << clusterBits
        clusterMask = UInt64(clusterSize - 1)
        l2Bits = clusterBits - 3
        size = h.size
        backingFormat = h.backingFormat

        if h.cryptMethod != 0 { throw StorageError.unsupported(path: path, feature: "encryption (crypt_method \(h.cryptMethod))") }
        let known = Qcow2Header.incompatDirty | Qcow2Header.incompatCorrupt
        var unknown = h.incompatibleFeatures & ~known
        if unknown & Qcow2Header.incompatCompressionType != 0, h.compressionType == 0 {
            unknown &= ~Qcow2Header.incompatCompressionType  // explicit zlib: fine
        }
        if unknown & Qcow2Header.incompatCompressionType != 0 {
            throw StorageError.unsupported(path: path, feature: "compression type \(h.compressionType) (only zlib is read)")
        }
        if unknown & Qcow2Header.incompatExternalData != 0 {
            throw StorageError.unsupported(path: path, feature: "an external data file")
        }
        if unknown & Qcow2Header.incompatExtendedL2 != 0 {
            throw StorageError.unsupported(path: path, feature: "extended L2 entries (subclusters)")
        }
        if unknown != 0 { throw StorageError.unsupported(path: path, feature: h.describeIncompatible(unknown)) }
        if !readOnly {
            if h.incompatibleFeatures & Qcow2Header.incompatCorrupt != 0 {
                throw StorageError.notWritable(path: path, reason: "its corrupt bit is set; run `qemu-img check -r all` on it, or open it read-only")
            }
            if h.incompatibleFeatures & Qcow2Header.incompatDirty != 0 {
                throw StorageError.notWritable(path: path, reason: "its dirty bit is set (refcounts may be stale); run `qemu-img check -r all` on it first")
            }
            if h.snapshotCount != 0 {
                throw StorageError.notWritable(path: path, reason: "it has \(h.snapshotCount) internal snapshots, which this implementation does not update")
            }
        }
        guard h.size <= UInt64(Int64.max) else { throw StorageError.corrupt(path: path, reason: "the virtual size \(h.size) is too large") }

        // L1 table.
        let l1Span = UInt64(clusterSize) << UInt64(l2Bits)  // bytes covered by one L1 entry
        let l1Needed = (h.size + l1Span - 1) / l1Span
        guard UInt64(h.l1Size) >= l1Needed else {
            throw StorageError.corrupt(path: path, reason: "the L1 table has \(h.l1Size) entries but the \(h.size)-byte disk needs \(l1Needed)")
        }
        guard h.l1Size <= 32 * 1024 * 1024 / 8 else {
            throw StorageError.corrupt(path: path, reason: "the L1 table size \(h.l1Size) is larger than 32 MiB")
        }
        guard h.l1TableOffset & clusterMask == 0 || h.l1Size == 0 else {
            throw StorageError.corrupt(path: path, reason: "the L1 table offset 0x\(String(h.l1TableOffset, radix: 16)) is not cluster-aligned")
        }
        let l1Bytes = UInt64(h.l1Size) * 8
        guard h.l1TableOffset <= fileLength, l1Bytes <= fileLength - h.l1TableOffset else {
            throw StorageError.corrupt(path: path, reason: "the L1 table at 0x\(String(h.l1TableOffset, radix: 16)) lies past the end of the file")
        }
        l1Offset = h.l1TableOffset
        let l1Raw = try file.readBytes(count: Int(l1Bytes), at: l1Offset)
        l1 = decodeBE64Table(l1Raw, count: Int(h.l1Size))

        // Refcount table.
        refcountBits = 1 << Int(h.refcountOrder)
        refcountMax = refcountBits == 64 ? UInt64.max : (1 << UInt64(refcountBits)) - 1
        refcountsPerBlock = UInt64(clusterSize) * 8 / UInt64(refcountBits)
        guard h.refcountTableOffset & clusterMask == 0, h.refcountTableOffset != 0 else {
            throw StorageError.corrupt(path: path, reason: "the refcount table offset 0x\(String(h.refcountTableOffset, radix: 16)) is invalid")
        }
        guard h.refcountTableClusters >= 1, h.refcountTableClusters <= (8 << 20) / UInt32(clusterSize) + 1 else {
            throw StorageError.corrupt(path: path, reason: "the refcount table size of \(h.refcountTableClusters) clusters is invalid")
        }
        let rtBytes = UInt64(h.refcountTableClusters) * UInt64(clusterSize)
        guard h.refcountTableOffset <= fileLength, rtBytes <= fileLength - h.refcountTableOffset else {
            throw StorageError.corrupt(path: path, reason: "the refcount table at 0x\(String(h.refcountTableOffset, radix: 16)) lies past the end of the file")
        }
        refcountTableOffset = h.refcountTableOffset
        let rtRaw = try file.readBytes(count: Int(rtBytes), at: refcountTableOffset)
        refcountTable = decodeBE64Table(rtRaw, count: Int(rtBytes / 8))

        nextFreeCluster = (fileLength + clusterMask) >> UInt64(clusterBits)
        snapshotsOffset = h.snapshotCount == 0 ? 0 : h.snapshotsOffset
        for e in l1 where e & Self.offsetMask != 0 { metadataClusters.insert((e & Self.offsetMask) >> UInt64(clusterBits)) }
        for e in refcountTable where e & Self.offsetMask != 0 { metadataClusters.insert((e & Self.offsetMask) >> UInt64(clusterBits)) }
        l2Cache = ClusterCache(capacity: 64)
        refcountCache = ClusterCache(capacity: 16)

        // Backing file.
        if let name = try Qcow2Image.backingName(h, first, path: path) {
            backingFile = name
            backing = try (backingOpener ?? Qcow2Image.openBacking)(name, h.backingFormat, path, chain)
        } else {
            backingFile = nil
            backing = nil
        }

        // An image we may write must lose the autoclear bits we do not maintain (bitmaps).
        if !readOnly, h.version == 3, h.autoclearFeatures != 0 {
            try file.write(be64Bytes(0), at: UInt64(Qcow2Header.offAutoclear))
        }
    }

    /// The parsed header and the bytes it was parsed from (the first cluster; the header
    /// and its extensions live there).
    static func readHeader(_ file: ImageFile) throws -> (Qcow2Header, [UInt8]) {
        var first = try file.readBytes(count: 4096, at: 0)
        if first.count >= 24, (13...21).contains(first.be32(20)) {
            first = try file.readBytes(count: 1 << Int(first.be32(20)), at: 0)
        } else if first.count >= 24, (9...12).contains(first.be32(20)) {
            first = Array(first.prefix(1 << Int(first.be32(20))))
        }
        return (try Qcow2Header.parse(first, path: file.path), first)
    }

    /// The backing file name the header points at, nil when there is none.
    static func backingName(_ h: Qcow2Header, _ first: [UInt8], path: String) throws -> String? {
        guard h.backingFileOffset != 0 else { return nil }
        guard h.backingFileSize > 0, h.backingFileSize <= 1023,
              h.backingFileOffset <= UInt64(first.count), UInt64(h.backingFileSize) <= UInt64(first.count) - h.backingFileOffset
        else {
            throw StorageError.corrupt(path: path, reason: "the backing file name (offset \(h.backingFileOffset), \(h.backingFileSize) bytes) is invalid")
        }
        let start = Int(h.backingFileOffset)
        return String(decoding: first[start..<start + Int(h.backingFileSize)], as: UTF8.self)
    }

    /// Resolves a backing file name relative to the overlay's directory.
    static func resolveBacking(_ name: String, of path: String) -> String {
        if name.hasPrefix("/") { return name }
        if let slash = path.lastIndex(of: "/") { return String(path[...slash]) + name }
        return name
    }

    static func openBacking(name: String, format: String?, of path: String, chain: [String]) throws -> any DiskBackend {
        let resolved = resolveBacking(name, of: path)
        guard let canonical = ImageFile.canonicalPath(resolved) else {
            throw StorageError.backingMissing(path: path, backing: resolved)
        }
        let mine = ImageFile.canonicalPath(path) ?? path
        let above = chain + [mine]
        if above.contains(canonical) { throw StorageError.backingLoop(path: path, backing: resolved) }
        if above.count >= maxChainDepth { throw StorageError.backingTooDeep(path: path, limit: maxChainDepth) }
        let kind: DiskImageFormat
        switch format {
        case "qcow2": kind = .qcow2
        case "raw": kind = .raw
        case nil, "": kind = try DiskImage.probeFormat(path: resolved) ?? .raw
        case let other?: throw StorageError.unsupported(path: path, feature: "backing format \"\(other)\"")
        }
        switch kind {
        case .raw: return try RawImage(path: resolved, readOnly: true)
        case .qcow2: return try Qcow2Image(path: resolved, readOnly: true, chain: above)
        }
    }

    // MARK: - Errors

    /// Records corruption (no writes from now on) and returns the error to throw.
    func corrupt(_ reason: String) -> StorageError {
        if corruption == nil { corruption = reason }
        return .corrupt(path: path, reason: reason)
    }

    func checkWritable() throws {
        if isReadOnly { throw DiskError.readOnly }
        if let corruption { throw StorageError.corrupt(path: path, reason: corruption) }
    }

    func checkRange(_ offset: UInt64, _ length: UInt64) throws {
        guard offset <= size, length <= size - offset else {
            throw DiskError.outOfRange(offset: offset, length: length, size: size)
        }
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    // MARK: - Metadata overlap

    /// What metadata, if any, host range [host, host+length) overlaps: the header cluster,
    /// the L1 table, the refcount table, an L2 table, a refcount block, the snapshot table.
    func metadataOverlap(_ host: UInt64, _ length: UInt64) -> String? {
        guard length > 0 else { return nil }
        let end = host &+ length
        func hits(_ start: UInt64, _ bytes: UInt64) -> Bool { bytes > 0 && host < start &+ bytes && start < end }
        if hits(0, UInt64(clusterSize)) { return "the header" }
        if hits(l1Offset, UInt64(l1.count) * 8) { return "the L1 table" }
        if hits(refcountTableOffset, UInt64(refcountTable.count) * 8) { return "the refcount table" }
        if snapshotsOffset != 0, hits(snapshotsOffset & ~clusterMask, UInt64(clusterSize)) { return "the snapshot table" }
        let first = host >> UInt64(clusterBits), last = (end - 1) >> UInt64(clusterBits)
        // At most a few clusters per call (one guest cluster, or a data run).
        if last - first < 4096 {
            for c in first...last where metadataClusters.contains(c) {
                return "an L2 table or refcount block (host cluster \(c))"
            }
        } else if metadataClusters.contains(where: { $0 >= first && $0 <= last }) {
            return "an L2 table or refcount block"
        }
        return nil
    }

    /// Refuses to write data to, reuse or free host bytes that hold metadata: that is an
    /// image whose tables point into each other. The image is marked corrupt (in memory and,
    /// for version 3, with the header's corrupt bit), so it is never written again.
    func checkNoOverlap(_ host: UInt64, _ length: UInt64, _ what: String) throws {
        guard let hit = metadataOverlap(host, length) else { return }
        let reason = "\(what) at \(Self.hex(host)) would overlap \(hit)"
        let first = corruption == nil
        let error = corrupt(reason)
        if first, version >= 3, !isReadOnly {
            // Best effort: the error is reported whether or not the bit reaches the disk.
            if let raw = try? file.readBytes(count: 8, at: UInt64(Qcow2Header.offIncompatible)), raw.count == 8 {
                try? file.write(be64Bytes(raw.be64(0) | Qcow2Header.incompatCorrupt), at: UInt64(Qcow2Header.offIncompatible))
                try? file.sync()
            }
        }
        throw error
    }

    // MARK: - L1 / L2

    /// Loads (through the cache) the L2 table at `offset`.
    func l2Table(at offset: UInt64) throws -> [UInt64] {
        if let t = l2Cache[offset] { return t }
        guard offset & clusterMask == 0 else { throw corrupt("the L2 table offset \(Self.hex(offset)) is not cluster-aligned") }
        guard offset < fileLength, UInt64(clusterSize) <= fileLength - offset else {
            throw corrupt("the L2 table at \(Self.hex(offset)) lies past the end of the file")
        }
        guard offset >= UInt64(clusterSize) else { throw corrupt("an L2 table offset points into the header") }
        let raw = try file.readBytes(count: clusterSize, at: offset)
        let table = decodeBE64Table(raw, count: clusterSize / 8)
        l2Cache[offset] = table
        return table
    }

    /// The L2 entry for the cluster holding guest offset `offset` (0 when unallocated).
    @inline(__always)
    func l2Entry(_ offset: UInt64) throws -> UInt64 {
        let l1Index = Int(offset >> UInt64(clusterBits + l2Bits))
        guard l1Index < l1.count else { return 0 }
        let l2Offset = l1[l1Index] & Self.offsetMask
        if l2Offset == 0 { return 0 }
        let table = try l2Table(at: l2Offset)
        return table[Int((offset >> UInt64(clusterBits)) & UInt64((1 << l2Bits) - 1))]
    }

    enum ClusterKind {
        case unallocated
        case zero(host: UInt64)  // host 0: no preallocated cluster
        case data(host: UInt64)
        case compressed(host: UInt64, length: Int)
    }

    func classify(_ entry: UInt64) throws -> ClusterKind {
        if entry & Self.compressedFlag != 0 {
            let x = UInt64(62 - (clusterBits - 8))
            let host = entry & ((1 << x) - 1)
            let sectors = ((entry & ~(Self.copiedFlag | Self.compressedFlag)) >> x) + 1
            let length = Int(sectors * 512 - (host & 511))
            guard host >= UInt64(clusterSize), host < fileLength else {
                throw corrupt("a compressed cluster offset \(Self.hex(host)) lies outside the file")
            }
            return .compressed(host: host, length: length)
        }
        let host = entry & Self.offsetMask
        if version >= 3, entry & Self.zeroFlag != 0 {
            if host != 0, host & clusterMask != 0 { throw corrupt("the zero cluster offset \(Self.hex(host)) is not cluster-aligned") }
            return .zero(host: host)
        }
        if host == 0 { return .unallocated }
        guard host & clusterMask == 0 else { throw corrupt("the data cluster offset \(Self.hex(host)) is not cluster-aligned") }
        guard host < fileLength else { throw corrupt("the data cluster offset \(Self.hex(host)) lies past the end of the file") }
        guard host >= UInt64(clusterSize) else { throw corrupt("a data cluster offset points into the header") }
        return .data(host: host)
    }

    // MARK: - Reading

    /// Reads guest bytes [offset, offset+count) of one cluster's content into `dst`.
    func readCluster(kind: ClusterKind, guestOffset: UInt64, into dst: UnsafeMutableRawBufferPointer) throws {
        switch kind {
        case .unallocated:
            try readBacking(into: dst, at: guestOffset)
        case .zero:
            dst.initializeMemory(as: UInt8.self, repeating: 0)
        case let .data(host):
            try file.readZeroFilled(into: dst, at: host + (guestOffset & clusterMask))
        case let .compressed(host, length):
            let data = try decompress(host: host, length: length)
            let start = Int(guestOffset & clusterMask)
            data.withUnsafeBytes { src in
                // SAFETY: start + dst.count <= clusterSize == data.count (one cluster per call).
                dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[start..<start + dst.count]))
            }
        }
    }

    func readBacking(into dst: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard let backing else {
            dst.initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        let available = offset < backing.size ? Int(min(UInt64(dst.count), backing.size - offset)) : 0
        if available > 0 {
            // SAFETY: both slices lie inside `dst`.
            try backing.read(into: UnsafeMutableRawBufferPointer(rebasing: dst[0..<available]), at: offset)
        }
        if available < dst.count {
            UnsafeMutableRawBufferPointer(rebasing: dst[available...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    func decompress(host: UInt64, length: Int) throws -> [UInt8] {
        let key = host | UInt64(length) << 56
        if let c = compressedCache, c.entry == key { return c.data }
        let available = Int(min(UInt64(length), fileLength - host))
        let input = try file.readBytes(count: available, at: host)
        var output = [UInt8](repeating: 0, count: clusterSize)
        let ok = input.withUnsafeBytes { i in output.withUnsafeMutableBytes { o in inflateRaw(i, into: o) } }
        guard ok else { throw corrupt("the compressed cluster at \(Self.hex(host)) does not decompress") }
        compressedCache = (key, output)
        return output
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        try lock.withLock {
            try checkRange(offset, UInt64(buffer.count))
            var done = 0
            // A run of consecutive host data clusters is read with one pread.
            var runHost: UInt64 = 0, runStart = 0, runLength = 0
            func flushRun() throws {
                if runLength > 0 {
                    // SAFETY: [runStart, runStart+runLength) lies inside `buffer`.
                    try file.readZeroFilled(into: UnsafeMutableRawBufferPointer(rebasing: buffer[runStart..<runStart + runLength]), at: runHost)
                    runLength = 0
                }
            }
            while done < buffer.count {
                let guest = offset + UInt64(done)
                let n = min(buffer.count - done, clusterSize - Int(guest & clusterMask))
                let kind = try classify(try l2Entry(guest))
                if case let .data(host) = kind {
                    let h = host + (guest & clusterMask)
                    if runLength > 0, runHost + UInt64(runLength) == h {
                        runLength += n
                    } else {
                        try flushRun()
                        runHost = h; runStart = done; runLength = n
                    }
                } else {
                    try flushRun()
                    // SAFETY: [done, done+n) lies inside `buffer`.
                    try readCluster(kind: kind, guestOffset: guest, into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + n]))
                }
                done += n
            }
            try flushRun()
        }
    }

    // MARK: - Refcounts

    func refcountBlock(at offset: UInt64) throws -> [UInt8] {
        if let b = refcountCache[offset] { return b }
        guard offset & clusterMask == 0, offset >= UInt64(clusterSize) else {
            throw corrupt("the refcount block offset \(Self.hex(offset)) is invalid")
        }
        guard offset < fileLength, UInt64(clusterSize) <= fileLength - offset else {
            throw corrupt("the refcount block at \(Self.hex(offset)) lies past the end of the file")
        }
        let block = try file.readBytes(count: clusterSize, at: offset)
        refcountCache[offset] = block
        return block
    }

    func refcountEntry(_ block: [UInt8], _ index: Int) -> UInt64 {
        if refcountBits >= 8 {
            let bytes = refcountBits / 8
            var v: UInt64 = 0
            for i in 0..<bytes { v = v << 8 | UInt64(block[index * bytes + i]) }
            return v
        }
        let bit = index * refcountBits
        return UInt64(block[bit / 8] >> UInt8(bit % 8)) & refcountMax
    }

    /// Sets one entry in a cached block and returns (byte offset in the block, byte count) changed.
    func setRefcountEntry(_ block: inout [UInt8], _ index: Int, _ value: UInt64) -> (Int, Int) {
        if refcountBits >= 8 {
            let bytes = refcountBits / 8
            for i in 0..<bytes {
                block[index * bytes + i] = UInt8(truncatingIfNeeded: value >> UInt64(8 * (bytes - 1 - i)))
            }
            return (index * bytes, bytes)
        }
        let bit = index * refcountBits
        let shift = UInt8(bit % 8)
        let mask = UInt8(truncatingIfNeeded: refcountMax) << shift
        block[bit / 8] = (block[bit / 8] & ~mask) | (UInt8(truncatingIfNeeded: value) << shift & mask)
        return (bit / 8, 1)
    }

    /// The refcount of host cluster `cluster` (0 if no block covers it).
    func refcount(of cluster: UInt64) throws -> UInt64 {
        let blockIndex = cluster / refcountsPerBlock
        guard blockIndex < UInt64(refcountTable.count) else { return 0 }
        let blockOffset = refcountTable[Int(blockIndex)] & Self.offsetMask
        if blockOffset == 0 { return 0 }
        return refcountEntry(try refcountBlock(at: blockOffset), Int(cluster % refcountsPerBlock))
    }

    /// Writes a new refcount for `cluster`, creating refcount blocks (and growing the
    /// refcount table) as needed. `depth` bounds the recursion of block creation.
    func setRefcount(of cluster: UInt64, to value: UInt64, depth: Int = 0) throws {
        guard depth < 8 else { throw corrupt("refcount block allocation does not terminate") }
        let blockIndex = cluster / refcountsPerBlock
        if blockIndex >= UInt64(refcountTable.count) { try growRefcountTable(covering: blockIndex, depth: depth) }
        var blockOffset = refcountTable[Int(blockIndex)] & Self.offsetMask
        if blockOffset == 0 {
            blockOffset = try createRefcountBlock(index: blockIndex, depth: depth)
        }
        var block = try refcountBlock(at: blockOffset)
        let (at, count) = setRefcountEntry(&block, Int(cluster % refcountsPerBlock), value)
        refcountCache[blockOffset] = block
        try block.withUnsafeBytes { try writeMeta(UnsafeRawBufferPointer(rebasing: $0[at..<at + count]), at: blockOffset + UInt64(at)) }
    }

    /// Creates refcount block number `index`, placed at the next free cluster; returns its offset.
    /// The block is written complete before the table entry that points to it.
    func createRefcountBlock(index: UInt64, depth: Int) throws -> UInt64 {
        let cluster = takeFreshCluster()
        let offset = cluster << UInt64(clusterBits)
        metadataClusters.insert(cluster)
        var block = [UInt8](repeating: 0, count: clusterSize)
        if cluster / refcountsPerBlock == index {
            // The block describes itself.
            _ = setRefcountEntry(&block, Int(cluster % refcountsPerBlock), 1)
        } else {
            // It lives in another block's range: count it there first.
            try setRefcount(of: cluster, to: 1, depth: depth + 1)
        }
        try writeMeta(block, at: offset)
        refcountCache[offset] = block
        refcountTable[Int(index)] = offset
        try writeMeta(be64Bytes(offset), at: refcountTableOffset + index * 8)
        return offset
    }

    /// Replaces the refcount table with a larger one at the end of the file. The new table
    /// (and the blocks describing it) are written before the header points to them; the old
    /// table's clusters are freed afterwards.
    func growRefcountTable(covering blockIndex: UInt64, depth: Int) throws {
        let oldOffset = refcountTableOffset
        let oldClusters = UInt64(refcountTable.count * 8) >> UInt64(clusterBits)
        let entriesPerCluster = UInt64(clusterSize / 8)
        var newClusters = max(oldClusters * 2, (blockIndex + 1 + entriesPerCluster - 1) / entriesPerCluster)
        let start = max(nextFreeCluster, 1)
        // The new table must also cover itself and the blocks that describe it.
        while (start + newClusters + 4) / refcountsPerBlock + 1 > newClusters * entriesPerCluster { newClusters += 1 }
        guard newClusters * UInt64(clusterSize) <= 64 << 20 else {
            throw StorageError.unsupported(path: path, feature: "a refcount table larger than 64 MiB")
        }
        nextFreeCluster = start + newClusters
        let newOffset = start << UInt64(clusterBits)
        refcountTable += [UInt64](repeating: 0, count: Int(newClusters * entriesPerCluster) - refcountTable.count)
        refcountTableOffset = newOffset
        // Zero-fill the new table on disk first, so partial table entry writes land in a valid table.
        try writeMeta([UInt8](repeating: 0, count: Int(newClusters) * clusterSize), at: newOffset)
        for c in start..<start + newClusters { try setRefcount(of: c, to: 1, depth: depth + 1) }
        try writeMeta(encodeBE64Table(refcountTable), at: newOffset)
        var header = [UInt8](repeating: 0, count: 12)
        header.putBE64(newOffset, at: 0)
        header.putBE32(UInt32(newClusters), at: 8)
        try writeMeta(header, at: UInt64(Qcow2Header.offRefcountTable))
        for c in 0..<oldClusters { try release(cluster: (oldOffset >> UInt64(clusterBits)) + c) }
    }

    /// Next never-used cluster at the end of the file.
    func takeFreshCluster() -> UInt64 {
        let c = nextFreeCluster
        nextFreeCluster += 1
        return c
    }

    /// Allocates one host cluster: its refcount is 1 on disk before this returns.
    func allocateCluster() throws -> UInt64 {
        var attempts = 0
        while true {
            attempts += 1
            guard attempts < 1 << 20 else { throw corrupt("no free cluster found") }
            let cluster = freeClusters.popLast() ?? takeFreshCluster()
            guard cluster < (1 << 47) >> UInt64(clusterBits - 9) else {
                throw StorageError.unsupported(path: path, feature: "an image file larger than 2^56 bytes")
            }
            if try refcount(of: cluster) != 0 { continue }  // in use despite lying past the end
            try checkNoOverlap(cluster << UInt64(clusterBits), UInt64(clusterSize), "a newly allocated cluster")
            try setRefcount(of: cluster, to: 1)
            return cluster << UInt64(clusterBits)
        }
    }

    /// Drops one reference to a host cluster; a cluster reaching 0 is punched out and reused.
    func release(cluster: UInt64) throws {
        try checkNoOverlap(cluster << UInt64(clusterBits), UInt64(clusterSize), "a freed cluster")
        let count = try refcount(of: cluster)
        guard count > 0 else { throw corrupt("host cluster \(cluster) is freed but its refcount is already 0") }
        try setRefcount(of: cluster, to: count - 1)
        if count == 1 {
            _ = file.punchHole(offset: cluster << UInt64(clusterBits), length: UInt64(clusterSize))
            freeClusters.append(cluster)
        }
    }

    /// Checks, before anything is changed, that the clusters an L2 entry references are
    /// not metadata (so they may be replaced and freed).
    func checkReplaceable(_ kind: ClusterKind) throws {
        switch kind {
        case .unallocated, .zero(host: 0): break
        case let .zero(host), let .data(host):
            try checkNoOverlap(host, UInt64(clusterSize), "a data cluster")
        case let .compressed(host, length):
            try checkNoOverlap(host, UInt64(length), "a compressed cluster")
        }
    }

    /// Releases the host clusters an L2 entry referenced.
    func releaseEntry(_ kind: ClusterKind) throws {
        switch kind {
        case .unallocated, .zero(host: 0): break
        case let .zero(host), let .data(host):
            try release(cluster: host >> UInt64(clusterBits))
        case let .compressed(host, length):
            let first = host >> UInt64(clusterBits)
            let last = (host + UInt64(length) - 1) >> UInt64(clusterBits)
            for c in first...last { try release(cluster: c) }
        }
    }

    func writeMeta(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try writeMeta($0, at: offset) }
    }

    func writeMeta(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try file.write(bytes, at: offset)
        fileLength = max(fileLength, offset + UInt64(bytes.count))
    }

    // MARK: - Writing

    /// Points the L2 entry for guest cluster `guest` at `entry`, allocating an L2 table
    /// (written complete, then the L1 entry) when there is none.
    func setL2Entry(guest: UInt64, to entry: UInt64) throws {
        let l1Index = Int(guest >> UInt64(clusterBits + l2Bits))
        guard l1Index < l1.count else { throw corrupt("guest offset \(guest) is beyond the L1 table") }
        let l2Index = Int((guest >> UInt64(clusterBits)) & UInt64((1 << l2Bits) - 1))
        let l1Entry = l1[l1Index]
        var l2Offset = l1Entry & Self.offsetMask
        if l2Offset != 0, l1Entry & Self.copiedFlag == 0, try refcount(of: l2Offset >> UInt64(clusterBits)) != 1 {
            throw StorageError.notWritable(path: path, reason: "an L2 table is shared (refcount ≠ 1)")
        }
        if l2Offset == 0 {
            l2Offset = try allocateCluster()
            metadataClusters.insert(l2Offset >> UInt64(clusterBits))
            var table = [UInt64](repeating: 0, count: clusterSize / 8)
            table[l2Index] = entry
            var raw = [UInt8](repeating: 0, count: clusterSize)
            raw.putBE64(entry, at: l2Index * 8)
            try writeMeta(raw, at: l2Offset)
            l2Cache[l2Offset] = table
            let newL1 = l2Offset | Self.copiedFlag
            try writeMeta(be64Bytes(newL1), at: l1Offset + UInt64(l1Index) * 8)
            l1[l1Index] = newL1
            return
        }
        var table = try l2Table(at: l2Offset)
        table[l2Index] = entry
        l2Cache[l2Offset] = table
        try writeMeta(be64Bytes(entry), at: l2Offset + UInt64(l2Index) * 8)
    }

    /// Writes part of one guest cluster that has no private writable host cluster:
    /// builds the whole cluster (copy-on-write from its old content), writes it to a
    /// host cluster with refcount 1, then points the L2 entry at it.
    func writeAllocating(_ data: UnsafeRawBufferPointer, guest: UInt64, entry: UInt64, kind: ClusterKind) throws {
        let clusterStart = guest & ~clusterMask
        let inCluster = Int(guest & clusterMask)
        let length = Int(min(UInt64(clusterSize), size - clusterStart))
        try checkReplaceable(kind)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: clusterSize, alignment: 4096)
        defer { buffer.deallocate() }
        // SAFETY: all slices below lie inside the clusterSize-byte buffer.
        if data.count < length {
            try readCluster(kind: kind, guestOffset: clusterStart, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length]))
        }
        if length < clusterSize {
            UnsafeMutableRawBufferPointer(rebasing: buffer[length...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
        UnsafeMutableRawBufferPointer(rebasing: buffer[inCluster..<inCluster + data.count]).copyMemory(from: data)

        var host: UInt64
        var releaseOld = true
        if case let .zero(h) = kind, h != 0, entry & Self.copiedFlag != 0 {
            host = h  // a preallocated zero cluster of ours: fill it in place
            releaseOld = false
        } else {
            host = try allocateCluster()
        }
        try checkNoOverlap(host, UInt64(clusterSize), "guest data")
        try writeMeta(UnsafeRawBufferPointer(buffer), at: host)
        try setL2Entry(guest: clusterStart, to: host | Self.copiedFlag)
        if releaseOld { try releaseEntry(kind) }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try lock.withLock {
            try checkWritable()
            try checkRange(offset, UInt64(buffer.count))
            var done = 0
            var runHost: UInt64 = 0, runStart = 0, runLength = 0
            func flushRun() throws {
                if runLength > 0 {
                    // SAFETY: [runStart, runStart+runLength) lies inside `buffer`.
                    try writeMeta(UnsafeRawBufferPointer(rebasing: buffer[runStart..<runStart + runLength]), at: runHost)
                    runLength = 0
                }
            }
            while done < buffer.count {
                let guest = offset + UInt64(done)
                let n = min(buffer.count - done, clusterSize - Int(guest & clusterMask))
                let entry = try l2Entry(guest)
                let kind = try classify(entry)
                if case let .data(host) = kind, entry & Self.copiedFlag != 0 {
                    let h = host + (guest & clusterMask)
                    try checkNoOverlap(host, UInt64(clusterSize), "guest data")
                    if runLength > 0, runHost + UInt64(runLength) == h {
                        runLength += n
                    } else {
                        try flushRun()
                        runHost = h; runStart = done; runLength = n
                    }
                } else {
                    try flushRun()
                    // SAFETY: [done, done+n) lies inside `buffer`.
                    try writeAllocating(UnsafeRawBufferPointer(rebasing: buffer[done..<done + n]), guest: guest, entry: entry, kind: kind)
                }
                done += n
            }
            try flushRun()
        }
    }

    public func flush() throws {
        try lock.withLock {
            if isReadOnly { return }
            try file.sync()
        }
    }

    /// True when guest range [offset, offset+length) of the backing chain reads as zeroes
    /// without looking at data (beyond the backing file, or no backing file).
    func backingIsZero(_ offset: UInt64, _ length: UInt64) throws -> Bool {
        guard let backing else { return true }
        if offset >= backing.size { return true }
        if let map = backing as? AllocationMapping {
            let end = min(offset + length, backing.size)
            var at = offset
            while at < end {
                let (state, n) = try map.allocation(at: at, length: end - at)
                if state != .zero { return false }
                at += max(n, 1)
            }
            return true
        }
        return false
    }

    /// Makes a range read as zeroes: whole clusters by metadata (their host clusters are
    /// freed), partial clusters by writing zero bytes.
    func zeroRange(offset: UInt64, length: UInt64) throws {
        try checkWritable()
        try checkRange(offset, length)
        var at = offset
        let end = offset + length
        while at < end {
            let clusterStart = at & ~clusterMask
            let clusterEnd = min(clusterStart + UInt64(clusterSize), size)
            let n = min(end, clusterEnd) - at
            let entry = try l2Entry(at)
            let kind = try classify(entry)
            try checkReplaceable(kind)
            let whole = at == clusterStart && at + n == clusterEnd
            let readsZeroAlready: Bool
            switch kind {
            case .zero: readsZeroAlready = true
            case .unallocated: readsZeroAlready = try backingIsZero(at, n)
            default: readsZeroAlready = false
            }
            if readsZeroAlready {
                // Nothing to do.
            } else if whole {
                let backingZero = try backingIsZero(clusterStart, clusterEnd - clusterStart)
                if backingZero {
                    try setL2Entry(guest: clusterStart, to: 0)
                    try releaseEntry(kind)
                } else if version >= 3 {
                    try setL2Entry(guest: clusterStart, to: Self.zeroFlag)
                    try releaseEntry(kind)
                } else {
                    try writeZeroBytes(guest: at, count: Int(n))
                }
            } else {
                try writeZeroBytes(guest: at, count: Int(n))
            }
            at += n
        }
    }

    private func writeZeroBytes(guest: UInt64, count: Int) throws {
        let zeroes = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
        defer { zeroes.deallocate() }
        zeroes.initializeMemory(as: UInt8.self, repeating: 0)
        let entry = try l2Entry(guest)
        let kind = try classify(entry)
        if case let .data(host) = kind, entry & Self.copiedFlag != 0 {
            try checkNoOverlap(host, UInt64(clusterSize), "guest data")
            try writeMeta(UnsafeRawBufferPointer(zeroes), at: host + (guest & clusterMask))
        } else {
            try writeAllocating(UnsafeRawBufferPointer(zeroes), guest: guest, entry: entry, kind: kind)
        }
    }

    public func discard(offset: UInt64, length: UInt64) throws {
        try lock.withLock { try zeroRange(offset: offset, length: length) }
    }

    public func writeZeroes(offset: UInt64, length: UInt64) throws {
        try lock.withLock { try zeroRange(offset: offset, length: length) }
    }

    // MARK: - Allocation map

    public func allocation(at offset: UInt64, length: UInt64) throws -> (state: AllocationState, length: UInt64) {
        try lock.withLock {
            try checkRange(offset, length)
            if length == 0 { return (.data, 0) }
            func state(at guest: UInt64, _ n: UInt64) throws -> (AllocationState, UInt64) {
                switch try classify(try l2Entry(guest)) {
                case .zero: return (.zero, n)
                case .data, .compressed: return (.data, n)
                case .unallocated:
                    guard let backing else { return (.zero, n) }
                    if guest >= backing.size { return (.zero, n) }
                    if let map = backing as? AllocationMapping {
                        let r = try map.allocation(at: guest, length: min(n, backing.size - guest))
                        return (r.state, r.length)
                    }
                    return (.data, n)
                }
            }
            var at = offset
            let end = offset + length
            var first: AllocationState?
            // Merge clusters of the same state, at most 4096 clusters per answer.
            var steps = 0
            while at < end, steps < 4096 {
                steps += 1
                let n = min(end, (at & ~clusterMask) + UInt64(clusterSize)) - at
                let (s, len) = try state(at: at, n)
                if let first, first != s { break }
                first = s
                at += max(1, min(len, n))
                if len < n { break }
            }
            return (first ?? .data, at - offset)
        }
    }

    // MARK: - Creation

    /// Creates an empty qcow2 image (version 3 unless asked otherwise, 16-bit refcounts).
    /// `backingFile` is stored as given; it is resolved relative to the new image's
    /// directory when relative.
    @discardableResult
    public static func create(path: String, size: UInt64, clusterSize: Int = 65536, version: Int = 3,
                              backingFile: String? = nil, backingFormat: DiskImageFormat? = nil) throws -> Qcow2Image {
        guard clusterSize.nonzeroBitCount == 1, (512...(2 << 20)).contains(clusterSize) else {
            throw StorageError.badArgument("\(path): the cluster size must be a power of two from 512 bytes to 2 MiB")
        }
        guard version == 2 || version == 3 else { throw StorageError.badArgument("\(path): qcow2 version must be 2 or 3") }
        guard size <= 1 << 60 else { throw StorageError.badArgument("\(path): size \(size) is too large") }
        if let backingFile, backingFile.utf8.count > 1023 || backingFile.isEmpty {
            throw StorageError.badArgument("\(path): the backing file name must be 1 to 1023 bytes long")
        }
        let cs = UInt64(clusterSize)
        let bits = UInt32(clusterSize.trailingZeroBitCount)
        let l1Span = cs * (cs / 8)
        let l1Size = (size + l1Span - 1) / l1Span
        guard l1Size <= 32 * 1024 * 1024 / 8 else {
            throw StorageError.badArgument("\(path): size \(size) needs an L1 table larger than 32 MiB; use larger clusters")
        }
        let l1Clusters = max(1, (l1Size * 8 + cs - 1) / cs)
        let perBlock = cs * 8 / 16
        var tableClusters: UInt64 = 1, blocks: UInt64 = 1
        while true {
            let total = 1 + tableClusters + blocks + l1Clusters
            let b = (total + perBlock - 1) / perBlock
            let t = max(1, (b * 8 + cs - 1) / cs)
            if b == blocks, t == tableClusters { break }
            blocks = b; tableClusters = t
        }
        let rtOffset = cs
        let blocksOffset = rtOffset + tableClusters * cs
        let l1Offset = blocksOffset + blocks * cs
        let total = 1 + tableClusters + blocks + l1Clusters
        let header = Qcow2Header.encode(
            version: UInt32(version), clusterBits: bits, size: size, l1Size: UInt32(l1Size), l1Offset: l1Offset,
            refcountTableOffset: rtOffset, refcountTableClusters: UInt32(tableClusters),
            backingFile: backingFile, backingFormat: backingFormat?.rawValue)
        // The creating handle (and its lock) is closed before the image is opened below.
        try createFile(path) { file in
            var table = [UInt8](repeating: 0, count: Int(tableClusters * cs))
            for b in 0..<blocks { table.putBE64(blocksOffset + b * cs, at: Int(b) * 8) }
            var refBlocks = [UInt8](repeating: 0, count: Int(blocks * cs))
            for c in 0..<Int(total) { refBlocks[c * 2 + 1] = 1 }  // 16-bit big-endian 1
            try file.truncate(to: total * cs)
            try file.write(table, at: rtOffset)
            try file.write(refBlocks, at: blocksOffset)
            try file.write(header, at: 0)
            try file.sync()
        }
        do {
            return try Qcow2Image(path: path)
        } catch {
            unlink(path)
            throw error
        }
    }
}

extension Qcow2Image {
    /// Creates `path`, fills it through `body` and closes it; removes it if `body` fails.
    static func createFile(_ path: String, _ body: (ImageFile) throws -> Void) throws {
        let file = try ImageFile.create(path)
        do {
            try body(file)
        } catch {
            unlink(path)
            throw error
        }
    }
}

/// A small bounded cache of cluster-sized tables keyed by host offset (FIFO eviction).
/// Entries are write-through copies: evicting never loses data.
struct ClusterCache<Value> {
    private var entries: [UInt64: Value] = [:]
    private var order: [UInt64] = []
    private var next = 0
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    subscript(key: UInt64) -> Value? {
        get { entries[key] }
        set {
            guard let newValue else {
                entries[key] = nil
                return
            }
            if entries.updateValue(newValue, forKey: key) == nil {
                if order.count < capacity {
                    order.append(key)
                } else {
                    entries[order[next]] = nil
                    order[next] = key
                    next = (next + 1) % capacity
                }
            }
        }
    }
}

/// Inflates raw deflate data (qcow2 compressed clusters: window bits -12) to fill `output`.
func inflateRaw(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
    guard let inBase = input.baseAddress, let outBase = output.baseAddress else { return false }
    var stream = z_stream()
    guard inflateInit2_(&stream, -12, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return false }
    defer { inflateEnd(&stream) }
    // SAFETY: zlib reads avail_in bytes from next_in (never writes them) and writes at most
    // avail_out bytes at next_out; both buffers outlive the call.
    stream.next_in = UnsafeMutablePointer(mutating: inBase.assumingMemoryBound(to: Bytef.self))
    stream.avail_in = uInt(input.count)
    stream.next_out = outBase.assumingMemoryBound(to: Bytef.self)
    stream.avail_out = uInt(output.count)
    let result = inflate(&stream, Z_FINISH)
    return (result == Z_STREAM_END || result == Z_BUF_ERROR) && stream.avail_out == 0
}
