import Foundation
import Testing
@testable import VMConfig

/// Every `Golden/*.conf` is parsed; the result must equal `Golden/*.out`: the canonical dump
/// (after any warnings) for a good file, the error lines for a bad one. A line
/// `# test: -D name=value` in the input defines a command-line macro.
/// Run with VMCONF_UPDATE_GOLDEN=1 to rewrite the .out files from the current parser.
@Suite struct GoldenTests {
    static let sourceDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Golden")

    static var goldenDir: URL {
        Bundle.module.resourceURL!.appendingPathComponent("Golden")
    }

    static var cases: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: goldenDir.path)) ?? []
        return names.filter { $0.hasSuffix(".conf") }.sorted()
    }

    static func render(_ name: String) throws -> String {
        let dir = goldenDir.path + "/"
        let path = dir + name
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var macros: [String: String] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("# test: -D ") {
            if let (k, v) = ConfigParser.parseMacroDefinition(String(line.dropFirst(11))) {
                macros[k] = v
            }
        }
        let out: String
        do {
            let r = try ConfigParser(macros: macros).parse(path: path)
            out = r.warnings.map { $0 + "\n" }.joined() + r.configuration.canonicalText
        } catch {
            out = "ERROR\n" + error.description + "\n"
        }
        return out.replacingOccurrences(of: dir, with: "")
    }

    @Test func thereAreGoldenCases() {
        #expect(Self.cases.count >= 20)
        #expect(Self.cases.contains("man-examples.conf"))
    }

    @Test(arguments: cases)
    func golden(_ name: String) throws {
        let got = try Self.render(name)
        let outName = String(name.dropLast(5)) + ".out"
        if ProcessInfo.processInfo.environment["VMCONF_UPDATE_GOLDEN"] == "1" {
            try got.write(to: Self.sourceDir.appendingPathComponent(outName), atomically: true, encoding: .utf8)
        }
        let expected = try String(contentsOf: Self.goldenDir.appendingPathComponent(outName), encoding: .utf8)
        #expect(got == expected, "\(name)")
        #expect(name.hasPrefix("fail-") == got.hasPrefix("ERROR\n"), "\(name): pass/fail by name")
    }

    /// The canonical dump is itself a vm.conf that parses to the same configuration.
    @Test(arguments: cases.filter { !$0.hasPrefix("fail-") })
    func canonicalTextRoundTrips(_ name: String) throws {
        let first = try ConfigParser().parse(path: Self.goldenDir.path + "/" + name).configuration
        let again = try ConfigParser().parse(text: first.canonicalText, name: "dump").configuration
        #expect(again.canonicalText == first.canonicalText)
        var a = again, b = first
        a.socketOwnerLocation = nil
        b.socketOwnerLocation = nil
        for i in a.vms.indices { a.vms[i].location = SourceLocation(file: "", line: 0) }
        for i in b.vms.indices { b.vms[i].location = SourceLocation(file: "", line: 0) }
        for i in a.switches.indices { a.switches[i].location = SourceLocation(file: "", line: 0) }
        for i in b.switches.indices { b.switches[i].location = SourceLocation(file: "", line: 0) }
        #expect(a == b)
    }
}
