#if canImport(Glibc)
import Glibc
#endif

/// Everything the KVM layer can fail with. Messages are one sentence a user can act on.
public enum KVMError: Error, Equatable, CustomStringConvertible {
    /// /dev/kvm cannot be used at all (missing, no permission, not a KVM device).
    case notAvailable(path: String, reason: String)
    /// The kernel speaks a different KVM API version than 12.
    case unsupportedAPIVersion(Int)
    /// A capability this layer needs is missing.
    case missingCapability(String)
    /// An ioctl (named as in <linux/kvm.h>) failed with `errno`.
    case ioctlFailed(String, errno: Int32)
    /// Mapping a vCPU's kvm_run area failed.
    case mmapFailed(errno: Int32)
    /// A caller passed a value KVM cannot take (the message names it).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case let .notAvailable(path, reason):
            return "KVM is not available: \(path) \(reason)"
        case let .unsupportedAPIVersion(v):
            return "KVM is not available: the kernel reports KVM API version \(v), this VMM needs version 12"
        case let .missingCapability(name):
            return "KVM is missing the \(name) capability, which this VMM needs"
        case let .ioctlFailed(name, err):
            return "\(name) failed: \(String(cString: strerror(err)))"
        case let .mmapFailed(err):
            return "cannot map the vCPU's kvm_run area: \(String(cString: strerror(err)))"
        case let .invalidArgument(why):
            return why
        }
    }
}
