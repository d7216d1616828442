import Foundation
import Testing
@testable import Storage

/// Interoperability with QEMU's qemu-img / qemu-io (Debian qemu-utils).
@Suite(.enabled(if: qemuImgAvailable, "qemu-img not installed"))
struct Qcow2InteropTests {
    // MARK: images we write, checked by qemu

    @Test(arguments: [(3, 65536), (2, 65536), (3, 512), (3, 4096), (2, 2 << 20)])
    func ourImagesPassQemuCheckAndCompare(version: Int, clusterSize: Int) throws {
        let dir = TempDir()
        let path = dir.file("ours.qcow2")
        let size: UInt64 = 12 << 20
        let expected = MemoryDisk(size: Int(size))
        do {
            let image = try Qcow2Image.create(path: path, size: size, clusterSize: clusterSize, version: version)
            try randomWorkload([image, expected], seed: UInt64(version * 7 + clusterSize), operations: 100, maxSectors: 200)
            try image.flush()
            #expect(try image.readAll() == expected.bytes)
        }
        try expectQemuCheckPasses(path)
        let raw = dir.file("expected.raw")
        _ = FileManager.default.createFile(atPath: raw, contents: Data(expected.bytes))
        let cmp = try run("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "raw", path, raw])
        #expect(cmp.status == 0, "qemu-img compare: \(cmp.output)")
        let info = try qemu("qemu-img", "info", "-U", path)
        #expect(info.contains("compat: \(version == 2 ? "0.10" : "1.1")"))
        #expect(info.contains("cluster_size: \(clusterSize)"))
        // Reopening reads the same bytes.
        let again = try Qcow2Image(path: path, readOnly: true)
        #expect(try again.readAll() == expected.bytes)
    }

    @Test func growsTheRefcountTableSafely() throws {
        // 512-byte clusters: one refcount block covers 128 KiB and the initial table 8 MiB,
        // so filling 12 MiB forces new refcount blocks and a larger refcount table.
        let dir = TempDir()
        let path = dir.file("grow.qcow2")
        let image = try Qcow2Image.create(path: path, size: 10 << 20, clusterSize: 512)
        var rng = TestRandom(seed: 5)
        let data = rng.bytes(10 << 20)
        try image.write(data, at: 0)
        #expect(try image.readAll() == data)
        try expectQemuCheckPasses(path)
        #expect(try qemuContent(path, in: dir) == data)
    }

    // MARK: images qemu writes, read by us

    @Test(arguments: ["compat=0.10", "compat=1.1", "compat=1.1,cluster_size=4096", "compat=1.1,cluster_size=512,refcount_bits=1",
                      "compat=1.1,refcount_bits=64", "compat=1.1,lazy_refcounts=off,cluster_size=2M"])
    func readsQemuImages(options: String) throws {
        let dir = TempDir()
        let path = dir.file("q.qcow2")
        try qemu("qemu-img", "create", "-q", "-f", "qcow2", "-o", options, path, "8M")
        try qemu("qemu-io", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 5k", "-c", "write -P 0x33 7M 1M",
                 "-c", "write -z 7M 4k", "-c", "write -P 0x44 3000 700", path)
        do {
            let image = try Qcow2Image(path: path, readOnly: true)
            #expect(image.size == 8 << 20)
            #expect(try image.readAll() == (try qemuContent(path, in: dir)))
        }
        // And we can write into it, qemu still agrees.
        let rw = try Qcow2Image(path: path)
        let expected = MemoryDisk(bytes: try rw.readAll())
        try randomWorkload([rw, expected], seed: 99, operations: 60)
        try expectQemuCheckPasses(path)
        #expect(try qemuContent(path, in: dir) == expected.bytes)
    }

    @Test func readsCompressedClustersAndRewritesThem() throws {
        let dir = TempDir()
        let raw = dir.file("src.raw")
        var rng = TestRandom(seed: 3)
        var content = [UInt8](repeating: 0, count: 4 << 20)
        // Compressible but not trivial data, with holes.
        for i in stride(from: 0, to: content.count, by: 4096) where rng.next(3) != 0 {
            let b = UInt8(truncatingIfNeeded: rng.next())
            for j in 0..<4096 { content[i + j] = b &+ UInt8(j % 7) }
        }
        _ = FileManager.default.createFile(atPath: raw, contents: Data(content))
        let path = dir.file("c.qcow2")
        try qemu("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, path)
        let map = try qemu("qemu-img", "map", "-U", "--output=json", path)
        #expect(map.contains("\"compressed\": true") || fileBytes(path).count < content.count / 4, "qemu-img did not compress")
        let image = try Qcow2Image(path: path)
        #expect(try image.readAll() == content)
        // Partial writes into compressed clusters copy the rest of the cluster.
        let patch = rng.bytes(3000)
        try image.write(patch, at: 70_000)
        content.replaceSubrange(70_000..<73_000, with: patch)
        try image.writeZeroes(offset: 1 << 20, length: 65536)
        content.replaceSubrange((1 << 20)..<((1 << 20) + 65536), with: [UInt8](repeating: 0, count: 65536))
        #expect(try image.readAll() == content)
        try expectQemuCheckPasses(path)
        #expect(try qemuContent(path, in: dir) == content)
    }

    @Test func readsZeroClustersOverABackingFile() throws {
        let dir = TempDir()
        let base = dir.file("base.qcow2")
        let top = dir.file("top.qcow2")
        try qemu("qemu-img", "create", "-q", "-f", "qcow2", base, "4M")
        try qemu("qemu-io", "-c", "write -P 0x55 0 4M", base)
        try qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
        try qemu("qemu-io", "-c", "write -z 64k 128k", "-c", "write -z -u 1M 64k", "-c", "write -z 2M 4k", top)
        let image = try Qcow2Image(path: top, readOnly: true)
        let data = try image.readAll()
        #expect(data == (try qemuContent(top, in: dir)))
        #expect(data[65536..<(65536 + 131072)].allSatisfy { $0 == 0 })
        #expect(data[0] == 0x55)
    }

    @Test func readsAndWritesAFourDeepChain() throws {
        let dir = TempDir()
        // base (raw) <- l1 (qcow2 v2) <- l2 (qcow2 v3, 4k clusters) <- l3 <- top
        let names = ["base.raw", "l1.qcow2", "l2.qcow2", "l3.qcow2", "top.qcow2"]
        try qemu("qemu-img", "create", "-q", "-f", "raw", dir.file(names[0]), "6M")
        try qemu("qemu-io", "-f", "raw", "-c", "write -P 0x01 0 6M", dir.file(names[0]))
        try qemu("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", names[0], "-F", "raw", dir.file(names[1]))
        try qemu("qemu-io", "-c", "write -P 0x02 1M 1M", dir.file(names[1]))
        try qemu("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", names[1], "-F", "qcow2", dir.file(names[2]))
        try qemu("qemu-io", "-c", "write -P 0x03 1536k 1M", dir.file(names[2]))
        try qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", dir.file(names[2]), "-F", "qcow2", dir.file(names[3]), "8M")
        try qemu("qemu-io", "-c", "write -P 0x04 5M 2M", "-c", "write -z 200k 100k", dir.file(names[3]))
        // Our overlay on top, no backing format recorded (probed).
        let top = try Qcow2Image.create(path: dir.file(names[4]), size: 8 << 20, backingFile: names[3])
        var expected = try qemuContent(dir.file(names[3]), in: dir)
        #expect(try top.readAll() == expected)
        // Partial-cluster writes copy the rest of the cluster up from the chain.
        var rng = TestRandom(seed: 11)
        for _ in 0..<40 {
            let at = Int(rng.next(UInt64(expected.count - 70_000)))
            let data = rng.bytes(Int(1 + rng.next(70_000)))
            try top.write(data, at: UInt64(at))
            expected.replaceSubrange(at..<at + data.count, with: data)
        }
        try top.discard(offset: 1 << 20, length: 256 << 10)
        expected.replaceSubrange((1 << 20)..<((1 << 20) + (256 << 10)), with: [UInt8](repeating: 0, count: 256 << 10))
        #expect(try top.readAll() == expected)
        try expectQemuCheckPasses(dir.file(names[4]))
        #expect(try qemuContent(dir.file(names[4]), in: dir) == expected)
        // The chain below was never written.
        let baseAfter = fileBytes(dir.file(names[0]))
        #expect(baseAfter.allSatisfy { $0 == 1 })
    }

    // MARK: random workload: our qcow2 vs a raw file

    @Test(arguments: [UInt64(1), 2, 3])
    func randomWorkloadMatchesRaw(seed: UInt64) throws {
        let dir = TempDir()
        let size: UInt64 = 16 << 20
        let qPath = dir.file("w.qcow2"), rPath = dir.file("w.raw")
        // Seed 3 runs over a backing file, the others on a fresh image.
        var backing: String?
        if seed == 3 {
            backing = dir.file("b.raw")
            let base = try RawImage.create(path: backing!, size: size)
            try randomWorkload([base], seed: 1000, operations: 50)
            try qemu("cp", "--sparse=always", backing!, rPath)
        }
        let q = try Qcow2Image.create(path: qPath, size: size, clusterSize: seed == 2 ? 4096 : 65536,
                                      backingFile: backing, backingFormat: backing == nil ? nil : .raw)
        let r = backing == nil ? try RawImage.create(path: rPath, size: size) : try RawImage(path: rPath)
        try randomWorkload([q, r], seed: seed, operations: 300, maxSectors: 300)
        try q.flush()
        try r.flush()
        #expect(firstDifference(try q.readAll(), try r.readAll()) == nil)
        try expectQemuCheckPasses(qPath)
        let cmp = try run("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "raw", qPath, rPath])
        #expect(cmp.status == 0, "qemu-img compare: \(cmp.output)")
    }
}
