import Devices
import GuestMemory
import Hypervisor
import Storage
import Testing

/// A virtio-blk function on a 1 MiB test guest with a MemoryDisk.
struct BlockRig {
    let memory: GuestMemory
    let irq = RecordingInterruptController()
    let disk: MemoryDisk
    let block: VirtioBlock
    let device: VirtioPCIDevice
    let driver: VirtioTestDriver
    let queue: VirtioTestDriver.Queue

    init(diskBytes: [UInt8]? = nil, sectors: Int = 64, readOnly: Bool = false, serial: String = "disk-serial-0001",
         wanted: UInt64 = .max) throws {
        memory = try GuestMemory(size: 1 << 20)
        disk = diskBytes.map { MemoryDisk(bytes: $0) } ?? MemoryDisk(size: sectors * 512)
        block = VirtioBlock(disk: disk, serial: serial, readOnly: readOnly)
        device = VirtioPCIDevice(model: block, memory: memory, interrupts: irq,
                                 intx: IRQLine(controller: irq, gsi: 10), logger: VirtioPCIDevice.discardingLogger)
        driver = VirtioTestDriver(device: device, memory: memory)
        queue = driver.start(wanted: wanted)[0]
    }

    /// Posts one request, notifies, and returns (status byte, used length).
    func run(type: UInt32, sector: UInt64, data: UInt64 = 0, length: UInt32 = 0, writable: Bool = false,
             indirect: Bool = false) throws -> (UInt8, UInt32) {
        let status = try driver.blockRequest(queue, type: type, sector: sector, data: data, dataLength: length,
                                             dataWritable: writable, indirect: indirect)
        driver.notify(queue)
        let used = try driver.takeUsed(queue)
        #expect(used.count == 1)
        return (try memory.read(at: status), used.first?.length ?? 0)
    }
}

@Suite struct VirtioBlockTests {
    @Test func identifiesAsModernVirtioBlock() throws {
        let rig = try BlockRig(sectors: 2048)
        #expect(rig.device.configRead(offset: 0, size: 2) == 0x1AF4)
        #expect(rig.device.configRead(offset: 2, size: 2) == 0x1042)
        #expect(rig.device.configRead(offset: 8, size: 1) == 1)            // revision 1
        #expect(rig.driver.caps.keys.sorted() == [1, 2, 3, 4, 5])
        #expect(rig.driver.notifyMultiplier == 4)
        #expect(rig.driver.deviceConfig(0, 8) == 2048)                      // capacity in sectors
        #expect(rig.driver.deviceConfig(20, 4) == 512)                      // blk_size
        #expect(rig.driver.deviceConfig(12, 4) == UInt64(VirtioBlock.segMax))
        #expect(rig.device.status == 0x0F)
    }

