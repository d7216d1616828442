#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// Where `swift build` put vmd and vmctl: next to the test bundle.
enum Binaries {
    static let directory: String = {
        // Another build's binaries (e.g. main's, to see a regression test fail before a fix).
        if let d = ProcessInfo.processInfo.environment["SWIFTVMM_TEST_BINARIES"], !d.isEmpty { return d }
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        let exe = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
        var url = URL(fileURLWithPath: exe).deletingLastPathComponent()
        // Inside an .xctest bundle directory on some layouts.
        if url.lastPathComponent.hasSuffix(".xctest") { url = url.deletingLastPathComponent() }
        return url.path
    }()
    static var vmd: String { directory + "/vmd" }
    static var vmctl: String { directory + "/vmctl" }
    static var available: Bool { access(vmd, X_OK) == 0 && access(vmctl, X_OK) == 0 }
}

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program to completion (killing it after `timeout` seconds).
@discardableResult
func run(_ path: String, _ args: [String], env: [String: String] = [:], stdin: String? = nil,
         prefix: [String] = [], timeout: Double = 20) throws -> RunResult {
    let p = Process()
    if prefix.isEmpty {
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
    } else {
        p.executableURL = URL(fileURLWithPath: prefix[0])
        p.arguments = Array(prefix.dropFirst()) + [path] + args
    }
    var environment = ProcessInfo.processInfo.environment
    for (k, v) in env { environment[k] = v }
    p.environment = environment
    let out = Pipe(), err = Pipe(), inp = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = inp
    try p.run()
    if let stdin { inp.fileHandleForWriting.write(Data(stdin.utf8)) }
    try? inp.fileHandleForWriting.close()
    let deadline = Date().addingTimeInterval(timeout)
    let outData = OutputCollector(out.fileHandleForReading)
    let errData = OutputCollector(err.fileHandleForReading)
    while p.isRunning && Date() < deadline { usleep(10_000) }
    if p.isRunning { kill(p.processIdentifier, SIGKILL) }
    p.waitUntilExit()
    return RunResult(status: p.terminationStatus, stdout: outData.text(), stderr: errData.text())
}

/// Collects a pipe's output on a background thread.
final class OutputCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)
    init(_ h: FileHandle) {
        let t = Thread { [self] in
            while true {
                let d = h.availableData
                if d.isEmpty { break }
                lock.lock(); data.append(d); lock.unlock()
            }
            done.signal()
        }
        t.start()
    }
    func text(wait: Bool = true) -> String {
        if wait { _ = done.wait(timeout: .now() + 5) }
        lock.lock(); defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }
    func snapshot() -> String {
        lock.lock(); defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }
}

/// A vmd running in the test on a private socket, with stand-in guests.
final class TestDaemon {
    let dir: String
    let socket: String
    let config: String
    let process = Process()
    let log: OutputCollector

    init(config text: String, fake: Bool = true, extraArgs: [String] = [], env: [String: String] = [:]) throws {
        var template = Array((NSTemporaryDirectory() + "vmdtest.XXXXXX").utf8CString)
        guard let d = mkdtemp(&template) else { throw CocoaError(.fileWriteUnknown) }
        dir = String(cString: d)
        chmod(dir, 0o755)
        socket = dir + "/vmd.sock"
        config = dir + "/vm.conf"
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: Binaries.vmd)
        process.arguments = ["-d", "-f", config, "--socket", socket] + (fake ? ["--fake-vms"] : []) + extraArgs
        if !env.isEmpty {
            var environment = ProcessInfo.processInfo.environment
            for (k, v) in env { environment[k] = v }
            process.environment = environment
        }
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        log = OutputCollector(err.fileHandleForReading)
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while access(socket, F_OK) != 0 && Date() < deadline && process.isRunning { usleep(20_000) }
    }

    @discardableResult
    func vmctl(_ args: String..., stdin: String? = nil, as user: String? = nil) throws -> RunResult {
        try vmctl(args: args, stdin: stdin, as: user)
    }

    @discardableResult
    func vmctl(args: [String], stdin: String? = nil, as user: String? = nil) throws -> RunResult {
        // setpriv execs vmctl directly (no helper process left behind on a timeout).
        let prefix = user.map { ["/usr/bin/setpriv", "--reuid=\($0)", "--regid=\($0)", "--init-groups", "--"] } ?? []
        return try run(Binaries.vmctl, ["--socket", socket] + args, stdin: stdin, prefix: prefix)
    }

    /// Polls `vmctl status` until `predicate` holds for its output.
    func waitForStatus(timeout: Double = 10, _ predicate: (String) -> Bool) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        var last = ""
        while Date() < deadline {
            last = try vmctl("status").stdout
            if predicate(last) { return last }
            usleep(50_000)
        }
        return last
    }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: dir)
    }

    deinit { stop() }
}

/// `vmctl console` left running with its input and output on pipes: `type` sends, `waitFor`
/// polls what it printed, `detach` types `~.`.
final class ConsoleClient {
    let process = Process()
    let input = Pipe()
    let output: OutputCollector

    init(socket: String, name: String) throws {
        process.executableURL = URL(fileURLWithPath: Binaries.vmctl)
        process.arguments = ["--socket", socket, "console", name]
        let out = Pipe()
        process.standardInput = input
        process.standardOutput = out
        process.standardError = out
        try process.run()
        output = OutputCollector(out.fileHandleForReading)
    }

    /// Types into vmctl's stdin. vmctl may already have exited (the guest powered off and
    /// the console closed): the write then fails with EPIPE, which is ignored, instead of
    /// SIGPIPE ending the whole test process.
    func type(_ s: String) {
        Self.ignoreSIGPIPE
        try? input.fileHandleForWriting.write(contentsOf: Data(s.utf8))
    }

    private static let ignoreSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN); return () }()

    /// Waits until the output contains `text` at least `count` times; true when it did in time.
    @discardableResult
    func waitFor(_ text: String, count: Int = 1, timeout: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if occurrences(text) >= count { return true }
            usleep(20_000)
        }
        return occurrences(text) >= count
    }

    func occurrences(_ text: String) -> Int { output.snapshot().components(separatedBy: text).count - 1 }

    /// Waits for the process to end by itself; true when it did in time.
    func waitForExit(timeout: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        return !process.isRunning
    }

    func detach() -> Bool {
        type("~.")
        return waitForExit()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }
}

/// One row of `vmctl status` for the named VM, split into columns.
func row(_ status: String, _ name: String) -> [String]? {
    for line in status.split(separator: "\n") {
        let cols = line.split(separator: " ").map(String.init)
        if cols.last == name { return cols }
    }
    return nil
}
