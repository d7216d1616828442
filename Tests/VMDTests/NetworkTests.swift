#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// vmd's networking: taps per interface, bridges for switches, the tap descriptors passed
/// to the VM process (stand-in guests hold them, so the taps live exactly as long as the VM).
/// Skipped, saying why, when taps cannot be created here (not root, no /dev/net/tun).
@Suite(.serialized) struct NetworkTests {
    static func tapProblem() -> String? {
        guard geteuid() == 0 else { return "not root" }
        let fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return "/dev/net/tun: \(String(cString: strerror(errno)))" }
        close(fd)
        return nil
    }

    static func exists(_ name: String) -> Bool { access("/sys/class/net/\(name)", F_OK) == 0 }
    static func isUp(_ name: String) -> Bool {
        guard let s = try? String(contentsOfFile: "/sys/class/net/\(name)/flags", encoding: .utf8),
              let v = Int(s.trimmingCharacters(in: .whitespacesAndNewlines).dropFirst(2), radix: 16) else { return false }
        return v & 1 != 0
    }
    static func master(_ name: String) -> String? {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/sys/class/net/\(name)/master"))
            .map { URL(fileURLWithPath: $0).lastPathComponent }
    }

    @Test(.enabled(if: NetworkTests.tapProblem() == nil, "taps and bridges cannot be made here (needs root and /dev/net/tun)"))
    func interfacesBecomeTapsOnTheSwitchBridgeAndGoAwayWithTheVM() throws {
        try #require(Binaries.available)
        let tag = getpid() % 100_000
        let bridge = "swvdb\(tag)", tap1 = "swvd1t\(tag)", tap2 = "swvd2t\(tag)"
        defer { _ = try? run("/usr/sbin/ip", ["link", "del", bridge]) }
        let kernel = NSTemporaryDirectory() + "vmd-net-kernel-\(tag)"
        try Data("stand-in".utf8).write(to: URL(fileURLWithPath: kernel))
        defer { unlink(kernel) }
        let d = try TestDaemon(config: """
            switch "lan" {
              interface \(bridge)
            }
            switch "off" {
              disable
              interface swvdx\(tag)
            }
            vm "net" {
              disable
              boot "\(kernel)"
              interface \(tap1) { switch "lan" }
              interface \(tap2) { locked lladdr fe:e1:ba:d0:aa:01
                                  down }
            }
            vm "onoff" {
              disable
              boot "\(kernel)"
            }
            """)
        defer { d.stop() }
        #expect(!Self.exists(bridge))
        let start = try d.vmctl("start", "net")
        #expect(start.status == 0, "\(start.stderr)")
        #expect(Self.exists(bridge) && Self.isUp(bridge), "the switch's bridge is created and up")
        #expect(Self.exists(tap1) && Self.isUp(tap1))
        #expect(Self.master(tap1) == bridge)
        #expect(Self.exists(tap2) && !Self.isUp(tap2), "`down` leaves the tap down")
        #expect(Self.master(tap2) == nil)
        let log = d.log.snapshot()
        #expect(log.contains("vm net: interface 0 is \(tap1) on bridge \(bridge), lladdr fe:e1:ba:d0:"), "\(log)")
        #expect(log.contains("vm net: interface 1 is \(tap2), locked lladdr fe:e1:ba:d0:aa:01"), "\(log)")
        // Only the VM process holds the taps: stopping it removes them; the bridge stays.
        let stop = try d.vmctl("stop", "-f", "-w", "net")
        #expect(stop.status == 0, "\(stop.stderr)")
        let deadline = Date().addingTimeInterval(5)
        while (Self.exists(tap1) || Self.exists(tap2)) && Date() < deadline { usleep(20_000) }
        #expect(!Self.exists(tap1) && !Self.exists(tap2))
        #expect(Self.exists(bridge))

        // -n with a disabled or unknown switch, -L: one line, nothing left behind, vmd fine.
        let off = try d.vmctl("start", "-n", "off", "onoff")
        #expect(off.status != 0 && off.stderr.contains("vm onoff: interface 0: switch off is disabled"), "\(off.stderr)")
        let unknown = try d.vmctl("start", "-n", "nosuch", "onoff")
        #expect(unknown.status != 0 && unknown.stderr.contains("switch nosuch is not defined"), "\(unknown.stderr)")
        let local = try d.vmctl("start", "-L", "onoff")
        #expect(local.status != 0 && local.stderr.contains("local interface is not supported yet"), "\(local.stderr)")
        #expect(!Self.exists("swvdx\(tag)"))
        // -i 2: two taps with kernel-picked names, no bridge.
        let two = try d.vmctl("start", "-i", "2", "onoff")
        #expect(two.status == 0, "\(two.stderr)")
        #expect(d.log.snapshot().contains("vm onoff: interface 1 is tap"), "\(d.log.snapshot())")
        _ = try d.vmctl("stop", "-f", "-w", "onoff")
    }
}
