#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// Issue 13's proof with real software: Debian's kernel on the software CPU, started by vmd
/// with a `local interface`, runs the `net` initramfs variant (guests/debian/build.sh
/// --variant net): busybox udhcpc gets its lease from the DHCP server in the VM's network
/// path, the guest pings its router (the host side of the tap) and exchanges a line with a
/// TCP service of this test on the host, and (`local inet6`) SLAAC from the router
/// advertisement of the VM's network path gives it a global address and a default route.
/// Needs root (taps) and the built guest files.
@Suite(.serialized) struct LocalGuestTests {
    /// Where guests/debian/build.sh puts the guest files: SWIFTVMM_GUEST_CACHE, else the
    /// package's .build/guests/debian (found from this file, not from the binaries, whose
    /// directory is .build/<triple>/debug).
    static let cache = ProcessInfo.processInfo.environment["SWIFTVMM_GUEST_CACHE"]
        ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent(".build/guests/debian").path
    static let kernel = "\(cache)/amd64/vmlinux"
    static let initrd = "\(cache)/amd64/initramfs-net.cpio.gz"

    static let problem: String? = {
        if ProcessInfo.processInfo.environment["SWIFTVMM_SKIP_LINUX_BOOT"] != nil { return "SWIFTVMM_SKIP_LINUX_BOOT is set" }
        if let p = NetworkTests.tapProblem() { return p }
        for f in [kernel, initrd] where access(f, R_OK) != 0 {
            return "\(f) is missing (guests/debian/build.sh --variant net)"
        }
        return nil
    }()

    /// A TCP service on every host address: answers one connection's line with `reply`.
    final class LineServer: @unchecked Sendable {
        let fd: Int32
        let port: UInt16
        private(set) var received = ""
        private var thread: Thread?

        init() throws {
            let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            fd = s
            var one: Int32 = 1
            setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, 4)
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            // SAFETY: bind/getsockname read/write one sockaddr_in.
            let ok = withUnsafeMutablePointer(to: &sa) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(s, $0, len) == 0 && listen(s, 4) == 0 && getsockname(s, $0, &len) == 0
                }
            }
            guard ok else { throw POSIXError(.EADDRINUSE) }
            port = UInt16(bigEndian: sa.sin_port)
        }

        /// Serves one connection on a thread of its own.
        func start(reply: String) {
            thread = Thread { [self] in
                let c = accept(fd, nil, nil)
                guard c >= 0 else { return }
                var buf = [UInt8](repeating: 0, count: 256)
                let n = read(c, &buf, buf.count)
                if n > 0 { self.received = String(decoding: buf[0..<n], as: UTF8.self) }
                let r = Array((reply + "\n").utf8)
                _ = write(c, r, r.count)
                close(c)
            }
            thread?.start()
        }

        func stop() { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
    }

    @Test(.enabled(if: LocalGuestTests.problem == nil, "needs root, taps and the guest files (guests/debian/build.sh --variant net)"),
          .timeLimit(.minutes(30)))
    func debianGuestGetsItsLeasePingsTheRouterAndReachesTheHost() throws {
        try #require(Binaries.available)
        let token = "HOST-SAYS-\(getpid())"
        let server = try LineServer()
        server.start(reply: token)
        defer { server.stop() }
        let d = try TestDaemon(config: """
            local prefix "10.215.0.0/16"
            local inet6 prefix "fd5e:1:2::/48"
            vm "lg" {
              disable
              boot "\(Self.kernel)"
              initrd "\(Self.initrd)"
              cmdline "console=ttyS0 swiftvmm.tcp=\(server.port) swiftvmm.inet6"
              memory 256M
              accel emulator
              local interface
            }
            """, fake: false)
        defer { d.stop() }
        let start = try d.vmctl("start", "lg")
        #expect(start.status == 0, "\(start.stderr)")
        let id = try #require(row(try d.vmctl("status").stdout, "lg")?.first.flatMap { Int($0) })
        let console = try ConsoleClient(socket: d.socket, name: "lg")
        defer { _ = console.detach() }
        let done = console.waitFor("SWIFTVMM-INIT-OK", timeout: 1500)
        let out = console.output.snapshot().replacingOccurrences(of: "\r", with: "")
        #expect(done, "no marker in time; console so far:\n\(out.suffix(3000))\nvmd:\n\(d.log.snapshot())")
        let host = "10.215.\(id).2", guest = "10.215.\(id).3"
        #expect(out.contains("SWIFTVMM-NET-LEASE ip=\(guest) mask=31 router=\(host) dns=\(host) hostname=lg lease=86400"),
                "\(out.suffix(3000))")
        #expect(out.contains("SWIFTVMM-NET-PING-OK \(host)"), "\(out.suffix(2000))")
        #expect(out.contains("SWIFTVMM-NET-TCP \(token)"), "\(out.suffix(2000))")
        #expect(server.received.contains("SWIFTVMM-GUEST-HELLO"))
        // SLAAC from our router advertisement: a global address in the VM's /64
        // (fd5e:1:2:ID00::/64) and a default route via the router's link-local address.
        let subnet = String(id << 8, radix: 16)
        let v6 = out.split(separator: "\n").first { $0.hasPrefix("SWIFTVMM-NET-INET6 ") }
        #expect(v6?.hasPrefix("SWIFTVMM-NET-INET6 fd5e:1:2:\(subnet):") == true && v6?.hasSuffix("/64") == true, "\(out.suffix(2000))")
        #expect(out.contains("SWIFTVMM-NET-INET6-ROUTE fe80::"), "\(out.suffix(2000))")
        print("LocalGuestTests: \(v6 ?? "no global IPv6 address")")
        #expect(d.log.snapshot().contains("inet6 fd5e:1:2:\(subnet)::1/64"), "\(d.log.snapshot())")
        if let line = out.split(separator: "\n").first(where: { $0.hasPrefix("SWIFTVMM-NET-DHCP-SECONDS") }) {
            print("LocalGuestTests: \(line) (guest uptime seconds: link up, lease bound)")
        }
    }
}
