#if canImport(Glibc)
import Glibc
#endif
import CKVM

// Saving and restoring a KVM machine's state (docs/snapshot.md, "KVM state"): each vCPU's
// registers, special registers, MSRs, FPU/XSAVE and XCRs, local APIC page, pending events
// and MP state, and the VM's in-kernel 8259 pair, IOAPIC, PIT and kvmclock. The kernel's
// structures are kept as their bytes (fixed sizes, checked on restore): the stream is read
// back by the same kernel ABI.

/// One KVM vCPU's complete state.
public struct KVMVCPUSnapshot: Codable, Sendable, Equatable {
    public var regs: [UInt8]        // struct kvm_regs
    public var sregs: [UInt8]       // struct kvm_sregs
    public var xsave: [UInt8]       // struct kvm_xsave (legacy FXSAVE area + XSAVE header/components)
    public var xcrs: [UInt8]?       // struct kvm_xcrs (nil: KVM_CAP_XCRS missing)
    public var lapic: [UInt8]       // struct kvm_lapic_state
    public var events: [UInt8]      // struct kvm_vcpu_events
    public var mpState: UInt32
    /// (index, value) of every MSR KVM lists for saving (KVM_GET_MSR_INDEX_LIST) and can read.
    public var msrs: [[UInt64]]
}

/// The VM-wide in-kernel devices and clock.
public struct KVMVMSnapshot: Codable, Sendable, Equatable {
    public var picMaster: [UInt8]   // struct kvm_irqchip, chip 0
    public var picSlave: [UInt8]    // chip 1
    public var ioapic: [UInt8]      // chip 2
    public var pit: [UInt8]         // struct kvm_pit_state2
    public var clock: UInt64        // kvmclock nanoseconds (struct kvm_clock_data.clock)
}

/// A kernel struct's bytes, and back with its size checked.
func rawBytes<T>(_ value: inout T) -> [UInt8] { withUnsafeBytes(of: &value) { Array($0) } }

func fromRawBytes<T>(_ bytes: [UInt8], into value: inout T, _ what: String) throws {
    guard bytes.count == MemoryLayout<T>.size else {
        throw KVMError.invalidArgument("saved \(what) is \(bytes.count) bytes, not \(MemoryLayout<T>.size)")
    }
    // SAFETY: sizes checked above; T is a plain C struct.
    withUnsafeMutableBytes(of: &value) { dst in bytes.withUnsafeBytes { dst.copyMemory(from: $0) } }
}

extension KVMVCPU {
    private func get<T>(_ request: UInt, _ value: inout T, _ name: String) throws {
        // SAFETY: the kernel fills a struct of the request's type.
        guard ioctl(fd, request, &value) == 0 else { throw KVMError.ioctlFailed(name, errno: errno) }
    }

    private func set<T>(_ request: UInt, _ value: inout T, _ name: String) throws {
        // SAFETY: the kernel reads a struct of the request's type.
        guard ioctl(fd, request, &value) == 0 else { throw KVMError.ioctlFailed(name, errno: errno) }
    }

    /// The MSRs among `indices` this vCPU can read, with their values (KVM_GET_MSRS stops
    /// at the first MSR it refuses: that one is skipped and reading goes on).
    func readableMSRs(_ indices: [UInt32]) -> [[UInt64]] {
        var out: [[UInt64]] = []
        var rest = indices[...]
        while !rest.isEmpty {
            let batch = Array(rest)
            if let values = try? msrs(batch) {
                out += zip(batch, values).map { [UInt64($0), $1] }
                break
            }
            // Find how far it got: read one at a time up to the refused one.
            for i in batch {
                rest = rest.dropFirst()
                guard let v = try? msr(i) else { break }
                out.append([UInt64(i), v])
            }
        }
        return out
    }

    /// The vCPU's complete state. Call on its own thread while the machine is paused.
    public func saveState(msrIndices: [UInt32]) throws -> KVMVCPUSnapshot {
        var regs = kvm_regs(), sregs = kvm_sregs(), xsave = kvm_xsave(), lapic = kvm_lapic_state()
        var events = kvm_vcpu_events(), mp = kvm_mp_state()
        try get(CKVM_GET_REGS, &regs, "KVM_GET_REGS")
        try get(CKVM_GET_SREGS, &sregs, "KVM_GET_SREGS")
        try get(CKVM_GET_XSAVE, &xsave, "KVM_GET_XSAVE")
        var xcrs: [UInt8]? = nil
        if vm.system.checkExtension(.xcrs) > 0 {
            var x = kvm_xcrs()
            try get(CKVM_GET_XCRS, &x, "KVM_GET_XCRS")
            xcrs = rawBytes(&x)
        }
        try get(CKVM_GET_LAPIC, &lapic, "KVM_GET_LAPIC")
        try get(CKVM_GET_VCPU_EVENTS, &events, "KVM_GET_VCPU_EVENTS")
        try get(CKVM_GET_MP_STATE, &mp, "KVM_GET_MP_STATE")
        return KVMVCPUSnapshot(regs: rawBytes(&regs), sregs: rawBytes(&sregs), xsave: rawBytes(&xsave), xcrs: xcrs,
                               lapic: rawBytes(&lapic), events: rawBytes(&events), mpState: mp.mp_state,
                               msrs: readableMSRs(msrIndices))
    }

