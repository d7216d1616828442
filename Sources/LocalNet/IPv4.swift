/// An IPv4 address as a host-order integer (100.64.0.1 = 0x6440_0001).
public struct IPv4Address: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }

    /// Dotted quad, four decimal parts 0-255, nothing else.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard (1...3).contains(p.count), p.allSatisfy(\.isASCII), let b = UInt8(p) else { return nil }
            v = v << 8 | UInt32(b)
        }
        value = v
    }

    public init(bytes: some Collection<UInt8>) {
        value = bytes.prefix(4).reduce(0) { $0 << 8 | UInt32($1) }
    }

    public var bytes: [UInt8] { [UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)] }
    public var description: String { bytes.map(String.init).joined(separator: ".") }
    public static let zero = IPv4Address(0)
    public static let broadcast = IPv4Address(0xFFFF_FFFF)
    public static func < (a: IPv4Address, b: IPv4Address) -> Bool { a.value < b.value }
}

/// An IPv4 prefix (network address and length), e.g. vm.conf's `local prefix 100.64.0.0/10`.
public struct IPv4Prefix: Hashable, Sendable, Codable, CustomStringConvertible {
    public var network: IPv4Address
    public var length: Int

    /// Fails unless `length` is 0-32 and `network` has no bits past the length.
    public init?(network: IPv4Address, length: Int) {
        guard (0...32).contains(length) else { return nil }
        guard network.value & ~Self.mask(length) == 0 else { return nil }
        self.network = network; self.length = length
    }

    /// "a.b.c.d/n" with the host bits clear.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = IPv4Address(String(parts[0])),
              parts[1].count <= 2, parts[1].allSatisfy(\.isASCII), let n = Int(parts[1]) else { return nil }
        self.init(network: a, length: n)
    }

    public static func mask(_ length: Int) -> UInt32 { length == 0 ? 0 : UInt32.max << UInt32(32 - length) }
    public var mask: UInt32 { Self.mask(length) }
    public func contains(_ a: IPv4Address) -> Bool { a.value & mask == network.value }
    public func overlaps(_ other: IPv4Prefix) -> Bool {
        let m = Self.mask(min(length, other.length))
        return network.value & m == other.network.value & m
    }
    public var description: String { "\(network)/\(length)" }
}
