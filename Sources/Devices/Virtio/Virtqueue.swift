import GuestMemory
import Synchronization

/// One guest buffer of a descriptor chain: checked to lie wholly inside guest RAM.
public struct VirtqueueBuffer: Sendable, Equatable {
    public var address: UInt64
    public var length: UInt32
    /// Device-writable (VIRTQ_DESC_F_WRITE): the device fills it; otherwise the device reads it.
    public var isWritable: Bool
}

/// A descriptor chain taken from the available ring: its head (returned in the used ring)
/// and its buffers in order, device-readable ones first.
public struct DescriptorChain: Sendable {
    public var head: UInt16 = 0
    public var buffers: [VirtqueueBuffer] = []
    public var readableLength: Int = 0
    public var writableLength: Int = 0

    public init() {}

    /// Calls `body` with host memory for `length` bytes starting `offset` bytes into the
    /// readable (or writable) part of the chain, one piece per buffer touched.
    /// Returns the number of bytes covered (less than `length` when the part is shorter).
    @discardableResult
    public func withSegments(writable: Bool, offset: Int, length: Int, memory: GuestMemory,
                             _ body: (UnsafeMutableRawBufferPointer) throws -> Void) throws -> Int {
        var skip = offset
        var remaining = length
        var done = 0
        for buffer in buffers where buffer.isWritable == writable {
            if remaining == 0 { break }
            let len = Int(buffer.length)
            if skip >= len { skip -= len; continue }
            let take = min(len - skip, remaining)
            let address = buffer.address &+ UInt64(skip)
            guard let host = memory.hostPointer(address, length: take) else {
                throw VirtioError.bufferOutsideRAM(address: address, length: UInt32(clamping: take))
            }
            // SAFETY: hostPointer proved `take` bytes at `address` are inside guest RAM.
            try body(UnsafeMutableRawBufferPointer(start: host, count: take))
            done += take
            remaining -= take
            skip = 0
        }
        return done
    }

    /// Copies up to `count` readable bytes starting at `offset` into an array.
    public func readBytes(offset: Int, count: Int, memory: GuestMemory) throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        try withSegments(writable: false, offset: offset, length: count, memory: memory) { seg in
            out.append(contentsOf: UnsafeRawBufferPointer(seg))
        }
        return out
    }

    /// Copies `bytes` into the writable part starting at `offset`; returns bytes written.
    @discardableResult
    public func writeBytes(_ bytes: [UInt8], offset: Int, memory: GuestMemory) throws -> Int {
        var pos = 0
        return try bytes.withUnsafeBytes { src in
            try withSegments(writable: true, offset: offset, length: bytes.count, memory: memory) { seg in
                // SAFETY: `seg` is checked guest memory; `src` has bytes.count bytes and
                // pos + seg.count <= bytes.count by construction of withSegments.
                seg.baseAddress!.copyMemory(from: src.baseAddress! + pos, byteCount: seg.count)
                pos += seg.count
            }
        }
    }
}

/// A split virtqueue (virtio 1.x §2.6) seen from the device: the driver's descriptor table,
/// available ring and used ring in guest memory, plus the device's indices.
///
/// Guest input is hostile: every ring and buffer address is checked through `GuestMemory`,
/// every chain walk is bounded (queue size for the direct table, the table length for an
/// indirect one, no nesting), and any violation throws `VirtioError` (the transport then
/// sets DEVICE_NEEDS_RESET). Plain value state, so it can be snapshotted.
public struct SplitVirtqueue: Sendable, Codable, Equatable {
    public static let descriptorNext: UInt16 = 1
    public static let descriptorWrite: UInt16 = 2
    public static let descriptorIndirect: UInt16 = 4
    public static let availNoInterrupt: UInt16 = 1
    public static let usedNoNotify: UInt16 = 1
    /// Largest indirect table we accept (entries).
    public static let maxIndirectEntries = 4096

    public let index: Int
    public let maxSize: UInt16
    public var size: UInt16
    public var isReady = false
    /// Guest-physical addresses of the descriptor table, available ring ("driver area")
    /// and used ring ("device area").
    public var descriptorTable: UInt64 = 0
    public var availRing: UInt64 = 0
    public var usedRing: UInt64 = 0
    public var msixVector: UInt16 = 0xFFFF
    /// Next available-ring slot the device will read.
    public var lastAvailIndex: UInt16 = 0
    /// Next used-ring index the device will publish.
    public var usedIndex: UInt16 = 0
    /// Used index at the last interrupt decision (EVENT_IDX).
    public var signalledUsed: UInt16 = 0
    public var eventIndex = false
    public var indirect = false
    /// The pass in progress (`beginPass`/`endPass`): nil outside one, so it is never part
    /// of a snapshot (an optional nil is not encoded, and decodes as absent).
    private var pass: Pass?

