#if canImport(Glibc)
import Glibc
#endif
import Devices
import Foundation
import GuestMemory
import HostNet
import Testing

/// virtio-net over a real tap opened with IFF_VNET_HDR: this test plays the guest's driver
/// and TCP (frames built by hand), the host's own TCP stack is the peer. A checksum-offloaded
/// TSO frame of 64000 bytes must reach a host socket intact, and the host kernel must see it
/// as one GSO packet (an AF_PACKET socket with PACKET_VNET_HDR on the tap reads its header);
/// the host's answer comes back as TSO frames only when the guest took GUEST_TSO4.
@Suite(.serialized) struct VirtioNetTapOffloadTests {
    static let problem: String? = {
        if getuid() != 0 { return "needs root (taps, addresses)" }
        if let r = TapInterface.unavailableReason() { return r }
        if !FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") && !FileManager.default.isExecutableFile(atPath: "/sbin/ip") { return "no ip(8)" }
        return nil
    }()

    static func sh(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
        try p.run(); p.waitUntilExit()
    }

    /// The guest's side: a virtio-net rig on the tap and enough receive buffers.
    final class Guest {
        let rig: NetRig
        let tap: (fd: Int32, name: String)
        var posted: [UInt16: UInt64] = [:]
        static let bufferSize = 65_562

        init(wanted: UInt64) throws {
            tap = try TapInterface.open(name: "svo%d", virtioHeader: true)
            let backend = FileDescriptorNetworkBackend(fd: tap.fd, name: "tap \(tap.name)", virtioHeader: true) { fd, o in
                TapInterface.setOffloads(fd, TapInterface.Offloads(rawValue: o.rawValue))
            }
            rig = try NetRig(backend: backend, wanted: wanted, memorySize: 16 << 20)
            for _ in 0..<16 { try post() }
        }

        func post() throws {
            let a = rig.driver.alloc(Self.bufferSize)
            let head = try rig.driver.post(rig.rx, [.init(address: a, length: UInt32(Self.bufferSize), writable: true)])
            posted[head] = a
            rig.driver.notify(rig.rx)
        }

        /// Frames the device placed in the guest's buffers (header + frame), waiting for the
        /// tap (poll) up to `timeout` for the first; each buffer is posted again.
        func receive(timeout: Int32 = 200) throws -> [[UInt8]] {
            var p = pollfd(fd: tap.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, timeout)
            rig.net.pollBackend()
            var out: [[UInt8]] = []
            for u in try rig.driver.takeUsed(rig.rx) {
                guard let a = posted.removeValue(forKey: UInt16(u.id)) else { continue }
                out.append(try rig.memory.readBytes(at: a, count: Int(u.length)))
                let head = try rig.driver.post(rig.rx, [.init(address: a, length: UInt32(Self.bufferSize), writable: true)])
                posted[head] = a
            }
            rig.driver.notify(rig.rx)
            return out
        }
    }

    // MARK: frames

    static func fold(_ sum: UInt32) -> UInt16 {
        var s = sum
        while s >> 16 != 0 { s = (s & 0xFFFF) + (s >> 16) }
        return UInt16(s)
    }

