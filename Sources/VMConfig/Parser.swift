#if canImport(Glibc)
import Glibc
#endif

/// The result of reading a vm.conf: the configuration plus warnings (unused macros, rounding).
public struct ParsedConfiguration: Sendable {
    public var configuration: VMConfiguration
    public var warnings: [String]
}

/// Reads the bytes of a configuration file; tests substitute their own.
public typealias ConfigFileLoader = @Sendable (String) throws -> [UInt8]

/// Recursive-descent parser for OpenBSD's vm.conf(5) grammar plus our extensions.
///
/// Statements end at a newline; blocks are `{ ... }` with one option per line. Adjacent
/// strings are joined (`"a" "b"` is `ab`), as OpenBSD's grammar does. The first syntax error
/// stops parsing; errors in values (a bad size, a setting given twice) are collected and all
/// reported. Includes are resolved relative to the including file's directory.
public final class ConfigParser {
    private struct Macro {
        var value: String
        var persistent: Bool
        var used: Bool
        var location: SourceLocation?
    }

    private var macros: [String: Macro] = [:]
    private var macroOrder: [String] = []
    private var lexers: [Lexer] = []
    private var lookahead: Token?
    private var config = VMConfiguration()
    private var diagnostics: [ConfigDiagnostic] = []
    private var warnings: [String] = []
    private let loader: ConfigFileLoader
    public static let maxIncludeDepth = 16
    /// Errors listed before the parse gives up.
    public static let maxErrors = 100
    private var gaveUp = false
    /// The token `advance` returned last: recovery knows whether the error already took the
    /// end of its line.
    private var lastToken: Token?

    /// - Parameter macros: `-D name=value` definitions; the file cannot redefine them.
    public init(macros: [String: String] = [:], loader: @escaping ConfigFileLoader = ConfigParser.readFile) {
        self.loader = loader
        for (k, v) in macros.sorted(by: { $0.key < $1.key }) {
            self.macros[k] = Macro(value: v, persistent: true, used: false, location: nil)
            macroOrder.append(k)
        }
    }

    /// Splits `name=value` as vmd's `-D` does (at the last `=`).
    public static func parseMacroDefinition(_ text: String) -> (String, String)? {
        guard let eq = text.lastIndex(of: "="), eq != text.startIndex else { return nil }
        return (String(text[..<eq]), String(text[text.index(after: eq)...]))
    }

    public static let readFile: ConfigFileLoader = { path in
        guard let f = fopen(path, "r") else {
            throw ConfigFileError(path: path, errno: errno)
        }
        defer { fclose(f) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
            if n > 0 { out.append(contentsOf: buf[0..<n]) }
            if n < buf.count {
                if ferror(f) != 0 { throw ConfigFileError(path: path, errno: errno) }
                break
            }
            if out.count > 16 << 20 { throw ConfigFileError(path: path, errno: EFBIG) }
        }
        return out
    }

    /// Parses and validates the file at `path`.
    public func parse(path: String) throws(ConfigError) -> ParsedConfiguration {
        let bytes: [UInt8]
        do { bytes = try loader(path) } catch {
            throw ConfigError([ConfigDiagnostic(SourceLocation(file: path, line: 0),
                                                "failed to open \(path): \(error)")])
        }
        return try parse(contents: bytes, name: path)
    }

    /// Parses and validates `text` as if it were the file `name`.
    public func parse(text: String, name: String) throws(ConfigError) -> ParsedConfiguration {
        try parse(contents: Array(text.utf8), name: name)
    }

    public func parse(contents: [UInt8], name: String) throws(ConfigError) -> ParsedConfiguration {
        lexers = [makeLexer(name, contents)]
        do {
            try grammar()
        } catch {
            diagnostics.append(error)
        }
        for name in macroOrder {
            if let m = macros[name], !m.used {
                warnings.append("warning: macro '\(name)' not used")
            }
        }
        if diagnostics.isEmpty {
            diagnostics += ConfigValidator.validate(config)
        }
        if !diagnostics.isEmpty { throw ConfigError(diagnostics) }
        return ParsedConfiguration(configuration: config, warnings: warnings)
    }

    private func makeLexer(_ name: String, _ bytes: [UInt8]) -> Lexer {
        Lexer(file: name, contents: bytes) { [unowned self] n in
            guard var m = self.macros[n] else { return nil }
            m.used = true
            self.macros[n] = m
            return m.value
        }
    }

    // MARK: tokens

