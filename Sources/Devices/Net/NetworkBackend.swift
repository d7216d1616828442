#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Where a virtual NIC's Ethernet frames go and come from: one frame per call, without the
/// virtio header (the device model strips and adds it) unless `carriesVirtioHeader`: then
/// every frame sent and received starts with the 12-byte virtio-net header (a tap opened
/// with IFF_VNET_HDR), so the guest's checksum and segmentation offloads pass through.
///
/// `send` and `receive` never block. A backend with a file descriptor reports it in
/// `pollDescriptor` so the VMM's network thread can wait for frames; one without (the
/// in-memory backend of the tests) is driven by whoever feeds it.
public protocol NetworkBackend: AnyObject, Sendable {
    /// Hands one frame to the host side; false when it was dropped (queue full, link down).
    func send(_ frame: UnsafeRawBufferPointer) -> Bool
    /// Copies the next waiting frame into `buffer` and returns its length (a longer frame is
    /// truncated to `buffer.count`); nil when no frame waits.
    func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int?
    /// Readable (poll(2) POLLIN) when a frame waits; nil when the backend has no descriptor.
    var pollDescriptor: Int32? { get }
    /// A short description for logs ("tap tap3", "fd 7").
    var name: String { get }
    /// A second descriptor to poll: readable when the backend has frames of its own for the
    /// guest (a local interface's DHCP replies); nil for most backends.
    var wakeDescriptor: Int32? { get }
    /// Runs the backend's timed work due at `now` (a local interface's unsolicited router
    /// advertisements, which then wait behind `wakeDescriptor`) and returns when it next has
    /// some; nil when it has none. The VMM's network thread calls it every time it wakes and
    /// sleeps no longer than the answer.
    func serviceTimers(now: ContinuousClock.Instant) -> ContinuousClock.Instant?
    /// Whether frames carry the 12-byte virtio-net header in both directions.
    var carriesVirtioHeader: Bool { get }
    /// With the header: which offloaded frames the backend may hand the guest (what the
    /// guest's driver accepted); false when the host side refused.
    func setReceiveOffloads(_ offloads: NetworkOffloads) -> Bool
}

extension NetworkBackend {
    public var wakeDescriptor: Int32? { nil }
    public func serviceTimers(now: ContinuousClock.Instant) -> ContinuousClock.Instant? { nil }
    public var carriesVirtioHeader: Bool { false }
    public func setReceiveOffloads(_ offloads: NetworkOffloads) -> Bool { offloads.isEmpty }
}

/// Offloaded frames a guest takes on receive (VIRTIO_NET_F_GUEST_CSUM, GUEST_TSO4/6); the
/// raw values are the tap's TUN_F_* bits.
public struct NetworkOffloads: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let checksum = NetworkOffloads(rawValue: 0x01)
    public static let tso4 = NetworkOffloads(rawValue: 0x02)
    public static let tso6 = NetworkOffloads(rawValue: 0x04)
}

/// A backend over a datagram-style descriptor where one read or write is one frame: a tap
/// device opened with IFF_TAP|IFF_NO_PI (`TapInterface`), or one end of an
/// AF_UNIX SOCK_DGRAM/SOCK_SEQPACKET socketpair (tests, other processes). The descriptor
/// is made non-blocking; it is closed on deinit when `ownsDescriptor`.
public final class FileDescriptorNetworkBackend: NetworkBackend, @unchecked Sendable {
    public let fd: Int32
    public let name: String
    private let ownsDescriptor: Bool
    private let sendErrors = Atomic<UInt64>(0)

    /// Frames `send` could not hand over (EAGAIN, ENOBUFS, link down...).
    public var failedSends: UInt64 { sendErrors.load(ordering: .relaxed) }

    public let carriesVirtioHeader: Bool
    private let offloadControl: (@Sendable (Int32, NetworkOffloads) -> Bool)?

    /// - virtioHeader: `fd` is a tap opened with IFF_VNET_HDR and a 12-byte header;
    ///   `offloadControl` then sets its TUNSETOFFLOAD (HostNet's `TapInterface.setOffloads`).
    public init(fd: Int32, name: String? = nil, ownsDescriptor: Bool = true, virtioHeader: Bool = false,
                offloadControl: (@Sendable (Int32, NetworkOffloads) -> Bool)? = nil) {
        self.fd = fd
        self.name = name ?? "fd \(fd)"
        self.ownsDescriptor = ownsDescriptor
        carriesVirtioHeader = virtioHeader
        self.offloadControl = offloadControl
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
    }

