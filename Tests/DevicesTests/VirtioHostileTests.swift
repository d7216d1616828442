import Devices
import GuestMemory
import Hypervisor
import Storage
import Testing

/// Malformed rings and chains must put the device in DEVICE_NEEDS_RESET, touch nothing
/// outside guest RAM, and leave the VMM running; a reset brings the device back.
@Suite struct VirtioHostileTests {
    typealias B = VirtioTestDriver.Buffer

    /// Posts `buffers` (raw), notifies, and checks the device gave up with `expected`.
    func expectNeedsReset(_ buffers: [B], indirect: Bool = false, wanted: UInt64 = .max,
                          _ expected: (VirtioError) -> Bool, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let rig = try BlockRig(wanted: wanted)
        try rig.driver.post(rig.queue, buffers, indirect: indirect)
        rig.driver.notify(rig.queue)
        #expect(rig.device.status & VirtioStatus.needsReset != 0, sourceLocation: sourceLocation)
        #expect(rig.device.lastError.map(expected) == true, "got \(String(describing: rig.device.lastError))",
                sourceLocation: sourceLocation)
        #expect(rig.driver.readISR() & 2 != 0, "config-change interrupt", sourceLocation: sourceLocation)
        #expect(rig.disk.bytes.allSatisfy { $0 == 0 }, sourceLocation: sourceLocation)
        // Further notifies are ignored until reset; after reset the device works again.
        rig.driver.notify(rig.queue)
        let q = rig.driver.start()[0]
        #expect(rig.device.status == 0x0F, sourceLocation: sourceLocation)
        let st = try rig.driver.blockRequest(q, type: VirtioBlock.RequestType.flush, sector: 0)
        rig.driver.notify(q)
        #expect(try rig.memory.read(UInt8.self, at: st) == 0, sourceLocation: sourceLocation)
    }

    func header(_ rig: BlockRig? = nil) -> UInt64 { 0x80000 }

    @Test func descriptorLoop() throws {
        try expectNeedsReset([B(address: 0x80000, length: 16, writable: false, next: 0)]) {
            if case .chainTooLong = $0 { return true } else { return false }
        }
    }

    @Test func twoDescriptorLoop() throws {
        try expectNeedsReset([B(address: 0x80000, length: 16, writable: false, next: 1),
                              B(address: 0x80100, length: 1, writable: false, next: 0)]) {
            if case .chainTooLong = $0 { return true } else { return false }
        }
    }

    @Test func bufferOutsideRAM() throws {
        for address: UInt64 in [0x10_0000, 0xFFFF_FFFF_FFFF_FFF0, 0xF_FFF8] {
            try expectNeedsReset([B(address: address, length: 16, writable: false),
                                  B(address: 0x80100, length: 1, writable: true)]) {
                if case .bufferOutsideRAM = $0 { return true } else { return false }
            }
        }
    }

    @Test func nextIndexOutOfRange() throws {
        try expectNeedsReset([B(address: 0x80000, length: 16, writable: false, next: 999)]) {
            if case .descriptorIndexOutOfRange = $0 { return true } else { return false }
        }
    }

    @Test func indirectInsideIndirect() throws {
        try expectNeedsReset([B(address: 0x80000, length: 16, writable: false, flags: 4)], indirect: true) {
            $0 == .nestedIndirect
        }
    }

    @Test func indirectLoop() throws {
        try expectNeedsReset([B(address: 0x80000, length: 16, writable: false, next: 1),
                              B(address: 0x80100, length: 1, writable: true, next: 0)], indirect: true) {
            if case .chainTooLong(let limit) = $0 { return limit == 2 } else { return false }
        }
    }

    @Test func indirectWithoutTheFeature() throws {
        try expectNeedsReset([B(address: 0x80000, length: 16, writable: false),
                              B(address: 0x80100, length: 1, writable: true)],
                             indirect: true, wanted: ~VirtioFeature.indirectDescriptors) {
            $0 == .indirectNotNegotiated
        }
    }

    @Test func badIndirectTables() throws {
        for length: UInt32 in [0, 24, 16 * 5000] {
            try expectNeedsReset([B(address: 0x80000, length: length, writable: false, flags: 4)]) {
                $0 == .badIndirectTable(length: length)
            }
        }
        try expectNeedsReset([B(address: 0x80000, length: 32, writable: false, flags: 5, next: 1)]) {
            $0 == .indirectWithNext
        }
    }

    @Test func zeroLengthDescriptor() throws {
        try expectNeedsReset([B(address: 0x80000, length: 16, writable: false),
                              B(address: 0x80100, length: 0, writable: true)]) {
            if case .zeroLengthDescriptor = $0 { return true } else { return false }
        }
    }

    @Test func writeOnlyHeader() throws {
        try expectNeedsReset([B(address: 0x80000, length: 16, writable: true),
                              B(address: 0x80100, length: 1, writable: true)]) {
            if case .malformedRequest = $0 { return true } else { return false }
        }
    }

    @Test func missingStatusByte() throws {
        try expectNeedsReset([B(address: 0x80000, length: 16, writable: false)]) {
            if case .malformedRequest = $0 { return true } else { return false }
        }
    }

    @Test func readableAfterWritable() throws {
        try expectNeedsReset([B(address: 0x80100, length: 1, writable: true),
                              B(address: 0x80000, length: 16, writable: false)]) {
            if case .readableAfterWritable = $0 { return true } else { return false }
        }
    }

    @Test func overlongChainInAnIndirectTable() throws {
        // A 300-entry indirect table whose last entry points back into the middle.
        var buffers = (0..<300).map { _ in B(address: 0x80000, length: 16, writable: false) }
        buffers[299].next = 150
        try expectNeedsReset(buffers, indirect: true) {
            if case .chainTooLong = $0 { return true } else { return false }
        }
    }

    @Test func availIndexJumpingPastTheQueueSize() throws {
        let rig = try BlockRig()
        try rig.memory.write(UInt16(1000), at: rig.queue.avail + 2)
        rig.driver.notify(rig.queue)
        #expect(rig.device.status & VirtioStatus.needsReset != 0)
        #expect(rig.device.lastError == .availIndexJump(queue: 0, pending: 1000, size: 256))
    }

    @Test func ringsOutsideRAMAreRefusedAtEnable() throws {
        let memory = try GuestMemory(size: 1 << 20)
        let device = VirtioPCIDevice(model: VirtioBlock(disk: MemoryDisk(size: 4096)), memory: memory,
                                     interrupts: RecordingInterruptController(), logger: VirtioPCIDevice.discardingLogger)
        let driver = VirtioTestDriver(device: device, memory: memory)
        driver.negotiate()
        driver.setCommon(0x16, 2, 0)
        driver.setCommon(0x20, 4, 0xFFFF_F000)     // descriptor table beyond RAM
        driver.setCommon(0x1C, 2, 1)
        #expect(device.status & VirtioStatus.needsReset != 0)
        #expect(!device.queues[0].isReady)
        // Queue size not a power of two.
        driver.negotiate()
        _ = driver.setupQueue(0, size: 100)
        #expect(device.lastError == .badQueueSize(queue: 0, size: 100))
    }

    @Test func randomGarbageNeverCrashes() throws {
        // Fill the rings and the descriptor table with pseudo-random junk many times.
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; return seed }
        var resets = 0
        for _ in 0..<200 {
            let rig = try BlockRig(sectors: 8)
            for i in 0..<Int(rig.queue.size) {
                let at = rig.queue.desc + 16 * UInt64(i)
                let r = next()
                try rig.memory.write(r % 2 == 0 ? r % 0x100000 : r, at: at)           // address
                try rig.memory.write(UInt32(truncatingIfNeeded: next() % 4096), at: at + 8)
                try rig.memory.write(UInt16(truncatingIfNeeded: next() % 8), at: at + 12)
                try rig.memory.write(UInt16(truncatingIfNeeded: next() % 300), at: at + 14)
            }
            for i in 0..<8 { try rig.memory.write(UInt16(truncatingIfNeeded: next()), at: rig.queue.avail + 4 + 2 * UInt64(i)) }
            try rig.memory.write(UInt16(next() % 9), at: rig.queue.avail + 2)
            rig.driver.notify(rig.queue)
            if rig.device.status & VirtioStatus.needsReset != 0 { resets += 1 }
        }
        #expect(resets > 100)
    }
}
