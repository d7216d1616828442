import Devices
import HostNet
import Foundation
import Testing
import VMM

/// guests/net-test.c through `vmm --net tap:NAME`, on KVM and on the software CPU: the
/// guest's virtio-net driver sends a broadcast frame (ethertype 0x88b5, "SWIFTVMM-NET-PING n")
/// out of a real tap; this test, on an AF_PACKET socket bound to that tap, answers with a
/// frame to the guest's MAC ("SWIFTVMM-NET-PONG ..."), which the guest must receive.
@Suite(.serialized) struct NetworkGuestTests {
    static let kernelPath = Harness.guestDir.appendingPathComponent("net-test.elf").path
    static let etherType: UInt16 = 0x88B5

    /// nil when taps can be created here; else why not.
    static let tapProblem: String? = TapInterface.unavailableReason()

    /// Answers the guest's pings on `interface` until `deadline`; returns what it saw.
    final class Responder: @unchecked Sendable {
        let interface: String
        let reply: String
        private let lock = NSLock()
        private var _pings: [String] = []
        private var _guestMAC: [UInt8]?
        private var _error: String?
        private var stopFlag = false
        var pings: [String] { lock.lock(); defer { lock.unlock() }; return _pings }
        var guestMAC: [UInt8]? { lock.lock(); defer { lock.unlock() }; return _guestMAC }
        var error: String? { lock.lock(); defer { lock.unlock() }; return _error }
        func stop() { lock.lock(); stopFlag = true; lock.unlock() }
        private var stopped: Bool { lock.lock(); defer { lock.unlock() }; return stopFlag }

        init(interface: String, reply: String) { self.interface = interface; self.reply = reply }

        func run(until deadline: Date) {
            // The tap appears once vmm has started.
            var index: Int32?
            while index == nil, Date() < deadline, !stopped {
                index = HostInterfaces.index(of: interface)
                if index == nil { usleep(10_000) }
            }
            guard let ifindex = index else { fail("interface \(interface) never appeared"); return }
            let proto = UInt16(NetworkGuestTests.etherType).bigEndian
            let s = socket(AF_PACKET, Int32(SOCK_RAW.rawValue), Int32(proto))
            guard s >= 0 else { fail("AF_PACKET socket: \(String(cString: strerror(errno)))"); return }
            defer { close(s) }
            // struct sockaddr_ll: family, protocol (network order), ifindex, hatype, pkttype, halen, addr[8].
            var sll = [UInt8](repeating: 0, count: 20)
            sll[0] = UInt8(AF_PACKET & 0xFF); sll[1] = UInt8(AF_PACKET >> 8)
            withUnsafeBytes(of: proto) { sll[2] = $0[0]; sll[3] = $0[1] }
            withUnsafeBytes(of: ifindex.littleEndian) { for i in 0..<4 { sll[4 + i] = $0[i] } }
            let rc = sll.withUnsafeBytes { bind(s, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 20) }
            guard rc == 0 else { fail("bind to \(interface): \(String(cString: strerror(errno)))"); return }
            var buf = [UInt8](repeating: 0, count: 2048)
            while Date() < deadline, !stopped {
                var pfd = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 50) > 0 else { continue }
                let n = buf.withUnsafeMutableBytes { recv(s, $0.baseAddress, $0.count, 0) }
                guard n >= 14 else { continue }
                let payload = String(decoding: buf[14..<n].prefix { $0 != 0 }, as: UTF8.self)
                guard payload.hasPrefix("SWIFTVMM-NET-PING") else { continue }
                let src = Array(buf[6..<12])
                lock.lock(); _pings.append(payload); _guestMAC = src; lock.unlock()
                // Unicast to the guest, from a made-up host MAC, same ethertype.
                var frame = src + [0x02, 0, 0, 0, 0, 0x01] + [0x88, 0xB5] + Array(reply.utf8)
                while frame.count < 60 { frame.append(0) }
                _ = frame.withUnsafeBytes { send(s, $0.baseAddress, $0.count, 0) }
            }
        }

