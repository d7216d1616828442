#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import Storage

/// Images a hostile or careless user hands over (issue 11, holes 2-4): one image opened
/// twice, tables that alias each other, a FIFO instead of a file.
@Suite struct ImageSafetyTests {
    func patch(_ path: String, at offset: UInt64, _ bytes: [UInt8]) throws {
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        try h.seek(toOffset: offset)
        h.write(Data(bytes))
        try h.close()
    }

    func expectInUse(_ what: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("\(what): opened although the image is in use", sourceLocation: sourceLocation)
        } catch let e as StorageError {
            guard case .inUse = e else {
                Issue.record("\(what): \(e)", sourceLocation: sourceLocation)
                return
            }
        } catch {
            Issue.record("\(what): \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func aWritableImageHasOneUserAndBackingFilesAreShared() throws {
        let dir = TempDir()
        let base = dir.file("base.raw")
        try RawImage.create(path: base, size: 1 << 20)
        let top = dir.file("x.qcow2")
        try Qcow2Image.create(path: top, size: 1 << 20, backingFile: base)
        let other = dir.file("y.qcow2")
        try Qcow2Image.create(path: other, size: 1 << 20, backingFile: base)
        var first: (any DiskBackend)? = try DiskImage.open(top)
        // The same file under another name, writable or read-only: refused.
        // (No chdir: the working directory is the whole test process's, and this one is
        // deleted at the end, which broke `sh -c` in tests running at the same time.)
        expectInUse("./x.qcow2") { _ = try DiskImage.open(dir.path + "/./x.qcow2") }
        expectInUse("read-only") { _ = try DiskImage.open(top, readOnly: true) }
        expectInUse("its chain") { _ = try DiskImage.openChain(path: top) }
        // Its backing file is only read: another overlay on it is fine, writing it is not.
        let second = try DiskImage.open(other)
        expectInUse("the base, writable") { _ = try DiskImage.open(base) }
        #expect(second.size == 1 << 20)
        // The last close frees the image.
        first = nil
        let again = try DiskImage.open(top)
        #expect(again.size == 1 << 20)
        _ = first
    }

    /// The L1 entry of guest cluster 0 (the L2 table) and that table's first entry.
    func tables(_ path: String) -> (l2: UInt64, l2Entry0: UInt64) {
        let bytes = fileBytes(path)
        let l1Offset = Int(bytes.be64(40))
        let l2 = bytes.be64(l1Offset) & Qcow2Image.offsetMask
        return (l2, bytes.be64(Int(l2)))
    }

    @Test(arguments: [true, false])
    func anL2EntryAliasingItsOwnTableIsCorruptionNeverASuccessfulWrite(copied: Bool) throws {
        let dir = TempDir()
        let path = dir.file("alias.qcow2")
        do {
            let image = try Qcow2Image.create(path: path, size: 4 << 20)
            try image.write([UInt8](repeating: 0x11, count: 65536), at: 0)
            try image.write([UInt8](repeating: 0x22, count: 512), at: 65536)
        }
        let (l2, _) = tables(path)
        #expect(l2 != 0)
        // Guest cluster 0 now claims the L2 table itself as its data.
        try patch(path, at: l2, be64Bytes(l2 | (copied ? Qcow2Image.copiedFlag : 0)))
        let tableBefore = Array(fileBytes(path)[Int(l2)..<Int(l2) + 65536])
        let image = try Qcow2Image(path: path)
        var failed = false
        do {
            try image.write([UInt8](repeating: 0xee, count: 4096), at: 0)
        } catch let e as StorageError {
            failed = true
            #expect("\(e)".contains("overlap"), "\(e)")
            #expect("\(e)".contains(path))
        }
        #expect(failed, "the write succeeded")
        // The table was neither overwritten nor freed, and nothing is written any more.
        #expect(Array(fileBytes(path)[Int(l2)..<Int(l2) + 65536]) == tableBefore)
        #expect(image.corruption != nil)
        #expect(throws: StorageError.self) { try image.write([UInt8](repeating: 1, count: 512), at: 65536) }
        // On disk it is marked corrupt: it is not opened for writing again.
        #expect(fileBytes(path).be64(72) & Qcow2Header.incompatCorrupt != 0)
        withExtendedLifetime(image) {}
    }

    @Test func discardingAClusterThatIsARefcountBlockIsRefused() throws {
        let dir = TempDir()
        let path = dir.file("rc.qcow2")
        do {
            let image = try Qcow2Image.create(path: path, size: 4 << 20)
            try image.write([UInt8](repeating: 0x11, count: 65536), at: 0)
        }
        let bytes = fileBytes(path)
        let refcountTable = Int(bytes.be64(48))
        let block = bytes.be64(refcountTable) & Qcow2Image.offsetMask
        let (l2, _) = tables(path)
        try patch(path, at: l2, be64Bytes(block | Qcow2Image.copiedFlag))
        let image = try Qcow2Image(path: path)
        #expect(throws: StorageError.self) { try image.discard(offset: 0, length: 65536) }
        // The refcount block is still there (not punched out, not zeroed).
        #expect(Array(fileBytes(path)[Int(block)..<Int(block) + 64]) == Array(bytes[Int(block)..<Int(block) + 64]))
        #expect(image.corruption?.contains("refcount block") == true, "\(image.corruption ?? "")")
    }

    /// Runs `body` on another thread: a hang is a failure after 10 s, not a hung test run.
    func withinTenSeconds(_ what: String, _ body: @escaping @Sendable () -> Void) {
        let done = DispatchSemaphore(value: 0)
        Thread { body(); done.signal() }.start()
        #expect(done.wait(timeout: .now() + 10) == .success, "\(what) blocked")
    }

    @Test func aFIFOIsRefusedAtOnceAsAnImageOrABackingFile() throws {
        let dir = TempDir()
        let fifo = dir.file("fifo")
        try RawImage.create(path: fifo, size: 1 << 20)
        let overlay = dir.file("over.qcow2")
        try Qcow2Image.create(path: overlay, size: 1 << 20, backingFile: fifo, backingFormat: .raw)
        unlink(fifo)
        #expect(mkfifo(fifo, 0o644) == 0)
        withinTenSeconds("DiskImage.open(fifo)") {
            #expect(throws: StorageError.badArgument("\(fifo): not a regular file or block device")) {
                _ = try DiskImage.open(fifo)
            }
        }
        withinTenSeconds("openChain(fifo backing)") {
            #expect(throws: StorageError.badArgument("\(fifo): not a regular file or block device")) {
                _ = try DiskImage.openChain(path: overlay)
            }
        }
        withinTenSeconds("Qcow2Image(fifo backing)") {
            #expect(throws: StorageError.badArgument("\(fifo): not a regular file or block device")) {
                _ = try Qcow2Image(path: overlay)
            }
        }
    }
}
