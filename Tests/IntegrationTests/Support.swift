import Foundation
import VMM

/// Paths and helpers shared by the integration tests.
enum Harness {
    /// The package root (this file is Tests/IntegrationTests/Support.swift).
    static let packageRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// The `vmm` binary built next to the test bundle.
    static var vmmBinary: String {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        // The test bundle may be a directory (…/swiftvmmPackageTests.xctest); walk up to the build dir.
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("vmm").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return packageRoot.appendingPathComponent(".build/debug/vmm").path
    }

    /// nil when KVM can run guests here; else why not (tests print it and skip).
    static let kvmProblem: String? = HostCapabilities.probeKVM()
    /// For `.enabled(if: Harness.kvmUsable, ...)`: a test that needs KVM shows as skipped.
    static let kvmUsable = kvmProblem == nil


    /// Where built guests go (our own directory: other suites build guests/ in parallel).
    static let guestDir: URL = packageRoot.appendingPathComponent(".build/guests-vmm")

    /// Builds the test guests (guests/Makefile) once per test process; returns the path of
    /// `name`.elf.
    static func testGuest(_ name: String) throws -> String {
        buildLock.lock()
        defer { buildLock.unlock() }
        if !guestsBuilt {
            let r = try run(["/usr/bin/make", "-s", "-C", packageRoot.appendingPathComponent("guests").path,
                             "BUILD=\(guestDir.path)"], timeout: 300)
            guard r.status == 0 else { throw HarnessError("make -C guests failed: \(r.stderr)") }
            guestsBuilt = true
        }
        let path = guestDir.appendingPathComponent("\(name).elf").path
        guard FileManager.default.fileExists(atPath: path) else { throw HarnessError("no guest \(path)") }
        return path
    }
    nonisolated(unsafe) private static var guestsBuilt = false   // guarded by buildLock

    private static let buildLock = NSLock()
    nonisolated(unsafe) private static var built: [String: String] = [:]   // guarded by buildLock

    /// Runs `guests/<script>` (once per test process) and returns the path it printed last
    /// (or `output` when given).
    static func buildGuest(script: String, arguments: [String] = [], output: String? = nil) throws -> String {
        buildLock.lock()
        defer { buildLock.unlock() }
        let key = ([script] + arguments).joined(separator: " ")
        if let path = built[key] { return path }
        let result = try run(["/bin/sh", packageRoot.appendingPathComponent("guests/\(script)").path] + arguments,
                             timeout: 120)
        guard result.status == 0 else {
            throw HarnessError("guests/\(script) failed (status \(result.status)): \(result.stderr)")
        }
        let path = output ?? result.stdout.split(separator: "\n").last.map(String.init) ?? ""
        guard FileManager.default.fileExists(atPath: path) else {
            throw HarnessError("guests/\(script) did not produce \(path)")
        }
        built[key] = path
        return path
    }

    struct RunResult {
        var status: Int32
        var stdout: String
        var stderr: String
        var timedOut: Bool
    }

    /// Runs a command with stdin from /dev/null, collecting its output; kills it after
    /// `timeout` seconds. `environment` is added to (or overrides) this process's.
    static func run(_ argv: [String], timeout: Double = 30, environment: [String: String] = [:]) throws -> RunResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        if !environment.isEmpty {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        p.standardInput = FileHandle.nullDevice
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let outData = DataBox(), errData = DataBox()
        let group = DispatchGroup()
        for (pipe, box) in [(out, outData), (err, errData)] {
            group.enter()
            DispatchQueue.global().async {
                box.data = pipe.fileHandleForReading.readDataToEndOfFile()
                group.leave()
            }
        }
        try p.run()
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        while p.isRunning {
            if Date() > deadline { timedOut = true; kill(p.processIdentifier, SIGKILL); break }
            usleep(5000)
        }
        p.waitUntilExit()
        group.wait()
        return RunResult(status: p.terminationStatus,
                         stdout: String(decoding: outData.data, as: UTF8.self),
                         stderr: String(decoding: errData.data, as: UTF8.self), timedOut: timedOut)
    }

    /// Runs the vmm binary.
    static func vmm(_ arguments: [String], timeout: Double = 30, environment: [String: String] = [:]) throws -> RunResult {
        try run([vmmBinary] + arguments, timeout: timeout, environment: environment)
    }
}

final class DataBox: @unchecked Sendable { var data = Data() }

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Collects console output from a Machine run in-process.
final class ConsoleCapture: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    func append(_ b: [UInt8]) { lock.lock(); bytes += b; lock.unlock() }
    var text: String { lock.lock(); defer { lock.unlock() }; return String(decoding: bytes, as: UTF8.self) }
    var sink: ConsoleSink { .callback { [self] in self.append($0) } }
}
