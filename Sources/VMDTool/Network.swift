#if canImport(Glibc)
import Glibc
#endif
import Devices
import HostNet
import LocalNet
import Logging
import VMConfig
import VMM

// Guest networking in vmd (docs/vmd.md, "Networking"): for each interface of a VM, vmd (as
// root) creates a tap, brings it up or down, attaches it to its switch's Linux bridge
// (creating the bridge when it does not exist), gives a local interface its /31, and passes
// the tap descriptor to the VM process with the guest's files; the VM process gives it to
// its virtio-net device. All host changes go through rtnetlink (HostNet).

/// One guest interface as the VM process sees it: which passed descriptor is its tap, the
/// tap's host name (for messages) and the guest MAC.
struct ChildInterface: Codable, Equatable {
    var name: String
    var mac: [UInt8]
    /// `locked lladdr`: the device drops frames the guest sends from another MAC.
    var locked = false
    /// A local interface: the lease the VM's network path hands out by DHCP.
    var local: LocalLease?
    /// Where vmd attached the tap (for `reset switches`; the VM process ignores them).
    var switchName: String?
    var rdomain: Int?
}

enum VMNetwork {
    /// The alias (IFLA_IFALIAS) vmd puts on the bridges and VRFs it creates: what it may
    /// remove again (on exit, at start after a crash, on `reset switches`). Links without it
    /// (the user's own bridges) are used but never deleted.
    static let ownedAliasPrefix = "swiftvmm-vmd:"

    /// The alias of a link this vmd (known by its control socket) creates.
    static func ownedAlias(socket: String, _ what: String) -> String { "\(ownedAliasPrefix)\(socket): \(what)" }

    /// The host tap name for interface `i`: the configured `interface NAME` when it names one
    /// ("tap" alone, as in OpenBSD, means "any"), else the next free tapN.
    static func tapName(_ spec: InterfaceSpec) -> String {
        guard let n = spec.name, n != "tap" else { return "tap%d" }
        return n
    }

    /// The guest MAC: `lladdr` when set, else a stable fe:e1:ba:d0:xx:xx from the VM name.
    static func mac(_ spec: InterfaceSpec, vm: String, index: Int) -> [UInt8] {
        spec.lladdr?.bytes ?? VirtioNet.generatedMAC(seed: "\(vm)/\(index)")
    }

    /// Every guest MAC of a definition, in interface order.
    static func macs(_ d: VMDefinition) -> [[UInt8]] {
        (0..<min(d.effectiveInterfaceCount, VMLimits.maxInterfaces)).map { i in
            mac(i < d.interfaces.count ? d.interfaces[i] : InterfaceSpec(), vm: d.name, index: i)
        }
    }

    /// The bridge a switch stands for: its `interface` (bridgeN), else its own name when that
    /// is a valid interface name.
    static func bridgeName(_ sw: SwitchDefinition) -> String? {
        if let i = sw.interface { return i }
        return InterfaceName.isValid(sw.name) ? sw.name : nil
    }

    /// The Linux VRF standing for OpenBSD's `rdomain N` (N > 0): `rdomainN`, routing table
    /// 1000 + N (clear of main/local/default and of small tables users pick).
    static func vrf(_ rdomain: Int) -> (name: String, table: UInt32) { ("rdomain\(rdomain)", UInt32(1000 + rdomain)) }

    /// The local prefix as vm.conf gives it, checked (network address, /24 or shorter).
    static func localPrefix(_ config: VMConfiguration) -> Result<IPv4Prefix, GuestError> {
        guard let p = config.localPrefix else { return .success(LocalAddressing.defaultPrefix) }
        guard let a = IPv4Address(p.address) else {
            return .failure(GuestError(description: "local prefix \(p): not an IPv4 prefix"))
        }
        guard let prefix = IPv4Prefix(network: a, length: p.length) else {
            return .failure(GuestError(description: "local prefix \(p): bad mask: the address has bits set past /\(p.length) (the network is \(IPv4Address(a.value & IPv4Prefix.mask(p.length)))/\(p.length))"))
        }
        guard prefix.length <= 24 else {
            return .failure(GuestError(description: "\(LocalAddressError.prefixTooLong(prefix))"))
        }
        return .success(prefix)
    }

