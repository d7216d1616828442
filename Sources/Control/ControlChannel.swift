#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A framed message stream over a unix stream socket. A frame is a 4-byte big-endian length
/// and that many bytes of JSON; file descriptors travel as SCM_RIGHTS on the frame's first
/// bytes. Received descriptors are close-on-exec and belong to the caller.
public final class ControlChannel: @unchecked Sendable {
    public let fd: Int32
    private let ownsFD: Bool
    /// Bytes read past the end of the last frame.
    private var buffer: [UInt8] = []
    private var receivedFDs: [Int32] = []
    public static let maxFDsPerFrame = 8

    public init(fd: Int32, owned: Bool = true) {
        self.fd = fd
        self.ownsFD = owned
    }

    deinit {
        for f in receivedFDs { close(f) }
        if ownsFD { close(fd) }
    }

    public static func connect(path: String, timeout: Double? = nil) throws(ControlError) -> ControlChannel {
        ControlChannel(fd: try UnixSocket.connect(path: path, timeout: timeout))
    }

    public func peerCredentials() throws(ControlError) -> PeerCredentials {
        try UnixSocket.peerCredentials(fd)
    }

    // MARK: frames

    public func sendFrame(_ payload: [UInt8], fds: [Int32] = []) throws(ControlError) {
        guard payload.count <= ControlProtocol.maxFrameSize else { throw .frameTooLarge(payload.count) }
        guard fds.count <= Self.maxFDsPerFrame else { throw .malformed("too many file descriptors") }
        let n = UInt32(payload.count)
        var frame: [UInt8] = [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)]
        frame += payload
        var sent = try sendmsgWithFDs(frame, fds: fds)
        while sent < frame.count {
            sent += try sendmsgWithFDs(Array(frame[sent...]), fds: [])
        }
    }

    private func sendmsgWithFDs(_ bytes: [UInt8], fds: [Int32]) throws(ControlError) -> Int {
        let cmsgSpace = fds.isEmpty ? 0 : Self.cmsgSpace(fds.count * 4)
        var control = [UInt8](repeating: 0, count: max(cmsgSpace, 1))
        var result = 0
        var err: Int32 = 0
        bytes.withUnsafeBytes { dataPtr in
            control.withUnsafeMutableBytes { ctl in
                var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: dataPtr.baseAddress),
                                iov_len: dataPtr.count)
                var msg = msghdr()
                // SAFETY: iov and control outlive sendmsg; the cmsghdr is written within
                // cmsgSpace bytes of `control` with the kernel's layout (len, level, type, data).
                withUnsafeMutablePointer(to: &iov) { iovp in
                    msg.msg_iov = iovp
                    msg.msg_iovlen = 1
                    if !fds.isEmpty {
                        msg.msg_control = ctl.baseAddress
                        msg.msg_controllen = cmsgSpace
                        let len = Self.cmsgHeaderSize + fds.count * 4
                        ctl.storeBytes(of: len, toByteOffset: 0, as: Int.self)
                        ctl.storeBytes(of: SOL_SOCKET, toByteOffset: 8, as: Int32.self)
                        ctl.storeBytes(of: Int32(SCM_RIGHTS), toByteOffset: 12, as: Int32.self)
                        for (i, f) in fds.enumerated() {
                            ctl.storeBytes(of: f, toByteOffset: Self.cmsgHeaderSize + 4 * i, as: Int32.self)
                        }
                    }
                    while true {
                        let n = sendmsg(fd, &msg, Int32(MSG_NOSIGNAL))
                        if n < 0 && errno == EINTR { continue }
                        if n < 0 { err = errno } else { result = n }
                        break
                    }
                }
            }
        }
        if err != 0 { throw .system(call: "sendmsg", errno: err, detail: "") }
        return result
    }

    static let cmsgHeaderSize = 16  // size_t len, int level, int type on LP64
    static func cmsgSpace(_ dataLength: Int) -> Int { cmsgHeaderSize + ((dataLength + 7) & ~7) }

    /// Reads at most `count` bytes, collecting any descriptors; 0 at end of stream.
    private func receiveSome(_ count: Int) throws(ControlError) -> Int {
        var chunk = [UInt8](repeating: 0, count: count)
        let space = Self.cmsgSpace(Self.maxFDsPerFrame * 4)
        var control = [UInt8](repeating: 0, count: space)
        var n = 0
        var err: Int32 = 0
        var controlLength = 0
        var truncatedControl = false
        chunk.withUnsafeMutableBytes { data in
            control.withUnsafeMutableBytes { ctl in
                var iov = iovec(iov_base: data.baseAddress, iov_len: data.count)
                // SAFETY: iov/control outlive recvmsg; we read cmsg headers only within
                // msg_controllen bytes, each bounded by its own cmsg_len.
                withUnsafeMutablePointer(to: &iov) { iovp in
                    var msg = msghdr()
                    msg.msg_iov = iovp
                    msg.msg_iovlen = 1
                    msg.msg_control = ctl.baseAddress
                    msg.msg_controllen = space
                    while true {
                        let r = recvmsg(fd, &msg, Int32(MSG_CMSG_CLOEXEC))
                        if r < 0 && errno == EINTR { continue }
                        if r < 0 { err = errno } else { n = r }
                        break
                    }
                    controlLength = Int(msg.msg_controllen)
                    truncatedControl = (msg.msg_flags & Int32(MSG_CTRUNC)) != 0
                }
                var off = 0
                while off + Self.cmsgHeaderSize <= min(controlLength, ctl.count) {
                    let len = ctl.load(fromByteOffset: off, as: Int.self)
                    let level = ctl.load(fromByteOffset: off + 8, as: Int32.self)
                    let type = ctl.load(fromByteOffset: off + 12, as: Int32.self)
                    guard len >= Self.cmsgHeaderSize, off + len <= ctl.count else { break }
                    if level == SOL_SOCKET && type == Int32(SCM_RIGHTS) {
                        let count = (len - Self.cmsgHeaderSize) / 4
                        for i in 0..<count {
                            receivedFDs.append(ctl.load(fromByteOffset: off + Self.cmsgHeaderSize + 4 * i, as: Int32.self))
                        }
                    }
                    off += (len + 7) & ~7
                }
            }
        }
        if err != 0 { throw .system(call: "recvmsg", errno: err, detail: "") }
        if truncatedControl { throw .malformed("too many file descriptors") }
        buffer += chunk[0..<n]
        return n
    }

    /// The next frame and the descriptors that came with it; nil at a clean end of stream.
    public func receiveFrame() throws(ControlError) -> (payload: [UInt8], fds: [Int32])? {
        while buffer.count < 4 {
            if try receiveSome(4 - buffer.count) == 0 {
                if buffer.isEmpty { return nil }
                throw .truncatedFrame
            }
        }
        let len = Int(buffer[0]) << 24 | Int(buffer[1]) << 16 | Int(buffer[2]) << 8 | Int(buffer[3])
        guard len <= ControlProtocol.maxFrameSize else { throw .frameTooLarge(len) }
        while buffer.count < 4 + len {
            if try receiveSome(min(4 + len - buffer.count, 65536)) == 0 { throw .truncatedFrame }
        }
        let payload = Array(buffer[4..<(4 + len)])
        buffer.removeFirst(4 + len)
        let fds = receivedFDs
        receivedFDs = []
        return (payload, fds)
    }

    // MARK: typed messages

    public func send<T: Encodable>(_ value: T, fds: [Int32] = []) throws(ControlError) {
        let data: Data
        do { data = try JSONEncoder().encode(value) } catch {
            throw .malformed("cannot encode: \(error)")
        }
        try sendFrame(Array(data), fds: fds)
    }

    public func receive<T: Decodable>(_ type: T.Type) throws(ControlError) -> (T, [Int32])? {
        guard let (payload, fds) = try receiveFrame() else { return nil }
        do {
            let value = try JSONDecoder().decode(T.self, from: Data(payload))
            if let v = value as? any VersionedFrame, v.version != ControlProtocol.version {
                for f in fds { close(f) }
                throw ControlError.versionMismatch(peer: v.version)
            }
            return (value, fds)
        } catch let e as ControlError {
            throw e
        } catch {
            for f in fds { close(f) }
            // Name the version if that is what differs.
            if let v = try? JSONDecoder().decode(Versioned.self, from: Data(payload)),
               v.version != ControlProtocol.version {
                throw .versionMismatch(peer: v.version)
            }
            throw .malformed("\(error)")
        }
    }

    private struct Versioned: Decodable { var version: Int }

    /// Client side: one request, one reply (with any descriptors).
    /// `fds` travel with the request (`receive`: the state stream).
    public func call(_ request: ControlRequest, fds: [Int32] = []) throws(ControlError) -> (ControlReply, [Int32]) {
        do {
            try send(RequestFrame(request), fds: fds)
        } catch {
            // vmd may have refused the connection (too many) with a reply and closed it
            // before the request went out: that reply says why.
            guard case .system(_, let e, _) = error, e == EPIPE || e == ECONNRESET,
                  let (frame, fds) = try? receive(ReplyFrame.self) else { throw error }
            return (frame.reply, fds)
        }
        guard let (frame, fds) = try receive(ReplyFrame.self) else { throw .truncatedFrame }
        guard frame.version == ControlProtocol.version else {
            for f in fds { close(f) }
            throw .versionMismatch(peer: frame.version)
        }
        return (frame.reply, fds)
    }
}