    private func peek() throws(ConfigDiagnostic) -> Token {
        if let t = lookahead { return t }
        while true {
            guard let lx = lexers.last else { return Token(kind: .eof, line: 0, file: "") }
            let t = try lx.next()
            if t.kind == .eof && lexers.count > 1 {
                lexers.removeLast()
                continue
            }
            lookahead = t
            return t
        }
    }

    @discardableResult
    private func advance() throws(ConfigDiagnostic) -> Token {
        let t = try peek()
        lookahead = nil
        lastToken = t
        return t
    }

    private func syntaxError(_ t: Token) -> ConfigDiagnostic {
        ConfigDiagnostic(t.location, "syntax error near \(t.quoted)")
    }

    private func error(_ t: Token, _ message: String) {
        diagnostics.append(ConfigDiagnostic(t.location, message))
    }

    private func isKeyword(_ t: Token, _ k: Keyword) -> Bool { t.kind == .keyword(k) }
    private func isPunct(_ t: Token, _ c: Character) -> Bool { t.kind == .punct(c) }

    private func expect(_ k: Keyword) throws(ConfigDiagnostic) {
        let t = try advance()
        guard isKeyword(t, k) else { throw syntaxError(t) }
    }

    private func expectPunct(_ c: Character) throws(ConfigDiagnostic) {
        let t = try advance()
        guard isPunct(t, c) else { throw syntaxError(t) }
    }

    private func expectEndOfLine() throws(ConfigDiagnostic) {
        let t = try advance()
        guard t.kind == .newline || t.kind == .eof else { throw syntaxError(t) }
    }

    private func skipNewlines() throws(ConfigDiagnostic) {
        while try peek().kind == .newline { try advance() }
    }

    /// `string: STRING string | STRING` — adjacent strings are concatenated.
    private func string() throws(ConfigDiagnostic) -> (String, Token) {
        let t = try advance()
        guard case .string(var s) = t.kind else { throw syntaxError(t) }
        while case .string(let more) = try peek().kind {
            s += more
            try advance()
        }
        return (s, t)
    }

    private func number() throws(ConfigDiagnostic) -> (Int64, Token) {
        let t = try advance()
        guard case .number(let v, _) = t.kind else { throw syntaxError(t) }
        return (v, t)
    }

    // MARK: grammar

    private func grammar() throws(ConfigDiagnostic) {
        while true {
            do throws(ConfigDiagnostic) {
                if try statement() { return }
            } catch {
                try recover(error, stopAtBrace: false)
            }
        }
    }

    /// One top-level statement; true at the end of the input.
    private func statement() throws(ConfigDiagnostic) -> Bool {
        do {
            let t = try peek()
            switch t.kind {
            case .eof:
                return true
            case .newline:
                try advance()
            case .keyword(.include):
                try advance()
                let (path, pt) = try string()
                try expectEndOfLine()
                try include(path, at: pt)
            case .keyword(.local), .keyword(.socket), .keyword(.staggered), .keyword(.agentx):
                try globalOption()
                try expectEndOfLine()
            case .keyword(.switch):
                try switchBlock()
                try expectEndOfLine()
            case .keyword(.vm):
                try vmBlock()
                try expectEndOfLine()
            case .string(let name):
                try advance()
                try expectPunct("=")
                let vt = try advance()
                let value: String
                switch vt.kind {
                case .string(let s): value = s
                case .number(_, let text): value = text
                default: throw syntaxError(vt)
                }
                try expectEndOfLine()
                defineMacro(name, value, at: t)
            default:
                throw syntaxError(t)
            }
        }
        return false
    }

    private func include(_ path: String, at t: Token) throws(ConfigDiagnostic) {
        guard lexers.count < Self.maxIncludeDepth else {
            throw ConfigDiagnostic(t.location, "failed to include file \(path): includes nested too deeply")
        }
        var resolved = path
        if !path.hasPrefix("/"), let slash = t.file.lastIndex(of: "/") {
            resolved = String(t.file[...slash]) + path
        }
        do {
            let bytes = try loader(resolved)
            lexers.append(makeLexer(resolved, bytes))
        } catch {
            throw ConfigDiagnostic(t.location, "failed to include file \(path): \(error)")
        }
    }

    private func defineMacro(_ name: String, _ value: String, at t: Token) {
        guard name.utf8.allSatisfy({ c in
            (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x7a) || c == 0x5f
        }) else {
            error(t, "invalid macro name \"\(name)\": use letters, digits and underscores")
            return
        }
        if let old = macros[name] {
            if old.persistent { return }  // -D on the command line wins
        } else {
            macroOrder.append(name)
        }
        macros[name] = Macro(value: value, persistent: false, used: false, location: t.location)
    }

