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
}
