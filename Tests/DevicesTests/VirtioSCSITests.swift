import Devices
import GuestMemory
import Hypervisor
import Storage
import Testing

/// virtio-scsi with a CD-ROM LUN on a 1 MiB test guest, driven as Linux's virtio_scsi and
/// SeaBIOS drive it, plus hostile requests.
struct SCSIRig {
    let memory: GuestMemory
    let irq = RecordingInterruptController()
    let medium: MemoryDisk
    let scsi: VirtioSCSI
    let device: VirtioPCIDevice
    let driver: VirtioTestDriver
    let queues: [VirtioTestDriver.Queue]

    /// An "ISO" of `blocks` 2048-byte blocks; block n starts with the byte n & 0xFF.
    init(blocks: Int = 64, empty: Bool = false) throws {
        memory = try GuestMemory(size: 1 << 20)
        var bytes = [UInt8](repeating: 0, count: blocks * 2048)
        for b in 0..<blocks { bytes[b * 2048] = UInt8(b & 0xFF); bytes[b * 2048 + 1] = 0xCD }
        medium = MemoryDisk(bytes: bytes)
        scsi = VirtioSCSI(cdrom: SCSICDROM(medium: empty ? nil : medium))
        device = VirtioPCIDevice(model: scsi, memory: memory, interrupts: irq,
                                 intx: IRQLine(controller: irq, gsi: 10), logger: VirtioPCIDevice.discardingLogger)
        driver = VirtioTestDriver(device: device, memory: memory)
        queues = driver.start()
    }

    struct Reply {
        var response: UInt8, status: UInt8, senseKey: UInt8, asc: UInt8, residual: UInt32
        var data: [UInt8], usedLength: UInt32
    }

    /// Sends one command (target/lun as in the request's LUN field) with `dataIn` bytes
    /// of data-in buffer; returns the response fields and the data.
    func command(_ cdb: [UInt8], dataIn: Int = 512, target: UInt8 = 0, lun: UInt16 = 0,
                 lunBytes: [UInt8]? = nil, readable: Int? = nil) throws -> Reply {
        var req = lunBytes ?? [1, target, UInt8(0x40 | (lun >> 8)), UInt8(lun & 0xFF), 0, 0, 0, 0]
        req += [UInt8](repeating: 0, count: 11)   // id, task attribute, prio, crn
        req += cdb + [UInt8](repeating: 0, count: max(0, 32 - cdb.count))
        if let readable { req = Array(req.prefix(readable)) }
        let reqAt = driver.alloc(req.count), respAt = driver.alloc(108), dataAt = driver.alloc(max(dataIn, 1))
        try memory.write(bytes: req, at: reqAt)
        try memory.fill(0xEE, at: respAt, length: 108)
        var bufs = [VirtioTestDriver.Buffer(address: reqAt, length: UInt32(req.count), writable: false),
                    VirtioTestDriver.Buffer(address: respAt, length: 108, writable: true)]
        if dataIn > 0 { bufs.append(VirtioTestDriver.Buffer(address: dataAt, length: UInt32(dataIn), writable: true)) }
        try driver.post(queues[2], bufs)
        driver.notify(queues[2])
        let used = try driver.takeUsed(queues[2])
        #expect(used.count == 1)
        let resp = try memory.readBytes(at: respAt, count: 108)
        let residual = UInt32(resp[4]) | UInt32(resp[5]) << 8 | UInt32(resp[6]) << 16 | UInt32(resp[7]) << 24
        let used0 = used.first?.length ?? 0
        let n = max(0, min(dataIn, Int(used0) - 108))
        return Reply(response: resp[11], status: resp[10], senseKey: resp[14], asc: resp[24], residual: residual,
                     data: try memory.readBytes(at: dataAt, count: n), usedLength: used0)
    }
}

