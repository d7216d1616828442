#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Control
import Logging
import VMConfig
import Storage
import VMM
import X86Emulator

/// What runs a guest inside a VM process.
protocol GuestRunner: AnyObject, Sendable {
    func start() throws
    func pause() throws
    func resume() throws
    /// Pauses, writes the state stream to `fd`, stops the guest (on failure it resumes).
    func send(to fd: Int32) throws
    /// Asks the guest to stop; `wait` then returns.
    func stop()
    /// Blocks until the guest has stopped; the process exit status to report.
    func wait() -> Int32
}

/// The VM process: `vmd _vm` started by vmd with the console pty on fds 0 and 1 and the
/// control socketpair on fd 3. It reads its ChildSpec, starts the guest, then obeys
/// pause/unpause/shutdown until the guest stops; if vmd goes away it stops the guest.
enum VMProcessMain {
    static func run() -> Never {
        signal(SIGPIPE, SIG_IGN)
        closeInheritedDescriptors()
        let channel = ControlChannel(fd: 3)
        guard let (first, _) = try? channel.receive(ParentMessage.self), case .spec(let spec) = first else {
            FileHandle.standardError.write(Data("vmd: VM process: no VM description from vmd\n".utf8))
            exit(2)
        }
        let runner: any GuestRunner
        do {
            // The guest's files come as descriptors after the spec (GuestFiles.swift).
            let fds = try GuestFiles.receive(spec.files.count, over: channel)
            runner = spec.fake ? try FakeGuest(spec: spec, fds: fds) : try MachineGuest(spec: spec, fds: fds)
            // It holds its files, /dev/kvm and its console now: root is no longer needed.
            try GuestFiles.dropPrivileges(to: spec.dropTo)
            // Nor is any system call outside the surveyed list (Sandbox.swift): from here
            // on a forbidden one kills the process with SIGSYS.
            try Sandbox.install()
            try runner.start()
            if let m = runner as? MachineGuest, m.consoleFD >= 0, let path = m.consolePath {
                try channel.send(ChildMessage.startedWithConsole(path), fds: [m.consoleFD])
            } else {
                try channel.send(ChildMessage.started)
            }
            Sandbox.runTestHook()
        } catch {
            try? channel.send(ChildMessage.failed("\(error)"))
            exit(1)
        }
        let commands = Thread {
            while true {
                guard let (msg, fds) = try? channel.receive(ParentMessage.self) else {
                    runner.stop()  // vmd is gone: do not leave an orphan guest running
                    return
                }
                let reply: ChildMessage
                do {
                    switch msg {
                    case .pause: try runner.pause(); reply = .ok
                    case .unpause: try runner.resume(); reply = .ok
                    case .shutdown: runner.stop(); reply = .ok
                    case .send:
                        guard let fd = fds.first else { reply = .error("no descriptor for the state stream"); break }
                        defer { for f in fds { close(f) } }
                        try runner.send(to: fd); reply = .ok
                    case .spec, .files: reply = .error("already running")
                    }
                } catch {
                    reply = .error("\(error)")
                }
                try? channel.send(reply)
            }
        }
        commands.start()
        exit(runner.wait())
    }
}

extension VMProcessMain {
    /// A VM process starts with fds 0-3 only. vmd sets close-on-exec on every descriptor,
    /// but one accepted by another vmd thread between accept(2) and fcntl(2) could slip
    /// through a concurrent spawn (glibc's accept4 and posix_spawn's closefrom are not
    /// visible to Swift): close whatever else is open before touching guest state.
    static func closeInheritedDescriptors() {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        // Listing /proc/self/fd opens a descriptor of its own; it is closed by now.
        for name in names {
            if let fd = Int32(name), fd > 3 { close(fd) }
        }
    }
}

struct GuestError: Error, CustomStringConvertible {
    var description: String
}

/// Runs the VM on the VMM target's Machine. Its console is the machine's own pty (output is
/// dropped while nobody reads); the VM process hands vmd that pty's slave side.
final class MachineGuest: GuestRunner, @unchecked Sendable {
    private let machine: Machine
    private let name: String
    let consoleFD: Int32
    let consolePath: String?
    /// A received VM: the state stream, read on from after its CONF section by `start()`
    /// (sandboxed, no longer root); -1 otherwise.
    private let stream: Int32

