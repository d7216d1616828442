@testable import LocalNet
import Testing

let inet6 = LocalInet6(prefix: LocalInet6.address("fd12:3456:789a:100::")!)!
let lease6: LocalLease = { var l = lease; l.inet6 = inet6; return l }()
let guestLinkLocal = linkLocalAddress(guestMAC)
let allRouters = LocalInet6.address("ff02::2")!
let dhcpServers = LocalInet6.address("ff02::1:2")!

/// An IPv6 frame as the guest sends it, checksum filled in unless `badChecksum`.
func guestFrame(source: [UInt8] = guestLinkLocal, destination: [UInt8], next: UInt8, hopLimit: UInt8 = 255,
                payload: [UInt8], checksumAt: Int, badChecksum: Bool = false, sourceMAC: MACAddress = guestMAC) -> [UInt8] {
    var p = payload
    let sum = LocalIPv6Server.checksum(source, destination, next, p) ^ (badChecksum ? 1 : 0)
    p[checksumAt] = UInt8(sum >> 8); p[checksumAt + 1] = UInt8(truncatingIfNeeded: sum)
    var f: [UInt8] = [0x33, 0x33, 0, 0, 0, 2] + sourceMAC + [0x86, 0xDD, 0x60, 0, 0, 0]
    f.append(be: UInt16(p.count))
    f += [next, hopLimit] + source + destination + p
    return f
}

func solicitation(options: [UInt8] = [1, 1] + guestMAC, source: [UInt8] = guestLinkLocal, hopLimit: UInt8 = 255,
                  badChecksum: Bool = false) -> [UInt8] {
    guestFrame(source: source, destination: allRouters, next: 58, hopLimit: hopLimit,
               payload: [133, 0, 0, 0, 0, 0, 0, 0] + options, checksumAt: 2, badChecksum: badChecksum)
}

func informationRequest(options: [UInt8] = [0, 1, 0, 10, 0, 3, 0, 1] + guestMAC + [0, 6, 0, 2, 0, 23],
                        type: UInt8 = 11) -> [UInt8] {
    let m: [UInt8] = [type, 0xAB, 0xCD, 0xEF] + options
    var udp: [UInt8] = [0x02, 0x22, 0x02, 0x23]
    udp.append(be: UInt16(8 + m.count)); udp += [0, 0]
    return guestFrame(destination: dhcpServers, next: 17, hopLimit: 1, payload: udp + m, checksumAt: 6)
}

@Suite struct IPv6ServerTests {
    func server() -> LocalIPv6Server { LocalIPv6Server(lease: lease6)! }

    @Test func solicitationGetsAnAdvertisementForSLAAC() throws {
        var s = server()
        guard case let .consumed(reply?) = s.handle(frame: solicitation(), now: 0) else { Issue.record("no answer"); return }
        #expect(Array(reply[0..<6]) == guestMAC && Array(reply[6..<12]) == serverMAC)
        #expect(reply[12] == 0x86 && reply[13] == 0xDD && reply[21] == 255, "ICMPv6, hop limit 255")
        #expect(Array(reply[22..<38]) == linkLocalAddress(serverMAC) && Array(reply[38..<54]) == guestLinkLocal)
        let ra = Array(reply[54...])
        #expect(LocalIPv6Server.checksum(Array(reply[22..<38]), Array(reply[38..<54]), 58, ra) == 0, "valid checksum")
        #expect(ra[0] == 134 && ra[4] == 64 && ra[5] == 0x40, "RA, hop limit 64, O flag")
        #expect(UInt16(ra[6]) << 8 | UInt16(ra[7]) == 1800)
        // Options: SLLA, MTU, prefix (L|A, /64, our prefix), RDNSS (prefix::1).
        var opts: [UInt8: [UInt8]] = [:]
        var at = 16
        while at + 1 < ra.count, ra[at + 1] > 0 { opts[ra[at]] = Array(ra[at..<(at + Int(ra[at + 1]) * 8)]); at += Int(ra[at + 1]) * 8 }
        #expect(at == ra.count)
        #expect(Array(opts[1]![2...]) == serverMAC)
        #expect(opts[3]![2] == 64 && opts[3]![3] == 0xC0 && Array(opts[3]![16...]) == inet6.prefix)
        #expect(Array(opts[25]![8...]) == inet6.hostAddress)
        #expect(LocalInet6.text(inet6.hostAddress) == "fd12:3456:789a:100::1")
    }

    @Test func fromTheUnspecifiedAddressTheAdvertisementIsMulticast() {
        var s = server()
        let unspecified = [UInt8](repeating: 0, count: 16)
        guard case let .consumed(reply?) = s.handle(frame: solicitation(options: [], source: unspecified), now: 0) else {
            Issue.record("no answer"); return
        }
        #expect(Array(reply[0..<6]) == [0x33, 0x33, 0, 0, 0, 1] && Array(reply[38..<54]) == LocalInet6.address("ff02::1")!)
        // RFC 4861 6.1.1: no source link-layer option from the unspecified address.
        #expect(s.handle(frame: solicitation(source: unspecified), now: 0) == .consumed(reply: nil))
    }

