// Shared by the virtio harnesses: a 64 KiB guest whose RAM is the fuzz input, and one
// split virtqueue placed by the input's first 12 bytes.
import GuestMemory
import Devices

enum VirtioFuzz {
    static let ramSize = 64 << 10
    static let memory = try! GuestMemory(size: ramSize)

    /// Header: [0] queue, [1] log2 size, [2..3] descriptor table / 16, [4..5] avail ring / 2,
    /// [6..7] used ring / 4, [8..9] last avail index, [10] flags (bit 0 EVENT_IDX, bit 1
    /// INDIRECT_DESC), [11..18] the features the driver negotiated. The rest is guest RAM.
    static let headerSize = 19

    /// Runs `device` on the queue the input describes; false when the input is too short
    /// or the queue does not validate (as a transport would refuse to enable it).
    @discardableResult
    static func run(_ device: any VirtioDeviceModel, _ data: UnsafePointer<UInt8>, _ size: Int,
                    repeat times: Int = 2, between: () -> Void = {}) -> Bool {
        guard size >= headerSize else { return false }
        let h = UnsafeBufferPointer(start: data, count: headerSize)
        let ram = UnsafeRawBufferPointer(start: data + headerSize, count: min(size - headerSize, ramSize))
        try! memory.fill(0, at: 0, length: ramSize)
        try! memory.write(from: ram, at: 0)
        let sizes = device.queueMaxSizes
        let qi = Int(h[0]) % sizes.count
        var q = SplitVirtqueue(index: qi, maxSize: sizes[qi])
        var log2 = 0
        while (1 << (log2 + 1)) <= Int(sizes[qi]) { log2 += 1 }
        q.size = UInt16(1 << (Int(h[1]) % (log2 + 1)))
        let mask = UInt64(ramSize - 1)
        q.descriptorTable = (UInt64(h[2]) << 8 | UInt64(h[3])) &* 16 & mask
        q.availRing = (UInt64(h[4]) << 8 | UInt64(h[5])) &* 2 & mask
        q.usedRing = (UInt64(h[6]) << 8 | UInt64(h[7])) &* 4 & mask
        q.lastAvailIndex = UInt16(h[8]) << 8 | UInt16(h[9])
        q.usedIndex = q.lastAvailIndex
        q.eventIndex = h[10] & 1 != 0
        q.indirect = h[10] & 2 != 0
        guard (try? q.validate(memory: memory)) != nil else { return false }
        q.isReady = true
        var features: UInt64 = 0
        for i in 0..<8 { features |= UInt64(h[11 + i]) << (8 * UInt64(i)) }
        device.reset()
        device.activate(features: features & (device.deviceFeatures | 1 << 32 | 1 << 28 | 1 << 29))
        for _ in 0..<times {
            do { try device.process(queueIndex: qi, queue: &q, memory: memory) } catch { break }
            between()
        }
        return true
    }
}
