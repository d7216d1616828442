import Foundation
import Testing
import VMM

/// Real boots of the test guests (guests/, see guests/README.md) through KVM, via the `vmm`
/// binary and via the Machine API. Skipped when /dev/kvm is not usable. A passing guest
/// writes 0 to the debug-exit port: status (0 << 1) | 1 = 1.
@Suite(.enabled(if: Harness.kvmUsable, "needs a usable /dev/kvm")) struct VMMBootTests {
    func boot(_ guest: String, _ extra: [String] = [], timeout: Double = 60) throws -> Harness.RunResult {
        let kernel = try Harness.testGuest(guest)
        let r = try Harness.vmm(["-k", kernel, "-m", "64M", "--accel", "kvm"] + extra, timeout: timeout)
        #expect(!r.timedOut, "\(guest) did not finish in \(timeout) s; output so far: \(r.stdout)")
        #expect(!r.stdout.contains("FAIL"), "\(guest): \(r.stdout)")
        return r
    }

    @Test func longModeGuestPassesEveryCheck() throws {
        let r = try boot("longmode", ["-p", "marker-7e3"])
        #expect(r.stdout.contains("longmode: hello from 64-bit long mode"))
        #expect(r.stdout.contains("marker-7e3"), "the command line reaches the guest")
        #expect(r.stdout.contains("string I/O: rep outsb reached the console"))
        #expect(r.stdout.contains("SUMMARY: 8 tests, 0 failures"), "\(r.stdout)")
        #expect(r.status == 1, "stderr: \(r.stderr)")
        #expect(r.stderr.contains("accelerator kvm"))
        #expect(r.stderr.contains("debug-exit port with status 1"))
    }

    @Test func timerGuestGetsPITAndLAPICInterrupts() throws {
        let r = try boot("timer")
        #expect(r.stdout.contains("SUMMARY: 3 tests, 0 failures"), "\(r.stdout)")
        #expect(r.status == 1)
    }

    @Test(arguments: ["i386", "multiboot"])
    func thirtyTwoBitGuestsPass(guest: String) throws {
        let r = try boot(guest)
        #expect(r.stdout.contains("i386: hello from 32-bit protected mode"), "\(r.stdout)")
        #expect(r.stdout.contains(guest == "multiboot" ? "SUMMARY: 7 tests, 0 failures" : "SUMMARY: 6 tests, 0 failures"),
                "\(r.stdout)")
        #expect(r.status == 1)
    }

    @Test(arguments: [2, 4, 8])
    func smpGuestStartsEveryVCPU(cpus: Int) throws {
        // Many vCPUs on this 2-core host take a while: under PVM every PAUSE of the guest's
        // start-up delay loops exits to the host (8 vCPUs: ~30 s).
        let r = try boot("smp", ["-c", "\(cpus)"], timeout: 240)
        #expect(r.stdout.contains("smp: \(cpus) CPU(s) online"), "\(r.stdout)")
        #expect(r.stdout.contains("0 failures"))
        #expect(r.status == 1)
    }

    @Test func aTripleFaultEndsTheRunWithAMessage() throws {
        let r = try boot("triplefault")
        #expect(r.stdout.contains("triplefault: about to triple-fault"))
        #expect(r.status == 0)
        #expect(r.stderr.contains("guest reset") && r.stderr.contains("triple-fault"), "\(r.stderr)")
    }

    @Test func anI8042ResetEndsTheRunWithAMessage() throws {
        let r = try boot("reset")
        #expect(r.stdout.contains("reset: resetting through the i8042"))
        #expect(r.status == 0)
        #expect(r.stderr.contains("i8042 reset line"), "\(r.stderr)")
    }

    @Test func theMachineAPIRunsAGuestAndCapturesItsConsole() throws {
        let kernel = try Harness.testGuest("longmode")
        let capture = ConsoleCapture()
        let machine = try Machine(config: MachineConfig(kernelPath: kernel, cmdline: "api", memorySize: 32 << 20,
                                                        accelerator: .kvm, console: capture.sink))
        #expect(machine.kernelKind == .elf)
        #expect(machine.accelerator.backend == .kvm)
        let outcome = try machine.run()
        #expect(outcome == .debugExit(status: 1))
        #expect(capture.text.contains("SUMMARY: 8 tests, 0 failures"), "\(capture.text)")
        #expect(machine.devices.com1.bytesTransmitted == UInt64(capture.text.utf8.count))
        #expect(machine.handler.ioExits.load(ordering: .relaxed) > 0)
    }

    @Test func pauseAndResumeARunningGuest() throws {
        let kernel = try Harness.testGuest("smp")
        let capture = ConsoleCapture()
        let machine = try Machine(config: MachineConfig(kernelPath: kernel, memorySize: 32 << 20, vcpus: 2,
                                                        accelerator: .kvm, console: capture.sink))
        try machine.start()
        machine.pause()
        #expect(machine.state == .paused)
        let frozen = capture.text
        usleep(200_000)
        #expect(capture.text == frozen, "no output while paused")
        machine.resume()
        #expect(machine.state == .running || machine.state == .stopped)
        #expect(machine.wait() == .debugExit(status: 1))
        #expect(capture.text.contains("smp: 2 CPU(s) online"), "\(capture.text)")
    }

    @Test func stopEndsAGuestThatWouldRunForever() throws {
        let kernel = try Harness.testGuest("smp")
        let machine = try Machine(config: MachineConfig(kernelPath: kernel, memorySize: 32 << 20, vcpus: 2,
                                                        accelerator: .kvm, console: .none))
        try machine.start()
        machine.stop(reason: "test")
        #expect(machine.wait() == .stopped(reason: "test"))
    }
}
