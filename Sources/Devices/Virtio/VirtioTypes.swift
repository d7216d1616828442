import GuestMemory

/// Virtio device types (virtio 1.x §5) we implement or reserve.
public enum VirtioDeviceType: UInt16, Sendable {
    case network = 1
    case block = 2
    case console = 3
    case entropy = 4
    case scsi = 8
    case socket = 19
}

/// Feature bits shared by every device type (virtio 1.x §6).
public enum VirtioFeature {
    public static let indirectDescriptors: UInt64 = 1 << 28   // VIRTIO_F_INDIRECT_DESC
    public static let eventIndex: UInt64 = 1 << 29            // VIRTIO_F_EVENT_IDX
    public static let version1: UInt64 = 1 << 32              // VIRTIO_F_VERSION_1
    public static let accessPlatform: UInt64 = 1 << 33        // VIRTIO_F_ACCESS_PLATFORM (never offered)
    public static let ringPacked: UInt64 = 1 << 34            // VIRTIO_F_RING_PACKED (never offered)
}

/// Device status bits (virtio 1.x §2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt8 = 1
    public static let driver: UInt8 = 2
    public static let driverOK: UInt8 = 4
    public static let featuresOK: UInt8 = 8
    public static let needsReset: UInt8 = 0x40
    public static let failed: UInt8 = 0x80
}

/// Why a virtqueue or a request on it was rejected. Every one of these is the guest
/// driver's fault; the transport reacts by setting DEVICE_NEEDS_RESET, never by trapping.
public enum VirtioError: Error, Equatable, CustomStringConvertible {
    case ringOutsideRAM(queue: Int, what: String, address: UInt64)
    case availIndexJump(queue: Int, pending: Int, size: Int)
    case descriptorIndexOutOfRange(index: UInt16, tableSize: Int)
    case chainTooLong(limit: Int)
    case nestedIndirect
    case indirectWithNext
    case indirectNotNegotiated
    case badIndirectTable(length: UInt32)
    case zeroLengthDescriptor(index: UInt16)
    case bufferOutsideRAM(address: UInt64, length: UInt32)
    case readableAfterWritable(index: UInt16)
    case badQueueSize(queue: Int, size: Int)
    case malformedRequest(String)

    public var description: String {
        switch self {
        case let .ringOutsideRAM(q, what, address):
            return "queue \(q): \(what) at 0x\(String(address, radix: 16)) is not in guest RAM"
        case let .availIndexJump(q, pending, size):
            return "queue \(q): driver made \(pending) buffers available on a queue of \(size)"
        case let .descriptorIndexOutOfRange(index, size):
            return "descriptor index \(index) is outside a table of \(size) entries"
        case let .chainTooLong(limit):
            return "descriptor chain is longer than \(limit) entries (a loop?)"
        case .nestedIndirect:
            return "an indirect table contains another indirect descriptor"
        case .indirectWithNext:
            return "a descriptor has both INDIRECT and NEXT set"
        case .indirectNotNegotiated:
            return "an indirect descriptor was used without VIRTIO_F_INDIRECT_DESC"
        case let .badIndirectTable(length):
            return "indirect table length \(length) is zero, too long or not a multiple of 16"
        case let .zeroLengthDescriptor(index):
            return "descriptor \(index) has length 0"
        case let .bufferOutsideRAM(address, length):
            return "buffer of \(length) bytes at 0x\(String(address, radix: 16)) is not in guest RAM"
        case let .readableAfterWritable(index):
            return "device-readable descriptor \(index) follows a device-writable one"
        case let .badQueueSize(q, size):
            return "queue \(q): size \(size) is not a power of two within the device maximum"
        case let .malformedRequest(why):
            return "malformed request: \(why)"
        }
    }
}

/// What a device model offers the transport: its type, features, queues and config space,
/// and the work it does on a queue when the driver notifies it.
///
/// Every call is made with the transport's device lock held, so a model is a plain state
/// machine; `process` may run on a vCPU thread (MMIO notify) or the VMM's event thread
/// (ioeventfd), never on two at once.
public protocol VirtioDeviceModel: AnyObject {
    var deviceType: VirtioDeviceType { get }
    /// PCI class code (class, subclass, prog-if).
    var pciClass: (UInt8, UInt8, UInt8) { get }
    /// Device-specific feature bits (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX).
    var deviceFeatures: UInt64 { get }
    /// Maximum size of each queue (powers of two); the count is the number of queues.
    var queueMaxSizes: [UInt16] { get }
    /// Size in bytes of the device-specific configuration structure.
    var configSize: Int { get }
    func readConfig(offset: Int, size: Int) -> UInt32
    func writeConfig(offset: Int, size: Int, value: UInt32)
    /// The driver set DRIVER_OK with these negotiated features.
    func activate(features: UInt64)
    /// The driver reset the device: drop per-session state.
    func reset()
    /// Processes what the driver made available on `queue`. Throwing marks the device
    /// DEVICE_NEEDS_RESET (the error is logged).
    func process(queueIndex: Int, queue: inout SplitVirtqueue, memory: GuestMemory) throws
    /// A queue the transport processes right after `queueIndex` (under the same lock), for
    /// devices whose requests on one queue produce replies on another (virtio-vsock: a
    /// packet on tx answered on rx). nil (the default): none.
    func followUpQueue(after queueIndex: Int) -> Int?
}

extension VirtioDeviceModel {
    public func followUpQueue(after queueIndex: Int) -> Int? { nil }
}

extension VirtioDeviceModel {
    /// Reads `size` bytes at `offset` of a little-endian config image.
    static func readLE(_ bytes: [UInt8], offset: Int, size: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<min(size, 4) {
            let o = offset + i
            guard o >= 0, o < bytes.count else { continue }
            v |= UInt32(bytes[o]) << (8 * UInt32(i))
        }
        return v
    }
}

/// Little-endian image builder for config structures.
struct LEBytes {
    var bytes: [UInt8]
    init(count: Int) { bytes = [UInt8](repeating: 0, count: count) }
    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for i in 0..<MemoryLayout<T>.size {
            bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i))
        }
    }
}
