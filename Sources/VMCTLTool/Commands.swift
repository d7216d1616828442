#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import Control
import VMConfig

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start a VM (or create one from the options).")

    @Flag(name: .customShort("c"), help: "Attach to the console once started.") var console = false
    @Flag(name: .customShort("L"), help: "Add a local network interface.") var local = false
    @Option(name: .customShort("B"), help: ArgumentHelp("Boot from cdrom, disk or net.", valueName: "device")) var bootDevice: String?
    @Option(name: .customShort("b"), help: ArgumentHelp("Kernel or BIOS image to boot.", valueName: "path")) var boot: String?
    @Option(name: .customShort("d"), help: ArgumentHelp("Disk image (repeatable).", valueName: "disk")) var disks: [String] = []
    @Option(name: .customShort("i"), help: ArgumentHelp("Number of network interfaces.", valueName: "count")) var interfaces: Int?
    @Option(name: .customShort("m"), help: ArgumentHelp("Memory size (e.g. 512M, 2G).", valueName: "size")) var memory: String?
    @Option(name: .customShort("n"), help: ArgumentHelp("Add an interface on this switch (repeatable).", valueName: "switch")) var switches: [String] = []
    @Option(name: .customShort("r"), help: ArgumentHelp("ISO image for the cdrom.", valueName: "iso")) var cdrom: String?
    @Option(name: .customShort("t"), help: ArgumentHelp("Start as an instance of this VM.", valueName: "name")) var template: String?
    @Option(name: .long, help: ArgumentHelp("Initial ramdisk for a Linux kernel.", valueName: "path")) var initrd: String?
    @Option(name: .long, help: ArgumentHelp("Kernel command line.", valueName: "text")) var cmdline: String?
    @Option(name: .long, help: ArgumentHelp("Number of virtual CPUs.", valueName: "n")) var vcpus: Int?
    @Option(name: .long, help: ArgumentHelp("kvm, emulator or auto.", valueName: "accel")) var accel: String?
    @Option(name: .customLong("cpu-level"), help: ArgumentHelp("Software CPU level: baseline, v2 or v3.", valueName: "level")) var cpuLevel: String?
    @Argument(help: ArgumentHelp("The VM's id or name.", valueName: "id|name")) var target: String

    func validate() throws {
        if let b = bootDevice, BootDevice(rawValue: b) == nil { throw ValidationError("invalid boot device: \(b) (cdrom, disk or net)") }
        if let a = accel, VMConfig.Accelerator(rawValue: a) == nil { throw ValidationError("invalid accel: \(a) (kvm, emulator or auto)") }
        if let l = cpuLevel, CPULevel(rawValue: l) == nil {
            throw ValidationError("invalid cpu level: \(l) (\(CPULevel.allCases.map(\.rawValue).joined(separator: " or ")))")
        }
        if let i = interfaces, i < 0 || i > VMLimits.maxInterfaces { throw ValidationError("invalid interface count: \(i)") }
        if let v = vcpus, v < 1 || v > VMLimits.maxVCPUs { throw ValidationError("invalid vcpus: \(v)") }
        if disks.count > VMLimits.maxDisks { throw ValidationError("too many disks") }
    }

    func run() throws {
        var r = StartRequest(target: VMIdentifier(parsing: target))
        r.template = template
        r.boot = boot.map(absolute)
        r.bootDevice = bootDevice.flatMap(BootDevice.init(rawValue:))
        r.cdrom = cdrom.map(absolute)
        r.disks = disks.map(diskSpec)
        r.interfaceCount = interfaces
        r.localInterface = local
        r.switches = switches
        r.memory = try memory.map { try parseSize($0, type: "memory") }
        r.vcpus = vcpus
        r.initrd = initrd.map(absolute)
        r.cmdline = cmdline
        r.accel = accel.flatMap(VMConfig.Accelerator.init(rawValue:))
        r.cpuLevel = cpuLevel.flatMap(CPULevel.init(rawValue:))
        r.attachConsole = console
        let (reply, fds) = try request(.start(r))
        guard case .vm(let s) = reply else { return }
        say("vmctl: started vm \(s.id) successfully, tty \(s.tty ?? "-")")
        if console, let fd = fds.first {
            for x in fds.dropFirst() { close(x) }
            ConsoleSession.run(fd: fd, tty: s.tty ?? "console")
        } else {
            for x in fds { close(x) }
        }
    }
}

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop a VM, or all with -a.")
    @Flag(name: .customShort("f"), help: "Forcefully stop without a graceful shutdown.") var force = false
    @Flag(name: .customShort("w"), help: "Wait until the VM has stopped.") var wait = false
    @Flag(name: .customShort("a"), help: "Stop all VMs.") var all = false
    @Argument(help: ArgumentHelp("The VM's id or name.", valueName: "id|name")) var target: String?

    func validate() throws {
        if all == (target != nil) { throw ValidationError("give either a VM or -a") }
    }

    func run() throws {
        let (reply, _) = try request(.stop(target: target.map(VMIdentifier.init(parsing:)), force: force, wait: wait))
        switch reply {
        case .vm(let s):
            if wait || s.state == .stopped {
                say("stopping vm \(s.name): vm \(s.name) stopped\(s.lastExit.map { " (\($0))" } ?? "")")
            } else {
                say("stopping vm \(s.name): requested to shutdown vm \(s.id)")
            }
        case .ok(let m): if let m { say(m) }
        default: break
        }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List VMs (all, or one).", aliases: ["show"])
    @Flag(name: .customShort("r"), help: "Only running VMs.") var runningOnly = false
    @Argument(help: ArgumentHelp("The VM's id or name.", valueName: "id|name")) var target: String?

    func run() throws {
        let (reply, _) = try request(.status(target: target.map(VMIdentifier.init(parsing:))))
        guard case .status(var list) = reply else { return }
        if runningOnly { list = list.filter { $0.state != .stopped } }
        var out = StatusTable.format(list)
        if verboseOutput {
            for s in list { if let e = s.lastExit { out += "vm \(s.name): last exit: \(e)\n" } }
        }
        say(out.hasSuffix("\n") ? String(out.dropLast()) : out)
    }
}

