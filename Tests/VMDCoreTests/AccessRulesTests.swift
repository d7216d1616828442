import Testing
import Control
import VMConfig
@testable import VMDCore

/// vmd's permission and instance rules (VMDCore/AccessRules.swift) in-process: who may act
/// on a VM, and what a start request starts or why not.
@Suite struct AccessRulesTests {
    /// joe 1000 (groups 1000, 50 "staff"), ann 1001 (group 1001), bob 1002 (group 1002).
    struct Users: UserDatabase {
        func uid(forUser name: String) -> UInt32? { ["joe": 1000, "ann": 1001, "bob": 1002][name] }
        func gid(forGroup name: String) -> UInt32? { ["staff": 50, "joe": 1000][name] }
        func groups(ofUID uid: UInt32) -> [UInt32] { [1000: [1000, 50], 1001: [1001], 1002: [1002]][uid] ?? [] }
    }
    let rules = AccessRules(users: Users(), userName: { ["1000": "joe", "1001": "ann", "1002": "bob"][String($0)] ?? String($0) })
    static let root = PeerCredentials(pid: 1, uid: 0, gid: 0)
    static let joe = PeerCredentials(pid: 2, uid: 1000, gid: 1000)
    static let ann = PeerCredentials(pid: 3, uid: 1001, gid: 1001)
    static let bob = PeerCredentials(pid: 4, uid: 1002, gid: 1002)

    static func vm(_ id: Int, _ name: String, owner: ResolvedOwner = ResolvedOwner(uid: 0, gid: nil),
                   allow: InstancePermissions? = nil) -> AccessRules.Known {
        var d = VMDefinition(name: name, location: SourceLocation(file: "vm.conf", line: id))
        d.memory = 64 << 20
        if let allow { d.allowInstance = allow }
        return AccessRules.Known(id: id, definition: d, owner: owner)
    }

    /// joe's VM, a staff-group VM, root's VM, and a template ann may instantiate (boot and
    /// memory allowed).
    var vms: [AccessRules.Known] {
        var allow = InstancePermissions()
        allow.owner = OwnerSpec(user: "ann")
        allow.boot = true
        allow.memory = true
        return [Self.vm(1, "joes", owner: ResolvedOwner(uid: 1000, gid: nil)),
                Self.vm(2, "staffs", owner: ResolvedOwner(uid: nil, gid: 50)),
                Self.vm(3, "roots"),
                Self.vm(4, "tmpl", allow: allow)]
    }

    func start(_ target: String, _ c: PeerCredentials, _ edit: (inout StartRequest) -> Void = { _ in }) -> Result<AccessRules.StartTarget, ControlFailure> {
        var r = StartRequest(target: VMIdentifier(parsing: target))
        edit(&r)
        return rules.startTarget(r, c, among: vms)
    }

    func failure(_ r: Result<AccessRules.StartTarget, ControlFailure>) -> ControlFailure? {
        if case .failure(let f) = r { return f }
        return nil
    }

    @Test func ownersGroupMembersAndRootMayControlOthersMayNot() {
        let joes = ResolvedOwner(uid: 1000, gid: nil), staff = ResolvedOwner(uid: nil, gid: 50)
        #expect(rules.mayControl(joes, Self.joe))
        #expect(rules.mayControl(joes, Self.root))
        #expect(!rules.mayControl(joes, Self.ann))
        // joe is in staff as a supplementary group; ann is not.
        #expect(rules.mayControl(staff, Self.joe))
        #expect(!rules.mayControl(staff, Self.ann))
        // A VM owned by root (uid 0) is nobody else's.
        #expect(!rules.mayControl(ResolvedOwner(uid: 0, gid: nil), Self.joe))
        #expect(rules.mayControl(ResolvedOwner(uid: 0, gid: nil), Self.root))
    }

