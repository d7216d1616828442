#if canImport(Glibc)
import Glibc
#endif
import Devices
import Testing
@testable import LocalNet

@Suite struct LocalInterfaceBackendTests {
    func readable(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 1
    }

    @Test func dhcpIsAnsweredInsideAndNeverReachesTheTap() throws {
        let tap = MemoryNetworkBackend()
        let b = try LocalInterfaceBackend(inner: tap, lease: lease)
        let wake = try #require(b.wakeDescriptor)
        #expect(!readable(wake))
        let discover = clientFrame(clientMessage(.discover))
        #expect(discover.withUnsafeBytes { b.send($0) })
        #expect(tap.sent.isEmpty)
        #expect(readable(wake))
        var buf = [UInt8](repeating: 0, count: 2048)
        let n = try #require(buf.withUnsafeMutableBytes { b.receive(into: $0) })
        #expect(parseReply(Array(buf.prefix(n)))?.1.messageType == .offer)
        #expect(!readable(wake))
        #expect(buf.withUnsafeMutableBytes { b.receive(into: $0) } == nil)

        // Other frames go to the tap; the tap's frames come back after our replies.
        let other = UDPDatagram(sourceMAC: guestMAC, destinationMAC: serverMAC, source: link.guest, destination: link.host,
                                sourcePort: 40000, destinationPort: 7, payload: [9]).frame
        #expect(other.withUnsafeBytes { b.send($0) })
        #expect(tap.sent == [other])
        tap.inject([1, 2, 3])
        _ = clientFrame(clientMessage(.discover)).withUnsafeBytes { b.send($0) }
        #expect(buf.withUnsafeMutableBytes { b.receive(into: $0) } ?? 0 > 300)
        #expect(buf.withUnsafeMutableBytes { b.receive(into: $0) } == 3)
        #expect(b.dhcpCounters.answered == 2)
    }

    @Test func queuedRepliesAreBounded() throws {
        let b = try LocalInterfaceBackend(inner: MemoryNetworkBackend(), lease: lease)
        let discover = clientFrame(clientMessage(.discover))
        for _ in 0..<100 { _ = discover.withUnsafeBytes { b.send($0) } }
        var buf = [UInt8](repeating: 0, count: 2048)
        var got = 0
        while buf.withUnsafeMutableBytes({ b.receive(into: $0) }) != nil { got += 1 }
        #expect(got == Int(LocalDHCPServer.burst))   // the rate limit binds before the queue
        #expect(got <= LocalInterfaceBackend.maximumQueuedReplies)
    }

    /// Over a tap with the virtio-net header: the services read the frame after it, a DHCP
    /// datagram with a partial checksum (NEEDS_CSUM, as from a guest's UDP socket) is still
    /// answered, the reply gets an empty header, other frames reach the tap with theirs.
    @Test func withTheVirtioHeaderPartialChecksumsAreCompletedForTheServices() throws {
        let tap = MemoryNetworkBackend(virtioHeader: true)
        let b = try LocalInterfaceBackend(inner: tap, lease: lease)
        #expect(b.carriesVirtioHeader)
        #expect(b.setReceiveOffloads([.checksum, .tso4]) && tap.receiveOffloads == [.checksum, .tso4])
        var frame = clientFrame(clientMessage(.discover))
        // Replace the UDP checksum by the pseudo-header sum alone.
        let udpLength = UInt32(frame.count - 34)
        let pseudo = UInt32(0) + 0 + 0xFFFF + 0xFFFF + 17 + udpLength   // 0.0.0.0 -> 255.255.255.255
        let partial = ~([UInt8]().withUnsafeBytes { Checksum.internet($0, initial: pseudo) })
        frame[40] = UInt8(partial >> 8); frame[41] = UInt8(truncatingIfNeeded: partial)
        var h = VirtioNetHeader(); h.flags = VirtioNetHeader.Flag.needsChecksum; h.checksumStart = 34; h.checksumOffset = 6
        #expect((h.bytes + frame).withUnsafeBytes { b.send($0) })
        #expect(tap.sent.isEmpty, "taken by the DHCP server")
        var buf = [UInt8](repeating: 0xEE, count: 2048)
        let n = try #require(buf.withUnsafeMutableBytes { b.receive(into: $0) })
        #expect(Array(buf.prefix(12)) == [UInt8](repeating: 0, count: 12))
        #expect(parseReply(Array(buf[12..<n]))?.1.messageType == .offer)
        // The same frame with a wrong partial sum gets no answer (the completed checksum is wrong).
        frame[41] ^= 1
        _ = (h.bytes + frame).withUnsafeBytes { b.send($0) }
        #expect(buf.withUnsafeMutableBytes { b.receive(into: $0) } == nil)
        // Not for a service: to the tap, header and all.
        let other = h.bytes + UDPDatagram(sourceMAC: guestMAC, destinationMAC: serverMAC, source: link.guest,
                                          destination: link.host, sourcePort: 40000, destinationPort: 7, payload: [9]).frame
        #expect(other.withUnsafeBytes { b.send($0) })
        #expect(tap.sent == [other])
        #expect([UInt8](repeating: 0, count: 5).withUnsafeBytes { b.send($0) } == false, "shorter than the header")
    }
}
