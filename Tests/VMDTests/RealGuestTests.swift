#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// vmd running real test kernels on the VMM machine: guests/virtio-test.c (prints on COM1,
/// ends through the debug-exit port) and guests/console.c (a long-running interrupt-driven
/// echo console that powers off on `poweroff` or the ACPI power button), driven through
/// vmctl: start, status, console, pause/unpause, graceful and forced stop, kill -9, reload.
/// The console guest runs on KVM when /dev/kvm is usable and always on the software CPU
/// (`accel emulator`, no /dev/kvm needed). Skipped, saying why, when gcc cannot build 32-bit
/// code.
@Suite(.serialized) struct RealGuestTests {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    static func kvmUsable() -> Bool { kvm }
    /// /dev/kvm opens: the condition of every KVM test (`.enabled(if:)`, so a skip shows).
    static let kvm: Bool = {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if fd < 0 { return false }
        close(fd)
        return true
    }()
    /// The console guest could be built (gcc with 32-bit support).
    static var haveConsoleGuest: Bool { (try? consoleKernel.get()) != nil }

    @Test(.enabled(if: RealGuestTests.kvm, "/dev/kvm is not usable here"))
    func aTestKernelRunsToItsEndUnderVmd() throws {
        try #require(Binaries.available)
        let out = NSTemporaryDirectory() + "vmd-guest-\(getpid()).elf"
        defer { unlink(out) }
        let build = try run("/bin/sh", [Self.repoRoot + "/guests/build-virtio-test.sh", out], timeout: 60)
        try #require(build.status == 0, "cannot build the test guest: \(build.stderr.prefix(200))")
        let d = try TestDaemon(config: "vm \"guest\" {\n disable\n boot \"\(out)\"\n memory 64M\n}\n", fake: false)
        defer { d.stop() }
        let start = try d.vmctl("start", "guest")
        #expect(start.status == 0, "\(start.stderr)")
        #expect(start.stdout.hasPrefix("vmctl: started vm 1 successfully, tty /dev/pts/"))
        let waited = try d.vmctl("wait", "guest")
        #expect(waited.status == 0)
        #expect(waited.stdout.hasPrefix("vmctl: vm guest stopped: exited"), "\(waited.stdout)")
        #expect(row(try d.vmctl("status").stdout, "guest")?[1] == "-")
    }

    // MARK: the console guest

    struct BuildFailure: Error, Sendable, CustomStringConvertible { var description: String }

    /// guests/console.c, built once with guests/Makefile into .build/guests-vmd.
    static let consoleKernel: Result<String, BuildFailure> = {
        let dir = repoRoot + "/.build/guests-vmd"
        let elf = dir + "/console.elf"
        do {
            let r = try run("/usr/bin/make", ["-s", "-C", repoRoot + "/guests", "BUILD=" + dir, elf], timeout: 120)
            guard r.status == 0, access(elf, R_OK) == 0 else {
                return .failure(BuildFailure(description: "make guests/console.elf failed: \(r.stderr.prefix(300))"))
            }
            return .success(elf)
        } catch {
            return .failure(BuildFailure(description: "cannot run make: \(error)"))
        }
    }()

    /// The built console guest (tests that need it are enabled only when it built).
    static func consoleGuest() throws -> String { try consoleKernel.get() }

    /// The accelerators to run the console guest on: the software CPU always, KVM when
    /// usable (a KVM case is not listed when /dev/kvm is not: Swift Testing has no
    /// per-argument skip).
    static let accelerators = kvm ? ["emulator", "kvm"] : ["emulator"]

    static func vmBlock(_ name: String, kernel: String, accel: String, memory: String = "32M",
                        enabled: Bool = false) -> String {
        "vm \"\(name)\" {\n \(enabled ? "enable" : "disable")\n boot \"\(kernel)\"\n memory \(memory)\n accel \(accel)\n}\n"
    }

    /// Polls `vmctl status` until the VM's STATE column is `state`.
    static func waitState(_ d: TestDaemon, _ name: String, _ states: Set<String>, timeout: Double = 10) throws -> [String]? {
        row(try d.waitForStatus(timeout: timeout) { row($0, name).map { states.contains($0[7]) } ?? false }, name)
    }

