#if canImport(Glibc)
import Glibc
#endif
import Boot

/// What the host offers for running guests, probed once.
public struct HostCapabilities: Sendable, Equatable {
    /// nil when /dev/kvm can be opened read-write; else why not.
    public var kvmProblem: String?
    /// The host's KVM is PVM-backed (kvm_pvm module): it runs our test kernels but not a
    /// stock Linux kernel.
    public var isPVM: Bool
    /// The software CPU backend is built in and usable.
    public var emulatorAvailable: Bool

    public init(kvmProblem: String?, isPVM: Bool, emulatorAvailable: Bool) {
        self.kvmProblem = kvmProblem; self.isPVM = isPVM; self.emulatorAvailable = emulatorAvailable
    }

    /// Probes this host: opens /dev/kvm, looks for /sys/module/kvm_pvm.
    public static func probe(emulatorAvailable: Bool) -> HostCapabilities {
        HostCapabilities(kvmProblem: probeKVM(), isPVM: access("/sys/module/kvm_pvm", F_OK) == 0,
                         emulatorAvailable: emulatorAvailable)
    }

    /// nil when /dev/kvm opens read-write, else a sentence saying why not and what to do.
    public static func probeKVM(path: String = "/dev/kvm") -> String? {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd >= 0 { close(fd); return nil }
        let err = errno
        switch err {
        case ENOENT:
            return "\(path) does not exist (load the kvm module, or enable virtualization for this host)"
        case EACCES, EPERM:
            return "no permission to open \(path) (run as root or join the group that owns it, usually kvm)"
        default:
            return "cannot open \(path): \(errnoString(err))"
        }
    }
}

/// The backend a machine runs on, and why it was chosen.
public struct AcceleratorChoice: Sendable, Equatable {
    public var backend: Accelerator
    public var reason: String

    /// Resolves `requested` for a kernel of `kind` on a host with `host` capabilities.
    ///
    /// `auto` takes KVM unless /dev/kvm is unusable, or the host's KVM is PVM-backed and
    /// the guest is a full Linux kernel (bzImage or vmlinux), which PVM cannot run; then the
    /// emulator.
    public static func choose(requested: Accelerator, kernel kind: KernelKind,
                              host: HostCapabilities) throws -> AcceleratorChoice {
        switch requested {
        case .kvm:
            if let problem = host.kvmProblem { throw VMMError.kvmUnavailable(problem) }
            return AcceleratorChoice(backend: .kvm, reason: "--accel kvm was requested")
        case .emulator:
            guard host.emulatorAvailable else {
                throw VMMError.acceleratorUnavailable("the software CPU (--accel emulator) is not available in this build yet; use --accel kvm")
            }
            return AcceleratorChoice(backend: .emulator, reason: "--accel emulator was requested")
        case .auto:
            if let problem = host.kvmProblem {
                guard host.emulatorAvailable else { throw VMMError.kvmUnavailable(problem) }
                return AcceleratorChoice(backend: .emulator, reason: "KVM is not usable (\(problem))")
            }
            if host.isPVM && kind.needsFullVirtualization {
                if host.emulatorAvailable {
                    return AcceleratorChoice(backend: .emulator,
                        reason: kind == .firmware
                            ? "the host's KVM is PVM-backed (/sys/module/kvm_pvm), which cannot run a BIOS and the system it boots"
                            : "the host's KVM is PVM-backed (/sys/module/kvm_pvm), which cannot run a full Linux kernel")
                }
                return AcceleratorChoice(backend: .kvm,
                    reason: "the host's KVM is PVM-backed and may not run a full Linux kernel, but the software CPU is not available yet")
            }
            return AcceleratorChoice(backend: .kvm, reason: "/dev/kvm is usable" + (host.isPVM ? " (PVM-backed) for this \(kind) kernel" : ""))
        }
    }
}

/// What kind of kernel a file holds, judged by its content (never its name).
public enum KernelKind: String, Sendable, Equatable, CustomStringConvertible {
    case linuxBzImage = "Linux bzImage"
    case linuxELF = "Linux ELF"
    case elf = "ELF"
    case multiboot = "multiboot"
    /// No kernel: the BIOS boots whatever is on the disk or CD-ROM.
    case firmware = "BIOS firmware"

    public var description: String { rawValue }

    /// A full Linux kernel (which a PVM-backed KVM cannot run).
    public var isLinux: Bool { self == .linuxBzImage || self == .linuxELF }
    /// What a PVM-backed KVM cannot run: a full Linux kernel, or a BIOS (real mode, and
    /// whatever operating system it boots).
    public var needsFullVirtualization: Bool { isLinux || self == .firmware }

    public init(_ format: KernelFormat, isLinux: Bool = false) {
        switch format {
        case .bzImage: self = .linuxBzImage
        case .elf: self = isLinux ? .linuxELF : .elf
        case .multiboot: self = .multiboot
        }
    }
}

/// Reads up to `count` bytes from the start of a file; throws a sentence naming the file.
func readHead(path: String, count: Int, unreadable: (String, String) -> VMMError) throws -> [UInt8] {
    // O_NONBLOCK: a FIFO must not hang the open; only regular files and block devices pass.
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
    guard fd >= 0 else { throw unreadable(path, errnoString(errno)) }
    defer { close(fd) }
    return try readHead(fd: fd, path: path, count: count, unreadable: unreadable)
}

/// The same for a file already open (passed by vmd): reads from offset 0 without moving
/// the descriptor's position; `path` only names it in messages.
func readHead(fd: Int32, path: String, count: Int, unreadable: (String, String) -> VMMError) throws -> [UInt8] {
    var st = stat()
    if fstat(fd, &st) == 0 {
        switch st.st_mode & S_IFMT {
        case S_IFREG, S_IFBLK: break
        case S_IFDIR: throw unreadable(path, "it is a directory")
        default: throw unreadable(path, "not a regular file or block device")
        }
    }
    var buffer = [UInt8](repeating: 0, count: count)
    var filled = 0
    while filled < count {
        // SAFETY: reads into the array's own storage, at most its remaining capacity.
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + filled, count - filled, off_t(filled)) }
        if n < 0 {
            if errno == EINTR { continue }
            throw unreadable(path, errnoString(errno))
        }
        if n == 0 { break }
        filled += n
    }
    return Array(buffer[0..<filled])
}
