#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// Issue 13's switch proofs with real guests: Debian's kernel on the software CPU under vmd,
/// running the `net` initramfs (guests/debian/build.sh --variant net), whose init reads its
/// role from the kernel command line. Two VMs on one switch (a Linux bridge with their taps)
/// reach each other; a guest that forges its source MAC on a `locked lladdr` interface is
/// dropped before its frames reach the host, while its own MAC's traffic flows. Needs root
/// (taps, bridges, AF_PACKET) and the built guest files.
@Suite(.serialized) struct SwitchGuestTests {
    static var kernel: String { LocalGuestTests.kernel }
    static var initrd: String { LocalGuestTests.initrd }
    static var problem: String? { LocalGuestTests.problem }

    /// Every frame seen on one host interface (both directions), by source MAC: an AF_PACKET
    /// socket bound to the interface, read on a thread of its own until `stop()`.
    final class FrameCapture: @unchecked Sendable {
        private let fd: Int32
        private let lock = NSLock()
        private var bySource: [[UInt8]: Int] = [:]
        private var stopFlag = false
        private var thread: Thread?

        init(interface: String) throws {
            let index = if_nametoindex(interface)
            guard index != 0 else { throw POSIXError(.ENODEV) }
            let all = UInt16(0x0003).bigEndian   // ETH_P_ALL
            let s = socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(all))
            guard s >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            // struct sockaddr_ll (20 bytes): family, protocol (network order), ifindex, then
            // hatype, pkttype, halen, addr[8] left zero.
            var sll = [UInt8](repeating: 0, count: 20)
            withUnsafeBytes(of: UInt16(AF_PACKET)) { sll[0] = $0[0]; sll[1] = $0[1] }
            withUnsafeBytes(of: all) { sll[2] = $0[0]; sll[3] = $0[1] }
            withUnsafeBytes(of: Int32(index)) { for i in 0..<4 { sll[4 + i] = $0[i] } }
            // SAFETY: bind reads the 20 bytes of sll, which outlive the call.
            let rc = sll.withUnsafeBytes { bind(s, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 20) }
            guard rc == 0 else { close(s); throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            fd = s
            thread = Thread { [self] in self.loop() }
            thread?.start()
        }

        private func loop() {
            var buf = [UInt8](repeating: 0, count: 2048)
            while true {
                lock.lock(); let stop = stopFlag; lock.unlock()
                if stop { return }
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 50) > 0 else { continue }
                // SAFETY: recv writes at most buf.count bytes into buf.
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard n >= 14 else { continue }
                let src = Array(buf[6..<12])
                lock.lock(); bySource[src, default: 0] += 1; lock.unlock()
            }
        }

        /// How many frames came from `mac` so far.
        func frames(from mac: [UInt8]) -> Int { lock.lock(); defer { lock.unlock() }; return bySource[mac] ?? 0 }

