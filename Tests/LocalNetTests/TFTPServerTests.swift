#if canImport(Glibc)
import Glibc
#endif
import Devices
import Foundation
import Testing
@testable import LocalNet

/// The built-in TFTP server of network boot (RFC 1350, 2347-2349): whole transfers with and
/// without options, loss recovery by the client's repeated ACK, the served directory (read
/// when the server is made) as a hard boundary, and hostile or excessive requests (no
/// crash, bounded state, one error).
@Suite struct TFTPServerTests {
    let dir: String
    let content: [UInt8]

    init() throws {
        dir = NSTemporaryDirectory() + "tftp-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir + "/root/sub", withIntermediateDirectories: true)
        var g = SplitMix(state: 7)
        content = (0..<3000).map { _ in UInt8.random(in: 0...255, using: &g) }
        try Data(content).write(to: URL(fileURLWithPath: dir + "/root/boot.bin"))
        try Data(repeating: 0x41, count: 1024).write(to: URL(fileURLWithPath: dir + "/root/exact.bin"))
        try Data("kernel".utf8).write(to: URL(fileURLWithPath: dir + "/root/sub/k"))
        try Data("secret".utf8).write(to: URL(fileURLWithPath: dir + "/outside"))
        try fm.createSymbolicLink(atPath: dir + "/root/link", withDestinationPath: dir + "/outside")
        try fm.createSymbolicLink(atPath: dir + "/root/linkdir", withDestinationPath: dir)
        try Data("private".utf8).write(to: URL(fileURLWithPath: dir + "/root/private"))
        chmod(dir + "/root/private", 0o600)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: dir) }

    func server() throws -> LocalTFTPServer { try LocalTFTPServer(lease: lease, directory: dir + "/root") }

    static let clientPort: UInt16 = 2070

    func packet(to port: UInt16, _ payload: [UInt8], from cport: UInt16 = clientPort, mac: MACAddress = guestMAC,
                destination: IPv4Address = link.host) -> [UInt8] {
        UDPDatagram(sourceMAC: mac, destinationMAC: serverMAC, source: link.guest, destination: destination,
                    sourcePort: cport, destinationPort: port, payload: payload).frame
    }

    func rrq(_ name: String, mode: String = "octet", options: [(String, String)] = []) -> [UInt8] {
        var p: [UInt8] = [0, 1] + Array(name.utf8) + [0] + Array(mode.utf8) + [0]
        for (k, v) in options { p += Array(k.utf8) + [0] + Array(v.utf8) + [0] }
        return p
    }

    func ack(_ block: UInt16) -> [UInt8] { [0, 4, UInt8(block >> 8), UInt8(block & 0xFF)] }

    /// The reply's UDP datagram; its TFTP opcode is payload[1].
    func reply(_ r: (taken: Bool, reply: [UInt8]?)) throws -> UDPDatagram {
        #expect(r.taken)
        let frame = try #require(r.reply)
        return try #require(UDPDatagram(frame: frame))
    }

    func errorCode(_ r: (taken: Bool, reply: [UInt8]?)) throws -> UInt16 {
        let d = try reply(r)
        #expect(d.payload[1] == 5, "an ERROR packet")
        return UInt16(d.payload[2]) << 8 | UInt16(d.payload[3])
    }

    /// Runs a whole transfer: ACKs every block and returns the data and the transfer port.
    func download(_ s: LocalTFTPServer, _ first: UDPDatagram, blockSize: Int) throws -> [UInt8] {
        var d = first
        var data: [UInt8] = []
        var expected: UInt16 = 1
        for _ in 0..<10_000 {
            #expect(d.payload[1] == 3 && d.destinationPort == Self.clientPort && d.source == link.host)
            #expect(UInt16(d.payload[2]) << 8 | UInt16(d.payload[3]) == expected)
            let chunk = d.payload[4...]
            data += chunk
            let r = s.handle(frame: packet(to: d.sourcePort, ack(expected)), now: 0)
            if chunk.count < blockSize {
                #expect(r.taken && r.reply == nil, "nothing follows the last block's ACK")
                return data
            }
            d = try reply(r)
            expected &+= 1
        }
        Issue.record("the transfer did not end")
        return data
    }

    @Test func plainTransferServesTheFileIn512ByteBlocks() throws {
        defer { cleanup() }
        let s = try server()
        let first = try reply(s.handle(frame: packet(to: 69, rrq("boot.bin")), now: 0))
        #expect(first.sourcePort == LocalTFTPServer.transferBase && first.sourceMAC == serverMAC && first.destinationMAC == guestMAC)
        #expect(try download(s, first, blockSize: 512) == content)
        #expect(s.openTransfers == 0 && s.filesServed == 1)
        // Leading slashes and "." are ignored; a file that fills its blocks ends with an
        // empty one.
        let exact = try reply(s.handle(frame: packet(to: 69, rrq("/./exact.bin")), now: 0))
        #expect(try download(s, exact, blockSize: 512) == [UInt8](repeating: 0x41, count: 1024))
        let sub = try reply(s.handle(frame: packet(to: 69, rrq("sub/k")), now: 0))
        #expect(try download(s, sub, blockSize: 512) == Array("kernel".utf8))
    }

    @Test func optionsAreAcknowledgedAndBlockSizeIsCapped() throws {
        defer { cleanup() }
        let s = try server()
        let oack = try reply(s.handle(frame: packet(to: 69, rrq("boot.bin", mode: "OCTET", options: [("blksize", "1432"), ("tsize", "0"), ("windowsize", "4")])), now: 0))
        #expect(Array(oack.payload) == [0, 6] + Array("blksize\u{0}1432\u{0}tsize\u{0}3000\u{0}".utf8), "windowsize is not acknowledged")
        let first = try reply(s.handle(frame: packet(to: oack.sourcePort, ack(0)), now: 0))
        #expect(first.payload.count == 4 + 1432)
        #expect(try download(s, first, blockSize: 1432) == content)

        let big = try reply(s.handle(frame: packet(to: 69, rrq("boot.bin", options: [("blksize", "65464"), ("timeout", "3")])), now: 0))
        #expect(Array(big.payload) == [0, 6] + Array("blksize\u{0}1468\u{0}timeout\u{0}3\u{0}".utf8))
        let d = try reply(s.handle(frame: packet(to: big.sourcePort, ack(0)), now: 0))
        #expect(d.payload.count == 4 + LocalTFTPServer.maximumBlockSize)
        #expect(d.frame.count == 14 + 1500, "a whole 1500-byte packet")
    }

    @Test func aLostBlockIsResentWhenTheClientRepeatsItsACK() throws {
        defer { cleanup() }
        let s = try server()
        let b1 = try reply(s.handle(frame: packet(to: 69, rrq("boot.bin")), now: 0))
        let b2 = try reply(s.handle(frame: packet(to: b1.sourcePort, ack(1)), now: 0))
        // Block 2 "lost": the client times out and ACKs block 1 again.
        let again = try reply(s.handle(frame: packet(to: b1.sourcePort, ack(1)), now: 0))
        #expect(again == b2)
        // A stray older ACK gets nothing; the transfer goes on.
        let stray = s.handle(frame: packet(to: b1.sourcePort, ack(7)), now: 0)
        #expect(stray.taken && stray.reply == nil)
        let b3 = try reply(s.handle(frame: packet(to: b1.sourcePort, ack(2)), now: 0))
        #expect(b3.payload[3] == 3)
        // The client gives up (ERROR): the transfer is gone, later ACKs are an unknown TID.
        #expect(s.handle(frame: packet(to: b1.sourcePort, [0, 5, 0, 0, 0]), now: 0).reply == nil)
        #expect(s.openTransfers == 0)
        #expect(try errorCode(s.handle(frame: packet(to: b1.sourcePort, ack(3)), now: 0)) == 5)
    }

    @Test func nothingOutsideTheDirectoryIsServed() throws {
        defer { cleanup() }
        let s = try server()
        for path in ["../outside", "/../outside", "sub/../../outside", "sub/..", "..", "link", "linkdir/outside",
                     "sub", "/", "", String(repeating: "a/", count: 20) + "x", String(repeating: "x", count: 300)] {
            let code = try errorCode(s.handle(frame: packet(to: 69, rrq(path)), now: 0))
            #expect(code == 1 || code == 2, "\(path): \(code)")
        }
        #expect(try errorCode(s.handle(frame: packet(to: 69, rrq("nosuch")), now: 0)) == 1)
        // Only what others may read is served; files added later are not.
        #expect(try errorCode(s.handle(frame: packet(to: 69, rrq("private")), now: 0)) == 1)
        try Data("late".utf8).write(to: URL(fileURLWithPath: dir + "/root/late"))
        #expect(try errorCode(s.handle(frame: packet(to: 69, rrq("late")), now: 0)) == 1)
        #expect(s.servedPaths == ["boot.bin", "exact.bin", "sub/k"])
        #expect(s.openTransfers == 0)
    }

    @Test func writesOtherModesAndMalformedRequestsGetOneError() throws {
        defer { cleanup() }
        let s = try server()
        var wrq = rrq("new.bin"); wrq[1] = 2
        #expect(try errorCode(s.handle(frame: packet(to: 69, wrq), now: 0)) == 2)
        #expect(try errorCode(s.handle(frame: packet(to: 69, rrq("boot.bin", mode: "netascii")), now: 0)) == 4)
        #expect(try errorCode(s.handle(frame: packet(to: 69, [0, 1] + Array("boot.bin".utf8)), now: 0)) == 4, "no NUL")
        #expect(try errorCode(s.handle(frame: packet(to: 69, [0, 4, 0, 1]), now: 0)) == 4, "an ACK to port 69")
        // Too short to hold an opcode, or not from the guest: taken, unanswered.
        let short = s.handle(frame: packet(to: 69, [1]), now: 0)
        #expect(short.taken && short.reply == nil)
        let spoofed = s.handle(frame: packet(to: 69, rrq("boot.bin"), mac: [2, 0, 0, 0, 0, 9]), now: 0)
        #expect(spoofed.taken && spoofed.reply == nil)
        // Not for the host address: not ours (it goes on to the tap).
        #expect(s.handle(frame: packet(to: 69, rrq("boot.bin"), destination: IPv4Address("10.9.9.9")!), now: 0).taken == false)
        #expect(s.openTransfers == 0)
    }

    @Test func transfersAreBoundedAndIdleOnesReclaimed() throws {
        defer { cleanup() }
        let s = try server()
        var ports: Set<UInt16> = []
        for k in 0..<LocalTFTPServer.maximumTransfers {
            let d = try reply(s.handle(frame: packet(to: 69, rrq("boot.bin"), from: 3000 + UInt16(k)), now: 0))
            ports.insert(d.sourcePort)
        }
        #expect(ports.count == LocalTFTPServer.maximumTransfers)
        #expect(try errorCode(s.handle(frame: packet(to: 69, rrq("boot.bin"), from: 4000), now: 1_000_000_000)) == 0)
        let later = (LocalTFTPServer.idleSeconds + 1) * 1_000_000_000
        let d = try reply(s.handle(frame: packet(to: 69, rrq("boot.bin"), from: 4000), now: later))
        #expect(d.payload[1] == 3)
        #expect(s.openTransfers == LocalTFTPServer.maximumTransfers)
    }

    @Test func aFloodOfRequestsIsRateLimitedAndMutationsNeverTrap() throws {
        defer { cleanup() }
        let s = try server()
        var answered = 0
        for k in 0..<200 {
            if s.handle(frame: packet(to: 69, rrq("nosuch"), from: UInt16(5000 + k)), now: 0).reply != nil { answered += 1 }
        }
        #expect(answered <= 16)
        // Seeded mutations of requests and ACKs, to port 69 and the transfer ports.
        var g = SplitMix(state: 42)
        let seeds = [rrq("boot.bin", options: [("blksize", "1432"), ("tsize", "0")]), rrq("sub/k"), ack(0), ack(1), [0, 5, 0, 1, 0]]
        var now: UInt64 = 10_000_000_000
        for i in 0..<3000 {
            var p = seeds[i % seeds.count]
            for _ in 0..<Int.random(in: 1...4, using: &g) {
                switch Int.random(in: 0...3, using: &g) {
                case 0 where !p.isEmpty: p[Int.random(in: 0..<p.count, using: &g)] = UInt8.random(in: 0...255, using: &g)
                case 1 where !p.isEmpty: p.removeLast(Int.random(in: 0...p.count, using: &g))
                case 2: p += (0..<Int.random(in: 0...40, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }
                default: p.insert(0, at: Int.random(in: 0...p.count, using: &g))
                }
            }
            let port: UInt16 = i % 2 == 0 ? 69 : LocalTFTPServer.transferBase + UInt16.random(in: 0..<4, using: &g)
            now += 200_000_000
            let r = s.handle(frame: packet(to: port, p, from: UInt16.random(in: 2070...2073, using: &g)), now: now)
            if let f = r.reply { #expect(f.count <= 14 + 1500) }
            #expect(s.openTransfers <= LocalTFTPServer.maximumTransfers)
        }
    }

    @Test func dhcpNamesTheBootFileAndTheBackendServesIt() throws {
        defer { cleanup() }
        var l = lease
        l.netBoot = LocalNetBoot(bootFile: "boot.bin", directory: dir + "/root")
        let (_, offer) = try #require(parseReply(LocalDHCPServer(lease: l).answer(frame: clientFrame(clientMessage(.discover)))))
        #expect(offer.siaddr == link.host)
        #expect(Array(offer.file.prefix(9)) == Array("boot.bin".utf8) + [0])
        #expect(offer.option(DHCPMessage.Option.bootFileName) == Array("boot.bin".utf8))
        #expect(offer.option(DHCPMessage.Option.tftpServerName) == Array("100.64.1.2".utf8))
        // Without network boot, none of it.
        let (_, plain) = try #require(parseReply(LocalDHCPServer(lease: lease).answer(frame: clientFrame(clientMessage(.discover)))))
        #expect(plain.file.allSatisfy { $0 == 0 } && plain.option(DHCPMessage.Option.bootFileName) == nil)

        // Through the backend: the request never reaches the tap, the block comes back.
        let tap = MemoryNetworkBackend()
        let b = try LocalInterfaceBackend(inner: tap, lease: l)
        #expect(packet(to: 69, rrq("boot.bin")).withUnsafeBytes { b.send($0) })
        #expect(tap.sent.isEmpty)
        var buf = [UInt8](repeating: 0, count: 2048)
        let n = try #require(buf.withUnsafeMutableBytes { b.receive(into: $0) })
        let d = try #require(UDPDatagram(frame: Array(buf.prefix(n))))
        #expect(Array(d.payload.prefix(4)) == [0, 3, 0, 1] && Array(d.payload[4...]) == Array(content.prefix(512)))
        // A directory that does not exist: the backend cannot be made (one error).
        l.netBoot = LocalNetBoot(bootFile: "x", directory: dir + "/nosuch")
        #expect(throws: NetworkError.self) { try LocalInterfaceBackend(inner: tap, lease: l) }
    }
}