    @Test(.enabled(if: RealGuestTests.haveConsoleGuest, "the console guest cannot be built (gcc -m32)"), arguments: accelerators)
    func consoleGuestStartsEchoesPausesAndStops(accel: String) throws {
        let kernel = try Self.consoleGuest()
        try #require(Binaries.available)
        let d = try TestDaemon(config: Self.vmBlock("con", kernel: kernel, accel: accel), fake: false)
        defer { d.stop() }

        // start, and the status row: ID PID VCPUS MAXMEM CURMEM TTY OWNER STATE NAME.
        let start = try d.vmctl("start", "con")
        #expect(start.status == 0, "\(start.stderr) / \(d.log.snapshot())")
        #expect(start.stdout.hasPrefix("vmctl: started vm 1 successfully, tty /dev/pts/"), "\(start.stdout)")
        let r = try #require(row(try d.vmctl("status").stdout, "con"))
        #expect(r[0] == "1")
        #expect(Int32(r[1]).map { $0 > 0 && kill($0, 0) == 0 } == true, "PID \(r[1]) is a live process")
        #expect(r[2] == "1")
        #expect(r[3] == "32M" && r[4] == "32M")
        #expect(r[5].hasPrefix("pts/") && start.stdout.hasSuffix("/dev/\(r[5])\n"))
        #expect(r[7] == "running")

        // console: the banner (kept by the pty until someone reads), an echo, ~. detaches.
        var c = try ConsoleClient(socket: d.socket, name: "con")
        #expect(c.waitFor("console: test kernel ready"), "banner: \(c.output.snapshot())")
        c.type("hello\r")
        #expect(c.waitFor("echo: hello"), "\(c.output.snapshot())")
        c.type("ticks\r")
        #expect(c.waitFor("ticks: "))
        #expect(c.detach(), "~. detached")
        #expect(c.process.terminationStatus == 0)
        #expect(c.output.text().hasSuffix("[EOT]\n"))
        #expect(try Self.waitState(d, "con", ["running"])?[7] == "running", "detaching leaves the VM running")

        // pause: typed input is not echoed until unpause.
        #expect(try d.vmctl("pause", "con").status == 0)
        #expect(row(try d.vmctl("status").stdout, "con")?[7] == "paused")
        c = try ConsoleClient(socket: d.socket, name: "con")
        #expect(c.waitFor("Connected to"))
        c.type("ping\r")
        usleep(500_000)
        #expect(c.occurrences("echo: ping") == 0, "a paused guest does not echo: \(c.output.snapshot())")
        #expect(try d.vmctl("unpause", "con").status == 0)
        #expect(row(try d.vmctl("status").stdout, "con")?[7] == "running")
        #expect(c.waitFor("echo: ping"), "the input typed while paused is echoed after unpause")
        c.type("pong\r")
        #expect(c.waitFor("echo: pong"))
        #expect(c.detach())

        // stdin EOF detaches (like cu(1)), after showing the answer to what was typed.
        let t0 = Date()
        let eof = try d.vmctl("console", "con", stdin: "help\r")
        #expect(eof.status == 0)
        #expect(eof.stdout.contains("commands: ticks poweroff deaf help"), "\(eof.stdout)")
        #expect(Date().timeIntervalSince(t0) < 5, "console returned at end of input")

        // Graceful stop: the power button; the guest says so and powers off. The VM is
        // paused first: vmd resumes it so that the guest can hear the button.
        c = try ConsoleClient(socket: d.socket, name: "con")
        #expect(c.waitFor("Connected to"))
        #expect(try d.vmctl("pause", "con").status == 0)
        let t1 = Date()
        let stop = try d.vmctl("stop", "-w", "con")
        let graceful = Date().timeIntervalSince(t1)
        #expect(stop.status == 0, "\(stop.stderr)")
        #expect(graceful < 10, "the guest powered off itself, well before the 30 s timeout")
        #expect(c.waitFor("console: power button pressed, powering off"), "\(c.output.snapshot())")
        #expect(c.waitForExit(), "the console ends when the VM does")
        let stopped = try #require(row(try d.vmctl("status").stdout, "con"))
        #expect(stopped[1] == "-" && stopped[7] != "running")
        #expect(try d.vmctl("-v", "status", "con").stdout.contains("vm con: last exit: exited normally"))
        #expect(d.log.snapshot().contains("vm con: guest powered off"), "\(d.log.snapshot())")

        // stop -f: at once, no power button.
        #expect(try d.vmctl("start", "con").status == 0)
        c = try ConsoleClient(socket: d.socket, name: "con")
        #expect(c.waitFor("Connected to"))
        let forced = try d.vmctl("stop", "-f", "-w", "con")
        #expect(forced.status == 0)
        #expect(c.waitForExit())
        #expect(c.occurrences("power button") == 0, "stop -f does not ask the guest")
        #expect(try d.vmctl("-v", "status", "con").stdout.contains("vm con: last exit: killed by signal 9 (SIGKILL)"))

        // kill -9 of the VM process: reported; vmd keeps running and can start it again.
        #expect(try d.vmctl("start", "con").status == 0)
        let pid = try #require(row(try d.vmctl("status").stdout, "con").flatMap { Int32($0[1]) })
        #expect(kill(pid, SIGKILL) == 0)
        let after = try Self.waitState(d, "con", ["stopped", "disabled"])
        #expect(after?[1] == "-")
        let deadline = Date().addingTimeInterval(5)
        while !d.log.snapshot().contains("pid \(pid) died: killed by signal 9") && Date() < deadline { usleep(20_000) }
        #expect(d.log.snapshot().contains("vm 1 (con) pid \(pid) died: killed by signal 9"))
        #expect(d.process.isRunning)
        #expect(try d.vmctl("start", "con").stdout.hasPrefix("vmctl: started vm 1 successfully"))
        #expect(try d.vmctl("stop", "-f", "-w", "con").status == 0)
    }

