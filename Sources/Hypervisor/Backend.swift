import GuestMemory

/// Why `VirtualCPU.run()` returned. Decoding (backend specific) is separate from handling
/// (the VMM's `ExitHandler`), so handling is unit-tested with made-up exits.
///
/// I/O and MMIO exits carry a pointer to the backend's data buffer, as KVM's `kvm_run`
/// does: for a read the handler stores the result there before the next `run()`; for a
/// write it holds the bytes written. `count` > 1 is a string instruction (`rep ins/outs`):
/// the buffer then holds `count` consecutive items of `size` bytes.
public enum VCPUExit: @unchecked Sendable {
    case io(IOExit)
    case mmio(MMIOExit)
    /// HLT with interrupts that cannot wake it in the backend (the VMM decides).
    case halt
    /// Triple fault or another reason the CPU shut down.
    case shutdown(reason: String)
    /// The run was interrupted by `kick()` (or a signal) before or during guest execution.
    case interrupted
    /// The guest asked for a system event (reset / power off) through the backend.
    case systemReset
    case systemShutdown
    /// The backend could not continue; the message names the reason (and RIP when known).
    case failure(String)
}

public struct IOExit: @unchecked Sendable {
    public var port: UInt16
    /// Bytes per item: 1, 2 or 4.
    public var size: Int
    public var count: Int
    public var isWrite: Bool
    // SAFETY: points into a buffer owned by the vCPU (kvm_run page or the emulator's
    // scratch area) of at least size*count bytes; valid until the next run().
    public var data: UnsafeMutableRawPointer

    public init(port: UInt16, size: Int, count: Int = 1, isWrite: Bool, data: UnsafeMutableRawPointer) {
        self.port = port; self.size = size; self.count = count; self.isWrite = isWrite; self.data = data
    }
}

public struct MMIOExit: @unchecked Sendable {
    public var address: UInt64
    /// 1, 2, 4 or 8 bytes.
    public var size: Int
    public var isWrite: Bool
    // SAFETY: an 8-byte buffer owned by the vCPU, valid until the next run().
    public var data: UnsafeMutableRawPointer

    public init(address: UInt64, size: Int, isWrite: Bool, data: UnsafeMutableRawPointer) {
        self.address = address; self.size = size; self.isWrite = isWrite; self.data = data
    }
}

/// Boot-time run state of a vCPU: the boot processor runs, application processors wait
/// for INIT/SIPI from the guest.
public enum VCPUStartState: Sendable {
    case runnable
    case waitingForSIPI
}

/// One virtual CPU of either backend. All methods but `kick()` are called only from the
/// vCPU's own thread (KVM requires it); `kick()` is safe from any thread.
public protocol VirtualCPU: AnyObject, Sendable {
    var index: Int { get }
    func registers() throws -> X86Registers
    func setRegisters(_ regs: X86Registers) throws
    func specialRegisters() throws -> X86SpecialRegisters
    func setSpecialRegisters(_ sregs: X86SpecialRegisters) throws
    /// Enters the guest until the next exit.
    func run() throws -> VCPUExit
    /// Makes a running or about-to-run `run()` return `.interrupted` soon. Any thread.
    func kick()
    /// Finishes the instruction the last `run()` exit left half done, without running any
    /// further guest code, so that the registers and memory are at an instruction boundary
    /// (call before reading state for a pause or a snapshot). After an I/O or MMIO exit
    /// the instruction retires only on the next entry (KVM: KVM_RUN with immediate_exit
    /// set; the software CPU: the instruction is replayed with the value the VMM stored).
    /// Returns nil once nothing is pending, or one more exit the instruction needs (a
    /// string or split access): handle it like any exit, then call again.
    func completePendingExit() throws -> VCPUExit?
}

public extension VirtualCPU {
    func setState(_ state: X86CPUState) throws {
        try setSpecialRegisters(state.sregs)
        try setRegisters(state.regs)
    }
}

/// Where devices' interrupts go: the backend's interrupt controllers (KVM's in-kernel
/// irqchip, or the emulator's user-space PIC/IOAPIC/LAPIC). Safe from any thread.
public protocol InterruptController: AnyObject, Sendable {
    /// Sets the level of a global system interrupt (GSI 0-15 are the ISA IRQs).
    func setIRQ(_ gsi: UInt32, level: Bool)
    /// Delivers a message-signalled interrupt (PCI MSI/MSI-X).
    func signalMSI(address: UInt64, data: UInt32)
}

/// A virtual machine of either backend: guest memory, interrupt controllers, vCPUs.
public protocol VirtualMachineBackend: AnyObject, Sendable {
    /// Human-readable name of the backend ("kvm", "emulator").
    var name: String { get }
    var memory: GuestMemory { get }
    var interrupts: any InterruptController { get }
    func createVCPU(index: Int, startState: VCPUStartState) throws -> any VirtualCPU
}
