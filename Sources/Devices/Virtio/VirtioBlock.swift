import GuestMemory
import Storage

/// virtio-blk (virtio 1.x §5.2): one request queue over a `DiskBackend`.
///
/// Requests: IN, OUT, FLUSH (→ backend flush, fdatasync for files), GET_ID (the serial),
/// DISCARD and WRITE_ZEROES (one segment each). Sector ranges are checked against the
/// disk size (IOERR), unknown types answer UNSUPP, writes to a read-only disk IOERR.
/// A request whose framing is broken (header not readable, no writable status byte)
/// is a driver bug: it throws and the transport sets DEVICE_NEEDS_RESET.
public final class VirtioBlock: VirtioDeviceModel {
    public enum Feature {
        public static let sizeMax: UInt64 = 1 << 1
        public static let segMax: UInt64 = 1 << 2
        public static let readOnly: UInt64 = 1 << 5
        public static let blockSize: UInt64 = 1 << 6
        public static let flush: UInt64 = 1 << 9
        public static let discard: UInt64 = 1 << 13
        public static let writeZeroes: UInt64 = 1 << 14
    }

    public enum RequestType {
        public static let read: UInt32 = 0        // VIRTIO_BLK_T_IN
        public static let write: UInt32 = 1       // VIRTIO_BLK_T_OUT
        public static let flush: UInt32 = 4
        public static let getID: UInt32 = 8
        public static let discard: UInt32 = 11
        public static let writeZeroes: UInt32 = 13
    }

    public enum Status {
        public static let ok: UInt8 = 0
        public static let ioError: UInt8 = 1
        public static let unsupported: UInt8 = 2
    }

    public static let sectorSize = 512
    public static let queueSize: UInt16 = 256
    public static let segMax: UInt32 = 254
    public static let sizeMax: UInt32 = 1 << 20
    public static let maxDiscardSectors: UInt32 = 1 << 22
    public static let idLength = 20

    public let disk: any DiskBackend
    public let serial: String
    public let isReadOnly: Bool
    public private(set) var negotiated: UInt64 = 0

    /// Counters (for metrics).
    public private(set) var requests: UInt64 = 0
    public private(set) var bytesRead: UInt64 = 0
    public private(set) var bytesWritten: UInt64 = 0
    public private(set) var errors: UInt64 = 0

    private var chain = DescriptorChain()
    private let configImage: [UInt8]

    /// `serial` is returned by GET_ID (truncated to 20 bytes); `readOnly` forces VIRTIO_BLK_F_RO
    /// even when the backend is writable.
    public init(disk: any DiskBackend, serial: String = "", readOnly: Bool = false) {
        self.disk = disk
        self.serial = serial
        self.isReadOnly = readOnly || disk.isReadOnly
        var c = LEBytes(count: 60)
        c.put(disk.size / UInt64(Self.sectorSize), at: 0)   // capacity in 512-byte sectors
        c.put(Self.sizeMax, at: 8)
        c.put(Self.segMax, at: 12)
        c.put(UInt32(Self.sectorSize), at: 20)              // blk_size
        c.put(Self.maxDiscardSectors, at: 36)               // max_discard_sectors
        c.put(UInt32(1), at: 40)                            // max_discard_seg
        c.put(UInt32(1), at: 44)                            // discard_sector_alignment
        c.put(Self.maxDiscardSectors, at: 48)               // max_write_zeroes_sectors
        c.put(UInt32(1), at: 52)                            // max_write_zeroes_seg
        c.put(UInt8(1), at: 56)                             // write_zeroes_may_unmap
        configImage = c.bytes
    }

    public var deviceType: VirtioDeviceType { .block }
    public var pciClass: (UInt8, UInt8, UInt8) { (0x01, 0x00, 0x00) }   // mass storage, SCSI (as QEMU)
    public var queueMaxSizes: [UInt16] { [Self.queueSize] }
    public var configSize: Int { configImage.count }

