import GuestMemory

/// virtio-rng (virtio 1.x §5.4): fills every device-writable buffer the driver posts with
/// bytes from the host's CSPRNG (`SystemRandomNumberGenerator`, i.e. getrandom(2)).
/// At most `maxBytesPerRequest` per chain, so a hostile driver cannot stall the VMM.
public final class VirtioEntropy: VirtioDeviceModel {
    public static let maxBytesPerRequest = 64 * 1024
    public private(set) var bytesProvided: UInt64 = 0
    private var chain = DescriptorChain()
    /// The byte source; tests may substitute a deterministic one.
    private let source: (UnsafeMutableRawBufferPointer) -> Void

    public init(source: ((UnsafeMutableRawBufferPointer) -> Void)? = nil) {
        self.source = source ?? { buffer in
            var rng = SystemRandomNumberGenerator()
            var i = 0
            while i < buffer.count {
                var word = rng.next()
                let n = min(8, buffer.count - i)
                withUnsafeBytes(of: &word) { w in
                    // SAFETY: n <= 8 bytes of `word`, into buffer[i..<i+n] which exists.
                    (buffer.baseAddress! + i).copyMemory(from: w.baseAddress!, byteCount: n)
                }
                i += n
            }
        }
    }

    public var deviceType: VirtioDeviceType { .entropy }
    public var pciClass: (UInt8, UInt8, UInt8) { (0xFF, 0x00, 0x00) }
    public var deviceFeatures: UInt64 { 0 }
    public var queueMaxSizes: [UInt16] { [64] }
    public var configSize: Int { 0 }
    public func readConfig(offset: Int, size: Int) -> UInt32 { 0 }
    public func writeConfig(offset: Int, size: Int, value: UInt32) {}
    public func activate(features: UInt64) {}
    public func reset() {}

    public func process(queueIndex: Int, queue: inout SplitVirtqueue, memory: GuestMemory) throws {
        while try queue.pop(into: &chain, memory: memory) {
            let length = min(chain.writableLength, Self.maxBytesPerRequest)
            let done = try chain.withSegments(writable: true, offset: 0, length: length, memory: memory) { seg in
                source(seg)
            }
            bytesProvided &+= UInt64(done)
            try queue.push(head: chain.head, written: UInt32(done), memory: memory)
        }
    }
}
