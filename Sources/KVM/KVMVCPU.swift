#if canImport(Glibc)
import Glibc
#endif
import CKVM
import Hypervisor
import Synchronization

/// The multiprocessing state of a vCPU (KVM_GET/SET_MP_STATE).
public enum KVMMPState: UInt32, Sendable {
    case runnable = 0
    /// Waiting for INIT/SIPI (an application processor before the guest starts it).
    case uninitialized = 1
    case initReceived = 2
    case halted = 3
    case sipiReceived = 4
}

/// The signal `kick()` sends to a vCPU thread. Its handler does nothing; the point is that
/// a blocked KVM_RUN returns with EINTR.
public let kvmKickSignal: Int32 = SIGUSR1

private let kickHandlerInstalled: Bool = {
    // Runs once (Swift globals are lazily initialised exactly once, thread-safely).
    ckvm_install_kick_handler(kvmKickSignal) == 0
}()

/// One KVM vCPU. Owns its fd and its mmap'd `kvm_run`, and keeps its VM (and through it
/// the guest memory) alive.
///
/// Threading: every method except `kick()` must be called on the vCPU's own thread (KVM
/// binds a vCPU to the thread that runs it). `kick()` is safe from any thread.
public final class KVMVCPU: VirtualCPU, @unchecked Sendable {
    public let index: Int
    public let vm: KVMVirtualMachine
    public let fd: Int32
    // SAFETY: mapped MAP_SHARED from the vCPU fd in init, unmapped in deinit; the kernel and
    // this object are the only writers, and only while this object is alive.
    private let kvmRun: UnsafeMutablePointer<kvm_run>
    private let runBytes: UnsafeMutableRawPointer
    private let mmapSize: Int
    /// The pthread inside `run()`, or 0: `kick()` signals it only while it is in there.
    private let runningThread = Mutex<pthread_t>(0)
    /// The last thread that called `run()`; only touched by the running thread.
    private var lastRunThread: pthread_t = 0
    /// The last exit was an I/O or MMIO exit: KVM finishes the instruction (stores the read
    /// value, advances RIP) only on the next KVM_RUN. Only touched by the running thread.
    private var exitPending = false

