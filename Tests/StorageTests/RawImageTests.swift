import Foundation
import Testing
@testable import Storage

@Suite struct RawImageTests {
    @Test func createIsSparseAndReadsZeroes() throws {
        let dir = TempDir()
        let path = dir.file("a.raw")
        let image = try RawImage.create(path: path, size: 8 << 20)
        #expect(image.size == 8 << 20)
        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(st.st_size == 8 << 20)
        #expect(st.st_blocks == 0, "a new raw image should be sparse")
        #expect(try image.read(4096, at: 4 << 20).allSatisfy { $0 == 0 })
        #expect(throws: StorageError.exists(path: path)) { try RawImage.create(path: path, size: 1 << 20) }
    }

    @Test func writeReadFlushAndBounds() throws {
        let dir = TempDir()
        let image = try RawImage.create(path: dir.file("a.raw"), size: 1 << 20)
        var rng = TestRandom(seed: 1)
        let data = rng.bytes(5000)
        try image.write(data, at: 1234)
        try image.flush()
        #expect(try image.read(5000, at: 1234) == data)
        #expect(Array(fileBytes(dir.file("a.raw"))[1234..<6234]) == data)
        #expect(throws: DiskError.outOfRange(offset: (1 << 20) - 10, length: 20, size: 1 << 20)) {
            try image.write([UInt8](repeating: 1, count: 20), at: (1 << 20) - 10)
        }
        #expect(throws: DiskError.self) { _ = try image.read(1, at: 1 << 20) }
        // The file never grows.
        #expect(fileBytes(dir.file("a.raw")).count == 1 << 20)
    }

    @Test func discardPunchesHolesAndWriteZeroesZeroes() throws {
        let dir = TempDir()
        let path = dir.file("a.raw")
        let image = try RawImage.create(path: path, size: 4 << 20)
        try image.write([UInt8](repeating: 0xaa, count: 4 << 20), at: 0)
        try image.flush()
        var before = stat(), after = stat()
        stat(path, &before)
        try image.discard(offset: 1 << 20, length: 2 << 20)
        stat(path, &after)
        #expect(after.st_blocks < before.st_blocks, "discard should deallocate")
        #expect(try image.read(2 << 20, at: 1 << 20).allSatisfy { $0 == 0 })
        #expect(try image.read(1, at: (1 << 20) - 1) == [0xaa])
        #expect(try image.read(1, at: 3 << 20) == [0xaa])
        try image.writeZeroes(offset: 100, length: 1000)
        #expect(try image.read(1000, at: 100).allSatisfy { $0 == 0 })
        #expect(try image.read(1, at: 99) == [0xaa])
        #expect(try image.read(1, at: 1100) == [0xaa])
        // The allocation map sees the hole.
        let (state, length) = try image.allocation(at: 1 << 20, length: 2 << 20)
        #expect(state == .zero)
        #expect(length == 2 << 20)
    }

    @Test func readOnlyRefusesWrites() throws {
        let dir = TempDir()
        try RawImage.create(path: dir.file("a.raw"), size: 1 << 20)
        let image = try RawImage(path: dir.file("a.raw"), readOnly: true)
        #expect(image.isReadOnly)
        #expect(throws: DiskError.readOnly) { try image.write([1], at: 0) }
        #expect(throws: DiskError.readOnly) { try image.discard(offset: 0, length: 512) }
        #expect(throws: DiskError.readOnly) { try image.writeZeroes(offset: 0, length: 512) }
    }

    @Test func openMissingFileNamesIt() throws {
        do {
            _ = try RawImage(path: "/nonexistent/disk.raw")
            Issue.record("opening a missing file succeeded")
        } catch {
            #expect("\(error)".contains("/nonexistent/disk.raw"))
        }
    }
}

@Suite struct DescriptorTests {
    @Test func imagesOpenFromPassedDescriptors() throws {
        let dir = TempDir()
        try RawImage.create(path: dir.file("a.raw"), size: 1 << 20)
        try Qcow2Image.create(path: dir.file("b.qcow2"), size: 2 << 20)
        let rawFD = open(dir.file("a.raw"), O_RDWR)
        let qFD = open(dir.file("b.qcow2"), O_RDWR)
        let raw = try RawImage(fileDescriptor: rawFD, path: "disk0", readOnly: false)
        let q = try Qcow2Image(fileDescriptor: qFD, path: dir.file("b.qcow2"), readOnly: false)
        try raw.write([9, 9], at: 10)
        try q.write([8, 8], at: 70_000)
        #expect(raw.size == 1 << 20 && q.size == 2 << 20)
        #expect(try RawImage(path: dir.file("a.raw")).read(2, at: 10) == [9, 9])
        #expect(try Qcow2Image(path: dir.file("b.qcow2")).read(2, at: 70_000) == [8, 8])
    }
}
