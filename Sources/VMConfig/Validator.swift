#if canImport(Glibc)
import Glibc
#endif

/// Checks that need the whole file: names, duplicates, instance parents, switch interfaces.
public enum ConfigValidator {
    public static func validate(_ config: VMConfiguration) -> [ConfigDiagnostic] {
        var out: [ConfigDiagnostic] = []
        var switches: [String: SourceLocation] = [:]
        for sw in config.switches {
            if let first = switches[sw.name] {
                out.append(ConfigDiagnostic(sw.location, "switch \"\(sw.name)\" defined more than once (first at \(first))"))
            } else {
                switches[sw.name] = sw.location
            }
            if sw.interface == nil {
                out.append(ConfigDiagnostic(sw.location, "switch \"\(sw.name)\" is missing interface name"))
            }
        }
        var vms: [String: SourceLocation] = [:]
        for vm in config.vms {
            if !isValidVMName(vm.name) {
                out.append(ConfigDiagnostic(vm.location, "invalid vm name \"\(vm.name)\": use letters, digits, '.', '-' and '_', starting with a letter"))
            }
            if let first = vms[vm.name] {
                out.append(ConfigDiagnostic(vm.location, "vm \"\(vm.name)\" defined more than once (first at \(first))"))
            }
            if let parent = vm.parent, vms[parent] == nil {
                out.append(ConfigDiagnostic(vm.location, "vm \"\(vm.name)\" is an instance of unknown vm \"\(parent)\""))
            }
            if vms[vm.name] == nil { vms[vm.name] = vm.location }
        }
        return out
    }

    /// Names as OpenBSD's vmd takes them: a letter, then letters, digits, '.', '-' or '_'.
    public static func isValidVMName(_ name: String) -> Bool {
        guard let f = name.utf8.first, (f | 0x20) >= 0x61 && (f | 0x20) <= 0x7a,
              name.utf8.count <= VMLimits.maxNameLength else { return false }
        return name.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x7a)
                || c == UInt8(ascii: ".") || c == UInt8(ascii: "-") || c == UInt8(ascii: "_")
        }
    }

    /// Resolves every `owner` in the file against `users`; one diagnostic per unknown name.
    public static func checkOwners(_ config: VMConfiguration, users: any UserDatabase) -> [ConfigDiagnostic] {
        var out: [ConfigDiagnostic] = []
        func check(_ o: OwnerSpec?, _ loc: SourceLocation) {
            guard let o else { return }
            do { _ = try users.resolve(o) } catch {
                out.append(ConfigDiagnostic(loc, error.description))
            }
        }
        check(config.socketOwner, config.socketOwnerLocation ?? SourceLocation(file: "", line: 0))
        for vm in config.vms {
            check(vm.owner, vm.location)
            check(vm.allowInstance.owner, vm.location)
        }
        return out
    }

    /// VMs with instances merged with their parents (in file order).
    public static func resolvedVMs(_ config: VMConfiguration) -> [VMDefinition] {
        var done: [String: VMDefinition] = [:]
        var out: [VMDefinition] = []
        for vm in config.vms {
            var r = vm
            if let p = vm.parent, let parent = done[p] { r = vm.inheriting(from: parent) }
            if done[vm.name] == nil { done[vm.name] = r }
            out.append(r)
        }
        return out
    }
}

/// Numeric ids for an owner.
public struct ResolvedOwner: Codable, Hashable, Sendable {
    public var uid: UInt32?
    public var gid: UInt32?
    public init(uid: UInt32?, gid: UInt32?) {
        self.uid = uid
        self.gid = gid
    }
}

public struct UnknownOwnerError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// Looks up users and groups by name (numeric strings are ids).
public protocol UserDatabase: Sendable {
    func uid(forUser name: String) -> UInt32?
    func gid(forGroup name: String) -> UInt32?
    /// Supplementary and primary groups of a user id.
    func groups(ofUID uid: UInt32) -> [UInt32]
}

extension UserDatabase {
    public func resolve(_ o: OwnerSpec) throws(UnknownOwnerError) -> ResolvedOwner {
        var r = ResolvedOwner(uid: nil, gid: nil)
        if let u = o.user {
            guard let id = UInt32(u) ?? uid(forUser: u) else {
                throw UnknownOwnerError(description: "failed to get user: \(u)")
            }
            r.uid = id
        }
        if let g = o.group {
            guard let id = UInt32(g) ?? gid(forGroup: g) else {
                throw UnknownOwnerError(description: "failed to get group: \(g)")
            }
            r.gid = id
        }
        return r
    }
}

/// The host's users and groups (getpwnam/getgrnam).
public struct SystemUserDatabase: UserDatabase {
    public init() {}
    public func uid(forUser name: String) -> UInt32? {
        var pw = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buf = [CChar](repeating: 0, count: 16384)
        // SAFETY: buf outlives the call; getpwnam_r writes at most buf.count bytes.
        let rc = getpwnam_r(name, &pw, &buf, buf.count, &result)
        return rc == 0 && result != nil ? pw.pw_uid : nil
    }
    public func gid(forGroup name: String) -> UInt32? {
        var gr = group()
        var result: UnsafeMutablePointer<group>?
        var buf = [CChar](repeating: 0, count: 65536)
        // SAFETY: as above.
        let rc = getgrnam_r(name, &gr, &buf, buf.count, &result)
        return rc == 0 && result != nil ? gr.gr_gid : nil
    }
    public func groups(ofUID uid: UInt32) -> [UInt32] {
        var pw = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buf = [CChar](repeating: 0, count: 16384)
        // SAFETY: as above; pw's strings point into buf, used only inside this scope.
        guard getpwuid_r(uid, &pw, &buf, buf.count, &result) == 0, result != nil,
              let name = pw.pw_name else { return [] }
        var count: Int32 = 64
        var list = [gid_t](repeating: 0, count: 64)
        if getgrouplist(name, pw.pw_gid, &list, &count) == -1 {
            list = [gid_t](repeating: 0, count: Int(max(count, 1)))
            _ = getgrouplist(name, pw.pw_gid, &list, &count)
        }
        return Array(list.prefix(Int(max(count, 0))))
    }
}