    @Test func informationRequestGetsTheDNSServer() throws {
        var s = server()
        guard case let .consumed(reply?) = s.handle(frame: informationRequest(), now: 0) else { Issue.record("no answer"); return }
        let udp = Array(reply[54...])
        #expect(LocalIPv6Server.checksum(Array(reply[22..<38]), Array(reply[38..<54]), 17, udp) == 0)
        #expect(udp[0..<4] == [0x02, 0x23, 0x02, 0x22], "547 -> 546")
        let m = Array(udp[8...])
        #expect(m[0..<4] == [7, 0xAB, 0xCD, 0xEF], "Reply with the transaction id")
        let tail = Array(m[4...])
        #expect(tail.starts(with: [0, 1, 0, 10, 0, 3, 0, 1] + guestMAC), "client id echoed")
        #expect(Array(tail.suffix(20)) == [0, 23, 0, 16] + inet6.hostAddress)
    }

    @Test func otherIPv6PassesAndIPv4IsNotOurs() {
        var s = server()
        // A neighbour solicitation and an echo request go to the tap.
        let ns = guestFrame(destination: LocalInet6.address("ff02::1:ff00:1")!, next: 58,
                            payload: [135, 0, 0, 0, 0, 0, 0, 0] + inet6.hostAddress, checksumAt: 2)
        #expect(s.handle(frame: ns, now: 0) == .pass)
        let echo = guestFrame(destination: inet6.hostAddress, next: 58, hopLimit: 64, payload: [128, 0, 0, 0, 0, 1, 0, 1], checksumAt: 2)
        #expect(s.handle(frame: echo, now: 0) == .pass)
        // An extension header (hop-by-hop) before the RS: not ours, passes.
        var hbh = solicitation(); hbh[20] = 0
        #expect(s.handle(frame: hbh, now: 0) == .pass)
        #expect(s.handle(frame: clientFrame(clientMessage(.discover)), now: 0) == .pass)
        #expect(LocalIPv6Server(lease: lease) == nil, "no server without local inet6")
    }

    /// Hostile solicitations and DHCPv6 requests: consumed, never answered, never a trap.
    @Test func hostilePacketsGetNoAnswer() {
        var s = server()
        let bad: [[UInt8]] = [
            solicitation(hopLimit: 64),                                   // forwarded: not from the link
            solicitation(badChecksum: true),
            solicitation(options: [1, 0, 0, 0, 0, 0, 0, 0]),              // zero-length option
            solicitation(options: [1, 2] + guestMAC),                     // option past the end
            solicitation(options: [1]),                                   // half an option header
            { var f = solicitation(); f[54 + 1] = 1; return f }(),        // code 1
            guestFrame(destination: allRouters, next: 58, payload: [133, 0, 0, 0, 0, 0, 0, 0], checksumAt: 2,
                       sourceMAC: [0xFE, 0xE1, 0xBA, 0xD0, 0x99, 0x99]),  // not the guest's MAC
            informationRequest(type: 1),                                  // Solicit: stateful, not served
            informationRequest(options: [0, 1, 0xFF, 0xFF]),              // option length past the message
            informationRequest(options: [0, 1, 0]),                       // truncated option header
            informationRequest(options: [0, 3, 0, 12] + [UInt8](repeating: 0, count: 12)),   // IA_NA in an IR
            { var f = informationRequest(); f[54 + 4] = 0; f[54 + 5] = 200; return f }(),    // UDP length wrong
            { var f = informationRequest(); f[54 + 1] = 0x23; return f }(),                 // source port not 546
        ]
        for (i, f) in bad.enumerated() {
            #expect(s.handle(frame: f, now: 0) == .consumed(reply: nil), "case \(i)")
        }
        // Every truncation and a payload length past the frame.
        for frame in [solicitation(), informationRequest()] {
            for cut in 0..<frame.count {
                let v = s.handle(frame: Array(frame[0..<cut]), now: 0)
                if case .consumed(let r) = v { #expect(r == nil, "cut \(cut)") }
            }
            var long = frame; long[18] = 0xFF
            if case .consumed(let r) = s.handle(frame: long, now: 0) { #expect(r == nil) }
        }
        // Seeded mutations: whatever happens, no trap and no answer to a broken checksum.
        var g = SplitMix(state: 6)
        for _ in 0..<3000 {
            var f = Bool.random(using: &g) ? solicitation() : informationRequest()
            for _ in 0..<Int.random(in: 1...4, using: &g) { f[Int.random(in: 0..<f.count, using: &g)] = UInt8.random(in: 0...255, using: &g) }
            _ = s.handle(frame: f, now: 0)
        }
    }

    @Test func floodsAreRateLimited() {
        var s = server()
        var answers = 0
        for i in 0..<1000 {
            if case .consumed(let r?) = s.handle(frame: solicitation(), now: UInt64(i) * 1_000_000), r.count > 0 { answers += 1 }
        }
        #expect(answers >= 16 && answers <= 16 + 9, "burst 16, then 8/s over one second: \(answers)")
    }
}
