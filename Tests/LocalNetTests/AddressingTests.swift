import Testing
@testable import LocalNet

@Suite struct AddressingTests {
    @Test func dottedQuadsAndPrefixes() {
        #expect(IPv4Address("100.64.0.1")?.value == 0x6440_0001)
        #expect(IPv4Address("100.64.0.1")?.description == "100.64.0.1")
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "1.2.3.-4", "1..2.3", "01234.1.1.1", "a.b.c.d", "1.2.3.4 "] {
            #expect(IPv4Address(bad) == nil, "\(bad)")
        }
        #expect(IPv4Prefix("100.64.0.0/10")?.length == 10)
        // A bad mask: host bits set, length out of range, no length.
        for bad in ["100.64.0.1/10", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0", "10.0.0.0/", "10.0.0.0/8/8"] {
            #expect(IPv4Prefix(bad) == nil, "\(bad)")
        }
        let a = IPv4Prefix("10.0.0.0/8")!, b = IPv4Prefix("10.1.0.0/16")!, c = IPv4Prefix("11.0.0.0/8")!
        #expect(a.overlaps(b) && b.overlaps(a) && !a.overlaps(c))
        #expect(a.contains(IPv4Address("10.255.1.1")!) && !a.contains(IPv4Address("11.0.0.0")!))
    }

    @Test func openBSDsPerVMSubnets() throws {
        let p = LocalAddressing.defaultPrefix
        #expect(p.description == "100.64.0.0/10")
        // vm id 1, interface 0: 100.64.1.2 (host) / 100.64.1.3 (guest), as vmctl(8) describes.
        #expect(try LocalAddressing.link(prefix: p, vmID: 1, interface: 0) == LocalLink(host: IPv4Address("100.64.1.2")!, guest: IPv4Address("100.64.1.3")!))
        #expect(try LocalAddressing.link(prefix: p, vmID: 2, interface: 3) == LocalLink(host: IPv4Address("100.64.2.8")!, guest: IPv4Address("100.64.2.9")!))
        #expect(try LocalAddressing.link(prefix: p, vmID: 16383, interface: 125).guest == IPv4Address("100.127.255.253")!)
        #expect(throws: LocalAddressError.exhausted(prefix: p, vmID: 16384, interface: 0)) { try LocalAddressing.link(prefix: p, vmID: 16384, interface: 0) }
        #expect(throws: LocalAddressError.exhausted(prefix: p, vmID: 1, interface: 126)) { try LocalAddressing.link(prefix: p, vmID: 1, interface: 126) }
        let small = IPv4Prefix("192.168.7.0/24")!
        #expect(try LocalAddressing.link(prefix: small, vmID: 0, interface: 0).host == IPv4Address("192.168.7.2")!)
        #expect(throws: LocalAddressError.exhausted(prefix: small, vmID: 1, interface: 0)) { try LocalAddressing.link(prefix: small, vmID: 1, interface: 0) }
        let tiny = IPv4Prefix("192.168.7.0/25")!
        #expect(throws: LocalAddressError.prefixTooLong(tiny)) { try LocalAddressing.link(prefix: tiny, vmID: 0, interface: 0) }
    }

    @Test func internetChecksum() {
        // RFC 1071's example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2, checksum 0x220d.
        let data: [UInt8] = [0x00, 0x01, 0xF2, 0x03, 0xF4, 0xF5, 0xF6, 0xF7]
        #expect(data.withUnsafeBytes { Checksum.internet($0) } == 0x220D)
        let odd: [UInt8] = [0x01]
        #expect(odd.withUnsafeBytes { Checksum.internet($0) } == ~UInt16(0x0100))
    }

    @Test func udpFramesRoundTrip() throws {
        let d = UDPDatagram(sourceMAC: guestMAC, destinationMAC: serverMAC, source: link.guest, destination: link.host,
                            sourcePort: 1234, destinationPort: 53, payload: Array("hello".utf8))
        let f = d.frame
        #expect(f.count == 14 + 20 + 8 + 5)
        #expect(UDPDatagram(frame: f) == d)
        // Checksums are verified: flipping a payload byte or a header byte is refused.
        var bad = f; bad[f.count - 1] ^= 1
        #expect(UDPDatagram(frame: bad) == nil)
        bad = f; bad[14 + 8] ^= 1   // TTL: IP header checksum no longer matches
        #expect(UDPDatagram(frame: bad) == nil)
        // A UDP checksum of 0 means "none" and is accepted.
        bad = f; bad[14 + 20 + 6] = 0; bad[14 + 20 + 7] = 0; bad[f.count - 1] ^= 1
        #expect(UDPDatagram(frame: bad)?.payload == Array("helln".utf8))
    }
}
