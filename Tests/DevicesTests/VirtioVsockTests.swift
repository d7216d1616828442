import Devices
import GuestMemory
import Hypervisor
import Synchronization
import Testing

/// A host stream in memory: what the device wrote, what it may read, how much it accepts.
final class FakeVsockStream: VsockHostStream {
    static let descriptors = Atomic<Int32>(10_000)
    /// Never polled: tests report readiness themselves (`VsockRig.ready`).
    let descriptor: Int32 = FakeVsockStream.descriptors.add(1, ordering: .relaxed).newValue
    var written: [UInt8] = []
    var input: [UInt8] = []
    var ended = false
    /// Bytes `write` still accepts (nil: any amount).
    var room: Int?
    var acceptedPort: UInt32?
    var closed = false
    var shutWrite = false

    func write(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard !closed else { return nil }
        let n = min(bytes.count, room ?? bytes.count)
        written.append(contentsOf: bytes.prefix(n))
        room = room.map { $0 - n }
        return n
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        if input.isEmpty { return ended ? nil : 0 }
        let n = min(buffer.count, input.count)
        for i in 0..<n { buffer[i] = input[i] }
        input.removeFirst(n)
        return n
    }

    func accepted(hostPort: UInt32) { acceptedPort = hostPort }
    func shutdownWrite() { shutWrite = true }
    func close() { closed = true }
    var pollDescriptor: Int32? { closed ? nil : descriptor }
}

/// Accepts guest connections to the ports in `listening`.
final class FakeVsockBackend: VsockHostBackend {
    var listening: Set<UInt32> = []
    var streams: [UInt32: FakeVsockStream] = [:]
    func connect(port: UInt32) -> (any VsockHostStream)? {
        guard listening.contains(port) else { return nil }
        let s = FakeVsockStream()
        streams[port] = s
        return s
    }
}

/// A virtio-vsock function driven through PCI by the test driver, with a fake host.
struct VsockRig {
    static let cid: UInt64 = 42
    let memory: GuestMemory
    let irq = RecordingInterruptController()
    let backend = FakeVsockBackend()
    let vsock: VirtioVsock
    let device: VirtioPCIDevice
    let driver: VirtioTestDriver
    let rx: VirtioTestDriver.Queue
    let tx: VirtioTestDriver.Queue
    /// Receive buffers by head, for reading back what the device wrote.
    final class Posted { var byHead: [UInt16: UInt64] = [:] }
    let posted = Posted()

    init() throws {
        memory = try GuestMemory(size: 8 << 20)
        vsock = VirtioVsock(guestCID: Self.cid, backend: backend)
        device = VirtioPCIDevice(model: vsock, memory: memory, interrupts: irq,
                                 intx: IRQLine(controller: irq, gsi: 11), logger: VirtioPCIDevice.discardingLogger)
        driver = VirtioTestDriver(device: device, memory: memory)
        let queues = driver.start()
        rx = queues[0]
        tx = queues[1]
    }

    func guestHeader(op: UInt16, srcPort: UInt32 = 1000, dstPort: UInt32 = 5000, len: UInt32 = 0,
                     flags: UInt32 = 0, bufAlloc: UInt32 = 1 << 18, fwdCnt: UInt32 = 0) -> VsockHeader {
        VsockHeader(srcCID: Self.cid, dstCID: VsockHeader.hostCID, srcPort: srcPort, dstPort: dstPort,
                    len: len, op: op, flags: flags, bufAlloc: bufAlloc, fwdCnt: fwdCnt)
    }

    /// Posts one packet (header bytes, then payload in its own descriptor) and notifies tx.
    func send(_ header: [UInt8], payload: [UInt8] = []) throws {
        let h = driver.alloc(header.count)
        try memory.write(bytes: header, at: h)
        var buffers = [VirtioTestDriver.Buffer(address: h, length: UInt32(header.count), writable: false)]
        if !payload.isEmpty {
            let p = driver.alloc(payload.count)
            try memory.write(bytes: payload, at: p)
            buffers.append(.init(address: p, length: UInt32(payload.count), writable: false))
        }
        try driver.post(tx, buffers)
        driver.notify(tx)
    }

    func send(_ hdr: VsockHeader, payload: [UInt8] = []) throws { try send(hdr.bytes, payload: payload) }

    /// Posts `count` receive buffers of 44 + `size` bytes, as Linux does, and notifies rx.
    func postReceive(_ count: Int = 1, size: Int = 4096) throws {
        for _ in 0..<count {
            let a = driver.alloc(VsockHeader.size + size)
            let head = try driver.post(rx, [.init(address: a, length: UInt32(VsockHeader.size + size), writable: true)])
            posted.byHead[head] = a
        }
        driver.notify(rx)
    }

