import Foundation
import Testing
import VMM

/// guests/virtio-test.c under KVM with a raw disk attached through `vmm -d`: its minimal
/// virtio-pci driver reads, writes and flushes the disk through virtio-blk and reads
/// virtio-rng; the data is then checked on the host side.
@Suite(.serialized) struct VirtioGuestTests {
    static let kernelPath = Harness.guestDir.appendingPathComponent("virtio-test.elf").path

    /// Boots the virtio test guest with a 1 MiB raw disk whose sector 0 holds a host marker;
    /// returns the run, its console (CRs dropped), the disk as written and the disk afterwards.
    static func runDiskGuest(accel: String, timeout: Double = 30) throws
        -> (r: Harness.RunResult, log: String, image: [UInt8], after: [UInt8]) {
        let kernel = try Harness.buildGuest(script: "build-virtio-test.sh", arguments: [kernelPath])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("virtio-guest-\(accel)-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var image = [UInt8](repeating: 0, count: 1 << 20)
        let marker = Array("HOST-MARKER-SECTOR-ZERO".utf8)
        image.replaceSubrange(0..<marker.count, with: marker)
        let disk = dir.appendingPathComponent("disk.img").path
        try Data(image).write(to: URL(fileURLWithPath: disk))
        let r = try Harness.vmm(["-k", kernel, "-m", "64M", "--accel", accel, "-p", "test", "-d", disk], timeout: timeout)
        let after = try [UInt8](Data(contentsOf: URL(fileURLWithPath: disk)))
        return (r, r.stdout.replacingOccurrences(of: "\r", with: ""), image, after)
    }

    @Test(.enabled(if: Harness.kvmUsable, "needs a usable /dev/kvm"))
    func guestReadsAndWritesARawDiskThroughVirtioBlk() throws {
        let (r, log, image, after) = try Self.runDiskGuest(accel: "kvm")
        let marker = Array("HOST-MARKER-SECTOR-ZERO".utf8)
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
        #expect(after.count == image.count)
        #expect(Array(after[512..<528]) == Array("GUEST-WROTE-THIS".utf8))
        #expect((16..<1024).allSatisfy { after[512 + $0] == UInt8(truncatingIfNeeded: $0 * 13 + 7) })
        #expect(Array(after[0..<marker.count]) == marker)
        #expect(after[1536...].allSatisfy { $0 == 0 })
    }

    /// The same guest in-process: its queue notifies reach the devices through ioeventfds
    /// (served by the machine's virtio event thread), not MMIO exits.
    @Test(.enabled(if: Harness.kvmUsable, "needs a usable /dev/kvm"))
    func guestNotifiesGoThroughIOEventFDs() throws {
        let kernel = try Harness.buildGuest(script: "build-virtio-test.sh", arguments: [Self.kernelPath])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("virtio-fast-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let disk = dir.appendingPathComponent("disk.img").path
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: disk))
        let output = OutputBox()
        let config = MachineConfig(kernelPath: kernel, memorySize: 64 << 20, diskPaths: [disk],
                                   accelerator: .kvm, console: .callback { output.append($0) })
        let machine = try Machine(config: config)
        let outcome = try machine.run()
        let log = output.text
        #expect(log.contains("write-readback-ok"), "outcome \(outcome)\n\(log)")
        #expect(log.contains("virtio-test: PASS"))
        let loop = try #require(machine.virtioEventLoop)
        #expect(loop.failedRegistrations == 0)
        #expect(loop.notifiesViaEventFD > 0)
        // Reads, writes, flush, bounds check and rng: at least 5 requests were kicked.
        #expect(loop.notifiesViaEventFD >= 5)
        // The test guest polls the used ring (MSI-X stays disabled), so drive the router
        // directly: a message gets a GSI route + irqfd (no KVM_SIGNAL_MSI fallback), and a
        // repeat of the same message reuses it.
        let router = try #require(machine.msiRouter)
        #expect(router.interruptsViaIRQFD == 0)
        router.signalMSI(address: 0xFEE0_0000, data: 0x41)
        router.signalMSI(address: 0xFEE0_0000, data: 0x41)
        #expect(router.interruptsViaIRQFD == 2)
    }
}

/// Collects console output from the machine's threads.
final class OutputBox: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    func append(_ b: [UInt8]) { lock.lock(); bytes += b; lock.unlock() }
    var text: String { lock.lock(); defer { lock.unlock() }; return String(decoding: bytes, as: UTF8.self) }
}
