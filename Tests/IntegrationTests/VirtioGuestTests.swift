import Foundation
import Testing
import VMM

/// guests/virtio-test.c under KVM with a raw disk attached through `vmm -d`: its minimal
/// virtio-pci driver reads, writes and flushes the disk through virtio-blk and reads
/// virtio-rng; the data is then checked on the host side.
@Suite(.serialized) struct VirtioGuestTests {
    static let kernelPath = Harness.guestDir.appendingPathComponent("virtio-test.elf").path

    @Test func guestReadsAndWritesARawDiskThroughVirtioBlk() throws {
        if Harness.skipUnlessKVM() { return }
        let kernel = try Harness.buildGuest(script: "build-virtio-test.sh", arguments: [Self.kernelPath])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("virtio-guest-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var image = [UInt8](repeating: 0, count: 1 << 20)
        let marker = Array("HOST-MARKER-SECTOR-ZERO".utf8)
        image.replaceSubrange(0..<marker.count, with: marker)
        let disk = dir.appendingPathComponent("disk.img").path
        try Data(image).write(to: URL(fileURLWithPath: disk))

        let r = try Harness.vmm(["-k", kernel, "-m", "64M", "--accel", "kvm", "-p", "test", "-d", disk])
        let log = r.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(!r.timedOut)
        #expect(r.status == 1, "stdout:\n\(log)\nstderr:\n\(r.stderr)")     // debug exit 0 -> (0 << 1) | 1
        #expect(log.contains("capacity 2048 sectors"))
        #expect(log.contains("serial 'swiftvmm-disk0'"))
        #expect(log.contains("sector0: HOST-MARKER-SECTOR-ZERO"))
        #expect(log.contains("write-readback-ok"))
        #expect(log.contains("flush-ok"))
        #expect(log.contains("bounds-ok"))
        #expect(log.contains("rng: 32 bytes"))
        #expect(log.contains("virtio-test: PASS"))

        // What the guest wrote is in the file: sectors 1-2 hold the marker and the pattern.
        let after = try [UInt8](Data(contentsOf: URL(fileURLWithPath: disk)))
        #expect(after.count == image.count)
        #expect(Array(after[512..<528]) == Array("GUEST-WROTE-THIS".utf8))
        #expect((16..<1024).allSatisfy { after[512 + $0] == UInt8(truncatingIfNeeded: $0 * 13 + 7) })
        #expect(Array(after[0..<marker.count]) == marker)
        #expect(after[1536...].allSatisfy { $0 == 0 })
    }
}
