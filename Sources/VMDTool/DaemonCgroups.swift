#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import VMConfig
import VMDCore

// Each VM process in a cgroup v2 group of its own, limited from the VM's settings
// (VMDCore/VMCgroups.swift); without a usable cgroup v2 hierarchy, one log line and none.
extension Daemon {
    /// The tree VM cgroups go in (`--cgroup DIR`, else vmd's own cgroup), or nil with a
    /// log line saying why VM processes run without cgroup limits.
    static func setUpCgroups(_ option: String?, log: Logger) -> VMCgroupTree? {
        if option == "none" {
            log.info("cgroups: off (--cgroup none): vm processes run without cgroup limits")
            return nil
        }
        guard geteuid() == 0 else {
            log.info("cgroups: vmd is not root: vm processes run without cgroup limits")
            return nil
        }
        let parent: String
        var own = false, isRoot = false
        if let option {
            guard option.hasPrefix("/") else {
                log.warning("cgroups: --cgroup \(option) is not an absolute path: vm processes run without cgroup limits")
                return nil
            }
            parent = option
            // Only the directory that names it must be on cgroupfs: vmd may create `option`.
            let dir = (option as NSString).deletingLastPathComponent
            guard isCgroup2(FileManager.default.fileExists(atPath: option) ? option : dir) else {
                log.warning("cgroups: \(option) is not in a cgroup v2 hierarchy: vm processes run without cgroup limits")
                return nil
            }
        } else {
            let mountinfo = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
            let mine = (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? ""
            guard let found = VMCgroupTree.ownDirectory(mountinfo: mountinfo, procCgroup: mine), isCgroup2(found.path) else {
                log.warning("cgroups: no cgroup v2 hierarchy is mounted (or vmd's cgroup is not in it): vm processes run without cgroup limits")
                return nil
            }
            (parent, own, isRoot) = (found.path, true, found.isRoot)
        }
        switch VMCgroupTree.prepare(parent: parent, ownPID: own ? getpid() : nil, isRoot: isRoot) {
        case .failure(let p):
            log.warning("cgroups: \(p): vm processes run without cgroup limits")
            return nil
        case .success(let (tree, notes)):
            for n in notes { log.info("cgroups: \(n)") }
            log.info("cgroups: each vm process gets a cgroup in \(parent) (\(VMCgroupLimits.summary(tree.controllers)))")
            return tree
        }
    }

    /// A cgroup v2 directory has cgroup.controllers (cgroup v1 directories and other
    /// file systems do not).
    static func isCgroup2(_ path: String) -> Bool {
        access(path + "/cgroup.controllers", F_OK) == 0
    }

    /// Puts a just-spawned VM process into a cgroup of its own, before it has read its
    /// spec (so guest RAM is charged there from its first page). nil when there is no
    /// tree; a failure line when the group could not be made (the start then fails).
    func placeInCgroup(_ pid: pid_t, _ e: VMEntry, _ d: VMDefinition) -> Result<String?, VMCgroupTree.Problem> {
        guard let cgroups else { return .success(nil) }
        let limits = VMCgroupLimits.forVM(memory: d.effectiveMemory, vcpus: d.vcpus ?? 1)
        return cgroups.place(pid, in: VMCgroupTree.groupName(id: e.id, name: d.name, pid: pid), limits: limits).map { $0 }
    }

    /// Removes a reaped VM process's cgroup (a warning when it cannot).
    func removeCgroup(_ dir: String?) {
        guard let dir else { return }
        if let p = VMCgroupTree.remove(dir) { log.warning("cgroups: \(p)") }
    }
}
