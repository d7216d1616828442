import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

/// vmctl(8): control vmd.
struct VMCTL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmctl",
        abstract: "Control the virtual machine daemon, vmd.",
        discussion: """
            Commands may be abbreviated to any unique prefix (sta is ambiguous, star is start).
            vmctl talks to vmd over --socket, $VMD_SOCKET or /var/run/vmd.sock.
            """,
        subcommands: commandList)

    static var commandList: [any ParsableCommand.Type] {
        [Start.self, Stop.self, Status.self, Console.self, Pause.self, Unpause.self, Send.self, Receive.self, Wait.self,
         Load.self, Reload.self, Reset.self, Log.self, Create.self]
    }
}

/// Expands a unique prefix of a command (`vmctl stat`), as OpenBSD's vmctl does.
struct CommandLineError: Error { var message: String }

func expandCommand(_ args: [String]) -> Result<[String], CommandLineError> {
    guard let first = args.first, !first.hasPrefix("-") else { return .success(args) }
    var names: [String] = []
    for c in VMCTL.commandList {
        let cfg = c.configuration
        names.append(cfg.commandName ?? String(describing: c).lowercased())
        names += cfg.aliases
    }
    if names.contains(first) || first == "help" { return .success(args) }
    let matches = names.filter { $0.hasPrefix(first) }
    if matches.count == 1 { return .success([matches[0]] + args.dropFirst()) }
    if matches.isEmpty { return .failure(CommandLineError(message: "unknown command: \(first)")) }
    return .failure(CommandLineError(message: "ambiguous command: \(first) (\(matches.sorted().joined(separator: ", ")))"))
}

/// `vmctl` alone: OpenBSD's usage line, exit 1.
func usageExit() -> Never {
    var b = Array("usage:\tvmctl [-v] command [arg ...]\n".utf8)
    _ = write(2, &b, b.count)
    exit(1)
}

/// Parses and runs the command. Usage errors exit 1 as OpenBSD's vmctl does (ArgumentParser's
/// default is 64, EX_USAGE) with the command's usage; help exits 0. An error while running
/// is one line, `vmctl: message`, exit 1.
func runVMCTL(_ args: [String]) -> Never {
    var command: any ParsableCommand
    do {
        command = try VMCTL.parseAsRoot(args)
    } catch {
        let code = VMCTL.exitCode(for: error)
        let message = VMCTL.fullMessage(for: error)
        if !message.isEmpty {
            var b = Array((message + "\n").utf8)
            _ = write(code == .success ? 1 : 2, &b, b.count)
        }
        exit(code == .validationFailure ? 1 : code.rawValue)
    }
    do {
        try command.run()
        exit(0)
    } catch {
        let code = VMCTL.exitCode(for: error)
        if code == .success {   // `vmctl help [command]` ends with a clean exit carrying the text
            var b = Array((VMCTL.fullMessage(for: error) + "\n").utf8)
            _ = write(1, &b, b.count)
            exit(0)
        }
        let message = (error as? ValidationError)?.message ?? VMCTL.message(for: error)
        if !message.isEmpty {
            var b = Array("vmctl: \(message)\n".utf8)
            _ = write(2, &b, b.count)
        }
        exit(code == .validationFailure ? 1 : code.rawValue)
    }
}

/// Short options that take a value, per command: `-m1G`, `-ddisk.img`, `-b/bsd.rd` and
/// `-Bnet` are split into flag and value, as getopt(3) reads them.
let valueOptions: [String: Set<Character>] = [
    "start": ["B", "b", "d", "i", "m", "n", "r", "t"],
    "create": ["b", "i", "s"],
    "receive": ["d"],
]

func splittingGluedValues(_ args: [String]) -> [String] {
    guard let command = args.first, let letters = valueOptions[command] else { return args }
    var out = [command]
    var rest = args.dropFirst()
    while let a = rest.popFirst() {
        if a == "--" {
            out.append(a)
            out += rest
            break
        }
        let chars = Array(a)
        if chars.count > 2, chars[0] == "-", chars[1] != "-", letters.contains(chars[1]) {
            out += ["-" + String(chars[1]), String(chars[2...])]
        } else {
            out.append(a)
        }
    }
    return out
}
