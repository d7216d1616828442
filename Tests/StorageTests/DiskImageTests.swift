import Foundation
import Testing
@testable import Storage

@Suite struct DiskImageTests {
    @Test func parsesSizes() throws {
        #expect(try DiskImage.parseSize("512") == 512)
        #expect(try DiskImage.parseSize("64K") == 64 << 10)
        #expect(try DiskImage.parseSize("512M") == 512 << 20)
        #expect(try DiskImage.parseSize("10G") == 10 << 30)
        #expect(try DiskImage.parseSize("10g") == 10 << 30)
        #expect(try DiskImage.parseSize("1T") == 1 << 40)
        #expect(try DiskImage.parseSize("2GB") == 2 << 30)
        #expect(try DiskImage.parseSize("3GiB") == 3 << 30)
        for bad in ["", "G", "10X", "-5M", "1.5G", "99999999999999999999", "9000000P"] {
            #expect(throws: StorageError.badSize(bad)) { try DiskImage.parseSize(bad) }
        }
    }

    @Test func parsesPrefixesAndDetectsFormats() throws {
        #expect(DiskImage.parseSpec("qcow2:/a/b").format == .qcow2)
        #expect(DiskImage.parseSpec("qcow2:/a/b").path == "/a/b")
        #expect(DiskImage.parseSpec("raw:x.qcow2").format == .raw)
        #expect(DiskImage.parseSpec("/a/b.img").format == nil)
        let dir = TempDir()
        // New files: by extension.
        #expect(try DiskImage.detectFormat(dir.file("n.qcow2")).format == .qcow2)
        #expect(try DiskImage.detectFormat(dir.file("n.img")).format == .raw)
        #expect(try DiskImage.detectFormat(dir.file("n")).format == .raw)
        // Existing files: by magic, whatever the name says.
        try Qcow2Image.create(path: dir.file("q.img"), size: 1 << 20)
        try RawImage.create(path: dir.file("r.qcow2"), size: 1 << 20)
        #expect(try DiskImage.detectFormat(dir.file("q.img")).format == .qcow2)
        #expect(try DiskImage.detectFormat(dir.file("r.qcow2")).format == .raw)
        #expect(try DiskImage.open(dir.file("q.img")) is Qcow2Image)
        #expect(try DiskImage.open("raw:" + dir.file("q.img")) is RawImage)
    }

    @Test func createsPlainOverlayAndCopies() throws {
        let dir = TempDir()
        #expect(throws: StorageError.self) { try DiskImage.create(path: dir.file("nosize.raw"), format: .raw, size: nil) }
        // Each image is closed before another opens it (an open writable image is locked).
        let expected: [UInt8] = try {
            let raw = try DiskImage.create(path: dir.file("a.raw"), format: .raw, size: 8 << 20)
            #expect(raw.size == 8 << 20 && raw is RawImage)
            #expect(throws: StorageError.exists(path: dir.file("a.raw"))) {
                try DiskImage.create(path: dir.file("a.raw"), format: .raw, size: 1 << 20)
            }
            var rng = TestRandom(seed: 8)
            let chunk = rng.bytes(300_000)
            try raw.write(chunk, at: 1 << 20)
            try raw.write(chunk, at: 6 << 20)
            return try raw.readAll()
        }()

