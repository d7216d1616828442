import Testing
@testable import LocalNet

/// The malformed / hostile corpus: none of it gets an answer, none of it traps.
@Suite struct DHCPHostileTests {
    let server = LocalDHCPServer(lease: lease)

    /// A frame around a raw DHCP payload whose bytes the test edits.
    func frame(_ payload: [UInt8]) -> [UInt8] { clientFrame(payload: payload) }

    var discover: [UInt8] { clientMessage(.discover).bytes }

    @Test func truncatedMessagesAndOptions() {
        // Every cut of the payload before the end option: too short, or an option cut off,
        // or no end option. (Frames stay valid IP/UDP: only the DHCP layer is truncated.)
        let full = Array(discover.prefix(240 + 3 + 8 + 1))   // cookie, type, PRL, end
        #expect(full.last == 255)
        #expect(server.answer(frame: frame(full)) != nil)
        for n in 0..<(full.count - 1) {
            #expect(server.answer(frame: frame(Array(full.prefix(n)))) == nil, "cut at \(n)")
        }
        // Frames cut inside the IP or UDP layers.
        let f = frame(discover)
        for n in stride(from: 0, to: f.count, by: 7) {
            #expect(server.answer(frame: Array(f.prefix(n))) == nil, "frame cut at \(n)")
        }
    }

    @Test func optionOverflowAndHugeLengths() {
        var p = Array(discover.prefix(240))
        p += [53, 1, 1, 12, 255]           // host name claiming 255 bytes, 0 present
        #expect(server.answer(frame: frame(p)) == nil)
        p = Array(discover.prefix(240)) + [53, 1, 1] + [61, 200] + [UInt8](repeating: 1, count: 100) + [255]
        #expect(server.answer(frame: frame(p)) == nil)
        p = Array(discover.prefix(240)) + [53, 1, 1, 55]   // length byte missing
        #expect(server.answer(frame: frame(p)) == nil)
        p = Array(discover.prefix(240)) + [53, 1, 1] + [UInt8](repeating: 0, count: 40)   // pads, no end
        #expect(server.answer(frame: frame(p)) == nil)
        // Message type of the wrong length or unknown value.
        #expect(server.answer(frame: frame(Array(discover.prefix(240)) + [53, 2, 1, 1, 255])) == nil)
        #expect(server.answer(frame: frame(Array(discover.prefix(240)) + [53, 1, 99, 255])) == nil)
        #expect(server.answer(frame: frame(Array(discover.prefix(240)) + [53, 0, 255])) == nil)
        // Overload into fields without an end option, or an overload value that is no area.
        var o = clientMessage(.discover, extra: [(52, [3])]); o.file = [12, 200] + [UInt8](repeating: 0, count: 126)
        #expect(server.answer(frame: frame(o.bytes)) == nil)
        o = clientMessage(.discover, extra: [(52, [1])]); o.file = [UInt8](repeating: 0, count: 128)
        #expect(server.answer(frame: frame(o.bytes)) == nil)
        o = clientMessage(.discover, extra: [(52, [7])])
        #expect(server.answer(frame: frame(o.bytes)) == nil)
        // An oversized message (more than one 1500-byte packet).
        let big = Array(discover.prefix(240)) + [53, 1, 1] + Array(repeating: [60, 255] + [UInt8](repeating: 0x41, count: 255), count: 8).flatMap { $0 } + [255]
        #expect(big.count > DHCPMessage.maximumLength)
        #expect(server.answer(frame: frame(big)) == nil)
    }

