/// Turns one vm.conf file into tokens, following OpenBSD's lexer: blanks separate words,
/// `#` comments to the end of the line, `\` at the end of a line continues it, quoted strings
/// ('...' or "...") are never keywords nor macro-expanded, `$name` expands a macro in place
/// (its text is lexed again, without further expansion), and a word made only of digits is a
/// number when it ends at a blank or one of `) , / } =`.
final class Lexer {
    let file: String
    private let bytes: [UInt8]
    private var pos = 0
    /// Characters pushed back or inserted by macro expansion (a stack: last is next).
    private var pending: [(byte: UInt8, expanded: Bool)] = []
    private(set) var line = 1
    private var sentFinalNewline = false
    private let lookupMacro: (String) -> String?

    init(file: String, contents: [UInt8], macros: @escaping (String) -> String?) {
        self.file = file
        self.bytes = contents
        self.lookupMacro = macros
    }

    private var loc: SourceLocation { SourceLocation(file: file, line: line) }

    /// Next raw character; nil at end of file. `expanded` tells whether it came from a macro.
    private func getRaw() -> (byte: UInt8, expanded: Bool)? {
        if let p = pending.popLast() { return p }
        guard pos < bytes.count else { return nil }
        defer { pos += 1 }
        return (bytes[pos], false)
    }

    private func unget(_ c: (byte: UInt8, expanded: Bool)?) {
        if let c { pending.append(c) }
    }

    /// Next character outside quotes: joins continued lines.
    private func get() -> (byte: UInt8, expanded: Bool)? {
        while let c = getRaw() {
            if c.byte == UInt8(ascii: "\\") {
                let n = getRaw()
                if n?.byte == UInt8(ascii: "\n") {
                    line += 1
                    continue
                }
                unget(n)
            }
            return c
        }
        return nil
    }

    private static func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
    private static func isAlpha(_ c: UInt8) -> Bool { (c | 0x20) >= 0x61 && (c | 0x20) <= 0x7a }
    private static func isAlnum(_ c: UInt8) -> Bool { isDigit(c) || isAlpha(c) }
    private static func isBlank(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 }
    private static func isSpace(_ c: UInt8) -> Bool { isBlank(c) || (c >= 0x0a && c <= 0x0d) }
    private static func isPunct(_ c: UInt8) -> Bool { c > 0x20 && c < 0x7f && !isAlnum(c) }
    private static func endsNumber(_ c: UInt8) -> Bool {
        isSpace(c) || c == UInt8(ascii: ")") || c == UInt8(ascii: ",") || c == UInt8(ascii: "/")
            || c == UInt8(ascii: "}") || c == UInt8(ascii: "=")
    }
    private static func allowedInWord(_ c: UInt8) -> Bool {
        if isAlnum(c) { return true }
        guard isPunct(c) else { return false }
        return !"(){}!=#,".utf8.contains(c)
    }

    private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

    func next() throws(ConfigDiagnostic) -> Token {
        while true {
            var c = get()
            while let ch = c, Lexer.isBlank(ch.byte) { c = get() }
            let startLine = line
            func tok(_ k: TokenKind) -> Token { Token(kind: k, line: startLine, file: file) }

            if c?.byte == UInt8(ascii: "#") {
                while let ch = c, ch.byte != UInt8(ascii: "\n") { c = get() }
            }
            guard let ch = c else {
                if !sentFinalNewline {
                    sentFinalNewline = true
                    return tok(.newline)
                }
                return tok(.eof)
            }
            if ch.byte == UInt8(ascii: "$") && !ch.expanded {
                var name: [UInt8] = []
                var n = get()
                while let x = n, Lexer.isAlnum(x.byte) || x.byte == UInt8(ascii: "_") {
                    name.append(x.byte)
                    n = get()
                }
                unget(n)
                guard let value = lookupMacro(text(name)) else {
                    throw ConfigDiagnostic(loc, "macro '\(text(name))' not defined")
                }
                for b in Array(value.utf8).reversed() { pending.append((b, true)) }
                continue
            }
            if ch.byte == UInt8(ascii: "\"") || ch.byte == UInt8(ascii: "'") {
                return tok(.string(try quoted(ch.byte)))
            }
            if ch.byte == UInt8(ascii: "-") || Lexer.isDigit(ch.byte) {
                var buf: [(byte: UInt8, expanded: Bool)] = [ch]
                var n = get()
                while let x = n, Lexer.isDigit(x.byte) {
                    buf.append(x)
                    n = get()
                }
                unget(n)
                let isBareMinus = buf.count == 1 && ch.byte == UInt8(ascii: "-")
                if !isBareMinus && (n.map { Lexer.endsNumber($0.byte) } ?? true) {
                    let t = text(buf.map(\.byte))
                    guard let v = Int64(t) else {
                        throw ConfigDiagnostic(loc, "\"\(t)\" invalid number: too large")
                    }
                    return tok(.number(v, text: t))
                }
                // Not a number: lex it again as a word.
                for x in buf.dropFirst().reversed() { unget(x) }
                if ch.byte == UInt8(ascii: "-") { return tok(.punct("-")) }
            }
            if Lexer.isAlnum(ch.byte) || ch.byte == UInt8(ascii: ":") || ch.byte == UInt8(ascii: "_")
                || ch.byte == UInt8(ascii: "/") {
                var buf = [ch.byte]
                var n = get()
                while let x = n, Lexer.allowedInWord(x.byte) {
                    buf.append(x.byte)
                    n = get()
                }
                unget(n)
                let word = text(buf)
                if let k = Keyword(rawValue: word) { return tok(.keyword(k)) }
                return tok(.string(word))
            }
            if ch.byte == UInt8(ascii: "\n") {
                line += 1
                return tok(.newline)
            }
            if ch.byte == UInt8(ascii: "\r") { continue }
            if ch.byte < 0x80 {
                return tok(.punct(Character(Unicode.Scalar(ch.byte))))
            }
            // A byte outside ASCII: name the whole character if it decodes.
            var seq = [ch.byte]
            var n = getRaw()
            while let x = n, x.byte & 0xC0 == 0x80, seq.count < 4 {
                seq.append(x.byte)
                n = getRaw()
            }
            unget(n)
            return tok(.punct(text(seq).first ?? "?"))
        }
    }

    private func quoted(_ quote: UInt8) throws(ConfigDiagnostic) -> String {
        var buf: [UInt8] = []
        let start = loc
        while true {
            guard let c = getRaw() else {
                throw ConfigDiagnostic(start, "unterminated quoted string: reached end of file")
            }
            switch c.byte {
            case UInt8(ascii: "\n"):
                line += 1
                continue
            case UInt8(ascii: "\\"):
                guard let n = getRaw() else {
                    throw ConfigDiagnostic(start, "unterminated quoted string: reached end of file")
                }
                if n.byte == quote || Lexer.isBlank(n.byte) {
                    buf.append(n.byte)
                } else if n.byte == UInt8(ascii: "\n") {
                    line += 1
                } else {
                    buf.append(c.byte)
                    unget(n)
                }
            case quote:
                return text(buf)
            case 0:
                throw ConfigDiagnostic(loc, "syntax error: NUL byte in quoted string")
            default:
                buf.append(c.byte)
            }
            if buf.count > 8000 { throw ConfigDiagnostic(loc, "string too long") }
        }
    }
}