    private func globalOption() throws(ConfigDiagnostic) {
        let t = try advance()
        switch t.kind {
        case .keyword(.local):
            let n = try advance()
            if isKeyword(n, .inet6) {
                config.localInet6Enabled = true
                if isKeyword(try peek(), .prefix) {
                    try advance()
                    let (s, st) = try string()
                    switch parseLocalPrefix(s, v6: true) {
                    case .success(let p): config.localInet6Prefix = p
                    case .failure(let why): error(st, "invalid local inet6 prefix: \(s): \(why.message)")
                    }
                }
            } else if isKeyword(n, .prefix) {
                let (s, st) = try string()
                switch parseLocalPrefix(s, v6: false) {
                case .success(let p): config.localPrefix = p
                case .failure(let why): error(st, "invalid local prefix: \(s): \(why.message)")
                }
            } else {
                throw syntaxError(n)
            }
        case .keyword(.socket):
            try expect(.owner)
            config.socketOwnerLocation = t.location
            config.socketOwner = try ownerID().0
        case .keyword(.agentx):
            // parse.y 1.72: `agentx [context STRING] [path STRING]`, each at most once.
            var a = AgentXSettings()
            while true {
                let n = try peek()
                if isKeyword(n, .context) {
                    try advance()
                    let (c, ct) = try string()
                    once(a.context, "agentx context", ct)
                    if c.utf8.count > 32 { error(ct, "agentx context too long") }
                    a.context = c
                } else if isKeyword(n, .path) {
                    try advance()
                    let (p, pt) = try string()
                    once(a.path, "agentx path", pt)
                    if !p.hasPrefix("/") { error(pt, "agentx path is not absolute") }
                    if p.utf8.count > 107 { error(pt, "agentx path too long") }
                    a.path = p
                } else {
                    break
                }
            }
            config.agentx = a
        case .keyword(.staggered):
            try expect(.start)
            try expect(.parallel)
            let (p, pt) = try number()
            try expect(.delay)
            let (d, dt) = try number()
            if p < 1 || p > 1024 { error(pt, "invalid staggered start parallelism: \(p)") }
            if d < 0 || d > 86400 { error(dt, "invalid staggered start delay: \(d)") }
            config.staggeredStart = StaggeredStart(parallel: Int(clamping: p), delay: Int(clamping: d))
        default:
            throw syntaxError(t)
        }
    }

    private func ownerID() throws(ConfigDiagnostic) -> (OwnerSpec, Token) {
        let t = try advance()
        switch t.kind {
        case .number(let v, _):
            if v < 0 || v > Int64(UInt32.max) - 1 { error(t, "invalid user id: \(v)") }
            return (OwnerSpec(user: String(v)), t)
        case .string(let s):
            return (OwnerSpec(parsing: s), t)
        default:
            throw syntaxError(t)
        }
    }

    /// A block body: `'{' optnl (item (nl | before '}'))* '}'`.
    private func block(_ item: () throws(ConfigDiagnostic) -> Void) throws(ConfigDiagnostic) {
        try expectPunct("{")
        try skipNewlines()
        var items = 0
        let errorsBefore = diagnostics.count
        while true {
            let t = try peek()
            if isPunct(t, "}") {
                // parse.y's option lists need one option: `vm x { }` is a syntax error
                // (unless the statement already has one, as upstream reports one per line).
                if items == 0 && diagnostics.count == errorsBefore { throw syntaxError(t) }
                try advance()
                return
            }
            items += 1
            do throws(ConfigDiagnostic) {
                try item()
                let after = try peek()
                if isPunct(after, "}") { continue }
                guard after.kind == .newline else { throw syntaxError(after) }
            } catch {
                try recover(error, stopAtBrace: true)
                try skipNewlines()
                if try peek().kind == .eof { return }   // the error said so; no cascade
            }
            try skipNewlines()
        }
    }

    /// Records a diagnostic, or stops the parse (once) when there are too many.
    private func record(_ error: ConfigDiagnostic) throws(ConfigDiagnostic) {
        if gaveUp { throw error }
        diagnostics.append(error)
        if diagnostics.count >= Self.maxErrors {
            gaveUp = true
            throw ConfigDiagnostic(error.location, "too many errors, giving up")
        }
    }