struct Console: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Attach to a VM's console (~. detaches).")
    @Argument(help: ArgumentHelp("The VM's id or name.", valueName: "id|name")) var target: String
    func run() throws {
        let (reply, fds) = try request(.console(target: VMIdentifier(parsing: target)))
        guard case .vm(let s) = reply, let fd = fds.first else { throw fail("vm \(target): no console") }
        ConsoleSession.run(fd: fd, tty: s.tty ?? "console")
    }
}

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a VM's state to standard output and stop it.",
        discussion: "The stream (docs/snapshot.md) can be run again with `vmm --restore FILE`. Only root or the VM's owner may send it.")
    @Argument(help: ArgumentHelp("The VM's id or name.", valueName: "id|name")) var target: String
    func run() throws {
        if isatty(STDOUT_FILENO) != 0 { throw fail("send: standard output is a terminal; redirect it to a file or a pipe") }
        let (reply, fds) = try request(.send(target: VMIdentifier(parsing: target)))
        guard case .vm = reply, let fd = fds.first else { throw fail("vm \(target): no state stream") }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        var total = 0
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw fail("send: reading the state stream: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            var done = 0
            while done < n {
                // SAFETY: writes from inside buf, n - done bytes after done.
                let w = buf.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress! + done, n - done) }
                if w < 0 && errno == EINTR { continue }
                if w < 0 { throw fail("send: writing standard output: \(String(cString: strerror(errno)))") }
                done += w
            }
            total += n
        }
        // A complete stream ends with the 16-byte END section; an empty one means the VM refused.
        if total == 0 { throw fail("vm \(target): the VM could not be sent (see vmd's log)") }
        FileHandle.standardError.write(Data("vmctl: sent vm \(target) successfully (\(total) bytes)\n".utf8))
    }
}

