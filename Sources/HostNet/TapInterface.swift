#if canImport(Glibc)
import Glibc
#endif

/// The tun ioctls, which Swift cannot import (function-like macros in <linux/if_tun.h>).
/// Values are fixed by the kernel ABI.
public enum TunIoctl {
    /// TUNSETIFF = _IOW('T', 202, int): (1 << 30) | (4 << 16) | ('T' << 8) | 202.
    static let setIff: UInt = 0x4004_54CA
    /// TUNGETIFF = _IOR('T', 210, unsigned int).
    static let getIff: UInt = 0x8004_54D2
    /// TUNSETOFFLOAD = _IOW('T', 208, unsigned int): the VM process's sandbox allows it
    /// (the guest's driver picks its offloads after the sandbox is up).
    public static let setOffload: UInt = 0x4004_54D0
    /// TUNSETVNETHDRSZ = _IOW('T', 216, int).
    static let setVnetHeaderSize: UInt = 0x4004_54D8
    static let iffTap: Int16 = 0x0002
    static let iffNoPI: Int16 = 0x1000
    static let iffVnetHeader: Int16 = 0x4000
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
    ///
    /// With `virtioHeader` (IFF_VNET_HDR, TUNSETVNETHDRSZ 12) every read and write starts
    /// with the 12-byte virtio-net header (struct virtio_net_hdr_v1, little-endian on x86):
    /// the guest's checksum and segmentation offloads pass through (`setOffloads` says
    /// which the reader takes); a new tap hands out only whole, checksummed frames.
    public static func open(name: String = "tap%d", virtioHeader: Bool = false) throws(HostNetError) -> (fd: Int32, name: String) {
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
        let flags = UInt16(bitPattern: TunIoctl.iffTap | TunIoctl.iffNoPI | (virtioHeader ? TunIoctl.iffVnetHeader : 0))
        req[16] = UInt8(truncatingIfNeeded: flags); req[17] = UInt8(truncatingIfNeeded: flags >> 8)
        // SAFETY: the kernel reads/writes at most sizeof(struct ifreq) = 40 bytes, our size.
        let rc = req.withUnsafeMutableBytes { ioctl(fd, TunIoctl.setIff, $0.baseAddress!) }
        if rc < 0 {
            let e = errno
            close(fd)
            throw .interface(name, operation: "TUNSETIFF", errno: e)
        }
        let end = req.prefix(InterfaceName.size).firstIndex(of: 0) ?? InterfaceName.size
        let tapName = String(decoding: req[0..<end], as: UTF8.self)
        if virtioHeader {
            var size: Int32 = virtioHeaderLength
            // SAFETY: the kernel reads one int.
            guard ioctl(fd, TunIoctl.setVnetHeaderSize, &size) == 0 else {
                let e = errno
                close(fd)
                throw .interface(tapName, operation: "TUNSETVNETHDRSZ", errno: e)
            }
        }
        return (fd, tapName)
    }

    /// The header a tap opened with `virtioHeader` puts before each frame.
    public static let virtioHeaderLength: Int32 = 12

    /// Whether `fd` is a tap opened with IFF_VNET_HDR (false for anything else: a
    /// socketpair, a tap without it).
    public static func hasVirtioHeader(_ fd: Int32) -> Bool {
        var req = [UInt8](repeating: 0, count: TunIoctl.ifreqSize)
        // SAFETY: TUNGETIFF writes at most sizeof(struct ifreq) = 40 bytes, our size.
        guard req.withUnsafeMutableBytes({ ioctl(fd, TunIoctl.getIff, $0.baseAddress!) }) == 0 else { return false }
        let flags = Int16(bitPattern: UInt16(req[16]) | UInt16(req[17]) << 8)
        return flags & TunIoctl.iffVnetHeader != 0 && flags & TunIoctl.iffTap != 0
    }

    /// TUN_F_* for `setOffloads`: what the reader of the tap accepts.
    public struct Offloads: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// TUN_F_CSUM: frames with a partial checksum (csum_start/offset to finish).
        public static let checksum = Offloads(rawValue: 0x01)
        /// TUN_F_TSO4, TUN_F_TSO6: unsegmented TCP (needs `checksum`).
        public static let tso4 = Offloads(rawValue: 0x02)
        public static let tso6 = Offloads(rawValue: 0x04)
    }

    /// TUNSETOFFLOAD: which offloaded frames the tap may hand to its reader (the guest's
    /// receive side). False when the kernel refused (errno set).
    @discardableResult
    public static func setOffloads(_ fd: Int32, _ offloads: Offloads) -> Bool {
        ioctl(fd, TunIoctl.setOffload, Int32(bitPattern: offloads.rawValue)) == 0
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
