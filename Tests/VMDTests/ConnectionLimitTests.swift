#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import CKVM
import Control

/// The control socket cannot be filled by one user (issue 11, hole 5).
@Suite(.serialized) struct ConnectionLimitTests {
    /// Connects `count` times as `user` (a thread of its own takes the user's ids; other
    /// threads keep root's) and returns the descriptors.
    static func connect(_ socket: String, as user: String, count: Int) throws -> [Int32] {
        let pw = try #require(getpwnam(user)?.pointee)
        let (uid, gid) = (pw.pw_uid, pw.pw_gid)
        let ctl = try #require(getgrnam("vmdtestctl")?.pointee.gr_gid)
        final class Box: @unchecked Sendable { var fds: [Int32] = []; var error: String? }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        Thread {
            defer { done.signal() }
            var groups: [UInt32] = [gid, ctl]
            guard ckvm_thread_setgroups(2, &groups) == 0, ckvm_thread_setresgid(-1, Int64(gid), -1) == 0,
                  ckvm_thread_setresuid(-1, Int64(uid), -1) == 0 else { box.error = "cannot become \(user)"; return }
            for _ in 0..<count {
                if let fd = try? UnixSocket.connect(path: socket) { box.fds.append(fd) }
            }
            // The thread ends here, and its ids with it.
        }.start()
        done.wait()
        if let e = box.error { Issue.record(Comment(rawValue: e)) }
        return box.fds
    }

    /// The descriptors vmd has answered or closed, once there are `expected` of them (or
    /// after `seconds`).
    static func answered(_ fds: [Int32], expected: Int, within seconds: Double) -> [Int32] {
        let deadline = Date().addingTimeInterval(seconds)
        var ready: [Int32] = []
        repeat {
            var polls = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            _ = poll(&polls, nfds_t(polls.count), 100)
            ready = polls.filter { $0.revents != 0 }.map(\.fd)
        } while ready.count < expected && Date() < deadline
        return ready
    }

    @Test(.enabled(if: PermissionTests.usable, "needs root, useradd and setpriv"))
    func idleConnectionsOfAUserNeitherPileUpNorLockRootOut() throws {
        try #require(Binaries.available)
        try PermissionTests.ensureUsers()
        let d = try TestDaemon(config: "socket owner root:vmdtestctl\nvm \"v\" {\n disable\n}\n",
                               env: ["VMD_CLIENT_TIMEOUT": "8"])
        defer { d.stop() }
        let held = try Self.connect(d.socket, as: "vmdtest1", count: 40) + Self.connect(d.socket, as: "vmdtest2", count: 40)
        defer { for fd in held { close(fd) } }
        #expect(held.count == 80)
        // vmd turns away what is over a user's 16 at once (a reply, then the close) ...
        let refused = Self.answered(held, expected: 2 * (40 - 16), within: 5)
        #expect(refused.count == 2 * (40 - 16), "\(refused.count) of 80 refused")
        // ... root still gets in, and vmctl as the user is told why it is not.
        let status = try d.vmctl("status")
        #expect(status.status == 0, "\(status.stderr)")
        let user = try d.vmctl("status", as: "vmdtest1")
        #expect(user.stderr == "vmctl: too many connections from uid \(getpwnam("vmdtest1")!.pointee.pw_uid) (at most 16)\n",
                "\(user.stderr)")
        // The silent ones are closed after the idle timeout, freeing their slots.
        #expect(Self.answered(held, expected: held.count, within: 30).count == held.count)
        let later = try d.vmctl("status", as: "vmdtest1")
        #expect(later.status == 0, "\(later.stderr)")
    }
}
