#if canImport(Glibc)
import Glibc
#endif
@testable import HostNet
import Testing

@Suite struct NetlinkCodingTests {
    @Test func interfaceNames() {
        #expect(InterfaceName.isValid("tap0") && InterfaceName.isValid("vm12if3") && InterfaceName.isValid("bridge0"))
        #expect(!InterfaceName.isValid("") && !InterfaceName.isValid("a/b") && !InterfaceName.isValid("sixteen-chars-xx"))
        #expect(!InterfaceName.isValid("a b") && !InterfaceName.isValid(".."))
    }

    @Test func requestLayout() {
        var m = NetlinkMessage(type: RT.newLink, flags: RT.fCreate, fixed: NetlinkMessage.ifinfo(index: 7))
        m.attribute(RT.iflaIfname, string: "br0")            // 4 + 4 bytes
        m.nest(RT.iflaLinkinfo) { $0.attribute(RT.infoKind, string: "vrf"); $0.nest(RT.infoData) { $0.attribute(RT.vrfTable, u32: 10) } }
        let b = m.finished(sequence: 9)
        #expect(b.count % 4 == 0)
        #expect(NetlinkReply.u32(b[...], 0) == UInt32(b.count))
        #expect(NetlinkReply.u16(b[...], 4) == RT.newLink)
        #expect(NetlinkReply.u16(b[...], 6) == RT.fCreate | RT.fRequest)
        #expect(NetlinkReply.u32(b[...], 8) == 9)
        #expect(NetlinkReply.u32(b[...], 16 + 4) == 7, "ifi_index")
        let r = NetlinkReply.split(b[...])
        #expect(r.count == 1)
        let a = r[0].attributes(after: RT.ifinfoSize)
        #expect(NetlinkReply.string(a[RT.iflaIfname]) == "br0")
        let info = NetlinkReply.attributes(a[RT.iflaLinkinfo]!)
        #expect(NetlinkReply.string(info[RT.infoKind]) == "vrf")
        let data = NetlinkReply.attributes(info[RT.infoData]!)
        #expect(NetlinkReply.u32(data[RT.vrfTable]!, 0) == 10)
        // The nested flag is set on the wire and cleared when read.
        #expect(NetlinkReply.u16(b[...], 16 + 16 + 8 + 2) == RT.iflaLinkinfo | RT.nested)
    }

    /// Replies are walked with every length checked: truncations, zero and huge lengths end
    /// the walk instead of trapping.
    @Test func hostileRepliesDoNotTrap() {
        var m = NetlinkMessage(type: RT.newLink, flags: 0, fixed: NetlinkMessage.ifinfo())
        m.attribute(RT.iflaIfname, string: "eth0")
        m.attribute(RT.iflaAddress, [1, 2, 3, 4, 5, 6])
        let good = m.finished(sequence: 1)
        for cut in 0...good.count {
            for r in NetlinkReply.split(good[0..<cut]) { _ = r.attributes(after: RT.ifinfoSize) }
        }
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var b = good
            for _ in 0..<3 { b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            for r in NetlinkReply.split(b[...]) {
                for (_, v) in r.attributes(after: RT.ifinfoSize) { _ = NetlinkReply.attributes(v) }
            }
        }
        #expect(NetlinkReply.split([0xFF, 0xFF, 0xFF, 0xFF] + [UInt8](repeating: 0, count: 12)).isEmpty)
        #expect(NetlinkReply.attributes([0, 0, 1, 0][...]).isEmpty, "a zero-length attribute ends the walk")
    }
}

/// Real links on this host: needs root (CAP_NET_ADMIN) and /dev/net/tun.
@Suite(.serialized, .enabled(if: TapInterface.unavailableReason() == nil, "taps cannot be made here"))
struct HostLinkTests {
    static func tag() -> String { String(getpid() % 100_000) }

    @Test func bridgeAliasPortAddressAndTapLifetime() throws {
        let bridge = "svbr\(Self.tag())"
        try HostInterfaces.createBridge(bridge, alias: "swiftvmm test")
        defer { try? HostInterfaces.delete(bridge) }
        let b = try #require(HostInterfaces.link(named: bridge))
        #expect(b.kind == "bridge" && b.alias == "swiftvmm test")
        try HostInterfaces.createBridge(bridge)   // idempotent
        #expect(throws: HostNetError.self) { try HostInterfaces.create(bridge, kind: "bridge") }

        let tap = try TapInterface.open(name: "svt\(Self.tag())%d")
        try HostInterfaces.addAddress(tap.name, [100, 127, 9, 2], prefixLength: 31)
        try HostInterfaces.setUp(tap.name, true)
        #expect(HostInterfaces.isUp(tap.name))
        let index = try #require(HostInterfaces.index(of: tap.name))
        #expect(try HostInterfaces.addresses().contains {
            $0.index == index && $0.address == [100, 127, 9, 2] && $0.prefixLength == 31
        })
        #expect(HostInterfaces.mac(of: tap.name)?.count == 6)
        try HostInterfaces.setAlias(tap.name, "vm test if 0")
        #expect(HostInterfaces.link(named: tap.name)?.alias == "vm test if 0")
        try HostInterfaces.setMaster(tap.name, bridge)
        #expect(HostInterfaces.bridge(of: tap.name) == bridge)
        try HostInterfaces.setMaster(tap.name, nil)
        #expect(HostInterfaces.bridge(of: tap.name) == nil)
        #expect(throws: HostNetError.self) { try HostInterfaces.setMaster("nonexistent0", bridge) }

        close(tap.fd)
        #expect(HostInterfaces.index(of: tap.name) == nil, "a non-persistent tap vanishes with its descriptor")
        #expect(try !HostInterfaces.addresses().contains { $0.address == [100, 127, 9, 2] }, "and its address with it")
    }

    /// Whether this kernel makes VRFs (the vrf module).
    static let vrfProblem: String? = {
        let probe = "svvrfp\(tag())"
        do { try HostInterfaces.create(probe, kind: "vrf", vrfTable: 4241) } catch { return "\(error)" }
        try? HostInterfaces.delete(probe)
        return nil
    }()

    @Test(.enabled(if: vrfProblem == nil, "no VRFs in this kernel")) func vrfWithTable() throws {
        let vrf = "svvrf\(Self.tag())"
        try HostInterfaces.create(vrf, kind: "vrf", vrfTable: 4242)
        defer { try? HostInterfaces.delete(vrf) }
        #expect(HostInterfaces.link(named: vrf)?.kind == "vrf")
        try HostInterfaces.delete(vrf)
        #expect(!HostInterfaces.exists(vrf))
    }
}
