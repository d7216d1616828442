import Foundation
import GuestMemory
import Synchronization
import Testing
@testable import X86Emulator

/// Two software CPUs on two host threads share one guest memory with no turnstile (each
/// is the only vCPU of its own VM object, so nothing serialises them): LOCK XADD, LOCK INC
/// and an XCHG spinlock guarding a plain increment must lose no update. With the LOCKed
/// instructions as plain host loads and stores (before HostAtomics.swift) the counters
/// came out short or the spinlock deadlocked (the slice bound below catches that).
@Suite struct ParallelLockTests {
    static let rounds = 300_000
    /// 100 times the slices the loop needs (~13 instructions a round).
    static let maxSlices = 100 * 13 * rounds / 100_000
    static let xaddCounter: UInt64 = 0x50_0000, incCounter: UInt64 = 0x50_0040
    static let spinCounter: UInt64 = 0x50_0080, spinLock: UInt64 = 0x50_00C0

    static let source = """
        mov ecx, \(rounds)
    1:
        mov eax, 1
        lock xadd dword ptr [\(xaddCounter)], eax
        lock inc qword ptr [\(incCounter)]
    2:
        mov al, 1
        xchg byte ptr [\(spinLock)], al
        test al, al
        jz 3f
        pause
        jmp 2b
    3:
        mov rdx, qword ptr [\(spinCounter)]
        inc rdx
        mov qword ptr [\(spinCounter)], rdx
        mov byte ptr [\(spinLock)], 0
        dec ecx
        jnz 1b
        hlt
    """

    @Test(.serialized, arguments: [CPUTier.interp, .block, .jit])
    func twoThreadsLoseNoLockedUpdate(tier: CPUTier) throws {
        let memory = try GuestMemory(size: 32 << 20)
        let code = try Assembler.assemble(Self.source)
        let machines = try (0..<2).map { _ in try TestMachine(memory: memory) }
        for m in machines {
            m.cpu.tier = tier
            try m.setupLongMode()
        }
        try machines[0].load(code)
        // Bounded: a spinlock whose XCHG is not atomic can end up held by nobody (a store of
        // 1 landing after the holder's release), and then spins forever.
        let halted = runTogether(machines.map(\.cpu), slices: Self.maxSlices) { $0.run(budget: 100_000) }
        #expect(halted == 2)
        let expected = UInt64(2 * Self.rounds)
        #expect(UInt64(try memory.read(UInt32.self, at: Self.xaddCounter)) == expected, "lock xadd")
        #expect(try memory.read(UInt64.self, at: Self.incCounter) == expected, "lock inc")
        #expect(try memory.read(UInt64.self, at: Self.spinCounter) == expected, "xchg spinlock")
    }
}

/// The APIC ID, LDR and DFR that other threads route by are the published copy, which
/// follows every change the owning vCPU makes.
@Suite struct APICRoutingCopyTests {
    @Test func routingSeesIDAndLogicalDestinationChanges() {
        let apic = LocalAPIC(id: 3)
        #expect(apic.routingID == 3)
        #expect(!apic.matchesLogical(0x01))
        apic.ldr = 0x0400_0000                      // flat model: bit 2
        #expect(apic.matchesLogical(0x04) && !apic.matchesLogical(0x03))
        apic.dfr = 0x0FFF_FFFF                      // cluster model: cluster 0, member bit 2
        apic.ldr = 0x1400_0000                      // cluster 1, member bit 2
        #expect(apic.matchesLogical(0x14) && !apic.matchesLogical(0x04) && !apic.matchesLogical(0x11))
        apic.id = 7
        #expect(apic.routingID == 7)
        apic.reset()
        #expect(!apic.matchesLogical(0x14))
    }
}

/// Runs each CPU on a host thread of its own, all released at once, for at most `slices`
/// calls of `slice` each (a CPU stops early at HLT or at a stop other than the budget or
/// attention); returns how many CPUs halted.
func runTogether(_ cpus: [X86CPU], slices: Int, slice: @escaping @Sendable (X86CPU) -> X86StopReason) -> Int {
    let ready = Atomic<Int>(0), halted = Atomic<Int>(0)
    let group = DispatchGroup()
    let count = cpus.count
    for c in cpus {
        nonisolated(unsafe) let cpu = c
        group.enter()
        Thread {
            ready.add(1, ordering: .sequentiallyConsistent)
            while ready.load(ordering: .sequentiallyConsistent) < count {}   // start together
            for _ in 0..<slices {
                let reason = slice(cpu)
                if reason == .halted { halted.add(1, ordering: .sequentiallyConsistent); break }
                if reason != .budget && reason != .attention { break }
            }
            group.leave()
        }.start()
    }
    group.wait()
    return halted.load(ordering: .sequentiallyConsistent)
}
