#if canImport(Glibc)
import Glibc
#endif
import Devices
import GuestMemory
import Hypervisor
import Testing

/// A virtio-net function over an in-memory (or socketpair) backend, driven through PCI.
struct NetRig {
    let memory: GuestMemory
    let irq = RecordingInterruptController()
    let backend: any NetworkBackend
    let net: VirtioNet
    let device: VirtioPCIDevice
    let driver: VirtioTestDriver
    let rx: VirtioTestDriver.Queue
    let tx: VirtioTestDriver.Queue

    static let mac: [UInt8] = [0xFE, 0xE1, 0xBA, 0xD0, 0x12, 0x34]

    init(backend: any NetworkBackend = MemoryNetworkBackend(), wanted: UInt64 = .max, locked: Bool = false,
         memorySize: Int = 1 << 20) throws {
        memory = try GuestMemory(size: memorySize)
        self.backend = backend
        net = VirtioNet(mac: Self.mac, backend: backend, lockedMAC: locked)
        device = VirtioPCIDevice(model: net, memory: memory, interrupts: irq,
                                 intx: IRQLine(controller: irq, gsi: 11), logger: VirtioPCIDevice.discardingLogger)
        driver = VirtioTestDriver(device: device, memory: memory)
        let queues = driver.start(wanted: wanted)
        rx = queues[0]
        tx = queues[1]
    }

    var memoryBackend: MemoryNetworkBackend { backend as! MemoryNetworkBackend }

    /// Posts header + frame (optionally split at `split`) on the transmit queue and notifies.
    func transmit(_ frame: [UInt8], header: [UInt8] = [UInt8](repeating: 0, count: 12), split: Int? = nil) throws {
        let h = driver.alloc(header.count)
        try memory.write(bytes: header, at: h)
        var buffers = [VirtioTestDriver.Buffer(address: h, length: UInt32(header.count), writable: false)]
        let parts = split.map { [Array(frame[..<$0]), Array(frame[$0...])] } ?? [frame]
        for p in parts where !p.isEmpty {
            let a = driver.alloc(p.count)
            try memory.write(bytes: p, at: a)
            buffers.append(.init(address: a, length: UInt32(p.count), writable: false))
        }
        try driver.post(tx, buffers)
        driver.notify(tx)
    }

    /// Posts one receive buffer of `length` bytes (split in two when `split`); returns its address(es).
    @discardableResult
    func postReceive(_ length: Int = 1526, split: Int? = nil, notify: Bool = true) throws -> [UInt64] {
        let lengths = split.map { [$0, length - $0] } ?? [length]
        var addrs: [UInt64] = []
        var buffers: [VirtioTestDriver.Buffer] = []
        for l in lengths {
            let a = driver.alloc(l)
            addrs.append(a)
            buffers.append(.init(address: a, length: UInt32(l), writable: true))
        }
        try driver.post(rx, buffers)
        if notify { driver.notify(rx) }
        return addrs
    }
}

func testFrame(_ n: Int, seed: UInt8 = 1) -> [UInt8] {
    // dst broadcast, src our MAC, ethertype 0x88b5 (local experimental), then a pattern.
    var f: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] + NetRig.mac + [0x88, 0xB5]
    while f.count < n { f.append(UInt8(truncatingIfNeeded: f.count) &+ seed) }
    return Array(f.prefix(n))
}

@Suite struct VirtioNetTests {
    @Test func identityFeaturesAndConfig() throws {
        let rig = try NetRig()
        #expect(rig.device.configRead(offset: 2, size: 2) == 0x1041)        // modern virtio-net
        #expect(rig.device.configRead(offset: 0x0A, size: 2) == 0x0200)     // class network/Ethernet
        let f = rig.driver.deviceFeatures()
        #expect(f & VirtioNet.Feature.mac != 0)
        #expect(f & VirtioNet.Feature.status != 0)
        #expect(f & VirtioFeature.version1 != 0)
        #expect(f & VirtioNet.Feature.mergeableRxBuffers == 0)
        #expect(f & 0x3FC7 == 0, "no checksum, offload, MTU or GSO bits (0-2, 6-13)")
        #expect((0..<6).map { UInt8(rig.driver.deviceConfig(UInt64($0), 1)) } == NetRig.mac)
        #expect(rig.driver.deviceConfig(6, 2) == 1)                          // link up
        #expect(rig.device.status == 0x0F)
    }

