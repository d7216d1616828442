import GuestMemory

/// virtio-net (virtio 1.x §5.1): one receive and one transmit queue over a `NetworkBackend`.
///
/// Features offered: VIRTIO_NET_F_MAC (the MAC in config space), VIRTIO_NET_F_STATUS (link
/// state; `setLink(up:)` changes it with a config interrupt) and, when the backend carries
/// the virtio-net header (`NetworkBackend.carriesVirtioHeader`: a tap opened with
/// IFF_VNET_HDR), the offloads: CSUM, GUEST_CSUM, GUEST_TSO4/6, HOST_TSO4/6. No mergeable
/// receive buffers, no control queue: every frame is one chain behind the 12-byte v1
/// header (`VirtioNetHeader`); a guest taking GUEST_TSO posts 64 KiB buffers.
///
/// Transmit (queue 1): a chain is the header then the frame in its device-readable part;
/// the frame goes to the backend, with the header when it carries one (dropped and counted
/// when the backend refuses it, when it is empty or longer than `maximumFrameLength`, or
/// when its header asks for what was not negotiated or points outside the frame:
/// `VirtioNetHeader.transmitProblem`). A chain with fewer than 12 readable bytes is a
/// driver bug (NEEDS_RESET). When the driver starts the device, the backend is told which
/// offloaded frames the guest takes (`setReceiveOffloads`, the tap's TUNSETOFFLOAD); a
/// reset takes them back.
///
/// Receive (queue 0): frames are taken from the backend only when the guest has posted a
/// buffer; one frame the device could not place yet is held (`isHoldingFrame`) and the
/// backend is not read again until the guest posts more, so the host queue (the tap's)
/// applies backpressure. A posted chain with fewer than 12 writable bytes is a driver bug;
/// a frame longer than the chain is dropped and the chain returned empty.
///
/// Called with the transport's lock held (see `VirtioDeviceModel`).
public final class VirtioNet: VirtioDeviceModel, VirtioBackendAttachable, @unchecked Sendable {
    public enum Feature {
        public static let checksum: UInt64 = 1 << 0         // VIRTIO_NET_F_CSUM
        public static let guestChecksum: UInt64 = 1 << 1    // VIRTIO_NET_F_GUEST_CSUM
        public static let mac: UInt64 = 1 << 5              // VIRTIO_NET_F_MAC
        public static let guestTSO4: UInt64 = 1 << 7        // VIRTIO_NET_F_GUEST_TSO4
        public static let guestTSO6: UInt64 = 1 << 8        // VIRTIO_NET_F_GUEST_TSO6
        public static let hostTSO4: UInt64 = 1 << 11        // VIRTIO_NET_F_HOST_TSO4
        public static let hostTSO6: UInt64 = 1 << 12        // VIRTIO_NET_F_HOST_TSO6
        public static let mergeableRxBuffers: UInt64 = 1 << 15   // not offered
        public static let status: UInt64 = 1 << 16          // VIRTIO_NET_F_STATUS
        /// Offered with a backend that carries the header.
        public static let offloads = checksum | guestChecksum | guestTSO4 | guestTSO6 | hostTSO4 | hostTSO6
    }
    public static let receiveQueue = 0
    public static let transmitQueue = 1
    public static let queueSize: UInt16 = 256
    /// sizeof(struct virtio_net_hdr) with num_buffers: always 12 with VIRTIO_F_VERSION_1.
    public static let headerLength = VirtioNetHeader.length
    /// The longest frame carried: a 64 KiB TSO frame (an IP packet of at most 65535 bytes)
    /// with its Ethernet and VLAN headers; the 65562-byte buffer the spec has a GUEST_TSO
    /// driver post is this and the header.
    public static let maximumFrameLength = 65_550
    public static let linkUp: UInt16 = 1                    // VIRTIO_NET_S_LINK_UP

    public let mac: [UInt8]
    public let backend: any NetworkBackend
    /// vm.conf's `locked lladdr`: transmitted frames whose source MAC is not `mac` are
    /// dropped (counted in `transmitDropped`), as OpenBSD's vmd does.
    public let isMACLocked: Bool
    public private(set) var negotiated: UInt64 = 0
    public private(set) var isLinkUp = true
    public private(set) var isActive = false

    /// Counters (for metrics and tests).
    public private(set) var transmittedFrames: UInt64 = 0
    public private(set) var transmittedBytes: UInt64 = 0
    public private(set) var transmitDropped: UInt64 = 0
    public private(set) var receivedFrames: UInt64 = 0
    public private(set) var receivedBytes: UInt64 = 0
    public private(set) var receiveDropped: UInt64 = 0
    /// Frames taken from the backend (delivered, dropped or held): progress for the VMM's
    /// network thread, which waits instead of spinning when this does not move.
    public private(set) var framesTaken: UInt64 = 0

    /// Called (with the transport lock held; must not call back into the device) when the
    /// device wants the backend read again: after activation, and when the guest posted
    /// receive buffers while a frame was held.
    public var onReceiveSpace: (@Sendable () -> Void)?

