import Synchronization
import Foundation
import Devices
import GuestMemory
import Hypervisor
import Storage
import Testing

@Suite struct VirtioTransportTests {
    @Test func featuresWithoutVersion1AreRefused() throws {
        let memory = try GuestMemory(size: 1 << 20)
        let device = VirtioPCIDevice(model: VirtioEntropy(), memory: memory, interrupts: RecordingInterruptController())
        let driver = VirtioTestDriver(device: device, memory: memory)
        #expect(driver.deviceFeatures() & VirtioFeature.version1 != 0)
        #expect(driver.deviceFeatures() & VirtioFeature.accessPlatform == 0)
        #expect(driver.negotiate(wanted: ~VirtioFeature.version1) == false)
        #expect(driver.status & VirtioStatus.featuresOK == 0)
        #expect(driver.negotiate() == true)
        // Features are frozen after FEATURES_OK.
        driver.setCommon(0x08, 4, 0); driver.setCommon(0x0C, 4, 0)
        #expect(device.driverFeatures & VirtioFeature.version1 != 0)
    }

    @Test func resetClearsQueuesAndStatus() throws {
        let rig = try BlockRig()
        #expect(rig.device.queues[0].isReady)
        rig.driver.setCommon(0x14, 1, 0)
        #expect(rig.device.status == 0)
        #expect(!rig.device.queues[0].isReady)
        #expect(rig.device.driverFeatures == 0)
        // Queue fields of a nonexistent queue read as size 0.
        rig.driver.setCommon(0x16, 2, 5)
        #expect(rig.driver.common(0x18, 2) == 0)
    }

    @Test func buffersPostedBeforeDriverOKRunAtDriverOK() throws {
        let memory = try GuestMemory(size: 1 << 20)
        let disk = MemoryDisk(size: 4096)
        let device = VirtioPCIDevice(model: VirtioBlock(disk: disk), memory: memory, interrupts: RecordingInterruptController())
        let driver = VirtioTestDriver(device: device, memory: memory)
        driver.negotiate()
        let q = driver.setupQueue(0)
        let st = try driver.blockRequest(q, type: VirtioBlock.RequestType.flush, sector: 0)
        driver.notify(q)
        #expect(disk.flushCount == 0)          // the device consumes nothing before DRIVER_OK
        driver.driverOK()
        #expect(disk.flushCount == 1)
        #expect(try memory.read(UInt8.self, at: st) == 0)
    }

    @Test func pciConfigAccessWindowReachesTheCommonConfig() throws {
        let rig = try BlockRig()
        // Find the VIRTIO_PCI_CAP_PCI_CFG capability and read num_queues through it.
        var ptr = Int(rig.device.configRead(offset: 0x34, size: 1))
        var cfg = 0
        while ptr != 0 {
            if rig.device.configRead(offset: ptr, size: 1) == 9, rig.device.configRead(offset: ptr + 3, size: 1) == 5 { cfg = ptr }
            ptr = Int(rig.device.configRead(offset: ptr + 1, size: 1))
        }
        #expect(cfg != 0)
        rig.device.configWrite(offset: cfg + 4, size: 1, value: 0)
        rig.device.configWrite(offset: cfg + 8, size: 4, value: 0x12)
        rig.device.configWrite(offset: cfg + 12, size: 4, value: 2)
        #expect(rig.device.configRead(offset: cfg + 16, size: 4) == 1)
    }

    @Test func barSizingReportsTheSize() throws {
        let rig = try BlockRig()
        rig.device.configWrite(offset: 0x10, size: 4, value: 0xFFFF_FFFF)
        #expect(rig.device.configRead(offset: 0x10, size: 4) == ~UInt32(VirtioPCIDevice.bar0Size - 1))
        rig.device.configWrite(offset: 0x10, size: 4, value: 0xC000_0000)
        #expect(rig.device.barAddress(0) == 0xC000_0000)
        let regions = rig.device.notifyRegions()
        #expect(regions == [VirtioNotifyRegion(queue: 0, address: 0xC000_3000, length: 2)])
    }

