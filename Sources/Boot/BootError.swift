import GuestMemory

/// Errors raised while loading a kernel or writing firmware tables. Every message names the
/// file or setting at fault and says what would work instead.
public enum BootError: Error, Equatable, CustomStringConvertible {
    /// The kernel (or initrd) file cannot be opened or read.
    case unreadableFile(path: String, reason: String)
    /// The file is readable but is no kernel format we load.
    case notAKernel(path: String)
    /// The kernel is of a known format but malformed or unsupported (the reason says how).
    case invalidKernel(path: String, reason: String)
    /// The guest has too little RAM (or the wrong layout) for what must be loaded.
    case insufficientMemory(String)
    /// A parameter (command line, vCPU count, PCI route ...) is out of range.
    case invalidParameter(String)
    /// A guest-memory write failed (a loader bug or a layout the loader did not expect).
    case memory(GuestMemoryError)

    public var description: String {
        switch self {
        case let .unreadableFile(path, reason):
            return "cannot read \(path): \(reason)"
        case let .notAKernel(path):
            return "\(path) is not a kernel this loader knows: expected a Linux bzImage, an ELF (32- or 64-bit, optionally with a PVH note) or a multiboot image"
        case let .invalidKernel(path, reason):
            return "\(path): \(reason)"
        case let .insufficientMemory(why):
            return "not enough guest memory: \(why)"
        case let .invalidParameter(why):
            return why
        case let .memory(err):
            return "boot loader: \(err)"
        }
    }
}

/// Runs a guest-memory operation, turning its error into `BootError.memory`.
@inline(__always)
func guestWrite<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let err as GuestMemoryError { throw BootError.memory(err) }
}
