/// Reserved words of vm.conf: OpenBSD's list plus ours (accel, cmdline, cpu-level, initrd, vcpus).
/// A reserved word can only be used as a name when quoted.
public enum Keyword: String, CaseIterable, Sendable {
    case accel, add, agentx, allow, boot, cdrom, cmdline, context, delay, device, disable, disk
    case cpuLevel = "cpu-level"
    case down, enable, format, group, id, include, inet6, initrd, instance, interface
    case interfaces, lladdr, local, locked, memory, net, owner, parallel, path, prefix, rdomain
    case sev, seves, size, socket, staggered, start, `switch`, up, vcpus, vm
}

enum TokenKind: Equatable, Sendable {
    case keyword(Keyword)
    /// A word or a quoted string (quoted words are never keywords).
    case string(String)
    /// An integer; `text` is how it was written (macros keep it).
    case number(Int64, text: String)
    case newline
    case punct(Character)
    case eof
}

struct Token: Sendable {
    var kind: TokenKind
    var line: Int
    var file: String
    var location: SourceLocation { SourceLocation(file: file, line: line) }

    /// How an error message names this token.
    var quoted: String {
        switch kind {
        case .keyword(let k): return "\"\(k.rawValue)\""
        case .string(let s): return "\"\(s)\""
        case .number(_, let t): return "\"\(t)\""
        case .newline: return "end of line"
        case .punct(let c): return "\"\(c)\""
        case .eof: return "end of file"
        }
    }
}