        func stop() {
            lock.lock(); stopFlag = true; lock.unlock()
            while thread?.isFinished == false { usleep(10_000) }
            close(fd)
        }
    }

    static func text(_ c: ConsoleClient) -> String { c.output.snapshot().replacingOccurrences(of: "\r", with: "") }

    @Test(.enabled(if: SwitchGuestTests.problem == nil, "needs root, taps and the guest files (guests/debian/build.sh --variant net)"),
          .timeLimit(.minutes(30)))
    func twoGuestsOnOneSwitchReachEachOther() throws {
        try #require(Binaries.available)
        let tag = getpid() % 100_000
        let bridge = "swsw\(tag)"
        defer { _ = try? run("/usr/sbin/ip", ["link", "del", bridge]) }
        let d = try TestDaemon(config: """
            switch "lan" {
              interface \(bridge)
            }
            vm "swa" {
              disable
              boot "\(Self.kernel)"
              initrd "\(Self.initrd)"
              cmdline "console=ttyS0 swiftvmm.ip=10.216.0.1/24,10.216.0.1 swiftvmm.listen=7001"
              memory 256M
              accel emulator
              interface { switch "lan" }
            }
            vm "swb" {
              disable
              boot "\(Self.kernel)"
              initrd "\(Self.initrd)"
              cmdline "console=ttyS0 swiftvmm.ip=10.216.0.2/24,10.216.0.1 swiftvmm.peer=10.216.0.1:7001"
              memory 256M
              accel emulator
              interface { switch "lan" }
            }
            """, fake: false)
        defer { d.stop() }
        for vm in ["swa", "swb"] {
            let r = try d.vmctl("start", vm)
            #expect(r.status == 0, "\(vm): \(r.stderr)")
        }
        let a = try ConsoleClient(socket: d.socket, name: "swa")
        defer { _ = a.detach() }
        let b = try ConsoleClient(socket: d.socket, name: "swb")
        defer { _ = b.detach() }
        // B's init pings A until it answers, then exchanges a line with A's listener.
        let bDone = b.waitFor("SWIFTVMM-INIT-OK", timeout: 1500)
        let aDone = a.waitFor("SWIFTVMM-INIT-OK", timeout: 120)
        let outA = Self.text(a), outB = Self.text(b)
        #expect(bDone && aDone, "A:\n\(outA.suffix(2000))\nB:\n\(outB.suffix(2000))\nvmd:\n\(d.log.snapshot())")
        #expect(d.log.snapshot().contains("on bridge \(bridge)"), "\(d.log.snapshot())")
        #expect(outB.contains("SWIFTVMM-NET-PEER-OK 10.216.0.1 reply=SWIFTVMM-LISTENER-REPLY"), "B:\n\(outB.suffix(2000))")
        #expect(outA.contains("SWIFTVMM-NET-LISTEN-GOT SWIFTVMM-PEER-HELLO"), "A:\n\(outA.suffix(2000))")
    }

    @Test(.enabled(if: SwitchGuestTests.problem == nil, "needs root, taps and the guest files (guests/debian/build.sh --variant net)"),
          .timeLimit(.minutes(30)))
    func forgedSourceMACOnALockedInterfaceNeverReachesTheHost() throws {
        try #require(Binaries.available)
        let tag = getpid() % 100_000
        let tap = "swfx\(tag)"
        let real: [UInt8] = [0xfe, 0xe1, 0xba, 0xd0, 0x5a, 0x01]
        let forged: [UInt8] = [0xfe, 0xe1, 0xba, 0xd0, 0x66, 0x66]
        let d = try TestDaemon(config: """
            local prefix "10.217.0.0/16"
            vm "fx" {
              disable
              boot "\(Self.kernel)"
              initrd "\(Self.initrd)"
              cmdline "console=ttyS0 swiftvmm.forgemac=fe:e1:ba:d0:66:66"
              memory 256M
              accel emulator
              local interface \(tap) { locked lladdr fe:e1:ba:d0:5a:01 }
            }
            """, fake: false)
        defer { d.stop() }
        let start = try d.vmctl("start", "fx")
        #expect(start.status == 0, "\(start.stderr)")
        // The tap exists once the start is answered; the guest is still booting.
        let capture = try FrameCapture(interface: tap)
        let console = try ConsoleClient(socket: d.socket, name: "fx")
        defer { _ = console.detach() }
        let done = console.waitFor("SWIFTVMM-INIT-OK", timeout: 1500)
        capture.stop()
        let out = Self.text(console)
        #expect(done, "no marker in time; console so far:\n\(out.suffix(3000))\nvmd:\n\(d.log.snapshot())")
        #expect(out.contains("SWIFTVMM-NET-FORGED fe:e1:ba:d0:66:66"), "\(out.suffix(2000))")
        #expect(out.contains("SWIFTVMM-NET-FORGED-PING-UNANSWERED"), "\(out.suffix(2000))")
        #expect(out.contains("SWIFTVMM-NET-UNFORGED fe:e1:ba:d0:5a:01"), "\(out.suffix(2000))")
        #expect(out.contains("SWIFTVMM-NET-UNFORGED-PING-OK"), "\(out.suffix(2000))")
        let fromReal = capture.frames(from: real), fromForged = capture.frames(from: forged)
        #expect(fromReal > 0, "the guest's own frames reach the tap")
        #expect(fromForged == 0, "\(fromForged) frames with the forged source MAC reached the tap")
        print("SwitchGuestTests: on \(tap): \(fromReal) frames from the guest's MAC, \(fromForged) from the forged one")
    }
}
