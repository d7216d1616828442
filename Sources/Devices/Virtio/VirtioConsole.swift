import GuestMemory
import Synchronization

/// virtio-console (virtio 1.x §5.3) with a single port: a second console for the guest
/// (Linux: hvc0). Queue 0 is the receive queue (host → guest), queue 1 the transmit
/// queue (guest → host). VIRTIO_CONSOLE_F_SIZE reports `columns`×`rows`;
/// VIRTIO_CONSOLE_F_EMERG_WRITE lets the guest write a byte through config space.
///
/// Output goes to the `output` closure (called with the device lock held, on the thread
/// that processed the queue). Input is pushed with `input(_:)` from any thread; bytes wait
/// until the guest posts receive buffers (bounded by `maxPendingInput`, oldest dropped).
public final class VirtioConsole: VirtioDeviceModel, VirtioBackendAttachable, @unchecked Sendable {
    public enum Feature {
        public static let size: UInt64 = 1 << 0
        public static let emergencyWrite: UInt64 = 1 << 2
    }
    public static let receiveQueue = 0
    public static let transmitQueue = 1
    public static let maxPendingInput = 64 * 1024

    public let columns: UInt16
    public let rows: UInt16
    private let output: @Sendable ([UInt8]) -> Void
    private var pendingInput: [UInt8] = []
    private weak var transport: VirtioPCIDevice?
    private var chain = DescriptorChain()
    public private(set) var droppedInput: UInt64 = 0

    public init(columns: UInt16 = 80, rows: UInt16 = 25, output: @escaping @Sendable ([UInt8]) -> Void) {
        self.columns = columns
        self.rows = rows
        self.output = output
    }

    public func attach(_ transport: VirtioPCIDevice) { self.transport = transport }

    public var deviceType: VirtioDeviceType { .console }
    public var pciClass: (UInt8, UInt8, UInt8) { (0x07, 0x80, 0x00) }   // communication, other
    public var deviceFeatures: UInt64 { Feature.size | Feature.emergencyWrite }
    public var queueMaxSizes: [UInt16] { [64, 64] }
    public var configSize: Int { 12 }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        var c = LEBytes(count: 12)
        c.put(columns, at: 0)
        c.put(rows, at: 2)
        c.put(UInt32(1), at: 4)   // max_nr_ports (MULTIPORT not offered)
        return Self.readLE(c.bytes, offset: offset, size: size)
    }

    public func writeConfig(offset: Int, size: Int, value: UInt32) {
        if offset == 8 { output([UInt8(truncatingIfNeeded: value)]) }   // emerg_wr
    }

    public func activate(features: UInt64) {}
    public func reset() { pendingInput.removeAll() }

    /// Queues `bytes` for the guest and delivers what fits into its posted buffers.
    public func input(_ bytes: [UInt8]) {
        guard let transport else { return }
        transport.withLock(processing: Self.receiveQueue) {
            pendingInput.append(contentsOf: bytes)
            if pendingInput.count > Self.maxPendingInput {
                let excess = pendingInput.count - Self.maxPendingInput
                droppedInput &+= UInt64(excess)
                pendingInput.removeFirst(excess)
            }
        }
    }

    /// Bytes waiting for receive buffers.
    public var pendingInputCount: Int { transport?.withLock(processing: nil) { pendingInput.count } ?? pendingInput.count }

    public func process(queueIndex: Int, queue: inout SplitVirtqueue, memory: GuestMemory) throws {
        switch queueIndex {
        case Self.transmitQueue:
            while try queue.pop(into: &chain, memory: memory) {
                let bytes = try chain.readBytes(offset: 0, count: min(chain.readableLength, 1 << 20), memory: memory)
                if !bytes.isEmpty { output(bytes) }
                try queue.push(head: chain.head, written: 0, memory: memory)
            }
        case Self.receiveQueue:
            while !pendingInput.isEmpty, try queue.pop(into: &chain, memory: memory) {
                let n = try chain.writeBytes(Array(pendingInput.prefix(chain.writableLength)), offset: 0, memory: memory)
                pendingInput.removeFirst(n)
                try queue.push(head: chain.head, written: UInt32(n), memory: memory)
            }
        default:
            return
        }
    }
}
