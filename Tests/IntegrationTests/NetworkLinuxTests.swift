import Devices
import Foundation
import Testing

/// Linux's own virtio_net driver on our device: the Debian i386 kernel + busybox initramfs
/// (guests/debian/build.sh --i386) on the software CPU with `vmm --net tap:NAME,mac=...`.
/// The init script lists /sys/class/net, brings eth0 up and prints its packet counters (the
/// host sends IPv6 neighbour/multicast traffic on the tap, the guest its own). Opt-in
/// (SWIFTVMM_LINUX_BOOT=1): it is a second ~75 s Linux boot; skipped with the reason printed
/// when the guest files are missing or taps cannot be made.
@Suite struct NetworkLinuxTests {
    @Test func debianI386SeesEth0WithOurMACAndPassesPackets() throws {
        guard ProcessInfo.processInfo.environment["SWIFTVMM_LINUX_BOOT"] == "1" else {
            print("SKIPPED debianI386SeesEth0WithOurMACAndPassesPackets: set SWIFTVMM_LINUX_BOOT=1 (a ~75 s boot)")
            return
        }
        if let why = NetworkGuestTests.tapProblem {
            print("SKIPPED debianI386SeesEth0WithOurMACAndPassesPackets: \(why)")
            return
        }
        let dir = I386LinuxBootTests.guestDirectory
        let kernel = dir.appendingPathComponent("vmlinux").path
        let initrd = dir.appendingPathComponent("initramfs.cpio.gz").path
        for f in [kernel, initrd] where !FileManager.default.fileExists(atPath: f) {
            print("SKIPPED debianI386SeesEth0WithOurMACAndPassesPackets: \(f) is missing (sh guests/debian/build.sh --i386)")
            return
        }
        let name = "swvl\(getpid() % 100_000)"
        let r = try Harness.vmm(["--accel", "emulator", "-k", kernel, "-i", initrd, "-m", "256M",
                                 "-p", I386LinuxBootTests.cmdline,
                                 "--net", "tap:\(name),mac=fe:e1:ba:d0:00:77"], timeout: 900)
        let out = r.stdout.replacingOccurrences(of: "\r", with: "")
        let tail = String(out.suffix(2500))
        #expect(!r.timedOut, "\(tail)")
        #expect(out.contains("loaded virtio_net"), "\(tail)")
        #expect(out.contains("net: eth0 fe:e1:ba:d0:00:77"), "\(tail)")
        #expect(out.contains("eth0: <BROADCAST,MULTICAST,UP,LOWER_UP>"), "link up through VIRTIO_NET_F_STATUS:\n\(tail)")
        // "eth0: rx N tx M packets" with M > 0 (the guest's own IPv6 traffic went out).
        let counters = out.split(separator: "\n").first { $0.hasPrefix("eth0: rx ") }?.split(separator: " ")
        let tx = counters.flatMap { $0.count >= 5 ? Int($0[4]) : nil }
        #expect((tx ?? 0) > 0, "\(tail)")
        #expect(out.contains(I386LinuxBootTests.marker), "\(tail)")
    }
}
