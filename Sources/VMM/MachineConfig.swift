#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import X86Emulator

/// Which CPU backend runs the guest.
public enum Accelerator: String, CaseIterable, Sendable, Codable {
    /// Hardware virtualization through /dev/kvm.
    case kvm
    /// The software x86 CPU (X86Emulator).
    case emulator
    /// KVM when it can run this guest, the emulator otherwise.
    case auto
}

/// Where the serial console (COM1) goes.
public enum ConsoleSink: Sendable {
    /// Output to stdout; input from stdin (raw mode when it is a terminal, Ctrl-] stops the VM).
    case standardIO
    /// A new pseudo-terminal; its path is reported through `Machine.consolePath`.
    case pty
    /// Output written to this file descriptor; no input.
    case fileDescriptor(Int32)
    /// Output handed to a closure (tests, vmd); no input. Called with the device lock held.
    case callback(@Sendable ([UInt8]) -> Void)
    /// Output discarded.
    case none
}

/// Which device the firmware tries first (`vmm -B`, vm.conf `boot device`).
public enum BootDevice: String, CaseIterable, Sendable, Codable {
    case disk, cdrom, net
}

/// Everything that describes one VM: what `vmm`'s flags and vm.conf's `vm {}` block set.
public struct MachineConfig: Sendable {
    /// The kernel for a direct boot; empty: boot through the firmware (`firmwarePath`).
    public var kernelPath: String
    public var initrdPath: String?
    public var cmdline: String
    /// Guest RAM in bytes.
    public var memorySize: UInt64
    public var vcpus: Int
    public var diskPaths: [String]
    public var accelerator: Accelerator
    public var console: ConsoleSink
    /// Guest network interfaces (virtio-net, slots 8-11): MachineNet.swift.
    public var networkInterfaces: [NetworkInterfaceConfig] = []
    /// Set by vmd's VM process: the guest files as descriptors, so the machine opens none
    /// by name (PassedFiles.swift). nil: the paths above are opened (`vmm`).
    public var passedFiles: PassedFiles? = nil
    /// The BIOS image for a firmware boot (nil: Debian's SeaBIOS, bios-256k.bin).
    public var firmwarePath: String? = nil
    /// A read-only ISO 9660 image on a virtio-scsi CD-ROM (`-r`).
    public var cdromPath: String? = nil
    /// The device the firmware boots first (nil: the disks, then the CD-ROM).
    public var bootDevice: BootDevice? = nil
    /// `bootDevice == .net`: the BIOS option ROM given to the firmware for the virtio-net
    /// device (iPXE's, from Debian's ipxe-qemu).
    public var netBootROMPath: String? = nil
    /// A virtio-vsock device with its hybrid unix-socket backend (`--vsock`, slot 13):
    /// VsockHost.swift.
    public var vsock: VsockConfig? = nil
    /// The software CPU's instruction-set level (`--cpu-level`; nil: `X86CPULevel.default`).
    /// KVM ignores it (the guest sees KVM's CPUID).
    public var cpuLevel: X86CPULevel? = nil
    /// Set by `Machine.restore`: RAM and vCPU state come from a state stream, so no kernel
    /// or initrd is read or loaded and RAM stays as mapped (anonymous memory, zero). The
    /// value is the kind of kernel the saved machine booted. nil: a normal boot.
    public var restoringKernelKind: KernelKind? = nil

    /// True when there is no kernel: the firmware boots a disk or the CD-ROM.
    public var bootsFirmware: Bool { kernelPath.isEmpty }

    public static let defaultMemorySize: UInt64 = 512 << 20
    public static let minimumMemorySize: UInt64 = 4 << 20
    public static let maximumVCPUs = 64
    public static let maximumDisks = 4

    public init(kernelPath: String, initrdPath: String? = nil, cmdline: String = "",
                memorySize: UInt64 = MachineConfig.defaultMemorySize, vcpus: Int = 1,
                diskPaths: [String] = [], accelerator: Accelerator = .auto,
                console: ConsoleSink = .standardIO) {
        self.kernelPath = kernelPath; self.initrdPath = initrdPath; self.cmdline = cmdline
        self.memorySize = memorySize; self.vcpus = vcpus; self.diskPaths = diskPaths
        self.accelerator = accelerator; self.console = console
    }

    /// The largest guest RAM accepted on this host: the host's physical RAM, and never
    /// beyond what the guest-physical map can address.
    public static func maximumMemorySize() -> (bytes: UInt64, why: String) {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
        if pages > 0 && pageSize > 0 {
            let host = UInt64(pages) * UInt64(pageSize) / (1 << 20) * (1 << 20)
            if host < PhysicalMap.maximumRAM {
                return (host, "the host has \(formatSize(host)) of RAM")
            }
        }
        return (PhysicalMap.maximumRAM, "the guest-physical address map ends there")
    }

    /// Checks the settings that need no file access: memory and vCPU bounds, disk count.
    public func validateSettings() throws {
        if memorySize < Self.minimumMemorySize {
            throw VMMError.memoryTooSmall(requested: memorySize, minimum: Self.minimumMemorySize)
        }
        let maximum = Self.maximumMemorySize()
        if memorySize > maximum.bytes {
            throw VMMError.memoryTooLarge(requested: memorySize, maximum: maximum.bytes, why: maximum.why)
        }
        if vcpus < 1 || vcpus > Self.maximumVCPUs {
            throw VMMError.invalidCPUCount(vcpus, maximum: Self.maximumVCPUs)
        }
        if diskPaths.count > Self.maximumDisks {
            throw VMMError.tooManyDisks(diskPaths.count, maximum: Self.maximumDisks)
        }
        if bootDevice == .net && !networkInterfaces.contains(where: { $0.local?.netBoot != nil }) {
            throw VMMError.unsupported("boot device net needs a local interface with a boot file (vmd: `boot device net`, a `local interface` and `boot PATH`)")
        }
        if bootDevice != nil && !bootsFirmware {
            throw VMMError.unsupported("a boot device (-B) chooses what the firmware boots; it cannot be combined with a kernel (-k)")
        }
    }
}

/// The name the design sketch uses for a machine description.
public typealias VMSpec = MachineConfig

/// Parses a memory size: a number with an optional K, M, G or T suffix (binary units,
/// case-insensitive, an optional trailing "B" or "iB"). A bare number means MiB, as in QEMU.
public func parseMemorySize(_ text: String) throws -> UInt64 {
    var s = Substring(text.trimmingSpaces().lowercased())
    if s.hasSuffix("ib") { s = s.dropLast(2) } else if s.hasSuffix("b") && s.count > 1
        && !(s.dropLast().last?.isNumber ?? true) { s = s.dropLast() }
    var shift: UInt64 = 20
    if let last = s.last, !last.isNumber {
        switch last {
        case "k": shift = 10
        case "m": shift = 20
        case "g": shift = 30
        case "t": shift = 40
        default: throw VMMError.invalidMemorySize(text)
        }
        s = s.dropLast()
    }
    guard !s.isEmpty, s.allSatisfy({ $0.isASCII && $0.isNumber }), let n = UInt64(s) else {
        throw VMMError.invalidMemorySize(text)
    }
    let (bytes, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
    guard !overflow else {
        throw VMMError.memoryTooLarge(requested: UInt64.max, maximum: MachineConfig.maximumMemorySize().bytes,
                                      why: MachineConfig.maximumMemorySize().why)
    }
    return bytes
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
