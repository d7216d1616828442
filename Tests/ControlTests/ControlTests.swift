#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import Control
import VMConfig

@Suite struct ProtocolTests {
    func pair() throws -> (ControlChannel, ControlChannel) {
        let (a, b) = try UnixSocket.pair()
        return (ControlChannel(fd: a), ControlChannel(fd: b))
    }

    static let requests: [ControlRequest] = {
        var s = StartRequest(target: .name("web"))
        s.template = "base"; s.boot = "/bsd"; s.bootDevice = .cdrom; s.cdrom = "/x.iso"
        s.disks = [DiskSpec(path: "/d.img", format: .qcow2)]; s.interfaceCount = 2
        s.localInterface = true; s.switches = ["uplink"]; s.memory = 1 << 30; s.vcpus = 2
        s.initrd = "/i"; s.cmdline = "console=ttyS0"; s.accel = .kvm; s.attachConsole = true
        return [.start(s), .start(StartRequest(target: .id(3))), .stop(target: nil, force: true, wait: true),
                .stop(target: .id(1), force: false, wait: false), .status(target: nil),
                .status(target: .name("a")), .console(target: .id(2)), .pause(target: .name("x")),
                .unpause(target: .id(9)), .wait(target: .name("y")), .load(path: "/etc/vm2.conf"),
                .reload, .reset(.switches), .log(verbose: true), .send(target: .name("s")),
                .receive(name: "r", disks: [DiskSpec(path: "/r.img", format: .raw)]),
                .receive(name: "i", disks: [], template: "t")]
    }()

    @Test(arguments: requests)
    func everyRequestCrossesTheSocket(_ r: ControlRequest) throws {
        let (a, b) = try pair()
        try a.send(RequestFrame(r))
        let got = try #require(try b.receive(RequestFrame.self))
        #expect(got.0 == RequestFrame(r))
        #expect(got.1.isEmpty)
    }