        // -b: an overlay, the size of its base unless larger.
        do {
            let overlay = try DiskImage.create(path: dir.file("o.qcow2"), format: .qcow2, size: nil, base: dir.file("a.raw"))
            #expect(overlay.size == 8 << 20)
            #expect(try overlay.readAll() == expected)
            let bigger = try DiskImage.create(path: dir.file("big.qcow2"), format: .qcow2, size: 16 << 20, base: dir.file("a.raw"))
            #expect(bigger.size == 16 << 20)
            #expect(try bigger.read(Int(8 << 20), at: 0) == expected)
            #expect(try bigger.read(4096, at: 12 << 20).allSatisfy { $0 == 0 })
        }
        #expect(throws: StorageError.self) {
            try DiskImage.create(path: dir.file("small.qcow2"), format: .qcow2, size: 1 << 20, base: dir.file("a.raw"))
        }
        #expect(throws: StorageError.self) {
            try DiskImage.create(path: dir.file("r2.raw"), format: .raw, size: nil, base: dir.file("a.raw"))
        }
        #expect(throws: StorageError.self) {
            try DiskImage.create(path: dir.file("both.qcow2"), format: .qcow2, size: nil, base: dir.file("a.raw"), input: dir.file("a.raw"))
        }

        // -i: raw -> qcow2 -> raw, with progress, only data written.
        var reports: [(UInt64, UInt64)] = []
        do {
            let q = try DiskImage.create(path: dir.file("c.qcow2"), format: .qcow2, size: nil, input: dir.file("a.raw"),
                                         progress: { reports.append(($0, $1)) })
            #expect(try q.readAll() == expected)
        }
        #expect(reports.last.map { $0.0 == $0.1 && $0.1 == 8 << 20 } == true)
        #expect(zip(reports, reports.dropFirst()).allSatisfy { $0.0 <= $1.0 })
        // 2 × 300 KB of data → at most 12 data clusters (+ metadata), not 8 MiB.
        #expect(fileBytes(dir.file("c.qcow2")).count < 1 << 20)
        let back = try DiskImage.create(path: dir.file("back.raw"), format: .raw, size: nil, input: "qcow2:" + dir.file("c.qcow2"))
        #expect(try back.readAll() == expected)
        var st = stat()
        stat(dir.file("back.raw"), &st)
        #expect(Int(st.st_blocks) * 512 < 2 << 20, "the converted raw image should stay sparse")
        // Converting an overlay copies the whole chain's content.
        let flat = try DiskImage.create(path: dir.file("flat.qcow2"), format: .qcow2, size: nil, input: dir.file("o.qcow2"))
        #expect(try flat.readAll() == expected)
        #expect((flat as? Qcow2Image)?.backingFile == nil)
        if qemuImgAvailable {
            try expectQemuCheckPasses(dir.file("c.qcow2"))
            try expectQemuCheckPasses(dir.file("o.qcow2"))
            let cmp = try run("qemu-img", ["compare", "-U", dir.file("o.qcow2"), dir.file("back.raw")])
            #expect(cmp.status == 0, "\(cmp.output)")
            let info = try qemu("qemu-img", "info", "-U", dir.file("o.qcow2"))
            #expect(info.contains("backing file format: raw"))
        }
    }

    @Test func imagesCanBeSharedBetweenThreads() throws {
        let dir = TempDir()
        let image = try Qcow2Image.create(path: dir.file("t.qcow2"), size: 8 << 20, clusterSize: 4096)
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            let data = [UInt8](repeating: UInt8(t + 1), count: 3000)
            for i in 0..<100 {
                try? image.write(data, at: UInt64(t) * (2 << 20) + UInt64(i) * 5000)
            }
        }
        for t in 0..<4 {
            for i in stride(from: 0, to: 100, by: 9) {
                #expect(try image.read(3000, at: UInt64(t) * (2 << 20) + UInt64(i) * 5000) == [UInt8](repeating: UInt8(t + 1), count: 3000))
            }
        }
        if qemuImgAvailable { try expectQemuCheckPasses(dir.file("t.qcow2")) }
    }

    @Test func vmctlCreate() throws {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let vmctl = URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("vmctl").path
        // vmctl is built with the tests: its absence is a failure, not a skip.
        try #require(FileManager.default.isExecutableFile(atPath: vmctl), "vmctl is not built at \(vmctl)")
        let dir = TempDir()
        let probe = try run(vmctl, ["create", "-s", "10M", dir.file("a.raw")])
        #expect(probe.status == 0, "\(probe.output)")
        #expect(try RawImage(path: dir.file("a.raw")).size == 10 << 20)
        // Sizes are rounded down to megabytes with a warning (OpenBSD's vmctl); the
        // extension picks qcow2.
        let q = try run(vmctl, ["create", "-s", "2500K", dir.file("b.qcow2")])
        #expect(q.status == 0, "\(q.output)")
        #expect(q.output.contains("disk size rounded to 2.0M"), "\(q.output)")
        #expect(try Qcow2Image(path: dir.file("b.qcow2")).size == 2 << 20)
        let o = try run(vmctl, ["create", "-b", dir.file("b.qcow2"), dir.file("c")])
        #expect(o.status == 0, "\(o.output)")
        #expect(try Qcow2Image(path: dir.file("c")).backingFile != nil)
        let i = try run(vmctl, ["create", "-i", dir.file("b.qcow2"), "raw:" + dir.file("d.qcow2")])
        #expect(i.status == 0, "\(i.output)")
        #expect(try DiskImage.probeFormat(path: dir.file("d.qcow2")) == nil)
        let exists = try run(vmctl, ["create", "-s", "1M", dir.file("a.raw")])
        #expect(exists.status != 0 && exists.output.contains("exists"))
        let nosize = try run(vmctl, ["create", dir.file("e.raw")])
        #expect(nosize.status != 0 && nosize.output.contains("size"))
        let both = try run(vmctl, ["create", "-b", dir.file("b.qcow2"), "-i", dir.file("a.raw"), dir.file("f.qcow2")])
        #expect(both.status != 0)
    }
}
