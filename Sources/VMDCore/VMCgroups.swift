#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The cgroup v2 limits of one VM process, derived from the VM's settings.
public struct VMCgroupLimits: Sendable, Equatable {
    /// memory.max in bytes: the guest's memory plus `overhead(vcpus:)`.
    public var memoryMax: UInt64
    /// pids.max: threads of the VM process (it cannot fork: its seccomp filter allows
    /// clone with thread flags only).
    public var pidsMax: Int
    /// cpu.max quota in microseconds per `cpuPeriod`: the vCPUs plus one core for the
    /// device, console and timer threads.
    public var cpuQuota: Int
    public static let cpuPeriod = 100_000

    /// What the VM process needs besides guest RAM: the Swift runtime and its threads'
    /// stacks, the software CPU's block cache (~1.6 MiB per vCPU), qcow2 and virtio
    /// buffers, firmware, KVM's own structures and page tables, the page cache of its
    /// images (reclaimable), with room to spare. docs/vmd.md says how it was chosen.
    public static func overhead(vcpus: Int) -> UInt64 {
        (128 << 20) + UInt64(max(vcpus, 1)) * (16 << 20)
    }

    public static func forVM(memory: UInt64, vcpus: Int) -> VMCgroupLimits {
        let v = max(vcpus, 1)
        let (sum, overflow) = memory.addingReportingOverflow(overhead(vcpus: v))
        return VMCgroupLimits(memoryMax: overflow ? UInt64.max : sum, pidsMax: 64 + 4 * v,
                              cpuQuota: (v + 1) * cpuPeriod)
    }

    public init(memoryMax: UInt64, pidsMax: Int, cpuQuota: Int) {
        self.memoryMax = memoryMax
        self.pidsMax = pidsMax
        self.cpuQuota = cpuQuota
    }

    /// The rule for each enabled controller, for vmd's log.
    public static func summary(_ controllers: Set<String>) -> String {
        var out: [String] = []
        if controllers.contains("memory") { out.append("memory.max = memory + 128M + 16M per vcpu") }
        if controllers.contains("pids") { out.append("pids.max = 64 + 4 per vcpu") }
        if controllers.contains("cpu") { out.append("cpu.max = vcpus + 1 cores") }
        return out.isEmpty ? "no limits" : out.joined(separator: ", ")
    }

    /// The interface files and what is written to each, for the enabled `controllers`.
    public func files(_ controllers: Set<String>) -> [(String, String)] {
        var out: [(String, String)] = []
        if controllers.contains("memory") { out.append(("memory.max", memoryMax == UInt64.max ? "max" : String(memoryMax))) }
        if controllers.contains("pids") { out.append(("pids.max", String(pidsMax))) }
        if controllers.contains("cpu") { out.append(("cpu.max", "\(cpuQuota) \(Self.cpuPeriod)")) }
        return out
    }
}

/// Where VM processes' cgroups go: one directory of a cgroup v2 hierarchy (by default
/// vmd's own cgroup), a sub-cgroup per VM process in it, with the controllers vmd could
/// enable for them there.
public struct VMCgroupTree: Sendable {
    /// The controllers vmd limits VM processes with, when the hierarchy has them.
    public static let wanted = ["memory", "pids", "cpu"]
    public let parent: String
    /// Enabled in `parent`'s cgroup.subtree_control (a subset of `wanted`).
    public let controllers: Set<String>

    public struct Problem: Error, CustomStringConvertible {
        public var description: String
        public init(_ d: String) { description = d }
    }

    /// The cgroup v2 directory of this process: the cgroup2 mount point from
    /// /proc/self/mountinfo joined with the "0::" line of /proc/self/cgroup; and whether
    /// it is the hierarchy's root. nil without a cgroup2 mount or a "0::" line.
    public static func ownDirectory(mountinfo: String, procCgroup: String) -> (path: String, isRoot: Bool)? {
        var mount: String?
        for line in mountinfo.split(separator: "\n") {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
            let halves = line.components(separatedBy: " - ")
            guard halves.count >= 2, halves[1].split(separator: " ").first == "cgroup2" else { continue }
            let f = halves[0].split(separator: " ")
            // Only a mount of the hierarchy's root maps cgroup paths to directories.
            guard f.count >= 5, f[3] == "/" else { continue }
            mount = String(f[4]).replacingOccurrences(of: "\\040", with: " ")
            break
        }
        guard let mount else { return nil }
        guard let own = procCgroup.split(separator: "\n").first(where: { $0.hasPrefix("0::") })?.dropFirst(3) else { return nil }
        let rel = own.hasSuffix(" (deleted)") ? String(own.dropLast(10)) : String(own)
        return (rel == "/" ? mount : mount + rel, rel == "/")
    }

