#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

let twoVMs = """
    vm "web" {
        memory 1G
        vcpus 2
    }
    vm "db" {
        disable
        memory 256M
    }

    """

/// vmd and vmctl as processes, with stand-in guests (`--fake-vms`): the process model,
/// control socket, console, state tracking and errors, independent of /dev/kvm.
@Suite(.serialized) struct DaemonTests {
    init() throws {
        try #require(Binaries.available, "vmd/vmctl not built next to the tests (\(Binaries.directory))")
    }

    @Test func checkModePrintsConfigurationOKOrTheErrors() throws {
        let dir = NSTemporaryDirectory() + "vmdn-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try twoVMs.write(toFile: dir + "/good.conf", atomically: true, encoding: .utf8)
        try "k = \"/bsd\"\nvm \"a\" {\n boot $k\n memroy 1G\n}\n".write(toFile: dir + "/bad.conf", atomically: true, encoding: .utf8)
        let good = try run(Binaries.vmd, ["-n", "-f", dir + "/good.conf"])
        #expect(good.status == 0)
        #expect(good.stdout == "configuration OK\n")
        let bad = try run(Binaries.vmd, ["-n", "-f", dir + "/bad.conf"])
        #expect(bad.status == 1)
        #expect(bad.stderr == "\(dir)/bad.conf:4: syntax error near \"memroy\"\n")
        let macro = try run(Binaries.vmd, ["-n", "-D", "k=/x", "-f", dir + "/good.conf"])
        #expect(macro.status == 0)
        #expect(macro.stderr.contains("macro 'k' not used"))
        // Every error is listed, each at its line (parse.y's recovery), not only the first.
        try "vm \"a\" {\n memroy 1G\n}\nvm \"b\" { }\nvm \"c\" {\n memory 10K\n}\n"
            .write(toFile: dir + "/many.conf", atomically: true, encoding: .utf8)
        let many = try run(Binaries.vmd, ["-n", "-f", dir + "/many.conf"])
        #expect(many.status == 1)
        #expect(many.stderr == """
            \(dir)/many.conf:2: syntax error near "memroy"
            \(dir)/many.conf:4: syntax error near "}"
            \(dir)/many.conf:6: failed to parse size: 10K: size must be at least one megabyte

            """)
        let none = try run(Binaries.vmd, ["-n", "-f", "/nonexistent"])
        #expect(none.status == 1)
        #expect(none.stderr == "failed to open /nonexistent: No such file or directory\n")
    }

    @Test func enabledVMsStartAndTheTableShowsThem() throws {
        let d = try TestDaemon(config: twoVMs)
        defer { d.stop() }
        let s = try d.waitForStatus { row($0, "web")?[7] == "running" }
        #expect(s.hasPrefix("   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME\n"))
        let web = try #require(row(s, "web"))
        #expect(web[0] == "1" && web[2] == "2" && web[3] == "1.0G" && web[4] == "1.0G" && web[5].hasPrefix("pts/"))
        #expect(Int32(web[1]).map { kill($0, 0) == 0 } == true, "the VM process exists")
        #expect(row(s, "db") == ["2", "-", "1", "256M", "-", "-", "root", "disabled", "db"])
    }

    /// `sev`/`seves` parse as upstream's grammar has them; starting such a VM fails with one
    /// line saying SEV is not available, and vmd goes on.
    @Test func aSEVVMFailsToStartWithOneClearLine() throws {
        let d = try TestDaemon(config: "agentx context \"vmd\"\nvm \"enc\" {\n disable\n seves\n}\nvm \"plain\" {\n disable\n}\n")
        defer { d.stop() }
        let r = try d.vmctl("start", "enc")
        #expect(r.status == 1)
        #expect(r.stderr == "vmctl: vm enc: SEV-ES is not available on this host (vmd has no AMD SEV support): remove \"seves\" to start it\n")
        #expect(try d.vmctl("start", "plain").status == 0)
    }

    @Test func startStopPauseUnpauseAndPrefixes() throws {
        let d = try TestDaemon(config: twoVMs)
        defer { d.stop() }
        _ = try d.waitForStatus { row($0, "web")?[7] == "running" }
        let started = try d.vmctl("star", "db")
        #expect(started.status == 0)
        #expect(started.stdout.hasPrefix("vmctl: started vm 2 successfully, tty /dev/pts/"))
        #expect(try d.vmctl("start", "db").stderr == "vmctl: vm db: already running\n")
        #expect(try d.vmctl("pause", "web").status == 0)
        #expect(row(try d.vmctl("stat", "web").stdout, "web")?[7] == "paused")
        #expect(try d.vmctl("pause", "web").stderr == "vmctl: vm web: not running\n")
        #expect(try d.vmctl("unp", "1").status == 0)
        #expect(row(try d.vmctl("show").stdout, "web")?[7] == "running")
        let stop = try d.vmctl("stop", "-w", "db")
        #expect(stop.status == 0)
        #expect(stop.stdout == "stopping vm db: vm db stopped (exited normally)\n")
        #expect(row(try d.vmctl("status").stdout, "db")?[7] == "disabled")
        let amb = try d.vmctl("sta")
        #expect(amb.status == 1)
        #expect(amb.stderr == "vmctl: ambiguous command: sta (start, status)\n")
        let unknown = try d.vmctl("stop", "nosuch")
        #expect(unknown.status == 1)
        #expect(unknown.stderr == "vmctl: vm nosuch: no such vm\n")
        #expect(try d.vmctl("frobnicate").stderr == "vmctl: unknown command: frobnicate\n")
        let all = try d.vmctl("stop", "-a", "-w")
        #expect(all.status == 0)
        #expect(try d.waitForStatus { row($0, "web")?[7] == "stopped" }.contains("stopped web"))
    }

    @Test func consoleRelaysAndTildeDotDetaches() throws {
        let d = try TestDaemon(config: twoVMs)
        defer { d.stop() }
        _ = try d.waitForStatus { row($0, "web")?[7] == "running" }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Binaries.vmctl)
        p.arguments = ["--socket", d.socket, "console", "web"]
        let inp = Pipe(), out = Pipe()
        p.standardInput = inp
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let collected = OutputCollector(out.fileHandleForReading)
        inp.fileHandleForWriting.write(Data("hello\r".utf8))
        let deadline = Date().addingTimeInterval(10)
        while !collected.snapshot().contains("echo: hello") && Date() < deadline { usleep(20_000) }
        #expect(collected.snapshot().contains("Connected to /dev/pts/"))
        #expect(collected.snapshot().contains("echo: hello"))
        inp.fileHandleForWriting.write(Data("~.".utf8))
        while p.isRunning && Date() < deadline { usleep(20_000) }
        #expect(!p.isRunning, "~. detached")
        if p.isRunning { p.terminate() }
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(collected.text().hasSuffix("[EOT]\n"))
        // Detaching leaves the VM running.
        #expect(row(try d.vmctl("status").stdout, "web")?[7] == "running")
    }

    @Test func startWithConsoleAttachesAtOnce() throws {
        let d = try TestDaemon(config: twoVMs)
        defer { d.stop() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Binaries.vmctl)
        p.arguments = ["--socket", d.socket, "start", "-c", "db"]
        let inp = Pipe(), out = Pipe()
        p.standardInput = inp
        p.standardOutput = out
        try p.run()
        let collected = OutputCollector(out.fileHandleForReading)
        inp.fileHandleForWriting.write(Data("abc\r".utf8))
        let deadline = Date().addingTimeInterval(10)
        while !collected.snapshot().contains("echo: abc") && Date() < deadline { usleep(20_000) }
        inp.fileHandleForWriting.write(Data("~.".utf8))
        p.waitUntilExit()
        let text = collected.text()
        #expect(text.hasPrefix("vmctl: started vm 2 successfully, tty /dev/pts/"))
        #expect(text.contains("Connected to /dev/pts/"))
        #expect(text.contains("echo: abc"))
        #expect(p.terminationStatus == 0)
    }

    @Test func pausedGuestsDoNotRun() throws {
        let d = try TestDaemon(config: twoVMs)
        defer { d.stop() }
        _ = try d.waitForStatus { row($0, "web")?[7] == "running" }
        #expect(try d.vmctl("pause", "web").status == 0)
        // Typed while paused: no echo until unpaused.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Binaries.vmctl)
        p.arguments = ["--socket", d.socket, "console", "web"]
        let inp = Pipe(), out = Pipe()
        p.standardInput = inp
        p.standardOutput = out
        try p.run()
        let collected = OutputCollector(out.fileHandleForReading)
        inp.fileHandleForWriting.write(Data("ping\r".utf8))
        // The event: "ping" has reached the guest's console and lies there unread (the
        // slave side's input queue, FIONREAD on the VM's tty), so a running guest could
        // have echoed it; a paused one has not.
        let tty = try #require(row(try d.vmctl("status").stdout, "web").map { $0[5] })
        let slave = open(tty.hasPrefix("/") ? tty : "/dev/" + tty, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        try #require(slave >= 0, "cannot open \(tty)")
        defer { close(slave) }
        var pending: Int32 = 0
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            guard ioctl(slave, UInt(FIONREAD), &pending) == 0 else { break }
            if pending >= 5 { break }
            usleep(20_000)
        }
        #expect(pending >= 5, "the console never delivered the typed line")
        #expect(!collected.snapshot().contains("echo: ping"))
        #expect(try d.vmctl("unpause", "web").status == 0)
        inp.fileHandleForWriting.write(Data("pong\r".utf8))
        // Unpaused, the guest reads what waited for it, in order.
        while !collected.snapshot().contains("echo: pong") && Date() < deadline.addingTimeInterval(10) { usleep(20_000) }
        #expect(collected.snapshot().contains("echo: pong"))
        let echoed = collected.snapshot()
        let ping = echoed.range(of: "echo: ping")?.lowerBound, pong = echoed.range(of: "echo: pong")?.lowerBound
        #expect(ping != nil && pong != nil && ping! < pong!, "\(echoed)")
        inp.fileHandleForWriting.write(Data("~.".utf8))
        p.waitUntilExit()
    }

    @Test func aKilledVMProcessIsReportedAndVmdCarriesOn() throws {
        let d = try TestDaemon(config: twoVMs)
        defer { d.stop() }
        let s = try d.waitForStatus { row($0, "web")?[7] == "running" }
        let pid = try #require(row(s, "web").flatMap { Int32($0[1]) })
        #expect(kill(pid, SIGKILL) == 0)
        let after = try d.waitForStatus { row($0, "web")?[7] == "stopped" }
        #expect(row(after, "web")?[1] == "-")
        #expect(try d.vmctl("-v", "status", "web").stdout.contains("vm web: last exit: killed by signal 9 (SIGKILL)"))
        let deadline = Date().addingTimeInterval(5)
        while !d.log.snapshot().contains("died: killed by signal 9") && Date() < deadline { usleep(20_000) }
        #expect(d.log.snapshot().contains("vm 1 (web) pid \(pid) died: killed by signal 9"))
        // vmd lost nothing: the VM starts again, with the same id.
        #expect(try d.vmctl("start", "web").stdout.hasPrefix("vmctl: started vm 1 successfully"))
    }

    @Test func guestShutdownEndsWaitAndCrashesAreNamed() throws {
        let d = try TestDaemon(config: twoVMs, extraArgs: ["-v"])
        defer { d.stop() }
        _ = try d.waitForStatus { row($0, "web")?[7] == "running" }
        let waiter = Process()
        waiter.executableURL = URL(fileURLWithPath: Binaries.vmctl)
        waiter.arguments = ["--socket", d.socket, "wait", "web"]
        let wout = Pipe()
        waiter.standardOutput = wout
        try waiter.run()
        let wcollect = OutputCollector(wout.fileHandleForReading)
        // The event: vmd (-v) says the client's wait has begun; the VM still runs, so the
        // waiter must still be waiting, with nothing printed.
        let deadline = Date().addingTimeInterval(10)
        while !d.log.snapshot().contains("waits for vm 1 to stop") && Date() < deadline { usleep(20_000) }
        #expect(d.log.snapshot().contains("waits for vm 1 to stop"), "\(d.log.snapshot())")
        #expect(waiter.isRunning, "wait blocks while the VM runs")
        #expect(wcollect.snapshot().isEmpty)
        try d.vmctl("console", "web", stdin: "poweroff\r")
        waiter.waitUntilExit()
        #expect(wcollect.text() == "vmctl: vm web stopped: exited normally\n")
        #expect(try d.vmctl("start", "web").status == 0)
        try d.vmctl("console", "web", stdin: "crash\r")
        let w2 = try d.vmctl("wait", "web")
        #expect(w2.stdout == "vmctl: vm web stopped: exited with status 3\n")
    }

    @Test func badRequestsFailWithOneLineAndChangeNothing() throws {
        let d = try TestDaemon(config: twoVMs)
        defer { d.stop() }
        _ = try d.waitForStatus { row($0, "web")?[7] == "running" }
        let missing = try d.vmctl("start", "-d", "/nonexistent/disk.img", "db")
        #expect(missing.status == 1)
        #expect(missing.stderr == "vmctl: vm db: disk /nonexistent/disk.img: No such file or directory\n")
        let noVM = try d.vmctl("start", "ghost")
        #expect(noVM.stderr == "vmctl: vm ghost: no such vm (give -b, -r or -d to create one)\n")
        #expect(try d.vmctl("start", "-m", "12X", "db").status != 0)
        #expect(try d.vmctl("start", "--accel", "xen", "db").status != 0)
        let level = try d.vmctl("start", "--cpu-level", "v4", "db")
        #expect(level.status != 0 && level.stderr.contains("invalid cpu level: v4 (baseline or v2 or v3)"), "\(level.stderr)")
        let s = try d.vmctl("status").stdout
        #expect(row(s, "web")?[7] == "running")
        #expect(row(s, "db")?[7] == "disabled")
    }

    @Test func vmsCanBeCreatedFromTheCommandLine() throws {
        let d = try TestDaemon(config: "")
        defer { d.stop() }
        let kernel = d.dir + "/kernel"
        FileManager.default.createFile(atPath: kernel, contents: Data([0x7f]))
        let r = try d.vmctl("start", "-b", kernel, "-m", "64M", "--vcpus", "3", "--cmdline", "console=ttyS0", "adhoc")
        #expect(r.status == 0)
        let row1 = try #require(row(try d.vmctl("status").stdout, "adhoc"))
        #expect(row1[2] == "3" && row1[3] == "64M" && row1[7] == "running")
    }

    @Test func reloadAddsVMsAndABadFileChangesNothing() throws {
        let d = try TestDaemon(config: twoVMs)
        defer { d.stop() }
        _ = try d.waitForStatus { row($0, "web")?[7] == "running" }
        try (twoVMs + "vm \"extra\" {\n disable\n}\n").write(toFile: d.config, atomically: true, encoding: .utf8)
        kill(d.process.processIdentifier, SIGHUP)
        let s = try d.waitForStatus { row($0, "extra") != nil }
        #expect(row(s, "extra")?[7] == "disabled")
        #expect(row(s, "web")?[7] == "running", "running VMs survive a reload")
        try "vm \"broken\" {\n memory\n}\n".write(toFile: d.config, atomically: true, encoding: .utf8)
        let bad = try d.vmctl("reload")
        #expect(bad.status == 1)
        #expect(bad.stderr == "vmctl: \(d.config):2: syntax error near end of line\n")
        #expect(row(try d.vmctl("status").stdout, "extra") != nil)
        // load: VMs from another file are added.
        let other = d.dir + "/other.conf"
        try "vm \"loaded\" {\n disable\n}\n".write(toFile: other, atomically: true, encoding: .utf8)
        #expect(try d.vmctl("load", other).status == 0)
        #expect(row(try d.vmctl("status").stdout, "loaded") != nil)
        #expect(try d.vmctl("log", "verbose").status == 0)
        #expect(try d.vmctl("reset", "vms").status == 0)
        #expect(row(try d.vmctl("status").stdout, "web")?[7] == "stopped")
        // No switches configured: nothing to rebuild (NetworkTests resets a real bridge);
        // a vmd that is not root says it cannot.
        let switches = try d.vmctl("reset", "switches")
        if geteuid() == 0 {
            #expect(switches.status == 0, "\(switches.stderr)")
        } else {
            #expect(switches.stderr == "vmctl: reset switches: vmd is not running as root\n", "\(switches.stderr)")
        }
    }

    /// `boot device` / -B choose what the firmware boots (no warning any more); `net` needs
    /// its boot file (`boot PATH`) and a local interface, each missing one a clear line; a
    /// boot device with a kernel is refused.
    @Test func aBootDeviceIsHonouredOrRefusedClearly() throws {
        let d = try TestDaemon(config: "vm \"n\" {\n disable\n boot device net\n}\nvm \"c\" {\n disable\n}\n")
        defer { d.stop() }
        let net = try d.vmctl("start", "n")
        #expect(net.status != 0 && net.stderr.contains("vm n: boot device net needs the boot file as an absolute path"), "\(net.stderr)")
        let noLocal = try d.vmctl("start", "-B", "net", "-b", "/srv/tftp/boot.ipxe", "c")
        #expect(noLocal.status != 0 && noLocal.stderr.contains("vm c: boot device net needs a local interface"), "\(noLocal.stderr)")
        let withKernel = try d.vmctl("start", "-B", "disk", "-b", "/no/bsd", "c")
        #expect(withKernel.status != 0 && withKernel.stderr.contains("it cannot be combined with a kernel"), "\(withKernel.stderr)")
        #expect(!d.log.snapshot().contains("not supported by vmd yet"), "\(d.log.snapshot())")
    }

    @Test func staggeredStartSpacesVMsOut() throws {
        let conf = "staggered start parallel 1 delay 1\nvm a {\n memory 64M\n}\nvm b {\n memory 64M\n}\n"
        let d = try TestDaemon(config: conf)
        defer { d.stop() }
        let first = try d.waitForStatus { row($0, "a")?[7] == "running" }
        #expect(row(first, "b")?[7] == "stopped" || row(first, "b")?[7] == "starting")
        let both = try d.waitForStatus { row($0, "b")?[7] == "running" }
        #expect(row(both, "a")?[7] == "running")
    }
}