        private func fail(_ m: String) { lock.lock(); _error = m; lock.unlock() }
    }

    func runGuest(accel: String, timeout: Double) throws {
        let kernel = try Harness.buildGuest(script: "build-virtio-test.sh", arguments: [Self.kernelPath, "net-test.c"])
        let name = "swvt\(accel.prefix(1))\(getpid() % 100_000)"
        let reply = "SWIFTVMM-NET-PONG from-the-host-\(accel)"
        let responder = Responder(interface: name, reply: reply)
        let deadline = Date().addingTimeInterval(timeout)
        let thread = Thread { responder.run(until: deadline) }
        thread.start()
        let r = try Harness.vmm(["-k", kernel, "-m", "64M", "--accel", accel,
                                 "--net", "tap:\(name),mac=fe:e1:ba:d0:00:2a"], timeout: timeout)
        responder.stop()
        let log = r.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(!r.timedOut, "\(log)")
        #expect(responder.error == nil, "\(responder.error ?? "")")
        #expect(r.status == 1, "stdout:\n\(log)\nstderr:\n\(r.stderr)")
        #expect(log.contains("mac fe:e1:ba:d0:00:2a link up"))
        #expect(log.contains("tx-done"))
        #expect(log.contains("rx to our mac"))
        #expect(log.contains("net-test: rx '\(reply)'"))
        #expect(log.contains("net-test: PASS"))
        #expect(responder.pings.first?.hasPrefix("SWIFTVMM-NET-PING 0") == true, "\(responder.pings)")
        #expect(responder.guestMAC == [0xFE, 0xE1, 0xBA, 0xD0, 0x00, 0x2A])
        #expect(r.stderr.contains("virtio-net0: fe:e1:ba:d0:00:2a on tap \(name)"), "\(r.stderr)")
        // The tap went away with the VM.
        #expect(HostInterfaces.index(of: name) == nil)
    }

    static let canMakeTaps = tapProblem == nil

    @Test(.enabled(if: canMakeTaps && Harness.kvmUsable, "needs a usable /dev/kvm and permission to create taps"))
    func guestExchangesFramesThroughATapOnKVM() throws {
        try runGuest(accel: "kvm", timeout: 60)
    }

    @Test(.enabled(if: canMakeTaps, "needs permission to create taps"))
    func guestExchangesFramesThroughATapOnTheEmulator() throws {
        try runGuest(accel: "emulator", timeout: 90)
    }

    @Test func badNetOptionsAreOneLineErrors() throws {
        let kernel = try Harness.testGuest("longmode")
        for (spec, expected) in [("bridge0", "expected tap, tap:NAME or fd:N"),
                                 ("tap:a/b", "is not an interface name"),
                                 ("tap,mac=01:00:00:00:00:01", "multicast"),
                                 ("tap,speed=10", "unknown option")] {
            let r = try Harness.vmm(["-k", kernel, "--net", spec], timeout: 10)
            #expect(r.status == 2, "\(spec): \(r.stderr)")
            #expect(r.stderr.contains(expected), "\(spec): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "\(spec): \(r.stderr)")
        }
    }
}

/// Tap and bridge plumbing on the host (what vmd does for `switch`), when taps can be made.
@Suite(.serialized) struct HostNetworkTests {
    @Test(.enabled(if: NetworkGuestTests.canMakeTaps, "needs permission to create taps"))
    func tapJoinsABridgeAndGoesAway() throws {
        let bridge = "swvb\(getpid() % 100_000)"
        try HostInterfaces.createBridge(bridge)
        defer { try? HostInterfaces.setUp(bridge, false); try? HostInterfaces.deleteBridge(bridge) }
        #expect(HostInterfaces.exists(bridge))
        try HostInterfaces.createBridge(bridge)   // idempotent
        let tap = try TapInterface.open()
        #expect(tap.name.hasPrefix("tap"))
        try HostInterfaces.setUp(tap.name, true)
        #expect(HostInterfaces.isUp(tap.name))
        try HostInterfaces.addToBridge(tap.name, bridge: bridge)
        #expect(HostInterfaces.bridge(of: tap.name) == bridge)
        let index = HostInterfaces.index(of: tap.name)
        #expect(index != nil)
        close(tap.fd)
        // Compared by index: on a shared host another process may take the free name at once.
        #expect(HostInterfaces.index(of: tap.name) != index, "a non-persistent tap vanishes with its descriptor")
        #expect(throws: HostNetError.self) { try HostInterfaces.addToBridge("nonexistent0", bridge: bridge) }
    }
}
