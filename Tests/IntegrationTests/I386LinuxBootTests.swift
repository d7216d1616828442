import Foundation
import Testing

/// Debian's i386 kernel (linux-image-686, non-PAE, 2-level paging) with the busybox
/// initramfs from `guests/debian/build.sh --i386`, booted by the vmm binary on the software
/// CPU with two vCPUs and our devices (8250, ACPI, IOAPIC, virtio-pci) to the init marker. The kernel is
/// the uncompressed vmlinux (the loader's 32-bit Linux boot protocol path): the bzImage's
/// in-guest XZ decompression alone would take minutes on the interpreter.
/// Skipped, with the reason printed, when the guest files are missing (`make test` builds
/// them) or when SWIFTVMM_SKIP_LINUX_BOOT is set.
@Suite struct I386LinuxBootTests {
    static let marker = "SWIFTVMM-INIT-OK"
    /// `cryptomgr.notests`: the crypto self-tests (RSA among them) take 9 s even under QEMU
    /// TCG and time out (60 s, guest time) on the interpreter; `noisapnp`: ISA PnP probing.
    static let cmdline = "console=ttyS0 cryptomgr.notests noisapnp"

    /// On the interpreter (the default tier) and on the JIT tier (which compiles the 32-bit
    /// register forms; the rest of each block runs on the block tier).
    @Test(.enabled(if: LinuxGuestTests.canBoot("i386"), "needs guests/debian/build.sh --i386's files and no SWIFTVMM_SKIP_LINUX_BOOT"),
          arguments: ["interp", "jit"])
    func debianI386KernelBootsToInitOnTheEmulator(tier: String) throws {
        let (kernel, initrd) = LinuxGuestTests.guestFiles("i386")
        let start = Date()
        // Two vCPUs: SMP Linux on the software CPU (the vCPUs take turns; see ExecutionTurnstile),
        // at level baseline (SSE2 only; the amd64 boot in LinuxGuestTests runs at the
        // default v2), so both levels boot a real kernel.
        let r = try Harness.vmm(["--accel", "emulator", "--cpu-level", "baseline", "-k", kernel, "-i", initrd, "-m", "256M",
                                 "-c", "2", "-p", Self.cmdline], timeout: 900, environment: ["SWIFTVMM_CPU_TIER": tier])
        let end = Date()
        let seconds = end.timeIntervalSince(start)
        print("i386 Debian kernel: init marker after \(String(format: "%.1f", seconds)) s on the emulator (\(tier) tier)")
        let tail = String(r.stdout.suffix(3000))
        #expect(!r.timedOut, "no power-off within 900 s; console tail:\n\(tail)\nstderr:\n\(r.stderr)")
        #expect(r.stderr.contains("accelerator emulator"), "\(r.stderr)")
        #expect(r.stderr.contains("software CPU level baseline"), "\(r.stderr)")
        #expect(r.stdout.contains("Linux version 6.") && r.stdout.contains("-686 "), "not the i386 kernel:\n\(tail)")
        #expect(r.stdout.contains("smp: Brought up 1 node, 2 CPUs"), "\(String(r.stdout.prefix(12000)))")
        #expect(r.stdout.contains("Run /init as init process"), "\(tail)")
        // The virtio modules load into the running kernel and bind to our devices.
        for m in ["virtio_pci", "virtio_blk", "virtio_net", "virtio_console"] {
            #expect(r.stdout.contains("loaded \(m)"), "module \(m) did not load:\n\(tail)")
        }
        #expect(r.stdout.contains(" i686 "), "uname -a in the guest:\n\(tail)")
        #expect(r.stdout.contains(Self.marker), "\(tail)\nstderr:\n\(r.stderr)")
        // Two vCPUs taking turns: the guest's clock still tracks the host's.
        let clock = LinuxGuestTests.clockProblem(r.stdout.replacingOccurrences(of: "\r", with: ""), runStart: start, runEnd: end)
        #expect(clock == nil, "\(clock ?? "")")
        #expect(!r.stdout.contains("Marking TSC unstable"), "\(String(r.stdout.prefix(20000)))")
        #expect(r.stdout.contains("reboot: Power down"), "\(tail)")
        #expect(r.stderr.contains("guest powered off"), "\(r.stderr)")
    }
}