    @Test func writeThenReadBack() throws {
        let rig = try BlockRig()
        let buf = rig.driver.alloc(1024)
        let pattern = (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
        try rig.memory.write(bytes: pattern, at: buf)
        let (ws, wlen) = try rig.run(type: VirtioBlock.RequestType.write, sector: 5, data: buf, length: 1024)
        #expect(ws == 0)
        #expect(wlen == 1)
        #expect(Array(rig.disk.bytes[5 * 512 ..< 7 * 512]) == pattern)

        let back = rig.driver.alloc(1024)
        let (rs, rlen) = try rig.run(type: VirtioBlock.RequestType.read, sector: 5, data: back, length: 1024, writable: true)
        #expect(rs == 0)
        #expect(rlen == 1025)
        #expect(try rig.memory.readBytes(at: back, count: 1024) == pattern)
        #expect(rig.block.bytesRead == 1024 && rig.block.bytesWritten == 1024)
    }

    @Test func readScatteredAcrossDescriptorsAndIndirect() throws {
        var bytes = [UInt8](repeating: 0, count: 8 * 512)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i / 3) }
        let rig = try BlockRig(diskBytes: bytes)
        // Header split over two descriptors, data over two, inside an indirect table.
        let h = rig.driver.alloc(16), d1 = rig.driver.alloc(512), d2 = rig.driver.alloc(1024), st = rig.driver.alloc(1)
        try rig.memory.write(UInt32(0), at: h)
        try rig.memory.write(UInt64(2), at: h + 8)
        try rig.driver.post(rig.queue, [
            .init(address: h, length: 10, writable: false), .init(address: h + 10, length: 6, writable: false),
            .init(address: d1, length: 512, writable: true), .init(address: d2, length: 1024, writable: true),
            .init(address: st, length: 1, writable: true),
        ], indirect: true)
        rig.driver.notify(rig.queue)
        let used = try rig.driver.takeUsed(rig.queue)
        #expect(used.count == 1 && used[0].length == 1537)
        #expect(try rig.memory.read(UInt8.self, at: st) == 0)
        #expect(try rig.memory.readBytes(at: d1, count: 512) == Array(bytes[1024..<1536]))
        #expect(try rig.memory.readBytes(at: d2, count: 1024) == Array(bytes[1536..<2560]))
    }

    @Test func flushReachesTheBackend() throws {
        let rig = try BlockRig()
        let (s, _) = try rig.run(type: VirtioBlock.RequestType.flush, sector: 0)
        #expect(s == 0)
        #expect(rig.disk.flushCount == 1)
    }

    @Test func getIDReturnsTheSerial() throws {
        let rig = try BlockRig(serial: "SERIAL-42")
        let buf = rig.driver.alloc(20)
        try rig.memory.fill(0xAA, at: buf, length: 20)
        let (s, len) = try rig.run(type: VirtioBlock.RequestType.getID, sector: 0, data: buf, length: 20, writable: true)
        #expect(s == 0 && len == 21)
        let id = try rig.memory.readBytes(at: buf, count: 20)
        #expect(Array(id.prefix(9)) == Array("SERIAL-42".utf8))
        #expect(id[9...].allSatisfy { $0 == 0 })
    }

    @Test func discardAndWriteZeroesClearSectors() throws {
        let rig = try BlockRig(diskBytes: [UInt8](repeating: 0x5A, count: 16 * 512))
        #expect(rig.driver.deviceFeatures() & (VirtioBlock.Feature.discard | VirtioBlock.Feature.writeZeroes) != 0)
        for (type, sector) in [(VirtioBlock.RequestType.discard, UInt64(2)), (VirtioBlock.RequestType.writeZeroes, UInt64(8))] {
            let seg = rig.driver.alloc(16)
            try rig.memory.write(sector, at: seg)
            try rig.memory.write(UInt32(3), at: seg + 8)
            try rig.memory.write(UInt32(0), at: seg + 12)
            let (s, _) = try rig.run(type: type, sector: 0, data: seg, length: 16)
            #expect(s == 0)
        }
        #expect(rig.disk.bytes[2 * 512 ..< 5 * 512].allSatisfy { $0 == 0 })
        #expect(rig.disk.bytes[8 * 512 ..< 11 * 512].allSatisfy { $0 == 0 })
        #expect(rig.disk.bytes[5 * 512 ..< 8 * 512].allSatisfy { $0 == 0x5A })
        #expect(rig.disk.bytes[11 * 512] == 0x5A && rig.disk.bytes[2 * 512 - 1] == 0x5A)
    }

    @Test func outOfRangeSectorsAreIOErrors() throws {
        let rig = try BlockRig(sectors: 8)
        let buf = rig.driver.alloc(1024)
        // Last two sectors: fine. One past the end, a huge sector, and an overflowing one: IOERR.
        #expect(try rig.run(type: VirtioBlock.RequestType.read, sector: 6, data: buf, length: 1024, writable: true).0 == 0)
        #expect(try rig.run(type: VirtioBlock.RequestType.read, sector: 7, data: buf, length: 1024, writable: true).0 == 1)
        #expect(try rig.run(type: VirtioBlock.RequestType.write, sector: 8, data: buf, length: 512).0 == 1)
        #expect(try rig.run(type: VirtioBlock.RequestType.write, sector: .max, data: buf, length: 512).0 == 1)
        #expect(try rig.run(type: VirtioBlock.RequestType.read, sector: 0, data: buf, length: 100, writable: true).0 == 1)
        let seg = rig.driver.alloc(16)
        try rig.memory.write(UInt64(7), at: seg)
        try rig.memory.write(UInt32(2), at: seg + 8)
        #expect(try rig.run(type: VirtioBlock.RequestType.writeZeroes, sector: 0, data: seg, length: 16).0 == 1)
        #expect(rig.block.errors == 5)
        #expect(rig.device.status & VirtioStatus.needsReset == 0)
    }

    @Test func readOnlyDiskRefusesWrites() throws {
        let rig = try BlockRig(diskBytes: [UInt8](repeating: 0x11, count: 4096), readOnly: true)
        let f = rig.driver.deviceFeatures()
        #expect(f & VirtioBlock.Feature.readOnly != 0)
        #expect(f & VirtioBlock.Feature.discard == 0)
        let buf = rig.driver.alloc(512)
        #expect(try rig.run(type: VirtioBlock.RequestType.write, sector: 0, data: buf, length: 512).0 == 1)
        let seg = rig.driver.alloc(16)
        try rig.memory.write(UInt32(1), at: seg + 8)
        #expect(try rig.run(type: VirtioBlock.RequestType.writeZeroes, sector: 0, data: seg, length: 16).0 == 1)
        #expect(rig.disk.bytes.allSatisfy { $0 == 0x11 })
        #expect(try rig.run(type: VirtioBlock.RequestType.read, sector: 0, data: buf, length: 512, writable: true).0 == 0)
    }

    @Test func unknownRequestTypeIsUnsupported() throws {
        let rig = try BlockRig()
        #expect(try rig.run(type: 0x7777, sector: 0).0 == 2)
        #expect(try rig.run(type: 0, sector: 0).0 == 0)   // a zero-length read is valid
    }

    @Test func manyRequestsWrapTheRings() throws {
        let rig = try BlockRig()
        let buf = rig.driver.alloc(512)
        // 3 descriptors per request on a 256-entry queue: 400 requests wrap both rings.
        for i in 0..<400 {
            try rig.memory.write(UInt32(i), at: buf)
            let (s, _) = try rig.run(type: VirtioBlock.RequestType.write, sector: UInt64(i % 64), data: buf, length: 512)
            #expect(s == 0)
        }
        #expect(rig.block.requests == 400)
        #expect(rig.disk.bytes[(399 % 64) * 512] == UInt8(399 & 0xFF))
    }
}