struct Receive: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a VM from a state stream on standard input.",
        discussion: "The stream comes from `vmctl send` (or `vmm --save-to`). The VM's disks are its vm.conf disks (with -t the template's), or -d's; the stream's own file names are not used. Start's permissions apply, and with -t the template's allow instance rules.")
    @Option(name: .customShort("d"), help: ArgumentHelp("Disk image (repeatable), one per disk of the sent machine.", valueName: "disk")) var disks: [String] = []
    @Option(name: .customShort("t"), help: ArgumentHelp("Receive as a new instance of this VM.", valueName: "template")) var template: String?
    @Argument(help: ArgumentHelp("The name the VM runs as.", valueName: "name")) var name: String

    func validate() throws {
        if disks.count > VMLimits.maxDisks { throw ValidationError("too many disks") }
    }

    func run() throws {
        if isatty(STDIN_FILENO) != 0 { throw fail("receive: standard input is a terminal; redirect it from a file or a pipe") }
        let (reply, fds) = try request(.receive(name: name, disks: disks.map(diskSpec), template: template), fds: [STDIN_FILENO])
        for x in fds { close(x) }
        guard case .vm(let s) = reply else { return }
        say("vmctl: started vm \(s.id) successfully, tty \(s.tty ?? "-")")
    }
}

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Pause a running VM.")
    @Argument(help: ArgumentHelp("The VM's id or name.", valueName: "id|name")) var target: String
    func run() throws {
        _ = try request(.pause(target: VMIdentifier(parsing: target)))
        say("vmctl: paused vm \(target) successfully")
    }
}

struct Unpause: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Resume a paused VM.")
    @Argument(help: ArgumentHelp("The VM's id or name.", valueName: "id|name")) var target: String
    func run() throws {
        _ = try request(.unpause(target: VMIdentifier(parsing: target)))
        say("vmctl: unpaused vm \(target) successfully")
    }
}

struct Wait: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Wait until a VM has stopped.")
    @Argument(help: ArgumentHelp("The VM's id or name.", valueName: "id|name")) var target: String
    func run() throws {
        let (reply, _) = try request(.wait(target: VMIdentifier(parsing: target)))
        if case .vm(let s) = reply {
            say("vmctl: vm \(s.name) stopped\(s.lastExit.map { ": \($0)" } ?? "")")
        }
    }
}

struct Load: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Load VMs and switches from a configuration file.")
    @Argument(help: ArgumentHelp("A vm.conf file.", valueName: "file")) var file: String
    func run() throws { _ = try request(.load(path: absolute(file))) }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Reload vmd's configuration file.")
    func run() throws { _ = try request(.reload) }
}

struct Reset: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop VMs and/or reset switches, then reload.")
    @Argument(help: ArgumentHelp("all, switches or vms (any case).", valueName: "all|switches|vms")) var scope: String = "all"
    /// OpenBSD compares the word with strcasecmp: `reset ALL` works.
    var parsedScope: ResetScope? { ResetScope(rawValue: scope.lowercased()) }
    func validate() throws {
        if parsedScope == nil { throw ValidationError("reset: all, switches or vms") }
    }
    func run() throws { _ = try request(.reset(parsedScope ?? .all)) }
}

struct Log: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Set vmd's log level.")
    @Argument(help: ArgumentHelp("brief or verbose, or a prefix (any case).", valueName: "brief|verbose")) var level: String
    /// OpenBSD matches with strncasecmp over the word's length: `log v`, `log VERBOSE`.
    var verbose: Bool? {
        let l = level.lowercased()
        if "brief".hasPrefix(l) { return false }
        if "verbose".hasPrefix(l) { return true }
        return nil
    }
    func validate() throws {
        if verbose == nil { throw ValidationError("log: brief or verbose") }
    }
    func run() throws { _ = try request(.log(verbose: verbose ?? false)) }
}
