import ArgumentParser

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
        [Start.self, Stop.self, Status.self, Console.self, Pause.self, Unpause.self, Wait.self,
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
    if names.contains(first) { return .success(args) }
    let matches = names.filter { $0.hasPrefix(first) }
    if matches.count == 1 { return .success([matches[0]] + args.dropFirst()) }
    if matches.isEmpty { return .failure(CommandLineError(message: "unknown command: \(first)")) }
    return .failure(CommandLineError(message: "ambiguous command: \(first) (\(matches.sorted().joined(separator: ", ")))"))
}