    @Test func worksBehindThePCIHost() throws {
        let bus = IOBus()
        let irq = RecordingInterruptController()
        let host = PCIHost(bus: bus, interrupts: irq)
        try bus.mapPorts(host, name: "pci", base: PCIHost.basePort, count: PCIHost.portCount)
        let memory = try GuestMemory(size: 1 << 20)
        let device = VirtioPCIDevice(model: VirtioBlock(disk: MemoryDisk(size: 4096)), memory: memory,
                                     interrupts: irq, intx: host.interruptLine(slot: 3, pin: 1))
        try host.register(device, slot: 3)
        bus.portWrite(0xCF8, size: 4, value: 0x8000_0000 | 3 << 11)
        #expect(bus.portRead(0xCFC, size: 4) == 0x1042_1AF4)
        let bar0 = try #require(host.mappedBar(slot: 3, index: 0))
        let bar1 = try #require(host.mappedBar(slot: 3, index: 1))
        #expect(!bar0.isIO && bar0.base != bar1.base)
        #expect(bus.mmioRead(bar0.base + 0x12, size: 2) == 1)                  // num_queues
        #expect(device.notifyRegions().first?.address == bar0.base + 0x3000)
        bus.mmioWrite(bar1.base + 8, size: 4, value: 0x1234)                   // MSI-X entry 0 data
        #expect(device.msix.entries[0].data == 0x1234)
    }

    @Test func intxRaisesAndISRReadClears() throws {
        let rig = try BlockRig()
        let (s, _) = try rig.run(type: VirtioBlock.RequestType.flush, sector: 0)
        #expect(s == 0)
        #expect(rig.irq.level(10) == true)
        #expect(rig.driver.readISR() == 1)
        #expect(rig.irq.level(10) == false)
        #expect(rig.driver.readISR() == 0)
    }

    @Test func noInterruptFlagSuppressesInterrupts() throws {
        let rig = try BlockRig(wanted: ~VirtioFeature.eventIndex)
        try rig.memory.write(UInt16(1), at: rig.queue.avail)    // VIRTQ_AVAIL_F_NO_INTERRUPT
        _ = try rig.run(type: VirtioBlock.RequestType.flush, sector: 0)
        #expect(rig.irq.events.isEmpty)
        try rig.memory.write(UInt16(0), at: rig.queue.avail)
        _ = try rig.run(type: VirtioBlock.RequestType.flush, sector: 0)
        #expect(rig.irq.events == [.irq(10, true)])
    }

    @Test func msixDeliversPerQueueVectorsAndHonoursMasks() throws {
        let memory = try GuestMemory(size: 1 << 20)
        let irq = RecordingInterruptController()
        let disk = MemoryDisk(size: 4096)
        let device = VirtioPCIDevice(model: VirtioBlock(disk: disk), memory: memory, interrupts: irq,
                                     intx: IRQLine(controller: irq, gsi: 11))
        let driver = VirtioTestDriver(device: device, memory: memory)
        driver.enableMSIX(vectors: 2)
        let q = driver.start(wanted: ~VirtioFeature.eventIndex, vectors: true)[0]
        // Vector numbers beyond the table are refused (read back as NO_VECTOR).
        driver.setCommon(0x16, 2, 0); driver.setCommon(0x1A, 2, 7)
        #expect(driver.common(0x1A, 2) == 0xFFFF)
        driver.setCommon(0x1A, 2, 1)

        _ = try driver.blockRequest(q, type: VirtioBlock.RequestType.flush, sector: 0)
        driver.notify(q)
        #expect(irq.events == [.msi(address: 0xFEE0_1000, data: 0x41)])
        #expect(irq.level(11) == false)

        irq.clear()
        driver.maskVector(1, true)
        _ = try driver.blockRequest(q, type: VirtioBlock.RequestType.flush, sector: 0)
        driver.notify(q)
        #expect(irq.events.isEmpty)
        #expect(device.barRead(index: 1, offset: VirtioPCIDevice.msixPBAOffset, size: 8) == 0b10)
        driver.maskVector(1, false)
        #expect(irq.events == [.msi(address: 0xFEE0_1000, data: 0x41)])
        #expect(device.barRead(index: 1, offset: VirtioPCIDevice.msixPBAOffset, size: 8) == 0)
    }

    @Test func eventIndexSuppressesUntilUsedEvent() throws {
        let rig = try BlockRig()
        #expect(rig.device.driverFeatures & VirtioFeature.eventIndex != 0)
        // Ask for an interrupt only when used index passes 3 (i.e. after the 4th buffer).
        try rig.driver.setUsedEvent(rig.queue, 3)
        for i in 0..<3 {
            _ = try rig.run(type: VirtioBlock.RequestType.flush, sector: 0)
            #expect(rig.irq.events.isEmpty, "no interrupt expected after request \(i)")
        }
        _ = try rig.run(type: VirtioBlock.RequestType.flush, sector: 0)
        #expect(rig.irq.events == [.irq(10, true)])
        // The device re-armed notifications: avail_event = next index it will read.
        #expect(try rig.driver.availEvent(rig.queue) == 4)

        // A batch of two posted before one notify, used_event inside the batch: one interrupt.
        rig.irq.clear(); _ = rig.driver.readISR()
        try rig.driver.setUsedEvent(rig.queue, 4)
        _ = try rig.driver.blockRequest(rig.queue, type: VirtioBlock.RequestType.flush, sector: 0)
        _ = try rig.driver.blockRequest(rig.queue, type: VirtioBlock.RequestType.flush, sector: 0)
        rig.driver.notify(rig.queue)
        #expect(try rig.driver.takeUsed(rig.queue).count == 2)
        #expect(rig.irq.events.filter { $0 == .irq(10, true) }.count == 1)
    }

