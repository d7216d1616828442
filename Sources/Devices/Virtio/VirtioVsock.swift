import GuestMemory

/// One host-side byte stream of a vsock connection (a unix socket in the hybrid backend,
/// VMM's VsockHost.swift). Every call is non-blocking and made with the device lock held.
public protocol VsockHostStream: AnyObject {
    /// Writes what it can of `bytes`: the count taken (0: the stream is full now), nil when
    /// the stream is gone.
    func write(_ bytes: UnsafeRawBufferPointer) -> Int?
    /// Reads what is there: the count read (0: nothing now), nil at end of stream or error.
    func read(into buffer: UnsafeMutableRawBufferPointer) -> Int?
    /// The guest accepted the connection this stream asked for; `hostPort` is the port the
    /// device gave the host side (the hybrid backend answers "OK <hostPort>").
    func accepted(hostPort: UInt32)
    /// The guest will send no more.
    func shutdownWrite()
    func close()
    /// A descriptor to poll for input and output (nil: the stream is always ready).
    var pollDescriptor: Int32? { get }
}

/// Where guest-initiated connections go on the host.
public protocol VsockHostBackend: AnyObject {
    /// The guest connects to host port `port`: the stream, or nil to refuse (RST).
    func connect(port: UInt32) -> (any VsockHostStream)?
}

/// What the host side's poll thread should wait for on one stream.
public struct VsockPollEntry: Equatable, Sendable {
    public var descriptor: Int32
    public var wantsInput: Bool
    public var wantsOutput: Bool
    public init(descriptor: Int32, wantsInput: Bool, wantsOutput: Bool) {
        self.descriptor = descriptor; self.wantsInput = wantsInput; self.wantsOutput = wantsOutput
    }
}

/// virtio-vsock (virtio 1.2 §5.10, device id 19): stream sockets between the guest (CID
/// `guestCID`, in config space) and the host (CID 2). Queues: 0 rx (device → guest),
/// 1 tx (guest → device), 2 event (buffers are kept; we never send a transport reset).
/// No feature bits (no SEQPACKET).
///
/// Per connection the credit state machine is `VsockConnection` (VsockPacket.swift); this
/// class moves packets between the queues and the host streams:
/// - tx: each chain is one packet, a 44-byte header then `len` payload bytes. A chain
///   shorter than the header, or whose source CID is not the guest's, is dropped
///   (counted); a packet with a bad length (over `maximumPayload` or beyond the chain),
///   an unknown type or op, for another CID, or for no connection gets a RST.
///   A REQUEST opens a connection through `backend` (refused: RST). RW data goes to the
///   host stream; what the stream cannot take now is kept, at most the credit we
///   advertised (`bufferSize`), and a guest that sends more is reset.
/// - rx: control packets first (RESPONSE, RST, CREDIT_UPDATE, SHUTDOWN, REQUEST for
///   host-initiated connections; at most `maximumControlPackets` waiting, more are
///   dropped and counted), then data read from host streams within the guest's credit.
/// The host side's thread (VMM's VsockHost.swift) asks `pollEntries()` what to wait for,
/// reports readiness with `streamsReady`, and opens host-initiated connections with
/// `connectFromHost`; `onHostWork` wakes it when the set changed.
///
/// Called with the transport's lock held (see `VirtioDeviceModel`).
public final class VirtioVsock: VirtioDeviceModel, VirtioBackendAttachable, @unchecked Sendable {
    public static let receiveQueue = 0
    public static let transmitQueue = 1
    public static let eventQueue = 2
    public static let queueSize: UInt16 = 128
    /// Largest RW payload accepted from the guest (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
    public static let maximumPayload = 64 * 1024
    /// Our receive buffer per connection (the credit the guest gets).
    public static let bufferSize: UInt32 = 256 * 1024
    public static let maximumConnections = 64
    public static let maximumControlPackets = 1024
    /// Host ports given to host-initiated connections start here (as Firecracker's do).
    public static let firstHostPort: UInt32 = 1 << 30

