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
        #expect(!Self.exists("swvdx\(tag)"))
        // -i 2: two taps with kernel-picked names, no bridge.
        let two = try d.vmctl("start", "-i", "2", "onoff")
        #expect(two.status == 0, "\(two.stderr)")
        #expect(d.log.snapshot().contains("vm onoff: interface 1 is tap"), "\(d.log.snapshot())")
        _ = try d.vmctl("stop", "-f", "-w", "onoff")
        // reset switches: vmd's own bridge is made again, the user's taps back on it.
        let again = try d.vmctl("start", "net")
        #expect(again.status == 0, "\(again.stderr)")
        let reset = try d.vmctl("reset", "switches")
        #expect(reset.status == 0, "\(reset.stderr)")
        #expect(Self.exists(bridge) && Self.master(tap1) == bridge, "\(d.log.snapshot())")
        #expect(d.log.snapshot().contains("reset switches: 1 switch, 2 taps reattached"), "\(d.log.snapshot())")
        _ = try d.vmctl("stop", "-f", "-w", "net")
        // vmd's exit removes the bridge it made (a bridge it did not make would stay).
        d.stop()
        #expect(!Self.exists(bridge), "vmd removes its own bridges when it exits")
    }

    /// The /31 on the host side of a local interface: `vmctl start -L` gives the tap the
    /// first address of the VM's /31 out of the local prefix (netlink), brings it up, and the
    /// address goes with the tap when the VM stops (or is killed).
    static func addresses(_ name: String) -> String {
        (try? run("/usr/sbin/ip", ["-o", "-4", "addr", "show", "dev", name]).stdout) ?? ""
    }

    static func waitGone(_ names: [String]) -> Bool {
        let deadline = Date().addingTimeInterval(5)
        while names.contains(where: exists) && Date() < deadline { usleep(20_000) }
        return !names.contains(where: exists)
    }

    @Test(.enabled(if: NetworkTests.tapProblem() == nil, "taps cannot be made here (needs root and /dev/net/tun)"))
    func localInterfacesGetTheirSlash31AndBadInputIsOneLine() throws {
        try #require(Binaries.available)
        let tag = getpid() % 100_000
        let kernel = NSTemporaryDirectory() + "vmd-local-kernel-\(tag)"
        try Data("stand-in".utf8).write(to: URL(fileURLWithPath: kernel))
        defer { unlink(kernel) }
        let d = try TestDaemon(config: """
            local prefix "10.213.0.0/16"
            vm "loc" {
              disable
              boot "\(kernel)"
              local interface swvl\(tag)
            }
            vm "dupa" {
              disable
              boot "\(kernel)"
              interface { lladdr fe:e1:ba:d0:ab:01 }
            }
            vm "dupb" {
              disable
              boot "\(kernel)"
              interface { lladdr fe:e1:ba:d0:ab:01 }
            }
            vm "twice" {
              disable
              boot "\(kernel)"
              interface { lladdr fe:e1:ba:d0:ab:02 }
              interface { lladdr fe:e1:ba:d0:ab:02 }
            }
            """)
        defer { d.stop() }
        let start = try d.vmctl("start", "loc")
        #expect(start.status == 0, "\(start.stderr)")
        let id = try #require(row(try d.vmctl("status").stdout, "loc")?.first.flatMap { Int($0) })
        let tap = "swvl\(tag)"
        #expect(Self.isUp(tap))
        #expect(Self.addresses(tap).contains("inet 10.213.\(id).2/31"), "\(Self.addresses(tap))")
        #expect(d.log.snapshot().contains("local 10.213.\(id).2/31, guest 10.213.\(id).3"), "\(d.log.snapshot())")
        // -L adds one more local interface (the VM's second: the next /31).
        _ = try d.vmctl("stop", "-f", "-w", "loc")
        #expect(Self.waitGone([tap]), "the tap and its address go with the VM")
        let withL = try d.vmctl("start", "-L", "loc")
        #expect(withL.status == 0, "\(withL.stderr)")
        #expect(d.log.snapshot().contains("interface 1 is tap"), "\(d.log.snapshot())")
        #expect(d.log.snapshot().contains("local 10.213.\(id).4/31, guest 10.213.\(id).5"), "\(d.log.snapshot())")
        // kill -9 of the VM process: its taps vanish with its descriptors.
        let pid = try #require(row(try d.vmctl("status").stdout, "loc").flatMap { $0.count > 1 ? pid_t($0[1]) : nil })
        kill(pid, SIGKILL)
        #expect(Self.waitGone([tap]))

        // A duplicate MAC, with another running VM or within one VM: one line, nothing made.
        #expect(try d.vmctl("start", "dupa").status == 0)
        let dup = try d.vmctl("start", "dupb")
        #expect(dup.status != 0 && dup.stderr.contains("vm dupb: interface 0: lladdr fe:e1:ba:d0:ab:01 is already used by vm dupa"), "\(dup.stderr)")
        let twice = try d.vmctl("start", "twice")
        #expect(twice.status != 0 && twice.stderr.contains("vm twice: interface 1: lladdr fe:e1:ba:d0:ab:02 is already used by interface 0"), "\(twice.stderr)")
        _ = try d.vmctl("stop", "-f", "-w", "dupa")

        // Prefixes: a bad mask, one too small, one exhausted, one overlapping a host network.
        let helper = "swvh\(tag)"
        _ = try run("/usr/sbin/ip", ["tuntap", "add", "dev", helper, "mode", "tap"])
        defer { _ = try? run("/usr/sbin/ip", ["link", "del", helper]) }
        _ = try run("/usr/sbin/ip", ["addr", "add", "10.214.0.1/16", "dev", helper])
        for (prefix, message) in [("fd5e:1:2::/64", "local inet6 prefix fd5e:1:2::/64 is exhausted: no /64 for vm id 1 interface 0")] {
            let p = try TestDaemon(config: "local inet6 prefix \"\(prefix)\"\nvm \"p\" {\n disable\n boot \"\(kernel)\"\n local interface\n}\n")
            defer { p.stop() }
            let r = try p.vmctl("start", "p")
            #expect(r.status != 0 && r.stderr.contains("vm p: interface 0: \(message)"), "\(prefix): \(r.stderr)")
        }
        // A bad mask or one longer than /16 (/64 for inet6) is refused when the file is read,
        // as parse.y 1.72 does (Tests/VMConfigTests/Golden/fail-prefix.conf has the rest).
        for (line, message) in [("local prefix \"100.64.0.1/10\"", "invalid local prefix: 100.64.0.1/10: bad mask: the address has bits set past /10"),
                                ("local prefix \"100.64.0.0/24\"", "invalid local prefix: 100.64.0.0/24: the mask must be 1 to 16"),
                                ("local inet6 prefix \"fd5e:1:2::1/48\"", "invalid local inet6 prefix: fd5e:1:2::1/48: bad mask: the address has bits set past /48")] {
            let conf = NSTemporaryDirectory() + "prefix-\(getpid()).conf"
            try (line + "\n").write(toFile: conf, atomically: true, encoding: .utf8)
            defer { unlink(conf) }
            let r = try run(Binaries.vmd, ["-n", "-f", conf])
            #expect(r.status == 1 && r.stderr == "\(conf):1: \(message)\n", "\(line): \(r.stderr)")
        }
        for (prefix, message) in [("10.214.0.0/16", "local address 10.214.1.2/31 overlaps 10.214.0.1/16 on \(helper); choose another local prefix")] {
            let p = try TestDaemon(config: """
                local prefix "\(prefix)"
                vm "p" {
                  disable
                  boot "\(kernel)"
                  local interface
                }
                """)
            defer { p.stop() }
            let r = try p.vmctl("start", "p")
            #expect(r.status != 0 && r.stderr.contains("vm p: interface 0: \(message)"), "\(prefix): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "one line: \(r.stderr)")
        }
    }
}
