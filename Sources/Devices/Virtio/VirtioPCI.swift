import GuestMemory
import Hypervisor
import Logging
import Synchronization

/// Where a queue's notify register sits in guest-physical space, for an ioeventfd.
/// The driver writes the queue index (16 bits) to `address`.
public struct VirtioNotifyRegion: Sendable, Equatable {
    public var queue: Int
    public var address: UInt64
    public var length: Int

    public init(queue: Int, address: UInt64, length: Int) {
        self.queue = queue; self.address = address; self.length = length
    }
}

/// A virtio 1.x ("modern") PCI function (virtio 1.x §4.1) around a device model.
///
/// Layout (all in BAR 0, a 16 KiB 32-bit memory BAR; MSI-X in BAR 1, 4 KiB):
///
///     BAR0 0x0000  common configuration (0x40 bytes)
///     BAR0 0x1000  ISR status (read to clear; lowers INTx)
///     BAR0 0x2000  device-specific configuration
///     BAR0 0x3000  queue notify: queue q at 0x3000 + 4*q (notify_off_multiplier 4)
///     BAR1 0x0000  MSI-X table (queues + 1 vectors), 0x800 pending-bit array
///
/// Config space capabilities: MSI-X at 0x40, then the virtio vendor capabilities (common,
/// notify, ISR, device, PCI-config access). Interrupts are MSI-X when the driver enables
/// it, INTx (level, ISR read-to-clear) otherwise.
///
/// Thread safety: one lock per function; config and BAR accesses (vCPU threads) and
/// `notify(queue:)` (the VMM's event thread for ioeventfd) serialise on it.
public final class VirtioPCIDevice: PCIDevice, @unchecked Sendable {
    public static let vendorID: UInt16 = 0x1AF4
    public static let commonOffset: UInt64 = 0x0000
    public static let commonLength: UInt64 = 0x40
    public static let isrOffset: UInt64 = 0x1000
    public static let deviceConfigOffset: UInt64 = 0x2000
    public static let notifyOffset: UInt64 = 0x3000
    public static let notifyMultiplier: UInt32 = 4
    public static let bar0Size: UInt64 = 0x4000
    public static let msixTableOffset: UInt64 = 0
    public static let msixPBAOffset: UInt64 = 0x800
    public static let bar1Size: UInt64 = 0x1000
    public static let noVector: UInt16 = 0xFFFF
    /// A logger that drops everything (unit tests feeding the device garbage on purpose).
    public static let discardingLogger = Logger(label: "virtio", factory: { _ in SwiftLogNoOpLogHandler() })

    /// The MSI-X capability is the first one in config space.
    static let capMSIX = PCIConfig.firstCapability

    public let model: any VirtioDeviceModel
    public let memory: GuestMemory
    public let interrupts: any InterruptController
    public let intx: IRQLine?
    public let pciName: String
    public var logger: Logger

    /// Called (with the device lock held: do not call back into the device) when the
    /// driver sets DRIVER_OK, with the notify addresses to attach ioeventfds to, and with
    /// an empty list when the device is reset. Optional: MMIO notify writes always work.
    public var onNotifyRegionsChanged: (@Sendable ([VirtioNotifyRegion]) -> Void)?

    /// A pass over a queue takes at most the queue's size in chains. When one stops with
    /// chains left, this is called (without the device lock) with the queue: true means the
    /// hook scheduled the next pass itself (the KVM event loop signals the queue's ioeventfd,
    /// so the next pass comes after the other devices' notifies and the quiesce gate);
    /// false or no hook: the notifying thread runs the next passes, one lock hold each.
    public var onMorePending: (@Sendable (Int) -> Bool)?

    private let lock = Mutex<Void>(())
    /// Type-0 config space: header, BARs and the capability list.
    public private(set) var header: PCIConfigHeader

