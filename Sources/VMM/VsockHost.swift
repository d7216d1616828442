#if canImport(Glibc)
import Glibc
#endif
import Control
import Devices
import KVM
import Logging
import Synchronization

/// The vsock device of one VM (`vmm --vsock CID,PATH`): the guest's CID and the host's
/// hybrid unix-socket endpoint, as Firecracker and Cloud Hypervisor lay it out:
/// - host → guest: connect to PATH, write "CONNECT <port>\n"; once the guest accepts,
///   the answer is "OK <hostport>\n" and the socket carries the stream (closed when the
///   guest refuses);
/// - guest → host port P: the machine connects to the unix socket "PATH_P" (refused with
///   RST when nothing listens there).
public struct VsockConfig: Sendable, Equatable {
    public var guestCID: UInt64
    public var path: String

    public init(guestCID: UInt64, path: String) { self.guestCID = guestCID; self.path = path }

    /// Parses `CID,PATH` (`vmm --vsock`).
    public init(parsing text: String) throws {
        guard let comma = text.firstIndex(of: ",") else {
            throw VsockConfigError.invalidSpec(text, why: "expected CID,PATH")
        }
        let cidText = text[..<comma], path = String(text[text.index(after: comma)...])
        guard let cid = UInt64(cidText), VirtioVsock.isValidGuestCID(cid) else {
            throw VsockConfigError.invalidSpec(text, why: "the CID '\(cidText)' is not a number from 3 to 4294967294")
        }
        guard !path.isEmpty else { throw VsockConfigError.invalidSpec(text, why: "the socket path is empty") }
        // sun_path holds 108 bytes; "PATH_4294967295" must fit for guest connections.
        guard path.utf8.count + 11 < 108 else {
            throw VsockConfigError.invalidSpec(text, why: "the socket path is longer than 96 bytes (unix socket paths are limited)")
        }
        self.init(guestCID: cid, path: path)
    }

    /// Checks, before the machine is built, that the socket can be made at `path`: its
    /// directory exists and nothing but a (stale) socket is there.
    public func checkHostPath() throws {
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw VsockConfigError.socket(path: path, reason: "exists and is not a socket")
            }
            return
        }
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        guard stat(dir, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw VsockConfigError.socket(path: path, reason: "the directory \(dir) does not exist")
        }
    }
}

public enum VsockConfigError: Error, Equatable, CustomStringConvertible {
    case invalidSpec(String, why: String)
    case socket(path: String, reason: String)

    public var description: String {
        switch self {
        case let .invalidSpec(text, why): return "vsock '\(text)' is not valid: \(why)"
        case let .socket(path, reason): return "vsock socket \(path): \(reason)"
        }
    }
}

/// A connected unix stream socket as one side of a vsock connection. Owns its descriptor.
final class UnixVsockStream: VsockHostStream {
    let fd: Int32
    private var isClosed = false

    init(fd: Int32) {
        self.fd = fd
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit { close() }

    func write(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard !isClosed, !bytes.isEmpty else { return isClosed ? nil : 0 }
        let n = send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
        if n >= 0 { return n }
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : nil
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard !isClosed, !buffer.isEmpty else { return isClosed ? nil : 0 }
        let n = recv(fd, buffer.baseAddress, buffer.count, 0)
        if n > 0 { return n }
        if n < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return 0 }
        return nil
    }

    func accepted(hostPort: UInt32) {
        let line = Array("OK \(hostPort)\n".utf8)
        // A few bytes into a socket nobody has written to yet: the buffer has room.
        _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func shutdownWrite() { if !isClosed { _ = shutdown(fd, Int32(SHUT_WR)) } }

    func close() {
        guard !isClosed else { return }
        isClosed = true
        _ = Glibc.close(fd)
    }

    var pollDescriptor: Int32? { isClosed ? nil : fd }
}

/// Guest connections to host port P go to the unix socket "PATH_P".
final class UnixVsockBackend: VsockHostBackend {
    let path: String
    init(path: String) { self.path = path }

    func connect(port: UInt32) -> (any VsockHostStream)? {
        guard let fd = try? UnixSocket.connect(path: "\(path)_\(port)") else { return nil }
        return UnixVsockStream(fd: fd)
    }
}

/// The vsock thread: accepts host connections on PATH, reads their "CONNECT <port>\n"
/// line, hands them to the device, and polls the connected streams for the device
/// (`VirtioVsock.pollEntries`): input when the guest has credit, output when guest data
/// waits for the host; a guest that does not accept a host connection within 10 s (or has
/// not started its driver) closes it. At most `maximumHandshakes` connections may be reading their
/// CONNECT line at once (the oldest is dropped); a line longer than 32 bytes, or not
/// "CONNECT <port>", closes the connection.
public final class VsockHostPump: @unchecked Sendable {
    static let maximumHandshakes = 16
    static let maximumLine = 32
    /// How long the guest has to accept a host connection (Firecracker waits 2 s; the
    /// software CPU under load needs more).
    static let answerTimeout: UInt64 = 10_000_000_000

    private let model: VirtioVsock
    private let device: VirtioPCIDevice
    private let listener: Int32
    public let path: String
    private let wake: EventFD
    private let running = Atomic<Bool>(false)
    private var thread: HostThread?
    private let log: Logger
    private let gate: QuiesceGate
    /// Accepted host sockets still reading their CONNECT line (thread-owned).
    private var handshakes: [(fd: Int32, line: [UInt8])] = []

