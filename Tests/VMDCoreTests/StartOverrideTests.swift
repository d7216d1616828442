import Control
import Testing
import VMConfig
@testable import VMDCore

@Suite struct StartOverrideTests {
    /// A request setting every override.
    static func everything() -> StartRequest {
        var r = StartRequest(target: .name("x"))
        r.boot = "/k"; r.bootDevice = .cdrom; r.cdrom = "/cd"; r.disks = [DiskSpec(path: "/d")]
        r.interfaceCount = 2; r.switches = ["sw"]; r.localInterface = true; r.memory = 64 << 20
        r.vcpus = 2; r.initrd = "/i"; r.cmdline = "c"; r.accel = .emulator; r.cpuLevel = .baseline
        return r
    }

    @Test func everyOverrideIsSeenAndApplied() {
        let r = Self.everything()
        #expect(StartOverride.given(in: r).count == StartOverride.all.count)
        #expect(StartOverride.given(in: StartRequest(target: .name("x"))).isEmpty)
        let d = StartOverride.effective(VMDefinition(name: "x", location: SourceLocation(file: "t", line: 1)), r)
        #expect(d.boot == "/k" && d.bootDevice == .cdrom && d.cdrom == "/cd" && d.disks.map(\.path) == ["/d"])
        #expect(d.interfaceCount == 2 && d.memory == 64 << 20 && d.vcpus == 2)
        #expect(d.initrd == "/i" && d.cmdline == "c" && d.accel == .emulator && d.cpuLevel == .baseline)
        #expect(d.interfaces.map(\.switchName) == ["sw", nil] && d.interfaces.map(\.isLocal) == [false, true])
    }

    @Test func instancesMayChangeOnlyWhatAllowInstanceLists() {
        var allow = InstancePermissions()
        var r = StartRequest(target: .name("x"))
        r.memory = 1 << 30
        #expect(StartOverride.denied(r, by: allow)?.name == "memory (-m)")
        allow.memory = true
        #expect(StartOverride.denied(r, by: allow) == nil)
        // Everything allow instance can grant, granted: what is left is root's.
        allow = InstancePermissions()
        allow.boot = true; allow.memory = true; allow.interface = true; allow.disk = true; allow.cdrom = true
        let all = Self.everything()
        let rootOnly = StartOverride.given(in: all).filter { $0.permission?(allow) != true }.map(\.name)
        #expect(rootOnly == ["vcpus (--vcpus)", "initrd (--initrd)", "cmdline (--cmdline)", "accel (--accel)",
                            "cpu-level (--cpu-level)"])
        var bootDevice = StartRequest(target: .name("x"))
        bootDevice.bootDevice = .disk
        #expect(StartOverride.denied(bootDevice, by: InstancePermissions())?.name == "boot device (-B)")
    }
}
