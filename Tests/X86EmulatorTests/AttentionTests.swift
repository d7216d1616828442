import Foundation
import Testing
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// The run loop's attention word: a kick or an interrupt raised while a long REP string
/// instruction runs is taken at the next element, not after the instruction (or a
/// 2048-instruction poll interval) is over, and none is lost.
@Suite struct AttentionTests {
    /// Source and destination of a backwards (DF=1, so element-by-element) REP MOVSB of
    /// `count` bytes; the destination's top byte is the first one written.
    static let count: UInt64 = 1_900_000
    static let srcTop: UInt64 = 0x0100_0000, dstTop: UInt64 = 0x01F0_0000

    /// Runs `vcpu.run()` on its own thread and returns its exit once it ends.
    final class Runner: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private var result: Result<VCPUExit, any Error> = .failure(CancellationError())
        init(_ vcpu: EmulatorVCPU) {
            Thread.detachNewThread { [self] in
                result = Result { try vcpu.run() }
                done.signal()
            }
        }
        func wait() throws -> VCPUExit { done.wait(); return try result.get() }
    }

    /// A machine whose code runs `prologue`, then the REP MOVSB at `repAddress`, then
    /// CLD and HLT; the source bytes are 0xAB.
    func machine(prologue: String) throws -> (TestMachine, repAddress: UInt64) {
        let m = try TestMachine()
        try m.setupLongMode()
        try m.memory.write(bytes: [UInt8](repeating: 0xAB, count: Int(Self.count)), at: Self.srcTop - Self.count + 1)
        let pre = try Assembler.assemble(prologue + """

            mov rsi, \(Self.srcTop)
            mov rdi, \(Self.dstTop)
            mov rcx, \(Self.count)
            std
            """)
        try m.load(pre + (try Assembler.assemble("rep movsb\ncld\nhlt\n")))
        return (m, TestMachine.codeBase + UInt64(pre.count))
    }

    /// Waits (without a fixed sleep) until the guest has written the destination's top byte.
    func waitForCopyToStart(_ m: TestMachine) throws {
        let p = try #require(m.memory.hostPointer(Self.dstTop, length: 1))
        // SAFETY: one byte of guest RAM; the vCPU thread writes it once (0 -> 0xAB).
        while p.load(as: UInt8.self) != 0xAB { sched_yield() }
    }

    @Test func kickDuringLongRepMovsStopsBeforeTheCopyEnds() throws {
        let (m, repAddress) = try machine(prologue: "")
        let runner = Runner(m.vcpu)
        try waitForCopyToStart(m)
        m.vcpu.kick()
        let exit = try runner.wait()
        guard case .interrupted = exit else {
            Issue.record("expected .interrupted while the copy runs, got \(exit)")
            return
        }
        let r = m.cpu.registers()
        #expect(r.rcx > 0, "the kick was taken only after the REP MOVSB finished")
        #expect(r.rip == repAddress)
        // Resuming finishes the copy exactly.
        #expect(try m.run().isHalt)
        let after = m.cpu.registers()
        #expect(after.rcx == 0)
        #expect(after.rdi == Self.dstTop &- Self.count)
        var copied = [UInt8](repeating: 0, count: Int(Self.count))
        try copied.withUnsafeMutableBytes { try m.memory.read(into: $0, at: Self.dstTop - Self.count + 1) }
        #expect(copied.allSatisfy { $0 == 0xAB })
    }

    @Test func interruptDuringLongRepMovsIsDeliveredMidCopy() throws {
        // IDT at 0x6000 with a gate for vector 0x40 whose handler records RCX and the
        // interrupted RIP, then stops with IF=0.
        let (m, repAddress) = try machine(prologue: "sti")
        let handler: UInt64 = 0x0010_8000
        try m.load(try Assembler.assemble("mov r15, rcx\nmov r14, [rsp]\ncli\nhlt\n"), at: handler)
        let gateLow = (handler & 0xFFFF) | (0x10 << 16) | (UInt64(0x8E) << 40) | ((handler >> 16) & 0xFFFF) << 48
        try m.memory.write(gateLow, at: 0x6000 + 0x40 * 16)
        try m.memory.write(handler >> 32, at: 0x6000 + 0x40 * 16 + 8)
        var s = m.cpu.specialRegisters()
        s.idt = X86DescriptorTable(base: 0x6000, limit: 0xFFF)
        m.cpu.setSpecialRegisters(s)
        let runner = Runner(m.vcpu)
        try waitForCopyToStart(m)
        m.cpu.apic.post(vector: 0x40, mode: .fixed)
        #expect(try runner.wait().isHalt)
        let r = m.cpu.registers()
        #expect(r.r15 > 0, "the interrupt was taken only after the REP MOVSB finished")
        #expect(r.r14 == repAddress)
    }
}
