#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import Storage

/// Disks built from descriptors opened elsewhere (vmd opens, the VM process builds):
/// `DiskImage.openChain` and `DiskImage.open(chain:)`.
@Suite struct PassedImageFilesTests {
    /// (device, inode) of an open descriptor, nil when it is not open.
    static func identity(_ fd: Int32) -> [UInt64]? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        return [UInt64(st.st_dev), UInt64(st.st_ino)]
    }

    @Test func aRawDiskWorksFromItsDescriptorAfterItsNameIsGone() throws {
        let dir = TempDir()
        let path = dir.file("disk.raw")
        try RawImage.create(path: path, size: 1 << 20)
        try RawImage(path: path).write(Array("MARKER".utf8), at: 0)
        let files = try DiskImage.openChain(path: path)
        #expect(files.count == 1)
        #expect(files[0].format == .raw && !files[0].readOnly && files[0].path == path)
        // The name no longer leads to the file: only the descriptor can.
        try FileManager.default.moveItem(atPath: path, toPath: dir.file("moved.raw"))
        let disk = try DiskImage.open(chain: files)
        #expect(disk is RawImage && disk.size == 1 << 20 && !disk.isReadOnly)
        #expect(try disk.read(6, at: 0) == Array("MARKER".utf8))
        try disk.write(Array("WRITTEN".utf8), at: 4096)
        try disk.flush()
        #expect(Array(fileBytes(dir.file("moved.raw"))[4096..<4103]) == Array("WRITTEN".utf8))
    }

    @Test func aReadOnlyRawDiskRefusesWrites() throws {
        let dir = TempDir()
        let path = dir.file("ro.img")
        try RawImage.create(path: path, size: 65536)
        let files = try DiskImage.openChain(path: path, readOnly: true)
        #expect(fcntl(files[0].fd, F_GETFL) & O_ACCMODE == O_RDONLY)
        let disk = try DiskImage.open(chain: files)
        #expect(disk.isReadOnly)
        #expect(throws: DiskError.readOnly) { try disk.write([1], at: 0) }
    }

    /// base.raw ← mid.qcow2 ← top.qcow2, with relative backing names; the directory is
    /// renamed before the disk is built, so no backing file can be found by name.
    @Test func aQcow2ChainIsOpenedWholeAndBuiltFromDescriptors() throws {
        let dir = TempDir()
        let sub = dir.file("images")
        try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
        try RawImage.create(path: sub + "/base.raw", size: 4 << 20)
        try RawImage(path: sub + "/base.raw").write(Array("BASE-SECTOR-0".utf8), at: 0)
        try Qcow2Image.create(path: sub + "/mid.qcow2", size: 4 << 20, backingFile: "base.raw", backingFormat: .raw)
        try Qcow2Image(path: sub + "/mid.qcow2").write(Array("MID-AT-1M".utf8), at: 1 << 20)
        try Qcow2Image.create(path: sub + "/top.qcow2", size: 4 << 20, backingFile: "mid.qcow2")
        let files = try DiskImage.openChain(path: sub + "/top.qcow2")
        #expect(files.map(\.path) == [sub + "/top.qcow2", sub + "/mid.qcow2", sub + "/base.raw"])
        #expect(files.map(\.format) == [.qcow2, .qcow2, .raw])
        #expect(files.map(\.readOnly) == [false, true, true])
        #expect(fcntl(files[1].fd, F_GETFL) & O_ACCMODE == O_RDONLY)
        #expect(fcntl(files[2].fd, F_GETFL) & O_ACCMODE == O_RDONLY)
        #expect(files.allSatisfy { fcntl($0.fd, F_GETFD) & FD_CLOEXEC != 0 })

        try FileManager.default.moveItem(atPath: sub, toPath: dir.file("elsewhere"))
        do {
            let disk = try DiskImage.open(chain: files)
            let top = try #require(disk as? Qcow2Image)
            #expect(top.backing is Qcow2Image)
            #expect(try disk.read(13, at: 0) == Array("BASE-SECTOR-0".utf8))
            #expect(try disk.read(9, at: 1 << 20) == Array("MID-AT-1M".utf8))
            try disk.write(Array("TOP-WRITE".utf8), at: 2 << 20)
            try disk.flush()
        }
        let moved = dir.file("elsewhere")
        #expect(try Qcow2Image(path: moved + "/top.qcow2").read(9, at: 2 << 20) == Array("TOP-WRITE".utf8))
        #expect(try Qcow2Image(path: moved + "/mid.qcow2", readOnly: true).read(9, at: 2 << 20) == [UInt8](repeating: 0, count: 9))
        if qemuImgAvailable { try expectQemuCheckPasses(moved + "/top.qcow2") }
    }

    @Test(.enabled(if: qemuImgAvailable, "qemu-img not installed"))
    func aChainMadeByQemuImgIsBuiltFromDescriptors() throws {
        let dir = TempDir()
        try qemu("qemu-img", "create", "-f", "qcow2", dir.file("base.qcow2"), "2M")
        try qemu("qemu-io", "-c", "write -P 0x5a 0 64k", dir.file("base.qcow2"))
        try qemu("qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", dir.file("over.qcow2"))
        let files = try DiskImage.openChain(path: dir.file("over.qcow2"))
        #expect(files.map(\.format) == [.qcow2, .qcow2])
        let disk = try DiskImage.open(chain: files)
        #expect(try disk.read(65536, at: 0).allSatisfy { $0 == 0x5a })
        try disk.write([UInt8](repeating: 0xa5, count: 4096), at: 65536)
        try disk.flush()
        let out = try qemu("qemu-io", "-r", "-U", "-c", "read -P 0xa5 64k 4k", "-c", "read -P 0x5a 0 64k", dir.file("over.qcow2"))
        #expect(!out.contains("Pattern verification failed"), "\(out)")
        try expectQemuCheckPasses(dir.file("over.qcow2"))
    }

    @Test func chainErrorsMatchTheOnesOfOpeningByNameAndLeaveNothingOpen() throws {
        let dir = TempDir()
        // A missing base.
        try RawImage.create(path: dir.file("gone.raw"), size: 1 << 20)
        try Qcow2Image.create(path: dir.file("orphan.qcow2"), size: 1 << 20, backingFile: "gone.raw", backingFormat: .raw)
        unlink(dir.file("gone.raw"))
        #expect(throws: StorageError.backingMissing(path: dir.file("orphan.qcow2"), backing: dir.file("gone.raw"))) {
            try DiskImage.openChain(path: dir.file("orphan.qcow2"))
        }
        // A loop: a → b → x, then x made a symbolic link to a.
        try Qcow2Image.create(path: dir.file("x.qcow2"), size: 1 << 20)
        try Qcow2Image.create(path: dir.file("b.qcow2"), size: 1 << 20, backingFile: "x.qcow2", backingFormat: .qcow2)
        try Qcow2Image.create(path: dir.file("a.qcow2"), size: 1 << 20, backingFile: "b.qcow2", backingFormat: .qcow2)
        unlink(dir.file("x.qcow2"))
        symlink("a.qcow2", dir.file("x.qcow2"))
        let loop = StorageError.backingLoop(path: dir.file("b.qcow2"), backing: dir.file("x.qcow2"))
        #expect(throws: loop) { try Qcow2Image(path: dir.file("a.qcow2")) }
        #expect(throws: loop) { try DiskImage.openChain(path: dir.file("a.qcow2")) }
        // Deeper than 16 images.
        try RawImage.create(path: dir.file("d0"), size: 1 << 20)
        for i in 1..<Qcow2Image.maxChainDepth {
            try Qcow2Image.create(path: dir.file("d\(i)"), size: 1 << 20, backingFile: "d\(i - 1)",
                                  backingFormat: i == 1 ? .raw : .qcow2)
        }
        // The 17th image cannot be created on top of 16: made on a link that moves later.
        symlink("d1", dir.file("link"))
        let top = dir.file("d\(Qcow2Image.maxChainDepth)")
        try Qcow2Image.create(path: top, size: 1 << 20, backingFile: "link", backingFormat: .qcow2)
        unlink(dir.file("link"))
        symlink("d\(Qcow2Image.maxChainDepth - 1)", dir.file("link"))
        var byName: (any Error)?
        do { _ = try Qcow2Image(path: top) } catch { byName = error }
        var byChain: (any Error)?
        do { _ = try DiskImage.openChain(path: top) } catch { byChain = error }
        #expect(byName as? StorageError == StorageError.backingTooDeep(path: dir.file("d1"), limit: Qcow2Image.maxChainDepth))
        #expect(byChain as? StorageError == byName as? StorageError)
        // One less is fine, and every file comes back.
        #expect(try DiskImage.openChain(path: dir.file("d\(Qcow2Image.maxChainDepth - 1)")).count == Qcow2Image.maxChainDepth)
        // A missing top image: the open error names it.
        #expect(throws: StorageError.system(path: dir.file("nope.raw"), operation: "open", errno: ENOENT)) {
            try DiskImage.openChain(path: dir.file("nope.raw"))
        }
    }

    @Test func aChainThatDoesNotMatchTheHeadersIsRefusedAndClosed() throws {
        let dir = TempDir()
        try RawImage.create(path: dir.file("base.raw"), size: 1 << 20)
        try Qcow2Image.create(path: dir.file("top.qcow2"), size: 1 << 20, backingFile: "base.raw", backingFormat: .raw)
        // The backing file left out.
        let short = try DiskImage.openChain(path: dir.file("top.qcow2"))
        close(short[1].fd)
        let shortID = Self.identity(short[0].fd)
        #expect(throws: StorageError.backingMissing(path: dir.file("top.qcow2"), backing: dir.file("base.raw"))) {
            try DiskImage.open(chain: [short[0]])
        }
        #expect(Self.identity(short[0].fd) != shortID)  // closed (or reused by another file)
        // One file too many.
        let long = try DiskImage.openChain(path: dir.file("top.qcow2"))
        let extra = try DiskImage.openChain(path: dir.file("base.raw"), readOnly: true)
        let ids = (long + extra).map { Self.identity($0.fd) }
        #expect(throws: StorageError.self) { try DiskImage.open(chain: long + extra) }
        #expect(zip(long + extra, ids).allSatisfy { Self.identity($0.fd) != $1 })
        // An empty chain.
        #expect(throws: StorageError.self) { try DiskImage.open(chain: []) }
    }
}
