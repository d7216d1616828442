#if canImport(Glibc)
import Glibc
#endif

/// One host interface as rtnetlink lists it.
public struct HostLink: Equatable, Sendable {
    public var index: Int32
    public var name: String
    public var up: Bool
    public var mac: [UInt8]
    /// The bridge or VRF it is enslaved to (its index).
    public var master: Int32?
    /// IFLA_INFO_KIND: "bridge", "tun", "vrf", ... (nil for plain devices).
    public var kind: String?
    public var alias: String?
}

/// One IPv4/IPv6 address on a host interface.
public struct HostAddress: Equatable, Sendable {
    public var index: Int32
    public var family: Int32
    /// 4 or 16 bytes, network order.
    public var address: [UInt8]
    public var prefixLength: Int
}

/// The host side of guest networking, all through rtnetlink (no `ip` binary, no ioctls
/// but the tap's TUNSETIFF): links up and down, Linux bridges and VRFs, ports, aliases,
/// addresses. Every call opens its own socket, so callers need no shared state.
public enum HostInterfaces {
    private static let iffUp: UInt32 = 0x1

    // MARK: reading

    public static func links() throws(HostNetError) -> [HostLink] {
        let nl = try NetlinkSocket()
        let replies = try nl.dump(NetlinkMessage(type: RT.getLink, flags: RT.fDump, fixed: NetlinkMessage.ifinfo()),
                                  type: RT.newLink)
        return replies.compactMap { r in
            guard r.body.count >= RT.ifinfoSize else { return nil }
            let a = r.attributes(after: RT.ifinfoSize)
            guard let name = NetlinkReply.string(a[RT.iflaIfname]) else { return nil }
            let info = a[RT.iflaLinkinfo].map { NetlinkReply.attributes($0) } ?? [:]
            return HostLink(index: Int32(bitPattern: NetlinkReply.u32(r.body, 4)), name: name,
                            up: NetlinkReply.u32(r.body, 8) & iffUp != 0,
                            mac: a[RT.iflaAddress].map(Array.init) ?? [],
                            master: a[RT.iflaMaster].flatMap { $0.count >= 4 ? Int32(bitPattern: NetlinkReply.u32($0, 0)) : nil },
                            kind: NetlinkReply.string(info[RT.infoKind]),
                            alias: NetlinkReply.string(a[RT.iflaIfalias]))
        }
    }

    public static func link(named name: String) -> HostLink? {
        guard InterfaceName.isValid(name) else { return nil }
        return (try? links())?.first { $0.name == name }
    }

    /// The interface's index, or nil when it does not exist.
    public static func index(of name: String) -> Int32? { link(named: name)?.index }
    public static func exists(_ name: String) -> Bool { index(of: name) != nil }
    public static func isUp(_ name: String) -> Bool { link(named: name)?.up ?? false }
    public static func mac(of name: String) -> [UInt8]? { link(named: name)?.mac }

    /// The bridge (or VRF) `interface` is a port of, if any.
    public static func bridge(of interface: String) -> String? {
        guard let all = try? links(), let l = all.first(where: { $0.name == interface }), let m = l.master else { return nil }
        return all.first { $0.index == m }?.name
    }

    public static func addresses() throws(HostNetError) -> [HostAddress] {
        let nl = try NetlinkSocket()
        let replies = try nl.dump(NetlinkMessage(type: RT.getAddr, flags: RT.fDump,
                                                 fixed: NetlinkMessage.ifaddr(family: AF_UNSPEC, prefixLength: 0, index: 0)),
                                  type: RT.newAddr)
        return replies.compactMap { r in
            guard r.body.count >= RT.ifaddrSize else { return nil }
            let a = r.attributes(after: RT.ifaddrSize)
            guard let addr = a[RT.ifaLocal] ?? a[RT.ifaAddress], addr.count == 4 || addr.count == 16 else { return nil }
            return HostAddress(index: Int32(bitPattern: NetlinkReply.u32(r.body, 4)), family: Int32(r.body.first!),
                               address: Array(addr), prefixLength: Int(r.body[r.body.startIndex + 1]))
        }
    }

    // MARK: changing

