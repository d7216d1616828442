import Foundation
import Testing

/// The smp guest on the software CPU in parallel mode (`SWIFTVMM_EMU_PARALLEL=1`: one host
/// thread per vCPU executing at once, no turnstile): every AP starts, and neither the
/// `lock xadd` counter nor the XCHG-spinlock counter loses an update, run after run.
@Suite struct ParallelEmulatorTests {
    static let runs = 3

    @Test(arguments: [2, 4, 8])
    func smpGuestCountsExactlyWithParallelVCPUs(cpus: Int) throws {
        let kernel = try Harness.testGuest("smp")
        for run in 1...Self.runs {
            let r = try Harness.vmm(["-k", kernel, "-m", "64M", "--accel", "emulator", "-c", "\(cpus)"],
                                    timeout: 120, environment: ["SWIFTVMM_EMU_PARALLEL": "1"])
            #expect(!r.timedOut, "run \(run): smp -c \(cpus) did not finish; output so far: \(r.stdout)")
            #expect(r.stdout.contains("smp: \(cpus) CPU(s) online"), "run \(run): \(r.stdout)")
            #expect(r.stdout.contains("LOCK XADD counter is \(cpus * 50000) (want \(cpus * 50000))"), "run \(run): \(r.stdout)")
            #expect(r.stdout.contains("spinlock counter is \(cpus * 2000) (want \(cpus * 2000))"), "run \(run): \(r.stdout)")
            #expect(r.stdout.contains(" 0 failures"), "run \(run): \(r.stdout)")
            #expect(!r.stdout.contains("FAIL"), "run \(run): \(r.stdout)")
            #expect(r.status == 1, "run \(run): stderr: \(r.stderr)")
        }
    }
}
