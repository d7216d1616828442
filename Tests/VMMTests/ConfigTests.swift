#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import GuestMemory
import Testing
@testable import VMM
@testable import VMMTool
import X86Emulator
import VMConfig

@Suite struct MemorySizeTests {
    static let sizes: [(String, UInt64)] = [
        ("512M", 512 << 20), ("2G", 2 << 30), ("2g", 2 << 30), ("1024K", 1 << 20),
        ("64", 64 << 20), ("1GiB", 1 << 30), ("256MB", 256 << 20), (" 8M ", 8 << 20),
    ]

    @Test(arguments: sizes)
    func parsesSizes(text: String, bytes: UInt64) throws {
        #expect(try parseMemorySize(text) == bytes)
    }

    @Test(arguments: ["", "M", "12X", "-1G", "1.5G", "0x100M", "lots"])
    func rejectsNonSizesNamingTheText(text: String) {
        #expect(throws: VMMError.invalidMemorySize(text)) { try parseMemorySize(text) }
    }

    @Test func hugeSizesAreTooLargeNotACrash() {
        #expect(throws: VMMError.self) { try parseMemorySize("99999999999999T") }
    }

    @Test func formatsSizesInTheLargestExactUnit() {
        #expect(formatSize(512 << 20) == "512M")
        #expect(formatSize(3 << 30) == "3G")
        #expect(formatSize(1536 << 10) == "1536K")
        #expect(formatSize(100) == "100 bytes")
    }
}

@Suite struct MachineConfigTests {
    @Test func validSettingsPass() throws {
        try MachineConfig(kernelPath: "k", memorySize: 512 << 20, vcpus: 4).validateSettings()
    }

    @Test func tooLittleMemoryNamesTheMinimum() {
        let c = MachineConfig(kernelPath: "k", memorySize: 1 << 20)
        #expect(throws: VMMError.memoryTooSmall(requested: 1 << 20, minimum: 4 << 20)) { try c.validateSettings() }
        #expect(VMMError.memoryTooSmall(requested: 1 << 20, minimum: 4 << 20).description
                == "memory size 1M is too small: the minimum is 4M")
    }

    @Test func moreMemoryThanTheHostHasIsRefused() {
        let c = MachineConfig(kernelPath: "k", memorySize: 1 << 40)
        do {
            try c.validateSettings()
            Issue.record("1T of guest memory was accepted")
        } catch let e as VMMError {
            #expect(e.description.hasPrefix("memory size 1T is too large: the maximum is"))
        } catch { Issue.record("\(error)") }
    }

    @Test(arguments: [0, -1, 65, 1000])
    func badVCPUCountsAreRefused(n: Int) {
        #expect(throws: VMMError.invalidCPUCount(n, maximum: 64)) {
            try MachineConfig(kernelPath: "k", vcpus: n).validateSettings()
        }
    }

    @Test func atMostFourDisks() {
        let c = MachineConfig(kernelPath: "k", diskPaths: ["a", "b", "c", "d", "e"])
        #expect(throws: VMMError.tooManyDisks(5, maximum: 4)) { try c.validateSettings() }
    }
}

@Suite struct AcceleratorChoiceTests {
    let good = HostCapabilities(kvmProblem: nil, isPVM: false, emulatorAvailable: true)
    let pvm = HostCapabilities(kvmProblem: nil, isPVM: true, emulatorAvailable: true)
    let noKVM = HostCapabilities(kvmProblem: "/dev/kvm does not exist", isPVM: false, emulatorAvailable: true)

    @Test func autoPrefersKVM() throws {
        #expect(try AcceleratorChoice.choose(requested: .auto, kernel: .linuxBzImage, host: good).backend == .kvm)
        #expect(try AcceleratorChoice.choose(requested: .auto, kernel: .elf, host: pvm).backend == .kvm)
    }

