#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Hypervisor
import Synchronization

/// Errors of the emulator backend.
public enum EmulatorError: Error, CustomStringConvertible {
    case duplicateVCPU(Int)
    case tooManyVCPUs(Int)

    public var description: String {
        switch self {
        case let .duplicateVCPU(i): return "vCPU \(i) was already created on this emulator VM"
        case let .tooManyVCPUs(n): return "the emulator supports at most 255 vCPUs (asked for index \(n))"
        }
    }
}

/// The software-CPU virtual machine: guest memory plus emulated vCPUs with their local
/// APICs. The legacy interrupt chips (8259 PIC, IOAPIC) are device models the VMM owns:
/// it plugs them in with `setLegacyInterruptSink` (where `interrupts.setIRQ` goes) and
/// `setExternalInterruptSource` (where the BSP's LINT0 ExtINT vectors come from), and
/// delivers IOAPIC messages with `deliverInterrupt(...)`.
public final class EmulatorVirtualMachine: VirtualMachineBackend, @unchecked Sendable {
    public let name = "emulator"
    public let memory: GuestMemory
    let router: EmulatorInterruptRouter
    public var interrupts: any InterruptController { router }
    private let vcpuTable = Mutex<[EmulatorVCPU]>([])
    /// One vCPU executes at a time when there are several (see ExecutionTurnstile), unless
    /// `parallelVCPUs`.
    let turnstile = ExecutionTurnstile()
    /// Experimental: several vCPUs execute at once, one host thread each, without the
    /// turnstile (`SWIFTVMM_EMU_PARALLEL=1`; docs/emulator.md says what it does not
    /// guarantee yet). Set before the first vCPU runs.
    public var parallelVCPUs = EmulatorVirtualMachine.parallelFromEnvironment
    /// Parallel vCPUs hold it shared while executing; a split lock takes it exclusively.
    let splitLockGate = SplitLockGate()

    /// `SWIFTVMM_EMU_PARALLEL`, read once per process: "1" turns parallel vCPUs on.
    public static let parallelFromEnvironment: Bool = {
        guard let p = getenv("SWIFTVMM_EMU_PARALLEL") else { return false }
        return String(cString: p) == "1"
    }()

    /// The instruction-set level every vCPU of this machine offers (CPUID and #UD gating).
    public let cpuLevel: X86CPULevel

    public init(memory: GuestMemory, cpuLevel: X86CPULevel = .default) {
        self.memory = memory
        self.cpuLevel = cpuLevel
        self.router = EmulatorInterruptRouter()
        router.vm = self
    }

    public func createVCPU(index: Int, startState: VCPUStartState) throws -> any VirtualCPU {
        try createEmulatorVCPU(index: index, startState: startState)
    }

    public func createEmulatorVCPU(index: Int, startState: VCPUStartState) throws -> EmulatorVCPU {
        guard index >= 0 && index < 255 else { throw EmulatorError.tooManyVCPUs(index) }
        let v = EmulatorVCPU(index: index, vm: self, waitingForSIPI: startState == .waitingForSIPI)
        try vcpuTable.withLock { table in
            if table.contains(where: { $0.index == index }) { throw EmulatorError.duplicateVCPU(index) }
            table.append(v)
            for cpu in table { cpu.cpu.topologyCPUs = table.count }
        }
        return v
    }

    public var vcpus: [EmulatorVCPU] { vcpuTable.withLock { $0 } }

    /// Where `interrupts.setIRQ` goes (the VMM's PIC + IOAPIC glue).
    public func setLegacyInterruptSink(_ sink: any InterruptController) {
        router.sink.withLock { $0 = sink }
    }

    /// Where the boot vCPU's ExtINT (8259) vectors come from. Call before running.
    public func setExternalInterruptSource(_ source: any ExternalInterruptSource) {
        for v in vcpus where v.index == 0 { v.cpu.extInt = source }
    }

    /// Tells the boot vCPU that the PIC's INTR output may have changed (any thread).
    public func notifyExternalInterrupt() {
        for v in vcpus where v.index == 0 { v.cpu.apic.notifyExtINT() }
    }

    /// Delivers an interrupt message (IOAPIC redirection entry, MSI) to local APICs.
    /// `destination` is an APIC ID (physical) or a logical mask; 0xFF is broadcast.
    public func deliverInterrupt(vector: UInt8, destination: UInt8, logical: Bool,
                                 mode: APICDeliveryMode, levelTriggered: Bool) {
        let targets = vcpus.filter { v in
            if destination == 0xFF { return true }
            return logical ? v.cpu.apic.matchesLogical(destination) : v.cpu.apic.routingID == UInt32(destination)
        }
        if mode == .lowestPriority, let first = targets.min(by: { $0.index < $1.index }) {
            first.cpu.apic.post(vector: vector, mode: .fixed, levelTriggered: levelTriggered)
            return
        }
        for t in targets { t.cpu.apic.post(vector: vector, mode: mode, levelTriggered: levelTriggered) }
    }

