import Devices
import GuestMemory
import Testing

/// The virtio-net header passed through to a backend that carries it (a tap with
/// IFF_VNET_HDR): what is offered and negotiated, what passes, and hostile headers dropped.
@Suite struct VirtioNetOffloadTests {
    typealias F = VirtioNet.Feature
    typealias H = VirtioNetHeader

    func rig(wanted: UInt64 = .max, memory: Int = 4 << 20) throws -> (NetRig, MemoryNetworkBackend) {
        let b = MemoryNetworkBackend(virtioHeader: true)
        return (try NetRig(backend: b, wanted: wanted, memorySize: memory), b)
    }

    /// A TCP/IPv4 frame of `payload` bytes after 54 bytes of headers (not a valid packet:
    /// the device does not parse past Ethernet).
    func tcpFrame(payload: Int) -> [UInt8] {
        var f: [UInt8] = [0x02, 0, 0, 0, 0, 1] + NetRig.mac + [0x08, 0x00]
        f += [UInt8](repeating: 0, count: 40)
        while f.count < 54 + payload { f.append(UInt8(truncatingIfNeeded: f.count)) }
        return f
    }

    func header(flags: UInt8 = H.Flag.needsChecksum, gso: UInt8 = H.GSO.none, hdrLen: UInt16 = 54, gsoSize: UInt16 = 0,
                start: UInt16 = 34, offset: UInt16 = 16) -> H {
        var h = H()
        h.flags = flags; h.gsoType = gso; h.headerLength = hdrLen; h.gsoSize = gsoSize
        h.checksumStart = start; h.checksumOffset = offset
        return h
    }

    @Test func offloadsAreOfferedOnlyWithAHeaderCarryingBackend() throws {
        let plain = try NetRig()
        #expect(plain.driver.deviceFeatures() & F.offloads == 0)
        let (r, b) = try rig()
        #expect(r.driver.deviceFeatures() & F.offloads == F.offloads)
        #expect(r.net.negotiated & F.offloads == F.offloads)
        #expect(b.receiveOffloads == [.checksum, .tso4, .tso6], "TUNSETOFFLOAD as the guest accepted")
        // A reset takes them back; a driver without GUEST_CSUM gets none, even with TSO.
        _ = r.driver.start(wanted: .max & ~F.guestChecksum)
        #expect(b.receiveOffloads == [])
        _ = r.driver.start(wanted: F.guestChecksum | F.guestTSO6 | F.mac | VirtioFeature.version1)
        #expect(b.receiveOffloads == [.checksum, .tso6])
    }

    @Test func checksumAndTSOFramesPassWithTheirHeader() throws {
        let (r, b) = try rig()
        let small = tcpFrame(payload: 100), big = tcpFrame(payload: 64_000)
        var h1 = header(); h1.numBuffers = 7   // the driver's num_buffers does not pass
        try r.transmit(small, header: h1.bytes)
        let h2 = header(gso: H.GSO.tcpv4, gsoSize: 1448)
        try r.transmit(big, header: h2.bytes, split: 30_000)
        let h3 = header(gso: H.GSO.tcpv6, gsoSize: 1440, start: 54)
        try r.transmit(big, header: h3.bytes)
        #expect(b.sent.count == 3)
        #expect(b.sent.first.map { Array($0.prefix(12)) } == header().bytes)
        #expect(b.sent.first.map { Array($0.dropFirst(12)) } == small)
        #expect(b.sent.dropFirst().first.map { Array($0.prefix(12)) } == h2.bytes)
        #expect(b.sent.dropFirst().first.map { Array($0.dropFirst(12)) } == big)
        #expect(b.sent.last.map { H(Array($0.prefix(12))) } == h3)
        #expect(r.net.transmittedBytes == UInt64(small.count + 2 * big.count) && r.net.transmitDropped == 0)
    }

    @Test func hostileTransmitHeadersDropTheFrame() throws {
        let (r, b) = try rig(wanted: .max & ~F.hostTSO6)
        let f = tcpFrame(payload: 2000)
        let n = UInt16(f.count)
        let bad: [(String, H)] = [
            ("unknown flag", header(flags: 0x04)),
            ("DATA_VALID is receive-only", header(flags: H.Flag.dataValid)),
            ("csum field past the end", header(start: n - 17, offset: 16)),
            ("csum_start past the end", header(start: 0xFFFF, offset: 0)),
            ("csum_offset huge", header(start: 34, offset: 0xFFFF)),
            ("csum_start inside Ethernet", header(start: 4, offset: 6)),
            ("hdr_len past the frame", header(hdrLen: n + 1)),
            ("GSO without NEEDS_CSUM", header(flags: 0, gso: H.GSO.tcpv4, gsoSize: 1448)),
            ("gso_size 0", header(gso: H.GSO.tcpv4, gsoSize: 0)),
            ("gso_size 1", header(gso: H.GSO.tcpv4, gsoSize: 1)),
            ("GSO, offset not TCP's", header(gso: H.GSO.tcpv4, gsoSize: 1448, offset: 6)),
            ("GSO, no room for TCP", header(gso: H.GSO.tcpv4, hdrLen: 0, gsoSize: 1448, start: n - 18)),
            ("TSO6 not negotiated", header(gso: H.GSO.tcpv6, gsoSize: 1448)),
            ("UFO never offered", header(gso: H.GSO.udp, gsoSize: 1448, offset: 6)),
            ("ECN never offered", header(gso: H.GSO.tcpv4 | H.GSO.ecn, gsoSize: 1448)),
            ("unknown GSO type", header(gso: 2, gsoSize: 1448)),
        ]
        for (_, h) in bad { try r.transmit(f, header: h.bytes) }
        #expect(b.sent.isEmpty, "\(b.sent.map { H(Array($0.prefix(12))) })")
        #expect(r.net.transmitDropped == UInt64(bad.count))
        #expect(try r.driver.takeUsed(r.tx).count == bad.count, "every chain returned")
        #expect(r.device.status & VirtioStatus.needsReset == 0)
        // Without CSUM negotiated, NEEDS_CSUM is refused too.
        let (r2, b2) = try rig(wanted: .max & ~(F.checksum | F.hostTSO4 | F.hostTSO6))
        try r2.transmit(f, header: header().bytes)
        #expect(b2.sent.isEmpty && r2.net.transmitDropped == 1)
    }