    /// - gate: the machine's quiesce gate; each round of device work passes it.
    init(model: VirtioVsock, device: VirtioPCIDevice, path: String, gate: QuiesceGate, log: Logger) throws {
        self.gate = gate
        self.model = model
        self.device = device
        self.path = path
        self.log = log
        do {
            wake = try EventFD()
        } catch {
            throw VMMError.machine("cannot create the vsock thread's eventfd: \(error)")
        }
        try VsockConfig(guestCID: model.guestCID, path: path).checkHostPath()
        do {
            listener = try UnixSocket.listen(path: path, mode: 0o600)
        } catch {
            throw VsockConfigError.socket(path: path, reason: "\(error)")
        }
        _ = fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK)
        model.onHostWork = { [wake] in wake.signal() }
    }

    deinit {
        stop()
        model.onHostWork = nil
        for h in handshakes { _ = close(h.fd) }
        _ = close(listener)
    }

    func start() throws {
        guard !running.exchange(true, ordering: .acquiringAndReleasing) else { return }
        thread = try HostThread(name: "virtio-vsock") { [self] in run() }
    }

    /// Stops the thread and removes the socket file (host programs then get ENOENT).
    func stop() {
        if running.exchange(false, ordering: .acquiringAndReleasing) {
            wake.signal()
            thread?.join()
            thread = nil
        }
        unlink(path)
    }

    private func run() {
        while running.load(ordering: .acquiring) {
            let entries = gate.pass { device.withLock(processing: nil) { model.pollEntries() } }
            var fds = [pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            for h in handshakes { fds.append(pollfd(fd: h.fd, events: Int16(POLLIN), revents: 0)) }
            for e in entries {
                let events = (e.wantsInput ? Int16(POLLIN) : 0) | (e.wantsOutput ? Int16(POLLOUT) : 0)
                fds.append(pollfd(fd: e.descriptor, events: events, revents: 0))
            }
            // SAFETY: poll writes only the revents fields of the fds.count entries.
            let n = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), 1000) }
            if n < 0 {
                if errno == EINTR { continue }
                log.error("virtio-vsock thread: poll failed: \(String(cString: strerror(errno)))")
                return
            }
            if fds[0].revents != 0 { _ = wake.consume() }
            let now = DeviceClock.host.monotonicNanoseconds()
            if device.withLock(processing: nil, { model.expireRequests(now: now) }) > 0 {
                device.withLock(processing: VirtioVsock.receiveQueue) {}   // the RSTs
            }
            let handshakeReady = (0..<handshakes.count).filter { fds[2 + $0].revents != 0 }
            var ready: [VsockPollEntry] = []
            for (k, e) in entries.enumerated() {
                let r = fds[2 + handshakes.count + k].revents
                guard r != 0 else { continue }
                let failed = r & Int16(POLLERR | POLLHUP | POLLNVAL) != 0
                ready.append(VsockPollEntry(descriptor: e.descriptor,
                                            wantsInput: e.wantsInput && (r & Int16(POLLIN) != 0 || failed),
                                            wantsOutput: e.wantsOutput && (r & Int16(POLLOUT) != 0 || failed)))
            }
            gate.pass {
                if !ready.isEmpty {
                    device.withLock(processing: VirtioVsock.receiveQueue) { model.streamsReady(ready) }
                }
                readHandshakes(handshakeReady)
                if fds[1].revents != 0 { acceptAll() }
            }
        }
    }

    private func acceptAll() {
        for _ in 0..<Self.maximumHandshakes {
            guard let fd = try? UnixSocket.accept(listener) else { return }   // EAGAIN: none left
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            if handshakes.count >= Self.maximumHandshakes {
                _ = close(handshakes.removeFirst().fd)
            }
            handshakes.append((fd, []))
        }
    }

    /// Reads the CONNECT lines byte by byte (so no stream byte after the newline is taken).
    private func readHandshakes(_ indices: [Int]) {
        var done = Set<Int>()
        for i in indices {
            var byte: UInt8 = 0
            while true {
                let n = recv(handshakes[i].fd, &byte, 1, 0)
                if n < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { break }
                guard n == 1 else { _ = close(handshakes[i].fd); done.insert(i); break }
                if byte == UInt8(ascii: "\n") {
                    finishHandshake(fd: handshakes[i].fd, line: handshakes[i].line)
                    done.insert(i)
                    break
                }
                handshakes[i].line.append(byte)
                if handshakes[i].line.count > Self.maximumLine { _ = close(handshakes[i].fd); done.insert(i); break }
            }
        }
        handshakes = handshakes.enumerated().filter { !done.contains($0.offset) }.map(\.element)
    }

    private func finishHandshake(fd: Int32, line: [UInt8]) {
        let text = String(decoding: line, as: UTF8.self)
        guard text.hasPrefix("CONNECT "), let port = UInt32(text.dropFirst(8)) else {
            log.debug("virtio-vsock: host connection sent '\(text)', not CONNECT <port>")
            _ = close(fd)
            return
        }
        let stream = UnixVsockStream(fd: fd)
        let taken = device.withLock(processing: VirtioVsock.receiveQueue) {
            model.connectFromHost(port: port, stream: stream,
                                  deadline: DeviceClock.host.monotonicNanoseconds() + Self.answerTimeout)
        }
        if !taken { stream.close() }
    }
}
