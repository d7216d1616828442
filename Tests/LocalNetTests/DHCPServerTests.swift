import Testing
@testable import LocalNet

@Suite struct DHCPServerTests {
    let server = LocalDHCPServer(lease: lease)

    @Test func discoverGetsAnOfferWithTheWholeLease() throws {
        let reply = server.answer(frame: clientFrame(clientMessage(.discover)))
        let (d, m) = try #require(parseReply(reply))
        #expect(d.sourceMAC == serverMAC && d.destinationMAC == guestMAC)
        #expect(d.source == link.host && d.destination == link.guest)
        #expect(d.sourcePort == 67 && d.destinationPort == 68)
        #expect(m.op == 2 && m.xid == 0x1234_5678 && m.yiaddr == link.guest && m.siaddr == link.host)
        #expect(Array(m.chaddr.prefix(6)) == guestMAC)
        #expect(m.messageType == .offer)
        #expect(m.address(DHCPMessage.Option.serverIdentifier) == link.host)
        #expect(m.address(DHCPMessage.Option.subnetMask) == IPv4Address("255.255.255.254"))
        #expect(m.address(DHCPMessage.Option.router) == link.host)
        #expect(m.address(DHCPMessage.Option.domainNameServer) == link.host)
        #expect(m.option(DHCPMessage.Option.leaseTime) == [0, 0, 0x0E, 0x10])
        #expect(m.option(DHCPMessage.Option.hostName) == Array("myvm".utf8))
        #expect(try #require(reply).count >= 14 + 28 + 300)
    }

    @Test func requestIsAckedOrNakked() throws {
        let select = clientMessage(.request, extra: [(50, link.guest.bytes), (54, link.host.bytes)])
        let (ackFrame, ack) = try #require(parseReply(server.answer(frame: clientFrame(select))))
        #expect(ack.messageType == .ack && ack.yiaddr == link.guest && ackFrame.destination == link.guest)

        // INIT-REBOOT without a server id, asking for our address: ACK.
        let reboot = clientMessage(.request, extra: [(50, link.guest.bytes)])
        #expect(parseReply(server.answer(frame: clientFrame(reboot)))?.1.messageType == .ack)

        // Another address: NAK, broadcast, no lease.
        let wrong = clientMessage(.request, extra: [(50, IPv4Address("10.0.0.5")!.bytes)])
        let (nakFrame, nak) = try #require(parseReply(server.answer(frame: clientFrame(wrong))))
        #expect(nak.messageType == .nak && nak.yiaddr == .zero && nak.option(DHCPMessage.Option.leaseTime) == nil)
        #expect(nakFrame.destination == .broadcast && nakFrame.destinationMAC == [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])

        // Selecting another server: silence (RFC 2131 4.3.2).
        let other = clientMessage(.request, extra: [(50, link.guest.bytes), (54, IPv4Address("10.9.9.9")!.bytes)])
        #expect(server.answer(frame: clientFrame(other)) == nil)

        // RENEWING: ciaddr set, unicast from the guest's address, answered to ciaddr.
        let renew = clientMessage(.request, ciaddr: link.guest)
        let renewFrame = clientFrame(payload: renew.bytes, source: link.guest, destination: link.host)
        let (rd, rm) = try #require(parseReply(server.answer(frame: renewFrame)))
        #expect(rm.messageType == .ack && rd.destination == link.guest && rd.destinationMAC == guestMAC)
    }

    @Test func broadcastFlagIsHonoured() throws {
        var m = clientMessage(.discover)
        m.flags = DHCPMessage.broadcastFlag
        let (d, r) = try #require(parseReply(server.answer(frame: clientFrame(m))))
        #expect(d.destination == .broadcast && r.flags == DHCPMessage.broadcastFlag)
    }

    @Test func informBootpReleaseDecline() throws {
        let inform = clientMessage(.inform, ciaddr: link.guest)
        let (_, i) = try #require(parseReply(server.answer(frame: clientFrame(payload: inform.bytes, source: link.guest))))
        #expect(i.messageType == .ack && i.yiaddr == .zero && i.option(DHCPMessage.Option.leaseTime) == nil)
        #expect(i.address(DHCPMessage.Option.domainNameServer) == link.host)

        let bootp = clientMessage(nil)
        let (_, b) = try #require(parseReply(server.answer(frame: clientFrame(bootp))))
        #expect(b.messageType == nil && b.yiaddr == link.guest && b.address(DHCPMessage.Option.router) == link.host)

        for t in [DHCPMessage.MessageType.release, .decline, .offer, .ack, .nak] {
            #expect(server.answer(frame: clientFrame(clientMessage(t))) == nil, "\(t)")
        }
    }

    @Test func hostNameOnlyWhenValid() throws {
        for (name, sent) in [("web-1.example", true), ("under_score", false), ("-dash", false), ("", false),
                             (String(repeating: "a", count: 64), false)] {
            var l = lease; l.hostName = name
            let (_, m) = try #require(parseReply(LocalDHCPServer(lease: l).answer(frame: clientFrame(clientMessage(.discover)))))
            #expect((m.option(DHCPMessage.Option.hostName) != nil) == sent, "\(name)")
        }
    }

    @Test func onlyPort67IsTakenAndNothingElse() {
        var s = server
        // Not DHCP: passes to the tap.
        let dns = UDPDatagram(sourceMAC: guestMAC, destinationMAC: serverMAC, source: link.guest, destination: link.host,
                              sourcePort: 5353, destinationPort: 53, payload: [1, 2, 3]).frame
        #expect(s.handle(frame: dns, now: 0) == .pass)
        let arp: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] + guestMAC + [0x08, 0x06] + [UInt8](repeating: 0, count: 28)
        #expect(s.handle(frame: arp, now: 0) == .pass)
        #expect(s.handle(frame: [], now: 0) == .pass)
        // To port 67 but unanswerable: consumed (never reaches the tap), no reply.
        var junk = clientFrame(clientMessage(.discover)); junk[junk.count - 1] ^= 0xFF   // bad UDP checksum
        #expect(s.handle(frame: junk, now: 0) == .consumed(reply: nil))
        #expect(s.ignored == 1 && s.answered == 0)
    }

    @Test func messagesRoundTripAndLongOptionsSplit() throws {
        var m = clientMessage(.discover, extra: [(60, [UInt8](repeating: 7, count: 300))])
        m.sname = Array("srv".utf8) + [UInt8](repeating: 0, count: 61)
        let bytes = m.bytes
        let parsed = try DHCPMessage(parsing: bytes)
        #expect(parsed == m)
        #expect(parsed.option(60)?.count == 300)
        // Option overload: options in the file field are found.
        var o = clientMessage(.discover, extra: [(52, [1])])
        o.file = [12, 3] + Array("abc".utf8) + [255] + [UInt8](repeating: 0, count: 122)
        #expect(try DHCPMessage(parsing: o.bytes).option(12) == Array("abc".utf8))
    }
}