    /// How many chains `pop` may still take in this pass, and whether it refused one.
    struct Pass: Sendable, Codable, Equatable {
        var budget: Int
        var stoppedAtBudget = false
    }

    public init(index: Int, maxSize: UInt16) {
        self.index = index
        self.maxSize = maxSize
        self.size = maxSize
    }

    /// Back to the state after device reset.
    public mutating func reset() {
        self = SplitVirtqueue(index: index, maxSize: maxSize)
    }

    /// Checks the queue's size and that its three areas lie in guest RAM (done on enable).
    public func validate(memory: GuestMemory) throws {
        let n = Int(size)
        guard n > 0, n <= Int(maxSize), n & (n - 1) == 0 else {
            throw VirtioError.badQueueSize(queue: index, size: n)
        }
        guard descriptorTable % 16 == 0, memory.isRAM(descriptorTable, length: 16 * n) else {
            throw VirtioError.ringOutsideRAM(queue: index, what: "descriptor table", address: descriptorTable)
        }
        guard availRing % 2 == 0, memory.isRAM(availRing, length: 6 + 2 * n) else {
            throw VirtioError.ringOutsideRAM(queue: index, what: "available ring", address: availRing)
        }
        guard usedRing % 4 == 0, memory.isRAM(usedRing, length: 6 + 8 * n) else {
            throw VirtioError.ringOutsideRAM(queue: index, what: "used ring", address: usedRing)
        }
    }

    @inline(__always)
    func read16(_ memory: GuestMemory, _ address: UInt64, _ what: String) throws -> UInt16 {
        do { return try memory.read(UInt16.self, at: address) } catch {
            throw VirtioError.ringOutsideRAM(queue: index, what: what, address: address)
        }
    }

    /// Number of chains the driver has made available that the device has not taken.
    public func pendingCount(memory: GuestMemory) throws -> Int {
        let availIdx = try read16(memory, availRing &+ 2, "available ring")
        let pending = Int(availIdx &- lastAvailIndex)
        guard pending <= Int(size) else {
            throw VirtioError.availIndexJump(queue: index, pending: pending, size: Int(size))
        }
        return pending
    }

    /// Takes the next available chain into `chain` (reusing its storage); false when the
    /// ring is empty. With EVENT_IDX, an empty ring re-arms the driver's notifications by
    /// publishing avail_event.
    public mutating func pop(into chain: inout DescriptorChain, memory: GuestMemory) throws -> Bool {
        var pending = try pendingCount(memory: memory)
        if let p = pass, p.budget <= 0 {
            // The pass has taken a queue's worth: stop here (no avail_event published, the
            // transport schedules another pass), so a guest that keeps refilling cannot hold
            // the notifying thread.
            if pending > 0 { pass?.stoppedAtBudget = true }
            return false
        }
        if pending == 0 {
            guard eventIndex else { return false }
            // Ask to be notified when the driver adds the next buffer, then look again in
            // case it did so before it could see our request.
            try publishAvailEvent(memory: memory)
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            pending = try pendingCount(memory: memory)
            if pending == 0 { return false }
        }
        // The ring entry must be read after the index that covers it.
        atomicMemoryFence(ordering: .acquiring)
        let slot = availRing &+ 4 &+ 2 &* UInt64(lastAvailIndex % size)
        let head = try read16(memory, slot, "available ring")
        lastAvailIndex &+= 1
        pass?.budget -= 1
        try walk(head: head, into: &chain, memory: memory)
        return true
    }

    /// Starts a pass in which `pop` takes at most `size` chains (one ring's worth); outside
    /// a pass it is unbounded.
    public mutating func beginPass() {
        pass = Pass(budget: Int(size))
    }

    /// Ends the pass; true when it stopped at its budget with chains left for another pass.
    public mutating func endPass() -> Bool {
        defer { pass = nil }
        return pass?.stoppedAtBudget ?? false
    }