    deinit { if ownsDescriptor { close(fd) } }

    public var pollDescriptor: Int32? { fd }

    public func setReceiveOffloads(_ offloads: NetworkOffloads) -> Bool {
        guard carriesVirtioHeader, let offloadControl else { return offloads.isEmpty }
        return offloadControl(fd, offloads)
    }

    public func send(_ frame: UnsafeRawBufferPointer) -> Bool {
        while true {
            // SAFETY: writes frame.count bytes from the caller's buffer.
            let n = write(fd, frame.baseAddress, frame.count)
            if n == frame.count { return true }
            if n < 0, errno == EINTR { continue }
            sendErrors.add(1, ordering: .relaxed)
            return false
        }
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        while true {
            // SAFETY: reads at most buffer.count bytes into the caller's buffer.
            let n = read(fd, buffer.baseAddress, buffer.count)
            if n > 0 { return n }
            if n < 0, errno == EINTR { continue }
            // 0 (peer closed / empty datagram) and EAGAIN both mean: nothing now.
            return nil
        }
    }

    /// An AF_UNIX SOCK_DGRAM socketpair: the first end for a device, the second for the
    /// test (or process) playing the network.
    public static func socketPair() throws -> (device: FileDescriptorNetworkBackend, peer: Int32) {
        var fds: [Int32] = [0, 0]
        let rc = fds.withUnsafeMutableBufferPointer { socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, $0.baseAddress) }
        guard rc == 0 else { throw NetworkError.systemCall("socketpair", errno: errno) }
        return (FileDescriptorNetworkBackend(fd: fds[0], name: "socketpair"), fds[1])
    }
}

/// An in-memory backend: frames the device sends are appended to `sent`; frames queued
/// with `inject` are what the device receives. For tests.
public final class MemoryNetworkBackend: NetworkBackend, @unchecked Sendable {
    private struct State {
        var sent: [[UInt8]] = []
        var incoming: [[UInt8]] = []
        var acceptSends = true
        var receiveOffloads: NetworkOffloads = []
    }
    private let state = Mutex(State())
    public let carriesVirtioHeader: Bool

    /// - virtioHeader: frames (sent and injected) start with the 12-byte virtio-net header.
    public init(virtioHeader: Bool = false) { carriesVirtioHeader = virtioHeader }

    /// What the device last asked for with `setReceiveOffloads`.
    public var receiveOffloads: NetworkOffloads { state.withLock { $0.receiveOffloads } }
    public func setReceiveOffloads(_ offloads: NetworkOffloads) -> Bool {
        guard carriesVirtioHeader else { return offloads.isEmpty }
        state.withLock { $0.receiveOffloads = offloads }
        return true
    }

    public var name: String { "memory" }
    public var pollDescriptor: Int32? { nil }

    /// Frames the device sent, oldest first.
    public var sent: [[UInt8]] { state.withLock { $0.sent } }
    /// Frames queued for the device and not yet taken.
    public var waiting: Int { state.withLock { $0.incoming.count } }
    /// When false, `send` drops frames (a full host queue).
    public func setAcceptsSends(_ accept: Bool) { state.withLock { $0.acceptSends = accept } }

    /// Queues a frame for the device to receive.
    public func inject(_ frame: [UInt8]) { state.withLock { $0.incoming.append(frame) } }

    public func send(_ frame: UnsafeRawBufferPointer) -> Bool {
        state.withLock { s in
            guard s.acceptSends else { return false }
            s.sent.append(Array(frame))
            return true
        }
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        state.withLock { s -> Int? in
            guard !s.incoming.isEmpty else { return nil }
            let frame = s.incoming.removeFirst()
            let n = min(frame.count, buffer.count)
            frame.withUnsafeBytes { src in
                // SAFETY: n <= both buffer sizes.
                if n > 0 { buffer.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: n) }
            }
            return n
        }
    }
}

/// Backend failures (host interface set-up is HostNet's `HostNetError`).
public enum NetworkError: Error, Equatable, CustomStringConvertible {
    case systemCall(String, errno: Int32)

    public var description: String {
        switch self {
        case let .systemCall(call, e): return "\(call) failed: \(String(cString: strerror(e)))"
        }
    }
}