    public let guestCID: UInt64
    public let backend: any VsockHostBackend

    /// Called with the device lock held (must not call back into the device) when the set
    /// of streams to poll changed.
    public var onHostWork: (@Sendable () -> Void)?

    /// Counters (for metrics and tests).
    public private(set) var droppedPackets: UInt64 = 0
    public private(set) var resetsSent: UInt64 = 0
    public private(set) var droppedControlPackets: UInt64 = 0
    public private(set) var bytesToHost: UInt64 = 0
    public private(set) var bytesToGuest: UInt64 = 0

    struct Key: Hashable { var hostPort: UInt32; var guestPort: UInt32 }

    final class Link {
        var conn: VsockConnection
        let stream: any VsockHostStream
        /// Guest bytes the stream has not taken yet (at most `bufferSize`).
        var toHost: [UInt8] = []
        /// Host bytes read but not yet placed in a receive buffer.
        var toGuest: [UInt8] = []
        /// Whether the stream may have input (cleared when a read finds none).
        var hostReadable = true
        var hostEnded = false
        /// A host-initiated connection the guest has not answered is dropped after this
        /// (the host thread's monotonic nanoseconds).
        var answerDeadline: UInt64?
        var guestEnded = false
        init(conn: VsockConnection, stream: any VsockHostStream) { self.conn = conn; self.stream = stream }
    }

    private var links: [Key: Link] = [:]
    /// Link keys in creation order, for fair round-robin reads.
    private var order: [Key] = []
    private var control: [VsockHeader] = []
    private var nextHostPort = VirtioVsock.firstHostPort
    private var chain = DescriptorChain()
    private var scratch = [UInt8](repeating: 0, count: VirtioVsock.maximumPayload)
    private weak var transport: VirtioPCIDevice?

    /// `guestCID` must be 3...0xFFFF_FFFE (0-2 and VMADDR_CID_ANY are reserved).
    public init(guestCID: UInt64, backend: any VsockHostBackend) {
        self.guestCID = guestCID
        self.backend = backend
    }

    public static func isValidGuestCID(_ cid: UInt64) -> Bool { cid >= 3 && cid < 0xFFFF_FFFF }

    public func attach(_ transport: VirtioPCIDevice) { self.transport = transport }

