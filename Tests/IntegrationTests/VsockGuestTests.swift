import Control
import Foundation
import Testing

/// Debian's kernel on the software CPU with the `vsock` initramfs (guests/debian/build.sh
/// --variant vsock): Linux's own virtio vsock transport on our virtio-vsock device, through
/// the hybrid unix-socket backend of `vmm --vsock CID,PATH`, in both directions:
/// the guest connects to host port 5000 (this test listens on PATH_5000) and exchanges a
/// line; then this test connects to PATH, sends "CONNECT 1234", gets "OK <port>", and the
/// guest's echo server sends back 48 KiB (several credit windows of Linux's 4 KiB receive
/// buffers) that this test checks byte for byte.
@Suite(.serialized) struct VsockGuestTests {
    static let cache = ProcessInfo.processInfo.environment["SWIFTVMM_GUEST_CACHE"]
        ?? Harness.packageRoot.appendingPathComponent(".build/guests/debian").path
    static let kernel = "\(cache)/amd64/vmlinux"
    static let initrd = "\(cache)/amd64/initramfs-vsock.cpio.gz"

    static let problem: String? = {
        if ProcessInfo.processInfo.environment["SWIFTVMM_SKIP_LINUX_BOOT"] != nil { return "SWIFTVMM_SKIP_LINUX_BOOT is set" }
        for f in [kernel, initrd] where access(f, R_OK) != 0 {
            return "\(f) is missing (guests/debian/build.sh --variant vsock)"
        }
        return nil
    }()

    /// The host side of the test, on its own thread; every wait is bounded by `deadline`.
    final class HostSide: @unchecked Sendable {
        let path: String
        let payload: [UInt8]
        let deadline: Date
        let done = DispatchSemaphore(value: 0)
        private let lock = NSLock()
        private var _log: [String] = []
        private(set) var guestLine = ""
        private(set) var okLine = ""
        private(set) var echoed: [UInt8] = []

        init(path: String, payload: [UInt8], deadline: Date) {
            self.path = path; self.payload = payload; self.deadline = deadline
        }

        var log: String { lock.lock(); defer { lock.unlock() }; return _log.joined(separator: "\n") }
        func note(_ s: String) { lock.lock(); _log.append(s); lock.unlock() }

        /// Waits (poll) until `fd` is ready for `events` or the deadline passes.
        func wait(_ fd: Int32, _ events: Int16) -> Bool {
            while true {
                let left = Int32(max(0, deadline.timeIntervalSinceNow * 1000))
                guard left > 0 else { return false }
                var p = pollfd(fd: fd, events: events, revents: 0)
                let n = poll(&p, 1, min(left, 1000))
                if n > 0 { return true }
                if n < 0 && errno != EINTR { return false }
            }
        }

        func readLine(_ fd: Int32) -> String? {
            var line: [UInt8] = []
            var b: UInt8 = 0
            while line.count < 256 {
                guard wait(fd, Int16(POLLIN)) else { return nil }
                let n = recv(fd, &b, 1, 0)
                if n <= 0 { return n == 0 ? String(decoding: line, as: UTF8.self) : nil }
                if b == UInt8(ascii: "\n") { break }
                line.append(b)
            }
            return String(decoding: line, as: UTF8.self)
        }

        func run(listener: Int32) {
            defer { done.signal() }
            // 1. The guest connects to host port 5000.
            guard wait(listener, Int16(POLLIN)) else { note("the guest never connected to port 5000"); return }
            let g = accept(listener, nil, nil)
            guard g >= 0 else { note("accept failed"); return }
            guestLine = readLine(g) ?? ""
            _ = "HELLO-FROM-HOST\n".withCString { send(g, $0, 16, Int32(MSG_NOSIGNAL)) }
            close(g)
            // 2. We connect to the guest's port 1234 and it echoes what we send.
            guard let s = try? UnixSocket.connect(path: path) else { note("connect \(path): \(String(cString: strerror(errno)))"); return }
            defer { close(s) }
            _ = "CONNECT 1234\n".withCString { send(s, $0, 13, Int32(MSG_NOSIGNAL)) }
            okLine = readLine(s) ?? ""
            guard okLine.hasPrefix("OK ") else { note("CONNECT answered '\(okLine)'"); return }
            // Write and read at once (the echo comes back while we send).
            var sent = 0
            var got: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while got.count < payload.count {
                var p = [pollfd(fd: s, events: Int16(POLLIN) | (sent < payload.count ? Int16(POLLOUT) : 0), revents: 0)]
                let left = Int32(max(0, deadline.timeIntervalSinceNow * 1000))
                guard left > 0 else { note("echo timed out with \(got.count) of \(payload.count) bytes"); break }
                guard poll(&p, 1, min(left, 1000)) >= 0 || errno == EINTR else { break }
                if p[0].revents & Int16(POLLOUT) != 0 && sent < payload.count {
                    let n = payload[sent...].withUnsafeBytes { send(s, $0.baseAddress, min($0.count, 8192), Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                    if n > 0 { sent += n }
                    if sent == payload.count { shutdown(s, Int32(SHUT_WR)) }
                }
                if p[0].revents & Int16(POLLIN | POLLHUP) != 0 {
                    let n = buf.withUnsafeMutableBytes { recv(s, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                    if n == 0 { note("end of stream after \(got.count) bytes"); break }
                    if n > 0 { got += buf[0..<n] }
                }
            }
            echoed = got
        }
    }

    @Test(.enabled(if: VsockGuestTests.problem == nil, "needs the vsock guest (guests/debian/build.sh --variant vsock)"))
    func linuxGuestRoundTripBothWays() throws {
        let dir = "/tmp/vsk-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = "\(dir)/v.sock"
        let listener = try UnixSocket.listen(path: path + "_5000")
        defer { close(listener) }
        var rng = SystemRandomNumberGenerator()
        let payload = (0..<(48 * 1024)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let host = HostSide(path: path, payload: payload, deadline: Date().addingTimeInterval(1500))
        let thread = Thread { host.run(listener: listener) }
        thread.start()
        let r = try Harness.vmm(["--accel", "emulator", "-k", Self.kernel, "-i", Self.initrd, "-m", "256M",
                                 "-p", "console=ttyS0 swiftvmm.vsock=1234 swiftvmm.vsockhost=5000",
                                 "--vsock", "3,\(path)"], timeout: 1500)
        host.done.wait()
        let log = r.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(!r.timedOut, "no power-off in time; console so far:\n\(log.suffix(3000))")
        #expect(r.status == 0, "vmm status \(r.status): \(r.stderr)\n\(log.suffix(3000))")
        #expect(r.stderr.contains("virtio-vsock: guest CID 3"), "\(r.stderr)")
        #expect(log.contains("loaded vmw_vsock_virtio_transport\n"), "\(log.suffix(3000))")
        #expect(host.guestLine == "HELLO-FROM-GUEST", "host side: \(host.log)\n\(log.suffix(2000))")
        #expect(log.contains("SWIFTVMM-VSOCK-GUEST-GOT HELLO-FROM-HOST"), "\(log.suffix(2000))")
        #expect(host.okLine == "OK 1073741824", "host side: \(host.log)")
        #expect(host.echoed == payload, "echoed \(host.echoed.count) of \(payload.count) bytes; host side: \(host.log)\n\(log.suffix(2000))")
        #expect(log.contains("SWIFTVMM-VSOCK-ECHOED \(payload.count)"), "\(log.suffix(2000))")
        #expect(log.contains("SWIFTVMM-VSOCK-DONE"))
        #expect(!FileManager.default.fileExists(atPath: path), "vmm left its socket behind")
    }
}