    /// `fds`: the guest's files as vmd opened them (`spec.files` says which is which); the
    /// machine opens none by name.
    init(spec: ChildSpec, fds: [Int32]) throws {
        let vm = spec.vm
        name = vm.name
        let passed: PassedFiles
        do {
            passed = try GuestFiles.passedFiles(spec.files, fds)
        } catch {
            for f in fds { close(f) }
            throw GuestError(description: "vm \(vm.name): \(error)")
        }
        // No kernel: the machine boots through the firmware (SeaBIOS), which boots the disks
        // or the cdrom (the virtio-scsi CD-ROM) in `boot device` order.
        var config = MachineConfig(
            kernelPath: vm.bootDevice == .net ? "" : vm.boot ?? "", initrdPath: vm.initrd, cmdline: vm.cmdline ?? "",
            memorySize: vm.effectiveMemory, vcpus: vm.vcpus ?? 1,
            diskPaths: vm.disks.map(\.path),
            accelerator: VMM.Accelerator(rawValue: (vm.accel ?? .auto).rawValue) ?? .auto,
            console: .pty)
        config.cdromPath = vm.cdrom
        // vm.conf's `cpu-level` names the emulator's levels (a test keeps the two lists equal).
        config.cpuLevel = vm.cpuLevel.flatMap { X86CPULevel(rawValue: $0.rawValue) }
        config.bootDevice = vm.bootDevice.map { VMM.BootDevice(rawValue: $0.rawValue) ?? .disk }
        config.passedFiles = passed
        for (k, i) in spec.interfaces.enumerated() {
            guard let at = spec.files.firstIndex(where: { $0.role == .tap(k) }), at < fds.count else { continue }
            config.networkInterfaces.append(NetworkInterfaceConfig(attachment: .fileDescriptor(fds[at]), mac: i.mac,
                                                                   lockedMAC: i.locked, local: i.local))
        }
        var log = Logger(label: "vm \(vm.name)")
        log.logLevel = spec.verbose > 0 ? .debug : .warning
        let streamAt = spec.files.firstIndex { $0.role == .stateStream }
        stream = streamAt.map { fds[$0] } ?? -1
        do {
            if let conf = spec.restore {
                // Received: the machine the stream describes, on the disks vmd opened.
                guard stream >= 0 else { throw GuestError(description: "no state stream was passed") }
                machine = try Machine.prepareRestore(conf, console: .pty, diskPaths: vm.disks.map(\.path),
                                                     passedFiles: passed, log: log)
            } else {
                machine = try Machine(config: config, log: log)
            }
        } catch {
            if stream >= 0 { close(stream) }
            throw GuestError(description: "vm \(vm.name): \(error)")
        }
        consolePath = machine.consolePath
        consoleFD = machine.consolePath.map { open($0, O_RDWR | O_NOCTTY | O_CLOEXEC) } ?? -1
    }

    func start() throws {
        if stream >= 0 {
            defer { close(stream) }
            do {
                try machine.applyState(from: StateStreamReader(fd: stream, continuing: true,
                                                               timeoutSeconds: Daemon.receiveReadTimeout))
            } catch {
                throw GuestError(description: "vm \(name): \(error)")
            }
        }
        try machine.start()
    }
    func pause() throws { machine.pause() }
    func resume() throws { machine.resume() }

    func send(to fd: Int32) throws {
        try machine.saveThenStop(reason: "sent") { try machine.saveState(to: fd) }
    }

    /// How long a graceful stop waits for the guest to power off after the power-button
    /// press before it forces the stop: 30 s, or `VMD_STOP_TIMEOUT` seconds from vmd's
    /// environment (tests use a short one).
    static let stopTimeout: Double = {
        if let v = ProcessInfo.processInfo.environment["VMD_STOP_TIMEOUT"], let t = Double(v), t >= 0, t <= 3600 {
            return t
        }
        return 30
    }()

    private let stopLock = NSLock()
    private var stopRequested = false

    /// Graceful stop, like OpenBSD's `vmctl stop`: presses the ACPI power button and lets the
    /// guest shut itself down; if it has not powered off within `stopTimeout` the machine is
    /// stopped. A guest that never enabled the power button's event (PM1_EN PWRBTN_EN: no
    /// ACPI OS listening) is stopped at once. Returns at once (the reply to vmd must not wait).
    func stop() {
        guard machine.powerButtonEnabled else {
            machine.stop(reason: "stopped by vmd (the guest does not listen to the ACPI power button)")
            return
        }
        machine.pressPowerButton()
        let first: Bool = stopLock.withLock {
            defer { stopRequested = true }
            return !stopRequested
        }
        guard first else { return }
        let machine = self.machine, timeout = Self.stopTimeout, name = self.name
        let watchdog = Thread {
            let deadline = Date().addingTimeInterval(timeout)
            while machine.events.outcome == nil && Date() < deadline { usleep(20_000) }
            if machine.events.outcome == nil {
                printError("vmd: vm \(name): the guest did not power off within \(timeout) s of the power button; stopping it")
                machine.stop(reason: "stopped by vmd after the guest ignored the power button for \(timeout) s")
            }
        }
        watchdog.start()
    }
    func wait() -> Int32 {
        _ = machine.runner.wait()  // the vCPUs are done; the console pty is still open
        drainConsole()
        let outcome = machine.wait()
        printError("vmd: vm \(name): \(outcome)")
        return outcome.exitStatus
    }
}

