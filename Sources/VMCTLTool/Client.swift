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

/// Sends one request to vmd; a failure reply becomes a one-line error and exit status 1.
func request(_ r: ControlRequest) throws -> (ControlReply, [Int32]) {
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
    case .wait, .reset: waits = true
    case .stop(_, _, let wait): waits = wait
    default: waits = false
    }
    UnixSocket.setTimeouts(ch.fd, receive: waits ? nil : replyTimeout, send: connectTimeout)
    let (reply, fds): (ControlReply, [Int32])
    do { (reply, fds) = try ch.call(r) } catch {
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

/// Parses a vmctl memory size (`512M`, `1G`, bytes) as OpenBSD's vmctl does.
func parseMemory(_ s: String) throws -> UInt64 {
    guard let v = ScaledSize.parse(s) else { throw ValidationError("invalid memory size: \(s)") }
    guard v >= 1 << 20 else { throw ValidationError("memory size must be at least 1M: \(s)") }
    return v & ~UInt64((1 << 20) - 1)
}

/// The real path of a file given on the command line (vmd may have another cwd).
func absolute(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    return FileManager.default.currentDirectoryPath + "/" + path
}