    @Test func startingAnExistingVMNeedsControlAndOnlyRootChangesSettings() throws {
        #expect(try start("joes", Self.joe).get() == .existing(id: 1))
        #expect(try start("2", Self.joe).get() == .existing(id: 2))
        #expect(failure(start("joes", Self.ann)) == ControlFailure(.permissionDenied, "vm joes: permission denied"))
        #expect(failure(start("joes", Self.joe) { $0.memory = 1 << 30 })
                == ControlFailure(.permissionDenied, "vm joes: only root may change its settings at start"))
        #expect(try start("joes", Self.root) { $0.memory = 1 << 30 }.get() == .existing(id: 1))
    }

    @Test func onlyRootCreatesVMsFromTheCommandLineAndOnlyWithSomethingToBoot() throws {
        let made = try start("fresh", Self.root) { $0.boot = "/bsd" }.get()
        guard case .new(let d, let owner, let instance) = made else { Issue.record("\(made)"); return }
        #expect(d.name == "fresh" && owner == ResolvedOwner(uid: 0, gid: nil) && !instance)
        #expect(failure(start("fresh", Self.joe) { $0.boot = "/bsd" })
                == ControlFailure(.permissionDenied, "vm fresh: permission denied (only root may create vms)"))
        #expect(failure(start("fresh", Self.root))?.code == .unknownVM)
        #expect(failure(start("9", Self.root) { $0.boot = "/bsd" }) == ControlFailure(.unknownVM, "vm 9: no such vm"))
        #expect(failure(start("bad/name", Self.root) { $0.boot = "/bsd" }) == ControlFailure(.invalidRequest, "vm bad/name: invalid name"))
    }

    @Test func instancesFollowAllowInstance() throws {
        // ann may, with the allowed settings; the instance is hers and keeps them.
        let made = try start("annvm", Self.ann) { $0.template = "tmpl"; $0.memory = 128 << 20; $0.boot = "/k" }.get()
        guard case .new(let d, let owner, let instance) = made else { Issue.record("\(made)"); return }
        #expect(instance && d.name == "annvm" && d.parent == "tmpl")
        #expect(owner == ResolvedOwner(uid: 1001, gid: nil) && d.owner == OwnerSpec(user: "ann"))
        #expect(d.memory == 128 << 20 && d.boot == "/k")
        // Settings `allow instance` does not list, and those with no keyword, are refused.
        let denied = ControlFailure(.permissionDenied, "vm tmpl: instances may not change that setting")
        #expect(failure(start("annvm", Self.ann) { $0.template = "tmpl"; $0.cdrom = "/cd.iso" }) == denied)
        #expect(failure(start("annvm", Self.ann) { $0.template = "tmpl"; $0.cmdline = "init=/bin/sh" }) == denied)
        #expect(failure(start("annvm", Self.ann) { $0.template = "tmpl"; $0.vcpus = 2 }) == denied)
        // Others may not; root may, with anything, keeping the template's owner.
        #expect(failure(start("bobvm", Self.bob) { $0.template = "tmpl" })
                == ControlFailure(.permissionDenied, "vm tmpl: permission denied to create instances"))
        #expect(failure(start("x", Self.joe) { $0.template = "joes" })?.code == .permissionDenied)
        let rootMade = try start("r", Self.root) { $0.template = "tmpl"; $0.vcpus = 2 }.get()
        guard case .new(let rd, let rowner, true) = rootMade else { Issue.record("\(rootMade)"); return }
        #expect(rowner == ResolvedOwner(uid: 0, gid: nil) && rd.owner == nil && rd.vcpus == 2)
        // Names: new, valid, given by name; the template must exist.
        #expect(failure(start("joes", Self.ann) { $0.template = "tmpl" }) == ControlFailure(.alreadyRunning, "vm joes: already exists"))
        #expect(failure(start("5", Self.ann) { $0.template = "tmpl" })?.code == .invalidRequest)
        #expect(failure(start("-x", Self.ann) { $0.template = "tmpl" })?.code == .invalidRequest)
        #expect(failure(start("y", Self.ann) { $0.template = "nope" }) == ControlFailure(.unknownVM, "vm nope: no such vm"))
    }

    @Test func loadReloadResetAndLogAreRootsOnly() {
        for r: ControlRequest in [.load(path: "/etc/vm.conf"), .reload, .reset(.all), .log(verbose: true)] {
            #expect(AccessRules.rootOnly(r, Self.joe) == ControlFailure(.permissionDenied, "\(r.commandName): permission denied"))
            #expect(AccessRules.rootOnly(r, Self.root) == nil)
        }
        // The others are checked against the VM they name.
        #expect(AccessRules.rootOnly(.status(target: nil), Self.joe) == nil)
        #expect(AccessRules.rootOnly(.stop(target: .name("joes"), force: false, wait: false), Self.joe) == nil)
    }

    @Test func filesOpenWithTheOwnersRightsNeverTheRequesters() {
        let withGroups = AccessRules(users: Users(), userName: { String($0) }, primaryGID: { $0 == 1000 ? 1000 : nil })
        // joe: his primary group first, then his others.
        #expect(withGroups.fileIdentity(ResolvedOwner(uid: 1000, gid: nil), vmUID: 5) == FileIdentity(uid: 1000, gid: 1000, groups: [1000, 50], name: "1000"))
        // A uid without a passwd entry gets nogroup (65534) as primary group.
        #expect(withGroups.fileIdentity(ResolvedOwner(uid: 1001, gid: nil), vmUID: 5)?.gid == 65534)
        #expect(withGroups.fileIdentity(ResolvedOwner(uid: 1001, gid: nil), vmUID: 5)?.groups == [65534, 1001])
        // An owner group alone: the VM process's uid, in that group only.
        #expect(withGroups.fileIdentity(ResolvedOwner(uid: nil, gid: 50), vmUID: 1_073_741_825) == FileIdentity(uid: 1_073_741_825, gid: 50, groups: [50], name: "group 50"))
        // Root's VMs (and root as group) open with vmd's own rights.
        #expect(withGroups.fileIdentity(ResolvedOwner(uid: 0, gid: nil), vmUID: 5) == nil)
        #expect(withGroups.fileIdentity(ResolvedOwner(uid: nil, gid: 0), vmUID: 5) == nil)
        #expect(withGroups.fileIdentity(ResolvedOwner(uid: nil, gid: nil), vmUID: 5) == nil)
    }
}