    /// Walks the chain starting at `head`, bounded and checked (see the type's comment).
    public func walk(head: UInt16, into chain: inout DescriptorChain, memory: GuestMemory) throws {
        chain.head = head
        chain.buffers.removeAll(keepingCapacity: true)
        chain.readableLength = 0
        chain.writableLength = 0

        var table = descriptorTable
        var tableSize = Int(size)
        var next = head
        var visited = 0
        var inIndirect = false
        var sawWritable = false
        while true {
            guard Int(next) < tableSize else {
                throw VirtioError.descriptorIndexOutOfRange(index: next, tableSize: tableSize)
            }
            visited += 1
            guard visited <= tableSize else { throw VirtioError.chainTooLong(limit: tableSize) }
            let at = table &+ 16 &* UInt64(next)
            guard let p = memory.hostPointer(at, length: 16) else {
                throw VirtioError.ringOutsideRAM(queue: index, what: "descriptor \(next)", address: at)
            }
            // SAFETY: hostPointer proved the 16 descriptor bytes lie in guest RAM.
            let address = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
            let length = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let flags = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
            let following = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 14, as: UInt16.self))

            if flags & Self.descriptorIndirect != 0 {
                guard indirect else { throw VirtioError.indirectNotNegotiated }
                guard !inIndirect else { throw VirtioError.nestedIndirect }
                guard flags & Self.descriptorNext == 0 else { throw VirtioError.indirectWithNext }
                guard length > 0, length % 16 == 0, Int(length / 16) <= Self.maxIndirectEntries else {
                    throw VirtioError.badIndirectTable(length: length)
                }
                guard address % 16 == 0, memory.isRAM(address, length: Int(length)) else {
                    throw VirtioError.bufferOutsideRAM(address: address, length: length)
                }
                table = address
                tableSize = Int(length / 16)
                next = 0
                visited = 0
                inIndirect = true
                continue
            }
            guard length > 0 else { throw VirtioError.zeroLengthDescriptor(index: next) }
            guard memory.isRAM(address, length: Int(length)) else {
                throw VirtioError.bufferOutsideRAM(address: address, length: length)
            }
            let writable = flags & Self.descriptorWrite != 0
            if writable {
                sawWritable = true
                chain.writableLength += Int(length)
            } else {
                guard !sawWritable else { throw VirtioError.readableAfterWritable(index: next) }
                chain.readableLength += Int(length)
            }
            chain.buffers.append(VirtqueueBuffer(address: address, length: length, isWritable: writable))
            guard flags & Self.descriptorNext != 0 else { return }
            next = following
        }
    }

    /// Returns a chain to the driver: `written` bytes were written into its writable part.
    public mutating func push(head: UInt16, written: UInt32, memory: GuestMemory) throws {
        let slot = usedRing &+ 4 &+ 8 &* UInt64(usedIndex % size)
        do {
            try memory.write(UInt32(head), at: slot)
            try memory.write(written, at: slot &+ 4)
            // The element must be visible before the index that publishes it.
            atomicMemoryFence(ordering: .releasing)
            usedIndex &+= 1
            try memory.write(usedIndex, at: usedRing &+ 2)
        } catch {
            throw VirtioError.ringOutsideRAM(queue: index, what: "used ring", address: slot)
        }
    }

    /// Writes avail_event (EVENT_IDX): "notify me once you make index lastAvailIndex available".
    public func publishAvailEvent(memory: GuestMemory) throws {
        let at = usedRing &+ 4 &+ 8 &* UInt64(size)
        do { try memory.write(lastAvailIndex, at: at) } catch {
            throw VirtioError.ringOutsideRAM(queue: index, what: "avail_event", address: at)
        }
    }

    /// Whether the driver wants an interrupt for the buffers used since the last decision
    /// (honours VIRTQ_AVAIL_F_NO_INTERRUPT, or used_event with EVENT_IDX). Updates the
    /// bookkeeping, so call it once per batch of pushes.
    public mutating func shouldInterrupt(memory: GuestMemory) throws -> Bool {
        let old = signalledUsed
        let new = usedIndex
        signalledUsed = new
        guard old != new else { return false }
        // Our used-index store must be visible before we read the driver's suppression state.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            let usedEvent = try read16(memory, availRing &+ 4 &+ 2 &* UInt64(size), "used_event")
            return Self.needsEvent(event: usedEvent, new: new, old: old)
        }
        let flags = try read16(memory, availRing, "available ring flags")
        return flags & Self.availNoInterrupt == 0
    }

    /// vring_need_event: true when `event` lies in [old, new) modulo 2^16.
    @inline(__always)
    public static func needsEvent(event: UInt16, new: UInt16, old: UInt16) -> Bool {
        (new &- event &- 1) < (new &- old)
    }
}
