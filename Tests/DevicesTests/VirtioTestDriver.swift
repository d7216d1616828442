import Devices
import GuestMemory
import Hypervisor
import Storage

/// A minimal virtio-pci modern driver for unit tests: it finds the virtio capabilities by
/// walking config space, programs the BARs, negotiates features through the common
/// configuration, lays out split rings in a test `GuestMemory`, posts descriptor chains
/// and reads the used ring — all through the device's PCI interface, as a guest would.
final class VirtioTestDriver {
    struct Cap { var bar: Int; var offset: UInt64; var length: UInt32 }

    struct Buffer {
        var address: UInt64
        var length: UInt32
        var writable: Bool
        var flags: UInt16 = 0      // extra flags (for hostile tests)
        var next: UInt16? = nil    // explicit next (for hostile tests)
    }

    final class Queue {
        let index: Int
        let size: UInt16
        let desc: UInt64, avail: UInt64, used: UInt64
        var nextDescriptor: UInt16 = 0
        var availIdx: UInt16 = 0
        var lastUsed: UInt16 = 0
        init(index: Int, size: UInt16, desc: UInt64, avail: UInt64, used: UInt64) {
            self.index = index; self.size = size; self.desc = desc; self.avail = avail; self.used = used
        }
    }

    let device: VirtioPCIDevice
    let memory: GuestMemory
    var caps: [UInt8: Cap] = [:]
    var notifyMultiplier: UInt32 = 0
    var msixCapOffset: Int?
    var barBase: [UInt64] = [0xC000_0000, 0xC001_0000]
    /// Bump allocator for rings and buffers.
    var nextFree: UInt64 = 0x10000

    init(device: VirtioPCIDevice, memory: GuestMemory) {
        self.device = device
        self.memory = memory
        // Program the BARs and enable memory decoding, as firmware would.
        device.configWrite(offset: 0x10, size: 4, value: UInt32(barBase[0]))
        device.configWrite(offset: 0x14, size: 4, value: UInt32(barBase[1]))
        device.configWrite(offset: 0x04, size: 2, value: 0x0006)
        // Walk the capability list (bounded: at most 48 entries in 256 bytes).
        var ptr = Int(device.configRead(offset: 0x34, size: 1))
        var steps = 0
        while ptr != 0 && steps < 48 {
            steps += 1
            let id = UInt8(device.configRead(offset: ptr, size: 1))
            if id == 0x09 {
                let type = UInt8(device.configRead(offset: ptr + 3, size: 1))
                let bar = Int(device.configRead(offset: ptr + 4, size: 1))
                let off = UInt64(device.configRead(offset: ptr + 8, size: 4))
                let len = device.configRead(offset: ptr + 12, size: 4)
                if caps[type] == nil { caps[type] = Cap(bar: bar, offset: off, length: len) }
                if type == 2 { notifyMultiplier = device.configRead(offset: ptr + 16, size: 4) }
            } else if id == 0x11 {
                msixCapOffset = ptr
            }
            ptr = Int(device.configRead(offset: ptr + 1, size: 1))
        }
    }

    func alloc(_ size: Int, align: UInt64 = 16) -> UInt64 {
        let a = (nextFree + align - 1) / align * align
        nextFree = a + UInt64(size)
        return a
    }

    // MARK: common config

    func common(_ off: UInt64, _ size: Int) -> UInt64 {
        let c = caps[1]!
        return device.barRead(index: c.bar, offset: c.offset + off, size: size)
    }

    func setCommon(_ off: UInt64, _ size: Int, _ value: UInt64) {
        let c = caps[1]!
        device.barWrite(index: c.bar, offset: c.offset + off, size: size, value: value)
    }

    var status: UInt8 { UInt8(common(0x14, 1)) }