    /// Error recovery as parse.y's `grammar error '\n'`: the error is recorded, the rest of its
    /// line skipped, and parsing goes on, so every error of a file is listed. Inside a block
    /// the skip stops before a `}` that closes it (`vm x { bad }` ends the block). After
    /// `maxErrors` the parse stops.
    private func recover(_ error: ConfigDiagnostic, stopAtBrace: Bool) throws(ConfigDiagnostic) {
        try record(error)
        if lookahead == nil, let last = lastToken, last.kind == .newline || last.kind == .eof {
            lastToken = nil
            return
        }
        var depth = 0
        while true {
            let t: Token
            do throws(ConfigDiagnostic) { t = try peek() } catch {
                try record(error)
                continue
            }
            if t.kind == .newline || t.kind == .eof { return }
            if isPunct(t, "{") { depth += 1 }
            if isPunct(t, "}") {
                if depth == 0 && stopAtBrace { return }
                depth -= 1
            }
            try advance()
        }
    }

    private func switchBlock() throws(ConfigDiagnostic) {
        let kw = try advance()
        let (name, _) = try string()
        var sw = SwitchDefinition(name: name, location: kw.location)
        var seenInterface = false
        try block { () throws(ConfigDiagnostic) in
            let t = try advance()
            switch t.kind {
            case .keyword(.enable): sw.enabled = true
            case .keyword(.disable): sw.enabled = false
            case .keyword(.group):
                let (g, gt) = try string()
                if let m = groupNameProblem(g) { error(gt, m) }
                sw.group = g
            case .keyword(.interface):
                let (i, it) = try string()
                if seenInterface { error(t, "switch interface specified more than once") }
                seenInterface = true
                if !isValidInterfaceName(i) { error(it, "invalid switch interface: \(i)") }
                sw.interface = i
            case .keyword(.locked):
                try expect(.lladdr)
                sw.locked = true
            case .keyword(.rdomain):
                let (r, rt) = try number()
                if r < 0 || r > Int64(VMLimits.maxRDomain) { error(rt, "invalid rdomain: \(r)") }
                sw.rdomain = Int(clamping: r)
            case .keyword(.up): sw.up = true
            case .keyword(.down): sw.up = false
            default:
                throw syntaxError(t)
            }
        }
        if !seenInterface, let close = lastToken {
            // As parse.y: reported at the closing brace, with the file's other errors.
            error(close, "switch \"\(name)\" is missing interface name")
        }
        config.switches.append(sw)
    }

    private func vmBlock() throws(ConfigDiagnostic) {
        let kw = try advance()
        let (first, ft) = try string()
        var name = first
        var parent: String?
        if isKeyword(try peek(), .instance) {
            try advance()
            parent = first
            name = try string().0
        }
        if name.utf8.count > VMLimits.maxNameLength { error(ft, "vm name too long: \(name)") }
        var vm = VMDefinition(name: name, parent: parent, location: kw.location)
        try block { () throws(ConfigDiagnostic) in try vmOption(&vm) }
        config.vms.append(vm)
    }

    private func once<T>(_ value: T?, _ what: String, _ t: Token) {
        if value != nil { error(t, "\(what) specified more than once") }
    }

    /// The word after keyword `t` as one of `T`'s names; nil (after an error naming them
    /// all) when it is none of them.
    private func choice<T: RawRepresentable & CaseIterable>(_ current: T?, _ what: String, _ t: Token)
        throws(ConfigDiagnostic) -> T? where T.RawValue == String {
        let (word, wt) = try string()
        once(current, what, t)
        if let v = T(rawValue: word) { return v }
        let names = T.allCases.map(\.rawValue)
        let list = names.count > 1 ? names.dropLast().joined(separator: ", ") + " or " + names.last! : names.joined()
        error(wt, "unknown \(what) \(word): use \(list)")
        return nil
    }

