#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import VMDCore

/// VM processes' cgroups (VMDCore/VMCgroups.swift): limits from the VM's settings, finding
/// vmd's own cgroup v2 directory, and what is written where, on a stand-in tree of plain
/// files (the kernel's own files are exercised by VMDTests' CgroupTests).
@Suite struct VMCgroupsTests {
    @Test func limitsComeFromMemoryAndVCPUs() {
        let l = VMCgroupLimits.forVM(memory: 512 << 20, vcpus: 2)
        #expect(l.memoryMax == (512 << 20) + (128 << 20) + 2 * (16 << 20))
        #expect(l.pidsMax == 72)
        #expect(l.cpuQuota == 300_000)
        #expect(VMCgroupLimits.forVM(memory: UInt64.max - 1, vcpus: 1).memoryMax == UInt64.max)
        let all = Dictionary(uniqueKeysWithValues: l.files(["memory", "pids", "cpu"]))
        #expect(all == ["memory.max": String((512 + 128 + 32) << 20), "pids.max": "72", "cpu.max": "300000 100000"])
        #expect(l.files(["pids"]).map(\.0) == ["pids.max"])
        #expect(VMCgroupLimits.forVM(memory: UInt64.max, vcpus: 1).files(["memory"]).first?.1 == "max")
    }

    @Test func ownDirectoryJoinsTheCgroup2MountAndTheZeroLine() {
        // A hybrid host: v1 controllers, the v2 hierarchy at .../unified, vmd in its root.
        let hybrid = """
            30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
            31 30 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            40 30 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
            """
        let r1 = VMCgroupTree.ownDirectory(mountinfo: hybrid, procCgroup: "4:memory:/x\n0::/\n")
        #expect(r1?.path == "/sys/fs/cgroup/unified" && r1?.isRoot == true)
        // A unified host, vmd in a systemd service (optional fields before the separator).
        let unified = """
            20 1 0:19 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
            """
        let r2 = VMCgroupTree.ownDirectory(mountinfo: unified, procCgroup: "0::/system.slice/vmd.service\n")
        #expect(r2?.path == "/sys/fs/cgroup/system.slice/vmd.service" && r2?.isRoot == false)
        // A bind mount of a sub-cgroup (ROOT not "/") maps nothing; no cgroup2 at all: nil.
        #expect(VMCgroupTree.ownDirectory(mountinfo: "50 1 0:19 /a /mnt rw - cgroup2 cgroup2 rw", procCgroup: "0::/a\n") == nil)
        #expect(VMCgroupTree.ownDirectory(mountinfo: hybrid.split(separator: "\n").dropLast().joined(separator: "\n"),
                                          procCgroup: "0::/\n") == nil)
        #expect(VMCgroupTree.ownDirectory(mountinfo: unified, procCgroup: "4:memory:/x\n") == nil)
    }

    /// A directory laid out as a cgroup: `files` written into it.
    static func standIn(_ files: [String: String]) throws -> String {
        var template = Array((NSTemporaryDirectory() + "cgtest.XXXXXX").utf8CString)
        let dir = try #require(mkdtemp(&template).map { String(cString: $0) })
        for (name, text) in files { try text.write(toFile: dir + "/" + name, atomically: false, encoding: .utf8) }
        return dir
    }

    static func read(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }

    @Test func prepareEnablesTheOfferedControllersNotYetEnabled() throws {
        let dir = try Self.standIn(["cgroup.controllers": "cpuset cpu io memory hugetlb pids\n", "cgroup.subtree_control": "memory\n"])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (tree, notes) = try VMCgroupTree.prepare(parent: dir, ownPID: nil, isRoot: false).get()
        #expect(tree.controllers == ["memory", "pids", "cpu"])
        #expect(notes.isEmpty)
        #expect(Self.read(dir + "/cgroup.subtree_control") == "+pids +cpu")
    }

    @Test func prepareWithoutTheControllersSaysSoAndLimitsNothing() throws {
        let dir = try Self.standIn(["cgroup.controllers": "hugetlb\n", "cgroup.subtree_control": ""])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (tree, notes) = try VMCgroupTree.prepare(parent: dir, ownPID: nil, isRoot: true).get()
        #expect(tree.controllers.isEmpty)
        #expect(notes == ["no memory, pids, cpu controller in \(dir) (on a host that mounts cgroup v1 controllers too, they are bound there)"])
        #expect(Self.read(dir + "/cgroup.subtree_control") == "")
        // Without cgroup.controllers it is no cgroup v2 directory.
        try FileManager.default.removeItem(atPath: dir + "/cgroup.controllers")
        #expect(throws: VMCgroupTree.Problem.self) { try VMCgroupTree.prepare(parent: dir, ownPID: nil, isRoot: true).get() }
        #expect(throws: VMCgroupTree.Problem.self) { try VMCgroupTree.prepare(parent: dir + "/cgroup.subtree_control", ownPID: nil, isRoot: true).get() }
    }

    @Test func placeWritesTheLimitsOfTheEnabledControllersThenThePID() throws {
        let dir = try Self.standIn([:])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let limits = VMCgroupLimits.forVM(memory: 64 << 20, vcpus: 1)
        let group = try VMCgroupTree(parent: dir, controllers: ["memory", "pids"]).place(4242, in: "vm3-a-4242", limits: limits).get()
        #expect(group == dir + "/vm3-a-4242")
        #expect(Self.read(group + "/memory.max") == String((64 + 128 + 16) << 20))
        #expect(Self.read(group + "/pids.max") == "68")
        #expect(Self.read(group + "/cpu.max") == nil)
        #expect(Self.read(group + "/cgroup.procs") == "4242")
        let bare = try VMCgroupTree(parent: dir, controllers: []).place(7, in: "vm4-b-7", limits: limits).get()
        #expect(try FileManager.default.contentsOfDirectory(atPath: bare) == ["cgroup.procs"])
        #expect(VMCgroupTree.groupName(id: 3, name: "web.1", pid: 99) == "vm3-web.1-99")
    }

    @Test func anOOMKillIsToldFromMemoryEvents() throws {
        #expect(VMCgroupTree.oomKills(memoryEvents: "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n") == 1)
        #expect(VMCgroupTree.oomKills(memoryEvents: "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n") == 0)
        #expect(VMCgroupTree.oomKills(memoryEvents: "") == 0)
        let dir = try Self.standIn(["memory.events": "oom 1\noom_kill 2\n", "memory.max": "211812352\n"])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(VMCgroupTree.oomNote(dir) == "the kernel's OOM killer, at its cgroup's memory.max (211812352 bytes: the VM's memory + its overhead)")
        try "oom_kill 0\n".write(toFile: dir + "/memory.events", atomically: false, encoding: .utf8)
        #expect(VMCgroupTree.oomNote(dir) == nil)
    }
}
