#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import VMDCore

/// Each VM process in a cgroup v2 group of its own (Sources/VMDTool/DaemonCgroups.swift), on
/// the host's real hierarchy: made under --cgroup before the process reads its spec, limited
/// when the hierarchy offers the controllers, removed when the VM stops; without cgroup v2
/// one log line and the VM runs anyway.
@Suite struct CgroupTests {
    /// The host's cgroup v2 mount when vmd (root) could make groups in it.
    static let mount: String? = {
        guard geteuid() == 0, let info = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8),
              let own = VMCgroupTree.ownDirectory(mountinfo: info, procCgroup: "0::/\n"),
              access(own.path + "/cgroup.procs", W_OK) == 0 else { return nil }
        return own.path
    }()
    /// The controllers the hierarchy's root offers (empty where cgroup v1 holds them).
    static let controllers: Set<String> = {
        guard let m = mount, let text = try? String(contentsOfFile: m + "/cgroup.controllers", encoding: .utf8) else { return [] }
        return Set(text.split(whereSeparator: \.isWhitespace).map(String.init))
    }()
    static let limitable = controllers.isSuperset(of: ["memory", "pids"])

    static func cgroupLine(_ pid: Int32) -> String? {
        (try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) }
    }

    /// vmd with its VM cgroups under a directory of the test's own.
    static func daemon(_ conf: String) throws -> (TestDaemon, String) {
        let tree = try #require(mount) + "/vmdtest-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        return (try TestDaemon(config: conf, extraArgs: ["--cgroup", tree]), tree)
    }

    /// Waits (bounded) until `path` is gone.
    static func waitGone(_ path: String) -> Bool {
        for _ in 0..<200 where access(path, F_OK) == 0 { usleep(20_000) }
        return access(path, F_OK) != 0
    }

    @Test(.enabled(if: mount != nil, "needs root and a writable cgroup v2 hierarchy"))
    func eachVMProcessGetsAGroupRemovedWhenItStops() throws {
        try #require(Binaries.available)
        let (d, tree) = try Self.daemon("vm \"cg\" {\n memory 32M\n}\nvm \"ch\" {\n memory 32M\n}\n")
        defer { d.stop(); rmdir(tree) }
        let pid = try SandboxTests.pid(d, "cg")
        let other = try SandboxTests.pid(d, "ch")
        let rel = String(tree.dropFirst(try #require(Self.mount).count))
        let id = try #require(row(try d.vmctl("status").stdout, "cg")?[0])
        #expect(Self.cgroupLine(pid) == "\(rel)/vm\(id)-cg-\(pid)", "\(d.log.snapshot())")
        #expect(Self.cgroupLine(other)?.hasPrefix("\(rel)/vm") == true && Self.cgroupLine(other) != Self.cgroupLine(pid))
        let group = tree + "/vm\(id)-cg-\(pid)"
        #expect((try? String(contentsOfFile: group + "/cgroup.procs", encoding: .utf8)) == "\(pid)\n")
        #expect(d.log.snapshot().contains("cgroups: each vm process gets a cgroup in \(tree)"), "\(d.log.snapshot())")
        // It still works in there, and its group goes when it stops; the other VM's stays.
        #expect(try d.vmctl("console", "cg", stdin: "hello\rpoweroff\r").stdout.contains("echo: hello"))
        #expect(try d.vmctl("wait", "cg").status == 0)
        #expect(Self.waitGone(group), "\(d.log.snapshot())")
        #expect(access(tree + "/" + (Self.cgroupLine(other)?.split(separator: "/").last.map(String.init) ?? "-"), F_OK) == 0)
        // A killed VM process's group goes too.
        let otherGroup = tree + "/" + (Self.cgroupLine(other)?.split(separator: "/").last.map(String.init) ?? "-")
        kill(other, SIGKILL)
        #expect(Self.waitGone(otherGroup), "\(d.log.snapshot())")
    }

    @Test(.enabled(if: limitable, "the cgroup v2 hierarchy has no memory and pids controllers here (cgroup v1 holds them)"))
    func theGroupIsLimitedFromTheVMsSettings() throws {
        try #require(Binaries.available)
        let (d, tree) = try Self.daemon("vm \"lim\" {\n memory 32M\n}\n")
        defer { d.stop(); rmdir(tree) }
        let pid = try SandboxTests.pid(d, "lim")
        let group = try #require(Self.mount) + (Self.cgroupLine(pid) ?? "")
        func value(_ f: String) -> String? {
            (try? String(contentsOfFile: group + "/" + f, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(value("memory.max") == String((32 + 128 + 16) << 20), "\(d.log.snapshot())")
        #expect(value("pids.max") == "68")
        if Self.controllers.contains("cpu") { #expect(value("cpu.max") == "200000 100000") }
    }

    @Test(.enabled(if: geteuid() == 0, "needs root"))
    func withoutCgroupV2TheVMRunsAndTheLogSaysSo() throws {
        try #require(Binaries.available)
        let plain = NSTemporaryDirectory() + "not-a-cgroup-\(getpid())"
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: plain) }
        let d = try TestDaemon(config: "vm \"nc\" {\n memory 32M\n}\n", extraArgs: ["--cgroup", plain])
        defer { d.stop() }
        let pid = try SandboxTests.pid(d, "nc")
        #expect(d.log.snapshot().contains("vmd: warning: cgroups: \(plain) is not in a cgroup v2 hierarchy: vm processes run without cgroup limits\n"),
                "\(d.log.snapshot())")
        // It stays in vmd's own cgroup.
        #expect(Self.cgroupLine(pid) == Self.cgroupLine(d.process.processIdentifier))
        #expect(try d.vmctl("console", "nc", stdin: "hi\rpoweroff\r").stdout.contains("echo: hi"))
    }
}