    public var deviceFeatures: UInt64 {
        var f = Feature.sizeMax | Feature.segMax | Feature.blockSize | Feature.flush
        if isReadOnly { f |= Feature.readOnly } else { f |= Feature.discard | Feature.writeZeroes }
        return f
    }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        Self.readLE(configImage, offset: offset, size: size)
    }

    public func writeConfig(offset: Int, size: Int, value: UInt32) {}   // writeback not offered

    public func activate(features: UInt64) { negotiated = features }
    public func reset() { negotiated = 0 }

    public func process(queueIndex: Int, queue: inout SplitVirtqueue, memory: GuestMemory) throws {
        while try queue.pop(into: &chain, memory: memory) {
            let written = try handle(memory: memory)
            try queue.push(head: chain.head, written: written, memory: memory)
        }
    }

    /// Executes the request in `chain`; returns the bytes written into its writable part.
    private func handle(memory: GuestMemory) throws -> UInt32 {
        guard chain.readableLength >= 16 else {
            throw VirtioError.malformedRequest("virtio-blk request header is not 16 device-readable bytes")
        }
        guard chain.writableLength >= 1 else {
            throw VirtioError.malformedRequest("virtio-blk request has no device-writable status byte")
        }
        requests &+= 1
        let header = try chain.readBytes(offset: 0, count: 16, memory: memory)
        let type = UInt32(header[0]) | UInt32(header[1]) << 8 | UInt32(header[2]) << 16 | UInt32(header[3]) << 24
        var sector: UInt64 = 0
        for i in 0..<8 { sector |= UInt64(header[8 + i]) << (8 * UInt64(i)) }

        let statusOffset = chain.writableLength - 1
        var dataWritten = 0
        let status: UInt8
        switch type {
        case RequestType.read:
            let length = chain.writableLength - 1
            var done = 0
            status = transfer(sector: sector, length: length) { offset in
                try chain.withSegments(writable: true, offset: 0, length: length, memory: memory) { seg in
                    try disk.read(into: seg, at: offset + UInt64(done))
                    done += seg.count
                }
            }
            dataWritten = done
            if status == Status.ok { bytesRead &+= UInt64(length) }
        case RequestType.write:
            let length = chain.readableLength - 16
            if isReadOnly { status = Status.ioError; break }
            var done = 0
            status = transfer(sector: sector, length: length) { offset in
                try chain.withSegments(writable: false, offset: 16, length: length, memory: memory) { seg in
                    try disk.write(UnsafeRawBufferPointer(seg), at: offset + UInt64(done))
                    done += seg.count
                }
            }
            if status == Status.ok { bytesWritten &+= UInt64(length) }
        case RequestType.flush:
            do { try disk.flush(); status = Status.ok } catch { status = Status.ioError }
        case RequestType.getID:
            var id = Array(serial.utf8.prefix(Self.idLength))
            if id.count < Self.idLength { id.append(contentsOf: [UInt8](repeating: 0, count: Self.idLength - id.count)) }
            let room = min(Self.idLength, chain.writableLength - 1)
            dataWritten = try chain.writeBytes(Array(id.prefix(room)), offset: 0, memory: memory)
            status = Status.ok
        case RequestType.discard, RequestType.writeZeroes:
            status = try discardOrZero(type: type, memory: memory)
        default:
            status = Status.unsupported
        }
        if status != Status.ok { errors &+= 1 }
        try chain.writeBytes([status], offset: statusOffset, memory: memory)
        return UInt32(clamping: dataWritten + 1)
    }

    /// Checks a sector range and runs `body` with its byte offset; maps failures to status.
    private func transfer(sector: UInt64, length: Int, _ body: (UInt64) throws -> Void) -> UInt8 {
        guard length % Self.sectorSize == 0, rangeIsValid(sector: sector, bytes: UInt64(length)) else {
            return Status.ioError
        }
        do { try body(sector * UInt64(Self.sectorSize)) } catch { return Status.ioError }
        return Status.ok
    }

    private func rangeIsValid(sector: UInt64, bytes: UInt64) -> Bool {
        let sectors = disk.size / UInt64(Self.sectorSize)
        guard sector <= sectors else { return false }
        return bytes <= (sectors - sector) * UInt64(Self.sectorSize)
    }

    private func discardOrZero(type: UInt32, memory: GuestMemory) throws -> UInt8 {
        if isReadOnly { return Status.ioError }
        let payload = chain.readableLength - 16
        guard payload == 16 else {
            // We advertise one segment per request; anything else is not ours to guess.
            return payload > 0 && payload % 16 == 0 ? Status.unsupported : Status.ioError
        }
        let seg = try chain.readBytes(offset: 16, count: 16, memory: memory)
        var sector: UInt64 = 0
        for i in 0..<8 { sector |= UInt64(seg[i]) << (8 * UInt64(i)) }
        let count = UInt32(seg[8]) | UInt32(seg[9]) << 8 | UInt32(seg[10]) << 16 | UInt32(seg[11]) << 24
        let flags = UInt32(seg[12]) | UInt32(seg[13]) << 8 | UInt32(seg[14]) << 16 | UInt32(seg[15]) << 24
        if type == RequestType.discard, flags & 1 != 0 { return Status.unsupported }   // unmap is write-zeroes only
        if flags & ~1 != 0 { return Status.unsupported }
        guard count <= Self.maxDiscardSectors else { return Status.ioError }
        let bytes = UInt64(count) * UInt64(Self.sectorSize)
        guard rangeIsValid(sector: sector, bytes: bytes) else { return Status.ioError }
        do {
            if type == RequestType.discard {
                try disk.discard(offset: sector * UInt64(Self.sectorSize), length: bytes)
            } else {
                try disk.writeZeroes(offset: sector * UInt64(Self.sectorSize), length: bytes)
            }
        } catch { return Status.ioError }
        return Status.ok
    }
}
