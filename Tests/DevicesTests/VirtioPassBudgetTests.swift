import Devices
import GuestMemory
import Hypervisor
import Storage
import Synchronization
import Testing

/// A notify processes at most one ring's worth of chains per pass, so a guest that keeps
/// refilling a queue (another vCPU re-posting as fast as requests complete) cannot hold the
/// notifying thread: the KVM event loop, shared by every device and passing the pause gate
/// once per notify, must get control back.
@Suite struct VirtioPassBudgetTests {
    /// A disk whose every flush makes the guest post the same request again, up to `limit`
    /// flushes (a bound so that, without the budget, the test ends with a count, not a hang).
    final class RefillingDisk: DiskBackend, @unchecked Sendable {
        let size: UInt64 = 64 * 512
        let isReadOnly = false
        let limit: Int
        var flushes = 0
        var refill: (() throws -> Void)?
        init(limit: Int) { self.limit = limit }
        func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {}
        func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {}
        func flush() throws {
            flushes += 1
            if flushes < limit { try refill?() }
        }
        func discard(offset: UInt64, length: UInt64) throws {}
        func writeZeroes(offset: UInt64, length: UInt64) throws {}
    }

    struct Rig {
        let memory: GuestMemory
        let disk: RefillingDisk
        let device: VirtioPCIDevice
        let driver: VirtioTestDriver
        let queue: VirtioTestDriver.Queue

        init(limit: Int) throws {
            memory = try GuestMemory(size: 1 << 20)
            disk = RefillingDisk(limit: limit)
            let irq = RecordingInterruptController()
            device = VirtioPCIDevice(model: VirtioBlock(disk: disk), memory: memory, interrupts: irq,
                                     intx: IRQLine(controller: irq, gsi: 10), logger: VirtioPCIDevice.discardingLogger)
            driver = VirtioTestDriver(device: device, memory: memory)
            queue = driver.start()[0]
            let (memory, queue) = (memory, queue)
            _ = try driver.blockRequest(queue, type: VirtioBlock.RequestType.flush, sector: 0)
            let head = try memory.read(UInt16.self, at: queue.avail + 4)
            // The "other vCPU": re-posts the same chain as soon as the device took one.
            disk.refill = {
                try memory.write(head, at: queue.avail + 4 + 2 * UInt64(queue.availIdx % queue.size))
                queue.availIdx &+= 1
                try memory.write(queue.availIdx, at: queue.avail + 2)
            }
        }
    }

    @Test func onePassTakesAtMostTheQueueSizeThenAsksForAnother() throws {
        let rig = try Rig(limit: 20_000)
        let requeued = Mutex<[Int]>([])
        rig.device.onMorePending = { q in requeued.withLock { $0.append(q) }; return true }
        rig.driver.notify(rig.queue)
        #expect(rig.disk.flushes == Int(rig.queue.size), "one notify served \(rig.disk.flushes) requests")
        #expect(requeued.withLock { $0 } == [0])
        #expect(rig.device.status & VirtioStatus.needsReset == 0)
        #expect(try rig.driver.takeUsed(rig.queue).count == Int(rig.queue.size))
    }

    @Test func anotherDeviceIsServedBetweenPassesAndTheRefillerStillFinishes() throws {
        let busy = try Rig(limit: 5_000)
        let other = try BlockRig()
        let requeued = Mutex<[Int]>([])
        busy.device.onMorePending = { q in requeued.withLock { $0.append(q) }; return true }
        // An event loop in miniature: one notify per ready queue per round.
        busy.device.notify(queue: 0)
        let status = try other.driver.blockRequest(other.queue, type: VirtioBlock.RequestType.flush, sector: 0)
        other.device.notify(queue: 0)
        #expect(try other.memory.read(UInt8.self, at: status) == VirtioBlock.Status.ok)
        #expect(busy.disk.flushes < busy.disk.limit, "the other device waited for the refiller")
        var rounds = 1
        while let q = requeued.withLock({ $0.isEmpty ? nil : $0.removeFirst() }), rounds < 1_000 {
            let before = busy.disk.flushes
            busy.device.notify(queue: q)
            #expect(busy.disk.flushes - before <= Int(busy.queue.size))
            rounds += 1
        }
        #expect(busy.disk.flushes == busy.disk.limit)
        #expect(rounds == (busy.disk.limit + Int(busy.queue.size) - 1) / Int(busy.queue.size))
        #expect(try busy.driver.takeUsed(busy.queue).count == busy.disk.limit)
    }

    @Test func withoutAHookTheNotifyingThreadFinishesInPasses() throws {
        let rig = try Rig(limit: 3_000)
        rig.driver.notify(rig.queue)
        #expect(rig.disk.flushes == rig.disk.limit)
        #expect(try rig.driver.takeUsed(rig.queue).count == rig.disk.limit)
        #expect(rig.device.status & VirtioStatus.needsReset == 0)
    }
}