    /// Sets the listener for EOIs of level-triggered vectors on every vCPU (the IOAPIC).
    public func setEOIListener(_ l: any EOIListener) {
        for v in vcpus { v.cpu.apic.eoiListener = l }
    }

    func routeIPI(from: LocalAPIC, icrLow: UInt32, icrHigh: UInt32) {
        let vector = UInt8(icrLow & 0xFF)
        let modeBits = UInt8((icrLow >> 8) & 7)
        let logical = icrLow & (1 << 11) != 0
        let shorthand = (icrLow >> 18) & 3
        let dest = UInt8(icrHigh >> 24)
        // INIT level de-assert: no-op.
        if modeBits == 5 && icrLow & (1 << 14) == 0 { return }
        guard let mode = APICDeliveryMode(rawValue: modeBits) else { return }
        for v in vcpus {
            let a = v.cpu.apic
            let hit: Bool
            switch shorthand {
            case 1: hit = a === from
            case 2: hit = true
            case 3: hit = a !== from
            default: hit = dest == 0xFF || (logical ? a.matchesLogical(dest) : a.routingID == UInt32(dest))
            }
            if hit {
                if a === from && (mode == .fixed) {
                    a.setIRR(vector, level: false)
                } else {
                    a.post(vector: vector, mode: mode)
                }
            }
        }
    }
}

/// `InterruptController` of the emulator VM: GSIs go to the VMM's legacy chips, MSIs are
/// decoded and posted to local APICs here.
final class EmulatorInterruptRouter: InterruptController, @unchecked Sendable {
    weak var vm: EmulatorVirtualMachine?
    let sink = Mutex<(any InterruptController)?>(nil)

    func setIRQ(_ gsi: UInt32, level: Bool) {
        let s = sink.withLock { $0 }
        s?.setIRQ(gsi, level: level)
    }

    func signalMSI(address: UInt64, data: UInt32) {
        guard address >> 20 == 0xFEE else { return }
        let dest = UInt8((address >> 12) & 0xFF)
        let logical = address & 4 != 0
        let vector = UInt8(data & 0xFF)
        let mode = APICDeliveryMode(rawValue: UInt8((data >> 8) & 7)) ?? .fixed
        vm?.deliverInterrupt(vector: vector, destination: dest, logical: logical, mode: mode,
                             levelTriggered: data & (1 << 15) != 0)
    }
}