    // Transport state (plain values).
    fileprivate(set) var deviceFeatureSelect: UInt32 = 0
    fileprivate(set) var driverFeatureSelect: UInt32 = 0
    public private(set) var driverFeatures: UInt64 = 0
    public private(set) var status: UInt8 = 0
    public private(set) var configGeneration: UInt8 = 0
    fileprivate(set) var queueSelect: UInt16 = 0
    /// Queues whose last pass stopped at its budget with chains left.
    private var overBudget: [Int] = []
    fileprivate(set) var configVector: UInt16 = noVector
    public private(set) var isr: UInt8 = 0
    public private(set) var queues: [SplitVirtqueue]
    public private(set) var msix: PCIMSIX
    /// The last reason the device entered DEVICE_NEEDS_RESET (for logs and tests).
    public private(set) var lastError: VirtioError?
    fileprivate(set) var intxAsserted = false

    public let offeredFeatures: UInt64

    public init(model: any VirtioDeviceModel, memory: GuestMemory, interrupts: any InterruptController,
                intx: IRQLine? = nil, name: String? = nil,
                logger: Logger = Logger(label: "virtio")) {
        self.model = model
        self.memory = memory
        self.interrupts = interrupts
        self.intx = intx
        self.logger = logger
        let typeName: String
        switch model.deviceType {
        case .block: typeName = "virtio-blk"
        case .console: typeName = "virtio-console"
        case .entropy: typeName = "virtio-rng"
        case .network: typeName = "virtio-net"
        case .scsi: typeName = "virtio-scsi"
        case .socket: typeName = "virtio-vsock"
        }
        self.pciName = name ?? typeName
        self.queues = model.queueMaxSizes.enumerated().map { SplitVirtqueue(index: $0.offset, maxSize: $0.element) }
        self.msix = PCIMSIX(vectors: model.queueMaxSizes.count + 1)
        self.offeredFeatures = model.deviceFeatures | VirtioFeature.version1
            | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
        self.header = Self.makeHeader(model: model, queues: model.queueMaxSizes.count,
                                      interruptLine: intx.map { UInt8(truncatingIfNeeded: $0.gsi) })
        if let host = model as? VirtioBackendAttachable { host.attach(self) }
    }

    public var bars: [PCIBar] {
        [PCIBar(index: 0, kind: .memory32, size: Self.bar0Size),
         PCIBar(index: 1, kind: .memory32, size: Self.bar1Size)]
    }

    public var numQueues: Int { queues.count }

    // MARK: config space

