import Testing
import Foundation
@testable import X86Emulator

/// The proof: the Debian kernel boots on the software CPU to the initramfs's init, which
/// prints a marker. Guests come from guests/debian/build.sh (apt-get download + dpkg-deb);
/// the test builds them when missing and is skipped (saying so) if that is impossible.
@Suite struct LinuxBootTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let marker = "SWIFTVMM-INIT-OK"

    static func guest(_ arch: String) -> (kernel: String, initrd: String)? {
        let dir = ProcessInfo.processInfo.environment["SWIFTVMM_GUEST_CACHE"] ?? root.appendingPathComponent(".build/guests/debian").path
        // The extracted vmlinux boots through its PVH entry, skipping the in-guest XZ
        // decompression; SWIFTVMM_BOOT_BZIMAGE=1 boots the bzImage instead.
        let bz = ProcessInfo.processInfo.environment["SWIFTVMM_BOOT_BZIMAGE"] == "1"
        let kernel = "\(dir)/\(arch)/" + (bz ? "vmlinuz" : "vmlinux"), initrd = "\(dir)/\(arch)/initramfs.cpio.gz"
        if !FileManager.default.fileExists(atPath: kernel) || !FileManager.default.fileExists(atPath: initrd) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = [root.appendingPathComponent("guests/debian/build.sh").path] + (arch == "i386" ? ["--only-i386"] : [])
            try? p.run(); p.waitUntilExit()
        }
        guard FileManager.default.fileExists(atPath: kernel), FileManager.default.fileExists(atPath: initrd) else { return nil }
        return (kernel, initrd)
    }

    @Test func debianAmd64KernelBootsToInit() throws {
        guard ProcessInfo.processInfo.environment["SWIFTVMM_LINUX_BOOT"] == "1" else {
            print("SKIPPED debianAmd64KernelBootsToInit: set SWIFTVMM_LINUX_BOOT=1 (takes minutes in a debug build)")
            return
        }
        guard let g = LinuxBootTests.guest("amd64") else {
            print("SKIPPED debianAmd64KernelBootsToInit: guests/debian/build.sh could not provide the kernel")
            return
        }
        let h = try LinuxBootHarness()
        try h.load(kernel: g.kernel, initrd: g.initrd,
                   cmdline: "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 tsc=reliable no_timer_check")
        let seconds = Double(ProcessInfo.processInfo.environment["SWIFTVMM_BOOT_SECONDS"] ?? "600") ?? 600
        let outcome = h.run(until: LinuxBootTests.marker, seconds: seconds)
        let text = h.consoleText
        let regs = h.vcpu.cpu.registers()
        print("---- guest console (\(text.utf8.count) bytes, \(h.vcpu.instructionCount) instructions, rip 0x\(String(regs.rip, radix: 16))) ----")
        print("decoded-instruction cache: \(h.vcpu.cpu.icacheHits) hits, \(h.vcpu.cpu.icacheMisses) misses")
        print(text.suffix(6000))
        if let path = ProcessInfo.processInfo.environment["SWIFTVMM_BOOT_LOG"] {
            try? text.write(toFile: path, atomically: true, encoding: .utf8)
        }
        print("---- outcome: \(outcome) ----")
        if case .marker = outcome {} else {
            Issue.record("the kernel did not reach init: \(outcome)")
        }
        #expect(text.contains(LinuxBootTests.marker))
    }
}
