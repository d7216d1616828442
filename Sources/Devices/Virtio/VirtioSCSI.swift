import GuestMemory

/// virtio-scsi (virtio 1.x §5.6) with one target (0) and one LUN (0): a `SCSICDROM`.
///
/// Queues: 0 control (task management and asynchronous-notification requests: answered
/// FUNCTION COMPLETE / OK, nothing to abort since every command completes at once), 1 event
/// (buffers are kept; no hot-plug events are ever sent), 2 the request queue.
///
/// A request is `virtio_scsi_req_cmd` (lun[8], id, task attribute, priority, CRN,
/// cdb[cdb_size]) in the device-readable part, then `virtio_scsi_resp_cmd` (sense_len,
/// residual, status qualifier, status, response, sense[sense_size]) and the data-in buffer
/// in the device-writable part. Another target, or a LUN address that is not the flat
/// single-level form, answers BAD_TARGET; data-in larger than the buffer answers OVERRUN
/// (nothing transferred, as QEMU does). A chain too short for the response header is a
/// driver bug: it throws and the transport sets DEVICE_NEEDS_RESET.
public final class VirtioSCSI: VirtioDeviceModel {
    public enum Response {
        public static let ok: UInt8 = 0
        public static let overrun: UInt8 = 1
        public static let badTarget: UInt8 = 3
        public static let failure: UInt8 = 9
    }
    public static let statusGood: UInt8 = 0x00
    public static let statusCheckCondition: UInt8 = 0x02
    public static let queueSize: UInt16 = 128
    public static let defaultSenseSize = 96
    public static let defaultCDBSize = 32
    public static let maximumSenseSize = 252
    public static let maximumCDBSize = 252

    public let cdrom: SCSICDROM
    public private(set) var senseSize = VirtioSCSI.defaultSenseSize
    public private(set) var cdbSize = VirtioSCSI.defaultCDBSize
    public private(set) var negotiated: UInt64 = 0
    public private(set) var commands: UInt64 = 0
    public private(set) var bytesRead: UInt64 = 0
    private var chain = DescriptorChain()

    public init(cdrom: SCSICDROM) { self.cdrom = cdrom }

    public var deviceType: VirtioDeviceType { .scsi }
    public var pciClass: (UInt8, UInt8, UInt8) { (0x01, 0x00, 0x00) }   // SCSI storage controller
    public var queueMaxSizes: [UInt16] { [Self.queueSize, Self.queueSize, Self.queueSize] }
    public var deviceFeatures: UInt64 { 0 }
    public var configSize: Int { 36 }

    private var configImage: [UInt8] {
        var c = LEBytes(count: 36)
        c.put(UInt32(1), at: 0)                              // num_queues
        c.put(UInt32(Self.queueSize) - 2, at: 4)             // seg_max
        c.put(UInt32(0xFFFF), at: 8)                         // max_sectors
        c.put(UInt32(Self.queueSize), at: 12)                // cmd_per_lun
        c.put(UInt32(16), at: 16)                            // event_info_size
        c.put(UInt32(senseSize), at: 20)
        c.put(UInt32(cdbSize), at: 24)
        c.put(UInt16(0), at: 28)                             // max_channel
        c.put(UInt16(0), at: 30)                             // max_target
        c.put(UInt32(0), at: 32)                             // max_lun
        return c.bytes
    }

    public func readConfig(offset: Int, size: Int) -> UInt32 { Self.readLE(configImage, offset: offset, size: size) }

    /// The driver may set sense_size (20) and cdb_size (24); values are clamped.
    public func writeConfig(offset: Int, size: Int, value: UInt32) {
        guard size == 4 else { return }
        switch offset {
        case 20: senseSize = Int(min(value, UInt32(Self.maximumSenseSize)))
        case 24: cdbSize = Int(max(6, min(value, UInt32(Self.maximumCDBSize))))
        default: break
        }
    }

    public func activate(features: UInt64) { negotiated = features }
    public func reset() {
        negotiated = 0
        senseSize = Self.defaultSenseSize
        cdbSize = Self.defaultCDBSize
    }

    public func process(queueIndex: Int, queue: inout SplitVirtqueue, memory: GuestMemory) throws {
        switch queueIndex {
        case 0:
            while try queue.pop(into: &chain, memory: memory) {
                try queue.push(head: chain.head, written: try control(memory: memory), memory: memory)
            }
        case 2:
            while try queue.pop(into: &chain, memory: memory) {
                try queue.push(head: chain.head, written: try command(memory: memory), memory: memory)
            }
        default:
            break   // event queue: buffers stay with the device until an event (never)
        }
    }