    @Test func wrongHardwareAndIdentity() {
        func edited(_ edit: (inout [UInt8]) -> Void) -> [UInt8] { var p = discover; edit(&p); return frame(p) }
        #expect(server.answer(frame: edited { $0[2] = 0 }) == nil)      // hlen 0
        #expect(server.answer(frame: edited { $0[2] = 16 }) == nil)     // hlen 16
        #expect(server.answer(frame: edited { $0[2] = 255 }) == nil)    // hlen 255
        #expect(server.answer(frame: edited { $0[1] = 6 }) == nil)      // htype IEEE 802
        #expect(server.answer(frame: edited { $0[0] = 2 }) == nil)      // a BOOTREPLY
        #expect(server.answer(frame: edited { $0[0] = 0 }) == nil)
        #expect(server.answer(frame: edited { $0[3] = 1 }) == nil)      // relayed (hops)
        #expect(server.answer(frame: edited { $0[24] = 10 }) == nil)    // relayed (giaddr)
        #expect(server.answer(frame: edited { $0[33] ^= 1 }) == nil)    // chaddr of another MAC
        // Source MAC not the guest's (a forged or bridged client).
        #expect(server.answer(frame: clientFrame(payload: discover, sourceMAC: [0x02, 0, 0, 0, 0, 1])) == nil)
        // Wrong ports.
        #expect(server.answer(frame: clientFrame(payload: discover, sourcePort: 1068)) == nil)
        #expect(server.answer(frame: clientFrame(payload: discover, destinationPort: 68)) == nil)
    }

    @Test func brokenIPLayer() {
        let f = frame(discover)
        func edited(_ edit: (inout [UInt8]) -> Void) -> [UInt8] { var g = f; edit(&g); return g }
        #expect(server.answer(frame: edited { $0[14] = 0x65 }) == nil)                 // version 6
        #expect(server.answer(frame: edited { $0[14] = 0x44 }) == nil)                 // IHL 16 bytes
        #expect(server.answer(frame: edited { $0[14] = 0x4F }) == nil)                 // IHL 60, checksum off
        #expect(server.answer(frame: edited { $0[16] = 0xFF; $0[17] = 0xFF }) == nil)  // total length 65535
        #expect(server.answer(frame: edited { $0[20] = 0x20 }) == nil)                 // more fragments
        #expect(server.answer(frame: edited { $0[24] ^= 0xFF }) == nil)                // IP checksum
        #expect(server.answer(frame: edited { $0[38] = 0xFF; $0[39] = 0xFF }) == nil)  // UDP length past IP
        #expect(server.answer(frame: edited { $0[38] = 0; $0[39] = 4 }) == nil)        // UDP length < 8
        #expect(server.answer(frame: edited { $0[12] = 0x81; $0[13] = 0 }) == nil)     // VLAN tag
    }

    @Test func randomGarbageAndMutations() {
        var rng = SplitMix(state: 13)
        var s = server
        let good = frame(discover)
        for round in 0..<3000 {
            var f: [UInt8]
            if round % 3 == 0 {
                f = (0..<Int.random(in: 0...1600, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            } else {
                // Mutate the DHCP layer of a good frame and re-wrap it (valid IP/UDP), so the
                // parser, not the checksum, meets the garbage.
                var p = discover
                for _ in 0..<Int.random(in: 1...12, using: &rng) {
                    p[Int.random(in: 236..<p.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
                f = round % 3 == 1 ? frame(p) : Array(good.prefix(Int.random(in: 0...good.count, using: &rng)))
            }
            if let reply = s.handle(frame: f, now: UInt64(round) * 1_000_000_000).replyFrame {
                // The rare mutation that is still a valid request gets a proper answer.
                #expect(parseReply(reply) != nil)
            }
        }
    }

    @Test func floodsAreRateLimited() {
        var s = server
        let f = frame(discover)
        var answered = 0
        for _ in 0..<10_000 where s.handle(frame: f, now: 5_000_000_000).replyFrame != nil { answered += 1 }
        #expect(answered == Int(LocalDHCPServer.burst))
        #expect(s.rateLimited == 10_000 - UInt64(LocalDHCPServer.burst))
        // One second later the bucket has refilled by the rate, not more.
        answered = 0
        for _ in 0..<1000 where s.handle(frame: f, now: 6_000_000_000).replyFrame != nil { answered += 1 }
        #expect(answered == Int(LocalDHCPServer.answersPerSecond))
        // Invalid floods are never answered and do not use up the bucket.
        var t = server
        var bad = f; bad[bad.count - 1] ^= 0xFF
        for _ in 0..<10_000 { #expect(t.handle(frame: bad, now: 0) == .consumed(reply: nil)) }
        #expect(t.handle(frame: f, now: 0).replyFrame != nil)
    }
}

extension LocalDHCPServer.Verdict {
    var replyFrame: [UInt8]? { if case let .consumed(r) = self { return r } else { return nil } }
}
