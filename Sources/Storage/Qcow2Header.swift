/// The qcow2 header (versions 2 and 3) and its extensions, as laid out in QEMU's
/// docs/interop/qcow2.txt. All fields are big-endian.
struct Qcow2Header: Sendable {
    static let magic: UInt32 = 0x5146_49fb  // "QFI\xfb"

    // Header extension types.
    static let extEnd: UInt32 = 0
    static let extBackingFormat: UInt32 = 0xe279_2aca
    static let extFeatureTable: UInt32 = 0x6803_f857

    // Incompatible feature bits.
    static let incompatDirty: UInt64 = 1 << 0
    static let incompatCorrupt: UInt64 = 1 << 1
    static let incompatExternalData: UInt64 = 1 << 2
    static let incompatCompressionType: UInt64 = 1 << 3
    static let incompatExtendedL2: UInt64 = 1 << 4
    static let compatLazyRefcounts: UInt64 = 1 << 0

    // Field offsets.
    static let offIncompatible = 72
    static let offAutoclear = 88
    static let offRefcountTable = 48

    var version: UInt32
    var backingFileOffset: UInt64
    var backingFileSize: UInt32
    var clusterBits: UInt32
    var size: UInt64
    var cryptMethod: UInt32
    var l1Size: UInt32
    var l1TableOffset: UInt64
    var refcountTableOffset: UInt64
    var refcountTableClusters: UInt32
    var snapshotCount: UInt32
    var snapshotsOffset: UInt64
    var incompatibleFeatures: UInt64 = 0
    var compatibleFeatures: UInt64 = 0
    var autoclearFeatures: UInt64 = 0
    var refcountOrder: UInt32 = 4
    var headerLength: UInt32 = 72
    var compressionType: UInt8 = 0

    var backingFormat: String?
    /// Feature names from the feature name table: (type, bit) → name.
    var featureNames: [Int: String] = [:]

    /// Parses and validates the header found in `bytes` (the file's first cluster, or
    /// less if the file is shorter). Errors name `path`.
    static func parse(_ bytes: [UInt8], path: String) throws -> Qcow2Header {
        guard bytes.count >= 72 else {
            throw StorageError.corrupt(path: path, reason: "the header is truncated (\(bytes.count) bytes, at least 72 needed)")
        }
        guard bytes.be32(0) == magic else {
            throw StorageError.badArgument("\(path): not a qcow2 image (bad magic)")
        }
        var h = Qcow2Header(
            version: bytes.be32(4), backingFileOffset: bytes.be64(8), backingFileSize: bytes.be32(16),
            clusterBits: bytes.be32(20), size: bytes.be64(24), cryptMethod: bytes.be32(32),
            l1Size: bytes.be32(36), l1TableOffset: bytes.be64(40), refcountTableOffset: bytes.be64(48),
            refcountTableClusters: bytes.be32(56), snapshotCount: bytes.be32(60), snapshotsOffset: bytes.be64(64))
        guard h.version == 2 || h.version == 3 else {
            throw StorageError.unsupported(path: path, feature: "qcow2 version \(h.version)")
        }
        guard (9...21).contains(h.clusterBits) else {
            throw StorageError.corrupt(path: path, reason: "cluster_bits \(h.clusterBits) is outside 9...21")
        }
        let clusterSize = 1 << Int(h.clusterBits)
        if h.version == 3 {
            guard bytes.count >= 104 else {
                throw StorageError.corrupt(path: path, reason: "the version 3 header is truncated (\(bytes.count) bytes, at least 104 needed)")
            }
            h.incompatibleFeatures = bytes.be64(72)
            h.compatibleFeatures = bytes.be64(80)
            h.autoclearFeatures = bytes.be64(88)
            h.refcountOrder = bytes.be32(96)
            h.headerLength = bytes.be32(100)
            guard h.headerLength >= 104, h.headerLength % 8 == 0, Int(h.headerLength) <= min(clusterSize, bytes.count) else {
                throw StorageError.corrupt(path: path, reason: "header_length \(h.headerLength) is invalid")
            }
            if h.headerLength > 104 { h.compressionType = bytes[104] }
        }
        guard h.refcountOrder <= 6 else {
            throw StorageError.unsupported(path: path, feature: "a refcount width of 2^\(h.refcountOrder) bits")
        }
        // Header extensions: between the header and the end of the first cluster.
        var at = Int(h.headerLength)
        var guardCount = 0
        while at + 8 <= bytes.count, guardCount < 1024 {
            guardCount += 1
            let type = bytes.be32(at)
            let length = Int(bytes.be32(at + 4))
            if type == extEnd { break }
            let dataStart = at + 8
            guard length <= bytes.count - dataStart else {
                throw StorageError.corrupt(path: path, reason: "header extension 0x\(String(type, radix: 16)) runs past the first cluster")
            }
            let data = Array(bytes[dataStart..<dataStart + length])
            switch type {
            case extBackingFormat:
                h.backingFormat = String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
            case extFeatureTable:
                var i = 0
                while i + 48 <= data.count {
                    let name = String(decoding: data[(i + 2)..<(i + 48)].prefix { $0 != 0 }, as: UTF8.self)
                    h.featureNames[Int(data[i]) << 8 | Int(data[i + 1])] = name
                    i += 48
                }
            default:
                break  // Unknown extensions are kept untouched in the file.
            }
            at = dataStart + (length + 7) / 8 * 8
        }
        return h
    }

