#if canImport(Glibc)
import Glibc
#endif

/// Linux interface ioctls that Swift cannot import (they are function-like macros in
/// <linux/if_tun.h>, or live in <linux/sockios.h>). Values are fixed by the kernel ABI.
enum InterfaceIoctl {
    /// TUNSETIFF = _IOW('T', 202, int): (1 << 30) | (4 << 16) | ('T' << 8) | 202.
    static let tunSetIff: UInt = 0x4004_54CA
    static let iffTap: Int16 = 0x0002
    static let iffNoPI: Int16 = 0x1000
    static let getFlags: UInt = 0x8913      // SIOCGIFFLAGS
    static let setFlags: UInt = 0x8914      // SIOCSIFFLAGS
    static let getIndex: UInt = 0x8933      // SIOCGIFINDEX
    static let bridgeAdd: UInt = 0x89A0     // SIOCBRADDBR
    static let bridgeDelete: UInt = 0x89A1  // SIOCBRDELBR
    static let bridgeAddInterface: UInt = 0x89A2   // SIOCBRADDIF
    static let iffUp: Int16 = 0x1
    /// struct ifreq: char ifr_name[16] then a 24-byte union (flags, ifindex, ...).
    static let ifreqSize = 40
    static let nameSize = 16   // IFNAMSIZ, including the NUL
}

/// A struct ifreq as bytes: the name, and one short/int field at offset 16.
struct InterfaceRequest {
    var bytes = [UInt8](repeating: 0, count: InterfaceIoctl.ifreqSize)

    init(name: String) throws {
        let utf8 = Array(name.utf8)
        guard InterfaceName.isValid(name) || name.hasSuffix("%d") && utf8.count < InterfaceIoctl.nameSize else {
            throw NetworkError.invalidInterfaceName(name)
        }
        for (i, b) in utf8.enumerated() { bytes[i] = b }
    }

    var name: String {
        let end = bytes.prefix(InterfaceIoctl.nameSize).firstIndex(of: 0) ?? InterfaceIoctl.nameSize
        return String(decoding: bytes[0..<end], as: UTF8.self)
    }

    var short: Int16 {
        get { Int16(bitPattern: UInt16(bytes[16]) | UInt16(bytes[17]) << 8) }
        set { bytes[16] = UInt8(truncatingIfNeeded: newValue); bytes[17] = UInt8(truncatingIfNeeded: newValue >> 8) }
    }

    var int: Int32 {
        get { Int32(bitPattern: (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[16 + $1]) << (8 * UInt32($1)) }) }
        set { for i in 0..<4 { bytes[16 + i] = UInt8(truncatingIfNeeded: UInt32(bitPattern: newValue) >> (8 * UInt32(i))) } }
    }

    /// ioctl(fd, request, &ifreq); returns errno on failure.
    mutating func perform(_ fd: Int32, _ request: UInt) -> Int32? {
        // SAFETY: the kernel reads/writes at most sizeof(struct ifreq) = 40 bytes, our size.
        let rc = bytes.withUnsafeMutableBytes { ioctl(fd, request, $0.baseAddress!) }
        return rc < 0 ? errno : nil
    }
}

public enum InterfaceName {
    /// Linux interface names: 1-15 bytes, no '/', ':', whitespace, not "." or "..".
    public static func isValid(_ name: String) -> Bool {
        let u = Array(name.utf8)
        guard !u.isEmpty, u.count < InterfaceIoctl.nameSize, name != ".", name != ".." else { return false }
        return !u.contains { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7F }
    }
}

