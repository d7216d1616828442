/// The uids (and equal gids) VM processes run as when vmd runs as root: VM id N gets
/// `base + N`, for N in 1..<count. None of them may be a uid or gid the host already uses
/// (a passwd or group entry, or a /etc/subuid or /etc/subgid range handed to a user's
/// containers): such ids may own files on the host, which a VM process must never get.
public struct VMUIDRange: Sendable, Equatable {
    public var base: UInt32
    public var count: UInt32

    /// 65536 ids (as many VM ids, instances included, as one vmd hands out before it
    /// refuses starts), from 2^30: far above login users (1000...), systemd's dynamic
    /// users (61184-65519) and the usual subuid ranges (100000 + 65536 per user).
    public static let defaultCount: UInt32 = 1 << 16

    public init(base: UInt32, count: UInt32 = Self.defaultCount) {
        self.base = base
        self.count = count
    }

    /// The first and last id of the range, or why the range does not fit in a uid.
    public func bounds() -> Result<ClosedRange<UInt32>, RangeProblem> {
        guard count >= 2 else { return .failure(RangeProblem("--vm-uid-count \(count): at least 2 (VM ids start at 1)")) }
        // 2^32-1 is (uid_t)-1, "no change" to setresuid: never a VM's uid.
        let (last, overflow) = base.addingReportingOverflow(count - 1)
        guard base > 0, !overflow, last < UInt32.max else {
            return .failure(RangeProblem("--vm-uid-base \(base) with --vm-uid-count \(count): the range must lie within 1...\(UInt32.max - 1)"))
        }
        return .success((base + 1)...last)
    }

    /// The uid (= gid) of VM id `id`, or nil when the id is outside the range.
    public func uid(forVM id: Int) -> UInt32? {
        guard id >= 1, id < Int(count) else { return nil }
        return base + UInt32(id)
    }

    /// One line per host id inside the range: passwd `users`, `groups`, and the subordinate
    /// id ranges of /etc/subuid and /etc/subgid (`subordinate`, with the file they came from).
    public func conflicts(users: [(name: String, uid: UInt32)], groups: [(name: String, gid: UInt32)],
                          subordinate: [SubordinateRange]) -> [String] {
        guard case .success(let ids) = bounds() else { return [] }
        var out: [String] = []
        for u in users where ids.contains(u.uid) { out.append("user \(u.name) has uid \(u.uid)") }
        for g in groups where ids.contains(g.gid) { out.append("group \(g.name) has gid \(g.gid)") }
        for r in subordinate where r.count > 0 {
            let last = UInt64(r.start) + UInt64(r.count) - 1
            if UInt64(ids.lowerBound) <= last && UInt64(r.start) <= UInt64(ids.upperBound) {
                out.append("\(r.file) gives \(r.owner) ids \(r.start)...\(last)")
            }
        }
        return out
    }

    public struct RangeProblem: Error, Equatable, CustomStringConvertible {
        public var description: String
        public init(_ d: String) { description = d }
    }
}

/// One line of /etc/subuid or /etc/subgid: `owner:start:count`.
public struct SubordinateRange: Sendable, Equatable {
    public var file: String
    public var owner: String
    public var start: UInt32
    public var count: UInt32

    public init(file: String, owner: String, start: UInt32, count: UInt32) {
        self.file = file
        self.owner = owner
        self.start = start
        self.count = count
    }

    /// The ranges a subuid/subgid file lists; lines that do not parse are skipped.
    public static func parse(_ text: String, file: String) -> [SubordinateRange] {
        text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            guard f.count == 3, let start = UInt32(f[1]), let count = UInt32(f[2]) else { return nil }
            return SubordinateRange(file: file, owner: String(f[0]), start: start, count: count)
        }
    }
}
