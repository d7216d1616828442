/// QEMU's `isa-debug-exit` device: a write of value `v` to its port ends the VM with exit
/// status `(v << 1) | 1` (so a guest can never report plain success, 0, by accident).
/// Default placement: port 0xF4, 1 byte wide (`iosize=4` makes dword writes count whole).
///
/// The device only reports: `onExit` receives the status and the VMM stops the machine.
public final class DebugExit: PortIODevice {
    public static let defaultPort: UInt16 = 0xF4

    public let width: Int
    public var onExit: ((Int32) -> Void)?
    /// The last status requested, if any.
    public private(set) var exitStatus: Int32?

    /// - Parameter width: 1 or 4 bytes decoded (QEMU's `iosize`).
    public init(width: Int = 1, onExit: ((Int32) -> Void)? = nil) {
        self.width = width == 4 ? 4 : 1
        self.onExit = onExit
    }

    public func ioRead(offset: UInt16, size: Int) -> UInt32 { 0 }

    public func ioWrite(offset: UInt16, size: Int, value: UInt32) {
        let bytes = min(max(size, 1), width)
        let v = bytes >= 4 ? value : value & ((UInt32(1) << (bytes * 8)) - 1)
        let status = Int32(truncatingIfNeeded: (v << 1) | 1)
        exitStatus = status
        onExit?(status)
    }
}
