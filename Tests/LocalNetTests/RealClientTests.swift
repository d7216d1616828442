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
/// the test's own on a tap whose other end (the descriptor) is served by `LocalDHCPServer`,
/// exactly as the VM's transmit path would serve it. Only that namespace sees the traffic.
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

    /// A namespace with a tap in it, served by our DHCP server until `stop`.
    final class Bench: @unchecked Sendable {
        let ns: String
        let tap: String
        let fd: Int32
        let mac: MACAddress
        let dir: URL
        let running = Atomic<Bool>(true)
        let answers = Atomic<Int>(0)
        let passed = Atomic<Int>(0)
        var thread: Thread?

        init(tag: String) throws {
            ns = "svmm-dhcp-\(tag)-\(getpid())"
            let t = try TapInterface.open(name: "svd\(tag.prefix(4))%d")
            fd = t.fd; tap = t.name
            dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent(ns)
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let addr = try String(contentsOfFile: "/sys/class/net/\(tap)/address", encoding: .utf8)
            mac = addr.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ":").compactMap { UInt8($0, radix: 16) }
            try run(["ip", "netns", "add", ns])
            try run(["ip", "link", "set", tap, "netns", ns])
            try run(["ip", "-n", ns, "link", "set", tap, "up"])
            try run(["ip", "-n", ns, "link", "set", "lo", "up"])
            let lease = LocalLease(link: link, guestMAC: mac, serverMAC: serverMAC, hostName: "vm-\(tag)", leaseSeconds: 600)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            let th = Thread { [self] in serve(lease) }
            thread = th
            th.start()
        }

        /// The VM's side of the path: every frame the client sends goes through the server
        /// (as `LocalInterfaceBackend.send` does), answers are written back.
        private func serve(_ lease: LocalLease) {
            var server = LocalDHCPServer(lease: lease)
            var buf = [UInt8](repeating: 0, count: 65536)
            while running.load(ordering: .relaxed) {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 50) > 0 else { continue }
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                guard n > 0 else { continue }
                let now = UInt64(DispatchTime.now().uptimeNanoseconds)
                switch buf.withUnsafeBytes({ server.handle(frame: UnsafeRawBufferPointer(rebasing: $0[0..<n]), now: now) }) {
                case .pass: passed.add(1, ordering: .relaxed)
                case .consumed(nil): break
                case let .consumed(reply?):
                    answers.add(1, ordering: .relaxed)
                    _ = reply.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                }
            }
        }

        func addresses() throws -> String { try run(["ip", "-n", ns, "-4", "addr", "show", "dev", tap]).output }
        func routes() throws -> String { try run(["ip", "-n", ns, "-4", "route", "show"]).output }

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
}
