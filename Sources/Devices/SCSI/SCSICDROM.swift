import Storage

/// Fixed-format SCSI sense data (SPC-3 §4.5.3): key, additional sense code and qualifier.
public struct SCSISense: Equatable, Sendable {
    public var key: UInt8
    public var asc: UInt8
    public var ascq: UInt8
    public init(key: UInt8, asc: UInt8, ascq: UInt8) { self.key = key; self.asc = asc; self.ascq = ascq }

    public static let noSense = SCSISense(key: 0x0, asc: 0x00, ascq: 0x00)
    public static let invalidOpcode = SCSISense(key: 0x5, asc: 0x20, ascq: 0x00)
    public static let lbaOutOfRange = SCSISense(key: 0x5, asc: 0x21, ascq: 0x00)
    public static let invalidFieldInCDB = SCSISense(key: 0x5, asc: 0x24, ascq: 0x00)
    public static let lunNotSupported = SCSISense(key: 0x5, asc: 0x25, ascq: 0x00)
    public static let writeProtected = SCSISense(key: 0x7, asc: 0x27, ascq: 0x00)
    public static let mediumNotPresent = SCSISense(key: 0x2, asc: 0x3A, ascq: 0x00)
    public static let readError = SCSISense(key: 0x3, asc: 0x11, ascq: 0x00)

    /// The 18-byte fixed-format sense buffer (response code 0x70, current error).
    public var bytes: [UInt8] {
        var s = [UInt8](repeating: 0, count: 18)
        s[0] = 0x70; s[2] = key; s[7] = 10; s[12] = asc; s[13] = ascq
        return s
    }
}

/// What one command does: GOOD with data for the initiator (already cut to the CDB's
/// allocation length), GOOD with blocks to read from the medium, or CHECK CONDITION.
public enum SCSIOutcome: Equatable, Sendable {
    case good([UInt8])
    case read(offset: UInt64, length: Int)
    case check(SCSISense)
}

/// A read-only MMC CD-ROM logical unit (peripheral type 5) over an image of 2048-byte
/// blocks: the commands SeaBIOS and Linux's sr/cdrom drivers send (TEST UNIT READY,
/// REQUEST SENSE, INQUIRY with VPD pages 00/80/83, READ CAPACITY(10/16), READ(10/12/16),
/// MODE SENSE(6/10) pages 01/2A/3F, READ TOC formats 0 and 1, GET CONFIGURATION, GET
/// EVENT STATUS NOTIFICATION (polled, media class), PREVENT ALLOW MEDIUM REMOVAL, START
/// STOP UNIT, SET CD SPEED, REPORT LUNS). Writes get DATA PROTECT / WRITE PROTECTED,
/// every other opcode ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE, bad fields INVALID
/// FIELD IN CDB, reads past the end LBA OUT OF RANGE. `medium == nil` is an empty drive:
/// media commands get NOT READY / MEDIUM NOT PRESENT.
public final class SCSICDROM {
    public static let blockSize = 2048
    public let medium: (any DiskBackend)?
    /// Sense of the last CHECK CONDITION, returned (and cleared) by REQUEST SENSE.
    public private(set) var pendingSense: SCSISense = .noSense
    private var mediaEventReported = false
    public let serial: String

    public init(medium: (any DiskBackend)?, serial: String = "swiftvmm-cd0") {
        self.medium = medium
        self.serial = serial
    }

    /// Whole 2048-byte blocks on the medium.
    public var blocks: UInt64 { (medium?.size ?? 0) / UInt64(Self.blockSize) }

    /// True when `bytes` (the start of an image) look like ISO 9660: "CD001" at sector 16.
    public static func looksLikeISO9660(_ head: [UInt8]) -> Bool {
        head.count >= 0x8006 && Array(head[0x8001..<0x8006]) == Array("CD001".utf8)
    }

    /// Runs one command. `lun` is the LUN number on target 0 (only LUN 0 exists).
    public func execute(cdb: [UInt8], lun: Int = 0) -> SCSIOutcome {
        let outcome = run(cdb: cdb, lun: lun)
        if case let .check(sense) = outcome { pendingSense = sense } else if cdb.first != 0x03 { pendingSense = .noSense }
        return outcome
    }

