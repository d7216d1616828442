#if canImport(Glibc)
import Glibc
#endif
import Devices
import GuestMemory
import Hypervisor
import Synchronization
@testable import VMM

/// A port device that records every access and answers reads from a queue.
final class RecordingPortDevice: PortIODevice, @unchecked Sendable {
    var writes: [(offset: UInt16, size: Int, value: UInt32)] = []
    var reads: [(offset: UInt16, size: Int)] = []
    var answers: [UInt32] = []
    var onWrite: ((UInt32) -> Void)?

    func ioRead(offset: UInt16, size: Int) -> UInt32 {
        reads.append((offset, size))
        return answers.isEmpty ? 0 : answers.removeFirst()
    }
    func ioWrite(offset: UInt16, size: Int, value: UInt32) {
        writes.append((offset, size, value))
        onWrite?(value)
    }
}

final class RecordingMMIODevice: MMIODevice, @unchecked Sendable {
    var writes: [(offset: UInt64, size: Int, value: UInt64)] = []
    var readValue: UInt64 = 0
    func mmioRead(offset: UInt64, size: Int) -> UInt64 { readValue }
    func mmioWrite(offset: UInt64, size: Int, value: UInt64) { writes.append((offset, size, value)) }
}

/// A data buffer like kvm_run's I/O area.
final class ExitBuffer: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    init(bytes: [UInt8] = []) {
        pointer = .allocate(byteCount: 4096, alignment: 8)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        for (i, b) in bytes.enumerated() { pointer.storeBytes(of: b, toByteOffset: i, as: UInt8.self) }
    }
    deinit { pointer.deallocate() }
    func bytes(_ n: Int) -> [UInt8] { (0..<n).map { pointer.load(fromByteOffset: $0, as: UInt8.self) } }
}

/// A vCPU whose `run()` plays a script. `kick()` behaves like KVM's immediate_exit: a
/// kick before or during run makes it return `.interrupted`.
final class FakeVCPU: VirtualCPU, @unchecked Sendable {
    enum Step { case exit(VCPUExit), spinUntilKicked, fail(String) }
    let index: Int
    private let script: @Sendable (Int) -> Step
    private let kicked = Atomic<Bool>(false)
    let runs = Atomic<Int>(0)
    let buffer = ExitBuffer()
    private let stateLock = ConditionLock()
    private var _state = X86CPUState()
    var lastState: X86CPUState { stateLock.withLock { _state } }

    init(index: Int, script: @escaping @Sendable (Int) -> Step) {
        self.index = index; self.script = script
    }

    func registers() throws -> X86Registers { lastState.regs }
    func setRegisters(_ regs: X86Registers) throws { stateLock.withLock { _state.regs = regs } }
    func specialRegisters() throws -> X86SpecialRegisters { lastState.sregs }
    func setSpecialRegisters(_ sregs: X86SpecialRegisters) throws { stateLock.withLock { _state.sregs = sregs } }

    func run() throws -> VCPUExit {
        let n = runs.add(1, ordering: .relaxed).newValue
        if kicked.exchange(false, ordering: .acquiringAndReleasing) { return .interrupted }
        switch script(n) {
        case let .exit(e): return e
        case let .fail(why): throw VMMError.machine(why)
        case .spinUntilKicked:
            while !kicked.exchange(false, ordering: .acquiringAndReleasing) { usleep(200) }
            return .interrupted
        }
    }

    func kick() { kicked.store(true, ordering: .releasing) }

    /// Exits `completePendingExit()` hands out, first one first (an instruction that needs
    /// more exits to finish); `completionCalls` counts its calls.
    let completionScript = Mutex<[VCPUExit]>([])
    let completionCalls = Atomic<Int>(0)
    func completePendingExit() throws -> VCPUExit? {
        completionCalls.add(1, ordering: .relaxed)
        return completionScript.withLock { $0.isEmpty ? nil : $0.removeFirst() }
    }
}

final class FakeBackend: VirtualMachineBackend, @unchecked Sendable {
    let name = "fake"
    let memory: GuestMemory
    let interrupts: any InterruptController = RecordingInterruptController()
    let makeVCPU: @Sendable (Int) -> FakeVCPU
    init(memory: GuestMemory, makeVCPU: @escaping @Sendable (Int) -> FakeVCPU) {
        self.memory = memory; self.makeVCPU = makeVCPU
    }
    func createVCPU(index: Int, startState: VCPUStartState) throws -> any VirtualCPU { makeVCPU(index) }
}

/// A temporary file with the given bytes, removed by the caller.
func temporaryFile(_ bytes: [UInt8], name: String = "vmmtest") -> String {
    var template = Array("/tmp/\(name).XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// A minimal multiboot "kernel": the header magic, flags and checksum.
func fakeMultibootKernel() -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: 64)
    let magic: UInt32 = 0x1BAD_B002, flags: UInt32 = 0x0001_0000
    let words = [magic, flags, 0 &- (magic &+ flags)]
    for (i, w) in words.enumerated() { for b in 0..<4 { bytes[16 + i * 4 + b] = UInt8(truncatingIfNeeded: w >> (8 * b)) } }
    return bytes
}
