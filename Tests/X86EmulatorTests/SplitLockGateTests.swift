import Foundation
import GuestMemory
import Synchronization
import Testing
@testable import X86Emulator

/// Split locks in parallel mode: two CPUs on two threads share one guest memory and one
/// `SplitLockGate` (held shared while executing, as `EmulatorVCPU.run` does in parallel
/// mode). LOCKed operands that cross an 8-byte boundary or a page cannot be host atomics;
/// they run with the other CPU stopped, and no update is lost.
@Suite struct SplitLockGateTests {
    static let rounds = 5_000
    static let acrossWord: UInt64 = 0x50_0006    // dword at 6..9: crosses an 8-byte boundary
    static let acrossPage: UInt64 = 0x50_0FFE    // dword at 0xFFE..0x1001: crosses a page
    static let acrossWord8: UInt64 = 0x50_2044   // qword at 4..11

    static let source = """
        mov ecx, \(rounds)
    1:
        mov eax, 1
        lock xadd dword ptr [\(acrossWord)], eax
        lock add dword ptr [\(acrossPage)], 1
        lock inc qword ptr [\(acrossWord8)]
        dec ecx
        jnz 1b
        hlt
    """

    @Test func splitLocksStopTheOtherCPU() throws {
        let memory = try GuestMemory(size: 32 << 20)
        let code = try Assembler.assemble(Self.source)
        let gate = SplitLockGate()
        let machines = try (0..<2).map { _ in try TestMachine(memory: memory) }
        for m in machines {
            try m.setupLongMode()
            m.cpu.splitLockGate = gate
        }
        try machines[0].load(code)
        // Short slices: a split lock waits for the other CPU's slice to end.
        let halted = runTogether(machines.map(\.cpu), slices: Self.rounds * 100) { cpu in
            gate.enterShared()
            defer { gate.leaveShared() }
            return cpu.run(budget: 500)
        }
        #expect(halted == 2)
        let expected = UInt64(2 * Self.rounds)
        #expect(UInt64(try memory.read(UInt32.self, at: Self.acrossWord)) == expected, "lock xadd across a word")
        #expect(UInt64(try memory.read(UInt32.self, at: Self.acrossPage)) == expected, "lock add across a page")
        #expect(try memory.read(UInt64.self, at: Self.acrossWord8) == expected, "lock inc across a word")
        #expect(gate.exclusiveSections == 3 * Int(expected))
    }

    @Test func withoutParallelVCPUsThereIsNoGate() throws {
        let m = try TestMachine()
        #expect(m.cpu.splitLockGate == nil)
    }
}
