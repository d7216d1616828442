#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// vmd running a real test kernel (guests/virtio-test.c, a multiboot guest that prints on
/// COM1 and ends through the debug-exit port) on the VMM machine. Skipped, saying why, when
/// /dev/kvm is unusable, gcc cannot build 32-bit code, or the machine cannot run guests yet.
@Suite(.serialized) struct RealGuestTests {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    static func kvmUsable() -> Bool {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if fd < 0 { return false }
        close(fd)
        return true
    }

    @Test func aTestKernelRunsToItsEndUnderVmd() throws {
        guard Self.kvmUsable() else {
            print("RealGuestTests skipped: /dev/kvm is not usable here")
            return
        }
        try #require(Binaries.available)
        let out = NSTemporaryDirectory() + "vmd-guest-\(getpid()).elf"
        defer { unlink(out) }
        let build = try run("/bin/sh", [Self.repoRoot + "/guests/build-virtio-test.sh", out], timeout: 60)
        guard build.status == 0 else {
            print("RealGuestTests skipped: cannot build the test guest: \(build.stderr.prefix(200))")
            return
        }
        let d = try TestDaemon(config: "vm \"guest\" {\n disable\n boot \"\(out)\"\n memory 64M\n}\n", fake: false)
        defer { d.stop() }
        let start = try d.vmctl("start", "guest")
        if start.status != 0 && (start.stderr.contains("not wired") || start.stderr.contains("no machine runner")) {
            print("RealGuestTests skipped: the VMM machine cannot run guests in this build: \(start.stderr)")
            return
        }
        #expect(start.status == 0, "\(start.stderr)")
        #expect(start.stdout.hasPrefix("vmctl: started vm 1 successfully, tty /dev/pts/"))
        let waited = try d.vmctl("wait", "guest")
        #expect(waited.status == 0)
        #expect(waited.stdout.hasPrefix("vmctl: vm guest stopped: exited"), "\(waited.stdout)")
        #expect(row(try d.vmctl("status").stdout, "guest")?[1] == "-")
    }
}