    private static func makeHeader(model: any VirtioDeviceModel, queues: Int, interruptLine: UInt8?) -> PCIConfigHeader {
        let (cls, sub, progIF) = model.pciClass
        var h = PCIConfigHeader(vendorID: vendorID, deviceID: 0x1040 + model.deviceType.rawValue,
                                classCode: cls, subclass: sub, progIF: progIF,
                                revision: 1,                      // modern only
                                subsystemVendorID: vendorID, subsystemID: 0x1100, interruptPin: 1)
        h.addBar(PCIBar(index: 0, kind: .memory32, size: bar0Size))
        h.addBar(PCIBar(index: 1, kind: .memory32, size: bar1Size))
        if let interruptLine { h.setRaw(PCIConfig.interruptLine, size: 1, value: UInt32(interruptLine)) }

        func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
        // MSI-X: message control (table size - 1; enable and function mask writable), table, PBA.
        let msix = h.addCapability(id: PCIConfig.capabilityMSIX,
                                   body: [UInt8(queues & 0xFF), UInt8(queues >> 8)]
                                       + le32(UInt32(msixTableOffset) | 1) + le32(UInt32(msixPBAOffset) | 1),
                                   writableMask: [0, 0xC0])
        assert(msix == capMSIX)
        func vendorCap(type: UInt8, offset: UInt64, length: Int, extra: [UInt8] = [], mask: [UInt8]? = nil) -> Int? {
            let body: [UInt8] = [UInt8(2 + 14 + extra.count), type, 0 /* BAR 0 */, 0, 0, 0]
                + le32(UInt32(offset)) + le32(UInt32(length)) + extra
            return h.addCapability(id: PCIConfig.capabilityVendorSpecific, body: body, writableMask: mask)
        }
        _ = vendorCap(type: 1, offset: commonOffset, length: Int(commonLength))
        _ = vendorCap(type: 2, offset: notifyOffset, length: Int(notifyMultiplier) * queues, extra: le32(notifyMultiplier))
        _ = vendorCap(type: 3, offset: isrOffset, length: 4)
        if model.configSize > 0 { _ = vendorCap(type: 4, offset: deviceConfigOffset, length: model.configSize) }
        // VIRTIO_PCI_CAP_PCI_CFG: bar, offset and length writable; data handled by us.
        let cfg = vendorCap(type: 5, offset: 0, length: 0, extra: [0, 0, 0, 0],
                            mask: [0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        assert(cfg != nil)
        return h
    }

    private var pciCfgCap: Int { header.lastCapability }

    /// The guest-physical base of a BAR as programmed, or nil while memory decode is off.
    public func barAddress(_ index: Int) -> UInt64? {
        lock.withLock { _ in barAddressLocked(index) }
    }

    private func barAddressLocked(_ index: Int) -> UInt64? {
        guard header.memoryDecodeEnabled, let base = header.barAddress(index), base != 0 else { return nil }
        return base
    }

    public func configRead(offset: Int, size: Int) -> UInt32 {
        lock.withLock { _ in configReadLocked(offset: offset, size: size) }
    }

    private func configReadLocked(offset: Int, size: Int) -> UInt32 {
        guard offset >= 0, size > 0, size <= 4, offset + size <= PCIConfig.size else { return 0xFFFF_FFFF }
        let data = pciCfgCap + 16
        if offset >= data, offset < data + 4 {
            return pciCfgWindowRead(size: size)
        }
        var v = header.read(offset: offset, size: size)
        // Message control lives in the MSI-X state.
        for i in 0..<size where offset + i == Self.capMSIX + 2 || offset + i == Self.capMSIX + 3 {
            let byte = UInt32(truncatingIfNeeded: msix.messageControl >> (offset + i == Self.capMSIX + 2 ? 0 : 8)) & 0xFF
            v = (v & ~(0xFF << (8 * UInt32(i)))) | byte << (8 * UInt32(i))
        }
        return v
    }

    public func configWrite(offset: Int, size: Int, value: UInt32) {
        lock.withLock { _ in
            guard offset >= 0, size > 0, size <= 4, offset + size <= PCIConfig.size else { return }
            let data = pciCfgCap + 16
            if offset >= data, offset < data + 4 {
                pciCfgWindowWrite(size: size, value: value)
                return
            }
            header.write(offset: offset, size: size, value: value)
            if offset <= Self.capMSIX + 3, offset + size > Self.capMSIX + 3 {
                let control = UInt16(header.raw(Self.capMSIX + 3, size: 1)) << 8
                msix.setMessageControl(control, controller: interrupts)
                if msix.isEnabled { lowerINTx() }
            }
            if header.interruptDisabled { lowerINTx() } else if isr != 0, !msix.isEnabled { raiseINTx() }
        }
    }

    /// VIRTIO_PCI_CAP_PCI_CFG: an access window onto the BARs through config space.
    private func pciCfgWindowRead(size: Int) -> UInt32 {
        let bar = Int(header.raw(pciCfgCap + 4, size: 1))
        let off = UInt64(header.raw(pciCfgCap + 8, size: 4))
        let len = Int(header.raw(pciCfgCap + 12, size: 4))
        guard [1, 2, 4].contains(len) else { return 0 }
        return UInt32(truncatingIfNeeded: barReadLocked(index: bar, offset: off, size: min(len, size)))
    }

    private func pciCfgWindowWrite(size: Int, value: UInt32) {
        let bar = Int(header.raw(pciCfgCap + 4, size: 1))
        let off = UInt64(header.raw(pciCfgCap + 8, size: 4))
        let len = Int(header.raw(pciCfgCap + 12, size: 4))
        guard [1, 2, 4].contains(len) else { return }
        barWriteLocked(index: bar, offset: off, size: min(len, size), value: UInt64(value))
    }

    // MARK: BARs

    public func barRead(index: Int, offset: UInt64, size: Int) -> UInt64 {
        lock.withLock { _ in barReadLocked(index: index, offset: offset, size: size) }
    }

    public func barWrite(index: Int, offset: UInt64, size: Int, value: UInt64) {
        let more = lock.withLock { _ in
            barWriteLocked(index: index, offset: offset, size: size, value: value)
            return !overBudget.isEmpty
        }
        if more { runDeferredPasses() }
    }

    private func barReadLocked(index: Int, offset: UInt64, size: Int) -> UInt64 {
        guard size > 0, size <= 8 else { return 0 }
        switch index {
        case 0:
            if offset < Self.commonLength { return commonRead(offset: Int(offset), size: size) }
            if offset >= Self.isrOffset, offset < Self.isrOffset + 4 {
                let value = isr
                isr = 0
                lowerINTx()
                return offset == Self.isrOffset ? UInt64(value) : 0
            }
            if offset >= Self.deviceConfigOffset, offset < Self.deviceConfigOffset + UInt64(model.configSize) {
                let o = Int(offset - Self.deviceConfigOffset)
                if size == 8 {
                    let lo = UInt64(model.readConfig(offset: o, size: 4))
                    let hi = UInt64(model.readConfig(offset: o + 4, size: 4))
                    return lo | hi << 32
                }
                return UInt64(model.readConfig(offset: o, size: size))
            }
            return 0
        case 1:
            if offset < Self.msixPBAOffset { return msix.readTable(offset: offset - Self.msixTableOffset, size: size) }
            return msix.readPBA(offset: offset - Self.msixPBAOffset, size: size)
        default:
            return 0
        }
    }

    private func barWriteLocked(index: Int, offset: UInt64, size: Int, value: UInt64) {
        guard size > 0, size <= 8 else { return }
        switch index {
        case 0:
            if offset < Self.commonLength { commonWrite(offset: Int(offset), size: size, value: value); return }
            if offset >= Self.deviceConfigOffset, offset < Self.deviceConfigOffset + UInt64(model.configSize) {
                model.writeConfig(offset: Int(offset - Self.deviceConfigOffset), size: min(size, 4),
                                  value: UInt32(truncatingIfNeeded: value))
                return
            }
            if offset >= Self.notifyOffset,
               offset < Self.notifyOffset + UInt64(Self.notifyMultiplier) * UInt64(queues.count) {
                processLocked(queue: Int((offset - Self.notifyOffset) / UInt64(Self.notifyMultiplier)))
            }
        case 1:
            if offset < Self.msixPBAOffset {
                msix.writeTable(offset: offset - Self.msixTableOffset, size: size, value: value, controller: interrupts)
            }
        default:
            return
        }
    }

    // MARK: common configuration (virtio 1.x §4.1.4.3)

    /// (start, width) of each field of struct virtio_pci_common_cfg (+ 1.2's two u16s).
    private static let commonFields: [(Int, Int)] = [
        (0x00, 4), (0x04, 4), (0x08, 4), (0x0C, 4), (0x10, 2), (0x12, 2), (0x14, 1), (0x15, 1),
        (0x16, 2), (0x18, 2), (0x1A, 2), (0x1C, 2), (0x1E, 2), (0x20, 8), (0x28, 8), (0x30, 8),
        (0x38, 2), (0x3A, 2),
    ]

    private var selectedQueue: Int? {
        Int(queueSelect) < queues.count ? Int(queueSelect) : nil
    }

    private func commonField(_ start: Int) -> UInt64 {
        let q = selectedQueue
        switch start {
        case 0x00: return UInt64(deviceFeatureSelect)
        case 0x04:
            switch deviceFeatureSelect {
            case 0: return offeredFeatures & 0xFFFF_FFFF
            case 1: return offeredFeatures >> 32
            default: return 0
            }
        case 0x08: return UInt64(driverFeatureSelect)
        case 0x0C:
            switch driverFeatureSelect {
            case 0: return driverFeatures & 0xFFFF_FFFF
            case 1: return driverFeatures >> 32
            default: return 0
            }
        case 0x10: return UInt64(configVector)
        case 0x12: return UInt64(queues.count)
        case 0x14: return UInt64(status)
        case 0x15: return UInt64(configGeneration)
        case 0x16: return UInt64(queueSelect)
        case 0x18: return q.map { UInt64(queues[$0].size) } ?? 0
        case 0x1A: return q.map { UInt64(queues[$0].msixVector) } ?? UInt64(Self.noVector)
        case 0x1C: return q.map { queues[$0].isReady ? 1 : 0 } ?? 0
        case 0x1E: return q.map { UInt64($0) } ?? 0
        case 0x20: return q.map { queues[$0].descriptorTable } ?? 0
        case 0x28: return q.map { queues[$0].availRing } ?? 0
        case 0x30: return q.map { queues[$0].usedRing } ?? 0
        case 0x38: return q.map { UInt64($0) } ?? 0
        default: return 0
        }
    }

    private func commonRead(offset: Int, size: Int) -> UInt64 {
        guard let (start, width) = Self.commonFields.first(where: { offset >= $0.0 && offset < $0.0 + $0.1 }),
              offset + size <= start + width else { return 0 }
        let shift = UInt64(8 * (offset - start))
        let v = commonField(start) >> shift
        return size >= 8 ? v : v & ((1 << UInt64(8 * size)) - 1)
    }

    private func commonWrite(offset: Int, size: Int, value: UInt64) {
        guard let (start, width) = Self.commonFields.first(where: { offset >= $0.0 && offset < $0.0 + $0.1 }),
              offset + size <= start + width else { return }
        let shift = UInt64(8 * (offset - start))
        let mask: UInt64 = size >= 8 ? .max : ((1 << UInt64(8 * size)) - 1) << shift
        let merged = (commonField(start) & ~mask) | ((value << shift) & mask)
        let q = selectedQueue
        let queueConfigurable = q.map { !queues[$0].isReady } ?? false && status & VirtioStatus.driverOK == 0
        switch start {
        case 0x00: deviceFeatureSelect = UInt32(truncatingIfNeeded: merged)
        case 0x08: driverFeatureSelect = UInt32(truncatingIfNeeded: merged)
        case 0x0C:
            guard status & VirtioStatus.featuresOK == 0 else { return }
            let v = UInt64(UInt32(truncatingIfNeeded: merged))
            switch driverFeatureSelect {
            case 0: driverFeatures = (driverFeatures & 0xFFFF_FFFF_0000_0000) | v
            case 1: driverFeatures = (driverFeatures & 0xFFFF_FFFF) | v << 32
            default: break
            }
        case 0x10: configVector = validVector(merged)
        case 0x14: writeStatus(UInt8(truncatingIfNeeded: merged))
        case 0x16: queueSelect = UInt16(truncatingIfNeeded: merged)
        case 0x18: if queueConfigurable, let q { queues[q].size = UInt16(truncatingIfNeeded: merged) }
        case 0x1A: if let q { queues[q].msixVector = validVector(merged) }
        case 0x1C: if queueConfigurable, let q, merged & 1 == 1 { enableQueue(q) }
        case 0x20: if queueConfigurable, let q { queues[q].descriptorTable = merged }
        case 0x28: if queueConfigurable, let q { queues[q].availRing = merged }
        case 0x30: if queueConfigurable, let q { queues[q].usedRing = merged }
        default: break
        }
    }

    private func validVector(_ v: UInt64) -> UInt16 {
        v < UInt64(msix.vectorCount) ? UInt16(v) : Self.noVector
    }

    private func enableQueue(_ q: Int) {
        do {
            try queues[q].validate(memory: memory)
            queues[q].isReady = true
        } catch let error as VirtioError {
            enterNeedsReset(error)
        } catch {
            enterNeedsReset(.malformedRequest("\(error)"))
        }
    }

    private func writeStatus(_ value: UInt8) {
        if value == 0 { resetLocked(); return }
        var v = value
        if v & VirtioStatus.featuresOK != 0, status & VirtioStatus.featuresOK == 0 {
            let acceptable = driverFeatures & ~offeredFeatures == 0
                && driverFeatures & VirtioFeature.version1 != 0
            if acceptable {
                for i in queues.indices {
                    queues[i].eventIndex = driverFeatures & VirtioFeature.eventIndex != 0
                    queues[i].indirect = driverFeatures & VirtioFeature.indirectDescriptors != 0
                }
            } else {
                logger.warning("\(pciName): driver features 0x\(String(driverFeatures, radix: 16)) not acceptable (offered 0x\(String(offeredFeatures, radix: 16)))")
                v &= ~VirtioStatus.featuresOK
            }
        }
        let becameOK = v & VirtioStatus.driverOK != 0 && status & VirtioStatus.driverOK == 0
        status = v | (status & VirtioStatus.needsReset)
        if becameOK {
            model.activate(features: driverFeatures)
            if let hook = onNotifyRegionsChanged { hook(notifyRegionsLocked()) }
            // Buffers the driver made available (and notified) before DRIVER_OK.
            for q in queues.indices { processLocked(queue: q) }
        }
    }

    /// The notify registers' guest-physical addresses (empty until BAR 0 is programmed).
    public func notifyRegions() -> [VirtioNotifyRegion] {
        lock.withLock { _ in notifyRegionsLocked() }
    }

    private func notifyRegionsLocked() -> [VirtioNotifyRegion] {
        guard let base = barAddressLocked(0) else { return [] }
        return queues.indices.map {
            VirtioNotifyRegion(queue: $0, address: base + Self.notifyOffset + UInt64(Self.notifyMultiplier) * UInt64($0), length: 2)
        }
    }

    private func resetLocked() {
        let wasActive = status & VirtioStatus.driverOK != 0
        status = 0
        driverFeatures = 0
        deviceFeatureSelect = 0
        driverFeatureSelect = 0
        queueSelect = 0
        configVector = Self.noVector
        isr = 0
        lastError = nil
        for i in queues.indices { queues[i].reset() }
        overBudget.removeAll()
        lowerINTx()
        model.reset()
        if wasActive, let hook = onNotifyRegionsChanged { hook([]) }
    }

    // MARK: queues and interrupts

    /// Processes `queue` as if the driver had written its notify register: the entry point
    /// for an ioeventfd on the VMM's event thread. Safe from any thread.
    public func notify(queue: Int) {
        let more = lock.withLock { _ in
            processLocked(queue: queue)
            return !overBudget.isEmpty
        }
        if more { runDeferredPasses() }
    }

    /// Runs `body` under the device lock, then processes `queue` (backends delivering
    /// input, such as console bytes, from their own thread).
    public func withLock<T>(processing queue: Int?, _ body: () -> T) -> T {
        let (result, more) = lock.withLock { _ in
            let result = body()
            if let queue { processLocked(queue: queue) }
            return (result, !overBudget.isEmpty)
        }
        if more { runDeferredPasses() }
        return result
    }

    /// The queues whose pass stopped at its budget: each goes to `onMorePending`, or gets
    /// its next pass here (the lock is released between passes).
    private func runDeferredPasses() {
        while true {
            let next: Int? = lock.withLock { _ in overBudget.isEmpty ? nil : overBudget.removeFirst() }
            guard let q = next else { return }
            if let hook = onMorePending, hook(q) { continue }
            lock.withLock { _ in processLocked(queue: q) }
        }
    }

    private func processLocked(queue q: Int) {
        guard processOne(queue: q), let next = model.followUpQueue(after: q), next != q else { return }
        _ = processOne(queue: next)
    }

    /// Processes one queue; false when it was not processed or the device failed.
    private func processOne(queue q: Int) -> Bool {
        guard q >= 0, q < queues.count, queues[q].isReady,
              status & VirtioStatus.driverOK != 0, status & VirtioStatus.needsReset == 0 else { return false }
        queues[q].beginPass()
        do {
            try model.process(queueIndex: q, queue: &queues[q], memory: memory)
            if queues[q].endPass(), !overBudget.contains(q) { overBudget.append(q) }
            if try queues[q].shouldInterrupt(memory: memory) { signalQueue(q) }
            return true
        } catch let error as VirtioError {
            _ = queues[q].endPass()
            enterNeedsReset(error)
        } catch {
            _ = queues[q].endPass()
            enterNeedsReset(.malformedRequest("\(error)"))
        }
        return false
    }

    private func enterNeedsReset(_ error: VirtioError) {
        lastError = error
        logger.error("\(pciName): \(error); device needs reset")
        status |= VirtioStatus.needsReset
        signalConfigChange()
    }

    private func signalQueue(_ q: Int) {
        if msix.isEnabled {
            let v = queues[q].msixVector
            if v != Self.noVector { msix.signal(Int(v), controller: interrupts) }
        } else {
            isr |= 1
            raiseINTx()
        }
    }

    /// Tells the driver the device configuration changed (bumps config_generation).
    public func configChanged() {
        lock.withLock { _ in
            configGeneration &+= 1
            signalConfigChange()
        }
    }

    private func signalConfigChange() {
        if msix.isEnabled {
            if configVector != Self.noVector { msix.signal(Int(configVector), controller: interrupts) }
        } else {
            isr |= 2
            raiseINTx()
        }
    }

    private func raiseINTx() {
        guard !header.interruptDisabled, !intxAsserted else { return }
        intxAsserted = true
        header.setInterruptStatus(true)
        intx?.raise()
    }

    private func lowerINTx() {
        guard intxAsserted else { return }
        intxAsserted = false
        header.setInterruptStatus(false)
        intx?.lower()
    }
}

/// A device model that pushes work from its own backend (console input) and so needs a
/// handle on its transport.
public protocol VirtioBackendAttachable: AnyObject {
    func attach(_ transport: VirtioPCIDevice)
}

extension VirtioPCIDevice {
    /// The transport's complete state as plain values (for snapshots and migration).
    /// Device models keep their own (small) state; backends are re-attached by the VMM.
    public struct Snapshot: Codable, Sendable, Equatable {
        public var header: PCIConfigHeader
        public var msix: PCIMSIX
        public var queues: [SplitVirtqueue]
        public var deviceFeatureSelect: UInt32
        public var driverFeatureSelect: UInt32
        public var driverFeatures: UInt64
        public var status: UInt8
        public var configGeneration: UInt8
        public var queueSelect: UInt16
        public var configVector: UInt16
        public var isr: UInt8
        public var intxAsserted: Bool
    }

    public func snapshot() -> Snapshot {
        lock.withLock { _ in
            Snapshot(header: header, msix: msix, queues: queues, deviceFeatureSelect: deviceFeatureSelect,
                     driverFeatureSelect: driverFeatureSelect, driverFeatures: driverFeatures, status: status,
                     configGeneration: configGeneration, queueSelect: queueSelect, configVector: configVector,
                     isr: isr, intxAsserted: intxAsserted)
        }
    }

    /// Restores a snapshot taken from a function of the same device type and queue count;
    /// returns false (and changes nothing) otherwise. Re-asserts INTx when it was asserted,
    /// and re-programs the ioeventfds (`onNotifyRegionsChanged`) for the restored state.
    @discardableResult
    public func restore(_ s: Snapshot) -> Bool {
        lock.withLock { _ in
            guard s.queues.count == queues.count, s.msix.vectorCount == msix.vectorCount,
                  s.header.deviceID == header.deviceID,
                  zip(s.queues, queues).allSatisfy({ $0.maxSize == $1.maxSize }) else { return false }
            header = s.header; msix = s.msix; queues = s.queues
            deviceFeatureSelect = s.deviceFeatureSelect; driverFeatureSelect = s.driverFeatureSelect
            driverFeatures = s.driverFeatures; status = s.status; configGeneration = s.configGeneration
            queueSelect = s.queueSelect; configVector = s.configVector; isr = s.isr
            intxAsserted = false
            if s.intxAsserted { raiseINTx() }
            if status & VirtioStatus.driverOK != 0 { model.activate(features: driverFeatures) }
            // The ioeventfds follow the restored state, as at DRIVER_OK and reset.
            if let hook = onNotifyRegionsChanged {
                hook(status & VirtioStatus.driverOK != 0 ? notifyRegionsLocked() : [])
            }
            return true
        }
    }
}