    private func control(memory: GuestMemory) throws -> UInt32 {
        guard chain.writableLength >= 1 else {
            throw VirtioError.malformedRequest("virtio-scsi control request has no device-writable response")
        }
        let head = try chain.readBytes(offset: 0, count: min(chain.readableLength, 4), memory: memory)
        let type = head.count == 4 ? UInt32(head[0]) | UInt32(head[1]) << 8 | UInt32(head[2]) << 16 | UInt32(head[3]) << 24 : UInt32.max
        switch type {
        case 0:     // TMF: u8 response
            return UInt32(try chain.writeBytes([Response.ok], offset: 0, memory: memory))
        case 1, 2:  // AN query / subscribe: le32 event_actual = 0, u8 response
            return UInt32(try chain.writeBytes([0, 0, 0, 0, Response.ok].prefix(chain.writableLength).map { $0 },
                                               offset: 0, memory: memory))
        default:
            return UInt32(try chain.writeBytes([Response.failure], offset: 0, memory: memory))
        }
    }

    /// Executes one command request; returns the bytes written into the writable part.
    private func command(memory: GuestMemory) throws -> UInt32 {
        let responseLength = 12 + senseSize
        guard chain.writableLength >= 12 else {
            throw VirtioError.malformedRequest("virtio-scsi request has no room for its 12-byte response")
        }
        commands &+= 1
        let dataInCapacity = max(0, chain.writableLength - responseLength)
        func respond(_ response: UInt8, status: UInt8 = 0, sense: [UInt8] = [], residual: Int = 0) throws -> UInt32 {
            let s = Array(sense.prefix(senseSize))
            var r = [UInt8](repeating: 0, count: 12)
            r.replaceSubrange(0..<4, with: le32(UInt32(s.count)))
            r.replaceSubrange(4..<8, with: le32(UInt32(clamping: residual)))
            r[10] = status; r[11] = response
            let n = try chain.writeBytes(r + s, offset: 0, memory: memory)
            return UInt32(n)
        }
        let headerLength = 19 + cdbSize
        guard chain.readableLength >= headerLength else { return try respond(Response.failure) }
        let header = try chain.readBytes(offset: 0, count: headerLength, memory: memory)
        // Flat single-level LUN: 1, target, 0x40 | lun >> 8, lun & 0xFF, then zeros.
        guard header[0] == 1, header[1] == 0, header[2] & 0xC0 == 0x40 || header[2] == 0 && header[3] == 0,
              header[4..<8].allSatisfy({ $0 == 0 }) else {
            return try respond(Response.badTarget)
        }
        let lun = Int(header[2] & 0x3F) << 8 | Int(header[3])
        let cdb = Array(header[19..<headerLength])
        switch cdrom.execute(cdb: cdb, lun: lun) {
        case let .good(data):
            let n = min(data.count, dataInCapacity)
            if n > 0 { _ = try chain.writeBytes(Array(data.prefix(n)), offset: responseLength, memory: memory) }
            let written = try respond(Response.ok, status: Self.statusGood, residual: dataInCapacity - n)
            return n > 0 ? UInt32(responseLength + n) : written
        case let .check(sense):
            return try respond(Response.ok, status: Self.statusCheckCondition, sense: sense.bytes,
                               residual: dataInCapacity)
        case let .read(offset, length):
            guard length <= dataInCapacity else { return try respond(Response.overrun, residual: dataInCapacity) }
            guard let medium = cdrom.medium else { return try respond(Response.failure) }
            var done = 0
            do {
                try chain.withSegments(writable: true, offset: responseLength, length: length, memory: memory) { seg in
                    try medium.read(into: seg, at: offset + UInt64(done))
                    done += seg.count
                }
            } catch let e as VirtioError {
                throw e
            } catch {
                return try respond(Response.ok, status: Self.statusCheckCondition, sense: SCSISense.readError.bytes,
                                   residual: dataInCapacity)
            }
            bytesRead &+= UInt64(done)
            _ = try respond(Response.ok, status: Self.statusGood, residual: dataInCapacity - done)
            return UInt32(responseLength + done)
        }
    }

    private func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
}