    /// The packets the device placed in receive buffers since the last call.
    func received() throws -> [(VsockHeader, [UInt8])] {
        try driver.takeUsed(rx).map { used in
            let a = posted.byHead[UInt16(used.id)]!
            let bytes = try memory.readBytes(at: a, count: Int(used.length))
            let hdr = VsockHeader(bytes: bytes)!
            return (hdr, Array(bytes[VsockHeader.size...]))
        }
    }

    /// Opens guest port 1000 → host port 5000 and returns the host stream.
    func connect(port: UInt32 = 5000, bufAlloc: UInt32 = 1 << 18) throws -> FakeVsockStream {
        backend.listening.insert(port)
        try postReceive(4)
        try send(guestHeader(op: VsockHeader.opRequest, dstPort: port, bufAlloc: bufAlloc))
        let r = try received()
        #expect(r.map(\.0.op) == [VsockHeader.opResponse])
        return backend.streams[port]!
    }

    /// What the host thread does when `stream` has input: mark it and fill receive buffers.
    func ready(_ stream: FakeVsockStream) {
        device.withLock(processing: VirtioVsock.receiveQueue) {
            vsock.streamsReady([VsockPollEntry(descriptor: stream.descriptor, wantsInput: true, wantsOutput: false)])
        }
    }

    var needsReset: Bool { driver.status & VirtioStatus.needsReset != 0 }
}

@Suite struct VirtioVsockTests {
    @Test func identityAndGuestCIDInConfig() throws {
        let rig = try VsockRig()
        #expect(rig.device.configRead(offset: 2, size: 2) == 0x1040 + 19)
        #expect(rig.driver.deviceConfig(0, 4) == VsockRig.cid)
        #expect(rig.driver.deviceConfig(4, 4) == 0)
        #expect(rig.device.numQueues == 3)
        #expect(VirtioVsock.isValidGuestCID(3) && !VirtioVsock.isValidGuestCID(2) && !VirtioVsock.isValidGuestCID(0xFFFF_FFFF))
    }

    @Test func guestConnectsAndBytesFlowBothWays() throws {
        let rig = try VsockRig()
        let stream = try rig.connect()
        try rig.send(rig.guestHeader(op: VsockHeader.opRW, len: 5), payload: Array("hello".utf8))
        #expect(stream.written == Array("hello".utf8))
        stream.input = Array("world!".utf8)
        #expect(rig.vsock.pollEntries() == [VsockPollEntry(descriptor: stream.descriptor, wantsInput: true, wantsOutput: false)])
        try rig.postReceive(2)
        rig.ready(stream)
        let r = try rig.received()
        #expect(r.count == 1)
        #expect(r.first?.0.op == VsockHeader.opRW)
        #expect(r.first?.0.dstPort == 1000 && r.first?.0.srcPort == 5000)
        #expect(r.first.map { Array($0.1) } == Array("world!".utf8))
        // End of the host stream: the guest is told the host sends no more.
        stream.ended = true
        rig.ready(stream)
        let s = try rig.received()
        #expect(s.map(\.0.op) == [VsockHeader.opShutdown])
        #expect(s.first?.0.flags == VsockHeader.shutdownSend)
        // The guest answers with RST: the connection is gone and the stream closed.
        try rig.send(rig.guestHeader(op: VsockHeader.opRst))
        #expect(rig.vsock.connectionCount == 0)
        #expect(stream.closed)
        #expect(!rig.needsReset)
    }

    @Test func resetForUnknownPortAndUnknownConnection() throws {
        let rig = try VsockRig()
        try rig.postReceive(4)
        try rig.send(rig.guestHeader(op: VsockHeader.opRequest, dstPort: 7777))   // nobody listens
        try rig.send(rig.guestHeader(op: VsockHeader.opRW, dstPort: 7777, len: 2), payload: [1, 2])
        try rig.send(rig.guestHeader(op: VsockHeader.opRst, dstPort: 7777))        // never answered
        let r = try rig.received()
        #expect(r.map(\.0.op) == [VsockHeader.opRst, VsockHeader.opRst])
        #expect(r.allSatisfy { $0.0.dstCID == VsockRig.cid && $0.0.dstPort == 1000 && $0.0.srcPort == 7777 })
        #expect(rig.vsock.connectionCount == 0)
        #expect(!rig.needsReset)
    }

