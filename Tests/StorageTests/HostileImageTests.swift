import Foundation
import Testing
@testable import Storage

/// Damaged and hostile images: clear errors naming the file, never a crash, and no write
/// after corruption is found.
@Suite struct HostileImageTests {
    /// A small v3 image with data in a few clusters, built by us.
    func sample(_ dir: TempDir, name: String = "h.qcow2", clusterSize: Int = 65536) throws -> String {
        let path = dir.file(name)
        let image = try Qcow2Image.create(path: path, size: 4 << 20, clusterSize: clusterSize)
        try image.write([UInt8](repeating: 0x5a, count: 200_000), at: 100_000)
        return path
    }

    func patch(_ path: String, at offset: Int, _ bytes: [UInt8]) throws {
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        try h.seek(toOffset: UInt64(offset))
        h.write(Data(bytes))
        try h.close()
    }

    func expectError(_ path: String, contains text: String, readOnly: Bool = true,
                     sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("no error for \(path)", sourceLocation: sourceLocation)
        } catch {
            let message = "\(error)"
            #expect(message.contains(path), "error does not name the file: \(message)", sourceLocation: sourceLocation)
            #expect(message.contains(text), "error \"\(message)\" lacks \"\(text)\"", sourceLocation: sourceLocation)
        }
    }

    @Test func truncatedHeader() throws {
        let dir = TempDir()
        let path = dir.file("t.qcow2")
        let full = fileBytes(try sample(dir))
        _ = FileManager.default.createFile(atPath: path, contents: Data(full.prefix(50)))
        expectError(path, contains: "truncated") { _ = try Qcow2Image(path: path) }
        _ = FileManager.default.createFile(atPath: path, contents: Data(full.prefix(90)))
        expectError(path, contains: "truncated") { _ = try Qcow2Image(path: path) }
        // The header is whole but the tables are gone.
        _ = FileManager.default.createFile(atPath: path, contents: Data(full.prefix(65536)))
        expectError(path, contains: "past the end of the file") { _ = try Qcow2Image(path: path) }
    }

    @Test func unknownIncompatibleFeatureAndBadFields() throws {
        let dir = TempDir()
        let path = try sample(dir)
        let original = fileBytes(path)
        try patch(path, at: 72, be64Bytes(1 << 13))
        expectError(path, contains: "incompatible feature bit 13") { _ = try Qcow2Image(path: path, readOnly: true) }
        try patch(path, at: 72, be64Bytes(1 << 4))
        expectError(path, contains: "extended L2") { _ = try Qcow2Image(path: path, readOnly: true) }
        try patch(path, at: 72, be64Bytes(0))
        // Version, cluster size, encryption, refcount width, sizes.
        try patch(path, at: 4, [0, 0, 0, 9])
        expectError(path, contains: "version 9") { _ = try Qcow2Image(path: path, readOnly: true) }
        try patch(path, at: 4, [0, 0, 0, 3])
        try patch(path, at: 32, [0, 0, 0, 1])
        expectError(path, contains: "encryption") { _ = try Qcow2Image(path: path, readOnly: true) }
        try patch(path, at: 32, [0, 0, 0, 0])
        try patch(path, at: 96, [0, 0, 0, 7])
        expectError(path, contains: "refcount width") { _ = try Qcow2Image(path: path, readOnly: true) }
        try patch(path, at: 96, [0, 0, 0, 4])
        try patch(path, at: 24, be64Bytes(UInt64.max))
        expectError(path, contains: "size") { _ = try Qcow2Image(path: path, readOnly: true) }
        try patch(path, at: 24, be64Bytes(1 << 50))
        expectError(path, contains: "L1 table") { _ = try Qcow2Image(path: path, readOnly: true) }
        try patch(path, at: 24, be64Bytes(4 << 20))
        try patch(path, at: 48, be64Bytes(0xffff_ffff_ffff_0000))
        expectError(path, contains: "refcount table") { _ = try Qcow2Image(path: path, readOnly: true) }
        try patch(path, at: 0, original.prefix(104).map { $0 })
        _ = try Qcow2Image(path: path)  // restored: opens again
    }

    @Test func corruptAndDirtyBitsBlockWriting() throws {
        let dir = TempDir()
        let path = try sample(dir)
        try patch(path, at: 72, be64Bytes(Qcow2Header.incompatCorrupt))
        expectError(path, contains: "corrupt bit") { _ = try Qcow2Image(path: path) }
        do {
            let ro = try Qcow2Image(path: path, readOnly: true)
            #expect(try ro.read(1, at: 100_000) == [0x5a])
        }
        try patch(path, at: 72, be64Bytes(Qcow2Header.incompatDirty))
        expectError(path, contains: "dirty bit") { _ = try Qcow2Image(path: path) }
    }

    @Test func clusterOffsetsPastTheEndAreCorruptionAndStopWrites() throws {
        let dir = TempDir()
        let path = try sample(dir)
        #expect(try Qcow2Image(path: path, readOnly: true).version == 3)
        // Find the L1 table and the first L2 table from the header.
        let bytes = fileBytes(path)
        let l1Offset = Int(bytes.be64(40))
        let l2Offset = Int(bytes.be64(l1Offset) & Qcow2Image.offsetMask)
        #expect(l2Offset > 0)
        // A data cluster past the end of the file.
        try patch(path, at: l2Offset + 8 * 2, be64Bytes(Qcow2Image.copiedFlag | 0x7000_0000_0000))
        do {
            let bad = try Qcow2Image(path: path)
            expectError(path, contains: "past the end of the file") { _ = try bad.read(512, at: 2 * 65536) }
            #expect(bad.corruption != nil)
            let before = fileBytes(path)
            expectError(path, contains: "corrupt") { try bad.write([1, 2, 3], at: 0) }
            expectError(path, contains: "corrupt") { try bad.discard(offset: 0, length: 65536) }
            #expect(fileBytes(path) == before, "the image was written after corruption was found")
        }
        // An L2 table past the end of the file.
        try patch(path, at: l1Offset, be64Bytes(Qcow2Image.copiedFlag | 0x10_0000_0000))
        do {
            let bad2 = try Qcow2Image(path: path)
            expectError(path, contains: "L2 table") { _ = try bad2.read(512, at: 0) }
        }
        // Misaligned L2 table.
        try patch(path, at: l1Offset, be64Bytes(Qcow2Image.copiedFlag | UInt64(l2Offset + 512)))
        expectError(path, contains: "not cluster-aligned") { _ = try Qcow2Image(path: path).read(512, at: 0) }
    }

    @Test func refcountUnderflowIsCorruption() throws {
        // A data cluster whose refcount says 0: freeing it must be refused, not wrap around.
        let dir = TempDir()
        let path = try sample(dir)
        let bytes = fileBytes(path)
        let rtOffset = Int(bytes.be64(48))
        let blockOffset = Int(bytes.be64(rtOffset))
        let l1Offset = Int(bytes.be64(40))
        let l2Offset = Int(bytes.be64(l1Offset) & Qcow2Image.offsetMask)
        let dataCluster = Int((bytes.be64(l2Offset + 8 * 2) & Qcow2Image.offsetMask) >> 16)
        try patch(path, at: blockOffset + dataCluster * 2, [0, 0])
        let image = try Qcow2Image(path: path)
        expectError(path, contains: "refcount") { try image.discard(offset: 2 * 65536, length: 65536) }
        #expect(image.corruption != nil)
    }

    @Test func backingChainLoopsMissingAndTooDeep() throws {
        let dir = TempDir()
        let a = dir.file("a.qcow2"), b = dir.file("b.qcow2")
        // a -> b, then c -> a, then c replaces b: a -> b(c) -> a.
        try Qcow2Image.create(path: b, size: 1 << 20)
        try Qcow2Image.create(path: a, size: 1 << 20, backingFile: "b.qcow2", backingFormat: .qcow2)
        try Qcow2Image.create(path: dir.file("c.qcow2"), size: 1 << 20, backingFile: "a.qcow2", backingFormat: .qcow2)
        try FileManager.default.removeItem(atPath: b)
        try FileManager.default.moveItem(atPath: dir.file("c.qcow2"), toPath: b)
        expectError(a, contains: "loops") { _ = try Qcow2Image(path: a) }
        // An image that is its own backing file.
        let s = dir.file("self.qcow2")
        expectError(s, contains: "loops") { try Qcow2Image.create(path: s, size: 1 << 20, backingFile: "self.qcow2") }
        // Missing base, at creation and when the base goes away later.
        let x = dir.file("x.qcow2")
        expectError(x, contains: "gone.raw") { try Qcow2Image.create(path: x, size: 1 << 20, backingFile: "gone.raw") }
        #expect(!FileManager.default.fileExists(atPath: x), "a failed create left its file behind")
        try RawImage.create(path: dir.file("base.raw"), size: 1 << 20)
        try Qcow2Image.create(path: x, size: 1 << 20, backingFile: "base.raw", backingFormat: .raw)
        try FileManager.default.removeItem(atPath: dir.file("base.raw"))
        expectError(x, contains: "base.raw") { _ = try Qcow2Image(path: x) }
        // A chain deeper than the limit.
        var previous = dir.file("d0.raw")
        try RawImage.create(path: previous, size: 1 << 20)
        for i in 1..<Qcow2Image.maxChainDepth {
            let next = dir.file("d\(i).qcow2")
            try Qcow2Image.create(path: next, size: 1 << 20, backingFile: previous, backingFormat: i == 1 ? .raw : .qcow2)
            previous = next
        }
        let top = dir.file("d-top.qcow2")
        #expect(try Qcow2Image(path: previous).readAll().count == 1 << 20)  // 16 images: fine
        expectError(dir.file("d1.qcow2"), contains: "deeper") {
            _ = try DiskImage.create(path: top, format: .qcow2, size: nil, base: previous)
        }
    }

    @Test func fuzzedMetadataNeverCrashes() throws {
        let dir = TempDir()
        let path = try sample(dir, clusterSize: 4096)
        let original = fileBytes(path)
        var rng = TestRandom(seed: 77)
        var errors = 0
        for _ in 0..<150 {
            var bytes = original
            for _ in 0..<(1 + rng.next(6)) {
                // Header, refcount table/block, L1 and L2 live in the first few clusters.
                let at = Int(rng.next(UInt64(min(bytes.count, 6 * 4096))))
                bytes[at] = UInt8(truncatingIfNeeded: rng.next())
            }
            _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
            do {
                let image = try Qcow2Image(path: path)
                _ = try image.read(Int(min(image.size, 4 << 20)), at: 0)
                if image.size > 5000 {
                    try image.write([UInt8](repeating: 7, count: 5000), at: rng.next(image.size - 5000))
                }
                try image.discard(offset: 0, length: min(image.size, 65536))
            } catch {
                errors += 1
                #expect("\(error)".contains(path) || error is DiskError)
            }
        }
        #expect(errors > 0, "the fuzzer never produced a rejected image")
    }
}
