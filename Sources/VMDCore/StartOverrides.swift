import Control
import VMConfig

/// The settings `vmctl start` may change (`StartRequest`), listed once: whether a request
/// sets each, which `allow instance` keyword lets a non-root user set it on an instance
/// (nil: none exists, root only), and how it changes the VM's definition. vmd's start
/// checks and the effective definition both come from this table.
public struct StartOverride: Sendable {
    public let name: String
    /// The `allow instance` keyword that permits it, nil when root alone may set it.
    public let permission: (@Sendable (InstancePermissions) -> Bool)?
    public let isSet: @Sendable (StartRequest) -> Bool
    public let apply: @Sendable (StartRequest, inout VMDefinition) -> Void

    public static let all: [StartOverride] = [
        StartOverride(name: "boot (-b)", permission: { $0.boot }, isSet: { $0.boot != nil },
                      apply: { r, d in if let b = r.boot { d.boot = b } }),
        StartOverride(name: "boot device (-B)", permission: { $0.boot }, isSet: { $0.bootDevice != nil },
                      apply: { r, d in if let b = r.bootDevice { d.bootDevice = b } }),
        StartOverride(name: "cdrom (-r)", permission: { $0.cdrom }, isSet: { $0.cdrom != nil },
                      apply: { r, d in if let c = r.cdrom { d.cdrom = c } }),
        StartOverride(name: "disk (-d)", permission: { $0.disk }, isSet: { !$0.disks.isEmpty },
                      apply: { r, d in if !r.disks.isEmpty { d.disks = r.disks } }),
        StartOverride(name: "interfaces (-i)", permission: { $0.interface }, isSet: { $0.interfaceCount != nil },
                      apply: { r, d in if let n = r.interfaceCount { d.interfaceCount = n } }),
        StartOverride(name: "switch (-n)", permission: { $0.interface }, isSet: { !$0.switches.isEmpty },
                      apply: { r, d in
                          for s in r.switches {
                              var i = InterfaceSpec()
                              i.switchName = s
                              d.interfaces.append(i)
                          }
                      }),
        StartOverride(name: "local interface (-L)", permission: { $0.interface }, isSet: { $0.localInterface },
                      apply: { r, d in
                          if r.localInterface {
                              var i = InterfaceSpec()
                              i.isLocal = true
                              d.interfaces.append(i)
                          }
                      }),
        StartOverride(name: "memory (-m)", permission: { $0.memory }, isSet: { $0.memory != nil },
                      apply: { r, d in if let m = r.memory { d.memory = m } }),
        StartOverride(name: "vcpus (--vcpus)", permission: nil, isSet: { $0.vcpus != nil },
                      apply: { r, d in if let v = r.vcpus { d.vcpus = v } }),
        StartOverride(name: "initrd (--initrd)", permission: nil, isSet: { $0.initrd != nil },
                      apply: { r, d in if let i = r.initrd { d.initrd = i } }),
        StartOverride(name: "cmdline (--cmdline)", permission: nil, isSet: { $0.cmdline != nil },
                      apply: { r, d in if let c = r.cmdline { d.cmdline = c } }),
        StartOverride(name: "accel (--accel)", permission: nil, isSet: { $0.accel != nil },
                      apply: { r, d in if let a = r.accel { d.accel = a } }),
        StartOverride(name: "cpu-level (--cpu-level)", permission: nil, isSet: { $0.cpuLevel != nil },
                      apply: { r, d in if let l = r.cpuLevel { d.cpuLevel = l } }),
    ]

    /// The overrides a request sets.
    public static func given(in r: StartRequest) -> [StartOverride] { all.filter { $0.isSet(r) } }

    /// The first override `allow` does not permit on an instance, nil when all are.
    public static func denied(_ r: StartRequest, by allow: InstancePermissions) -> StartOverride? {
        given(in: r).first { o in !(o.permission?(allow) ?? false) }
    }

    /// `base` with the request's settings on top: what a start runs.
    public static func effective(_ base: VMDefinition, _ r: StartRequest) -> VMDefinition {
        var d = base
        for o in all { o.apply(r, &d) }
        return d
    }
}
