#if canImport(Glibc)
import Glibc
#endif
import CKVM

/// A Linux eventfd: a counter the kernel (irqfd, ioeventfd) or another thread signals.
/// Owns its descriptor and closes it on deinit.
public final class EventFD: @unchecked Sendable {
    public let fd: Int32

    public init(initialValue: UInt32 = 0, nonBlocking: Bool = true) throws {
        var flags = ckvm_efd_cloexec()
        if nonBlocking { flags |= ckvm_efd_nonblock() }
        let fd = ckvm_eventfd(initialValue, flags)
        guard fd >= 0 else { throw KVMError.ioctlFailed("eventfd", errno: errno) }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Adds `value` to the counter (wakes whoever waits on it).
    public func signal(_ value: UInt64 = 1) {
        var v = value
        // SAFETY: writes the 8 bytes of `v`, as eventfd requires.
        _ = withUnsafeBytes(of: &v) { write(fd, $0.baseAddress, 8) }
    }

    /// Reads and resets the counter; nil when it was zero (non-blocking) or on error.
    public func consume() -> UInt64? {
        var v: UInt64 = 0
        // SAFETY: reads exactly 8 bytes into `v`.
        let n = withUnsafeMutableBytes(of: &v) { read(fd, $0.baseAddress, 8) }
        return n == 8 ? v : nil
    }
}
