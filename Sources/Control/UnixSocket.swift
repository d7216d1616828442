#if canImport(Glibc)
import Glibc
#endif

public enum ControlError: Error, Equatable, Sendable, CustomStringConvertible {
    case system(call: String, errno: Int32, detail: String)
    case frameTooLarge(Int)
    case truncatedFrame
    case malformed(String)
    case versionMismatch(peer: Int)
    case pathTooLong(String)

    public var description: String {
        switch self {
        case let .system(call, e, detail):
            let d = detail.isEmpty ? "" : " \(detail)"
            return "\(call)\(d): \(String(cString: strerror(e)))"
        case .frameTooLarge(let n):
            return "control message of \(n) bytes is larger than the \(ControlProtocol.maxFrameSize)-byte limit"
        case .truncatedFrame: return "connection closed in the middle of a control message"
        case .malformed(let why): return "malformed control message: \(why)"
        case .versionMismatch(let v):
            return "control protocol version \(v) is not ours (\(ControlProtocol.version)): vmd and vmctl must match"
        case .pathTooLong(let p): return "socket path too long: \(p)"
        }
    }

    static func sys(_ call: String, _ detail: String = "") -> ControlError {
        .system(call: call, errno: errno, detail: detail)
    }
}

/// The peer of a unix socket as the kernel reports it (SO_PEERCRED).
public struct PeerCredentials: Hashable, Sendable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid; self.uid = uid; self.gid = gid
    }
}

/// Unix stream sockets: listen, connect, socketpair, credentials.
public enum UnixSocket {
    private static let SO_PEERCRED: Int32 = 17

    private static func address(_ path: String) throws(ControlError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else { throw .pathTooLong(path) }
        // SAFETY: writes bytes.count < capacity bytes into the fixed sun_path array.
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return addr
    }

    /// Listens on `path` (replacing a stale socket there) with `mode` and, if given, `owner`
    /// (uid, gid; nil leaves one as it is); returns the fd. The socket is bound under a side
    /// name (`path` + "~"), given its mode and owner, made to listen, and only then renamed
    /// to `path`: a client that finds `path` can connect at once, never with ECONNREFUSED,
    /// and never while the socket still has its umask's mode. A `path` too long for the side
    /// name is bound directly.
    public static func listen(path: String, mode: mode_t = 0o660,
                              owner: (uid: uid_t?, gid: gid_t?)? = nil) throws(ControlError) -> Int32 {
        var addr = try address(path)
        let side = path + "~"
        let staged = (try? address(side)) != nil
        if staged { addr = try address(side) }
        let bound = staged ? side : path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .sys("socket") }
        unlink(bound)
        // SAFETY: addr is a valid sockaddr_un for the duration of the call.
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            let e = ControlError.sys("bind", bound)
            close(fd)
            throw e
        }
        func fail(_ call: String) -> ControlError {
            let e = ControlError.sys(call, path)
            close(fd)
            if staged { unlink(side) }
            return e
        }
        guard chmod(bound, mode) == 0 else { throw fail("chmod") }
        if let owner, owner.uid != nil || owner.gid != nil {
            guard chown(bound, owner.uid ?? uid_t.max, owner.gid ?? gid_t.max) == 0 else { throw fail("chown") }
        }
        guard Glibc.listen(fd, 64) == 0 else { throw fail("listen") }
        if staged {
            guard rename(side, path) == 0 else { throw fail("rename") }
        }
        return fd
    }

    /// `timeout`: seconds for the connect itself and then for each send and receive
    /// (SO_SNDTIMEO/SO_RCVTIMEO; nil: block). A timed-out call fails with EAGAIN.
    public static func connect(path: String, timeout: Double? = nil) throws(ControlError) -> Int32 {
        var addr = try address(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .sys("socket") }
        if let timeout { setTimeouts(fd, receive: timeout, send: timeout) }
        // SAFETY: as in listen.
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            let e = ControlError.sys("connect", path)
            close(fd)
            throw e
        }
        return fd
    }

    /// Sets (or with nil clears) the receive and send timeouts of a socket.
    public static func setTimeouts(_ fd: Int32, receive: Double?, send: Double?) {
        func tv(_ s: Double?) -> timeval {
            guard let s, s > 0 else { return timeval(tv_sec: 0, tv_usec: 0) }
            return timeval(tv_sec: Int(s), tv_usec: Int((s - Double(Int(s))) * 1_000_000))
        }
        var r = tv(receive), w = tv(send)
        // SAFETY: both timevals outlive the calls, which copy them.
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &r, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &w, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Accepts one connection; retries on EINTR.
    public static func accept(_ listener: Int32) throws(ControlError) -> Int32 {
        while true {
            let fd = Glibc.accept(listener, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                return fd
            }
            if errno == EINTR || errno == ECONNABORTED { continue }
            throw .sys("accept")
        }
    }

    public static func pair() throws(ControlError) -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw .sys("socketpair")
        }
        return (fds[0], fds[1])
    }

    public static func peerCredentials(_ fd: Int32) throws(ControlError) -> PeerCredentials {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        var cred: (Int32, UInt32, UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
        // SAFETY: cred has the layout and size of struct ucred; len says so.
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0, len == 12 else {
            throw .sys("getsockopt(SO_PEERCRED)")
        }
        return PeerCredentials(pid: cred.0, uid: cred.1, gid: cred.2)
    }
}
