#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Logging
import VMM
import X86Emulator

extension Accelerator: ExpressibleByArgument {}
extension BootDevice: ExpressibleByArgument {}
/// Only the complete levels: `v3` exists for tests until AVX/AVX2/FMA/F16C do.
extension X86CPULevel: ExpressibleByArgument {
    public init?(argument: String) {
        guard let l = X86CPULevel(rawValue: argument), X86CPULevel.selectable.contains(l) else { return nil }
        self = l
    }
    public static var allValueStrings: [String] { selectable.map(\.rawValue) }
}

/// `vmm`: runs exactly one VM in the foreground with its serial console on this terminal.
/// It is also what vmd starts for each VM.
@main
struct VMMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmm",
        abstract: "Run one virtual machine in the foreground, its serial console on this terminal.",
        discussion: """
            The kernel is recognised by its content: a Linux bzImage, an ELF kernel (PVH note) \
            or a multiboot kernel. Without -k the machine boots through its BIOS (SeaBIOS) \
            from the disks or the CD-ROM (-r), in the order -B gives. Type Ctrl-] on the \
            console to stop the VM.

            Exit status: 0 when the guest powers off or resets (the VM is not rebooted) or \
            is stopped with Ctrl-] or a signal; (value << 1) | 1 when the guest writes value \
            to the debug-exit port 0xf4 (always odd); 2 with a one-line message on any error.

            Snapshots (docs/snapshot.md): with --save-to FILE, SIGUSR2 pauses the machine, \
            writes its state stream to FILE and stops it (exit 0). --restore FILE builds the \
            machine the stream describes and runs it from the saved state (the kernel, initrd \
            and disks named in it must still be there); no other machine flags are taken.
            """)

    @Option(name: .customLong("save-to"), help: ArgumentHelp("On SIGUSR2: pause, save the machine's state to this file, stop.", valueName: "file"))
    var saveTo: String?

    @Option(name: .long, help: ArgumentHelp("Run the machine saved in this state file (from --save-to).", valueName: "file"))
    var restore: String?

    @Option(name: [.customShort("k"), .long], help: ArgumentHelp("The kernel to boot directly (without it: boot through the firmware).", valueName: "file"))
    var kernel: String?

    @Option(name: [.customShort("i"), .long], help: ArgumentHelp("An initial ramdisk (Linux) or module (multiboot).", valueName: "file"))
    var initrd: String?

    @Option(name: [.customShort("p"), .long], help: ArgumentHelp("The kernel command line (default for a Linux bzImage: console=ttyS0).", valueName: "string"))
    var cmdline: String?

    @Option(name: [.customShort("m"), .long], help: ArgumentHelp("Guest memory, e.g. 512M or 2G (a bare number is MiB).", valueName: "size"))
    var memory: String = "512M"

    @Option(name: [.customShort("c"), .long], help: ArgumentHelp("Number of vCPUs.", valueName: "n"))
    var cpus: Int = 1

    @Option(name: [.customShort("d"), .long], help: ArgumentHelp("A disk image (repeatable, up to 4).", valueName: "file"))
    var disk: [String] = []

    @Option(name: [.customShort("r"), .long], help: ArgumentHelp("An ISO 9660 image on a read-only CD-ROM (firmware boot).", valueName: "file"))
    var cdrom: String?

    @Option(name: [.customShort("B"), .customLong("boot-device")], help: ArgumentHelp("What the firmware boots first: disk or cdrom (net is not supported yet).", valueName: "disk|cdrom|net"))
    var bootDevice: BootDevice?

    @Option(name: .long, help: ArgumentHelp("The BIOS image for a firmware boot (default /usr/share/seabios/bios-256k.bin).", valueName: "file"))
    var firmware: String?

    @Option(name: .long, help: ArgumentHelp("CPU backend: kvm, emulator or auto.", valueName: "kvm|emulator|auto"))
    var accel: Accelerator = .auto

    @Option(name: .customLong("cpu-level"), help: ArgumentHelp(
        "The software CPU's instruction-set level: baseline (x86-64: SSE2), v2 (x86-64-v2: + SSE3, SSSE3, SSE4.1, SSE4.2, POPCNT, CMPXCHG16B, LAHF/SAHF; the default) or v3 (x86-64-v3: + AVX, AVX2, BMI1, BMI2, FMA, F16C, LZCNT, MOVBE, XSAVE; needs a host with AVX2, FMA and F16C). KVM ignores it.",
        valueName: "baseline|v2|v3"))
    var cpuLevel: X86CPULevel?

    @Option(name: [.customShort("n"), .long], help: ArgumentHelp(
        "A virtio-net interface (repeatable, up to 4): tap (next free tapN), tap:NAME, or fd:N (an open tap descriptor), optionally followed by ,mac=xx:xx:xx:xx:xx:xx and ,locked (drop guest frames from another MAC).",
        valueName: "tap[:name]|fd:n[,mac=addr][,locked]"))
    var net: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "A virtio-vsock device: the guest's CID (3-4294967294) and a host unix socket path. Host programs connect to PATH and send \"CONNECT <port>\\n\" (answer \"OK <hostport>\\n\"); guest connections to host port P go to PATH_P.",
        valueName: "cid,path"))
    var vsock: String?

    /// The machine description these flags give (no file is touched).
    func machineConfig(console: ConsoleSink = .standardIO) throws -> MachineConfig {
        var config = MachineConfig(kernelPath: kernel ?? "", initrdPath: initrd, cmdline: cmdline ?? "",
                                   memorySize: try parseMemorySize(memory), vcpus: cpus,
                                   diskPaths: disk, accelerator: accel, console: console)
        config.cdromPath = cdrom
        config.bootDevice = bootDevice
        config.firmwarePath = firmware
        config.cpuLevel = cpuLevel
        if kernel == nil {
            if initrd != nil || cmdline != nil {
                throw VMMError.unsupported("an initrd (-i) or command line (-p) needs a kernel (-k)")
            }
        } else if firmware != nil {
            throw VMMError.unsupported("--firmware boots through the BIOS; it cannot be combined with a kernel (-k) yet")
        }
        config.networkInterfaces = try net.map { try NetworkInterfaceConfig(parsing: $0) }
        guard config.networkInterfaces.count <= 4 else {
            throw NetworkConfigError.tooManyInterfaces(config.networkInterfaces.count, maximum: 4)
        }
        config.vsock = try vsock.map { try VsockConfig(parsing: $0) }
        try config.validateSettings()
        return config
    }

    func run() throws {
        let level: Logger.Level
        switch getenv("VMM_LOG").map({ String(cString: $0) }) {
        case "debug"?: level = .debug
        case "trace"?: level = .trace
        case "warning"?, "quiet"?: level = .warning
        default: level = .info
        }
        LoggingSystem.bootstrap { VMMLogHandler(label: $0, level: level) }
        let log = Logger(label: "vmm")

        let status: Int32
        do {
            let machine: Machine
            if let restore {
                if kernel != nil || initrd != nil || cmdline != nil || !disk.isEmpty || !net.isEmpty || cdrom != nil {
                    throw VMMError.unsupported("--restore takes the machine from the state file; give no machine flags with it")
                }
                machine = try Self.restoreMachine(path: restore, log: log)
            } else {
                machine = try Machine(config: try machineConfig(), log: log)
            }
            SignalWatcher.blockSignals()   // before any thread starts, so all inherit the mask
            try machine.start()
            let saveTo = self.saveTo
            let watcher = try SignalWatcher { [machine] sig in
                if sig == SIGUSR2 {
                    if let saveTo { Self.save(machine, to: saveTo, log: log) }
                    return
                }
                machine.stop(reason: "received \(SignalWatcher.name(sig))")
            }
            defer { withExtendedLifetime(watcher) {} }
            let outcome = machine.wait()
            if getenv("VMM_STATS") != nil {
                log.info("memory: \(MemoryStatistics.measure(guest: machine.memory))")
            }
            switch outcome {
            case .error: log.error("\(outcome)")
            default: log.info("\(outcome)")
            }
            status = outcome.exitStatus
        } catch {
            log.error("\(error)")
            status = MachineOutcome.error("").exitStatus
        }
        if status != 0 { throw ExitCode(status) }
    }

    static func restoreMachine(path: String, log: Logger) throws -> Machine {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMMError.machine("cannot open the state file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let start = HostClock.nanoseconds()
        let machine = try Machine.restore(fd: fd, console: .standardIO, log: log)
        log.info("restored \(path) in \(milliseconds(since: start)) ms")
        return machine
    }

    /// Pauses, writes the state to `path` (through a temporary file renamed into place),
    /// stops the machine. On failure the machine resumes and the temporary file is removed.
    static func save(_ machine: Machine, to path: String, log: Logger) {
        let start = HostClock.nanoseconds()
        let tmp = path + ".partial"
        do {
            let stats = try machine.saveThenStop(reason: "saved to \(path)") {
                let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw VMMError.machine("cannot create \(tmp): \(String(cString: strerror(errno)))") }
                let stats: SnapshotStatistics
                do {
                    stats = try machine.saveState(to: fd)
                    guard fsync(fd) == 0 else { throw VMMError.machine("cannot write \(tmp): \(String(cString: strerror(errno)))") }
                } catch {
                    close(fd)
                    unlink(tmp)
                    throw error
                }
                guard close(fd) == 0, rename(tmp, path) == 0 else {
                    let why = String(cString: strerror(errno))
                    unlink(tmp)
                    throw VMMError.machine("cannot write \(path): \(why)")
                }
                return stats
            }
            log.info("saved to \(path): \(stats.bytes) bytes, \(stats.memoryPages) pages, \(milliseconds(since: start)) ms")
        } catch {
            log.error("cannot save the machine: \(error); it runs on")
        }
    }

    /// Milliseconds (one decimal) since `start` (`HostClock` nanoseconds), for the log lines.
    static func milliseconds(since start: UInt64) -> String {
        let ns = HostClock.nanoseconds() - start
        return String(ns / 1_000_000) + "." + String((ns / 100_000) % 10)
    }
}
