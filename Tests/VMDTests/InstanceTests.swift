#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import Control
import VMConfig

/// Instances (`vmctl start -t`) and VM process identities (issue 11, hole 6).
@Suite(.serialized) struct InstanceTests {
    static func conf(_ kernel: String) -> String {
        """
        socket owner root:vmdtestctl
        vm "tmpl" {
            disable
            boot "\(kernel)"
            allow instance { boot, disk, memory, owner vmdtest2 }
        }

        """
    }

    @Test(.enabled(if: PermissionTests.usable, "needs root, useradd and setpriv"))
    func settingsWithoutAnAllowKeywordAreRootsOnly() throws {
        try #require(Binaries.available)
        try PermissionTests.ensureUsers()
        let dir = try DiskFDTests.scratch("inst-allow")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(count: 4096).write(to: URL(fileURLWithPath: dir + "/kernel"))
        chmod(dir + "/kernel", 0o644)
        let d = try TestDaemon(config: Self.conf(dir + "/kernel"))
        defer { d.stop() }
        for (i, args) in [["--initrd", dir + "/kernel"], ["--cmdline", "init=/bin/sh"], ["--vcpus", "2"], ["--accel", "emulator"],
                                    ["--cpu-level", "baseline"]].enumerated() {
            let r = try d.vmctl(args: ["start", "-t", "tmpl"] + args + ["i\(i)"], as: "vmdtest2")
            #expect(r.status == 1, "\(args)")
            #expect(r.stderr == "vmctl: vm tmpl: instances may not change that setting\n", "\(args): \(r.stderr)")
        }
        // What `allow instance` lists is fine; root may change anything.
        #expect(try d.vmctl("start", "-t", "tmpl", "-m", "64M", "mine", as: "vmdtest2").status == 0)
        #expect(try d.vmctl("start", "-t", "tmpl", "--vcpus", "2", "--cmdline", "x", "rootinst").status == 0)
        let status = try d.vmctl("status").stdout
        #expect(row(status, "rootinst")?[2] == "2", "\(status)")
        #expect(row(status, "i0") == nil && row(status, "i3") == nil, "\(status)")
    }

    /// 1,000 instance starts that fail (a missing disk) leave no entries behind.
    @Test func failedInstanceStartsLeaveNothingBehind() throws {
        try #require(Binaries.available)
        let dir = try DiskFDTests.scratch("inst-fail")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(count: 4096).write(to: URL(fileURLWithPath: dir + "/kernel"))
        let d = try TestDaemon(config: "vm \"tmpl\" {\n disable\n boot \"\(dir)/kernel\"\n}\n")
        defer { d.stop() }
        let ch = try ControlChannel.connect(path: d.socket)
        for i in 0..<1000 {
            var r = StartRequest(target: .name("gone\(i)"))
            r.template = "tmpl"
            r.disks = [DiskSpec(path: dir + "/missing.raw")]
            r.attachConsole = false
            let (reply, _) = try ch.call(.start(r))
            guard case .failure(let f) = reply, f.message.contains("No such file") else {
                Issue.record("start \(i): \(reply)")
                break
            }
        }
        let (reply, _) = try ch.call(.status(target: nil))
        guard case .status(let rows) = reply else { Issue.record("\(reply)"); return }
        #expect(rows.map(\.name) == ["tmpl"], "\(rows.count) entries")
    }

    /// An instance's -d and -b are its own: they hold after a stop and a plain start.
    @Test func anInstanceKeepsItsSettingsAcrossAStop() throws {
        try #require(Binaries.available)
        let dir = try DiskFDTests.scratch("inst-keep")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(count: 4096).write(to: URL(fileURLWithPath: dir + "/kernel"))
        try Data(count: 4096).write(to: URL(fileURLWithPath: dir + "/other-kernel"))
        try DiskFDTests.create("-s", "1M", dir + "/inst.raw")
        let d = try TestDaemon(config: "vm \"tmpl\" {\n disable\n boot \"\(dir)/kernel\"\n}\n")
        defer { d.stop() }
        #expect(try d.vmctl("start", "-t", "tmpl", "-b", dir + "/other-kernel", "-d", dir + "/inst.raw", "inst").status == 0)
        // "running" comes after the VM process reported its start, by which time it has
        // closed the kernel's descriptor and holds its disks.
        func disksHeld() throws -> [String] {
            let status = try d.waitForStatus { row($0, "inst")?[7] == "running" }
            let pid = try #require(Int32(row(status, "inst")?[1] ?? ""), "\(status)")
            return DiskFDTests.openFiles(pid).filter { $0.hasPrefix(dir + "/") }
        }
        #expect(try disksHeld() == [dir + "/inst.raw"])
        #expect(try d.vmctl("stop", "-w", "inst").status == 0)
        let again = try d.vmctl("start", "inst")
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try disksHeld() == [dir + "/inst.raw"])
    }

    /// Run as root, vmd gives each VM process a uid and gid of its own (2^30 + the VM's
    /// id) and no supplementary groups.
    @Test(.enabled(if: getuid() == 0, "needs root")) func eachVMProcessHasAUIDOfItsOwn() throws {
        try #require(Binaries.available)
        let d = try TestDaemon(config: "vm \"a\" {\n memory 64M\n}\nvm \"b\" {\n memory 64M\n}\n")
        defer { d.stop() }
        let status = try d.waitForStatus { row($0, "a")?[7] == "running" && row($0, "b")?[7] == "running" }
        var uids: [String] = []
        for name in ["a", "b"] {
            let cols = try #require(row(status, name), "\(status)")
            let pid = try #require(Int32(cols[1]))
            // "running": the VM process reported its start, after dropping privileges.
            let seen = DiskFDTests.uids(pid)
            #expect(seen == Array(repeating: String((1 << 30) + (Int(cols[0]) ?? 0)), count: 4), "\(name): \(seen)")
            let st = SandboxTests.status(pid, ["Gid", "Groups"])
            #expect(st["Gid"]?.split(whereSeparator: \.isWhitespace).map(String.init) == Array(repeating: seen.first ?? "", count: 4), "\(st)")
            #expect(st["Groups"] == "", "\(name): supplementary groups \(st)")
            uids.append(seen.first ?? "")
        }
        #expect(uids[0] != uids[1])
    }

    /// A VM uid range holding a host user's uid (nobody, 65534), group or /etc/subuid range
    /// is refused at vmd's start: a VM process must never get ids that may own files.
    @Test(.enabled(if: getuid() == 0 && getpwnam("nobody")?.pointee.pw_uid == 65534, "needs root and nobody = 65534"))
    func aUIDRangeHoldingHostIDsIsRefused() throws {
        try #require(Binaries.available)
        let dir = NSTemporaryDirectory() + "vmduid.\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "vm \"a\" {\n memory 32M\n}\n".write(toFile: dir + "/vm.conf", atomically: true, encoding: .utf8)
        let r = try run(Binaries.vmd, ["-d", "-f", dir + "/vm.conf", "--socket", dir + "/s", "--fake-vms",
                                       "--vm-uid-base", "65000", "--vm-uid-count", "1000"], timeout: 10)
        #expect(r.status == 1)
        #expect(r.stderr.contains("vmd: --vm-uid-base 65000: the VM uid range 65001...65999 contains host ids: user nobody has uid 65534\n"), "\(r.stderr)")
        #expect(access(dir + "/s", F_OK) != 0)
    }
}
