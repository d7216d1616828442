#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GuestMemory
import Hypervisor
import Testing
import VMM

/// The machine state stream on the counting guest (docs/snapshot.md, "The state stream"):
/// saved mid-run and restored onto a fresh machine, in this process and in a new `vmm`
/// process, it goes on counting from where it was; a restored machine has exactly the RAM
/// and registers that were saved.
@Suite struct SnapshotGuestTests {
    static let scratch = NSTemporaryDirectory() + "snapshot-tests-\(getpid())"

    static func scratchFile(_ name: String) throws -> String {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        return scratch + "/" + name
    }

    /// A counter guest run until it printed `lines` lines, paused and saved to a file.
    /// Returns the file, the console text so far and the counter page's address.
    static func savedCounter(lines: Int = 2, file: String, accel: Accelerator = .emulator) throws -> (text: String, page: UInt64, ram: RAMImage, regs: [CPUState]) {
        let kernel = try Harness.testGuest("counter")
        let capture = ConsoleCapture()
        let machine = try Machine(config: MachineConfig(kernelPath: kernel, memorySize: 32 << 20,
                                                        accelerator: accel, console: capture.sink))
        try machine.start()
        defer { machine.stop(reason: "test over"); _ = machine.wait() }
        #expect(waitUntil { capture.text.contains("count \(lines)\r\n") }, "\(capture.text)")
        machine.pause()
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        #expect(fd >= 0)
        defer { close(fd) }
        let stats = try machine.saveState(to: fd)
        #expect(stats.memoryPages > 0 && stats.bytes > UInt64(stats.memoryPages * 4096))
        let regs = try machine.runner.onEachPausedVCPU { CPUState(try $0.registers(), try $0.specialRegisters()) }
        let page = try #require(PauseGuestTests.pageAddress(capture.text))
        return (capture.text, page, RAMImage(machine.memory), regs)
    }

    @Test func aRestoredSoftwareCPUGuestCountsOnFromWhereItWas() throws { try restoreInProcess(.emulator) }

    @Test(.enabled(if: PauseGuestTests.kvmUsable, "KVM is not usable here"))
    func aRestoredKVMGuestCountsOnFromWhereItWas() throws { try restoreInProcess(.kvm) }

    func restoreInProcess(_ accel: Accelerator) throws {
        let file = try Self.scratchFile("inproc-\(accel).state")
        let saved = try Self.savedCounter(file: file, accel: accel)
        let savedCount = try #require(PauseGuestTests.countLines(saved.text).last)

        let fd = open(file, O_RDONLY)
        #expect(fd >= 0)
        let capture = ConsoleCapture()
        let machine = try Machine.restore(fd: fd, console: capture.sink)
        close(fd)
        // Before it runs: exactly the saved RAM and registers.
        #expect(saved.ram.firstDifference(machine.memory) == nil)
        let vcpu = try #require(machine.runner.vcpus.first)
        #expect(CPUState(try vcpu.registers(), try vcpu.specialRegisters()) == saved.regs[0])

        try machine.start()
        defer { machine.stop(reason: "test over"); _ = machine.wait() }
        #expect(waitUntil { capture.text.contains("count \(savedCount + 2)\r\n") }, "\(capture.text)")
        #expect(!capture.text.contains("counter: page at"), "the guest started over")
        let all = PauseGuestTests.countLines(saved.text + capture.text)
        #expect(all == Array(1...UInt64(all.count)), "count lines across the restore are consecutive")
        #expect(try machine.memory.read(UInt64.self, at: saved.page + 24) == 0, "a scratch read-back saw a wrong value")
    }

    /// `vmm --save-to FILE` and SIGUSR2, then `vmm --restore FILE` in a new process.
    @Test func saveInOneVMMProcessAndRestoreInAnother() throws { try restoreInNewProcess(.emulator) }

    @Test(.enabled(if: PauseGuestTests.kvmUsable, "KVM is not usable here"))
    func saveInOneVMMProcessAndRestoreInAnotherOnKVM() throws { try restoreInNewProcess(.kvm) }

    func restoreInNewProcess(_ accel: Accelerator) throws {
        let kernel = try Harness.testGuest("counter")
        let file = try Self.scratchFile("vmm-\(accel).state")
        let first = try RunningVMM(["-k", kernel, "-m", "32M", "--accel", accel.rawValue, "--save-to", file])
        #expect(first.waitForOutput { $0.contains("count 3\r\n") }, "\(first.stdout)")
        kill(first.pid, SIGUSR2)
        let status = first.wait()
        #expect(status == 0, "\(first.stderr)")
        #expect(first.stderr.contains("saved to \(file)"), "\(first.stderr)")
        let before = first.stdout
        let last = try #require(PauseGuestTests.countLines(before).last)

        let second = try RunningVMM(["--restore", file])
        #expect(second.waitForOutput { $0.contains("count \(last + 3)\r\n") }, "\(second.stdout)\n\(second.stderr)")
        kill(second.pid, SIGTERM)
        _ = second.wait()
        #expect(!second.stdout.contains("counter: page at"), "the guest started over")
        let all = PauseGuestTests.countLines(before + second.stdout)
        #expect(all == Array(1...UInt64(all.count)), "count lines across the processes are consecutive")
        #expect(second.stderr.contains("restored \(file) in"), "\(second.stderr)")
    }
}

/// A `vmm` process running in the background, its output collected.
final class RunningVMM: @unchecked Sendable {
    let process = Process()
    private let out = DataBox(), err = DataBox()
    private let lock = NSLock()
    private var ended = 0   // pipes at EOF; guarded by lock
    var pid: Int32 { process.processIdentifier }

    init(_ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: Harness.vmmBinary)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        let o = Pipe(), e = Pipe()
        process.standardOutput = o
        process.standardError = e
        for (pipe, box) in [(o, out), (e, err)] {
            pipe.fileHandleForReading.readabilityHandler = { [weak self] h in
                let d = h.availableData
                guard let self else { return }
                self.lock.lock(); box.data.append(d); if d.isEmpty { self.ended += 1; h.readabilityHandler = nil }; self.lock.unlock()
            }
        }
        try process.run()
    }

    var stdout: String { lock.lock(); defer { lock.unlock() }; return String(decoding: out.data, as: UTF8.self) }
    var stderr: String { lock.lock(); defer { lock.unlock() }; return String(decoding: err.data, as: UTF8.self) }

    func waitForOutput(_ condition: (String) -> Bool) -> Bool {
        _ = waitUntil(seconds: 60) { condition(stdout) || !process.isRunning }
        return condition(stdout)
    }

    /// Waits for the exit (killing it after 60 s) and the last output.
    func wait() -> Int32 {
        if !waitUntil(seconds: 60, { !process.isRunning }) { kill(pid, SIGKILL) }
        process.waitUntilExit()
        _ = waitUntil(seconds: 10) { lock.lock(); defer { lock.unlock() }; return ended == 2 }
        return process.terminationStatus
    }
}