    var clusterSize: Int { 1 << Int(clusterBits) }

    /// Names the unknown incompatible feature bits, using the image's own feature table.
    func describeIncompatible(_ bits: UInt64) -> String {
        var names: [String] = []
        for bit in 0..<64 where bits & (1 << UInt64(bit)) != 0 {
            if let name = featureNames[bit] { names.append("\"\(name)\" (bit \(bit))") } else { names.append("bit \(bit)") }
        }
        return "incompatible feature " + names.joined(separator: ", ")
    }

    /// Serialises a fresh header plus extensions and backing file name into one cluster.
    static func encode(version: UInt32, clusterBits: UInt32, size: UInt64, l1Size: UInt32, l1Offset: UInt64,
                       refcountTableOffset: UInt64, refcountTableClusters: UInt32,
                       backingFile: String?, backingFormat: String?) -> [UInt8] {
        let clusterSize = 1 << Int(clusterBits)
        var b = [UInt8](repeating: 0, count: clusterSize)
        b.putBE32(magic, at: 0)
        b.putBE32(version, at: 4)
        b.putBE32(clusterBits, at: 20)
        b.putBE64(size, at: 24)
        b.putBE32(l1Size, at: 36)
        b.putBE64(l1Offset, at: 40)
        b.putBE64(refcountTableOffset, at: 48)
        b.putBE32(refcountTableClusters, at: 56)
        var at = 72
        if version == 3 {
            b.putBE32(4, at: 96)  // refcount_order: 16-bit refcounts
            b.putBE32(104, at: 100)
            at = 104
        }
        func ext(_ type: UInt32, _ data: [UInt8]) {
            b.putBE32(type, at: at)
            b.putBE32(UInt32(data.count), at: at + 4)
            for (i, v) in data.enumerated() { b[at + 8 + i] = v }
            at += 8 + (data.count + 7) / 8 * 8
        }
        if let backingFormat, backingFile != nil { ext(extBackingFormat, Array(backingFormat.utf8)) }
        if version == 3 {
            let features: [(UInt8, UInt8, String)] = [
                (0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 2, "external data file"),
                (0, 3, "compression type"), (0, 4, "extended L2 entries"),
                (1, 0, "lazy refcounts"), (2, 0, "bitmaps"), (2, 1, "raw external data"),
            ]
            var table: [UInt8] = []
            for (type, bit, name) in features {
                var entry = [UInt8](repeating: 0, count: 48)
                entry[0] = type
                entry[1] = bit
                for (i, c) in name.utf8.enumerated() { entry[2 + i] = c }
                table += entry
            }
            ext(extFeatureTable, table)
        }
        ext(extEnd, [])
        if let backingFile {
            let name = Array(backingFile.utf8)
            b.putBE64(UInt64(at), at: 8)
            b.putBE32(UInt32(name.count), at: 16)
            for (i, v) in name.enumerated() { b[at + i] = v }
        }
        return b
    }
}