/// One emulated vCPU. `run()` executes guest code until a port/MMIO access, HLT that
/// nothing can wake, a triple fault or a `kick()`.
public final class EmulatorVCPU: VirtualCPU, @unchecked Sendable {
    public let index: Int
    public let cpu: X86CPU
    let vm: EmulatorVirtualMachine
    let parker = Parker()
    var waitingForSIPI: Bool
    // SAFETY: 64-byte scratch buffer for exit data, owned by this vCPU.
    private let exitBuffer = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 16)
    /// Key of the read the VMM is completing (port | 1<<62, or the MMIO address).
    private var awaitingRead: UInt64? = nil
    /// Instructions per `cpu.run` slice between kick checks.
    public var sliceInstructions = 1 << 16

    init(index: Int, vm: EmulatorVirtualMachine, waitingForSIPI: Bool) {
        self.index = index
        self.vm = vm
        self.cpu = X86CPU(memory: vm.memory, apicID: UInt32(index))
        cpu.cpuLevel = vm.cpuLevel
        self.waitingForSIPI = waitingForSIPI
        cpu.apic.waker = parker
        cpu.apic.ipiRouter = { [weak vm] from, lo, hi in vm?.routeIPI(from: from, icrLow: lo, icrHigh: hi) }
        exitBuffer.initializeMemory(as: UInt8.self, repeating: 0, count: 64)
    }

    deinit { exitBuffer.deallocate() }

    public var localAPIC: LocalAPIC { cpu.apic }
    /// Retired guest instructions.
    public var instructionCount: UInt64 { cpu.instructions }

    public func registers() throws -> X86Registers { cpu.registers() }
    public func setRegisters(_ regs: X86Registers) throws { cpu.setRegisters(regs) }
    public func specialRegisters() throws -> X86SpecialRegisters { cpu.specialRegisters() }
    public func setSpecialRegisters(_ sregs: X86SpecialRegisters) throws { cpu.setSpecialRegisters(sregs) }

    public func kick() {
        cpu.kickRequested.store(true, ordering: .releasing)
        cpu.apic.noteAttention()
        parker.unpark()
    }

    /// Several vCPUs share the VM: execute through the turnstile, unless the VM runs them in
    /// parallel. Decided at the first run (every vCPU is created before any runs).
    private lazy var serialized: Bool = {
        let several = vm.vcpus.count > 1
        cpu.yieldOnPause = several && !vm.parallelVCPUs
        if several && vm.parallelVCPUs { cpu.splitLockGate = vm.splitLockGate }
        return several && !vm.parallelVCPUs
    }()

    /// Runs `body` (which executes guest instructions) as the VM's mode wants: through the
    /// turnstile, holding the split-lock gate shared (parallel), or as it is (one vCPU).
    @inline(__always)
    private func executing<T>(_ body: () -> T) -> T {
        if serialized {
            vm.turnstile.enter()
            defer { vm.turnstile.leave() }
            return body()
        }
        if let gate = cpu.splitLockGate {
            gate.enterShared()
            defer { gate.leaveShared() }
            return body()
        }
        return body()
    }

    public func run() throws -> VCPUExit {
        if let key = awaitingRead {
            // SAFETY: exitBuffer holds at least 8 bytes.
            cpu.replayValue = exitBuffer.loadUnaligned(as: UInt64.self)
            cpu.replayKey = key
            cpu.replayValid = true
            awaitingRead = nil
        }
        if !cpu.pendingExits.isEmpty { return makeExit(cpu.pendingExits.removeFirst()) }
        while true {
            if cpu.kickRequested.exchange(false, ordering: .acquiring) { return .interrupted }
            if waitingForSIPI {
                if cpu.apic.inboxFlag.load(ordering: .acquiring) { cpu.mergeInbox() }
                if let v = cpu.sipiPending {
                    cpu.sipiPending = nil; cpu.initPending = false
                    startAt(sipiVector: v)
                    waitingForSIPI = false
                } else {
                    parker.park(until: 0)
                    continue
                }
            }
            if cpu.initPending && index != 0 {
                cpu.initPending = false
                cpu.reset()
                cpu.apic.reset()
                waitingForSIPI = true
                continue
            }
            let budget = sliceInstructions
            let reason = executing { cpu.run(budget: budget) }
            if EmulatorTrace.settings.slices { cpu.traceSlice() }
            switch reason {
            case .exit:
                return makeExit(cpu.pendingExits.removeFirst())
            case .shutdown:
                return .shutdown(reason: cpu.shutdownReason ?? "triple fault")
            case .halted:
                if !cpu.interruptsEnabled && !cpu.nmiPending && !cpu.apic.inboxFlag.load(ordering: .acquiring) {
                    return .halt
                }
                let now = HostClock.nanoseconds()
                if cpu.apic.checkTimer(now: now) { continue }
                if cpu.apic.inboxFlag.load(ordering: .acquiring) { continue }
                parker.park(until: cpu.apic.timerDeadline)
                cpu.apic.checkTimer(now: HostClock.nanoseconds())
            case .budget, .attention:
                continue
            }
        }
    }

    /// Retires the instruction whose read the VMM just completed (replaying it with the
    /// stored value, without taking an interrupt first), or hands out exits the last
    /// instruction still has queued. The CPU is then at an instruction boundary.
    public func completePendingExit() throws -> VCPUExit? {
        guard let key = awaitingRead else {
            return cpu.pendingExits.isEmpty ? nil : makeExit(cpu.pendingExits.removeFirst())
        }
        // SAFETY: exitBuffer holds at least 8 bytes.
        cpu.replayValue = exitBuffer.loadUnaligned(as: UInt64.self)
        cpu.replayKey = key
        cpu.replayValid = true
        awaitingRead = nil
        if !cpu.pendingExits.isEmpty { return makeExit(cpu.pendingExits.removeFirst()) }
        executing {
            cpu.interruptShadow = false
            cpu.step()
        }
        cpu.replayValid = false
        if cpu.shutdownReason != nil { return .shutdown(reason: cpu.shutdownReason ?? "triple fault") }
        return cpu.pendingExits.isEmpty ? nil : makeExit(cpu.pendingExits.removeFirst())
    }

    private func startAt(sipiVector v: UInt8) {
        cpu.reset()
        var cs = X86Segment.realMode(selector: UInt16(v) << 8, code: true)
        cs.base = UInt64(v) << 12
        cpu.seg[SReg.cs] = cs
        cpu.rip = 0
        cpu.updateMode()
    }

    private func makeExit(_ e: PendingExit) -> VCPUExit {
        switch e {
        case let .io(port, size, isWrite, value):
            // SAFETY: exitBuffer has 64 bytes; size <= 4.
            exitBuffer.storeBytes(of: UInt64(value), as: UInt64.self)
            if !isWrite { exitBuffer.storeBytes(of: UInt64(0), as: UInt64.self); awaitingRead = (UInt64(1) << 62) | UInt64(port) }
            return .io(IOExit(port: port, size: size, count: 1, isWrite: isWrite, data: exitBuffer))
        case let .mmio(address, size, isWrite, value):
            exitBuffer.storeBytes(of: value, as: UInt64.self)
            if !isWrite { exitBuffer.storeBytes(of: UInt64(0), as: UInt64.self); awaitingRead = address }
            return .mmio(MMIOExit(address: address, size: size, isWrite: isWrite, data: exitBuffer))
        }
    }
}