    @Test func hostileHeadersAreDroppedOrReset() throws {
        let rig = try VsockRig()
        let stream = try rig.connect()
        try rig.postReceive(8)
        // Shorter than a header: dropped, nothing to address a RST to.
        try rig.send(Array(rig.guestHeader(op: VsockHeader.opRW).bytes.prefix(30)))
        #expect(rig.vsock.droppedPackets == 1)
        // Another source CID: dropped.
        var spoofed = rig.guestHeader(op: VsockHeader.opRW, len: 1)
        spoofed.srcCID = 7
        try rig.send(spoofed, payload: [9])
        #expect(rig.vsock.droppedPackets == 2)
        #expect(try rig.received().isEmpty)
        // len beyond the chain: RST, and the connection is gone.
        try rig.send(rig.guestHeader(op: VsockHeader.opRW, len: 100), payload: [1, 2, 3])
        var r = try rig.received()
        #expect(r.map(\.0.op) == [VsockHeader.opRst])
        // len over the 64 KiB maximum, a bad type, an unknown op, another destination CID: RST each.
        try rig.send(rig.guestHeader(op: VsockHeader.opRW, srcPort: 2, len: UInt32(VirtioVsock.maximumPayload + 1)),
                     payload: [UInt8](repeating: 0, count: VirtioVsock.maximumPayload + 1))
        var badType = rig.guestHeader(op: VsockHeader.opRequest, srcPort: 3)
        badType.type = 2
        try rig.send(badType)
        try rig.send(rig.guestHeader(op: 99, srcPort: 4))
        var otherCID = rig.guestHeader(op: VsockHeader.opRequest, srcPort: 5)
        otherCID.dstCID = 77
        try rig.send(otherCID)
        r = try rig.received()
        #expect(r.map(\.0.op) == [VsockHeader.opRst, VsockHeader.opRst, VsockHeader.opRst, VsockHeader.opRst])
        #expect(r.map(\.0.dstPort) == [2, 3, 4, 5])
        #expect(stream.written.isEmpty)
        #expect(stream.closed)
        #expect(!rig.needsReset)
    }

    @Test func hostileDescriptorsNeedResetNeverTrap() throws {
        let rig = try VsockRig()
        // A two-descriptor loop on tx: the bounded walk stops it.
        let a = rig.driver.alloc(64)
        try rig.driver.post(rig.tx, [.init(address: a, length: 44, writable: false, next: 1),
                                     .init(address: a, length: 20, writable: false, next: 0)])
        rig.driver.notify(rig.tx)
        #expect(rig.needsReset)
        #expect(rig.device.lastError == .chainTooLong(limit: Int(VirtioVsock.queueSize)))

        // A receive buffer too small for a header, with a packet waiting for it.
        let rig2 = try VsockRig()
        try rig2.send(rig2.guestHeader(op: VsockHeader.opRequest, dstPort: 1))   // RST waits
        let b = rig2.driver.alloc(16)
        try rig2.driver.post(rig2.rx, [.init(address: b, length: 16, writable: true)])
        rig2.driver.notify(rig2.rx)
        #expect(rig2.needsReset)
        // A buffer outside guest RAM.
        let rig3 = try VsockRig()
        try rig3.driver.post(rig3.tx, [.init(address: 0xFFFF_0000_0000, length: 44, writable: false)])
        rig3.driver.notify(rig3.tx)
        #expect(rig3.needsReset)
    }

    @Test func guestThatOverrunsOurCreditIsReset() throws {
        let rig = try VsockRig()
        let stream = try rig.connect()
        stream.room = 0   // the host side takes nothing: everything stays buffered here
        let chunk = [UInt8](repeating: 0xAB, count: VirtioVsock.maximumPayload)
        for _ in 0..<(Int(VirtioVsock.bufferSize) / chunk.count) {
            try rig.send(rig.guestHeader(op: VsockHeader.opRW, len: UInt32(chunk.count)), payload: chunk)
        }
        #expect(rig.vsock.connectionCount == 1)   // exactly the credit advertised: accepted
        try rig.postReceive(2)
        #expect(try rig.received().isEmpty)
        try rig.send(rig.guestHeader(op: VsockHeader.opRW, len: 1), payload: [1])
        #expect(try rig.received().map(\.0.op) == [VsockHeader.opRst])
        #expect(rig.vsock.connectionCount == 0)
        #expect(!rig.needsReset)
    }