    @Test func needsEventMatchesTheSpecFormula() {
        #expect(SplitVirtqueue.needsEvent(event: 0, new: 1, old: 0))
        #expect(!SplitVirtqueue.needsEvent(event: 1, new: 1, old: 0))
        #expect(SplitVirtqueue.needsEvent(event: 0xFFFF, new: 2, old: 0xFFFE))   // wraps
        #expect(!SplitVirtqueue.needsEvent(event: 5, new: 5, old: 5))
    }
}

@Suite struct VirtioEntropyConsoleTests {
    @Test func entropyFillsWritableBuffers() throws {
        let memory = try GuestMemory(size: 1 << 20)
        let rng = VirtioEntropy { buf in for i in 0..<buf.count { buf[i] = UInt8(truncatingIfNeeded: i + 1) } }
        let device = VirtioPCIDevice(model: rng, memory: memory, interrupts: RecordingInterruptController())
        let driver = VirtioTestDriver(device: device, memory: memory)
        #expect(device.configRead(offset: 2, size: 2) == 0x1044)
        let q = driver.start()[0]
        let a = driver.alloc(40), b = driver.alloc(24)
        try driver.post(q, [.init(address: a, length: 40, writable: true), .init(address: b, length: 24, writable: true)])
        driver.notify(q)
        let used = try driver.takeUsed(q)
        #expect(used.count == 1 && used[0].length == 64)
        #expect(try memory.readBytes(at: a, count: 40) == (1...40).map { UInt8($0) })
        #expect(try memory.readBytes(at: b, count: 24) == (1...24).map { UInt8($0) })   // one source call per buffer
    }

    @Test func hostEntropyIsNotConstant() throws {
        let memory = try GuestMemory(size: 1 << 20)
        let device = VirtioPCIDevice(model: VirtioEntropy(), memory: memory, interrupts: RecordingInterruptController())
        let driver = VirtioTestDriver(device: device, memory: memory)
        let q = driver.start()[0]
        let a = driver.alloc(256)
        try driver.post(q, [.init(address: a, length: 256, writable: true)])
        driver.notify(q)
        #expect(try driver.takeUsed(q).first?.length == 256)
        #expect(Set(try memory.readBytes(at: a, count: 256)).count > 16)
    }

    final class Sink: @unchecked Sendable { var bytes: [UInt8] = [] }

    @Test func consoleTransmitsReceivesAndEmergencyWrites() throws {
        let memory = try GuestMemory(size: 1 << 20)
        let sink = Sink()
        let console = VirtioConsole(columns: 132, rows: 43) { sink.bytes += $0 }
        let irq = RecordingInterruptController()
        let device = VirtioPCIDevice(model: console, memory: memory, interrupts: irq, intx: IRQLine(controller: irq, gsi: 5))
        let driver = VirtioTestDriver(device: device, memory: memory)
        #expect(device.configRead(offset: 2, size: 2) == 0x1043)
        let queues = driver.start()
        #expect(queues.count == 2)
        #expect(driver.deviceConfig(0, 2) == 132 && driver.deviceConfig(2, 2) == 43)

        // Guest → host.
        let out = driver.alloc(5)
        try memory.write(bytes: Array("hello".utf8), at: out)
        try driver.post(queues[1], [.init(address: out, length: 5, writable: false)])
        driver.notify(queues[1])
        #expect(sink.bytes == Array("hello".utf8))
        #expect(try driver.takeUsed(queues[1]).count == 1)

        // Host → guest: input waits for a buffer, then fills it.
        console.input(Array("abc".utf8))
        #expect(console.pendingInputCount == 3)
        let rx = driver.alloc(2)
        try driver.post(queues[0], [.init(address: rx, length: 2, writable: true)])
        driver.notify(queues[0])
        #expect(try driver.takeUsed(queues[0]).map(\.length) == [2])
        #expect(try memory.readBytes(at: rx, count: 2) == Array("ab".utf8))
        let rx2 = driver.alloc(8)
        try driver.post(queues[0], [.init(address: rx2, length: 8, writable: true)])
        driver.notify(queues[0])
        #expect(try driver.takeUsed(queues[0]).isEmpty == false)
        #expect(try memory.read(UInt8.self, at: rx2) == UInt8(ascii: "c"))
        #expect(console.pendingInputCount == 0)
        // Input while a buffer is already posted goes straight in.
        let rx3 = driver.alloc(8)
        try driver.post(queues[0], [.init(address: rx3, length: 8, writable: true)])
        driver.notify(queues[0])
        console.input([0x7A])
        #expect(try driver.takeUsed(queues[0]).map(\.length) == [1])
        #expect(try memory.read(UInt8.self, at: rx3) == 0x7A)

        driver.setDeviceConfig(8, 4, UInt64(UInt8(ascii: "!")))
        #expect(sink.bytes.last == UInt8(ascii: "!"))
    }
}