    @Test func transmitOneFrameAndSplitFrame() throws {
        let rig = try NetRig()
        let a = testFrame(60), b = testFrame(1514, seed: 7)
        try rig.transmit(a)
        try rig.transmit(b, split: 100)
        #expect(rig.memoryBackend.sent == [a, b])
        let used = try rig.driver.takeUsed(rig.tx)
        #expect(used.count == 2 && used.allSatisfy { $0.length == 0 })
        #expect(rig.net.transmittedFrames == 2 && rig.net.transmittedBytes == 1574)
        #expect(rig.driver.readISR() & 1 != 0, "INTx for the used buffers")
    }

    @Test func receiveFramesIntoPostedBuffers() throws {
        let rig = try NetRig()
        let a = testFrame(60), b = testFrame(1514, seed: 3)
        let ra = try rig.postReceive(), rb = try rig.postReceive(1526, split: 700)
        rig.memoryBackend.inject(a)
        rig.memoryBackend.inject(b)
        rig.net.pollBackend()
        let used = try rig.driver.takeUsed(rig.rx)
        #expect(used.map(\.length) == [72, 1526])
        let hdr = try rig.memory.readBytes(at: ra[0], count: 12)
        #expect(hdr == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "v1 header: everything zero, num_buffers 1")
        #expect(try rig.memory.readBytes(at: ra[0] + 12, count: 60) == a)
        let got = try rig.memory.readBytes(at: rb[0] + 12, count: 688) + rig.memory.readBytes(at: rb[1], count: 826)
        #expect(got == b)
        #expect(rig.net.receivedFrames == 2 && rig.net.receiveDropped == 0)
        #expect(rig.irq.events.isEmpty == false)
    }

    @Test func receiveWithoutBuffersHoldsOneFrameUntilTheGuestPostsOne() throws {
        let rig = try NetRig()
        let woke = WakeCounter()
        rig.net.onReceiveSpace = { woke.bump() }
        rig.memoryBackend.inject(testFrame(100))
        rig.memoryBackend.inject(testFrame(200))
        rig.net.pollBackend()
        #expect(rig.net.isHoldingFrame)
        #expect(rig.memoryBackend.waiting == 1, "only one frame taken from the backend")
        #expect(try rig.driver.takeUsed(rig.rx).isEmpty)
        try rig.postReceive()   // the guest's notify delivers the held frame, then the next
        #expect(try rig.driver.takeUsed(rig.rx).map(\.length) == [112])
        #expect(rig.net.isHoldingFrame, "the second frame waits for the next buffer")
        #expect(woke.count == 0)
        try rig.postReceive()
        #expect(try rig.driver.takeUsed(rig.rx).map(\.length) == [212])
        #expect(!rig.net.isHoldingFrame && woke.count == 1, "the network thread is woken once the hold clears")
    }

    @Test func oversizedFrameIsDroppedAndBufferReturned() throws {
        let rig = try NetRig()
        try rig.postReceive(100)
        try rig.postReceive(100)
        rig.memoryBackend.inject(testFrame(200))
        rig.memoryBackend.inject(testFrame(80))
        rig.net.pollBackend()
        #expect(try rig.driver.takeUsed(rig.rx).map(\.length) == [0, 92])
        #expect(rig.net.receiveDropped == 1 && rig.net.receivedFrames == 1)
        #expect(rig.device.status & VirtioStatus.needsReset == 0)
    }

    @Test func transmitOffloadHeadersAndRefusedSendsAreDropped() throws {
        let rig = try NetRig()
        var csum = [UInt8](repeating: 0, count: 12); csum[0] = VirtioNetHeader.Flag.needsChecksum
        var gso = [UInt8](repeating: 0, count: 12); gso[1] = 1   // VIRTIO_NET_HDR_GSO_TCPV4
        try rig.transmit(testFrame(60), header: csum)
        try rig.transmit(testFrame(60), header: gso)
        try rig.transmit([], header: [UInt8](repeating: 0, count: 12))   // header only
        rig.memoryBackend.setAcceptsSends(false)
        try rig.transmit(testFrame(60))
        #expect(rig.memoryBackend.sent.isEmpty)
        #expect(rig.net.transmitDropped == 4)
        #expect(try rig.driver.takeUsed(rig.tx).count == 4, "every chain is returned")
        #expect(rig.device.status & VirtioStatus.needsReset == 0)
    }