/// A tap interface (/dev/net/tun, IFF_TAP|IFF_NO_PI): every read is one Ethernet frame the
/// host sent towards the guest, every write one frame from the guest. The interface exists
/// while its descriptor is open (not persistent), so it vanishes with the VM.
public enum TapInterface {
    /// Opens a tap. `name` may be a full name ("tap3", "vm1if0") or a pattern with "%d"
    /// (the default "tap%d" lets the kernel pick the next free tapN, like OpenBSD's vmd).
    /// Returns the descriptor (close-on-exec) and the name the kernel gave it.
    public static func open(name: String = "tap%d") throws -> (fd: Int32, name: String) {
        let fd = Glibc.open("/dev/net/tun", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            throw NetworkError.tapUnavailable(reason: "/dev/net/tun: \(String(cString: strerror(e)))")
        }
        var req = try InterfaceRequest(name: name)
        req.short = InterfaceIoctl.iffTap | InterfaceIoctl.iffNoPI
        if let e = req.perform(fd, InterfaceIoctl.tunSetIff) {
            close(fd)
            throw NetworkError.interface(name, operation: "TUNSETIFF", errno: e)
        }
        return (fd, req.name)
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

/// Host interface and Linux bridge control through the classic ioctls (no netlink, no
/// `ip` binary): what vmd needs for `switch` blocks and `interface { switch ... }`.
public enum HostInterfaces {
    private static func withSocket<T>(_ body: (Int32) throws -> T) throws -> T {
        let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw NetworkError.systemCall("socket", errno: errno) }
        defer { close(s) }
        return try body(s)
    }

    /// The interface's index, or nil when it does not exist.
    public static func index(of name: String) -> Int32? {
        guard var req = try? InterfaceRequest(name: name) else { return nil }
        return try? withSocket { s -> Int32? in
            req.perform(s, InterfaceIoctl.getIndex) == nil ? req.int : nil
        } ?? nil
    }

    public static func exists(_ name: String) -> Bool { index(of: name) != nil }

    /// Brings the interface up or down (IFF_UP through SIOCSIFFLAGS).
    public static func setUp(_ name: String, _ up: Bool) throws {
        try withSocket { s in
            var req = try InterfaceRequest(name: name)
            if let e = req.perform(s, InterfaceIoctl.getFlags) {
                throw NetworkError.interface(name, operation: "SIOCGIFFLAGS", errno: e)
            }
            req.short = up ? req.short | InterfaceIoctl.iffUp : req.short & ~InterfaceIoctl.iffUp
            if let e = req.perform(s, InterfaceIoctl.setFlags) {
                throw NetworkError.interface(name, operation: "SIOCSIFFLAGS", errno: e)
            }
        }
    }

    /// Whether IFF_UP is set.
    public static func isUp(_ name: String) -> Bool {
        guard var req = try? InterfaceRequest(name: name) else { return false }
        return (try? withSocket { s in req.perform(s, InterfaceIoctl.getFlags) == nil && req.short & InterfaceIoctl.iffUp != 0 }) ?? false
    }

    /// Creates the bridge `name` (SIOCBRADDBR); does nothing when an interface of that name exists.
    public static func createBridge(_ name: String) throws {
        guard !exists(name) else { return }
        guard InterfaceName.isValid(name) else { throw NetworkError.invalidInterfaceName(name) }
        try withSocket { s in
            var cname = Array(name.utf8CString)
            // SAFETY: SIOCBRADDBR reads a NUL-terminated name of at most IFNAMSIZ bytes.
            let rc = cname.withUnsafeMutableBufferPointer { ioctl(s, InterfaceIoctl.bridgeAdd, $0.baseAddress!) }
            if rc < 0 { throw NetworkError.interface(name, operation: "SIOCBRADDBR", errno: errno) }
        }
    }

    /// Deletes the bridge `name` (it must be down).
    public static func deleteBridge(_ name: String) throws {
        guard InterfaceName.isValid(name) else { throw NetworkError.invalidInterfaceName(name) }
        try withSocket { s in
            var cname = Array(name.utf8CString)
            // SAFETY: SIOCBRDELBR reads a NUL-terminated name of at most IFNAMSIZ bytes.
            let rc = cname.withUnsafeMutableBufferPointer { ioctl(s, InterfaceIoctl.bridgeDelete, $0.baseAddress!) }
            if rc < 0 { throw NetworkError.interface(name, operation: "SIOCBRDELBR", errno: errno) }
        }
    }

    /// Adds `interface` as a port of `bridge` (SIOCBRADDIF).
    public static func addToBridge(_ interface: String, bridge: String) throws {
        guard let index = index(of: interface) else {
            throw NetworkError.interface(interface, operation: "SIOCGIFINDEX", errno: ENODEV)
        }
        try withSocket { s in
            var req = try InterfaceRequest(name: bridge)
            req.int = index
            if let e = req.perform(s, InterfaceIoctl.bridgeAddInterface) {
                throw NetworkError.interface(bridge, operation: "SIOCBRADDIF \(interface)", errno: e)
            }
        }
    }

    /// The bridge `interface` is a port of (from /sys/class/net/IF/master), if any.
    public static func bridge(of interface: String) -> String? {
        guard InterfaceName.isValid(interface) else { return nil }
        var buf = [Int8](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBufferPointer { readlink("/sys/class/net/\(interface)/master", $0.baseAddress!, 4095) }
        guard n > 0 else { return nil }
        let path = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return path.split(separator: "/").last.map(String.init)
    }
}