    @Test func seededRandomHeadersNeverTrapAndWhatPassesIsInBounds() throws {
        let (r, b) = try rig(memory: 16 << 20)   // the test driver never frees
        var rng = LegacyHostileGuestTests.SplitMix(state: 0x5EED)
        let sizes = [14, 60, 1514, 9000]
        let frames = sizes.map { tcpFrame(payload: max(0, $0 - 54)).prefix($0) }.map(Array.init)
        var sent = 0
        for i in 0..<2000 {
            var raw = (0..<12).map { _ in UInt8.random(in: 0...255, using: &rng) }
            // Mostly plausible fields, so the checks past the first are reached.
            if i % 2 == 0 { raw[0] &= 1; raw[1] = [0, 1, 4, 3, 0x81][Int(raw[1]) % 5]; raw[7] = 0; raw[9] = 0 }
            let f = frames[i % frames.count]
            try r.transmit(f, header: raw)
            _ = try r.driver.takeUsed(r.tx)
            if b.sent.count > sent {
                sent = b.sent.count
                let h = H(Array(b.sent.last!.prefix(12)))
                #expect(h.transmitProblem(frameLength: f.count, checksum: true, tso4: true, tso6: true) == nil)
                #expect(h.numBuffers == 0)
                if h.flags & H.Flag.needsChecksum != 0 { #expect(Int(h.checksumStart) + Int(h.checksumOffset) + 2 <= f.count) }
            }
        }
        #expect(sent > 0 && sent < 2000, "some pass, most do not")
        #expect(r.device.status & VirtioStatus.needsReset == 0)
    }

    @Test func receivedHeadersReachTheGuestOnlyWhenNegotiated() throws {
        let (r, b) = try rig()
        let f = tcpFrame(payload: 30_000)
        let gso = header(gso: H.GSO.tcpv4, gsoSize: 1448)
        b.inject(gso.bytes + f)
        var dv = H(); dv.flags = H.Flag.dataValid
        b.inject(dv.bytes + tcpFrame(payload: 10))
        b.inject(header(start: 0xFFF0).bytes + f)                // offsets outside: dropped
        b.inject(header(gso: H.GSO.udp, gsoSize: 1000, offset: 6).bytes + f)   // UFO: never offered
        b.inject([1, 2, 3])                                      // shorter than a header
        var addrs: [UInt64] = []
        for _ in 0..<5 { addrs += try r.postReceive(65_562) }
        r.net.pollBackend()
        let used = try r.driver.takeUsed(r.rx)
        #expect(used.map(\.length) == [UInt32(12 + f.count), 12 + 64, 0, 0, 0])
        var expected = gso; expected.numBuffers = 1
        #expect(try r.memory.readBytes(at: addrs[0], count: 12) == expected.bytes)
        #expect(try r.memory.readBytes(at: addrs[0] + 12, count: f.count) == f)
        #expect(try r.memory.readBytes(at: addrs[1], count: 12) == [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "DATA_VALID kept with GUEST_CSUM")
        #expect(r.net.receiveDropped == 3)

        // A guest without GUEST_CSUM / GUEST_TSO4: the same GSO frame is dropped, DATA_VALID cleared.
        let (r2, b2) = try rig(wanted: .max & ~(F.guestChecksum | F.guestTSO4 | F.guestTSO6))
        b2.inject(gso.bytes + f)
        b2.inject(dv.bytes + tcpFrame(payload: 10))
        let a2 = try r2.postReceive(65_562) + r2.postReceive(2000)
        r2.net.pollBackend()
        #expect(try r2.driver.takeUsed(r2.rx).map(\.length) == [0, 12 + 64])
        #expect(try r2.memory.readBytes(at: a2[1], count: 12) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    }
}

/// The suite's reproducible generator, for seeded headers.
extension LegacyHostileGuestTests.SplitMix: RandomNumberGenerator {}
