import Foundation
import Testing

/// Debian's kernel and a static glibc program built with `-march=x86-64-v3` on the
/// software CPU at `--cpu-level v3` (guests/debian/build.sh --variant v3): the kernel
/// enables the AVX state (XSAVE, XCR0 = 0x7, 832 bytes), /proc/cpuinfo lists the v3
/// features, glibc finds AVX2/FMA/F16C/BMI2/MOVBE usable (so its ifuncs take the AVX2 string
/// and FMA math routines), and the program's output is the host CPU's, line for line.
@Suite struct V3GuestTests {
    static let cache = ProcessInfo.processInfo.environment["SWIFTVMM_GUEST_CACHE"]
        ?? Harness.packageRoot.appendingPathComponent(".build/guests/debian").path
    static let kernel = "\(cache)/amd64/vmlinux"
    static let initrd = "\(cache)/amd64/initramfs-v3.cpio.gz"
    static let program = "\(cache)/amd64/v3-check"

    static let problem: String? = {
        if ProcessInfo.processInfo.environment["SWIFTVMM_SKIP_LINUX_BOOT"] != nil { return "SWIFTVMM_SKIP_LINUX_BOOT is set" }
        for f in [kernel, initrd, program] where access(f, R_OK) != 0 {
            return "\(f) is missing (guests/debian/build.sh --variant v3)"
        }
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let flags = Set(cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? [])
        if !["avx2", "fma", "f16c"].allSatisfy(flags.contains) { return "the host CPU lacks AVX2/FMA/F16C (level v3 is refused)" }
        return nil
    }()

    @Test(.enabled(if: problem == nil, "\(problem ?? "")"), .timeLimit(.minutes(5)))
    func glibcTakesItsV3RoutinesAndPrintsTheHostsResults() throws {
        let host = try Harness.run([Self.program], timeout: 60)
        #expect(host.status == 0)
        let r = try Harness.vmm(["--accel", "emulator", "--cpu-level", "v3", "-k", Self.kernel, "-i", Self.initrd, "-m", "256M",
                                 "-p", "console=ttyS0 cryptomgr.notests"], timeout: 240)
        let out = r.stdout + r.stderr
        #expect(out.contains("software CPU level v3"))
        #expect(out.contains("x86/fpu: Enabled xstate features 0x7, context size is 832 bytes, using 'standard' format."))
        #expect(out.contains("cpu flags: fma movbe xsave avx f16c bmi1 avx2 bmi2"), "\(out.suffix(3000))")
        let lines = host.stdout.split(separator: "\n")
        #expect(lines.first == "usable: avx 1 avx2 1 fma 1 f16c 1 bmi2 1 movbe 1")
        for line in lines { #expect(out.contains(line), "guest lacks the host's line \(line)") }
        #expect(out.contains("SWIFTVMM-V3-DONE"))
        #expect(out.contains("SWIFTVMM-INIT-OK"))
    }
}