    @Test func shortHeadersAreDriverBugs() throws {
        let rig = try NetRig()
        try rig.transmit([], header: [UInt8](repeating: 0, count: 10))
        #expect(rig.device.status & VirtioStatus.needsReset != 0)
        if case .malformedRequest(let why)? = rig.device.lastError { #expect(why.contains("12-byte header")) } else {
            Issue.record("expected malformedRequest, got \(String(describing: rig.device.lastError))")
        }

        let rig2 = try NetRig()
        rig2.memoryBackend.inject(testFrame(60))
        try rig2.postReceive(8)
        #expect(rig2.device.status & VirtioStatus.needsReset != 0)
        #expect(rig2.memoryBackend.sent.isEmpty)
    }

    @Test func hostileReceiveChains() throws {
        typealias B = VirtioTestDriver.Buffer
        // A loop, a read-only receive buffer, a buffer outside RAM: NEEDS_RESET, nothing written outside.
        let cases: [[B]] = [
            [B(address: 0x80000, length: 16, writable: true, next: 0)],
            [B(address: 0xFFFF_FFFF_FFFF_FF00, length: 2000, writable: true)],
            [B(address: 0x80000, length: 1, writable: true), B(address: 0x80100, length: 1600, writable: false)],
        ]
        for buffers in cases {
            let rig = try NetRig()
            rig.memoryBackend.inject(testFrame(60))
            try rig.driver.post(rig.rx, buffers)
            rig.driver.notify(rig.rx)
            #expect(rig.device.status & VirtioStatus.needsReset != 0, "\(buffers)")
            // A reset brings it back and it works.
            let q = rig.driver.start()
            _ = q
            #expect(rig.device.status == 0x0F)
        }
    }

    @Test func resetDropsTheHeldFrameAndLinkStatusChanges() throws {
        let rig = try NetRig()
        rig.memoryBackend.inject(testFrame(60))
        rig.net.pollBackend()
        #expect(rig.net.isHoldingFrame)
        _ = rig.driver.start()
        #expect(!rig.net.isHoldingFrame)
        _ = rig.driver.readISR()
        rig.net.setLink(up: false)
        #expect(rig.driver.deviceConfig(6, 2) == 0)
        #expect(rig.driver.readISR() & 2 != 0, "config change interrupt")
        rig.net.setLink(up: true)
        #expect(rig.driver.deviceConfig(6, 2) == 1)
    }

    @Test func socketPairBackendCarriesFramesBothWays() throws {
        let (backend, peer) = try FileDescriptorNetworkBackend.socketPair()
        defer { close(peer) }
        let rig = try NetRig(backend: backend)
        let out = testFrame(300)
        try rig.transmit(out)
        var buf = [UInt8](repeating: 0, count: 2000)
        let n = buf.withUnsafeMutableBytes { recv(peer, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        #expect(n == 300 && Array(buf[0..<max(0, n)]) == out)

        let inFrame = testFrame(1000, seed: 9)
        let addr = try rig.postReceive()
        _ = inFrame.withUnsafeBytes { send(peer, $0.baseAddress, $0.count, 0) }
        rig.net.pollBackend()
        #expect(try rig.driver.takeUsed(rig.rx).map(\.length) == [1012])
        #expect(try rig.memory.readBytes(at: addr[0] + 12, count: 1000) == inFrame)
    }

    @Test func lockedMACDropsSpoofedFrames() throws {
        let rig = try NetRig(locked: true)
        let good = testFrame(60)
        var spoofed = testFrame(60); spoofed[11] ^= 1
        try rig.transmit(spoofed)
        try rig.transmit(good)
        try rig.transmit(Array(good.prefix(10)))   // too short to carry a source MAC
        #expect(rig.memoryBackend.sent == [good])
        #expect(rig.net.transmitDropped == 2)
        // Unlocked, the same spoofed frame goes out.
        let open = try NetRig()
        try open.transmit(spoofed)
        #expect(open.memoryBackend.sent == [spoofed])
    }

    @Test func generatedMACsAreStableLocalAndDistinct() {
        let a = VirtioNet.generatedMAC(seed: "vm1/0"), b = VirtioNet.generatedMAC(seed: "vm1/1")
        #expect(a == VirtioNet.generatedMAC(seed: "vm1/0"))
        #expect(a != b)
        #expect(Array(a.prefix(4)) == [0xFE, 0xE1, 0xBA, 0xD0])
        #expect(a[0] & 1 == 0 && a[0] & 2 != 0, "unicast, locally administered")
    }
}

final class WakeCounter: @unchecked Sendable {
    private(set) var count = 0
    func bump() { count += 1 }
}