extension MachineGuest {
    /// Closing the pty's master side discards what the slave side has not read yet, so the
    /// guest's last words ("powering off") would never reach an attached `vmctl console`.
    /// Waits while a reader is taking them: until the slave's input queue has been empty
    /// twice in a row (the kernel moves pty data to that queue from a work queue, so one look
    /// can come too early), it stops shrinking for 100 ms (nobody is attached), or 1 s passed.
    func drainConsole() {
        guard consoleFD >= 0 else { return }
        var last: Int32 = -1
        var stalled = 0, empty = 0
        for _ in 0..<50 {
            usleep(20_000)
            var pending: Int32 = 0
            guard ioctl(consoleFD, UInt(FIONREAD), &pending) == 0 else { return }
            if pending == 0 {
                empty += 1
                if empty >= 2 { return }
                continue
            }
            empty = 0
            if pending == last {
                stalled += 1
                if stalled >= 5 { return }
            } else {
                stalled = 0
                last = pending
            }
        }
    }
}

/// A stand-in guest: prints a banner on its console and echoes what it is sent. Typing
/// `poweroff` and Enter makes it exit as a guest that shut itself down; `crash` makes it
/// exit with status 3. While paused it neither reads nor echoes.
final class FakeGuest: GuestRunner, @unchecked Sendable {
    private let spec: ChildSpec
    private let cond = NSCondition()
    private var paused = false
    private var stopped = false
    private var exitCode: Int32 = 0
    /// The disks built from the passed descriptors, held like a machine holds them (the
    /// kernel's and initrd's descriptors are read and closed, as a machine does).
    private let disks: [any DiskBackend]

    init(spec: ChildSpec, fds: [Int32]) throws {
        self.spec = spec
        var disks: [any DiskBackend] = []
        do {
            // The kernel and initrd are read and closed, as a machine does; taps are not used.
            guard spec.files.count == fds.count else { throw GuestError(description: "vmd's file list does not match the descriptors passed") }
            for (i, f) in spec.files.enumerated() where f.role == .kernel || f.role == .initrd || f.role == .stateStream {
                close(fds[i])
            }
            if spec.restore != nil { throw GuestError(description: "a stand-in guest cannot be restored from a state stream") }
            let images = try GuestFiles.diskChains(spec.files, fds)
            for chain in images { disks.append(try DiskImage.open(chain: chain)) }
            if let i = spec.files.firstIndex(where: { $0.role == .cdrom }) {
                disks.append(try RawImage(fileDescriptor: fds[i], path: spec.files[i].path, readOnly: true))
            }
        } catch {
            throw GuestError(description: "vm \(spec.vm.name): \(error)")
        }
        self.disks = disks
    }

    private func out(_ s: String) {
        var b = Array(s.utf8)
        var off = 0
        while off < b.count {
            let n = b[off...].withUnsafeMutableBytes { write(1, $0.baseAddress, $0.count) }
            if n <= 0 { if errno == EINTR { continue }; return }
            off += n
        }
        _ = b.count
        b.removeAll()
    }

    func start() throws {
        let vm = spec.vm
        out("\(vm.name): fake guest booted, \(vm.vcpus ?? 1) vcpus, \(ScaledSize.format(vm.effectiveMemory)) memory\r\n\(vm.name)> ")
        let t = Thread { [self] in readLoop() }
        t.start()
    }

    private func readLoop() {
        var line: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 256)
        while true {
            cond.lock()
            while paused && !stopped { cond.wait() }
            let done = stopped
            cond.unlock()
            if done { return }
            var pfd = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, 100)
            if r == 0 || (r < 0 && errno == EINTR) { continue }
            // Input typed while paused stays on the console, unread, until unpause (as a
            // paused machine leaves it): read only while not paused, under the lock that
            // `pause` takes.
            cond.lock()
            if paused { cond.unlock(); continue }
            let n = read(0, &buf, buf.count)
            cond.unlock()
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                if n < 0 && errno == EIO { usleep(50_000); continue }  // no one on the pty yet
                return
            }
            for c in buf[0..<n] {
                if c == 0x0d || c == 0x0a {
                    let cmd = String(decoding: line, as: UTF8.self)
                    line = []
                    out("\r\n")
                    if cmd == "poweroff" { finish(0, "\(spec.vm.name): powering off\r\n"); return }
                    if cmd == "crash" { finish(3, "\(spec.vm.name): crashing\r\n"); return }
                    if !cmd.isEmpty { out("echo: \(cmd)\r\n") }
                    out("\(spec.vm.name)> ")
                } else {
                    line.append(c)
                    out(String(decoding: [c], as: UTF8.self))
                }
            }
        }
    }

    private func finish(_ code: Int32, _ message: String) {
        out(message)
        cond.lock()
        exitCode = code
        stopped = true
        cond.broadcast()
        cond.unlock()
    }

    func send(to fd: Int32) throws { throw GuestError(description: "a stand-in guest has no state to send") }

    func pause() throws {
        cond.lock(); paused = true; cond.unlock()
    }
    func resume() throws {
        cond.lock(); paused = false; cond.broadcast(); cond.unlock()
    }
    func stop() { finish(0, "\(spec.vm.name): shutting down\r\n") }
    func wait() -> Int32 {
        cond.lock()
        while !stopped { cond.wait() }
        let c = exitCode
        cond.unlock()
        return c
    }
}