    @Test(.enabled(if: RealGuestTests.haveConsoleGuest, "the console guest cannot be built (gcc -m32)"))
    func aGuestIgnoringThePowerButtonIsStoppedAfterTheTimeout() throws {
        let accel = Self.kvmUsable() ? "kvm" : "emulator"
        let kernel = try Self.consoleGuest()
        try #require(Binaries.available)
        let d = try TestDaemon(config: Self.vmBlock("deaf", kernel: kernel, accel: accel), fake: false,
                               env: ["VMD_STOP_TIMEOUT": "1"])
        defer { d.stop() }
        #expect(try d.vmctl("start", "deaf").status == 0, "\(d.log.snapshot())")
        let c = try ConsoleClient(socket: d.socket, name: "deaf")
        c.type("deaf\r")
        #expect(c.waitFor("console: ignoring the power button"), "\(c.output.snapshot())")
        let t0 = Date()
        #expect(try d.vmctl("stop", "-w", "deaf").status == 0)
        let took = Date().timeIntervalSince(t0)
        #expect(c.waitFor("console: power button pressed, ignored"))
        #expect(took >= 0.9 && took < 8, "forced after the 1 s timeout (took \(took) s)")
        #expect(d.log.snapshot().contains("did not power off within 1.0 s of the power button"), "\(d.log.snapshot())")
        #expect(row(try d.vmctl("status").stdout, "deaf")?[1] == "-")
    }