    private static func index(_ name: String) throws(HostNetError) -> Int32 {
        guard InterfaceName.isValid(name) else { throw .invalidInterfaceName(name) }
        guard let i = index(of: name) else { throw .noSuchInterface(name) }
        return i
    }

    /// Brings the interface up or down.
    public static func setUp(_ name: String, _ up: Bool) throws(HostNetError) {
        let i = try index(name)
        try NetlinkSocket().request(NetlinkMessage(type: RT.newLink, flags: 0,
                                                   fixed: NetlinkMessage.ifinfo(index: i, flags: up ? iffUp : 0, change: iffUp)),
                                    "\(name): set link \(up ? "up" : "down")")
    }

    /// Creates a link of `kind` ("bridge", "vrf") named `name`, with an alias (vmd marks
    /// what it made) and for a VRF its routing table. Fails when the name is taken.
    public static func create(_ name: String, kind: String, alias: String? = nil, vrfTable: UInt32? = nil) throws(HostNetError) {
        guard InterfaceName.isValid(name) else { throw .invalidInterfaceName(name) }
        var m = NetlinkMessage(type: RT.newLink, flags: RT.fCreate | RT.fExcl, fixed: NetlinkMessage.ifinfo())
        m.attribute(RT.iflaIfname, string: name)
        m.nest(RT.iflaLinkinfo) { li in
            li.attribute(RT.infoKind, string: kind)
            if let vrfTable { li.nest(RT.infoData) { $0.attribute(RT.vrfTable, u32: vrfTable) } }
        }
        try NetlinkSocket().request(m, "\(name): create \(kind)")
        // The kernel ignores IFLA_IFALIAS in a create: set it in a second request.
        if let alias {
            do { try setAlias(name, alias) } catch { try? delete(name); throw error }
        }
    }

    /// Creates the bridge `name`; does nothing when an interface of that name exists.
    public static func createBridge(_ name: String, alias: String? = nil) throws(HostNetError) {
        guard !exists(name) else { return }
        try create(name, kind: "bridge", alias: alias)
    }

    /// Deletes a link (a bridge, a VRF).
    public static func delete(_ name: String) throws(HostNetError) {
        let i = try index(name)
        try NetlinkSocket().request(NetlinkMessage(type: RT.delLink, flags: 0, fixed: NetlinkMessage.ifinfo(index: i)),
                                    "\(name): delete")
    }
    public static func deleteBridge(_ name: String) throws(HostNetError) { try delete(name) }

    /// Makes `interface` a port of `master` (a bridge or a VRF); nil master releases it.
    public static func setMaster(_ interface: String, _ master: String?) throws(HostNetError) {
        let i = try index(interface)
        let m = try master.map { n throws(HostNetError) in try index(n) } ?? 0
        var msg = NetlinkMessage(type: RT.newLink, flags: 0, fixed: NetlinkMessage.ifinfo(index: i))
        msg.attribute(RT.iflaMaster, u32: UInt32(bitPattern: m))
        try NetlinkSocket().request(msg, "\(interface): set master \(master ?? "none")")
    }
    public static func addToBridge(_ interface: String, bridge: String) throws(HostNetError) {
        try setMaster(interface, bridge)
    }

    /// Sets the interface's alias (IFLA_IFALIAS, `ip link set NAME alias TEXT`).
    public static func setAlias(_ name: String, _ alias: String) throws(HostNetError) {
        let i = try index(name)
        var m = NetlinkMessage(type: RT.newLink, flags: 0, fixed: NetlinkMessage.ifinfo(index: i))
        m.attribute(RT.iflaIfalias, string: alias)
        try NetlinkSocket().request(m, "\(name): set alias")
    }

    /// Adds an address (4 or 16 bytes) with its prefix length to the interface.
    public static func addAddress(_ name: String, _ address: [UInt8], prefixLength: Int) throws(HostNetError) {
        let i = try index(name)
        let family = address.count == 4 ? AF_INET : AF_INET6
        var m = NetlinkMessage(type: RT.newAddr, flags: RT.fCreate | RT.fExcl,
                               fixed: NetlinkMessage.ifaddr(family: family, prefixLength: prefixLength, index: i))
        m.attribute(RT.ifaLocal, address)
        m.attribute(RT.ifaAddress, address)
        try NetlinkSocket().request(m, "\(name): add address")
    }
}
