#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import VMM

/// Corrupt, truncated, version-mismatched and hostile state streams (docs/snapshot.md):
/// each gives one clear error and no machine; `vmm --restore` prints one error line and exits 2.
@Suite struct HostileStateStreamTests {
    /// A real stream (the counter guest), as bytes and as its sections.
    static let valid: (bytes: [UInt8], sections: [(tag: UInt32, payload: [UInt8])]) = {
        let file = (try? SnapshotGuestTests.scratchFile("hostile-base.state")) ?? "/nonexistent"
        _ = try? SnapshotGuestTests.savedCounter(lines: 1, file: file)
        let bytes = (FileManager.default.contents(atPath: file).map { [UInt8]($0) }) ?? []
        var sections: [(UInt32, [UInt8])] = []
        if let r = try? StateStreamReader(bytes: bytes) {
            while let s = try? r.next() { sections.append(s) }
        }
        return (bytes, sections)
    }()

    static func tag(_ s: String) -> UInt32 { Array(s.utf8).enumerated().reduce(0) { $0 | UInt32($1.1) << ($1.0 * 8) } }

    /// A stream made of these sections (correct framing and checksums).
    static func stream(_ sections: [(tag: UInt32, payload: [UInt8])], end: Bool = true) throws -> [UInt8] {
        let file = try SnapshotGuestTests.scratchFile("crafted-\(UUID().uuidString).state")
        defer { unlink(file) }
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let w = try StateStreamWriter(fd: fd)
        for s in sections { try w.section(s.tag, s.payload) }
        if end { try w.finish() }
        close(fd)
        return [UInt8](FileManager.default.contents(atPath: file) ?? Data())
    }

    /// Restoring `bytes` fails with an error whose text mentions `mention`.
    func expectRejected(_ bytes: [UInt8], _ mention: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let machine = try Machine.restore(reader: try StateStreamReader(bytes: bytes), console: .none)
            Issue.record("a hostile stream was accepted (state \(machine.state))", sourceLocation: sourceLocation)
        } catch {
            #expect("\(error)".contains(mention), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func theBaseStreamIsValid() throws {
        #expect(Self.valid.sections.count >= 4)
        #expect(Self.valid.sections.first?.tag == Self.tag("CONF"))
        _ = try Machine.restore(reader: try StateStreamReader(bytes: Self.valid.bytes), console: .none)
    }

    @Test func badMagicAndVersion() {
        var b = Self.valid.bytes
        b[0] = UInt8(ascii: "X")
        expectRejected(b, "bad magic")
        b = Self.valid.bytes
        b[8] = 2
        expectRejected(b, "format version 2 is not supported")
        expectRejected([], "truncated")
    }

    @Test func truncationAnywhere() {
        let b = Self.valid.bytes
        for cut in [10, 16, 20, 27, 100, b.count / 3, b.count / 2, b.count - 17, b.count - 4, b.count - 1] where cut < b.count {
            expectRejected(Array(b.prefix(cut)), "truncated")
        }
    }

    @Test func aFlippedByteIsACorruptSection() {
        var b = Self.valid.bytes
        b[b.count / 2] ^= 0x40
        expectRejected(b, "checksum mismatch")
    }

    @Test func hugeLengthsAndUnknownSections() {
        var b = Self.valid.bytes
        // The first section's length field (after the 16-byte header and its 4-byte tag).
        for i in 0..<8 { b[20 + i] = i == 7 ? 0x10 : 0 }
        expectRejected(b, "claims 1152921504606846976 bytes")
        b = Self.valid.bytes
        b[16] = 0xEE
        expectRejected(b, "unknown state stream section")
    }

    @Test func hostileContentWithValidFraming() throws {
        let s = Self.valid.sections
        let conf = s[0], devs = try #require(s.first { $0.tag == Self.tag("DEVS") })
        let cpu = try #require(s.first { $0.tag == Self.tag("VCPU") })
        func mem(_ gpa: UInt64, pages: Int = 1) -> (tag: UInt32, payload: [UInt8]) {
            (Self.tag("MEM "), (0..<8).map { UInt8(truncatingIfNeeded: gpa >> ($0 * 8)) } + [UInt8](repeating: 0xAB, count: 4096 * pages))
        }
        expectRejected(try Self.stream([conf, devs, cpu, mem(1 << 40)]), "outside guest RAM")
        expectRejected(try Self.stream([conf, devs, cpu, mem((32 << 20) - 4096, pages: 2)]), "outside guest RAM")
        expectRejected(try Self.stream([conf, devs, cpu, mem(0x1001)]), "outside guest RAM")
        expectRejected(try Self.stream([conf, devs, cpu, (Self.tag("MEM "), [1, 2, 3])]), "whole number of pages")
        expectRejected(try Self.stream([devs, conf, cpu]), "does not start with the machine configuration")
        expectRejected(try Self.stream([conf, devs, cpu, cpu]), "each once")
        expectRejected(try Self.stream([conf, cpu]), "no device section")
        expectRejected(try Self.stream([conf, devs]), "vCPU's state is missing")
        expectRejected(try Self.stream([conf, devs, cpu], end: false), "truncated")
        expectRejected(try Self.stream([conf, (Self.tag("DEVS"), Array("{\"com1\":1}".utf8)), cpu]), "device section does not decode")
        var bigConf = String(decoding: conf.payload, as: UTF8.self)
        bigConf = bigConf.replacingOccurrences(of: "\"vcpus\":1", with: "\"vcpus\":100000")
        expectRejected(try Self.stream([(conf.tag, Array(bigConf.utf8)), devs, cpu]), "vCPU")
    }

    @Test func vmmRestoreOfAHostileFileIsOneLine() throws {
        let file = try SnapshotGuestTests.scratchFile("cut.state")
        FileManager.default.createFile(atPath: file, contents: Data(Self.valid.bytes.prefix(Self.valid.bytes.count / 2)))
        let r = try Harness.vmm(["--restore", file])
        #expect(r.status == 2)
        // The info lines of building the machine come first; then one error, nothing run.
        let errors = r.stderr.split(separator: "\n").filter { $0.contains("error") }
        #expect(errors.count == 1 && errors[0].contains("truncated"), "\(r.stderr)")
        #expect(!r.stderr.contains("restored") && !r.stderr.contains("Fatal error"), "\(r.stderr)")
        #expect(r.stdout.isEmpty)
    }
}
