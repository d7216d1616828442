import Foundation
import Testing

/// Debian's own kernel (linux-image-amd64) with a busybox initramfs (guests/debian/build.sh)
/// booted by `vmm` on the software CPU with our devices: the kernel finds the PCI host and
/// the virtio-pci devices, the initramfs loads Debian's virtio modules, reads and writes the
/// virtio disk, reads the virtio rng, brings up eth0 on a host tap (when taps can be made),
/// prints the marker and powers off through ACPI. This is the
/// end-to-end proof that the machine works with real Linux drivers (this host's KVM cannot
/// run a stock kernel; see docs/emulator.md). It takes a few minutes in a debug build.
/// Skipped, saying why, when the guest files have not been built (no network for apt).
@Suite(.serialized) struct LinuxGuestTests {
    static let marker = "SWIFTVMM-INIT-OK"

    /// The cached guest files for `arch` (guests/debian/build.sh puts them there).
    static func guestFiles(_ arch: String) -> (kernel: String, initrd: String) {
        let cache = ProcessInfo.processInfo.environment["SWIFTVMM_GUEST_CACHE"]
            ?? Harness.packageRoot.appendingPathComponent(".build/guests/debian").path
        return ("\(cache)/\(arch)/vmlinux", "\(cache)/\(arch)/initramfs.cpio.gz")
    }

    /// Whether `arch`'s boot test can run: its guest files exist (`make test` builds them;
    /// it needs apt access) and SWIFTVMM_SKIP_LINUX_BOOT is not set. A false shows as a skip.
    static func canBoot(_ arch: String) -> Bool {
        let g = guestFiles(arch)
        return ProcessInfo.processInfo.environment["SWIFTVMM_SKIP_LINUX_BOOT"] == nil
            && FileManager.default.fileExists(atPath: g.kernel) && FileManager.default.fileExists(atPath: g.initrd)
    }

    /// What is wrong with the guest's clocks, or nil. The init prints `SWIFTVMM-CLOCK
    /// epoch=S uptime=U` just before powering off: its realtime clock (read from our RTC at
    /// boot, then kept by the kernel from its clocksource) must agree with the host's at the
    /// end of the run, and its time since boot cannot exceed the wall time the VM existed,
    /// however slow the emulator and however loaded the host (the guest's clock tracks real
    /// time, not the emulator's progress).
    static func clockProblem(_ log: String, runStart: Date, runEnd: Date) -> String? {
        guard let line = log.split(separator: "\n").first(where: { $0.hasPrefix("SWIFTVMM-CLOCK ") }) else {
            return "no SWIFTVMM-CLOCK line"
        }
        var v: [String: Double] = [:]
        for f in line.split(separator: " ").dropFirst() {
            let kv = f.split(separator: "=", maxSplits: 1)
            if kv.count == 2, let d = Double(kv[1]) { v[String(kv[0])] = d }
        }
        guard let epoch = v["epoch"], let uptime = v["uptime"] else { return "unreadable: \(line)" }
        let end = runEnd.timeIntervalSince1970, wall = runEnd.timeIntervalSince(runStart)
        // The line comes a moment before power-off; RTC seconds truncate (up to 1 s early).
        if epoch < end - 10 || epoch > end + 2 {
            return "guest realtime \(Int(epoch)) vs host \(Int(end)) at exit (\(Int(epoch - end)) s)"
        }
        if uptime > wall + 2 {
            return "guest uptime \(uptime) s after \(String(format: "%.1f", wall)) s of wall time"
        }
        return nil
    }

    /// Boots `arch`'s kernel with a fresh 8 MiB raw disk whose first bytes are a marker;
    /// returns the run and the disk's bytes after power-off.
    static func bootDebian(_ arch: String, kernel: String, initrd: String, memory: String = "256M",
                           extra: [String] = [], timeout: Double = 1500,
                           environment: [String: String] = [:]) throws -> (Harness.RunResult, [UInt8]) {
        let disk = NSTemporaryDirectory() + "swiftvmm-linux-\(arch)-\(getpid()).img"
        defer { unlink(disk) }
        var image = [UInt8](repeating: 0, count: 8 << 20)
        let head = Array("HOST-SAYS-HELLO-TO-LINUX".utf8)
        image.replaceSubrange(0..<head.count, with: head)
        try Data(image).write(to: URL(fileURLWithPath: disk))
        let r = try Harness.vmm(["--accel", "emulator", "-k", kernel, "-i", initrd, "-m", memory,
                                 "-p", "console=ttyS0", "-d", disk] + extra, timeout: timeout, environment: environment)
        let after = (try? Data(contentsOf: URL(fileURLWithPath: disk))).map { [UInt8]($0) } ?? []
        return (r, after)
    }

