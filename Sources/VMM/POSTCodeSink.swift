import Devices

/// Port 0x80, the PC's POST-code / I/O-delay port: firmware writes progress codes there
/// and Linux uses it for delays. Writes are remembered (last code), reads return all ones.
public final class POSTCodeSink: PortIODevice {
    public private(set) var lastCode: UInt8 = 0
    public private(set) var writes: UInt64 = 0

    public init() {}

    public func ioRead(offset: UInt16, size: Int) -> UInt32 {
        size >= 4 ? 0xFFFF_FFFF : (UInt32(1) << (size * 8)) - 1
    }

    public func ioWrite(offset: UInt16, size: Int, value: UInt32) {
        lastCode = UInt8(truncatingIfNeeded: value)
        writes &+= 1
    }
}