    @Test func autoTakesTheEmulatorForLinuxOnPVMAndWithoutKVM() throws {
        let a = try AcceleratorChoice.choose(requested: .auto, kernel: .linuxBzImage, host: pvm)
        #expect(a.backend == .emulator)
        #expect(a.reason.contains("PVM"))
        let b = try AcceleratorChoice.choose(requested: .auto, kernel: .multiboot, host: noKVM)
        #expect(b.backend == .emulator)
        #expect(b.reason.contains("/dev/kvm does not exist"))
        // A Linux vmlinux (ELF with the Xen guest-OS note "linux") is as much Linux as a bzImage.
        #expect(try AcceleratorChoice.choose(requested: .auto, kernel: .linuxELF, host: pvm).backend == .emulator)
        #expect(try AcceleratorChoice.choose(requested: .auto, kernel: .linuxELF, host: good).backend == .kvm)
        #expect(KernelKind(.elf(is64Bit: true, pvhEntry: 0x100_0000), isLinux: true) == .linuxELF)
        #expect(KernelKind(.elf(is64Bit: true, pvhEntry: nil)) == .elf)
    }

    @Test func explicitKVMWithoutKVMIsAnError() {
        #expect(throws: VMMError.kvmUnavailable("/dev/kvm does not exist")) {
            try AcceleratorChoice.choose(requested: .kvm, kernel: .elf, host: noKVM)
        }
        #expect(VMMError.kvmUnavailable("x").description == "KVM is not available: x")
    }

    @Test func withoutTheEmulatorAutoFallsBackToKVMOrFails() throws {
        var host = pvm
        host.emulatorAvailable = false
        #expect(try AcceleratorChoice.choose(requested: .auto, kernel: .linuxBzImage, host: host).backend == .kvm)
        #expect(throws: VMMError.self) { try AcceleratorChoice.choose(requested: .emulator, kernel: .elf, host: host) }
        var none = noKVM
        none.emulatorAvailable = false
        #expect(throws: VMMError.kvmUnavailable("/dev/kvm does not exist")) {
            try AcceleratorChoice.choose(requested: .auto, kernel: .elf, host: none)
        }
    }

    @Test func probeExplainsAMissingDevice() {
        let why = HostCapabilities.probeKVM(path: "/nonexistent/kvm")
        #expect(why?.contains("/nonexistent/kvm does not exist") == true)
    }
}

@Suite struct CommandLineTests {
    @Test func parsesEveryFlagShortAndLong() throws {
        let short = try VMMCommand.parse(["-k", "/boot/k", "-i", "/boot/i", "-p", "console=ttyS0 quiet",
                                          "-m", "2G", "-c", "4", "-d", "a.img", "-d", "b.img", "--accel", "kvm"])
        let c = try short.machineConfig()
        #expect(c.kernelPath == "/boot/k" && c.initrdPath == "/boot/i" && c.cmdline == "console=ttyS0 quiet")
        #expect(c.memorySize == 2 << 30 && c.vcpus == 4 && c.diskPaths == ["a.img", "b.img"] && c.accelerator == .kvm)
        let long = try VMMCommand.parse(["--kernel", "k", "--initrd", "i", "--cmdline", "x", "--memory", "64M",
                                         "--cpus", "2", "--disk", "d", "--accel", "emulator"])
        let l = try long.machineConfig()
        #expect(l.kernelPath == "k" && l.initrdPath == "i" && l.cmdline == "x" && l.memorySize == 64 << 20
                && l.vcpus == 2 && l.diskPaths == ["d"] && l.accelerator == .emulator)
    }

    @Test func defaults() throws {
        let c = try VMMCommand.parse(["-k", "k"]).machineConfig()
        #expect(c.memorySize == 512 << 20 && c.vcpus == 1 && c.accelerator == .auto && c.diskPaths.isEmpty)
        #expect(c.initrdPath == nil)
    }

    @Test func cpuLevelSelectsTheSoftwareCPUsLevel() throws {
        #expect(try VMMCommand.parse(["-k", "k"]).machineConfig().cpuLevel == nil)
        #expect(try VMMCommand.parse(["-k", "k", "--cpu-level", "v2"]).machineConfig().cpuLevel == .v2)
        #expect(try VMMCommand.parse(["-k", "k", "--cpu-level", "baseline"]).machineConfig().cpuLevel == .baseline)
        #expect(try VMMCommand.parse(["-k", "k", "--cpu-level", "v3"]).machineConfig().cpuLevel == .v3)
        #expect(throws: (any Error).self) { try VMMCommand.parse(["-k", "k", "--cpu-level", "v4"]) }
        // v3 runs its FMA/F16C/VEX compares on the host's units: offered where the host has them.
        #expect(X86CPULevel.v2.runsOnThisHost && X86CPULevel.baseline.runsOnThisHost)
        // The emulator backend gives every vCPU the level (CPUID and #UD gating follow it).
        let vm = EmulatorMachineGlue.makeBackend(memory: try GuestMemory(size: 1 << 20), cpuLevel: .v2)
        #expect(try vm.createEmulatorVCPU(index: 0, startState: .runnable).cpu.cpuLevel == .v2)
        // Without a level the default is v2; the VM process maps vm.conf's names onto the
        // emulator's, so the two lists must be the same.
        #expect(X86CPULevel.default == .v2)
        #expect(EmulatorMachineGlue.makeBackend(memory: try GuestMemory(size: 1 << 20), cpuLevel: .default).cpuLevel == .v2)
        #expect(VMConfig.CPULevel.allCases.map(\.rawValue) == X86CPULevel.selectable.map(\.rawValue))
    }

    @Test func rejectsBadFlags() {
        #expect(throws: (any Error).self) { try VMMCommand.parse(["-B", "floppy"]) }
        #expect(throws: (any Error).self) { try VMMCommand.parse(["-k", "k", "--accel", "xen"]) }
        #expect(throws: (any Error).self) { try VMMCommand.parse(["-k", "k", "-c", "two"]) }
        #expect(throws: VMMError.invalidMemorySize("lots")) {
            try VMMCommand.parse(["-k", "k", "-m", "lots"]).machineConfig()
        }
        #expect(throws: VMMError.invalidCPUCount(0, maximum: 64)) {
            try VMMCommand.parse(["-k", "k", "-c", "0"]).machineConfig()
        }
    }
}

