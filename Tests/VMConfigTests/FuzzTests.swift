import Foundation
import Testing
@testable import VMConfig

/// Mutated vm.conf files never crash the parser: each either parses (and its dump parses
/// again) or fails with diagnostics whose line numbers lie inside the file.
@Suite struct FuzzTests {
    struct SplitMix {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
    }

    static let alphabet = Array("{}\"'\\$#=,\n \t/:-.0123456789abcMGvm".utf8) + [0, 0xff, 0xc3]

    @Test func mutatedInputsNeverCrash() throws {
        let dir = Bundle.module.resourceURL!.appendingPathComponent("Golden").path
        var seeds: [[UInt8]] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: dir) where name.hasSuffix(".conf") {
            let text = try String(contentsOfFile: dir + "/" + name, encoding: .utf8)
            seeds.append(Array(text.utf8))
        }
        seeds.sort { $0.lexicographicallyPrecedes($1) }
        var rng = SplitMix(state: 0x5eed)
        var parsed = 0, failed = 0
        for _ in 0..<3000 {
            var bytes = seeds[rng.below(seeds.count)]
            for _ in 0..<(1 + rng.below(4)) {
                let pos = rng.below(bytes.count + 1)
                switch rng.below(3) {
                case 0 where pos < bytes.count: bytes.remove(at: pos)
                case 1: bytes.insert(Self.alphabet[rng.below(Self.alphabet.count)], at: pos)
                default: if pos < bytes.count { bytes[pos] = Self.alphabet[rng.below(Self.alphabet.count)] }
                }
            }
            let lines = bytes.filter { $0 == 0x0a }.count + 1
            let parser = ConfigParser(macros: ["m": "1G"], loader: { _ in Array("vm inc { disable }\n".utf8) })
            let result: ParsedConfiguration
            do {
                result = try parser.parse(contents: bytes, name: "fuzz.conf")
            } catch {
                failed += 1
                for d in error.diagnostics where d.location.file == "fuzz.conf" {
                    #expect(d.location.line >= 1 && d.location.line <= lines + 1, "\(d)")
                    #expect(!d.message.isEmpty)
                }
                continue
            }
            parsed += 1
            let again = Result { () throws(ConfigError) -> ParsedConfiguration in
                try ConfigParser().parse(text: result.configuration.canonicalText, name: "dump")
            }
            if case .failure(let e) = again { Issue.record("dump does not parse: \(e)") }
        }
        #expect(parsed > 100 && failed > 100, "both outcomes exercised: \(parsed) parsed, \(failed) failed")
    }
}