@Suite struct VirtioMachineSetTests {
    @Test func placesFunctionsOnTheirSlots() throws {
        let bus = IOBus()
        let irq = RecordingInterruptController()
        let host = PCIHost(bus: bus, interrupts: irq)
        let memory = try GuestMemory(size: 1 << 20)
        let disks = (0..<2).map { VirtioDiskSpec(backend: MemoryDisk(size: 4096), readOnly: $0 == 1, serial: "d\($0)") }
        let set = try VirtioMachineSet(host: host, memory: memory, interrupts: irq, disks: disks) { _ in }
        #expect(set.all.count == 4)
        #expect(host.device(slot: 2)?.pciName == "virtio-rng")
        #expect(host.device(slot: 3)?.pciName == "virtio-blk0")
        #expect(host.device(slot: 4)?.pciName == "virtio-blk1")
        #expect(host.device(slot: 7)?.pciName == "virtio-console")
        #expect(set.blockModels[1].isReadOnly && !set.blockModels[0].isReadOnly)
        // Interrupt line registers were filled from the routing table.
        #expect(set.blocks[0].configRead(offset: 0x3C, size: 1) != 0xFF)
        let five = (0..<5).map { _ in VirtioDiskSpec(backend: MemoryDisk(size: 512), serial: "x") }
        #expect(throws: VirtioMachineSet.SetupError.self) {
            _ = try VirtioMachineSet(host: PCIHost(bus: IOBus(), interrupts: irq), memory: memory, interrupts: irq, disks: five)
        }
    }
}

@Suite struct VirtioSnapshotTests {
    @Test func restoredDeviceContinuesWhereTheOldOneStopped() throws {
        let rig = try BlockRig()
        let buf = rig.driver.alloc(512)
        try rig.memory.write(bytes: [UInt8](repeating: 0x42, count: 512), at: buf)
        #expect(try rig.run(type: VirtioBlock.RequestType.write, sector: 3, data: buf, length: 512).0 == 0)
        let snap = rig.device.snapshot()
        let data = try JSONEncoder().encode(snap)
        let decoded = try JSONDecoder().decode(VirtioPCIDevice.Snapshot.self, from: data)
        #expect(decoded == snap)

        // A fresh function on the same memory and disk takes over the live queue.
        let fresh = VirtioPCIDevice(model: VirtioBlock(disk: rig.disk), memory: rig.memory, interrupts: rig.irq)
        #expect(fresh.restore(decoded))
        #expect(fresh.status == 0x0F && fresh.queues[0].usedIndex == 1)
        let st = try rig.driver.blockRequest(rig.queue, type: VirtioBlock.RequestType.read, sector: 3,
                                             data: buf + 1024, dataLength: 512, dataWritable: true)
        fresh.notify(queue: 0)
        #expect(try rig.memory.read(UInt8.self, at: st) == 0)
        #expect(try rig.memory.readBytes(at: buf + 1024, count: 512).allSatisfy { $0 == 0x42 })
        // A snapshot of another device type is refused.
        let rng = VirtioPCIDevice(model: VirtioEntropy(), memory: rig.memory, interrupts: rig.irq)
        #expect(!rng.restore(decoded))
    }

    @Test func restoreReprogramsTheNotifyRegions() throws {
        let rig = try BlockRig()
        let live = rig.device.notifyRegions()
        #expect(!live.isEmpty)
        let seen = Mutex<[[VirtioNotifyRegion]]>([])
        let fresh = VirtioPCIDevice(model: VirtioBlock(disk: rig.disk), memory: rig.memory, interrupts: rig.irq)
        fresh.onNotifyRegionsChanged = { regions in seen.withLock { $0.append(regions) } }
        #expect(fresh.restore(rig.device.snapshot()))
        #expect(seen.withLock { $0 } == [live], "ioeventfds for a restored running device")
        // Restoring a device that was reset drops them again.
        let idle = VirtioPCIDevice(model: VirtioBlock(disk: rig.disk), memory: rig.memory, interrupts: rig.irq)
        #expect(fresh.restore(idle.snapshot()))
        #expect(seen.withLock { $0 } == [live, []])
    }
}