@Suite struct MachineBuildErrorTests {
    func build(_ path: String, initrd: String? = nil, host: HostCapabilities? = nil) throws -> Machine {
        let config = MachineConfig(kernelPath: path, initrdPath: initrd, memorySize: 16 << 20, console: .none)
        return try Machine(config: config, host: host ?? HostCapabilities(kvmProblem: nil, isPVM: false, emulatorAvailable: false),
                           backendFactory: { memory, _, _ in
                               FakeBackend(memory: memory) { i in FakeVCPU(index: i) { _ in .exit(.systemShutdown) } }
                           })
    }

    @Test func aMissingKernelIsNamed() {
        #expect(throws: VMMError.kernelUnreadable(path: "/no/such/kernel", reason: "No such file or directory")) {
            _ = try build("/no/such/kernel")
        }
    }

    @Test func aFileThatIsNoKernelIsNamed() {
        let path = temporaryFile(Array("#!/bin/sh\necho hello\n".utf8))
        defer { unlink(path) }
        #expect(throws: VMMError.notAKernel(path: path)) { _ = try build(path) }
    }

    @Test func anUnreadableKernelIsNamed() throws {
        let path = temporaryFile(fakeMultibootKernel())
        defer { unlink(path) }
        chmod(path, 0)
        // root reads anything: only meaningful for other users.
        if getuid() != 0 {
            #expect(throws: VMMError.kernelUnreadable(path: path, reason: "Permission denied")) { _ = try build(path) }
        }
        #expect(throws: VMMError.kernelUnreadable(path: "/", reason: "it is not a regular file")) { _ = try build("/") }
    }

    @Test func aMissingInitrdIsNamed() {
        let path = temporaryFile(fakeMultibootKernel())
        defer { unlink(path) }
        #expect(throws: VMMError.initrdUnreadable(path: "/no/initrd", reason: "No such file or directory")) {
            _ = try build(path, initrd: "/no/initrd")
        }
    }

    @Test func noKVMIsOneClearError() {
        let path = temporaryFile(fakeMultibootKernel())
        defer { unlink(path) }
        let host = HostCapabilities(kvmProblem: "no permission to open /dev/kvm", isPVM: false, emulatorAvailable: false)
        #expect(throws: VMMError.kvmUnavailable("no permission to open /dev/kvm")) { _ = try build(path, host: host) }
    }
}