    private func be16(_ c: [UInt8], _ o: Int) -> Int { Int(c[o]) << 8 | Int(c[o + 1]) }
    private func be32(_ c: [UInt8], _ o: Int) -> UInt64 { (0..<4).reduce(0) { $0 << 8 | UInt64(c[o + $1]) } }
    private func be64(_ c: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 << 8 | UInt64(c[o + $1]) } }
    private func put(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).reversed().map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    /// CDB length by group code (SAM: 6, 10, 10, reserved, 16, 12, vendor, vendor).
    static func cdbLength(_ opcode: UInt8) -> Int {
        switch opcode >> 5 {
        case 0: return 6
        case 1, 2: return 10
        case 4: return 16
        case 5: return 12
        default: return 6
        }
    }

    private func run(cdb: [UInt8], lun: Int) -> SCSIOutcome {
        guard let op = cdb.first else { return .check(.invalidOpcode) }
        guard cdb.count >= Self.cdbLength(op) else { return .check(.invalidFieldInCDB) }
        if lun != 0 {
            switch op {
            case 0x12: return inquiry(cdb, present: false)
            case 0xA0: return reportLUNs(cdb)
            case 0x03: return requestSense(cdb)
            default: return .check(.lunNotSupported)
            }
        }
        switch op {
        case 0x00: return medium == nil ? .check(.mediumNotPresent) : .good([])            // TEST UNIT READY
        case 0x03: return requestSense(cdb)
        case 0x12: return inquiry(cdb, present: true)
        case 0x1A: return modeSense(cdb, ten: false)
        case 0x5A: return modeSense(cdb, ten: true)
        case 0x1B, 0x1E, 0xBB: return .good([])        // START STOP UNIT, PREVENT ALLOW REMOVAL, SET CD SPEED
        case 0x25:                                      // READ CAPACITY(10)
            guard medium != nil else { return .check(.mediumNotPresent) }
            let last = blocks == 0 ? 0 : min(blocks - 1, 0xFFFF_FFFF)
            return .good(put(last, 4) + put(UInt64(Self.blockSize), 4))
        case 0x9E where cdb[1] & 0x1F == 0x10:          // READ CAPACITY(16)
            guard medium != nil else { return .check(.mediumNotPresent) }
            var d = put(blocks == 0 ? 0 : blocks - 1, 8) + put(UInt64(Self.blockSize), 4)
            d += [UInt8](repeating: 0, count: 20)
            return .good(Array(d.prefix(Int(be32(cdb, 10)))))
        case 0x28: return read(lba: be32(cdb, 2), count: UInt64(be16(cdb, 7)))
        case 0xA8: return read(lba: be32(cdb, 2), count: be32(cdb, 6))
        case 0x88: return read(lba: be64(cdb, 2), count: be32(cdb, 10))
        case 0x43: return readTOC(cdb)
        case 0x46: return getConfiguration(cdb)
        case 0x4A: return eventStatus(cdb)
        case 0xA0: return reportLUNs(cdb)
        case 0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0x8E, 0x35, 0x91:   // writes, write-and-verify, sync cache
            return op == 0x35 || op == 0x91 ? .good([]) : .check(.writeProtected)
        default:
            return .check(.invalidOpcode)
        }
    }

    private func read(lba: UInt64, count: UInt64) -> SCSIOutcome {
        guard medium != nil else { return .check(.mediumNotPresent) }
        guard lba <= blocks, count <= blocks - lba else { return .check(.lbaOutOfRange) }
        guard count <= UInt64(Int32.max) / UInt64(Self.blockSize) else { return .check(.invalidFieldInCDB) }
        return .read(offset: lba * UInt64(Self.blockSize), length: Int(count) * Self.blockSize)
    }

    private func requestSense(_ cdb: [UInt8]) -> SCSIOutcome {
        let s = pendingSense.bytes
        pendingSense = .noSense
        return .good(Array(s.prefix(Int(cdb[4]))))
    }

    private func ascii(_ s: String, _ n: Int) -> [UInt8] {
        let b = Array(s.utf8.prefix(n))
        return b + [UInt8](repeating: 0x20, count: n - b.count)
    }

    private func inquiry(_ cdb: [UInt8], present: Bool) -> SCSIOutcome {
        let allocation = be16(cdb, 3)
        let type: UInt8 = present ? 0x05 : 0x7F    // CD/DVD; or "no unit at this LUN"
        if cdb[1] & 0x01 != 0 {                    // EVPD
            guard present else { return .check(.lunNotSupported) }
            var page: [UInt8]
            switch cdb[2] {
            case 0x00: page = [0x00, 0x80, 0x83]
            case 0x80: page = Array(serial.utf8)
            case 0x83:                              // one vendor-specific ASCII designator
                let id = Array(serial.utf8)
                page = [0x02, 0x00, 0x00, UInt8(id.count)] + id
            default: return .check(.invalidFieldInCDB)
            }
            let d = [type, cdb[2]] + put(UInt64(page.count), 2) + page
            return .good(Array(d.prefix(allocation)))
        }
        guard cdb[2] == 0 else { return .check(.invalidFieldInCDB) }
        var d: [UInt8] = [type, 0x80, 0x05, 0x02, 31, 0, 0, 0]   // removable, SPC-3, format 2
        d += ascii("SWIFTVMM", 8) + ascii("VIRTUAL CD-ROM", 16) + ascii("1.0", 4)
        return .good(Array(d.prefix(allocation)))
    }

    private func reportLUNs(_ cdb: [UInt8]) -> SCSIOutcome {
        let allocation = Int(be32(cdb, 6))
        guard allocation >= 16 else { return .check(.invalidFieldInCDB) }
        return .good(Array((put(8, 4) + [0, 0, 0, 0] + [UInt8](repeating: 0, count: 8)).prefix(allocation)))
    }

    /// Mode page 0x2A (MM capabilities and mechanical status) and 0x01 (read error recovery).
    private func modePage(_ code: UInt8) -> [UInt8]? {
        switch code {
        case 0x01: return [0x01, 0x0A, 0x00, 0x05] + [UInt8](repeating: 0, count: 8)
        case 0x2A:
            var p = [UInt8](repeating: 0, count: 22)
            p[0] = 0x2A; p[1] = 20
            p[2] = 0x3B      // reads CD-R, CD-RW, DVD-ROM (method 2)
            p[4] = 0x71      // audio play, mode 2 form 1 and 2, multi-session
            p[5] = 0xFF      // CD-DA commands, accurate stream, subchannels, C2 pointers, ISRC, UPC
            p[6] = 0x29      // lock supported, eject supported, tray loading mechanism
            p[8] = 0x02; p[9] = 0xC2     // max read speed 706 kB/s
            p[11] = 0x02                 // two volume levels
            p[12] = 0x02; p[13] = 0xC2   // buffer / current speed
            return p
        default: return nil
        }
    }

    private func modeSense(_ cdb: [UInt8], ten: Bool) -> SCSIOutcome {
        let pc = cdb[2] >> 6, code = cdb[2] & 0x3F
        guard pc != 3 else { return .check(SCSISense(key: 0x5, asc: 0x39, ascq: 0x00)) }   // saving unsupported
        var list: [[UInt8]]
        if code == 0x3F {
            list = [0x01, 0x2A].compactMap(modePage)
        } else if let p = modePage(code) {
            list = [p]
        } else {
            return .check(.invalidFieldInCDB)
        }
        // Changeable values: nothing can be changed.
        if pc == 1 { list = list.map { [$0[0], $0[1]] + [UInt8](repeating: 0, count: $0.count - 2) } }
        let pages = list.flatMap { $0 }
        let medium: UInt8 = self.medium == nil ? 0x70 : 0x01       // 120 mm data disc / door closed, no disc
        let d: [UInt8]
        if ten {
            d = put(UInt64(pages.count + 6), 2) + [medium, 0x80, 0, 0, 0, 0] + pages   // WP set
            return .good(Array(d.prefix(be16(cdb, 7))))
        }
        d = [UInt8(truncatingIfNeeded: pages.count + 3), medium, 0x80, 0] + pages
        return .good(Array(d.prefix(Int(cdb[4]))))
    }

    private func address(_ lba: UInt64, msf: Bool) -> [UInt8] {
        guard msf else { return put(lba, 4) }
        let f = lba + 150
        return [0, UInt8(truncatingIfNeeded: f / 75 / 60), UInt8(f / 75 % 60), UInt8(f % 75)]
    }

    private func readTOC(_ cdb: [UInt8]) -> SCSIOutcome {
        guard medium != nil else { return .check(.mediumNotPresent) }
        let msf = cdb[1] & 0x02 != 0
        let format = cdb[2] & 0x0F != 0 ? cdb[2] & 0x0F : cdb[9] >> 6
        let allocation = be16(cdb, 7)
        var d: [UInt8]
        switch format {
        case 0:
            let start = cdb[6]
            guard start <= 1 || start == 0xAA else { return .check(.invalidFieldInCDB) }
            var tracks: [UInt8] = []
            if start <= 1 { tracks += [0, 0x14, 1, 0] + address(0, msf: msf) }              // track 1: data
            tracks += [0, 0x14, 0xAA, 0] + address(blocks, msf: msf)                        // lead-out
            d = put(UInt64(tracks.count + 2), 2) + [1, 1] + tracks
        case 1:
            d = put(10, 2) + [1, 1] + [0, 0x14, 1, 0] + address(0, msf: msf)
        default:
            return .check(.invalidFieldInCDB)
        }
        return .good(Array(d.prefix(allocation)))
    }

    private func getConfiguration(_ cdb: [UInt8]) -> SCSIOutcome {
        let rt = cdb[1] & 0x03, start = be16(cdb, 2), allocation = be16(cdb, 7)
        guard rt != 3 else { return .check(.invalidFieldInCDB) }
        // Profile 0x0010 (DVD-ROM) for media larger than a CD, else 0x0008 (CD-ROM).
        let current: UInt64 = medium == nil ? 0 : blocks > 360_000 ? 0x0010 : 0x0008
        let cur: (UInt64) -> UInt8 = { $0 == current ? 1 : 0 }
        let features: [(Int, [UInt8])] = [
            (0x0000, [0x00, 0x00, 0x03, 8] + put(0x0010, 2) + [cur(0x10), 0] + put(0x0008, 2) + [cur(0x08), 0]),
            (0x0001, [0x00, 0x01, 0x0B, 8] + put(1, 4) + [0, 0, 0, 0]),      // core: SCSI interface
            (0x0003, [0x00, 0x03, 0x0B, 4] + [0x29, 0, 0, 0]),               // removable medium: tray, eject, lock
            (0x0010, [0x00, 0x10, current == 0 ? 0x00 : 0x01, 8] + put(UInt64(Self.blockSize), 4) + [0, 1, 0, 0]),
        ]
        var body: [UInt8] = []
        for (code, bytes) in features where code >= start {
            if rt == 2 && code != start { continue }
            if rt == 1 && bytes[2] & 0x01 == 0 && code != 0 { continue }
            body += bytes
        }
        let d = put(UInt64(body.count + 4), 4) + [0, 0] + put(current, 2) + body
        return .good(Array(d.prefix(allocation)))
    }

    private func eventStatus(_ cdb: [UInt8]) -> SCSIOutcome {
        guard cdb[1] & 0x01 != 0 else { return .check(.invalidFieldInCDB) }   // only polled mode
        let allocation = be16(cdb, 7)
        let supported: UInt8 = 0x10                                           // media class
        var d: [UInt8]
        if cdb[4] & 0x10 != 0 {
            var event: UInt8 = 0
            if medium != nil && !mediaEventReported { event = 2; mediaEventReported = true }   // new media
            d = put(6, 2) + [0x04, supported, event, medium == nil ? 0x00 : 0x02, 0, 0]
        } else {
            d = put(2, 2) + [0x80, supported]                                 // no event available
        }
        return .good(Array(d.prefix(allocation)))
    }
}
