#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import Control
import VMConfig

/// Where vmctl finds vmd: --socket, then $VMD_SOCKET, then /var/run/vmd.sock.
nonisolated(unsafe) var socketPathOverride: String?
nonisolated(unsafe) var verboseOutput = false

func socketPath() -> String {
    socketPathOverride ?? ProcessInfo.processInfo.environment["VMD_SOCKET"] ?? ControlProtocol.defaultSocketPath
}

func fail(_ message: String) -> ExitCode {
    var b = Array("vmctl: \(message)\n".utf8)
    _ = write(2, &b, b.count)
    return ExitCode(1)
}

func say(_ message: String) {
    var b = Array((message.hasSuffix("\n") ? message : message + "\n").utf8)
    _ = write(1, &b, b.count)
}

/// Seconds vmctl waits for vmd to take a connection, and to answer a request that does not
/// wait for a VM (`wait`, `stop -w` and `reset` may wait as long as the VMs take).
let connectTimeout: Double = 10
let replyTimeout: Double = 120

/// Sends one request to vmd (with `fds`, e.g. receive's stream); a failure reply becomes a
/// one-line error and exit status 1.
func request(_ r: ControlRequest, fds sent: [Int32] = []) throws -> (ControlReply, [Int32]) {
    let path = socketPath()
    let ch: ControlChannel
    do { ch = try ControlChannel.connect(path: path, timeout: connectTimeout) } catch {
        if case .system(_, let e, _) = error, e == EAGAIN {
            throw fail("cannot reach vmd at \(path): it did not accept the connection within \(Int(connectTimeout)) s")
        }
        throw fail("cannot reach vmd at \(path): \(error)")
    }
    let waits: Bool
    switch r {
    // A receive answers once the whole stream is in, however long it takes to come.
    case .wait, .reset, .receive: waits = true
    case .stop(_, _, let wait): waits = wait
    default: waits = false
    }
    UnixSocket.setTimeouts(ch.fd, receive: waits ? nil : replyTimeout, send: connectTimeout)
    let (reply, fds): (ControlReply, [Int32])
    do { (reply, fds) = try ch.call(r, fds: sent) } catch {
        if case .system(_, let e, _) = error, e == EAGAIN {
            throw fail("vmd did not answer within \(Int(replyTimeout)) s")
        }
        throw fail("\(error)")
    }
    if case .failure(let f) = reply {
        for x in fds { close(x) }
        throw fail(f.message)
    }
    return (reply, fds)
}

/// A size as OpenBSD's vmctl parse_size reads one (`-m` memory, `create -s` disk): scan_scaled
/// (fractions allowed, `4.5G`), at least 1MB, rounded down to whole MB with a warning
/// ("memory size rounded to 4.5G"). Returns bytes.
func parseSize(_ s: String, type: String) throws -> UInt64 {
    // Well formed but not representable is said so (scan_scaled's ERANGE), never wrapped.
    let v: UInt64
    switch ScaledSize.scan(s) {
    case .success(let x) where x <= UInt64(Int64.max): v = x
    case .success, .failure(.outOfRange): throw ValidationError("invalid \(type) size: \(s): too large")
    case .failure(.invalid): throw ValidationError("invalid \(type) size: \(s)")
    }
    guard v >= 1 << 20 else { throw ValidationError("\(type) size must be at least 1MB") }
    let rounded = v & ~UInt64((1 << 20) - 1)
    if rounded != v { warn("\(type) size rounded to \(StatusTable.scaled(rounded))") }
    return rounded
}

/// `vmctl: message` on standard error (a warning; the command goes on).
func warn(_ message: String) {
    let bytes = Array("vmctl: \(message)\n".utf8)
    // SAFETY: write(2) reads bytes.count bytes from the array's storage.
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// A disk given on the command line (`-d`): `qcow2:path` or `raw:path` names the format,
/// as `vmctl create` does; the path is made absolute.
func diskSpec(_ d: String) -> DiskSpec {
    if let colon = d.firstIndex(of: ":"), let f = DiskFormat(rawValue: String(d[..<colon])) {
        return DiskSpec(path: absolute(String(d[d.index(after: colon)...])), format: f)
    }
    return DiskSpec(path: absolute(d))
}

/// The real path of a file given on the command line (vmd may have another cwd).
func absolute(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    return FileManager.default.currentDirectoryPath + "/" + path
}
