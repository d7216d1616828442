import Control
import VMConfig

/// vmd's permission and instance rules, without processes: who may act on a VM, and what a
/// start request starts (an existing VM, a new instance of a template, a VM made from the
/// command line) or why not. The daemon applies the answer to its state (VMDTool's
/// DaemonStart.swift); Tests/VMDCoreTests/AccessRulesTests.swift checks the rules.
public struct AccessRules: Sendable {
    public let users: any UserDatabase
    /// A user's name for an instance's `owner` (the number when it has none).
    public let userName: @Sendable (UInt32) -> String
    /// A user's primary group (passwd), nil when the uid has no entry.
    public let primaryGID: @Sendable (UInt32) -> UInt32?

    public init(users: any UserDatabase, userName: @escaping @Sendable (UInt32) -> String,
                primaryGID: @escaping @Sendable (UInt32) -> UInt32? = { _ in nil }) {
        self.users = users
        self.userName = userName
        self.primaryGID = primaryGID
    }

    /// Requests only root may make (`load`, `reload`, `reset`, `log`): the refusal, or nil.
    public static func rootOnly(_ request: ControlRequest, _ c: PeerCredentials) -> ControlFailure? {
        guard c.uid != 0 else { return nil }
        switch request {
        case .load, .reload, .reset, .log:
            return ControlFailure(.permissionDenied, "\(request.commandName): permission denied")
        default:
            return nil
        }
    }

    /// Whose rights open a VM's files (UserFileAccess): its owner user, with that user's
    /// primary (65534 without a passwd entry) and supplementary groups; for an owner group
    /// alone, the VM process's uid `vmUID` in that group only; nil (vmd's own rights) for a
    /// VM without a non-root owner. Who asks does not matter.
    public func fileIdentity(_ o: ResolvedOwner, vmUID: UInt32) -> FileIdentity? {
        if let uid = o.uid, uid != 0 {
            let gid = primaryGID(uid) ?? 65534
            var groups = users.groups(ofUID: uid)
            if !groups.contains(gid) { groups.insert(gid, at: 0) }
            return FileIdentity(uid: uid, gid: gid, groups: groups, name: userName(uid))
        }
        if let gid = o.gid, gid != 0 {
            return FileIdentity(uid: vmUID, gid: gid, groups: [gid], name: "group \(gid)")
        }
        return nil
    }

    /// What the rules need to know of one VM.
    public struct Known: Sendable {
        public var id: Int
        public var definition: VMDefinition
        public var owner: ResolvedOwner
        public init(id: Int, definition: VMDefinition, owner: ResolvedOwner) {
            self.id = id
            self.definition = definition
            self.owner = owner
        }
    }

    /// What a start request starts.
    public enum StartTarget: Sendable, Equatable {
        /// The VM with this id, with the request as given.
        case existing(id: Int)
        /// A new entry, to be added with this definition and owner; `instance`: made by -t
        /// (its settings are its own, so it is then started with a plain request).
        case new(VMDefinition, owner: ResolvedOwner, instance: Bool)
    }

    /// Root, the owner uid, or a member (primary or supplementary) of the owner gid.
    public func mayControl(_ owner: ResolvedOwner, _ c: PeerCredentials) -> Bool {
        c.uid == 0 || matches(owner, c)
    }

    func matches(_ owner: ResolvedOwner, _ c: PeerCredentials) -> Bool {
        if let u = owner.uid, u == c.uid, u != 0 { return true }
        if let g = owner.gid, c.gid == g || users.groups(ofUID: c.uid).contains(g) { return true }
        return false
    }

    /// The VM `id` names among `vms`.
    public static func find(_ id: VMIdentifier, in vms: [Known]) -> Known? {
        switch id {
        case .id(let n): return vms.first { $0.id == n }
        case .name(let s): return vms.first { $0.definition.name == s }
        }
    }

    /// What `req` from `c` starts among `vms`, or the failure to answer.
    public func startTarget(_ req: StartRequest, _ c: PeerCredentials, among vms: [Known]) -> Result<StartTarget, ControlFailure> {
        func fail(_ code: ControlFailure.Code, _ m: String) -> Result<StartTarget, ControlFailure> {
            .failure(ControlFailure(code, m))
        }
        if let template = req.template {
            // -t: a new VM `target` as an instance of `template`.
            guard case .name(let name) = req.target else { return fail(.invalidRequest, "start -t: give the new instance a name") }
            guard let parent = vms.first(where: { $0.definition.name == template }) else {
                return fail(.unknownVM, "vm \(template): no such vm")
            }
            guard Self.find(.name(name), in: vms) == nil else { return fail(.alreadyRunning, "vm \(name): already exists") }
            guard ConfigValidator.isValidVMName(name) else { return fail(.invalidRequest, "vm \(name): invalid name") }
            let allow = parent.definition.allowInstance
            if c.uid != 0 {
                let permitted = allow.owner.flatMap { try? users.resolve($0) }.map { matches($0, c) } ?? false
                guard permitted else { return fail(.permissionDenied, "vm \(template): permission denied to create instances") }
                // initrd, cmdline, vcpus and accel have no `allow instance` keyword: root's only.
                if StartOverride.denied(req, by: allow) != nil {
                    return fail(.permissionDenied, "vm \(template): instances may not change that setting")
                }
            }
            var d = VMDefinition(name: name, parent: template, location: parent.definition.location)
            d = d.inheriting(from: parent.definition)
            // The instance keeps the request's settings as its own (a later plain start of
            // it runs them again).
            d = StartOverride.effective(d, req)
            if c.uid != 0 { d.owner = OwnerSpec(user: userName(c.uid)) }
            return .success(.new(d, owner: c.uid == 0 ? parent.owner : ResolvedOwner(uid: c.uid, gid: nil), instance: true))
        }
        if let e = Self.find(req.target, in: vms) {
            guard mayControl(e.owner, c) else { return fail(.permissionDenied, "vm \(e.definition.name): permission denied") }
            if !StartOverride.given(in: req).isEmpty && c.uid != 0 {
                return fail(.permissionDenied, "vm \(e.definition.name): only root may change its settings at start")
            }
            return .success(.existing(id: e.id))
        }
        // A VM not in the configuration: root may create one from the options alone.
        guard case .name(let name) = req.target else { return fail(.unknownVM, "vm \(req.target): no such vm") }
        guard c.uid == 0 else { return fail(.permissionDenied, "vm \(name): permission denied (only root may create vms)") }
        guard req.boot != nil || req.cdrom != nil || !req.disks.isEmpty else {
            return fail(.unknownVM, "vm \(name): no such vm (give -b, -r or -d to create one)")
        }
        guard ConfigValidator.isValidVMName(name) else { return fail(.invalidRequest, "vm \(name): invalid name") }
        return .success(.new(VMDefinition(name: name, location: SourceLocation(file: "vmctl", line: 0)),
                             owner: ResolvedOwner(uid: 0, gid: nil), instance: false))
    }
}