    init(vm: KVMVirtualMachine, index: Int) throws {
        _ = kickHandlerInstalled
        let fd = ioctl(vm.fd, CKVM_CREATE_VCPU, Int32(index))
        guard fd >= 0 else { throw KVMError.ioctlFailed("KVM_CREATE_VCPU (vCPU \(index))", errno: errno) }
        let size = vm.system.vcpuMmapSize
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let err = errno
            close(fd)
            throw KVMError.mmapFailed(errno: err)
        }
        self.fd = fd
        self.index = index
        self.vm = vm
        self.mmapSize = size
        self.runBytes = p
        // SAFETY: the mapping is at least sizeof(kvm_run) (checked by KVMSystem).
        self.kvmRun = p.bindMemory(to: kvm_run.self, capacity: 1)
    }

    deinit {
        munmap(runBytes, mmapSize)
        close(fd)
    }

    // MARK: registers

    public func registers() throws -> X86Registers {
        var r = kvm_regs()
        // SAFETY: the kernel fills the struct.
        guard ioctl(fd, CKVM_GET_REGS, &r) == 0 else { throw KVMError.ioctlFailed("KVM_GET_REGS", errno: errno) }
        return X86Registers(r)
    }

    public func setRegisters(_ regs: X86Registers) throws {
        var r = regs.kvm
        // SAFETY: the kernel only reads the struct.
        guard ioctl(fd, CKVM_SET_REGS, &r) == 0 else { throw KVMError.ioctlFailed("KVM_SET_REGS", errno: errno) }
    }

    public func specialRegisters() throws -> X86SpecialRegisters {
        X86SpecialRegisters(try kvmSpecialRegisters())
    }

    public func setSpecialRegisters(_ sregs: X86SpecialRegisters) throws {
        // Start from the current state so the pending-interrupt bitmap is preserved.
        var s = try kvmSpecialRegisters()
        sregs.apply(to: &s)
        // SAFETY: the kernel only reads the struct.
        guard ioctl(fd, CKVM_SET_SREGS, &s) == 0 else { throw KVMError.ioctlFailed("KVM_SET_SREGS", errno: errno) }
    }

    private func kvmSpecialRegisters() throws -> kvm_sregs {
        var s = kvm_sregs()
        // SAFETY: the kernel fills the struct.
        guard ioctl(fd, CKVM_GET_SREGS, &s) == 0 else { throw KVMError.ioctlFailed("KVM_GET_SREGS", errno: errno) }
        return s
    }

    // MARK: MSRs

    /// Reads the MSRs at `indices` (KVM_GET_MSRS); fails naming the first MSR KVM refused.
    public func msrs(_ indices: [UInt32]) throws -> [UInt64] {
        guard !indices.isEmpty else { return [] }
        return try withMSRBuffer(indices.map { ($0, 0) }) { buf, entries in
            let n = ioctl(fd, CKVM_GET_MSRS, buf)
            guard n >= 0 else { throw KVMError.ioctlFailed("KVM_GET_MSRS", errno: errno) }
            guard Int(n) == indices.count else {
                throw KVMError.invalidArgument("KVM cannot read MSR 0x\(String(indices[Int(n)], radix: 16))")
            }
            return (0..<indices.count).map { entries[$0].data }
        }
    }

    public func msr(_ index: UInt32) throws -> UInt64 { try msrs([index])[0] }

    /// Writes MSRs (KVM_SET_MSRS); fails naming the first MSR KVM refused.
    public func setMSRs(_ values: [(index: UInt32, value: UInt64)]) throws {
        guard !values.isEmpty else { return }
        try withMSRBuffer(values) { buf, _ in
            let n = ioctl(fd, CKVM_SET_MSRS, buf)
            guard n >= 0 else { throw KVMError.ioctlFailed("KVM_SET_MSRS", errno: errno) }
            guard Int(n) == values.count else {
                throw KVMError.invalidArgument("KVM refused to set MSR 0x\(String(values[Int(n)].index, radix: 16)) to 0x\(String(values[Int(n)].value, radix: 16))")
            }
        }
    }

    private func withMSRBuffer<R>(_ values: [(index: UInt32, value: UInt64)],
                                  _ body: (UnsafeMutableRawPointer, UnsafeMutablePointer<kvm_msr_entry>) throws -> R) throws -> R {
        let n = UInt32(values.count)
        let size = ckvm_msrs_size(n)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { raw.deallocate() }
        // SAFETY: header plus `n` entries, all initialised before the ioctl.
        memset(raw, 0, size)
        let msrs = raw.bindMemory(to: kvm_msrs.self, capacity: 1)
        msrs.pointee.nmsrs = n
        let entries = ckvm_msrs_entries(msrs)!
        for (i, v) in values.enumerated() {
            entries[i].index = v.index
            entries[i].data = v.value
        }
        return try body(raw, entries)
    }

    // MARK: CPUID, MP state, LAPIC, events

    /// KVM_SET_CPUID2. Must happen before the first run.
    public func setCPUID(_ entries: [CPUIDEntry]) throws {
        let n = UInt32(entries.count)
        let size = ckvm_cpuid2_size(n)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { raw.deallocate() }
        // SAFETY: header plus `n` entries, all written before the ioctl.
        memset(raw, 0, size)
        let cpuid = raw.bindMemory(to: kvm_cpuid2.self, capacity: 1)
        cpuid.pointee.nent = n
        let base = ckvm_cpuid2_entries(cpuid)!
        for (i, e) in entries.enumerated() { base[i] = e.kvm }
        guard ioctl(fd, CKVM_SET_CPUID2, raw) == 0 else { throw KVMError.ioctlFailed("KVM_SET_CPUID2", errno: errno) }
    }

    /// KVM_GET_CPUID2: what this vCPU currently reports.
    public func cpuid() throws -> [CPUIDEntry] {
        var capacity: UInt32 = 256
        while true {
            let size = ckvm_cpuid2_size(capacity)
            let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
            defer { raw.deallocate() }
            // SAFETY: header plus room for `capacity` entries.
            memset(raw, 0, size)
            let c = raw.bindMemory(to: kvm_cpuid2.self, capacity: 1)
            c.pointee.nent = capacity
            if ioctl(fd, CKVM_GET_CPUID2, raw) == 0 {
                let base = ckvm_cpuid2_entries(c)!
                return (0..<min(Int(c.pointee.nent), Int(capacity))).map { CPUIDEntry(base[$0]) }
            }
            let err = errno
            guard err == E2BIG, capacity < 8192 else { throw KVMError.ioctlFailed("KVM_GET_CPUID2", errno: err) }
            capacity *= 2
        }
    }

    public func mpState() throws -> KVMMPState? {
        var s = kvm_mp_state()
        // SAFETY: the kernel fills the struct.
        guard ioctl(fd, CKVM_GET_MP_STATE, &s) == 0 else { throw KVMError.ioctlFailed("KVM_GET_MP_STATE", errno: errno) }
        return KVMMPState(rawValue: s.mp_state)
    }

    public func setMPState(_ state: KVMMPState) throws {
        var s = kvm_mp_state()
        s.mp_state = state.rawValue
        // SAFETY: the kernel only reads the struct.
        guard ioctl(fd, CKVM_SET_MP_STATE, &s) == 0 else { throw KVMError.ioctlFailed("KVM_SET_MP_STATE", errno: errno) }
    }

    /// The in-kernel local APIC's 1 KiB register page (KVM_GET_LAPIC), for snapshots.
    public func lapicState() throws -> [UInt8] {
        var s = kvm_lapic_state()
        // SAFETY: the kernel fills the struct.
        guard ioctl(fd, CKVM_GET_LAPIC, &s) == 0 else { throw KVMError.ioctlFailed("KVM_GET_LAPIC", errno: errno) }
        return withUnsafeBytes(of: &s) { Array($0) }
    }

    public func setLAPICState(_ bytes: [UInt8]) throws {
        var s = kvm_lapic_state()
        guard bytes.count == MemoryLayout<kvm_lapic_state>.size else {
            throw KVMError.invalidArgument("a LAPIC state is \(MemoryLayout<kvm_lapic_state>.size) bytes, not \(bytes.count)")
        }
        // SAFETY: sizes checked above.
        withUnsafeMutableBytes(of: &s) { dst in bytes.withUnsafeBytes { dst.copyMemory(from: $0) } }
        guard ioctl(fd, CKVM_SET_LAPIC, &s) == 0 else { throw KVMError.ioctlFailed("KVM_SET_LAPIC", errno: errno) }
    }

    /// Pending exceptions/interrupts/NMI/SIPI state (KVM_GET_VCPU_EVENTS), raw, for snapshots.
    public func vcpuEvents() throws -> [UInt8] {
        var e = kvm_vcpu_events()
        // SAFETY: the kernel fills the struct.
        guard ioctl(fd, CKVM_GET_VCPU_EVENTS, &e) == 0 else { throw KVMError.ioctlFailed("KVM_GET_VCPU_EVENTS", errno: errno) }
        return withUnsafeBytes(of: &e) { Array($0) }
    }

    public func setVCPUEvents(_ bytes: [UInt8]) throws {
        var e = kvm_vcpu_events()
        guard bytes.count == MemoryLayout<kvm_vcpu_events>.size else {
            throw KVMError.invalidArgument("vCPU events are \(MemoryLayout<kvm_vcpu_events>.size) bytes, not \(bytes.count)")
        }
        // SAFETY: sizes checked above.
        withUnsafeMutableBytes(of: &e) { dst in bytes.withUnsafeBytes { dst.copyMemory(from: $0) } }
        guard ioctl(fd, CKVM_SET_VCPU_EVENTS, &e) == 0 else { throw KVMError.ioctlFailed("KVM_SET_VCPU_EVENTS", errno: errno) }
    }

    /// Injects an external interrupt vector directly (KVM_INTERRUPT). Only for VMs without
    /// the in-kernel irqchip; the guest must be ready (see `readyForInterruptInjection`).
    public func injectInterrupt(vector: UInt8) throws {
        var irq = kvm_interrupt()
        irq.irq = UInt32(vector)
        // SAFETY: the kernel only reads the struct.
        guard ioctl(fd, CKVM_INTERRUPT, &irq) == 0 else { throw KVMError.ioctlFailed("KVM_INTERRUPT", errno: errno) }
    }

    /// Asks KVM to exit as soon as the guest can take an interrupt (no in-kernel irqchip).
    public func requestInterruptWindow(_ on: Bool) {
        ckvm_run_set_request_interrupt_window(kvmRun, on ? 1 : 0)
    }

    public var readyForInterruptInjection: Bool { ckvm_run_ready_for_interrupt_injection(kvmRun) != 0 }

    // MARK: running

    /// Enters the guest until the next exit that needs user space, and decodes it.
    /// For `.io` and `.mmio` the data pointer points into kvm_run: store read results
    /// there before calling `run()` again.
    public func run() throws -> VCPUExit {
        let me = pthread_self()
        if me != lastRunThread {
            // A new thread runs this vCPU: make sure it can receive the kick signal
            // (threads created from Swift's pool inherit a mask that blocks it).
            lastRunThread = me
            _ = ckvm_unblock_signal(kvmKickSignal)
        }
        runningThread.withLock { $0 = me }
        let r = ioctl(fd, CKVM_RUN, 0)
        let err = errno
        runningThread.withLock { $0 = 0 }
        if r < 0 {
            if err == EINTR || err == EAGAIN {
                ckvm_run_set_immediate_exit(kvmRun, 0)
                return .interrupted
            }
            throw KVMError.ioctlFailed("KVM_RUN (vCPU \(index))", errno: err)
        }
        return noteExit(decodeExit())
    }

    /// KVM_RUN with immediate_exit set: KVM completes the pending I/O or MMIO instruction
    /// (complete_userspace_io) and returns EINTR before entering the guest; or the
    /// instruction needs another exit (the next chunk of a string I/O, the second half of a
    /// split MMIO access), which is returned. Resets immediate_exit afterwards; a kick
    /// racing with this is not lost, since the runner checks its flags before each run.
    public func completePendingExit() throws -> VCPUExit? {
        guard exitPending else { return nil }
        exitPending = false
        ckvm_run_set_immediate_exit(kvmRun, 1)
        let r = ioctl(fd, CKVM_RUN, 0)
        let err = errno
        ckvm_run_set_immediate_exit(kvmRun, 0)
        if r < 0 {
            if err == EINTR || err == EAGAIN { return nil }
            throw KVMError.ioctlFailed("KVM_RUN (completing an exit on vCPU \(index))", errno: err)
        }
        return noteExit(decodeExit())
    }

    @inline(__always)
    private func noteExit(_ exit: VCPUExit) -> VCPUExit {
        switch exit {
        case .io, .mmio: exitPending = true
        default: exitPending = false
        }
        return exit
    }

    @inline(__always)
    private func decodeExit() -> VCPUExit {
        switch Int(ckvm_run_exit_reason(kvmRun)) {
        case CKVM_EXIT_IO:
            let size = Int(ckvm_run_io_size(kvmRun))
            let count = Int(ckvm_run_io_count(kvmRun))
            let offset = ckvm_run_io_data_offset(kvmRun)
            guard offset < UInt64(mmapSize), size > 0, count > 0,
                  size.multipliedReportingOverflow(by: count).partialValue <= mmapSize - Int(offset) else {
                return .failure("KVM reported an I/O exit with a bad data area (offset \(offset), \(count) x \(size) bytes)")
            }
            return .io(IOExit(port: ckvm_run_io_port(kvmRun), size: size, count: count,
                              isWrite: ckvm_run_io_direction(kvmRun) == UInt8(KVM_EXIT_IO_OUT),
                              data: runBytes + Int(offset)))
        case CKVM_EXIT_MMIO:
            return .mmio(MMIOExit(address: ckvm_run_mmio_phys_addr(kvmRun),
                                  size: Int(min(ckvm_run_mmio_len(kvmRun), 8)),
                                  isWrite: ckvm_run_mmio_is_write(kvmRun) != 0,
                                  data: ckvm_run_mmio_data(kvmRun)))
        case CKVM_EXIT_HLT:
            return .halt
        case CKVM_EXIT_INTR, CKVM_EXIT_IRQ_WINDOW_OPEN:
            ckvm_run_set_immediate_exit(kvmRun, 0)
            return .interrupted
        case CKVM_EXIT_SHUTDOWN:
            return .shutdown(reason: "the guest triple-faulted (vCPU \(index)\(ripSuffix()))")
        case CKVM_EXIT_SYSTEM_EVENT:
            switch Int(ckvm_run_system_event_type(kvmRun)) {
            case CKVM_SYSTEM_EVENT_SHUTDOWN: return .systemShutdown
            case CKVM_SYSTEM_EVENT_RESET: return .systemReset
            case CKVM_SYSTEM_EVENT_CRASH: return .shutdown(reason: "the guest reported a crash (vCPU \(index))")
            case let t: return .failure("KVM reported system event \(t) on vCPU \(index)")
            }
        case CKVM_EXIT_INTERNAL_ERROR:
            let sub = Int(ckvm_run_internal_suberror(kvmRun))
            let what: String
            switch sub {
            case CKVM_INTERNAL_ERROR_EMULATION: what = "KVM could not emulate an instruction"
            case CKVM_INTERNAL_ERROR_SIMUL_EX: what = "KVM hit an exception while delivering another"
            case CKVM_INTERNAL_ERROR_DELIVERY_EV: what = "KVM could not deliver an event"
            default: what = "KVM internal error \(sub)"
            }
            return .failure("\(what) on vCPU \(index)\(ripSuffix())")
        case CKVM_EXIT_FAIL_ENTRY:
            return .failure("KVM could not enter the guest on vCPU \(index) (hardware reason 0x\(String(ckvm_run_fail_entry_reason(kvmRun), radix: 16)))\(ripSuffix())")
        case CKVM_EXIT_EXCEPTION:
            return .failure("the guest raised exception \(ckvm_run_ex_exception(kvmRun)) (error code \(ckvm_run_ex_error_code(kvmRun))) on vCPU \(index)\(ripSuffix())")
        case CKVM_EXIT_UNKNOWN:
            return .failure("KVM exited for an unknown hardware reason 0x\(String(ckvm_run_hw_exit_reason(kvmRun), radix: 16)) on vCPU \(index)\(ripSuffix())")
        case let reason:
            return .failure("KVM exit reason \(reason) is not handled (vCPU \(index)\(ripSuffix()))")
        }
    }

    private func ripSuffix() -> String {
        guard let regs = try? registers() else { return "" }
        return ", RIP 0x\(String(regs.rip, radix: 16))"
    }

    /// Makes the current or next `run()` return `.interrupted` soon. Safe from any thread.
    public func kick() {
        ckvm_run_set_immediate_exit(kvmRun, 1)
        runningThread.withLock { tid in
            if tid != 0 { _ = pthread_kill(tid, kvmKickSignal) }
        }
    }
}
