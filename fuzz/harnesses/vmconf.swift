// libFuzzer harness: vm.conf text through the lexer, parser and validator; a file that
// parses must dump (canonicalText) to text that parses again to the same dump.
@testable import VMConfig

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVMConf(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let parser = ConfigParser(macros: ["m": "1G"], loader: { name in
        // `include` gets a small fixed file; a second level includes nothing.
        name.hasSuffix("inner") ? Array("vm inner { disable }\n".utf8) : Array("include \"inner\"\n".utf8)
    })
    guard let parsed = try? parser.parse(contents: bytes, name: "fuzz.conf") else { return 0 }
    let dump = parsed.configuration.canonicalText
    guard let again = try? ConfigParser().parse(text: dump, name: "dump") else {
        fatalError("canonical dump does not parse:\n\(dump)")
    }
    if again.configuration.canonicalText != dump {
        fatalError("canonical dump changes when parsed again:\n\(dump)\n---\n\(again.configuration.canonicalText)")
    }
    _ = ConfigValidator.resolvedVMs(parsed.configuration)
    return 0
}