    private func vmOption(_ vm: inout VMDefinition) throws(ConfigDiagnostic) {
        let t = try advance()
        switch t.kind {
        case .keyword(.enable): vm.enabled = true
        case .keyword(.disable): vm.enabled = false
        case .keyword(.disk):
            let (path, _) = try string()
            var format: DiskFormat?
            if isKeyword(try peek(), .format) {
                try advance()
                let (f, ftok) = try string()
                format = DiskFormat(rawValue: f.lowercased())
                if format == nil { error(ftok, "unrecognized disk format \(f)") }
            }
            if vm.disks.count >= VMLimits.maxDisks { error(t, "too many disks") }
            vm.disks.append(DiskSpec(path: path, format: format))
        case .keyword(.local), .keyword(.interface):
            var iface = InterfaceSpec()
            if isKeyword(t, .local) {
                try expect(.interface)
                iface.isLocal = true
            }
            if case .string(let n) = try peek().kind {
                let nt = try advance()
                if !isValidTapName(n) { error(nt, "invalid interface: \(n)") }
                iface.name = n
            }
            try interfaceOptions(&iface)
            if vm.interfaces.count >= VMLimits.maxInterfaces {
                error(t, "too many interfaces: \(vm.interfaces.count + 1)")
            }
            vm.interfaces.append(iface)
        case .keyword(.boot):
            if isKeyword(try peek(), .device) {
                try advance()
                let d = try advance()
                switch d.kind {
                case .keyword(.cdrom): vm.bootDevice = .cdrom
                case .keyword(.disk): vm.bootDevice = .disk
                case .keyword(.net): vm.bootDevice = .net
                default: throw syntaxError(d)
                }
            } else {
                let (path, _) = try string()
                once(vm.boot, "kernel", t)
                vm.boot = path
            }
        case .keyword(.cdrom):
            let (path, _) = try string()
            once(vm.cdrom, "cdrom", t)
            vm.cdrom = path
        case .keyword(.interfaces):
            let (n, nt) = try number()
            once(vm.interfaceCount, "interfaces", t)
            if n < 0 || n > Int64(VMLimits.maxInterfaces) { error(nt, "too many interfaces: \(n)") }
            vm.interfaceCount = Int(clamping: n)
        case .keyword(.memory):
            let st = try advance()
            let bytes: UInt64?
            let text: String
            switch st.kind {
            case .number(let v, let s):
                bytes = v >= 0 ? UInt64(v) : nil
                text = s
            case .string(let s):
                bytes = ScaledSize.parse(s)
                text = s
            default: throw syntaxError(st)
            }
            once(vm.memory, "memory", t)
            guard let b = bytes else {
                error(st, "failed to parse size: \(text)")
                return
            }
            guard b >= 1 << 20 else {
                error(st, "failed to parse size: \(text): size must be at least one megabyte")
                return
            }
            let rounded = b & ~UInt64((1 << 20) - 1)
            if rounded != b {
                warnings.append("\(st.location): memory size rounded to \(ScaledSize.format(rounded))")
            }
            vm.memory = rounded
        case .keyword(.owner):
            vm.owner = try ownerID().0
        case .keyword(.allow):
            try expect(.instance)
            try allowInstance(&vm.allowInstance)
        case .keyword(.sev):
            vm.sev = vm.sev == .seves ? .seves : .sev
        case .keyword(.seves):
            vm.sev = .seves
        case .keyword(.vcpus):
            let (n, nt) = try number()
            once(vm.vcpus, "vcpus", t)
            if n < 1 || n > Int64(VMLimits.maxVCPUs) {
                error(nt, "invalid vcpus: \(n) (1 to \(VMLimits.maxVCPUs))")
            }
            vm.vcpus = Int(clamping: n)
        case .keyword(.initrd):
            let (path, _) = try string()
            once(vm.initrd, "initrd", t)
            vm.initrd = path
        case .keyword(.cmdline):
            let (text, _) = try string()
            once(vm.cmdline, "cmdline", t)
            vm.cmdline = text
        case .keyword(.accel):
            vm.accel = try choice(vm.accel, "accel", t) ?? vm.accel
        case .keyword(.cpuLevel):
            vm.cpuLevel = try choice(vm.cpuLevel, "cpu-level", t) ?? vm.cpuLevel
        default:
            throw syntaxError(t)
        }
    }

    private func startsInterfaceOption(_ t: Token) -> Bool {
        switch t.kind {
        case .keyword(.switch), .keyword(.group), .keyword(.locked), .keyword(.lladdr),
             .keyword(.rdomain), .keyword(.up), .keyword(.down):
            return true
        default:
            return false
        }
    }

    /// `'{' optnl (opt optnl)+ '}'`, or options on the same line separated by optional commas.
    private func interfaceOptions(_ iface: inout InterfaceSpec) throws(ConfigDiagnostic) {
        if isPunct(try peek(), "{") {
            try advance()
            try skipNewlines()
            while !isPunct(try peek(), "}") {
                try interfaceOption(&iface)
                try skipNewlines()
            }
            try advance()
            return
        }
        while startsInterfaceOption(try peek()) {
            try interfaceOption(&iface)
            if isPunct(try peek(), ",") { try advance() }
        }
    }