    @Test func repliesCrossTheSocket() throws {
        let (a, b) = try pair()
        let replies: [ControlReply] = [
            .ok(message: nil), .ok(message: "done"),
            .failure(ControlFailure(.permissionDenied, "vm web: permission denied")),
            .status([VMStatus(id: 1, name: "a", state: .running, pid: 42, vcpus: 2, maxMemory: 1 << 30,
                              currentMemory: 1 << 30, tty: "/dev/pts/4", owner: "joe")]),
            .vm(VMStatus(id: 2, name: "b", state: .stopped, lastExit: "killed by signal 9")),
        ]
        for r in replies { try a.send(ReplyFrame(r)) }
        for r in replies { #expect(try b.receive(ReplyFrame.self)?.0.reply == r) }
    }

    @Test func identifiersParseLikeVmctl() {
        #expect(VMIdentifier(parsing: "12") == .id(12))
        #expect(VMIdentifier(parsing: "web1") == .name("web1"))
        #expect(VMIdentifier(parsing: "0") == .name("0"))
        #expect(VMIdentifier(parsing: "-3") == .name("-3"))
    }

    @Test func framesSurviveByteByByteDelivery() throws {
        let (a, b) = try UnixSocket.pair()
        let reader = ControlChannel(fd: b)
        let payload = Array(repeating: UInt8(ascii: "x"), count: 70_000)
        let n = UInt32(payload.count)
        let frame = [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + payload
            + [0, 0, 0, 2, UInt8(ascii: "h"), UInt8(ascii: "i")]
        let writer = Thread {
            var off = 0
            while off < frame.count {
                let step = off < 10 ? 1 : 4096
                let end = min(off + step, frame.count)
                _ = frame[off..<end].withUnsafeBytes { write(a, $0.baseAddress, $0.count) }
                off = end
            }
            close(a)
        }
        writer.start()
        let first = try #require(try reader.receiveFrame())
        #expect(first.payload == payload)
        #expect(try reader.receiveFrame()?.payload == Array("hi".utf8))
        #expect(try reader.receiveFrame() == nil)
    }

    @Test func oversizedAndTruncatedFramesAreRejected() throws {
        let (a, b) = try UnixSocket.pair()
        let reader = ControlChannel(fd: b)
        var hdr: [UInt8] = [0x7f, 0, 0, 0]
        _ = write(a, &hdr, 4)
        #expect(throws: ControlError.frameTooLarge(0x7f00_0000)) { _ = try reader.receiveFrame() }
        let (c, d) = try UnixSocket.pair()
        let r2 = ControlChannel(fd: d)
        var partial: [UInt8] = [0, 0, 0, 10, 1, 2]
        _ = write(c, &partial, partial.count)
        close(c)
        #expect(throws: ControlError.truncatedFrame) { _ = try r2.receiveFrame() }
        close(a)
        let w = ControlChannel(fd: try UnixSocket.pair().0)
        #expect(throws: ControlError.frameTooLarge(ControlProtocol.maxFrameSize + 1)) {
            try w.sendFrame(Array(repeating: 0, count: ControlProtocol.maxFrameSize + 1))
        }
    }

    @Test func garbageAndOtherVersionsAreNamed() throws {
        let (a, b) = try pair()
        try a.sendFrame(Array("{\"version\":7,\"request\":{\"reload\":{}}}".utf8))
        #expect(throws: ControlError.versionMismatch(peer: 7)) { _ = try b.receive(RequestFrame.self) }
        try a.sendFrame(Array("not json".utf8))
        #expect(throws: ControlError.self) { _ = try b.receive(RequestFrame.self) }
    }

    @Test func fileDescriptorsTravelWithTheirFrame() throws {
        let (a, b) = try pair()
        var p: [Int32] = [-1, -1]
        #expect(pipe(&p) == 0)
        try a.send(ReplyFrame(.ok(message: "fd")), fds: [p[1]])
        close(p[1])
        let (reply, fds) = try #require(try b.receive(ReplyFrame.self))
        #expect(reply.reply == .ok(message: "fd"))
        #expect(fds.count == 1)
        let passed = fds[0]
        #expect(passed != p[1] || true)
        #expect(fcntl(passed, F_GETFD) & FD_CLOEXEC != 0)
        var msg = Array("through".utf8)
        #expect(write(passed, &msg, msg.count) == msg.count)
        close(passed)
        var buf = [UInt8](repeating: 0, count: 16)
        let n = read(p[0], &buf, 16)
        #expect(Array(buf[0..<max(n, 0)]) == msg)
        close(p[0])
        // The next frame carries none.
        try a.send(ReplyFrame(.ok(message: nil)))
        #expect(try b.receive(ReplyFrame.self)?.1.isEmpty == true)
    }

    @Test func peerCredentialsAreTheCallersProcess() throws {
        let (a, _) = try pair()
        let c = try a.peerCredentials()
        #expect(c.pid == getpid())
        #expect(c.uid == getuid())
        #expect(c.gid == getgid())
    }

    @Test func listenAndConnectOverAPath() throws {
        let path = NSTemporaryDirectory() + "ctl-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let l = try UnixSocket.listen(path: path, mode: 0o600)
        defer { close(l); unlink(path) }
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        let client = try ControlChannel.connect(path: path)
        let server = ControlChannel(fd: try UnixSocket.accept(l))
        let t = Thread {
            if let (req, _) = try? server.receive(RequestFrame.self), req.request == .reload {
                try? server.send(ReplyFrame(.ok(message: "reloaded")))
            }
        }
        t.start()
        let (reply, _) = try client.call(.reload)
        #expect(reply == .ok(message: "reloaded"))
        #expect(throws: ControlError.self) { _ = try ControlChannel.connect(path: path + ".missing") }
    }

    /// A client that sees the path appear connects at once: the socket is renamed into
    /// place only after it listens (no ECONNREFUSED window), and no side name is left.
    @Test func aSocketThatAppearsAlreadyListens() throws {
        for round in 0..<40 {
            let path = NSTemporaryDirectory() + "ctl-\(getpid())-race\(round).sock"
            unlink(path)
            let done = DispatchSemaphore(value: 0)
            let client = Thread {
                defer { done.signal() }
                let deadline = Date().addingTimeInterval(5)
                while access(path, F_OK) != 0 && Date() < deadline {}
                let fd = try? UnixSocket.connect(path: path)
                #expect(fd != nil, "round \(round): the path existed before its socket listened")
                if let fd { close(fd) }
            }
            client.start()
            let l = try UnixSocket.listen(path: path, mode: 0o600)
            #expect(done.wait(timeout: .now() + 10) == .success)
            #expect(access(path + "~", F_OK) != 0)
            close(l)
            unlink(path)
        }
    }
}

@Suite struct StatusTableTests {
    @Test func columnsMatchOpenBSD() {
        let out = StatusTable.format([
            VMStatus(id: 1, name: "web", state: .running, pid: 4242, vcpus: 2, maxMemory: 1 << 30,
                     currentMemory: 1 << 30, tty: "/dev/pts/3", owner: "joe"),
            VMStatus(id: 2, name: "db", state: .stopped, vcpus: 1, maxMemory: 512 << 20, owner: "root",
                     enabled: false),
        ])
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines[0] == "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME")
        #expect(lines[1] == "    1  4242     2    1.0G    1.0G   pts/3          joe  running web")
        #expect(lines[2] == "    2     -     1    512M       -       -         root disabled db")
    }

    @Test func memoryIsScaledLikeFmtScaled() {
        #expect(StatusTable.scaled(512 << 20) == "512M")
        #expect(StatusTable.scaled(1 << 30) == "1.0G")
        #expect(StatusTable.scaled(3 << 29) == "1.5G")
        #expect(StatusTable.scaled(16 << 30) == "16G")
    }
}