    public var deviceType: VirtioDeviceType { .socket }
    public var pciClass: (UInt8, UInt8, UInt8) { (0x07, 0x80, 0x00) }   // communication, other
    public var deviceFeatures: UInt64 { 0 }
    public var queueMaxSizes: [UInt16] { [Self.queueSize, Self.queueSize, Self.queueSize] }
    public var configSize: Int { 8 }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        var c = LEBytes(count: 8)
        c.put(guestCID, at: 0)
        return Self.readLE(c.bytes, offset: offset, size: size)
    }

    public func writeConfig(offset: Int, size: Int, value: UInt32) {}   // guest_cid is read-only

    /// Whether the driver has started the device (DRIVER_OK, not reset since).
    public private(set) var isActive = false

    public func activate(features: UInt64) { isActive = true }

    public func reset() {
        isActive = false
        for link in links.values { link.stream.close() }
        links.removeAll()
        order.removeAll()
        control.removeAll()
        onHostWork?()
    }

    /// Connections open now (for tests and metrics).
    public var connectionCount: Int { links.count }
    /// Control packets waiting for receive buffers.
    public var pendingControlCount: Int { control.count }

    public func followUpQueue(after queueIndex: Int) -> Int? {
        queueIndex == Self.transmitQueue ? Self.receiveQueue : nil
    }

    public func process(queueIndex: Int, queue: inout SplitVirtqueue, memory: GuestMemory) throws {
        switch queueIndex {
        case Self.transmitQueue: try transmit(queue: &queue, memory: memory)
        case Self.receiveQueue: try receive(queue: &queue, memory: memory)
        default: return   // event queue: buffers stay posted
        }
    }

    // MARK: host side (called by the VMM's vsock thread, under the lock)

    /// Opens a host-initiated connection to guest port `port` over `stream`: sends the guest
    /// a REQUEST; `stream.accepted` is called when the guest answers. False (the stream is
    /// not kept) when the driver has not started the device or it is at its connection
    /// limit. A guest that has not answered by `deadline` (see `expireRequests`) is
    /// taken to refuse.
    /// Call through `transport.withLock(processing: VirtioVsock.receiveQueue)`.
    public func connectFromHost(port: UInt32, stream: any VsockHostStream, deadline: UInt64? = nil) -> Bool {
        guard isActive, links.count < Self.maximumConnections else { return false }
        var hostPort = nextHostPort
        for _ in 0..<(Self.maximumConnections + 1) {
            if links[Key(hostPort: hostPort, guestPort: port)] == nil { break }
            hostPort = hostPort &+ 1
        }
        nextHostPort = hostPort &+ 1
        if nextHostPort < Self.firstHostPort { nextHostPort = Self.firstHostPort }
        let conn = VsockConnection(guestCID: guestCID, guestPort: port, hostPort: hostPort,
                                   bufAlloc: Self.bufferSize, initiatedByGuest: false)
        let key = Key(hostPort: hostPort, guestPort: port)
        let link = Link(conn: conn, stream: stream)
        link.answerDeadline = deadline
        links[key] = link
        order.append(key)
        sendControl(conn.request())
        onHostWork?()
        return true
    }

    /// Drops host-initiated connections the guest has not answered by `now` (RST to the
    /// guest, the host stream closed). Returns how many.
    @discardableResult
    public func expireRequests(now: UInt64) -> Int {
        var n = 0
        for key in order {
            guard let link = links[key], link.conn.state == .connecting,
                  let d = link.answerDeadline, d <= now else { continue }
            sendControl(link.conn.header(op: VsockHeader.opRst))
            drop(key)
            n += 1
        }
        return n
    }

    /// What the host thread should poll: input on streams the guest has credit for and
    /// no data waits on, output on streams that have guest data waiting.
    public func pollEntries() -> [VsockPollEntry] {
        var out: [VsockPollEntry] = []
        for key in order {
            guard let link = links[key], let fd = link.stream.pollDescriptor else { continue }
            let input = link.conn.state == .established && !link.hostEnded && !link.hostReadable
                && link.toGuest.isEmpty && link.conn.peerCredit > 0
            let output = !link.toHost.isEmpty
            if input || output { out.append(VsockPollEntry(descriptor: fd, wantsInput: input, wantsOutput: output)) }
        }
        return out
    }

    /// The host thread saw these descriptors ready: flushes waiting guest data and marks
    /// readable streams. Call through `withLock(processing: receiveQueue)`.
    public func streamsReady(_ ready: [VsockPollEntry]) {
        for entry in ready {
            for key in order {
                guard let link = links[key], link.stream.pollDescriptor == entry.descriptor else { continue }
                if entry.wantsInput { link.hostReadable = true }
                if entry.wantsOutput { flush(key, link) }
            }
        }
    }

    // MARK: tx: guest → host

    private func transmit(queue: inout SplitVirtqueue, memory: GuestMemory) throws {
        // One queue's worth per call, so a flooding guest cannot hold the lock forever.
        for _ in 0..<Int(queue.size) {
            guard try queue.pop(into: &chain, memory: memory) else { return }
            try handlePacket(memory: memory)
            try queue.push(head: chain.head, written: 0, memory: memory)
        }
    }

    private func handlePacket(memory: GuestMemory) throws {
        guard chain.readableLength >= VsockHeader.size,
              let hdr = VsockHeader(bytes: try chain.readBytes(offset: 0, count: VsockHeader.size, memory: memory)),
              hdr.srcCID == guestCID else {
            droppedPackets &+= 1
            return
        }
        let available = chain.readableLength - VsockHeader.size
        guard Int(hdr.len) <= Self.maximumPayload, Int(hdr.len) <= available,
              hdr.dstCID == VsockHeader.hostCID, hdr.type == VsockHeader.typeStream else {
            refuse(hdr)
            return
        }
        let key = Key(hostPort: hdr.dstPort, guestPort: hdr.srcPort)
        guard let link = links[key] else {
            if hdr.op == VsockHeader.opRequest { openFromGuest(hdr, key: key) } else { refuse(hdr) }
            return
        }
        var payload: [UInt8] = []
        if hdr.op == VsockHeader.opRW, hdr.len > 0 {
            payload = try chain.readBytes(offset: VsockHeader.size, count: Int(hdr.len), memory: memory)
        }
        let wasConnecting = link.conn.state == .connecting
        let creditBefore = link.conn.peerCredit
        let events = link.conn.receive(hdr, payload: payload)
        if wasConnecting, link.conn.state == .established {
            link.stream.accepted(hostPort: key.hostPort)
            onHostWork?()
        }
        if creditBefore == 0, link.conn.peerCredit > 0 { onHostWork?() }
        apply(events, key, link)
    }

    /// A RST for a packet we reject (never in answer to a RST); a connection it belonged
    /// to is over.
    private func refuse(_ hdr: VsockHeader) {
        drop(Key(hostPort: hdr.dstPort, guestPort: hdr.srcPort))
        guard hdr.op != VsockHeader.opRst else { return }
        sendControl(VsockHeader(srcCID: VsockHeader.hostCID, dstCID: guestCID, srcPort: hdr.dstPort,
                                dstPort: hdr.srcPort, op: VsockHeader.opRst))
    }

    private func openFromGuest(_ hdr: VsockHeader, key: Key) {
        guard links.count < Self.maximumConnections, let stream = backend.connect(port: key.hostPort) else {
            refuse(hdr)
            return
        }
        var conn = VsockConnection(guestCID: guestCID, guestPort: key.guestPort, hostPort: key.hostPort,
                                   bufAlloc: Self.bufferSize, initiatedByGuest: true)
        sendControl(conn.accept(hdr))
        links[key] = Link(conn: conn, stream: stream)
        order.append(key)
        onHostWork?()
    }

    private func apply(_ events: [VsockConnection.Event], _ key: Key, _ link: Link) {
        for event in events {
            switch event {
            case let .send(h):
                sendControl(h)
            case let .deliver(bytes):
                bytesToHost &+= UInt64(bytes.count)
                let wasEmpty = link.toHost.isEmpty
                link.toHost.append(contentsOf: bytes)
                flush(key, link)
                if wasEmpty, !link.toHost.isEmpty { onHostWork?() }
            case .peerClosed:
                link.guestEnded = true
                if link.toHost.isEmpty { link.stream.shutdownWrite() }
            case .reset:
                drop(key)
            }
        }
        // Both sides are done and nothing waits for the host: the connection is over.
        if links[key] != nil, link.hostEnded, link.guestEnded, link.toHost.isEmpty {
            sendControl(link.conn.header(op: VsockHeader.opRst))
            drop(key)
        }
    }

    /// Writes waiting guest data to the stream and tells the guest about the space freed.
    private func flush(_ key: Key, _ link: Link) {
        guard !link.toHost.isEmpty else { return }
        let n = link.toHost.withUnsafeBytes { link.stream.write($0) }
        guard let n else {
            // The host side went away with guest data still to write.
            apply(link.conn.hostClosed(), key, link)
            return
        }
        guard n > 0 else { return }
        link.toHost.removeFirst(min(n, link.toHost.count))
        let events = link.conn.forwarded(UInt32(min(n, Int(Self.bufferSize))))
        if link.guestEnded, link.toHost.isEmpty { link.stream.shutdownWrite() }
        apply(events, key, link)
    }

    private func drop(_ key: Key) {
        guard let link = links.removeValue(forKey: key) else { return }
        order.removeAll { $0 == key }
        link.stream.close()
        onHostWork?()
    }

    private func sendControl(_ h: VsockHeader) {
        if h.op == VsockHeader.opRst { resetsSent &+= 1 }
        guard control.count < Self.maximumControlPackets else {
            droppedControlPackets &+= 1
            return
        }
        control.append(h)
    }

    // MARK: rx: host → guest

    private func receive(queue: inout SplitVirtqueue, memory: GuestMemory) throws {
        // Control packets first, at most a queue's worth of packets per call.
        var budget = Int(queue.size)
        guard try sendControlPackets(queue: &queue, memory: memory, budget: &budget) else { return }
        // Then data, one packet per connection per round.
        var progress = true
        while progress, budget > 0 {
            progress = false
            for key in order {
                guard budget > 0, try queue.pendingCount(memory: memory) > 0 else { return }
                guard let link = links[key], link.conn.state == .established, link.conn.peerCredit > 0 else { continue }
                fill(key, link)
                guard links[key] != nil, !link.toGuest.isEmpty else { continue }
                guard try queue.pop(into: &chain, memory: memory) else { return }
                try requireHeaderRoom()
                budget -= 1
                let room = chain.writableLength - VsockHeader.size
                let n = Int(link.conn.reserveSend(min(room, link.toGuest.count)))
                let hdr = link.conn.header(op: VsockHeader.opRW, len: UInt32(n))
                try chain.writeBytes(hdr.bytes, offset: 0, memory: memory)
                if n > 0 {
                    try chain.writeBytes(Array(link.toGuest.prefix(n)), offset: VsockHeader.size, memory: memory)
                    link.toGuest.removeFirst(n)
                    bytesToGuest &+= UInt64(n)
                }
                try queue.push(head: chain.head, written: UInt32(VsockHeader.size + n), memory: memory)
                progress = true
            }
            // Control packets made while reading (a SHUTDOWN at end of stream) go out now.
            let before = control.count
            guard try sendControlPackets(queue: &queue, memory: memory, budget: &budget) else { return }
            if control.count != before { progress = true }
        }
    }

    /// Places waiting control packets in receive buffers; true when none is left waiting.
    private func sendControlPackets(queue: inout SplitVirtqueue, memory: GuestMemory, budget: inout Int) throws -> Bool {
        while !control.isEmpty, budget > 0, try queue.pendingCount(memory: memory) > 0 {
            budget -= 1
            guard try queue.pop(into: &chain, memory: memory) else { break }
            try requireHeaderRoom()
            try chain.writeBytes(control[0].bytes, offset: 0, memory: memory)
            control.removeFirst()
            try queue.push(head: chain.head, written: UInt32(VsockHeader.size), memory: memory)
        }
        return control.isEmpty
    }

    /// A receive buffer must hold at least a header (Linux posts 44 + 4096 bytes).
    private func requireHeaderRoom() throws {
        guard chain.writableLength >= VsockHeader.size else {
            throw VirtioError.malformedRequest("virtio-vsock receive buffer has \(chain.writableLength) writable bytes, less than the 44-byte header")
        }
    }

    /// Reads host data for `link` when none waits, within the guest's credit.
    private func fill(_ key: Key, _ link: Link) {
        guard link.toGuest.isEmpty, link.hostReadable, !link.hostEnded else { return }
        let want = min(Int(link.conn.peerCredit), Self.maximumPayload)
        guard want > 0 else { return }
        let n = scratch.withUnsafeMutableBytes { link.stream.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want])) }
        switch n {
        case nil:
            // End of the host stream: the host sends no more (it may still read; if it
            // closed altogether, the next write fails and resets the connection).
            link.hostEnded = true
            sendControl(link.conn.header(op: VsockHeader.opShutdown, flags: VsockHeader.shutdownSend))
            if link.guestEnded, link.toHost.isEmpty { apply([], key, link) }
            onHostWork?()
        case 0?:
            link.hostReadable = false
            onHostWork?()
        case let count?:
            link.toGuest = Array(scratch[0..<min(count, want)])
        }
    }
}
