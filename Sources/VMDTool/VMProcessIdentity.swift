#if canImport(Glibc)
import Glibc
#endif
import Foundation
import VMDCore

// Who a VM process becomes once it holds its files (vmd running as root): the `--vm-user`
// for all, else a uid and gid of its own from the VM uid range (VMDCore/VMUIDRange.swift),
// which no host user, group or subordinate id range may touch.
extension Daemon {
    /// The identity VM `e`'s process drops to: nil when vmd is not root (nothing to drop),
    /// a failure line when the VM has no usable id (its process would otherwise stay root).
    func processIdentity(_ e: VMEntry) -> Result<DropIdentity?, VMUIDRange.RangeProblem> {
        guard geteuid() == 0 else { return .success(nil) }
        if let vmIdentity { return .success(vmIdentity) }
        let range = options.vmUIDs
        guard let id = range.uid(forVM: e.id) else {
            return .failure(.init("its id \(e.id) is past the VM uid range (--vm-uid-count \(range.count)); restart vmd to reuse ids"))
        }
        // Users and groups added since vmd started: checked again at every start.
        if let clash = HostIDs.owner(ofUID: id) ?? HostIDs.owner(ofGID: id) {
            return .failure(.init("its uid and gid \(id) (--vm-uid-base \(range.base) + \(e.id)) belong to \(clash) on this host; choose another --vm-uid-base"))
        }
        return .success(DropIdentity(user: "uid \(id)", uid: id, gid: id))
    }
}

/// The host's users, groups and subordinate id ranges, as the VM uid range is checked
/// against them.
enum HostIDs {
    static func users() -> [(name: String, uid: UInt32)] {
        var out: [(name: String, uid: UInt32)] = []
        setpwent()
        // SAFETY: getpwent's record is copied before the next call; vmd is single-threaded here.
        while let p = getpwent() { out.append((String(cString: p.pointee.pw_name), p.pointee.pw_uid)) }
        endpwent()
        return out
    }

    static func groups() -> [(name: String, gid: UInt32)] {
        var out: [(name: String, gid: UInt32)] = []
        setgrent()
        // SAFETY: as in users().
        while let g = getgrent() { out.append((String(cString: g.pointee.gr_name), g.pointee.gr_gid)) }
        endgrent()
        return out
    }

    static func subordinate() -> [SubordinateRange] {
        ["/etc/subuid", "/etc/subgid"].flatMap { f in
            (try? String(contentsOfFile: f, encoding: .utf8)).map { SubordinateRange.parse($0, file: f) } ?? []
        }
    }

    /// "user NAME" when `uid` has a passwd entry.
    static func owner(ofUID uid: UInt32) -> String? {
        Daemon.passwdEntry(uid).map { "user \($0.name)" }
    }

    /// "group NAME" when `gid` has a group entry.
    static func owner(ofGID gid: UInt32) -> String? {
        var gr = group()
        var result: UnsafeMutablePointer<group>?
        var buf = [CChar](repeating: 0, count: 65536)
        // SAFETY: buf outlives the call; the name is copied at once.
        guard getgrgid_r(gid, &gr, &buf, buf.count, &result) == 0, result != nil else { return nil }
        return "group \(String(cString: gr.gr_name))"
    }

    /// vmd's start-up check of the whole range (root, no --vm-user): one line per problem.
    static func check(_ range: VMUIDRange) -> [String] {
        if case .failure(let p) = range.bounds() { return [p.description] }
        return range.conflicts(users: users(), groups: groups(), subordinate: subordinate()).map {
            "--vm-uid-base \(range.base): the VM uid range \(range.base + 1)...\(range.base + range.count - 1) contains host ids: \($0)"
        }
    }
}
