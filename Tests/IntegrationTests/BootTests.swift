import Foundation
import Testing
import VMM

/// Real boots through KVM: the `vmm` binary and the Machine API. Skipped (with a printed
/// reason) when /dev/kvm is not usable.
@Suite(.serialized) struct VMMBootTests {
    static let virtioTestPath = Harness.guestDir.appendingPathComponent("virtio-test.elf").path

    func virtioTestGuest() throws -> String {
        try Harness.buildGuest(script: "build-virtio-test.sh", arguments: [Self.virtioTestPath])
    }

    @Test func aMultibootGuestPrintsAndExitsWithItsStatusThroughTheBinary() throws {
        if Harness.skipUnlessKVM() { return }
        let kernel = try virtioTestGuest()
        let r = try Harness.vmm(["-k", kernel, "-m", "64M", "--accel", "kvm", "-p", "hello-from-test"])
        #expect(!r.timedOut)
        // No virtio-blk is attached: the guest says so and exits with 1, status (1 << 1) | 1.
        #expect(r.stdout.contains("virtio-test: start, cmdline '\(kernel) hello-from-test'"), "\(r.stdout)")
        #expect(r.stdout.contains("virtio-test: FAIL"))
        #expect(r.status == 3, "stderr: \(r.stderr)")
        #expect(r.stderr.contains("accelerator kvm"))
    }

    @Test func theMachineAPIRunsAGuestAndCapturesItsConsole() throws {
        if Harness.skipUnlessKVM() { return }
        let kernel = try virtioTestGuest()
        let capture = ConsoleCapture()
        let machine = try Machine(config: MachineConfig(kernelPath: kernel, cmdline: "api", memorySize: 32 << 20,
                                                        accelerator: .kvm, console: capture.sink))
        #expect(machine.kernelKind == .multiboot)
        let outcome = try machine.run()
        #expect(outcome == .debugExit(status: 3))
        #expect(capture.text.contains("virtio-test: start"))
        #expect(machine.devices.com1.bytesTransmitted == UInt64(capture.text.utf8.count))
    }
}