    /// `local inet6` without a prefix: a random unique local fdXX:XXXX:XXXX::/48 for this
    /// vmd's lifetime (as OpenBSD's vmd picks one at start).
    static let randomInet6Prefix: IPPrefix = {
        var g = SystemRandomNumberGenerator()
        let b = [0xFD] + (0..<5).map { _ in UInt8.random(in: 0...255, using: &g) }
        let text = stride(from: 0, to: 6, by: 2).map { String(UInt16(b[$0]) << 8 | UInt16(b[$0 + 1]), radix: 16) }.joined(separator: ":")
        return IPPrefix(address: text + "::", length: 48)
    }()

    /// The /64 of VM id `vmID`'s interface `i` out of the `local inet6` prefix: the subnet
    /// bits right after the prefix hold vmID * 256 + i (so a /48 has room for 255 VMs).
    static func inet6(_ config: VMConfiguration, vmID: Int, interface i: Int) -> Result<LocalInet6?, GuestError> {
        guard config.localInet6Enabled else { return .success(nil) }
        let p = config.localInet6Prefix ?? randomInet6Prefix
        guard var a = LocalInet6.address(p.address), p.length <= 64 else {
            return .failure(GuestError(description: "local inet6 prefix \(p): not an IPv6 prefix of /64 or shorter"))
        }
        let high = a[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let free = 64 - p.length
        let mask: UInt64 = free == 64 ? 0 : ~UInt64(0) << UInt64(free)
        guard high & ~mask == 0, a[8...].allSatisfy({ $0 == 0 }) else {
            return .failure(GuestError(description: "local inet6 prefix \(p): bad mask: the address has bits set past /\(p.length)"))
        }
        let n = UInt64(vmID) << 8 | UInt64(i)
        guard free == 64 || n < UInt64(1) << UInt64(free) else {
            return .failure(GuestError(description: "local inet6 prefix \(p) is exhausted: no /64 for vm id \(vmID) interface \(i)"))
        }
        let v = high | n
        for k in 0..<8 { a[k] = UInt8(truncatingIfNeeded: v >> UInt64(8 * (7 - k))) }
        return .success(LocalInet6(prefix: a))
    }

    /// Makes sure a switch's bridge exists (created with vmd's alias when it does not), and
    /// applies its `up`/`down`, `group` and `rdomain`.
    static func prepareSwitch(_ sw: SwitchDefinition, socket: String, log: Logger) throws(HostNetError) -> String {
        guard let b = bridgeName(sw) else { throw .invalidInterfaceName(sw.name) }
        if !HostInterfaces.exists(b) {
            try HostInterfaces.create(b, kind: "bridge", alias: ownedAlias(socket: socket, "switch \(sw.name)\(sw.group.map { " group \($0)" } ?? "")"))
            log.info("switch \(sw.name): created bridge \(b)")
        }
        if let r = sw.rdomain, r > 0 { try HostInterfaces.setMaster(b, try ensureVRF(r, socket: socket, log: log)) }
        if sw.up { try HostInterfaces.setUp(b, true) }   // `down` leaves its state alone
        return b
    }

    static func ensureVRF(_ rdomain: Int, socket: String, log: Logger) throws(HostNetError) -> String {
        let (name, table) = vrf(rdomain)
        if !HostInterfaces.exists(name) {
            try HostInterfaces.create(name, kind: "vrf", alias: ownedAlias(socket: socket, "rdomain \(rdomain)"), vrfTable: table)
            log.info("rdomain \(rdomain): created VRF \(name) (table \(table))")
        }
        try HostInterfaces.setUp(name, true)
        return name
    }

    /// Creates the VM's taps, appends their descriptors to `files` (and its count) and
    /// returns what the VM process needs. On failure every tap made so far is closed (so it
    /// disappears with its address) and the error names the VM and the interface.
    /// `macsInUse` maps the MACs of the other running VMs to their names.
    static func open(_ d: VMDefinition, id: Int, config: VMConfiguration, macsInUse: [[UInt8]: String],
                     socket: String, into files: inout OpenedGuestFiles, log: Logger) -> Result<[ChildInterface], GuestError> {
        let count = d.effectiveInterfaceCount
        guard count > 0 else { return .success([]) }
        guard count <= VMLimits.maxInterfaces else {
            return .failure(GuestError(description: "vm \(d.name): \(count) interfaces; at most \(VMLimits.maxInterfaces)"))
        }
        var made: [Int32] = []
        var out: [ChildInterface] = []
        func fail(_ i: Int, _ m: String) -> Result<[ChildInterface], GuestError> {
            for fd in made { close(fd) }
            return .failure(GuestError(description: "vm \(d.name): interface \(i): \(m)"))
        }
        let macs = macs(d)
        for i in 0..<count {
            let spec = i < d.interfaces.count ? d.interfaces[i] : InterfaceSpec()
            let mac = macs[i]
            if let other = macsInUse[mac] {
                return fail(i, "lladdr \(NetworkInterfaceConfig.formatMAC(mac)) is already used by vm \(other)")
            }
            if let j = macs.prefix(i).firstIndex(of: mac) {
                return fail(i, "lladdr \(NetworkInterfaceConfig.formatMAC(mac)) is already used by interface \(j)")
            }
            var link: LocalLink?
            var inet6: LocalInet6?
            if spec.isLocal {
                switch Self.inet6(config, vmID: id, interface: i) {
                case .failure(let e): return fail(i, e.description)
                case .success(let x): inet6 = x
                }
                switch localPrefix(config) {
                case .failure(let e): return fail(i, e.description)
                case .success(let p):
                    do { link = try LocalAddressing.link(prefix: p, vmID: id, interface: i) } catch { return fail(i, "\(error)") }
                }
                if let clash = conflict(link!) { return fail(i, clash) }
            }
            var master: String?
            if let s = spec.switchName {
                guard let sw = config.switchDefinition(named: s) else { return fail(i, "switch \(s) is not defined") }
                guard sw.enabled else { return fail(i, "switch \(s) is disabled") }
                guard bridgeName(sw) != nil else { return fail(i, "switch \(s) has no interface (e.g. interface bridge0)") }
                do { master = try prepareSwitch(sw, socket: socket, log: log) } catch { return fail(i, "switch \(s): \(error)") }
            } else if let r = spec.rdomain, r > 0 {
                do { master = try ensureVRF(r, socket: socket, log: log) } catch { return fail(i, "rdomain \(r): \(error)") }
            }
            let tap: (fd: Int32, name: String)
            do {
                // With the virtio-net header: the guest's offloads pass through (virtio.md).
                tap = try TapInterface.open(name: tapName(spec), virtioHeader: true)
            } catch {
                return fail(i, "\(error)")
            }
            made.append(tap.fd)
            var lease: LocalLease?
            do {
                try HostInterfaces.setAlias(tap.name, "vm \(d.name) interface \(i)\(spec.group.map { " group \($0)" } ?? "")")
                if let master { try HostInterfaces.setMaster(tap.name, master) }
                if let link {
                    try HostInterfaces.addAddress(tap.name, link.host.bytes, prefixLength: 31)
                    guard let hostMAC = HostInterfaces.mac(of: tap.name), hostMAC.count == 6 else {
                        return fail(i, "\(tap.name): no hardware address")
                    }
                    lease = LocalLease(link: link, guestMAC: mac, serverMAC: hostMAC,
                                       hostName: d.name, leaseSeconds: LocalLease.defaultLeaseSeconds)
                    lease?.inet6 = inet6
                    // boot device net: the first local interface answers the firmware's
                    // DHCP with the boot file and serves its directory by TFTP.
                    if d.bootDevice == .net, let b = d.boot, !out.contains(where: { $0.local?.netBoot != nil }) {
                        lease?.netBoot = netBoot(b)
                    }
                    if let inet6 {
                        try HostInterfaces.addAddress(tap.name, inet6.hostAddress, prefixLength: 64)
                        // The RA's source (fe80:: + EUI-64 of the tap's MAC) must be the
                        // host's even where addr_gen_mode picks another link-local; where
                        // the kernel makes the same one, this one is already there.
                        try? HostInterfaces.addAddress(tap.name, linkLocalAddress(hostMAC), prefixLength: 64)
                    }
                }
                try HostInterfaces.setUp(tap.name, spec.up || spec.isLocal)
            } catch {
                return fail(i, "\(error)")
            }
            let via = master.map { spec.switchName != nil ? " on bridge \($0)" : " in VRF \($0)" } ?? ""
            let local = (link.map { ", local \($0.host)/31, guest \($0.guest)" } ?? "")
                + (inet6.map { ", inet6 \(LocalInet6.text($0.hostAddress))/64" } ?? "")
            log.info("vm \(d.name): interface \(i) is \(tap.name)\(via)\(local), \(spec.locked ? "locked " : "")lladdr \(NetworkInterfaceConfig.formatMAC(mac))")
            out.append(ChildInterface(name: tap.name, mac: mac, locked: spec.locked, local: lease,
                                      switchName: spec.switchName, rdomain: spec.rdomain))
        }
        for (k, fd) in made.enumerated() {
            files.add(fd, GuestFile(role: .tap(k), path: out[k].name, format: nil, readOnly: false))
        }
        return .success(out)
    }

    /// `boot PATH` with boot device net: TFTP serves PATH's directory, DHCP names its file.
    static func netBoot(_ path: String) -> LocalNetBoot? {
        guard let slash = path.lastIndex(of: "/") else { return nil }
        let file = String(path[path.index(after: slash)...])
        let dir = slash == path.startIndex ? "/" : String(path[..<slash])
        guard LocalDHCPServer.bootFileField(file) != nil else { return nil }
        return LocalNetBoot(bootFile: file, directory: dir)
    }

    /// Why the /31 cannot be used: an address of the host (on any interface) whose network
    /// overlaps it, e.g. a local prefix chosen inside a network the host already has.
    static func conflict(_ link: LocalLink) -> String? {
        guard let all = try? HostInterfaces.addresses() else { return nil }
        let mine = IPv4Prefix(network: link.host, length: 31)!
        let names = (try? HostInterfaces.links()) ?? []
        for a in all where a.family == AF_INET && a.address.count == 4 {
            let addr = IPv4Address(bytes: a.address)
            let net = IPv4Prefix(network: IPv4Address(addr.value & IPv4Prefix.mask(a.prefixLength)), length: a.prefixLength)!
            guard net.overlaps(mine) else { continue }
            let on = names.first { $0.index == a.index }?.name ?? "interface \(a.index)"
            return "local address \(link.host)/31 overlaps \(addr)/\(a.prefixLength) on \(on); choose another local prefix"
        }
        return nil
    }

    /// Deletes the bridges and VRFs vmd created (those with its alias): at exit, and at
    /// start for what a vmd that was killed left behind. Taps need nothing: they vanish with
    /// the VM processes' descriptors, with their addresses.
    static func removeOwnedLinks(socket: String, log: Logger) {
        guard geteuid() == 0, let links = try? HostInterfaces.links() else { return }
        let mine = ownedAlias(socket: socket, "")
        for l in links where l.alias?.hasPrefix(mine) == true {
            do {
                try HostInterfaces.delete(l.name)
                log.info("removed \(l.kind ?? "link") \(l.name) (\(l.alias!.dropFirst(mine.count)))")
            } catch {
                log.warning("could not remove \(l.name): \(error)")
            }
        }
    }
}
