#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import CKVM

/// The VM process's seccomp sandbox (Sources/VMDTool/Sandbox.swift) seen from outside: VM
/// processes run with Seccomp 2 and NoNewPrivs 1 and their guests still work; a VM process
/// made to attempt a forbidden system call (the SWIFTVMM_SANDBOX_TEST_SYSCALL hook) dies of
/// SIGSYS, vmd reports the VM stopped saying so and carries on; with SWIFTVMM_SANDBOX=off
/// the same call runs; Landlock alone (SWIFTVMM_SANDBOX=landlock) refuses the VM process any
/// file by name.
@Suite(.serialized) struct SandboxTests {
    /// The fields of /proc/PID/status named `keys`.
    static func status(_ pid: Int32, _ keys: [String]) -> [String: String] {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return [:] }
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2, keys.contains(parts[0]) { out[parts[0]] = parts[1] }
        }
        return out
    }

    static func pid(_ d: TestDaemon, _ name: String) throws -> Int32 {
        let s = try d.waitForStatus { row($0, name)?[7] == "running" }
        return try #require(row(s, name).flatMap { Int32($0[1]) }, "\(name) is not running: \(s)\n\(d.log.snapshot())")
    }

    /// Waits until vmd's log contains `text`; true when it did in time.
    static func logShows(_ d: TestDaemon, _ text: String, timeout: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !d.log.snapshot().contains(text) && Date() < deadline { usleep(20_000) }
        return d.log.snapshot().contains(text)
    }

    static let sigsys = "killed by signal 31 (SIGSYS): it made a system call its seccomp sandbox forbids"

    @Test func aStandInGuestRunsSandboxed() throws {
        try #require(Binaries.available)
        let d = try TestDaemon(config: "vm \"sb\" {\n memory 32M\n}\n")
        defer { d.stop() }
        let pid = try Self.pid(d, "sb")
        let st = Self.status(pid, ["Seccomp", "NoNewPrivs", "Uid"])
        #expect(st["Seccomp"] == "2", "\(st)")
        #expect(st["NoNewPrivs"] == "1", "\(st)")
        if geteuid() == 0 { #expect(st["Uid"]?.hasPrefix("0") == false, "\(st)") }
        // It still does its work: the console echoes, and it powers off when told.
        let c = try ConsoleClient(socket: d.socket, name: "sb")
        c.type("hello\r")
        #expect(c.waitFor("echo: hello"), "\(c.output.snapshot())")
        c.type("poweroff\r")
        #expect(c.waitForExit())
        _ = try d.waitForStatus { row($0, "sb")?[7] == "stopped" }
        #expect(try d.vmctl("-v", "status", "sb").stdout.contains("vm sb: last exit: exited normally"))
    }

    @Test(.enabled(if: RealGuestTests.haveConsoleGuest, "the console guest could not be built (gcc -m32)"),
          arguments: RealGuestTests.accelerators)
    func aRealMachineRunsSandboxed(accel: String) throws {
        try #require(Binaries.available)
        let kernel = try RealGuestTests.consoleGuest()
        let d = try TestDaemon(config: RealGuestTests.vmBlock("rm", kernel: kernel, accel: accel, enabled: true), fake: false)
        defer { d.stop() }
        let pid = try Self.pid(d, "rm")
        let st = Self.status(pid, ["Seccomp", "NoNewPrivs", "Uid", "Gid", "Groups"])
        #expect(st["Seccomp"] == "2", "\(st)")
        #expect(st["NoNewPrivs"] == "1", "\(st)")
        if geteuid() == 0 {
            // Its own uid and gid (2^30 + its id, VM 1), no supplementary groups.
            let own = Array(repeating: String((1 << 30) + 1), count: 4).joined(separator: "\t")
            #expect(st["Uid"] == own && st["Gid"] == own && st["Groups"] == "", "\(st)")
        }
        // Console input, interrupts, echo, then a graceful stop through the power button:
        // vCPU, device and console threads all run under the filter.
        let c = try ConsoleClient(socket: d.socket, name: "rm")
        c.type("ticks\r")
        #expect(c.waitFor("ticks"), "\(c.output.snapshot())\n\(d.log.snapshot())")
        let stop = try d.vmctl("stop", "-w", "rm")
        #expect(stop.status == 0, "\(stop.stdout)\(stop.stderr)")
        #expect(try d.vmctl("-v", "status", "rm").stdout.contains("last exit: exited normally"),
                "\(d.log.snapshot())")
    }

    @Test(arguments: ["execve", "socket"])
    func aForbiddenSystemCallKillsTheVMProcessAndVmdCarriesOn(call: String) throws {
        try #require(Binaries.available)
        let d = try TestDaemon(config: "vm \"bad\" {\n disable\n memory 32M\n}\n",
                               env: ["SWIFTVMM_SANDBOX_TEST_SYSCALL": call])
        defer { d.stop() }
        // The hook runs once the VM process has reported its start, so the start succeeds
        // and the death is the running VM's.
        let start = try d.vmctl("start", "bad")
        #expect(start.status == 0, "\(start.stderr)")
        let waited = try d.vmctl("wait", "bad")
        #expect(waited.stdout.contains("vm bad stopped: \(Self.sigsys)"), "\(waited.stdout)\(waited.stderr)\n\(d.log.snapshot())")
        #expect(try d.vmctl("-v", "status", "bad").stdout.contains("vm bad: last exit: \(Self.sigsys)"))
        #expect(Self.logShows(d, "died: \(Self.sigsys)"), "\(d.log.snapshot())")
        // The call never ran: no "returned" line from the hook.
        #expect(!d.log.snapshot().contains("sandbox test: "), "\(d.log.snapshot())")
        // vmd is unharmed and keeps its state: it answers, and starts the VM again.
        #expect(d.process.isRunning)
        #expect(try d.vmctl("start", "bad").status == 0)
        #expect(try d.vmctl("wait", "bad").stdout.contains(Self.sigsys))
    }

    @Test(.enabled(if: RealGuestTests.haveConsoleGuest, "the console guest could not be built (gcc -m32)"))
    func aRealMachineMakingAForbiddenCallIsKilled() throws {
        try #require(Binaries.available)
        let kernel = try RealGuestTests.consoleGuest()
        let d = try TestDaemon(config: RealGuestTests.vmBlock("rb", kernel: kernel, accel: "emulator"), fake: false,
                               env: ["SWIFTVMM_SANDBOX_TEST_SYSCALL": "socket"])
        defer { d.stop() }
        #expect(try d.vmctl("start", "rb").status == 0)
        let waited = try d.vmctl("wait", "rb")
        #expect(waited.stdout.contains("vm rb stopped: \(Self.sigsys)"), "\(waited.stdout)\n\(d.log.snapshot())")
        #expect(d.process.isRunning)
    }

    @Test func withTheSandboxOffTheSameCallRuns() throws {
        try #require(Binaries.available)
        let d = try TestDaemon(config: "vm \"free\" {\n memory 32M\n}\n",
                               env: ["SWIFTVMM_SANDBOX_TEST_SYSCALL": "socket", "SWIFTVMM_SANDBOX": "off"])
        defer { d.stop() }
        let pid = try Self.pid(d, "free")
        // The hook's call ran and returned (an unprivileged AF_PACKET socket: -1, EPERM).
        #expect(Self.logShows(d, "vmd: sandbox test: socket(AF_PACKET) returned"), "\(d.log.snapshot())")
        #expect(Self.status(pid, ["Seccomp"])["Seccomp"] == "0")
        #expect(row(try d.vmctl("status").stdout, "free")?[7] == "running")
    }

    static let landlock = ckvm_landlock_abi() >= 1

    /// Landlock alone (the seccomp filter would answer the open with EACCES itself): the VM
    /// process cannot open a world-readable file, yet its guest runs; without a sandbox it can.
    @Test(.enabled(if: SandboxTests.landlock, "the kernel has no Landlock"), arguments: ["landlock", "off"])
    func landlockLeavesTheVMProcessNoFiles(mode: String) throws {
        try #require(Binaries.available)
        let d = try TestDaemon(config: "vm \"ll\" {\n memory 32M\n}\n",
                               env: ["SWIFTVMM_SANDBOX_TEST_SYSCALL": "open", "SWIFTVMM_SANDBOX": mode])
        defer { d.stop() }
        let pid = try Self.pid(d, "ll")
        let expected = mode == "off" ? "succeeded" : "failed: Permission denied"
        #expect(Self.logShows(d, "vmd: sandbox test: open(/etc/passwd) \(expected)"), "\(d.log.snapshot())")
        #expect(Self.status(pid, ["Seccomp"])["Seccomp"] == "0")
        #expect(Self.status(pid, ["NoNewPrivs"])["NoNewPrivs"] == (mode == "off" ? "0" : "1"))
        let c = try ConsoleClient(socket: d.socket, name: "ll")
        c.type("hi\r")
        #expect(c.waitFor("echo: hi"), "\(c.output.snapshot())")
    }

    /// With the full sandbox the same open fails too (EACCES from the filter), nothing dies.
    @Test func theFullSandboxRefusesOpenWithoutKilling() throws {
        try #require(Binaries.available)
        let d = try TestDaemon(config: "vm \"fo\" {\n memory 32M\n}\n", env: ["SWIFTVMM_SANDBOX_TEST_SYSCALL": "open"])
        defer { d.stop() }
        let pid = try Self.pid(d, "fo")
        #expect(Self.logShows(d, "vmd: sandbox test: open(/etc/passwd) failed: Permission denied"), "\(d.log.snapshot())")
        #expect(Self.status(pid, ["Seccomp"])["Seccomp"] == "2")
        #expect(row(try d.vmctl("status").stdout, "fo")?[7] == "running")
    }
}