    func deviceFeatures() -> UInt64 {
        setCommon(0x00, 4, 0)
        let lo = common(0x04, 4)
        setCommon(0x00, 4, 1)
        let hi = common(0x04, 4)
        return lo | hi << 32
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features (offered ∩ wanted), FEATURES_OK.
    /// Returns whether the device accepted the features.
    @discardableResult
    func negotiate(wanted: UInt64 = .max) -> Bool {
        setCommon(0x14, 1, 0)
        setCommon(0x14, 1, 1)
        setCommon(0x14, 1, 3)
        let features = deviceFeatures() & wanted
        setCommon(0x08, 4, 0); setCommon(0x0C, 4, features & 0xFFFF_FFFF)
        setCommon(0x08, 4, 1); setCommon(0x0C, 4, features >> 32)
        setCommon(0x14, 1, 0x0B)
        return status & 0x08 != 0
    }

    func setupQueue(_ index: Int, size: UInt16? = nil, vector: UInt16 = 0xFFFF) -> Queue {
        setCommon(0x16, 2, UInt64(index))
        let max = UInt16(common(0x18, 2))
        let n = size ?? max
        setCommon(0x18, 2, UInt64(n))
        let desc = alloc(16 * Int(n), align: 4096)
        let avail = alloc(6 + 2 * Int(n), align: 4096)
        let used = alloc(6 + 8 * Int(n), align: 4096)
        setCommon(0x20, 4, desc & 0xFFFF_FFFF); setCommon(0x24, 4, desc >> 32)
        setCommon(0x28, 4, avail & 0xFFFF_FFFF); setCommon(0x2C, 4, avail >> 32)
        setCommon(0x30, 4, used & 0xFFFF_FFFF); setCommon(0x34, 4, used >> 32)
        setCommon(0x1A, 2, UInt64(vector))
        setCommon(0x1C, 2, 1)
        return Queue(index: index, size: n, desc: desc, avail: avail, used: used)
    }

    func driverOK() { setCommon(0x14, 1, 0x0F) }

    /// Full bring-up: negotiate, set up every queue, DRIVER_OK.
    func start(wanted: UInt64 = .max, vectors: Bool = false) -> [Queue] {
        negotiate(wanted: wanted)
        let n = Int(common(0x12, 2))
        let queues = (0..<n).map { setupQueue($0, vector: vectors ? UInt16($0 + 1) : 0xFFFF) }
        if vectors { setCommon(0x10, 2, 0) }
        driverOK()
        return queues
    }

    // MARK: rings

    func writeDescriptor(_ table: UInt64, _ i: UInt16, _ b: Buffer, next: UInt16?) throws {
        let at = table + 16 * UInt64(i)
        try memory.write(b.address, at: at)
        try memory.write(b.length, at: at + 8)
        var flags = b.flags | (b.writable ? 2 : 0)
        if next != nil { flags |= 1 }
        try memory.write(flags, at: at + 12)
        try memory.write(next ?? 0, at: at + 14)
    }

    /// Writes a chain of descriptors and makes it available; returns the head.
    @discardableResult
    func post(_ q: Queue, _ buffers: [Buffer], indirect: Bool = false, publish: Bool = true) throws -> UInt16 {
        let head: UInt16
        if indirect {
            let table = alloc(16 * buffers.count)
            for (i, b) in buffers.enumerated() {
                try writeDescriptor(table, UInt16(i), b, next: b.next ?? (i + 1 < buffers.count ? UInt16(i + 1) : nil))
            }
            head = q.nextDescriptor
            try writeDescriptor(q.desc, head, Buffer(address: table, length: UInt32(16 * buffers.count),
                                                     writable: false, flags: 4), next: nil)
            q.nextDescriptor = (q.nextDescriptor + 1) % q.size
        } else {
            head = q.nextDescriptor
            for (i, b) in buffers.enumerated() {
                let me = (head + UInt16(i)) % q.size
                let next = b.next ?? (i + 1 < buffers.count ? (me + 1) % q.size : nil)
                try writeDescriptor(q.desc, me, b, next: next)
            }
            q.nextDescriptor = (q.nextDescriptor + UInt16(buffers.count)) % q.size
        }
        try memory.write(head, at: q.avail + 4 + 2 * UInt64(q.availIdx % q.size))
        q.availIdx &+= 1
        if publish { try memory.write(q.availIdx, at: q.avail + 2) }
        return head
    }

    func notify(_ q: Queue) {
        let c = caps[2]!
        device.barWrite(index: c.bar, offset: c.offset + UInt64(notifyMultiplier) * UInt64(common16QueueNotifyOff(q.index)),
                        size: 2, value: UInt64(q.index))
    }

    func common16QueueNotifyOff(_ index: Int) -> UInt16 {
        setCommon(0x16, 2, UInt64(index))
        return UInt16(common(0x1E, 2))
    }

    /// Used-ring entries published since the last call.
    func takeUsed(_ q: Queue) throws -> [(id: UInt32, length: UInt32)] {
        let idx: UInt16 = try memory.read(at: q.used + 2)
        var out: [(UInt32, UInt32)] = []
        while q.lastUsed != idx {
            let at = q.used + 4 + 8 * UInt64(q.lastUsed % q.size)
            out.append((try memory.read(at: at), try memory.read(at: at + 4)))
            q.lastUsed &+= 1
        }
        return out
    }

    func setUsedEvent(_ q: Queue, _ value: UInt16) throws {
        try memory.write(value, at: q.avail + 4 + 2 * UInt64(q.size))
    }

    func availEvent(_ q: Queue) throws -> UInt16 {
        try memory.read(at: q.used + 4 + 8 * UInt64(q.size))
    }

    func readISR() -> UInt8 {
        let c = caps[3]!
        return UInt8(device.barRead(index: c.bar, offset: c.offset, size: 1))
    }

    func deviceConfig(_ off: UInt64, _ size: Int) -> UInt64 {
        let c = caps[4]!
        return device.barRead(index: c.bar, offset: c.offset + off, size: size)
    }

    func setDeviceConfig(_ off: UInt64, _ size: Int, _ value: UInt64) {
        let c = caps[4]!
        device.barWrite(index: c.bar, offset: c.offset + off, size: size, value: value)
    }

    // MARK: MSI-X

    func enableMSIX(vectors: Int) {
        guard let cap = msixCapOffset else { return }
        let table = UInt64(device.configRead(offset: cap + 4, size: 4))
        let bir = Int(table & 7)
        for v in 0..<vectors {
            let at = (table & ~7) + 16 * UInt64(v)
            device.barWrite(index: bir, offset: at, size: 8, value: 0xFEE0_0000 + UInt64(v) << 12)
            device.barWrite(index: bir, offset: at + 8, size: 4, value: 0x40 + UInt64(v))
            device.barWrite(index: bir, offset: at + 12, size: 4, value: 0)
        }
        device.configWrite(offset: cap + 2, size: 2, value: 0x8000)
    }

    func maskVector(_ v: Int, _ masked: Bool) {
        guard let cap = msixCapOffset else { return }
        let table = UInt64(device.configRead(offset: cap + 4, size: 4))
        device.barWrite(index: Int(table & 7), offset: (table & ~7) + 16 * UInt64(v) + 12, size: 4, value: masked ? 1 : 0)
    }
}

/// A block-request helper on top of the driver.
extension VirtioTestDriver {
    /// Posts header + data + status for a virtio-blk request; returns the status address.
    func blockRequest(_ q: Queue, type: UInt32, sector: UInt64, data: UInt64 = 0, dataLength: UInt32 = 0,
                      dataWritable: Bool = false, indirect: Bool = false) throws -> UInt64 {
        let header = alloc(16)
        try memory.write(type, at: header)
        try memory.write(UInt32(0), at: header + 4)
        try memory.write(sector, at: header + 8)
        let status = alloc(1)
        try memory.write(UInt8(0xEE), at: status)
        var buffers = [Buffer(address: header, length: 16, writable: false)]
        if dataLength > 0 { buffers.append(Buffer(address: data, length: dataLength, writable: dataWritable)) }
        buffers.append(Buffer(address: status, length: 1, writable: true))
        try post(q, buffers, indirect: indirect)
        return status
    }
}
