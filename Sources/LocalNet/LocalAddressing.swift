/// The two ends of one local interface's /31 (vmd(8) "LOCAL INTERFACES"): the host side
/// of the tap and the guest. The host address is also the guest's router and DNS server.
public struct LocalLink: Hashable, Sendable, Codable {
    public var host: IPv4Address
    public var guest: IPv4Address
    public init(host: IPv4Address, guest: IPv4Address) { self.host = host; self.guest = guest }
}

public enum LocalAddressError: Error, Equatable, CustomStringConvertible {
    case prefixTooLong(IPv4Prefix)
    case exhausted(prefix: IPv4Prefix, vmID: Int, interface: Int)

    public var description: String {
        switch self {
        case let .prefixTooLong(p):
            return "local prefix \(p) is too small: it must be /24 or shorter (one /24 per VM id)"
        case let .exhausted(p, vm, i):
            return "local prefix \(p) is exhausted: no /31 for vm id \(vm) interface \(i)"
        }
    }
}

/// OpenBSD vmd's scheme (vm_priv_addr): VM id N gets the /24 N of the prefix, its interface
/// I the /31 at (I + 1) * 2 in it (the first /31 is skipped so no gateway ends in .0); the
/// host takes the even address, the guest the odd one. Ids that do not fit the prefix and
/// interfaces past 126 are refused, not wrapped.
public enum LocalAddressing {
    public static let defaultPrefix = IPv4Prefix(network: IPv4Address(0x6440_0000), length: 10)!   // 100.64.0.0/10
    public static let maximumInterfaces = 126

    public static func link(prefix: IPv4Prefix, vmID: Int, interface: Int) throws(LocalAddressError) -> LocalLink {
        guard prefix.length <= 24 else { throw .prefixTooLong(prefix) }
        let slots = UInt64(1) << UInt64(24 - prefix.length)   // /24s in the prefix
        guard vmID >= 0, UInt64(vmID) < slots, (0..<maximumInterfaces).contains(interface) else {
            throw .exhausted(prefix: prefix, vmID: vmID, interface: interface)
        }
        let base = prefix.network.value | UInt32(vmID) << 8 | UInt32(interface + 1) * 2
        return LocalLink(host: IPv4Address(base), guest: IPv4Address(base + 1))
    }
}
