import Devices
import Hypervisor
import Synchronization

/// What a vCPU thread does after an exit has been handled.
public enum ExitAction: Equatable, Sendable {
    /// Enter the guest again.
    case resume
    /// The run was interrupted by a kick: look at the machine's requests, then resume.
    case interrupted
    /// The vCPU halted and the backend cannot wake it: wait for the machine to wake it.
    case halted
    /// The machine must stop with this outcome.
    case stop(MachineOutcome)
}

/// Turns decoded vCPU exits into bus accesses and machine events. Backend independent:
/// KVM and the software CPU produce the same `VCPUExit`s, and tests feed it made-up ones.
///
/// Every bus access happens with the machine's device lock held; a string instruction
/// (`rep outsb` and friends, `count` > 1) is handled item by item under one acquisition.
public final class ExitHandler: @unchecked Sendable {
    public let bus: IOBus
    public let deviceLock: DeviceLock
    public let events: MachineEvents

    /// Exit counters (updated without a lock: they are statistics, not state).
    public let ioExits = Atomic<UInt64>(0)
    public let mmioExits = Atomic<UInt64>(0)

    public init(bus: IOBus, deviceLock: DeviceLock, events: MachineEvents) {
        self.bus = bus; self.deviceLock = deviceLock; self.events = events
    }

    public func handle(_ exit: VCPUExit, vcpu: Int) -> ExitAction {
        switch exit {
        case let .io(io):
            ioExits.add(1, ordering: .relaxed)
            guard io.size == 1 || io.size == 2 || io.size == 4, io.count >= 0, io.count <= 4096 / io.size else {
                return .stop(.error("vCPU \(vcpu): port I/O exit at port 0x\(String(io.port, radix: 16)) with size \(io.size) and count \(io.count) cannot be handled"))
            }
            deviceLock.withLock {
                for i in 0..<io.count {
                    // SAFETY: the backend guarantees size*count bytes at `data` (checked
                    // above to fit a 4 KiB page) until the next run().
                    let item = io.data + i * io.size
                    if io.isWrite {
                        bus.portWrite(io.port, size: io.size, value: Self.load(item, size: io.size))
                    } else {
                        Self.store(UInt64(bus.portRead(io.port, size: io.size)), to: item, size: io.size)
                    }
                }
            }
            return afterAccess()

        case let .mmio(m):
            mmioExits.add(1, ordering: .relaxed)
            guard m.size >= 1 && m.size <= 8 else {
                return .stop(.error("vCPU \(vcpu): MMIO exit at 0x\(String(m.address, radix: 16)) with size \(m.size) cannot be handled"))
            }
            deviceLock.withLock {
                if m.isWrite {
                    bus.mmioWrite(m.address, size: m.size, value: Self.load64(m.data, size: m.size))
                } else {
                    Self.store(bus.mmioRead(m.address, size: m.size), to: m.data, size: m.size)
                }
            }
            return afterAccess()

        case .halt:
            return .halted
        case let .shutdown(reason):
            return .stop(.reset(reason: "vCPU \(vcpu) shut down: \(reason)"))
        case .interrupted:
            return .interrupted
        case .systemReset:
            return .stop(.reset(reason: "vCPU \(vcpu) requested a system reset"))
        case .systemShutdown:
            return .stop(.poweredOff)
        case let .failure(why):
            return .stop(.error("vCPU \(vcpu): \(why)"))
        }
    }

    /// A device may have asked to stop the machine (debug exit, reset line, S5).
    @inline(__always)
    private func afterAccess() -> ExitAction {
        if events.isRequested, let outcome = events.outcome { return .stop(outcome) }
        return .resume
    }

    @inline(__always)
    static func load(_ p: UnsafeMutableRawPointer, size: Int) -> UInt32 {
        // SAFETY: callers pass a pointer to at least `size` bytes.
        switch size {
        case 1: return UInt32(p.load(as: UInt8.self))
        case 2: return UInt32(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
        default: return UInt32(littleEndian: p.loadUnaligned(as: UInt32.self))
        }
    }

    @inline(__always)
    static func load64(_ p: UnsafeMutableRawPointer, size: Int) -> UInt64 {
        var value: UInt64 = 0
        // SAFETY: callers pass a pointer to at least `size` (<= 8) bytes.
        for i in 0..<size { value |= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << (8 * i) }
        return value
    }

    @inline(__always)
    static func store(_ value: UInt64, to p: UnsafeMutableRawPointer, size: Int) {
        // SAFETY: callers pass a pointer to at least `size` (<= 8) bytes.
        for i in 0..<size { p.storeBytes(of: UInt8(truncatingIfNeeded: value >> (8 * i)), toByteOffset: i, as: UInt8.self) }
    }
}