    private weak var transport: VirtioPCIDevice?
    private var chain = DescriptorChain()
    /// Header then frame, as the backend sends and receives them (or with our own header
    /// in front when the backend carries none).
    private var scratch = [UInt8](repeating: 0, count: VirtioNet.headerLength + VirtioNet.maximumFrameLength)
    private var heldLength: Int?

    /// `mac` must be 6 bytes (otherwise a locally administered one is derived from it).
    public init(mac: [UInt8], backend: any NetworkBackend, lockedMAC: Bool = false) {
        self.mac = mac.count == 6 ? mac : Self.generatedMAC(seed: mac.map { String($0) }.joined(separator: ","))
        self.backend = backend
        self.isMACLocked = lockedMAC
    }

    /// A stable, locally administered unicast MAC in OpenBSD vmd's fe:e1:ba:d0:xx:xx range,
    /// from a seed (e.g. "vmname/0"): FNV-1a of the seed gives the last two bytes.
    public static func generatedMAC(seed: String) -> [UInt8] {
        var h: UInt32 = 2_166_136_261
        for b in seed.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
        return [0xFE, 0xE1, 0xBA, 0xD0, UInt8(truncatingIfNeeded: h >> 8), UInt8(truncatingIfNeeded: h)]
    }

    public func attach(_ transport: VirtioPCIDevice) { self.transport = transport }

