#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import Logging
import Control
import VMConfig
import VMDCore

/// vmd(8): the virtual machine daemon.
struct VMDCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmd",
        abstract: "Run virtual machines described in vm.conf and serve vmctl.",
        discussion: "Without -d, vmd detaches and logs to syslog. SIGHUP reloads the configuration; SIGTERM stops every VM and exits.")

    @Flag(name: .customShort("d"), help: "Do not daemonize; log to standard error.")
    var foreground = false

    @Flag(name: .customShort("n"), help: "Check the configuration file only, print \"configuration OK\" or the errors.")
    var checkOnly = false

    @Flag(name: .customShort("v"), help: "Verbose logging (repeat for more).")
    var verbose: Int

    @Option(name: .customShort("D"), help: ArgumentHelp("Define a macro for the configuration file.", valueName: "macro=value"))
    var defines: [String] = []

    @Option(name: .customShort("f"), help: ArgumentHelp("Configuration file.", valueName: "file"))
    var file = "/etc/vm.conf"

    @Option(name: .long, help: ArgumentHelp("Control socket (default $VMD_SOCKET or /var/run/vmd.sock).", valueName: "path"))
    var socket: String?

    @Option(name: .customLong("vm-user"), help: ArgumentHelp("When vmd runs as root, one user every VM process becomes once it holds its files (default: each VM process its own uid and gid, --vm-uid-base + the VM's id).", valueName: "user"))
    var vmUser: String?

    @Option(name: .customLong("vm-uid-base"), help: ArgumentHelp("Without --vm-user, the VM process of VM id N runs as uid and gid BASE + N (default 1073741824, 2^30).", valueName: "base"))
    var vmUIDBase: UInt32 = 1 << 30

    @Option(name: .customLong("vm-uid-count"), help: ArgumentHelp("How many ids the VM uid range holds (VM ids 1 to COUNT-1; default 65536). No host user, group or /etc/subuid, /etc/subgid range may lie in it.", valueName: "count"))
    var vmUIDCount: UInt32 = VMUIDRange.defaultCount

    @Option(name: .customLong("cgroup"), help: ArgumentHelp("The cgroup v2 directory in which each VM process gets a cgroup of its own with memory, pids and cpu limits (default: vmd's own cgroup), or \"none\".", valueName: "dir"))
    var cgroup: String?

    @Flag(name: .customLong("fake-vms"), help: ArgumentHelp("Run stand-in guests instead of machines (tests).", visibility: .hidden))
    var fakeVMs = false

    @Flag(name: .customLong("detached"), help: ArgumentHelp(visibility: .private))
    var detached = false

    func run() throws {
        var macros: [String: String] = [:]
        for d in defines {
            guard let (k, v) = ConfigParser.parseMacroDefinition(d) else {
                throw ValidationError("could not parse macro definition \(d)")
            }
            macros[k] = v
        }
        if let vmUser, getpwnam(vmUser) == nil {
            throw ValidationError("--vm-user \(vmUser): no such user")
        }
        let vmUIDs = VMUIDRange(base: vmUIDBase, count: vmUIDCount)
        if !checkOnly, vmUser == nil, geteuid() == 0 {
            // A VM process must never get a uid or gid that may own files on the host.
            let problems = HostIDs.check(vmUIDs)
            if !problems.isEmpty {
                for p in problems.prefix(5) { printError("vmd: \(p)") }
                throw ExitCode(1)
            }
        }
        let options = DaemonOptions(
            configPath: file, macros: macros,
            socketPath: socket ?? ProcessInfo.processInfo.environment["VMD_SOCKET"] ?? ControlProtocol.defaultSocketPath,
            fakeVMs: fakeVMs, verbose: verbose, vmUser: vmUser, vmUIDs: vmUIDs, cgroup: cgroup)

        if checkOnly {
            do {
                let parsed = try ConfigParser(macros: macros).parse(path: file)
                for w in parsed.warnings { printError(w) }
                let owners = ConfigValidator.checkOwners(parsed.configuration, users: SystemUserDatabase())
                if !owners.isEmpty { throw ConfigError(owners) }
                print("configuration OK")
                return
            } catch {
                printError("\(error)")
                throw ExitCode(1)
            }
        }

        if !foreground && !detached {
            // Detach by starting ourselves again in a new session (no fork without exec).
            let devnull = open("/dev/null", O_RDWR)
            let args = [Spawn.selfExecutable] + Array(CommandLine.arguments.dropFirst()) + ["--detached"]
            _ = try Spawn.run(Spawn.selfExecutable, args, fds: [0: devnull, 1: devnull, 2: devnull])
            return
        }

        let level: Logger.Level = verbose > 0 ? .debug : .info
        let useSyslog = detached
        if useSyslog { openlog("vmd", LOG_PID | LOG_NDELAY, LOG_DAEMON) }
        LoggingSystem.bootstrap { label in
            var h: any LogHandler = useSyslog ? SyslogLogHandler(label: label) : StderrLogHandler(label: label)
            h.logLevel = level
            return h
        }
        let log: Logger = {
            var l = Logger(label: "vmd")
            l.logLevel = level
            return l
        }()

        // Signals are taken synchronously by one thread; every other thread blocks them.
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGHUP, SIGTERM, SIGINT] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)

        // Bridges and VRFs a vmd that was killed left behind (taps went with its VMs).
        VMNetwork.removeOwnedLinks(socket: options.socketPath, log: log)
        let daemon = Daemon(options: options, log: log)
        do {
            try daemon.loadInitialConfig()
        } catch {
            printError("\(error)")
            log.error("\(error.description)")
            throw ExitCode(1)
        }
        do {
            try daemon.listen()
        } catch {
            log.error("\(error)")
            printError("vmd: \(error)")
            throw ExitCode(1)
        }
        let signals = Thread {
            var set = sigset_t()
            sigemptyset(&set)
            for s in [SIGHUP, SIGTERM, SIGINT] { sigaddset(&set, s) }
            while true {
                var sig: Int32 = 0
                guard sigwait(&set, &sig) == 0 else { continue }
                if sig == SIGHUP {
                    log.info("SIGHUP: reloading \(options.configPath)")
                    _ = daemon.reload()
                } else {
                    daemon.shutdownAll()
                }
            }
        }
        signals.start()
        daemon.serve()
    }
}