    @Test(.enabled(if: RealGuestTests.haveConsoleGuest, "the console guest cannot be built (gcc -m32)"))
    func reloadAndSIGHUPTakeAChangedConfigurationWithRealGuests() throws {
        let accel = Self.kvmUsable() ? "kvm" : "emulator"
        let kernel = try Self.consoleGuest()
        try #require(Binaries.available)
        let d = try TestDaemon(config: Self.vmBlock("one", kernel: kernel, accel: accel), fake: false)
        defer { d.stop() }
        #expect(try d.vmctl("start", "one").status == 0, "\(d.log.snapshot())")
        let pid = try #require(row(try d.vmctl("status").stdout, "one")?[1])

        // vmctl reload: a new enabled VM starts; the running one is left alone.
        try (Self.vmBlock("one", kernel: kernel, accel: accel)
             + Self.vmBlock("two", kernel: kernel, accel: accel, memory: "48M", enabled: true))
            .write(toFile: d.config, atomically: true, encoding: .utf8)
        let reload = try d.vmctl("reload")
        #expect(reload.status == 0, "\(reload.stderr)")
        let two = try Self.waitState(d, "two", ["running"])
        #expect(two?[3] == "48M")
        #expect(row(try d.vmctl("status").stdout, "one")?[1] == pid, "reload does not restart running VMs")
        let c = try ConsoleClient(socket: d.socket, name: "two")
        c.type("hi\r")
        #expect(c.waitFor("echo: hi"), "the VM the reload started runs its kernel: \(c.output.snapshot())")
        #expect(c.detach())

        // SIGHUP: the same, from the signal.
        try (Self.vmBlock("one", kernel: kernel, accel: accel)
             + Self.vmBlock("two", kernel: kernel, accel: accel, memory: "48M", enabled: true)
             + Self.vmBlock("three", kernel: kernel, accel: accel, enabled: true))
            .write(toFile: d.config, atomically: true, encoding: .utf8)
        kill(d.process.processIdentifier, SIGHUP)
        #expect(try Self.waitState(d, "three", ["running"])?[7] == "running", "\(d.log.snapshot())")
        #expect(row(try d.vmctl("status").stdout, "one")?[1] == pid)
        #expect(try d.vmctl("stop", "-a", "-w").status == 0)
        let all = try d.vmctl("status").stdout
        for name in ["one", "two", "three"] { #expect(row(all, name)?[1] == "-", "\(all)") }
    }

    @Test(.enabled(if: RealGuestTests.haveConsoleGuest, "the console guest cannot be built (gcc -m32)"))
    func sigtermToVmdPowersItsGuestsOffGracefully() throws {
        let accel = Self.kvmUsable() ? "kvm" : "emulator"
        let kernel = try Self.consoleGuest()
        try #require(Binaries.available)
        let d = try TestDaemon(config: Self.vmBlock("bye", kernel: kernel, accel: accel, enabled: true), fake: false)
        defer { d.stop() }
        _ = try Self.waitState(d, "bye", ["running"])
        let c = try ConsoleClient(socket: d.socket, name: "bye")
        c.type("hi\r")
        #expect(c.waitFor("echo: hi"), "\(c.output.snapshot()) / \(d.log.snapshot())")
        let t0 = Date()
        kill(d.process.processIdentifier, SIGTERM)
        d.process.waitUntilExit()
        #expect(Date().timeIntervalSince(t0) < 8, "vmd did not need its 10 s grace period")
        #expect(c.waitFor("console: power button pressed, powering off"), "\(c.output.snapshot())")
        #expect(d.log.text().contains("vm bye: guest powered off"))
    }

    /// `vmctl console` on a real terminal: the terminal is raw while attached (no local echo,
    /// no line buffering: the guest echoes) and restored after `~.`.
    @Test(.enabled(if: RealGuestTests.haveConsoleGuest, "the console guest cannot be built (gcc -m32)"))
    func consoleOnATerminalIsRawAndRestored() throws {
        let kernel = try Self.consoleGuest()
        try #require(Binaries.available)
        let d = try TestDaemon(config: Self.vmBlock("tty", kernel: kernel, accel: Self.kvmUsable() ? "kvm" : "emulator",
                                                    enabled: true), fake: false)
        defer { d.stop() }
        _ = try Self.waitState(d, "tty", ["running"])

        // A pty pair as /dev/ptmx makes it: TIOCSPTLCK unlocks, TIOCGPTN names the slave.
        let master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        try #require(master >= 0)
        defer { close(master) }
        var unlock: Int32 = 0, number: UInt32 = 0
        try #require(ioctl(master, 0x4004_5431, &unlock) == 0 && ioctl(master, 0x8004_5430, &number) == 0)
        let slavePath = "/dev/pts/\(number)"
        let slave = open(slavePath, O_RDWR | O_NOCTTY)
        try #require(slave >= 0)
        defer { close(slave) }
        var before = termios()
        tcgetattr(slave, &before)
        #expect(before.c_lflag & tcflag_t(ICANON | ECHO) == tcflag_t(ICANON | ECHO))

        let p = Process()
        p.executableURL = URL(fileURLWithPath: Binaries.vmctl)
        p.arguments = ["--socket", d.socket, "console", "tty"]
        let h = FileHandle(fileDescriptor: slave, closeOnDealloc: false)
        p.standardInput = h
        p.standardOutput = h
        p.standardError = h
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }

        var seen = ""
        func readUntil(_ text: String, timeout: Double = 10) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            var buf = [UInt8](repeating: 0, count: 4096)
            while !seen.contains(text) && Date() < deadline {
                var pfd = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 50) > 0 else { continue }
                let n = read(master, &buf, buf.count)
                if n > 0 { seen += String(decoding: buf[0..<n], as: UTF8.self) }
            }
            return seen.contains(text)
        }
        func type(_ s: String) { _ = s.utf8CString.withUnsafeBufferPointer { write(master, $0.baseAddress, s.utf8.count) } }

        #expect(readUntil("Connected to"))
        var during = termios()
        tcgetattr(slave, &during)
        #expect(during.c_lflag & tcflag_t(ICANON | ECHO) == 0, "raw while attached")
        type("abc\r")
        #expect(readUntil("echo: abc"), "\(seen)")
        // Raw: the terminal did not echo "abc" itself; only the guest did (once, before "echo:").
        #expect(seen.components(separatedBy: "abc").count - 1 == 2, "\(seen)")
        type("~.")
        #expect(readUntil("[EOT]"))
        let deadline = Date().addingTimeInterval(5)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        #expect(!p.isRunning)
        var after = termios()
        tcgetattr(slave, &after)
        #expect(after.c_lflag == before.c_lflag && after.c_iflag == before.c_iflag && after.c_oflag == before.c_oflag,
                "the terminal is restored after ~.")
    }
}
