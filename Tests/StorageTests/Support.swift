import Foundation
import Testing
@testable import Storage

/// A fresh directory under /tmp, removed when the object goes away.
final class TempDir {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "storage-tests-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
}

struct CommandResult {
    let status: Int32
    let output: String
}

/// Runs a program (searched in PATH) and collects its stdout+stderr.
@discardableResult
func run(_ program: String, _ arguments: [String]) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = [program] + arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self))
}

/// Runs qemu-img / qemu-io and records a test failure when it fails.
@discardableResult
func qemu(_ program: String, _ arguments: String...) throws -> String {
    let r = try run(program, arguments)
    #expect(r.status == 0, "\(program) \(arguments.joined(separator: " ")) failed: \(r.output)")
    return r.output
}

let qemuImgAvailable: Bool = {
    let ok = FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-img")
        && FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-io")
    if !ok { print("StorageTests: qemu-img/qemu-io not installed (Debian qemu-utils): interop tests SKIPPED") }
    return ok
}()

/// `qemu-img check`: exit status 0 = clean, 3 = leaked clusters only, 2 = corruption.
func qemuCheck(_ path: String) throws -> CommandResult {
    try run("qemu-img", ["check", "-U", path])
}

/// Expects `qemu-img check` to find no corruption (leaks allowed unless `clean`).
func expectQemuCheckPasses(_ path: String, clean: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let r = try qemuCheck(path)
    if clean {
        #expect(r.status == 0, "qemu-img check \(path): \(r.output)", sourceLocation: sourceLocation)
    } else {
        #expect(r.status == 0 || r.status == 3, "qemu-img check \(path): \(r.output)", sourceLocation: sourceLocation)
    }
}

/// Deterministic PRNG (xorshift64*), so every workload can be repeated.
struct TestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return state &* 2_685_821_657_736_338_717
    }
    mutating func next(_ bound: UInt64) -> UInt64 { next() % bound }
    mutating func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: (count + 7) / 8 * 8)
        out.withUnsafeMutableBytes { raw in
            for i in 0..<raw.count / 8 { raw.storeBytes(of: next(), toByteOffset: i * 8, as: UInt64.self) }
        }
        out.removeLast(out.count - count)
        return out
    }
}

extension DiskBackend {
    func readAll() throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(size))
        try out.withUnsafeMutableBytes { try read(into: $0, at: 0) }
        return out
    }
    func read(_ count: Int, at offset: UInt64) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return out
    }
    func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }
}

func fileBytes(_ path: String) -> [UInt8] {
    [UInt8](FileManager.default.contents(atPath: path) ?? Data())
}

/// The image's content as qemu sees it (qemu-img convert -O raw).
func qemuContent(_ path: String, in dir: TempDir) throws -> [UInt8] {
    let out = dir.file("qemu-content-\(UUID().uuidString).raw")
    try qemu("qemu-img", "convert", "-U", "-O", "raw", path, out)
    defer { unlink(out) }
    return fileBytes(out)
}

/// Applies the same random operation sequence to several disks.
func randomWorkload(_ disks: [any DiskBackend], seed: UInt64, operations: Int, maxSectors: UInt64 = 300) throws {
    var rng = TestRandom(seed: seed)
    let sectors = disks[0].size / 512
    for _ in 0..<operations {
        let start = rng.next(sectors)
        let count = min(sectors - start, 1 + rng.next(maxSectors))
        let op = rng.next(10)
        if op < 7 {
            // Unaligned byte ranges too, sometimes.
            let shift = rng.next(4) == 0 ? rng.next(511) : 0
            let length = max(1, Int(count * 512) - Int(shift))
            let data = rng.bytes(length)
            for d in disks { try d.write(data, at: start * 512 + shift) }
        } else if op < 9 {
            for d in disks { try d.discard(offset: start * 512, length: count * 512) }
        } else {
            for d in disks { try d.writeZeroes(offset: start * 512, length: count * 512) }
        }
    }
}

/// The first offset where two byte arrays differ, for readable failures.
func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
    if a == b { return nil }
    if a.count != b.count { return min(a.count, b.count) }
    return a.withUnsafeBufferPointer { x in b.withUnsafeBufferPointer { y in (0..<x.count).first { x[$0] != y[$0] } } }
}
