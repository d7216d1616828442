// The parsed form of a vm.conf file: plain values, Codable and Equatable, so the daemon can
// ship them over the control socket and tests can compare them.

/// Where something was written: the file (as named by the user or by `include`) and the line.
public struct SourceLocation: Codable, Hashable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public init(file: String, line: Int) {
        self.file = file
        self.line = line
    }
    public var description: String { "\(file):\(line)" }
}

/// `owner user[:group]`, `owner :group` or `owner 1000`: names as written, resolved later.
public struct OwnerSpec: Codable, Hashable, Sendable, CustomStringConvertible {
    public var user: String?
    public var group: String?
    public init(user: String? = nil, group: String? = nil) {
        self.user = user
        self.group = group
    }
    /// Parses `user`, `user:group`, `:group` (as vm.conf and vmctl write it).
    public init(parsing text: String) {
        if let colon = text.firstIndex(of: ":") {
            let u = String(text[..<colon])
            let g = String(text[text.index(after: colon)...])
            user = u.isEmpty ? nil : u
            group = g.isEmpty ? nil : g
        } else {
            user = text.isEmpty ? nil : text
            group = nil
        }
    }
    public var description: String {
        switch (user, group) {
        case let (u?, g?): return "\(u):\(g)"
        case let (u?, nil): return u
        case let (nil, g?): return ":\(g)"
        case (nil, nil): return ":"
        }
    }
}

public enum BootDevice: String, Codable, Hashable, Sendable, CaseIterable {
    case cdrom, disk, net
}

public enum DiskFormat: String, Codable, Hashable, Sendable, CaseIterable {
    case raw, qcow2
}

/// How a VM's vCPUs run. `auto` means KVM when /dev/kvm is usable, else the emulator.
public enum Accelerator: String, Codable, Hashable, Sendable, CaseIterable {
    case kvm, emulator, auto
}

/// The software CPU's instruction-set level (`cpu-level`), the emulator's `X86CPULevel`
/// names: `baseline` (x86-64: SSE2) or `v2` (x86-64-v2: SSE3 to SSE4.2, POPCNT, CX16,
/// LAHF/SAHF). KVM guests see the CPUID KVM offers, whatever this says.
public enum CPULevel: String, Codable, Hashable, Sendable, CaseIterable {
    case baseline, v2, v3
}

public struct DiskSpec: Codable, Hashable, Sendable {
    public var path: String
    /// nil: not given; derived from the image's signature when the VM starts (raw otherwise).
    public var format: DiskFormat?
    public init(path: String, format: DiskFormat? = nil) {
        self.path = path
        self.format = format
    }
}