@Suite struct VirtioSCSITests {
    func be32(_ d: [UInt8], _ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 << 8 | UInt32(d[o + $1]) } }

    @Test func identifiesAsVirtioSCSIWithOneTargetAndLUN() throws {
        let rig = try SCSIRig()
        #expect(rig.device.configRead(offset: 2, size: 2) == 0x1048)
        #expect(rig.queues.count == 3)
        #expect(rig.driver.deviceConfig(0, 4) == 1)            // num_queues
        #expect(rig.driver.deviceConfig(20, 4) == 96)          // sense_size
        #expect(rig.driver.deviceConfig(24, 4) == 32)          // cdb_size
        #expect(rig.driver.deviceConfig(30, 2) == 0 && rig.driver.deviceConfig(32, 4) == 0)
    }

    @Test func inquiryCapacityAndTestUnitReady() throws {
        let rig = try SCSIRig(blocks: 64)
        let inq = try rig.command([0x12, 0, 0, 0, 96, 0])
        #expect(inq.response == 0 && inq.status == 0)
        #expect(inq.data.count == 36 && inq.data[0] == 0x05 && inq.data[1] == 0x80)
        #expect(String(decoding: inq.data[8..<16], as: UTF8.self) == "SWIFTVMM")
        #expect(inq.residual == 512 - 36)
        let tur = try rig.command([0, 0, 0, 0, 0, 0], dataIn: 0)
        #expect(tur.status == 0 && tur.response == 0)
        let cap = try rig.command([0x25] + [UInt8](repeating: 0, count: 9))
        #expect(be32(cap.data, 0) == 63 && be32(cap.data, 4) == 2048)
        let cap16 = try rig.command([0x9E, 0x10] + [UInt8](repeating: 0, count: 8) + [0, 0, 0, 32, 0, 0])
        #expect(cap16.data.count == 32 && be32(cap16.data, 4) == 63 && be32(cap16.data, 8) == 2048)
        let vpd = try rig.command([0x12, 1, 0x00, 0, 255, 0])
        #expect(Array(vpd.data.prefix(7)) == [0x05, 0x00, 0x00, 0x03, 0x00, 0x80, 0x83])
        let luns = try rig.command([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0])
        #expect(Array(luns.data.prefix(4)) == [0, 0, 0, 8] && luns.data.count == 16)
    }

    @Test func readsOfEachSizeAndTheirBounds() throws {
        let rig = try SCSIRig(blocks: 64)
        // READ(10) of blocks 5-6.
        var r = try rig.command([0x28, 0, 0, 0, 0, 5, 0, 0, 2, 0], dataIn: 4096)
        #expect(r.status == 0 && r.response == 0 && r.data.count == 4096 && r.residual == 0)
        #expect(r.data[0] == 5 && r.data[2048] == 6 && r.data[1] == 0xCD)
        // READ(12) and READ(16) of the last block.
        r = try rig.command([0xA8, 0, 0, 0, 0, 63, 0, 0, 0, 1, 0, 0], dataIn: 2048)
        #expect(r.status == 0 && r.data.first == 63)
        r = try rig.command([0x88, 0, 0, 0, 0, 0, 0, 0, 0, 63, 0, 0, 0, 1, 0, 0], dataIn: 2048)
        #expect(r.status == 0 && r.data.first == 63)
        // Past the end: CHECK CONDITION, ILLEGAL REQUEST / LBA OUT OF RANGE.
        r = try rig.command([0x28, 0, 0, 0, 0, 63, 0, 0, 2, 0], dataIn: 4096)
        #expect(r.status == 2 && r.senseKey == 5 && r.asc == 0x21)
        r = try rig.command([0x88, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0], dataIn: 2048)
        #expect(r.status == 2 && r.asc == 0x21)
        // REQUEST SENSE returns the last sense, then NO SENSE.
        r = try rig.command([0x03, 0, 0, 0, 18, 0])
        #expect(r.status == 0 && r.data.count == 18 && r.data[2] == 5 && r.data[12] == 0x21)
        r = try rig.command([0x03, 0, 0, 0, 18, 0])
        #expect(r.data[2] == 0 && r.data[12] == 0)
        // A transfer larger than the data-in buffer: OVERRUN, nothing read.
        r = try rig.command([0x28, 0, 0, 0, 0, 0, 0, 0, 4, 0], dataIn: 2048)
        #expect(r.response == 1 && r.usedLength <= 108)
    }

    @Test func mmcQueriesLinuxAndSeaBIOSSend() throws {
        let rig = try SCSIRig(blocks: 1000)
        // MODE SENSE(10) page 2A.
        var r = try rig.command([0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 128, 0])
        #expect(r.status == 0 && r.data.count == 8 + 22 && r.data[8] == 0x2A && r.data[9] == 20)
        r = try rig.command([0x1A, 0, 0x3F, 0, 255, 0])
        #expect(r.status == 0 && Int(r.data[0]) == r.data.count - 1)
        r = try rig.command([0x5A, 0, 0x05, 0, 0, 0, 0, 0, 128, 0])
        #expect(r.status == 2 && r.asc == 0x24)
        // READ TOC format 0: track 1 at 0, lead-out at 1000; MSF form; session info.
        r = try rig.command([0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0])
        #expect(r.status == 0 && r.data.count == 20 && r.data[2] == 1 && r.data[3] == 1)
        #expect(r.data[6] == 1 && be32(r.data, 8) == 0 && r.data[14] == 0xAA && be32(r.data, 16) == 1000)
        r = try rig.command([0x43, 2, 0, 0, 0, 0, 0, 0, 100, 0])
        #expect(Array(r.data[16..<20]) == [0, 0, 15, 25])            // 1150 frames = 00:15:25
        r = try rig.command([0x43, 0, 1, 0, 0, 0, 0, 0, 12, 0])
        #expect(r.status == 0 && r.data.count == 12 && r.data[1] == 10)
        r = try rig.command([0x43, 0, 5, 0, 0, 0, 0, 0, 12, 0])
        #expect(r.status == 2 && r.asc == 0x24)
        // GET CONFIGURATION: current profile CD-ROM (0x0008).
        r = try rig.command([0x46, 0, 0, 0, 0, 0, 0, 0x01, 0, 0])
        #expect(r.status == 0 && r.data[6] == 0 && r.data[7] == 0x08 && be32(r.data, 0) == UInt32(r.data.count - 4))
        // GET EVENT STATUS NOTIFICATION: media class, new media once, then no change.
        r = try rig.command([0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0])
        #expect(r.status == 0 && r.data[2] == 0x04 && r.data[4] == 2 && r.data[5] == 0x02)
        r = try rig.command([0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0])
        #expect(r.data[4] == 0)
        r = try rig.command([0x4A, 0, 0, 0, 0x10, 0, 0, 0, 8, 0])      // asynchronous: refused
        #expect(r.status == 2 && r.asc == 0x24)
        // PREVENT ALLOW MEDIUM REMOVAL, START STOP: fine; writes: DATA PROTECT.
        #expect(try rig.command([0x1E, 0, 0, 0, 1, 0], dataIn: 0).status == 0)
        r = try rig.command([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], dataIn: 0)
        #expect(r.status == 2 && r.senseKey == 7 && r.asc == 0x27)
        // Unknown opcode: ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
        r = try rig.command([0xD9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(r.status == 2 && r.senseKey == 5 && r.asc == 0x20)
    }

    @Test func otherTargetsAndLUNsAndAnEmptyDrive() throws {
        let rig = try SCSIRig()
        var r = try rig.command([0x12, 0, 0, 0, 36, 0], target: 1)
        #expect(r.response == 3)                                      // BAD_TARGET
        r = try rig.command([0x12, 0, 0, 0, 36, 0], lunBytes: [2, 0, 0, 0, 0, 0, 0, 0])
        #expect(r.response == 3)
        r = try rig.command([0x12, 0, 0, 0, 36, 0], lun: 1)
        #expect(r.status == 0 && r.data.first == 0x7F)                // no unit at LUN 1
        r = try rig.command([0x00, 0, 0, 0, 0, 0], dataIn: 0, lun: 1)
        #expect(r.status == 2 && r.asc == 0x25)
        let empty = try SCSIRig(empty: true)
        r = try empty.command([0x00, 0, 0, 0, 0, 0], dataIn: 0)
        #expect(r.status == 2 && r.senseKey == 2 && r.asc == 0x3A)    // NOT READY, MEDIUM NOT PRESENT
        r = try empty.command([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], dataIn: 2048)
        #expect(r.status == 2 && r.asc == 0x3A)
    }

    @Test func hostileRequestsAreAnsweredNotTrusted() throws {
        let rig = try SCSIRig()
        // A header shorter than lun + id + attributes + cdb: FAILURE response.
        var r = try rig.command([0x28], readable: 20)
        #expect(r.response == 9)
        // Allocation lengths larger than the buffer are cut to the buffer.
        r = try rig.command([0x12, 0, 0, 0xFF, 0xFF, 0], dataIn: 10)
        #expect(r.status == 0 && r.data.count == 10 && r.residual == 0)
        // A data-in buffer outside guest RAM: the device needs a reset, nothing traps.
        let reqAt = rig.driver.alloc(51), respAt = rig.driver.alloc(108)
        try rig.memory.write(bytes: [1, 0, 0x40, 0, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 11)
                             + [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0] + [UInt8](repeating: 0, count: 22), at: reqAt)
        try rig.driver.post(rig.queues[2], [.init(address: reqAt, length: 51, writable: false),
                                            .init(address: respAt, length: 108, writable: true),
                                            .init(address: 0xF000_0000, length: 2048, writable: true)])
        rig.driver.notify(rig.queues[2])
        #expect(rig.device.configRead(offset: 0, size: 2) == 0x1AF4)
        #expect(rig.driver.common(0x14, 1) & 0x40 != 0)              // DEVICE_NEEDS_RESET
        // Driver-set cdb/sense sizes are clamped.
        rig.scsi.writeConfig(offset: 24, size: 4, value: 0xFFFF_FFFF)
        rig.scsi.writeConfig(offset: 20, size: 4, value: 0xFFFF_FFFF)
        #expect(rig.scsi.cdbSize == VirtioSCSI.maximumCDBSize && rig.scsi.senseSize == VirtioSCSI.maximumSenseSize)
    }

    @Test func controlQueueCompletesTaskManagement() throws {
        let rig = try SCSIRig()
        let reqAt = rig.driver.alloc(51), respAt = rig.driver.alloc(16)
        try rig.memory.write(bytes: [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x40, 0], at: reqAt)   // TMF abort task
        try rig.memory.write(UInt8(0xEE), at: respAt)
        try rig.driver.post(rig.queues[0], [.init(address: reqAt, length: 51, writable: false),
                                            .init(address: respAt, length: 1, writable: true)])
        rig.driver.notify(rig.queues[0])
        let used = try rig.driver.takeUsed(rig.queues[0])
        #expect(used.count == 1 && used.first?.length == 1)
        #expect(try rig.memory.read(UInt8.self, at: respAt) == 0)
    }

    @Test func isoDetection() {
        var head = [UInt8](repeating: 0, count: 0x8006)
        #expect(!SCSICDROM.looksLikeISO9660(head))
        head.replaceSubrange(0x8001..<0x8006, with: Array("CD001".utf8))
        #expect(SCSICDROM.looksLikeISO9660(head))
        #expect(!SCSICDROM.looksLikeISO9660(Array(head.prefix(100))))
    }
}