    /// Makes `parent` ready for VM cgroups: creates it if missing, enables the wanted
    /// controllers it offers in its subtree_control. A cgroup v2 rule: a non-root cgroup
    /// with processes cannot enable controllers for children, so when `parent` is vmd's
    /// own cgroup (`ownPID`, not the root) and holds vmd alone, vmd first moves itself
    /// into `parent/vmd`, as systemd's delegation asks. `notes` say what is missing.
    public static func prepare(parent: String, ownPID: Int32?, isRoot: Bool) -> Result<(VMCgroupTree, notes: [String]), Problem> {
        var isDir: ObjCBool = false
        if !FileManager.default.fileExists(atPath: parent, isDirectory: &isDir) {
            guard mkdir(parent, 0o755) == 0 || errno == EEXIST else {
                return .failure(Problem("cannot create cgroup \(parent): \(String(cString: strerror(errno)))"))
            }
        } else if !isDir.boolValue {
            return .failure(Problem("\(parent) is not a directory"))
        }
        guard access(parent, W_OK) == 0 else {
            return .failure(Problem("cgroup \(parent) is not writable: \(String(cString: strerror(errno)))"))
        }
        guard let offered = read(parent + "/cgroup.controllers") else {
            return .failure(Problem("\(parent) has no cgroup.controllers: not a cgroup v2 directory"))
        }
        let available = Set(offered.split(whereSeparator: \.isWhitespace).map(String.init))
        var enabled = Set((read(parent + "/cgroup.subtree_control") ?? "").split(whereSeparator: \.isWhitespace).map(String.init))
        var notes: [String] = []
        let unavailable = wanted.filter { !available.contains($0) }
        if !unavailable.isEmpty {
            notes.append("no \(unavailable.joined(separator: ", ")) controller in \(parent) (on a host that mounts cgroup v1 controllers too, they are bound there)")
        }
        let toEnable = wanted.filter { available.contains($0) && !enabled.contains($0) }
        if !toEnable.isEmpty {
            let line = toEnable.map { "+" + $0 }.joined(separator: " ")
            var err = write(line, to: parent + "/cgroup.subtree_control")
            if err == EBUSY, let pid = ownPID, !isRoot,
               (read(parent + "/cgroup.procs") ?? "").split(separator: "\n") == [Substring(String(pid))] {
                // vmd is alone in its cgroup: step into a leaf so the parent may enable.
                let leaf = parent + "/vmd"
                if mkdir(leaf, 0o755) == 0 || errno == EEXIST, write(String(pid), to: leaf + "/cgroup.procs") == 0 {
                    notes.append("vmd moved itself into \(leaf)")
                    err = write(line, to: parent + "/cgroup.subtree_control")
                }
            }
            if err == 0 {
                enabled.formUnion(toEnable)
            } else {
                notes.append("cannot enable \(toEnable.joined(separator: ", ")) in \(parent)/cgroup.subtree_control: \(String(cString: strerror(err)))\(err == EBUSY ? " (the cgroup holds processes; give vmd a cgroup of its own, e.g. systemd's Delegate=yes, or name one with --cgroup)" : "")")
            }
        }
        return .success((VMCgroupTree(parent: parent, controllers: enabled.intersection(wanted)), notes))
    }

    public init(parent: String, controllers: Set<String>) {
        self.parent = parent
        self.controllers = controllers
    }

    /// The name of VM `id`'s group for VM process `pid` (unique while the process lives;
    /// the VM's name for whoever reads the tree).
    public static func groupName(id: Int, name: String, pid: Int32) -> String {
        "vm\(id)-\(name)-\(pid)"
    }

    /// Creates the group `name` with `limits` and moves `pid` into it; its directory.
    /// A left-over empty group of that name (a vmd killed before it removed it) is replaced.
    public func place(_ pid: Int32, in name: String, limits: VMCgroupLimits) -> Result<String, Problem> {
        let dir = parent + "/" + name
        if mkdir(dir, 0o755) != 0 {
            guard errno == EEXIST, rmdir(dir) == 0, mkdir(dir, 0o755) == 0 else {
                return .failure(Problem("cannot create cgroup \(dir): \(String(cString: strerror(errno)))"))
            }
        }
        for (file, value) in limits.files(controllers) {
            let err = Self.write(value, to: dir + "/" + file)
            if err != 0 {
                _ = rmdir(dir)
                return .failure(Problem("cannot set \(dir)/\(file) to \(value): \(String(cString: strerror(err)))"))
            }
        }
        let err = Self.write(String(pid), to: dir + "/cgroup.procs")
        if err != 0 {
            _ = rmdir(dir)
            return .failure(Problem("cannot move pid \(pid) into \(dir): \(String(cString: strerror(err)))"))
        }
        return .success(dir)
    }

    /// Removes a VM's group once its process has been reaped. The kernel may list an
    /// exiting process a moment longer (EBUSY): retried for up to ~2 s.
    public static func remove(_ dir: String) -> Problem? {
        for _ in 0..<200 {
            if rmdir(dir) == 0 || errno == ENOENT { return nil }
            guard errno == EBUSY else { break }
            usleep(10_000)
        }
        return Problem("cannot remove cgroup \(dir): \(String(cString: strerror(errno)))")
    }

    /// The `oom_kill` count of a group's memory.events (0 without one).
    public static func oomKills(memoryEvents text: String) -> Int {
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count == 2, f[0] == "oom_kill", let n = Int(f[1]) { return n }
        }
        return 0
    }

    /// Why a VM process that died of SIGKILL was killed, when its group's memory limit did
    /// it: the words to add to its exit, or nil. Read before the group is removed.
    public static func oomNote(_ dir: String) -> String? {
        guard let text = read(dir + "/memory.events"), oomKills(memoryEvents: text) > 0 else { return nil }
        let limit = read(dir + "/memory.max")?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        return "the kernel's OOM killer, at its cgroup's memory.max (\(limit) bytes: the VM's memory + its overhead)"
    }

    static func read(_ path: String) -> String? {
        try? String(contentsOfFile: path, encoding: .utf8)
    }

    /// Writes `value` to a cgroup interface file in one write; 0 or the errno.
    static func write(_ value: String, to path: String) -> Int32 {
        // O_CREAT: cgroupfs refuses to create files, so only a stand-in tree (tests) gets one.
        let fd = open(path, O_WRONLY | O_TRUNC | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        // SAFETY: bytes outlives the call; its count bounds the write.
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        return n == bytes.count ? 0 : (n < 0 ? errno : EIO)
    }
}