    public var deviceType: VirtioDeviceType { .network }
    public var pciClass: (UInt8, UInt8, UInt8) { (0x02, 0x00, 0x00) }   // network, Ethernet
    public var deviceFeatures: UInt64 { Feature.mac | Feature.status | (backend.carriesVirtioHeader ? Feature.offloads : 0) }
    public var queueMaxSizes: [UInt16] { [Self.queueSize, Self.queueSize] }
    /// struct virtio_net_config up to status (max_virtqueue_pairs and mtu need features we
    /// do not offer, but the 2 bytes after status read as 1 pair for drivers that look).
    public var configSize: Int { 10 }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        var c = LEBytes(count: 10)
        for i in 0..<6 { c.put(mac[i], at: i) }
        c.put(isLinkUp ? Self.linkUp : 0, at: 6)
        c.put(UInt16(1), at: 8)
        return Self.readLE(c.bytes, offset: offset, size: size)
    }

    public func writeConfig(offset: Int, size: Int, value: UInt32) {}   // MAC is read-only (no CTRL_MAC_ADDR)

    public func activate(features: UInt64) {
        negotiated = features
        isActive = true
        if backend.carriesVirtioHeader { receiveOffloadsAccepted = backend.setReceiveOffloads(receiveOffloads) }
        onReceiveSpace?()
    }

    public func reset() {
        negotiated = 0
        isActive = false
        heldLength = nil   // the held frame is lost with the device's state, like a NIC reset
        if backend.carriesVirtioHeader { _ = backend.setReceiveOffloads([]) }
    }

    private func has(_ feature: UInt64) -> Bool { negotiated & feature == feature }

    /// What the guest takes on receive: partial checksums with GUEST_CSUM, TSO frames with
    /// GUEST_TSO4/6 as well (the spec has TSO depend on the checksum).
    public var receiveOffloads: NetworkOffloads {
        guard has(Feature.guestChecksum) else { return [] }
        var o: NetworkOffloads = .checksum
        if has(Feature.guestTSO4) { o.insert(.tso4) }
        if has(Feature.guestTSO6) { o.insert(.tso6) }
        return o
    }

    /// Whether the backend took `receiveOffloads` at the last activation (a tap refusing
    /// TUNSETOFFLOAD hands over whole frames only, which is still correct).
    public private(set) var receiveOffloadsAccepted = true

    /// Whether a frame from the backend waits for a receive buffer.
    public var isHoldingFrame: Bool { heldLength != nil }

    /// Changes the link state seen through VIRTIO_NET_F_STATUS (config change interrupt).
    /// Call without the transport lock.
    public func setLink(up: Bool) {
        guard let transport else { isLinkUp = up; return }
        let changed = transport.withLock(processing: nil) { () -> Bool in
            defer { isLinkUp = up }
            return isLinkUp != up
        }
        if changed { transport.configChanged() }
    }

    /// Pulls waiting frames from the backend into posted receive buffers (the VMM's
    /// network thread calls this when the backend is readable). Call without the lock.
    public func pollBackend() {
        transport?.withLock(processing: Self.receiveQueue) {}
    }

    public func process(queueIndex: Int, queue: inout SplitVirtqueue, memory: GuestMemory) throws {
        switch queueIndex {
        case Self.transmitQueue: try transmit(queue: &queue, memory: memory)
        case Self.receiveQueue: try receive(queue: &queue, memory: memory)
        default: return
        }
    }

    private func transmit(queue: inout SplitVirtqueue, memory: GuestMemory) throws {
        let withHeader = backend.carriesVirtioHeader
        while try queue.pop(into: &chain, memory: memory) {
            guard chain.readableLength >= Self.headerLength else {
                throw VirtioError.malformedRequest("virtio-net transmit chain has \(chain.readableLength) readable bytes, less than the 12-byte header")
            }
            // Read once: the checks below and what the backend gets are the same bytes.
            var header = VirtioNetHeader(try chain.readBytes(offset: 0, count: Self.headerLength, memory: memory))
            let frameLength = chain.readableLength - Self.headerLength
            // Without a backend that carries the header no offload was offered, so every
            // flag or GSO type is one that was not negotiated.
            let problem = frameLength == 0 || frameLength > Self.maximumFrameLength ? "length"
                : header.transmitProblem(frameLength: frameLength, checksum: withHeader && has(Feature.checksum),
                                         tso4: withHeader && has(Feature.hostTSO4), tso6: withHeader && has(Feature.hostTSO6))
            if problem != nil {
                transmitDropped &+= 1
            } else {
                header.numBuffers = 0
                let base = withHeader ? Self.headerLength : 0
                var at = base
                try scratch.withUnsafeMutableBytes { dst in
                    if withHeader { header.store(into: dst) }
                    try chain.withSegments(writable: false, offset: Self.headerLength, length: frameLength, memory: memory) { seg in
                        // SAFETY: at + seg.count <= base + frameLength <= scratch.count.
                        (dst.baseAddress! + at).copyMemory(from: seg.baseAddress!, byteCount: seg.count)
                        at += seg.count
                    }
                }
                let spoofed = isMACLocked && (at - base < 12 || scratch[(base + 6)..<(base + 12)].elementsEqual(mac) == false)
                let sent = !spoofed && scratch.withUnsafeBytes { backend.send(UnsafeRawBufferPointer(rebasing: $0[0..<at])) }
                if sent {
                    transmittedFrames &+= 1
                    transmittedBytes &+= UInt64(at - base)
                } else {
                    transmitDropped &+= 1
                }
            }
            try queue.push(head: chain.head, written: 0, memory: memory)
        }
    }

    /// Takes the next frame from the backend into `scratch` as header + frame; its total
    /// length, 0 for one to drop (empty, or a header the guest did not negotiate), nil when
    /// none waits.
    private func takeFrame() -> Int? {
        if !backend.carriesVirtioHeader {
            let n = scratch.withUnsafeMutableBytes { b -> Int? in
                backend.receive(into: UnsafeMutableRawBufferPointer(rebasing: b[Self.headerLength...]))
            }
            guard let n else { return nil }
            var h = VirtioNetHeader(); h.numBuffers = 1
            scratch.withUnsafeMutableBytes { h.store(into: $0) }
            return n == 0 ? 0 : Self.headerLength + n
        }
        guard let n = scratch.withUnsafeMutableBytes({ backend.receive(into: $0) }) else { return nil }
        guard n > Self.headerLength else { return 0 }
        var h = scratch.withUnsafeBytes { VirtioNetHeader($0) }
        let guestChecksum = has(Feature.guestChecksum)
        if !guestChecksum { h.flags &= ~VirtioNetHeader.Flag.dataValid }   // a hint only GUEST_CSUM may see
        guard h.receiveProblem(frameLength: n - Self.headerLength, checksum: guestChecksum,
                               tso4: has(Feature.guestTSO4), tso6: has(Feature.guestTSO6)) == nil else { return 0 }
        h.numBuffers = 1
        scratch.withUnsafeMutableBytes { h.store(into: $0) }
        return n
    }

    private func receive(queue: inout SplitVirtqueue, memory: GuestMemory) throws {
        let wasHolding = heldLength != nil
        defer { if wasHolding, heldLength == nil { onReceiveSpace?() } }
        // At most one queue's worth of frames per call, so a flooding backend cannot keep
        // the device lock.
        for _ in 0..<Int(queue.size) {
            if heldLength == nil {
                guard let n = takeFrame() else { return }
                framesTaken &+= 1
                heldLength = n
            }
            guard let length = heldLength else { return }
            guard try queue.pop(into: &chain, memory: memory) else { return }   // hold it
            guard chain.writableLength >= Self.headerLength else {
                throw VirtioError.malformedRequest("virtio-net receive buffer has \(chain.writableLength) writable bytes, less than the 12-byte header")
            }
            heldLength = nil
            if length == 0 || length > chain.writableLength {
                receiveDropped &+= 1
                try queue.push(head: chain.head, written: 0, memory: memory)
                continue
            }
            var at = 0
            try scratch.withUnsafeBytes { src in
                try chain.withSegments(writable: true, offset: 0, length: length, memory: memory) { seg in
                    // SAFETY: at + seg.count <= length <= scratch.count.
                    seg.baseAddress!.copyMemory(from: src.baseAddress! + at, byteCount: seg.count)
                    at += seg.count
                }
            }
            receivedFrames &+= 1
            receivedBytes &+= UInt64(length - Self.headerLength)
            try queue.push(head: chain.head, written: UInt32(length), memory: memory)
        }
    }
}