    private func interfaceOption(_ iface: inout InterfaceSpec) throws(ConfigDiagnostic) {
        let t = try advance()
        switch t.kind {
        case .keyword(.switch):
            iface.switchName = try string().0
        case .keyword(.group):
            let (g, gt) = try string()
            if let m = groupNameProblem(g) { error(gt, m) }
            iface.group = g
        case .keyword(.locked), .keyword(.lladdr):
            if isKeyword(t, .locked) {
                try expect(.lladdr)
                iface.locked = true
            }
            if case .string(let a) = try peek().kind {
                let at = try advance()
                if let mac = MACAddress(parsing: a) {
                    iface.lladdr = mac
                } else {
                    error(at, "invalid address: \(a)")
                }
            }
        case .keyword(.rdomain):
            let (r, rt) = try number()
            if r < 0 || r > Int64(VMLimits.maxRDomain) { error(rt, "invalid rdomain: \(r)") }
            iface.rdomain = Int(clamping: r)
        case .keyword(.up): iface.up = true
        case .keyword(.down): iface.up = false
        default:
            throw syntaxError(t)
        }
    }

    /// `allow instance { flag [,|nl] ... }` or `allow instance flag`.
    private func allowInstance(_ p: inout InstancePermissions) throws(ConfigDiagnostic) {
        if isPunct(try peek(), "{") {
            try advance()
            try skipNewlines()
            while !isPunct(try peek(), "}") {
                try instanceFlag(&p)
                if isPunct(try peek(), ",") { try advance() }
                try skipNewlines()
            }
            try advance()
        } else {
            try instanceFlag(&p)
        }
    }

    private func instanceFlag(_ p: inout InstancePermissions) throws(ConfigDiagnostic) {
        let t = try advance()
        switch t.kind {
        case .keyword(.boot): p.boot = true
        case .keyword(.memory): p.memory = true
        case .keyword(.interface): p.interface = true
        case .keyword(.disk): p.disk = true
        case .keyword(.cdrom): p.cdrom = true
        case .keyword(.instance): p.instance = true
        case .keyword(.owner): p.owner = try ownerID().0
        default: throw syntaxError(t)
        }
    }

    // MARK: value checks

    struct PrefixProblem: Error { var message: String }

    /// `local prefix` / `local inet6 prefix` as parse.y 1.72 checks them: the mask is 1 to 16
    /// for IPv4 (default 16: vmd numbers VMs and interfaces in the last 16 bits), 0 to 64 for
    /// IPv6 (default 64), and the address has no bits set past it.
    private func parseLocalPrefix(_ s: String, v6: Bool) -> Result<IPPrefix, PrefixProblem> {
        let slash = s.lastIndex(of: "/")
        let addr = slash.map { String(s[..<$0]) } ?? s
        let range = v6 ? 0...64 : 1...16
        var len = v6 ? 64 : 16
        if let slash {
            guard let l = Int(s[s.index(after: slash)...]), range.contains(l) else {
                return .failure(PrefixProblem(message: "the mask must be \(range.lowerBound) to \(range.upperBound)"))
            }
            len = l
        }
        var buf = [UInt8](repeating: 0, count: 16)
        guard addr.withCString({ inet_pton(v6 ? AF_INET6 : AF_INET, $0, &buf) }) == 1 else {
            return .failure(PrefixProblem(message: "invalid format"))
        }
        let bytes = v6 ? 16 : 4
        for i in 0..<bytes {
            let keep = max(0, min(8, len - i * 8))
            let mask: UInt8 = keep == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - keep))
            if buf[i] & ~mask != 0 {
                return .failure(PrefixProblem(message: "bad mask: the address has bits set past /\(len)"))
            }
        }
        return .success(IPPrefix(address: addr, length: len))
    }

}

/// Interface group names as ifconfig(8) takes them: 1 to 15 characters, not ending in a digit.
func groupNameProblem(_ g: String) -> String? {
    if g.isEmpty || g.utf8.count > VMLimits.interfaceNameLength || (g.last?.isASCIIDigit ?? true) {
        return "invalid group name: \(g)"
    }
    return nil
}

func isValidInterfaceName(_ n: String) -> Bool {
    !n.isEmpty && n.utf8.count <= VMLimits.interfaceNameLength
        && n.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") }
}

/// `tap` (next free) or `tapN`; on Linux any interface name is accepted.
func isValidTapName(_ n: String) -> Bool { isValidInterfaceName(n) }

public struct ConfigFileError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var errno: Int32
    public var description: String { String(cString: strerror(errno)) }
}