    /// Restores a state from `saveState`, in the order KVM needs: special registers (mode,
    /// APIC base) first, then MSRs, registers, FPU, XCRs, LAPIC, events, MP state.
    public func restoreState(_ s: KVMVCPUSnapshot) throws {
        var regs = kvm_regs(), sregs = kvm_sregs(), xsave = kvm_xsave(), lapic = kvm_lapic_state()
        var events = kvm_vcpu_events(), mp = kvm_mp_state()
        try fromRawBytes(s.regs, into: &regs, "kvm_regs")
        try fromRawBytes(s.sregs, into: &sregs, "kvm_sregs")
        try fromRawBytes(s.xsave, into: &xsave, "kvm_xsave")
        try fromRawBytes(s.lapic, into: &lapic, "kvm_lapic_state")
        try fromRawBytes(s.events, into: &events, "kvm_vcpu_events")
        guard s.msrs.allSatisfy({ $0.count == 2 && $0[0] <= UInt64(UInt32.max) }) else {
            throw KVMError.invalidArgument("saved MSRs are not (index, value) pairs")
        }
        mp.mp_state = s.mpState
        try set(CKVM_SET_SREGS, &sregs, "KVM_SET_SREGS")
        try setMSRs(s.msrs.map { (UInt32($0[0]), $0[1]) })
        try set(CKVM_SET_REGS, &regs, "KVM_SET_REGS")
        try set(CKVM_SET_XSAVE, &xsave, "KVM_SET_XSAVE")
        if let x = s.xcrs {
            var xcrs = kvm_xcrs()
            try fromRawBytes(x, into: &xcrs, "kvm_xcrs")
            try set(CKVM_SET_XCRS, &xcrs, "KVM_SET_XCRS")
        }
        try set(CKVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC")
        try set(CKVM_SET_VCPU_EVENTS, &events, "KVM_SET_VCPU_EVENTS")
        try set(CKVM_SET_MP_STATE, &mp, "KVM_SET_MP_STATE")
    }
}

extension KVMVirtualMachine {
    private func chip(_ id: UInt32) throws -> [UInt8] {
        var c = kvm_irqchip()
        c.chip_id = id
        // SAFETY: the kernel fills the struct.
        guard ioctl(fd, CKVM_GET_IRQCHIP, &c) == 0 else { throw KVMError.ioctlFailed("KVM_GET_IRQCHIP (chip \(id))", errno: errno) }
        return rawBytes(&c)
    }

    private func setChip(_ bytes: [UInt8], id: UInt32) throws {
        var c = kvm_irqchip()
        try fromRawBytes(bytes, into: &c, "kvm_irqchip")
        guard c.chip_id == id else { throw KVMError.invalidArgument("saved irqchip \(c.chip_id) where chip \(id) belongs") }
        // SAFETY: the kernel reads the struct.
        guard ioctl(fd, CKVM_SET_IRQCHIP, &c) == 0 else { throw KVMError.ioctlFailed("KVM_SET_IRQCHIP (chip \(id))", errno: errno) }
    }

    /// The in-kernel PIC pair, IOAPIC, PIT and kvmclock. Call while every vCPU is paused.
    public func saveState() throws -> KVMVMSnapshot {
        var pit = kvm_pit_state2(), clock = kvm_clock_data()
        // SAFETY: the kernel fills the structs.
        guard ioctl(fd, CKVM_GET_PIT2, &pit) == 0 else { throw KVMError.ioctlFailed("KVM_GET_PIT2", errno: errno) }
        guard ioctl(fd, CKVM_GET_CLOCK, &clock) == 0 else { throw KVMError.ioctlFailed("KVM_GET_CLOCK", errno: errno) }
        return KVMVMSnapshot(picMaster: try chip(0), picSlave: try chip(1), ioapic: try chip(2),
                             pit: rawBytes(&pit), clock: clock.clock)
    }

    /// Restores `saveState`'s result before any vCPU runs.
    public func restoreState(_ s: KVMVMSnapshot) throws {
        try setChip(s.picMaster, id: 0)
        try setChip(s.picSlave, id: 1)
        try setChip(s.ioapic, id: 2)
        var pit = kvm_pit_state2(), clock = kvm_clock_data()
        try fromRawBytes(s.pit, into: &pit, "kvm_pit_state2")
        clock.clock = s.clock
        // SAFETY: the kernel reads the structs.
        guard ioctl(fd, CKVM_SET_PIT2, &pit) == 0 else { throw KVMError.ioctlFailed("KVM_SET_PIT2", errno: errno) }
        guard ioctl(fd, CKVM_SET_CLOCK, &clock) == 0 else { throw KVMError.ioctlFailed("KVM_SET_CLOCK", errno: errno) }
    }
}