    static func sum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var s: UInt32 = 0
        var i = bytes.startIndex
        while i + 1 < bytes.endIndex { s += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1]); i += 2 }
        if i < bytes.endIndex { s += UInt32(bytes[i]) << 8 }
        return s
    }

    /// Ethernet + IPv4 + TCP from the guest. `partial`: the TCP checksum field holds only the
    /// pseudo-header sum, as a driver using VIRTIO_NET_F_CSUM leaves it.
    static func tcp(from src: [UInt8], to dst: [UInt8], hostMAC: [UInt8], ports: (UInt16, UInt16), seq: UInt32, ack: UInt32,
                    flags: UInt8, options: [UInt8] = [], payload: [UInt8] = [], partial: Bool = false) -> [UInt8] {
        func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(truncatingIfNeeded: v)] }
        func be32(_ v: UInt32) -> [UInt8] { be16(UInt16(v >> 16)) + be16(UInt16(truncatingIfNeeded: v)) }
        var t = be16(ports.0) + be16(ports.1) + be32(seq) + be32(ack)
        t += [UInt8((20 + options.count) / 4) << 4, flags] + be16(65_535) + [0, 0, 0, 0] + options
        let tcpLength = t.count + payload.count
        let pseudo = sum(ArraySlice(src + dst)) + 6 + UInt32(tcpLength)
        let check = partial ? fold(pseudo) : ~fold(pseudo + sum(ArraySlice(t)) + sum(ArraySlice(payload)))
        t[16] = UInt8(check >> 8); t[17] = UInt8(truncatingIfNeeded: check)
        var ip: [UInt8] = [0x45, 0] + be16(UInt16(20 + tcpLength)) + [0x12, 0x34, 0x40, 0, 64, 6, 0, 0] + src + dst
        let ipCheck = ~fold(sum(ArraySlice(ip)))
        ip[10] = UInt8(ipCheck >> 8); ip[11] = UInt8(truncatingIfNeeded: ipCheck)
        return hostMAC + NetRig.mac + [0x08, 0x00] + ip + t + payload
    }

    static func pattern(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) } }

    @Test(.enabled(if: problem == nil, "needs root, taps and ip(8)"), arguments: [true, false])
    func tsoFramesArriveWholeOnTheHostAndComeBackAsTheGuestAsked(guestTSO: Bool) throws {
        typealias F = VirtioNet.Feature
        let wanted: UInt64 = guestTSO ? .max : .max & ~(F.guestChecksum | F.guestTSO4 | F.guestTSO6)
        let g = try Guest(wanted: wanted)   // the tap goes with it (the backend owns the descriptor)
        #expect(g.rig.net.negotiated & (F.checksum | F.hostTSO4) == F.checksum | F.hostTSO4)
        let net = UInt8(20 + getpid() % 100 + (guestTSO ? 100 : 0))
        let host: [UInt8] = [10, 222, net, 0], guest: [UInt8] = [10, 222, net, 1]
        let hostMAC = try #require(HostInterfaces.mac(of: g.tap.name))
        try? "1".write(toFile: "/proc/sys/net/ipv6/conf/\(g.tap.name)/disable_ipv6", atomically: false, encoding: .utf8)
        try HostInterfaces.addAddress(g.tap.name, host, prefixLength: 31)
        try HostInterfaces.setUp(g.tap.name, true)
        try Self.sh(["ip", "neigh", "replace", guest.map(String.init).joined(separator: "."), "lladdr",
                     NetRig.mac.map { String(format: "%02x", $0) }.joined(separator: ":"), "dev", g.tap.name, "nud", "permanent"])

        // The host's listener, and an AF_PACKET socket that sees what the tap hands the host.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = UInt32(host[0]) | UInt32(host[1]) << 8 | UInt32(host[2]) << 16 | UInt32(host[3]) << 24
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        // SAFETY: sockaddr_in is bound, then read back, with its own size.
        try #require(withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, len) } } == 0)
        try #require(listen(listener, 1) == 0)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) } }
        let port = UInt16(bigEndian: addr.sin_port)
        let capture = try Self.packetSocket(ifindex: try #require(HostInterfaces.index(of: g.tap.name)))
        defer { close(capture) }

        // Handshake: SYN (MSS 1460), the host's SYN-ACK, then ACK with 64000 bytes in one TSO frame.
        let ports: (UInt16, UInt16) = (40_000, port)
        try g.rig.transmit(Self.tcp(from: guest, to: host, hostMAC: hostMAC, ports: ports, seq: 1000, ack: 0, flags: 0x02,
                                    options: [2, 4, 0x05, 0xB4]))
        var hostSeq: UInt32?
        let deadline = Date().addingTimeInterval(10)
        while hostSeq == nil, Date() < deadline {
            for f in try g.receive() where f.count >= 12 + 54 && f[12 + 23] == 6 && f[12 + 47] & 0x12 == 0x12 {
                hostSeq = f[(12 + 38)..<(12 + 42)].reduce(0) { $0 << 8 | UInt32($1) }
            }
        }
        let seq = try #require(hostSeq, "the host's SYN-ACK")
        let data = Self.pattern(64_000)
        var tso = VirtioNetHeader()
        tso.flags = VirtioNetHeader.Flag.needsChecksum; tso.gsoType = VirtioNetHeader.GSO.tcpv4
        tso.headerLength = 54; tso.gsoSize = 1448; tso.checksumStart = 34; tso.checksumOffset = 16
        try g.rig.transmit(Self.tcp(from: guest, to: host, hostMAC: hostMAC, ports: ports, seq: 1001, ack: seq &+ 1,
                                    flags: 0x18, payload: data, partial: true), header: tso.bytes, split: 20_000)
        #expect(g.rig.net.transmitDropped == 0)

        // The host's socket reads the 64000 bytes, in order.
        var pfd = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        try #require(poll(&pfd, 1, 10_000) == 1, "the host accepted")
        let conn = accept(listener, nil, nil)
        defer { close(conn) }
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65_536)
        while got.count < data.count, Date() < deadline {
            var p = pollfd(fd: conn, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 200) == 1 else { continue }
            let n = buf.withUnsafeMutableBytes { recv(conn, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            got += buf[0..<n]
        }
        #expect(got.count == data.count && got == data)
        // What the tap gave the host: one GSO packet (TCPv4, segments of 1448, partial checksum).
        var seen: [UInt8]?
        while seen == nil, Date() < deadline {
            var p = pollfd(fd: capture, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 200) == 1 else { continue }
            let n = buf.withUnsafeMutableBytes { recv(capture, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 10 + 1514 { seen = Array(buf[0..<n]) }
        }
        let packet = try #require(seen, "the 64000 bytes as one packet")
        #expect(packet.count == 10 + 54 + data.count)
        #expect(packet[0] & VirtioNetHeader.Flag.needsChecksum != 0 && packet[1] == VirtioNetHeader.GSO.tcpv4)
        #expect(UInt16(packet[4]) | UInt16(packet[5]) << 8 == 1448, "gso_size")

        // The host answers with 30000 bytes: TSO frames to a guest that took GUEST_TSO4, whole
        // MTU-sized ones with finished checksums otherwise.
        let answer = Self.pattern(30_000)
        _ = answer.withUnsafeBytes { send(conn, $0.baseAddress, $0.count, 0) }
        var frames: [[UInt8]] = []
        var payload = 0
        while payload < 14_000, Date() < deadline {
            for f in try g.receive() where f.count > 12 + 54 && f[12 + 23] == 6 {
                frames.append(f); payload += f.count - 12 - 54
            }
        }
        #expect(payload >= 14_000, "the host's first flight")
        let headers = frames.map { VirtioNetHeader(Array($0.prefix(12))) }
        #expect(headers.allSatisfy { $0.numBuffers == 1 })
        if guestTSO {
            #expect(headers.contains { $0.gsoType == VirtioNetHeader.GSO.tcpv4 && $0.gsoSize > 0 }, "\(headers)")
            #expect(frames.contains { $0.count > 12 + 1514 })
        } else {
            #expect(headers.allSatisfy { $0.gsoType == 0 && $0.flags & VirtioNetHeader.Flag.needsChecksum == 0 }, "\(headers)")
            #expect(frames.allSatisfy { $0.count <= 12 + 1514 })
            // Checksums finished by the host: the TCP checksum of the first segment verifies.
            if let f = frames.first {
                let ip = Array(f[(12 + 14)...]), tcpLength = Int(UInt16(ip[2]) << 8 | UInt16(ip[3])) - 20
                let pseudo = Self.sum(ip[12..<20]) + 6 + UInt32(tcpLength)
                #expect(~Self.fold(pseudo + Self.sum(ip[20..<(20 + tcpLength)])) == 0)
            }
        }
        #expect(frames.first.map { Array($0[(12 + 54)...].prefix(1000)) } == Array(answer.prefix(1000)))
    }

    /// AF_PACKET, ETH_P_IP, bound to the interface, with PACKET_VNET_HDR: each read starts with
    /// the 10-byte virtio_net_hdr of the packet as the kernel holds it.
    static func packetSocket(ifindex: Int32) throws -> Int32 {
        let proto = UInt16(0x0800).bigEndian
        let s = socket(AF_PACKET, Int32(SOCK_RAW.rawValue), Int32(proto))
        try #require(s >= 0)
        var one: Int32 = 1
        try #require(setsockopt(s, 263 /* SOL_PACKET */, 15 /* PACKET_VNET_HDR */, &one, 4) == 0)
        var sll = [UInt8](repeating: 0, count: 20)
        sll[0] = UInt8(AF_PACKET & 0xFF); sll[1] = UInt8(AF_PACKET >> 8)
        withUnsafeBytes(of: proto) { sll[2] = $0[0]; sll[3] = $0[1] }
        withUnsafeBytes(of: ifindex.littleEndian) { for i in 0..<4 { sll[4 + i] = $0[i] } }
        // SAFETY: a 20-byte struct sockaddr_ll.
        try #require(sll.withUnsafeBytes { bind(s, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 20) } == 0)
        return s
    }
}
