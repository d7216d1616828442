/// The kind of a base address register.
public enum PCIBarKind: Sendable, Equatable {
    case memory32
    case memory64
    case io
}

/// A BAR a device decodes: its index (0-5; a 64-bit BAR also uses index+1), kind and size
/// (a power of two).
public struct PCIBar: Sendable, Equatable {
    public var index: Int
    public var kind: PCIBarKind
    public var size: UInt64
    public var prefetchable: Bool

    public init(index: Int, kind: PCIBarKind, size: UInt64, prefetchable: Bool = false) {
        self.index = index; self.kind = kind; self.size = size; self.prefetchable = prefetchable
    }
}

/// A PCI function on the host bridge's bus 0.
///
/// The host bridge (Legacy/PCIHost.swift) routes configuration cycles (mechanism #1,
/// 0xCF8/0xCFC) to `configRead/configWrite`, and accesses inside a programmed, enabled BAR
/// to `barRead/barWrite` with the offset inside that BAR. Config space is 256 bytes.
public protocol PCIDevice: AnyObject {
    /// A short name for logs ("virtio-blk").
    var pciName: String { get }
    /// The BARs this function decodes.
    var bars: [PCIBar] { get }
    func configRead(offset: Int, size: Int) -> UInt32
    func configWrite(offset: Int, size: Int, value: UInt32)
    func barRead(index: Int, offset: UInt64, size: Int) -> UInt64
    func barWrite(index: Int, offset: UInt64, size: Int, value: UInt64)
}
