#if canImport(Glibc)
import Glibc
#endif
import Devices
import HostNet
import Foundation
import Synchronization
import Testing
@testable import LocalNet

/// DHCP clients we did not write against our server: each runs in a network namespace of
/// the test's own on a tap whose other end (the descriptor) is served by
/// `LocalInterfaceBackend`, exactly as the VM's network path would serve it. Only that namespace sees the traffic.
@Suite(.serialized) struct RealClientTests {
    static let problem: String? = {
        if getuid() != 0 { return "needs root (network namespaces, taps)" }
        if let r = TapInterface.unavailableReason() { return r }
        if !FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") && !FileManager.default.isExecutableFile(atPath: "/sbin/ip") { return "no ip(8)" }
        return nil
    }()
    static let dhclient = ["/usr/sbin/dhclient", "/sbin/dhclient"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let busybox = ["/usr/bin/busybox", "/bin/busybox"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @discardableResult
    static func run(_ args: [String]) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        // A file, not a pipe: dhclient -1 leaves a daemon behind that keeps a pipe open.
        let out = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("svmm-run-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        FileManager.default.createFile(atPath: out.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: out) }
        let h = try FileHandle(forWritingTo: out)
        p.standardOutput = h; p.standardError = h
        try p.run()
        p.waitUntilExit()
        try? h.close()
        let data = (try? Data(contentsOf: out)) ?? Data()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// A namespace with a tap in it, served by a local interface's network path until `stop`.
    final class Bench: @unchecked Sendable {
        let ns: String
        let tap: String
        let fd: Int32
        let mac: MACAddress
        let dir: URL
        let running = Atomic<Bool>(true)
        /// Frames the backend gave the client (its services' answers, advertisements).
        let answers = Atomic<Int>(0)
        /// Router solicitations the client's kernel sent.
        let solicitations = Atomic<Int>(0)
        /// Where frames that pass the services go (the host side of a VM's tap).
        let hostSide = MemoryNetworkBackend()
        var backend: LocalInterfaceBackend!
        var thread: Thread?

        /// - solicit: false sets the namespace kernel's router_solicitations to 0 (it then
        ///   learns the router only from unsolicited advertisements).
        init(tag: String, inet6: LocalInet6? = nil, advertisements: RouterAdvertisementIntervals = .rfc4861,
             solicit: Bool = true) throws {
            ns = "svmm-dhcp-\(tag)-\(getpid())"
            let t = try TapInterface.open(name: "svd\(tag.prefix(4))%d")
            fd = t.fd; tap = t.name
            dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent(ns)
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let addr = try String(contentsOfFile: "/sys/class/net/\(tap)/address", encoding: .utf8)
            mac = addr.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ":").compactMap { UInt8($0, radix: 16) }
            try run(["ip", "netns", "add", ns])
            try run(["ip", "link", "set", tap, "netns", ns])
            // No duplicate address detection: the link-local address is usable at once
            // (dhclient -6 waits for a non-tentative one).
            try run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.\(tap).accept_dad=0"])
            if !solicit { try run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.\(tap).router_solicitations=0"]) }
            var lease = LocalLease(link: link, guestMAC: mac, serverMAC: serverMAC, hostName: "vm-\(tag)", leaseSeconds: 600)
            lease.inet6 = inet6
            backend = try LocalInterfaceBackend(inner: hostSide, lease: lease, advertisements: advertisements)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            let th = Thread { [self] in serve() }
            thread = th
            th.start()
            try run(["ip", "-n", ns, "link", "set", tap, "up"])
            try run(["ip", "-n", ns, "link", "set", "lo", "up"])
        }

        /// The VM's side of the path, as the VMM drives `LocalInterfaceBackend`: every frame
        /// the client sends goes to `send` (what passes lands in `hostSide`), the backend's
        /// frames are written back, and its timers run (the network thread's loop).
        private func serve() {
            var buf = [UInt8](repeating: 0, count: 65536)
            let wake = backend.wakeDescriptor!
            while running.load(ordering: .relaxed) {
                let now = ContinuousClock.now
                var timeout: Int32 = 50
                if let due = backend.serviceTimers(now: now) {
                    let c = (due - now).components
                    timeout = min(timeout, Int32(clamping: c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000 + 1))
                }
                var p = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
                guard poll(&p, 2, timeout) > 0 else { continue }
                if p[0].revents != 0 {
                    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if n > 0 {
                        // ICMPv6 type 133 right after a plain IPv6 header: a solicitation.
                        if n > 54, buf[12] == 0x86, buf[13] == 0xDD, buf[20] == 58, buf[54] == 133 { solicitations.add(1, ordering: .relaxed) }
                        _ = buf.withUnsafeBytes { backend.send(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                    }
                }
                while let n = buf.withUnsafeMutableBytes({ backend.receive(into: $0) }) {
                    answers.add(1, ordering: .relaxed)
                    _ = buf.withUnsafeBytes { write(fd, $0.baseAddress, n) }
                }
            }
        }

        func addresses(_ family: String = "-4") throws -> String { try run(["ip", "-n", ns, family, "addr", "show", "dev", tap]).output }
        func routes(_ family: String = "-4") throws -> String { try run(["ip", "-n", ns, family, "route", "show"]).output }

        func stop() {
            running.store(false, ordering: .relaxed)
            while thread?.isFinished == false { usleep(10_000) }
            // Processes the test started in its namespace (the clients) end with it.
            if let pids = try? run(["ip", "netns", "pids", ns]).output {
                for pid in pids.split(separator: "\n").compactMap({ pid_t($0) }) { kill(pid, SIGKILL) }
            }
            _ = try? run(["ip", "netns", "del", ns])
            close(fd)
            try? FileManager.default.removeItem(at: dir)
        }
    }

    @Test(.enabled(if: problem == nil && dhclient != nil, "needs root, taps and isc-dhcp-client"))
    func iscDhclientGetsTheLease() throws {
        let b = try Bench(tag: "isc")
        defer { b.stop() }
        let lf = b.dir.appendingPathComponent("lease").path, pf = b.dir.appendingPathComponent("pid").path
        // -1: try once and exit non-zero when no lease comes within the config's timeout.
        // dhclient-script configures the address in the namespace.
        let cf = b.dir.appendingPathComponent("dhclient.conf").path
        try "timeout 20;\nrequest subnet-mask, routers, domain-name-servers, host-name;\n".write(toFile: cf, atomically: true, encoding: .utf8)
        // In the foreground (-d): a backgrounded dhclient keeps Foundation's Process waiting.
        // Done when the lease file has the lease and the address is configured.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["ip", "netns", "exec", b.ns, Self.dhclient!, "-d", "-1", "-v", "-cf", cf, "-lf", lf, "-pf", pf, b.tap]
        p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
        try p.run()
        defer { p.terminate(); p.waitUntilExit() }
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline, !((try? b.addresses()) ?? "").contains("100.64.1.3/31") { usleep(50_000) }
        let addr = try b.addresses()
        #expect(addr.contains("inet 100.64.1.3/31"), "\(addr)")
        let routes = try b.routes()
        #expect(routes.contains("default via 100.64.1.2"), "\(routes)")
        let leaseFile = (try? String(contentsOfFile: lf, encoding: .utf8)) ?? ""
        #expect(leaseFile.contains("fixed-address 100.64.1.3;"), "\(leaseFile)")
        #expect(leaseFile.contains("option domain-name-servers 100.64.1.2;"))
        #expect(leaseFile.contains("option host-name \"vm-isc\";"))
        #expect(leaseFile.contains("option dhcp-server-identifier 100.64.1.2;"))
        #expect(b.answers.load(ordering: .relaxed) >= 2)   // OFFER and ACK
    }

    @Test(.enabled(if: problem == nil && busybox != nil, "needs root, taps and busybox"))
    func busyboxUdhcpcGetsTheLease() throws {
        let b = try Bench(tag: "bbx")
        defer { b.stop() }
        // udhcpc runs its script with the lease in the environment; ours records it.
        let script = b.dir.appendingPathComponent("script").path
        let env = b.dir.appendingPathComponent("env").path
        try "#!/bin/sh\n[ \"$1\" = bound ] && env > \(env)\nexit 0\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let r = try Self.run(["ip", "netns", "exec", b.ns, Self.busybox!, "udhcpc", "-i", b.tap, "-n", "-q", "-f", "-t", "5", "-T", "2", "-s", script])
        #expect(r.status == 0, "\(r.output)")
        let got = (try? String(contentsOfFile: env, encoding: .utf8)) ?? ""
        for line in ["ip=100.64.1.3", "subnet=255.255.255.254", "router=100.64.1.2", "dns=100.64.1.2",
                     "serverid=100.64.1.2", "lease=600", "hostname=vm-bbx"] {
            #expect(got.split(separator: "\n").contains(Substring(line)), "\(line) in \(got)")
        }
    }

    /// ISC dhclient in stateless mode (-6 -S: Information-Request, RFC 8415 18.2.6) against
    /// LocalIPv6Server; its script records the Reply's DNS servers. The namespace's kernel
    /// meanwhile solicits and takes our RA (SLAAC address, default route via the router).
    @Test(.enabled(if: problem == nil && dhclient != nil, "needs root, taps and isc-dhcp-client"))
    func iscDhclientStatelessDHCPv6GetsTheDNSServer() throws {
        let inet6 = try #require(LocalInet6(prefix: LocalInet6.address("fd5e:1:2:100::")!))
        let b = try Bench(tag: "v6", inet6: inet6)
        defer { b.stop() }
        let script = b.dir.appendingPathComponent("script").path
        let env = b.dir.appendingPathComponent("env").path
        // Only the reply's data is recorded; nothing of the host (resolv.conf) is touched.
        // dhclient 4.4 names a stateless reply RENEW6 (INFORM6 in other versions).
        try "#!/bin/sh\ncase \"$reason\" in INFORM6|RENEW6) env > \(env).tmp && mv \(env).tmp \(env);; esac\nexit 0\n"
            .write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let lf = b.dir.appendingPathComponent("lease6").path, pf = b.dir.appendingPathComponent("pid6").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["ip", "netns", "exec", b.ns, Self.dhclient!, "-6", "-S", "-d", "-v", "-sf", script, "-lf", lf, "-pf", pf, b.tap]
        p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
        try p.run()
        defer { p.terminate(); p.waitUntilExit() }
        // Waits for the script's record (dhclient retransmits on its own if a reply is lost).
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, !FileManager.default.fileExists(atPath: env) { usleep(50_000) }
        let got = ((try? String(contentsOfFile: env, encoding: .utf8)) ?? "").split(separator: "\n")
        #expect(got.contains("new_dhcp6_name_servers=fd5e:1:2:100::1"), "\(got)")
        #expect(got.contains(where: { $0.hasPrefix("new_dhcp6_server_id=") && $0.lowercased().contains("0:3:0:1:fe:e1:ba:d1:12:34") }), "\(got)")
        #expect(b.answers.load(ordering: .relaxed) >= 1)
        // The kernel's SLAAC from our RA (sent on its solicitation at link-up).
        try expectSLAAC(b)
    }

    /// Waits (20 s at most) for the namespace kernel's global fd5e:1:2:100::/64 address from
    /// our RA, then checks it and the default route via the router's link-local address.
    func expectSLAAC(_ b: Bench, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline, !((try? b.addresses("-6")) ?? "").contains("inet6 fd5e:1:2:100:") { usleep(50_000) }
        let addr = try b.addresses("-6")
        #expect(addr.contains("inet6 fd5e:1:2:100:") && addr.contains("scope global"), "\(addr)", sourceLocation: sourceLocation)
        let routes = try b.routes("-6")
        #expect(routes.contains("default via fe80::fce1:baff:fed1:1234"), "\(routes)", sourceLocation: sourceLocation)
    }

    /// Unsolicited advertisements alone (RFC 4861 6.2.4): the namespace's kernel never
    /// solicits (router_solicitations = 0) and still gets its SLAAC address and default
    /// route, from the periodic ones (intervals shortened for the test).
    @Test(.enabled(if: problem == nil, "needs root and taps"))
    func theKernelTakesUnsolicitedAdvertisements() throws {
        let inet6 = try #require(LocalInet6(prefix: LocalInet6.address("fd5e:1:2:100::")!))
        let fast = try #require(RouterAdvertisementIntervals(minimum: .milliseconds(200), maximum: .milliseconds(400),
                                                             initialMaximum: .milliseconds(100), initialCount: 3))
        let b = try Bench(tag: "ra", inet6: inet6, advertisements: fast, solicit: false)
        defer { b.stop() }
        try expectSLAAC(b)
        #expect(b.solicitations.load(ordering: .relaxed) == 0, "the kernel sent no solicitation")
        #expect(b.backend.unsolicitedAdvertisements >= 1)
    }
}
