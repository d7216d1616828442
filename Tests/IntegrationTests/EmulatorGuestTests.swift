import Foundation
import Testing
import VMM

/// The test guests (guests/) on the software CPU (`--accel emulator`): the same serial
/// markers and exit statuses as under KVM (BootTests.swift). No /dev/kvm needed. The PIC,
/// PIT and IOAPIC are the user-space models here (MachineEmulator.swift).
@Suite struct EmulatorGuestTests {
    func boot(_ guest: String, _ extra: [String] = [], timeout: Double = 20) throws -> Harness.RunResult {
        let kernel = try Harness.testGuest(guest)
        let r = try Harness.vmm(["-k", kernel, "-m", "64M", "--accel", "emulator"] + extra, timeout: timeout)
        #expect(!r.timedOut, "\(guest) did not finish in \(timeout) s on the emulator; output so far: \(r.stdout)")
        #expect(!r.stdout.contains("FAIL"), "\(guest): \(r.stdout)")
        #expect(r.stderr.contains("accelerator emulator"), "\(r.stderr)")
        return r
    }

    @Test func longModeGuestPassesEveryCheck() throws {
        let r = try boot("longmode", ["-p", "marker-7e3"])
        #expect(r.stdout.contains("longmode: hello from 64-bit long mode"))
        #expect(r.stdout.contains("marker-7e3"), "the command line reaches the guest")
        #expect(r.stdout.contains("string I/O: rep outsb reached the console"))
        #expect(r.stdout.contains("SUMMARY: 8 tests, 0 failures"), "\(r.stdout)")
        #expect(r.status == 1, "stderr: \(r.stderr)")
        #expect(r.stderr.contains("debug-exit port with status 1"))
    }

    @Test func timerGuestGetsPITAndLAPICInterrupts() throws {
        let r = try boot("timer")
        #expect(r.stdout.contains("SUMMARY: 3 tests, 0 failures"), "\(r.stdout)")
        #expect(r.status == 1, "stderr: \(r.stderr)")
    }

    @Test(arguments: ["i386", "multiboot"])
    func thirtyTwoBitGuestsPass(guest: String) throws {
        let r = try boot(guest)
        #expect(r.stdout.contains("i386: hello from 32-bit protected mode"), "\(r.stdout)")
        #expect(r.stdout.contains(guest == "multiboot" ? "SUMMARY: 7 tests, 0 failures" : "SUMMARY: 6 tests, 0 failures"),
                "\(r.stdout)")
        #expect(r.status == 1, "stderr: \(r.stderr)")
    }

    /// Up to 16 vCPUs (the smp guest's AP stack count): the MADT lists them, each starts
    /// through INIT/SIPI and none loses a `lock xadd` or spinlock update.
    @Test(arguments: [2, 4, 8, 16])
    func smpGuestStartsEveryVCPU(cpus: Int) throws {
        let r = try boot("smp", ["-c", "\(cpus)"], timeout: 120)
        #expect(r.stdout.contains("smp: \(cpus) CPU(s) online"), "\(r.stdout)")
        #expect(r.stdout.contains("0 failures"))
        #expect(r.status == 1, "stderr: \(r.stderr)")
    }

    @Test func aTripleFaultEndsTheRunWithAMessage() throws {
        let r = try boot("triplefault")
        #expect(r.stdout.contains("triplefault: about to triple-fault"))
        #expect(r.status == 0)
        #expect(r.stderr.contains("guest reset") && r.stderr.contains("triple"), "\(r.stderr)")
    }

    @Test func anI8042ResetEndsTheRunWithAMessage() throws {
        let r = try boot("reset")
        #expect(r.stdout.contains("reset: resetting through the i8042"))
        #expect(r.status == 0)
        #expect(r.stderr.contains("i8042 reset line"), "\(r.stderr)")
    }

    @Test func virtioGuestReadsAndWritesARawDisk() throws {
        let (r, log, _, after) = try VirtioGuestTests.runDiskGuest(accel: "emulator", timeout: 20)
        #expect(!r.timedOut)
        #expect(r.status == 1, "stdout:\n\(log)\nstderr:\n\(r.stderr)")
        #expect(log.contains("sector0: HOST-MARKER-SECTOR-ZERO"))
        #expect(log.contains("write-readback-ok"))
        #expect(log.contains("virtio-test: PASS"))
        #expect(Array(after[512..<528]) == Array("GUEST-WROTE-THIS".utf8))
    }

    @Test func theMachineAPIRunsAGuestOnTheSoftwareCPU() throws {
        let kernel = try Harness.testGuest("longmode")
        let capture = ConsoleCapture()
        let machine = try Machine(config: MachineConfig(kernelPath: kernel, cmdline: "api", memorySize: 32 << 20,
                                                        accelerator: .emulator, console: capture.sink))
        #expect(machine.accelerator.backend == .emulator)
        #expect(machine.backend.name == "emulator")
        #expect(machine.devices.pit != nil && machine.devices.irqChip != nil, "the emulator gets user-space PIC/PIT/IOAPIC")
        let outcome = try machine.run()
        #expect(outcome == .debugExit(status: 1))
        #expect(capture.text.contains("SUMMARY: 8 tests, 0 failures"), "\(capture.text)")
        #expect(machine.handler.ioExits.load(ordering: .relaxed) > 0)
    }
}