    @Test(.enabled(if: LinuxGuestTests.canBoot("amd64"), "needs guests/debian/build.sh's amd64 files and no SWIFTVMM_SKIP_LINUX_BOOT"))
    func debianAmd64KernelBootsToInitWithVirtioDevices() throws {
        let (kernel, initrd) = Self.guestFiles("amd64")
        // A virtio-net interface on a host tap too, when taps can be made here.
        let mac = "fe:e1:ba:d0:00:64"
        let tapProblem = NetworkGuestTests.tapProblem
        if let why = tapProblem { print("debianAmd64KernelBootsToInitWithVirtioDevices: no network check: \(why)") }
        let net = tapProblem == nil ? ["--net", "tap:swvm\(getpid() % 100_000),mac=\(mac)"] : []
        let start = Date()
        let (r, disk) = try Self.bootDebian("amd64", kernel: kernel, initrd: initrd, extra: net)
        let end = Date()
        let log = r.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(!r.timedOut, "no power-off in time; console so far:\n\(log.suffix(3000))")
        #expect(r.status == 0, "vmm status \(r.status): \(r.stderr)\n\(log.suffix(3000))")
        #expect(r.stderr.contains("accelerator emulator"), "\(r.stderr)")
        #expect(log.contains("Linux version 6."), "\(log.prefix(500))")
        // Our PCI host and virtio-pci devices, found by Linux's own drivers.
        #expect(log.contains("PCI host bridge to bus 0000:00"))
        for m in ["virtio_pci", "virtio_blk", "virtio_net", "virtio-rng", "virtio_console"] {
            #expect(log.contains("loaded \(m)\n"), "module \(m): \(log.suffix(2000))")
        }
        #expect(log.contains("vda reads: HOST-SAYS-HELLO-TO-LINUX"), "\(log.suffix(2000))")
        #expect(log.contains("vda written"))
        #expect(log.contains("hwrng gives: "), "\(log.suffix(2000))")
        if tapProblem == nil {
            // Linux's virtio_net on our device: our MAC, the link up through
            // VIRTIO_NET_F_STATUS, and packets sent (the guest's own IPv6 traffic).
            #expect(log.contains("net: eth0 \(mac)"), "\(log.suffix(2500))")
            #expect(log.contains("eth0: <BROADCAST,MULTICAST,UP,LOWER_UP>"), "\(log.suffix(2500))")
            let counters = log.split(separator: "\n").first { $0.hasPrefix("eth0: rx ") }?.split(separator: " ")
            let tx = counters.flatMap { $0.count >= 5 ? Int($0[4]) : nil }
            #expect((tx ?? 0) > 0, "\(log.suffix(2500))")
        }
        #expect(log.contains(Self.marker))
        // Linux trusts our TSC (invariant, TSC_ADJUST) and keeps time by it.
        #expect(log.contains("clocksource: Switched to clocksource tsc"), "\(log.prefix(20000))")
        #expect(!log.contains("Marking TSC unstable"), "\(log.prefix(20000))")
        let clock = Self.clockProblem(log, runStart: start, runEnd: end)
        #expect(clock == nil, "\(clock ?? "")")
        #expect(log.contains("reboot: Power down"), "\(log.suffix(1000))")
        #expect(disk.count == 8 << 20)
        if disk.count >= 1024 {
            #expect(Array(disk[512..<537]) == Array("SWIFTVMM-GUEST-WROTE-THIS".utf8))
        }
    }

    /// The same kernel and initramfs on the block tier and on the JIT tier (decoded basic
    /// blocks; host code for the hot ones): the same devices, disk and power-off.
    @Test(.enabled(if: LinuxGuestTests.canBoot("amd64"), "needs guests/debian/build.sh's amd64 files and no SWIFTVMM_SKIP_LINUX_BOOT"),
          arguments: ["block", "jit"])
    func debianAmd64BootsOnTheFasterTiers(tier: String) throws {
        let (kernel, initrd) = Self.guestFiles("amd64")
        let (r, disk) = try Self.bootDebian("amd64", kernel: kernel, initrd: initrd, environment: ["SWIFTVMM_CPU_TIER": tier])
        let log = r.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(!r.timedOut, "\(tier): no power-off in time; console so far:\n\(log.suffix(3000))")
        #expect(r.status == 0, "\(tier): vmm status \(r.status): \(r.stderr)\n\(log.suffix(3000))")
        for m in ["virtio_pci", "virtio_blk", "virtio-rng", "virtio_console"] {
            #expect(log.contains("loaded \(m)\n"), "\(tier): module \(m): \(log.suffix(2000))")
        }
        #expect(log.contains("vda reads: HOST-SAYS-HELLO-TO-LINUX"), "\(tier): \(log.suffix(2000))")
        #expect(log.contains(Self.marker), "\(tier): \(log.suffix(2000))")
        #expect(log.contains("reboot: Power down"), "\(tier): \(log.suffix(1000))")
        #expect(disk.count >= 1024 && Array(disk[512..<537]) == Array("SWIFTVMM-GUEST-WROTE-THIS".utf8))
    }

    /// Eight vCPUs on the software CPU: Linux finds them in the MADT, starts each one and
    /// sees one package of eight cores (CPUID's topology agrees with the tables).
    @Test(.enabled(if: LinuxGuestTests.canBoot("amd64"), "needs guests/debian/build.sh's amd64 files and no SWIFTVMM_SKIP_LINUX_BOOT"))
    func debianAmd64BootsWithEightVCPUs() throws {
        let (kernel, initrd) = Self.guestFiles("amd64")
        let (r, _) = try Self.bootDebian("amd64", kernel: kernel, initrd: initrd, memory: "512M", extra: ["-c", "8"])
        let log = r.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(!r.timedOut, "no power-off in time; console so far:\n\(log.suffix(3000))")
        #expect(r.status == 0, "vmm status \(r.status): \(r.stderr)\n\(log.suffix(3000))")
        #expect(log.contains("smpboot: Allowing 8 CPUs"), "\(log.prefix(8000))")
        #expect(log.contains("smp: Brought up 1 node, 8 CPUs"), "\(log.prefix(12000))")
        #expect(log.contains("smpboot: Max logical packages: 1"), "\(log.prefix(12000))")
        #expect(!log.contains("[Firmware Bug]"), "\(log.prefix(12000))")
        #expect(log.contains(Self.marker), "\(log.suffix(2000))")
        #expect(log.contains("reboot: Power down"), "\(log.suffix(1000))")
    }
}
