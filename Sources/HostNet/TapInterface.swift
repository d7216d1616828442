#if canImport(Glibc)
import Glibc
#endif

/// TUNSETIFF, which Swift cannot import (a function-like macro in <linux/if_tun.h>).
/// Values are fixed by the kernel ABI.
enum TunIoctl {
    /// TUNSETIFF = _IOW('T', 202, int): (1 << 30) | (4 << 16) | ('T' << 8) | 202.
    static let setIff: UInt = 0x4004_54CA
    static let iffTap: Int16 = 0x0002
    static let iffNoPI: Int16 = 0x1000
    /// struct ifreq: char ifr_name[16] then a 24-byte union (here the flags).
    static let ifreqSize = 40
}

public enum InterfaceName {
    /// IFNAMSIZ, including the NUL.
    public static let size = 16
    /// Linux interface names: 1-15 bytes, no '/', ':', whitespace, not "." or "..".
    public static func isValid(_ name: String) -> Bool {
        let u = Array(name.utf8)
        guard !u.isEmpty, u.count < size, name != ".", name != ".." else { return false }
        return !u.contains { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7F }
    }
}

/// A tap interface (/dev/net/tun, IFF_TAP|IFF_NO_PI): every read is one Ethernet frame the
/// host sent towards the guest, every write one frame from the guest. The interface exists
/// while its descriptor is open (not persistent), so it vanishes with the VM, with the
/// addresses it carries, also when the VM process is killed.
public enum TapInterface {
    /// Opens a tap. `name` may be a full name ("tap3", "vm1if0") or a pattern with "%d"
    /// (the default "tap%d" lets the kernel pick the next free tapN, like OpenBSD's vmd).
    /// Returns the descriptor (close-on-exec) and the name the kernel gave it.
    public static func open(name: String = "tap%d") throws(HostNetError) -> (fd: Int32, name: String) {
        let utf8 = Array(name.utf8)
        guard InterfaceName.isValid(name) || name.hasSuffix("%d") && utf8.count < InterfaceName.size else {
            throw .invalidInterfaceName(name)
        }
        let fd = Glibc.open("/dev/net/tun", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            throw .tapUnavailable(reason: "/dev/net/tun: \(String(cString: strerror(e)))")
        }
        var req = [UInt8](repeating: 0, count: TunIoctl.ifreqSize)
        req.replaceSubrange(0..<utf8.count, with: utf8)
        let flags = UInt16(bitPattern: TunIoctl.iffTap | TunIoctl.iffNoPI)
        req[16] = UInt8(truncatingIfNeeded: flags); req[17] = UInt8(truncatingIfNeeded: flags >> 8)
        // SAFETY: the kernel reads/writes at most sizeof(struct ifreq) = 40 bytes, our size.
        let rc = req.withUnsafeMutableBytes { ioctl(fd, TunIoctl.setIff, $0.baseAddress!) }
        if rc < 0 {
            let e = errno
            close(fd)
            throw .interface(name, operation: "TUNSETIFF", errno: e)
        }
        let end = req.prefix(InterfaceName.size).firstIndex(of: 0) ?? InterfaceName.size
        return (fd, String(decoding: req[0..<end], as: UTF8.self))
    }

    /// Whether taps can be created here (root or CAP_NET_ADMIN, /dev/net/tun present);
    /// nil when they can, else the reason.
    public static func unavailableReason() -> String? {
        do {
            let tap = try open()
            close(tap.fd)
            return nil
        } catch {
            return "\(error)"
        }
    }
}