    @Test func hostDataWaitsForTheGuestsCredit() throws {
        let rig = try VsockRig()
        let stream = try rig.connect(bufAlloc: 100)
        stream.input = [UInt8](repeating: 7, count: 300)
        try rig.postReceive(4)
        rig.ready(stream)
        let first = try rig.received()
        #expect(first.map(\.1.count) == [100])
        // No credit left: nothing more until the guest says it consumed the bytes.
        rig.device.withLock(processing: VirtioVsock.receiveQueue) {}
        #expect(try rig.received().isEmpty)
        try rig.send(rig.guestHeader(op: VsockHeader.opCreditUpdate, bufAlloc: 100, fwdCnt: 100))
        #expect(try rig.received().map(\.1.count) == [100])
        // A CREDIT_REQUEST is answered with our credit.
        try rig.send(rig.guestHeader(op: VsockHeader.opCreditRequest, bufAlloc: 100, fwdCnt: 200))
        let r = try rig.received()
        #expect(r.map(\.0.op).contains(VsockHeader.opCreditUpdate))
        #expect(r.first { $0.0.op == VsockHeader.opCreditUpdate }?.0.bufAlloc == VirtioVsock.bufferSize)
    }

    @Test func hostInitiatedConnection() throws {
        let rig = try VsockRig()
        let stream = FakeVsockStream()
        try rig.postReceive(2)
        let ok = rig.device.withLock(processing: VirtioVsock.receiveQueue) {
            rig.vsock.connectFromHost(port: 52, stream: stream)
        }
        #expect(ok)
        let r = try rig.received()
        #expect(r.map(\.0.op) == [VsockHeader.opRequest])
        #expect(r.first?.0.dstPort == 52 && r.first?.0.srcPort == VirtioVsock.firstHostPort)
        #expect(stream.acceptedPort == nil)
        try rig.send(VsockHeader(srcCID: VsockRig.cid, dstCID: 2, srcPort: 52, dstPort: VirtioVsock.firstHostPort,
                                 op: VsockHeader.opResponse, bufAlloc: 4096))
        #expect(stream.acceptedPort == VirtioVsock.firstHostPort)
        // The guest refuses a second one: the stream is closed.
        let refused = FakeVsockStream()
        _ = rig.device.withLock(processing: VirtioVsock.receiveQueue) { rig.vsock.connectFromHost(port: 53, stream: refused) }
        try rig.send(VsockHeader(srcCID: VsockRig.cid, dstCID: 2, srcPort: 53, dstPort: VirtioVsock.firstHostPort + 1,
                                 op: VsockHeader.opRst))
        #expect(refused.closed && refused.acceptedPort == nil)
        #expect(rig.vsock.connectionCount == 1)
    }

    @Test func unansweredHostConnectionExpires() throws {
        let rig = try VsockRig()
        let stream = FakeVsockStream()
        _ = rig.device.withLock(processing: VirtioVsock.receiveQueue) {
            rig.vsock.connectFromHost(port: 60, stream: stream, deadline: 1_000)
        }
        #expect(rig.device.withLock(processing: nil) { rig.vsock.expireRequests(now: 999) } == 0)
        try rig.postReceive(2)
        #expect(try rig.received().map(\.0.op) == [VsockHeader.opRequest])
        let expired = rig.device.withLock(processing: VirtioVsock.receiveQueue) { rig.vsock.expireRequests(now: 1_000) }
        #expect(expired == 1)
        #expect(stream.closed && stream.acceptedPort == nil)
        #expect(try rig.received().map(\.0.op) == [VsockHeader.opRst])
        #expect(rig.vsock.connectionCount == 0)
    }

    @Test func hostConnectionBeforeTheDriverStartsIsRefused() throws {
        let memory = try GuestMemory(size: 1 << 20)
        let vsock = VirtioVsock(guestCID: 3, backend: FakeVsockBackend())
        let device = VirtioPCIDevice(model: vsock, memory: memory, interrupts: RecordingInterruptController(),
                                     logger: VirtioPCIDevice.discardingLogger)
        let ok = device.withLock(processing: nil) { vsock.connectFromHost(port: 1, stream: FakeVsockStream()) }
        #expect(!ok)
        #expect(vsock.connectionCount == 0)
    }

    @Test func floodOfBadPacketsIsBounded() throws {
        let rig = try VsockRig()
        // No receive buffers: the RSTs wait, but never more than the limit.
        for i in 0..<(VirtioVsock.maximumControlPackets + 200) {
            try rig.send(rig.guestHeader(op: VsockHeader.opRW, srcPort: UInt32(i), len: 0))
            _ = try rig.driver.takeUsed(rig.tx)
        }
        #expect(rig.vsock.pendingControlCount == VirtioVsock.maximumControlPackets)
        #expect(rig.vsock.droppedControlPackets == 200)
        #expect(!rig.needsReset)
    }
}
