/// The VM process's Landlock domain (issue 11, section 2): every right the kernel's Landlock
/// ABI can handle, handled and granted to nothing. Files the process opened before keep the
/// rights they were opened with (Landlock checks at open time), so its disks, pty, /dev/kvm,
/// taps and eventfds work; no path can be opened, created, removed, renamed, linked or
/// executed afterwards, no TCP port bound or connected (ABI 4), no abstract unix socket
/// reached and no process outside the domain signalled (ABI 6).
public struct LandlockPolicy: Equatable, Sendable {
    public var fs: UInt64
    public var net: UInt64
    public var scoped: UInt64

    /// The rights ABI `abi` knows (linux/landlock.h): fs EXECUTE ... MAKE_SYM (bits 0-12,
    /// ABI 1), REFER (13, ABI 2), TRUNCATE (14, ABI 3), IOCTL_DEV (15, ABI 5); net BIND_TCP,
    /// CONNECT_TCP (ABI 4); scoped ABSTRACT_UNIX_SOCKET, SIGNAL (ABI 6). nil below ABI 1.
    public static func denyAll(abi: Int) -> LandlockPolicy? {
        guard abi >= 1 else { return nil }
        var fs: UInt64 = (1 << 13) - 1
        if abi >= 2 { fs |= 1 << 13 }
        if abi >= 3 { fs |= 1 << 14 }
        if abi >= 5 { fs |= 1 << 15 }
        let net: UInt64 = abi >= 4 ? 0b11 : 0
        let scoped: UInt64 = abi >= 6 ? 0b11 : 0
        return LandlockPolicy(fs: fs, net: net, scoped: scoped)
    }
}