/// A 48-bit Ethernet address.
public struct MACAddress: Codable, Hashable, Sendable, CustomStringConvertible {
    public var bytes: [UInt8]
    public init?(bytes: [UInt8]) {
        guard bytes.count == 6 else { return nil }
        self.bytes = bytes
    }
    /// Accepts `xx:xx:xx:xx:xx:xx` with one or two hex digits per byte (like ether_aton).
    public init?(parsing text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard (1...2).contains(p.count), let b = UInt8(p, radix: 16) else { return nil }
            out.append(b)
        }
        bytes = out
    }
    public var description: String {
        bytes.map { b in
            let s = String(b, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined(separator: ":")
    }
}

public struct InterfaceSpec: Codable, Hashable, Sendable {
    /// `local interface`: vmd gives it a subnet and answers DHCP.
    public var isLocal: Bool = false
    /// `tap` or `tapN` (on Linux any tap interface name).
    public var name: String?
    public var switchName: String?
    public var group: String?
    public var lladdr: MACAddress?
    public var locked: Bool = false
    public var rdomain: Int?
    public var up: Bool = true
    public init() {}
}

/// `allow instance { ... }`: what owners of instances may change.
public struct InstancePermissions: Codable, Hashable, Sendable {
    public var boot = false
    public var memory = false
    public var interface = false
    public var disk = false
    public var cdrom = false
    public var instance = false
    public var owner: OwnerSpec?
    public init() {}
    public var isEmpty: Bool { self == InstancePermissions() }
}

public struct VMDefinition: Codable, Hashable, Sendable {
    public var name: String
    /// `vm parent instance name { ... }`: the template this VM is an instance of.
    public var parent: String?
    public var location: SourceLocation
    public var enabled = true
    public var boot: String?
    public var bootDevice: BootDevice?
    public var cdrom: String?
    public var disks: [DiskSpec] = []
    public var interfaces: [InterfaceSpec] = []
    /// `interfaces N`: minimum number of interfaces.
    public var interfaceCount: Int?
    /// Bytes; a whole number of MiB after validation.
    public var memory: UInt64?
    public var owner: OwnerSpec?
    public var allowInstance = InstancePermissions()
    // Beyond OpenBSD:
    public var vcpus: Int?
    public var initrd: String?
    public var cmdline: String?
    public var accel: Accelerator?
    /// nil: the software CPU's default level.
    public var cpuLevel: CPULevel?
    /// `sev` / `seves`: accepted; a start fails with one line, SEV is not available here.
    public var sev: SEVMode?

    public init(name: String, parent: String? = nil, location: SourceLocation) {
        self.name = name
        self.parent = parent
        self.location = location
    }

    public static let defaultMemory: UInt64 = 512 << 20

    /// Memory with the default applied.
    public var effectiveMemory: UInt64 { memory ?? Self.defaultMemory }
    /// Interface count: the larger of `interfaces N` and the interface statements.
    public var effectiveInterfaceCount: Int { max(interfaceCount ?? 0, interfaces.count) }

    /// This VM as an instance of `parent`: the parent's settings with ours on top, except
    /// what is exclusive to one VM (disks, interface names and lladdrs, allow instance).
    public func inheriting(from parent: VMDefinition) -> VMDefinition {
        var r = self
        r.boot = boot ?? parent.boot
        r.bootDevice = bootDevice ?? parent.bootDevice
        r.cdrom = cdrom ?? parent.cdrom
        r.memory = memory ?? parent.memory
        r.owner = owner ?? parent.owner
        r.vcpus = vcpus ?? parent.vcpus
        r.initrd = initrd ?? parent.initrd
        r.cmdline = cmdline ?? parent.cmdline
        r.accel = accel ?? parent.accel
        r.cpuLevel = cpuLevel ?? parent.cpuLevel
        r.sev = sev ?? parent.sev
        r.interfaceCount = interfaceCount ?? parent.interfaceCount
        if interfaces.isEmpty {
            r.interfaces = parent.interfaces.map { i in
                var c = i
                c.name = nil
                c.lladdr = nil
                return c
            }
        }
        return r
    }
}

public struct SwitchDefinition: Codable, Hashable, Sendable {
    public var name: String
    public var location: SourceLocation
    public var enabled = true
    public var interface: String?
    public var group: String?
    public var locked = false
    public var rdomain: Int?
    public var up = true
    public init(name: String, location: SourceLocation) {
        self.name = name
        self.location = location
    }
}

public struct StaggeredStart: Codable, Hashable, Sendable {
    public var parallel: Int
    public var delay: Int
    public init(parallel: Int, delay: Int) {
        self.parallel = parallel
        self.delay = delay
    }
}

/// An IP prefix as written (`100.64.0.0/10`, `fd00::/8`), checked by the parser.
public struct IPPrefix: Codable, Hashable, Sendable, CustomStringConvertible {
    public var address: String
    public var length: Int
    public init(address: String, length: Int) {
        self.address = address
        self.length = length
    }
    public var description: String { "\(address)/\(length)" }
}

/// `agentx [context c] [path p]` (vm.conf(5)): the SNMP context and the master's socket.
public struct AgentXSettings: Codable, Hashable, Sendable {
    public var context: String?
    public var path: String?
    public init(context: String? = nil, path: String? = nil) {
        self.context = context
        self.path = path
    }
}

/// `sev` / `seves` (vm.conf(5)): AMD SEV memory encryption, with SEV-ES register state.
public enum SEVMode: String, Codable, Hashable, Sendable {
    case sev, seves
}

/// A whole vm.conf: global settings, switches and VMs in file order.
public struct VMConfiguration: Codable, Hashable, Sendable {
    public var localPrefix: IPPrefix?
    /// `local inet6` turns IPv6 on; the prefix is nil when vmd picks a random fd00::/8 one.
    public var localInet6Enabled = false
    public var localInet6Prefix: IPPrefix?
    public var socketOwner: OwnerSpec?
    /// Where `socket owner` was given, for diagnostics (`checkOwners`).
    public var socketOwnerLocation: SourceLocation?
    public var staggeredStart: StaggeredStart?
    /// `agentx [context c] [path p]`: accepted as upstream's grammar has it; vmd has no
    /// AgentX (SNMP) subagent, so it is not used.
    public var agentx: AgentXSettings?
    public var switches: [SwitchDefinition] = []
    public var vms: [VMDefinition] = []
    public init() {}

    public static let defaultLocalPrefix = IPPrefix(address: "100.64.0.0", length: 10)

    public func vm(named name: String) -> VMDefinition? { vms.first { $0.name == name } }
    public func switchDefinition(named name: String) -> SwitchDefinition? {
        switches.first { $0.name == name }
    }
}

/// Limits shared with OpenBSD's vmd (vmmvar.h) so configs behave the same.
public enum VMLimits {
    public static let maxInterfaces = 4
    public static let maxDisks = 4
    public static let maxNameLength = 63
    public static let maxRDomain = 255
    public static let maxVCPUs = 64
    public static let interfaceNameLength = 15
}
