#if canImport(Glibc)
import Glibc
#endif

/// Errors of the VMM: bad settings, files that cannot be used, a host that cannot run the
/// VM. Each message is one sentence naming the file or setting, for the `vmm` command to
/// print on one line.
public enum VMMError: Error, Equatable, CustomStringConvertible {
    case invalidMemorySize(String)
    case memoryTooSmall(requested: UInt64, minimum: UInt64)
    case memoryTooLarge(requested: UInt64, maximum: UInt64, why: String)
    case invalidCPUCount(Int, maximum: Int)
    case kernelUnreadable(path: String, reason: String)
    case notAKernel(path: String)
    case initrdUnreadable(path: String, reason: String)
    case diskUnreadable(path: String, reason: String)
    case tooManyDisks(Int, maximum: Int)
    case kvmUnavailable(String)
    case acceleratorUnavailable(String)
    case threadCreationFailed(String, errno: Int32)
    case console(String)
    case machine(String)
    case firmwareUnreadable(path: String, reason: String)
    case notFirmware(path: String, reason: String)
    case cdromUnreadable(path: String, reason: String)
    case unsupported(String)

    public var description: String {
        switch self {
        case let .invalidMemorySize(text):
            return "memory size '\(text)' is not a size: use a number with a K, M or G suffix, e.g. 512M or 2G"
        case let .memoryTooSmall(requested, minimum):
            return "memory size \(formatSize(requested)) is too small: the minimum is \(formatSize(minimum))"
        case let .memoryTooLarge(requested, maximum, why):
            return "memory size \(formatSize(requested)) is too large: the maximum is \(formatSize(maximum)) (\(why))"
        case let .invalidCPUCount(n, maximum):
            return "cannot give the VM \(n) vCPUs: use 1 to \(maximum)"
        case let .kernelUnreadable(path, reason):
            return "cannot read kernel \(path): \(reason)"
        case let .notAKernel(path):
            return "\(path) is not a kernel this VMM can boot (expected a Linux bzImage, an ELF kernel or a multiboot kernel)"
        case let .initrdUnreadable(path, reason):
            return "cannot read initrd \(path): \(reason)"
        case let .diskUnreadable(path, reason):
            return "cannot open disk \(path): \(reason)"
        case let .tooManyDisks(n, maximum):
            return "\(n) disks given, but a VM can have at most \(maximum)"
        case let .kvmUnavailable(why):
            return "KVM is not available: \(why)"
        case let .acceleratorUnavailable(why):
            return why
        case let .threadCreationFailed(what, err):
            return "cannot start the \(what) thread: \(String(cString: strerror(err)))"
        case let .console(why):
            return "console: \(why)"
        case let .machine(why):
            return why
        case let .firmwareUnreadable(path, reason):
            return "cannot read firmware \(path): \(reason)"
        case let .notFirmware(path, reason):
            return "\(path) is not a BIOS image: \(reason)"
        case let .cdromUnreadable(path, reason):
            return "cannot use CD-ROM image \(path): \(reason)"
        case let .unsupported(why):
            return why
        }
    }
}

/// "512M", "2G", "1536K": the largest binary unit that divides the size exactly.
public func formatSize(_ bytes: UInt64) -> String {
    let units: [(UInt64, String)] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")]
    for (scale, suffix) in units where bytes >= scale && bytes % scale == 0 {
        return "\(bytes / scale)\(suffix)"
    }
    return "\(bytes) bytes"
}

func errnoString(_ err: Int32) -> String { String(cString: strerror(err)) }
