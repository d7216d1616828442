import Testing
import Foundation
@testable import X86Emulator

/// A CPU-bound guest loop for bench/emulator-boot.sh (instructions per second). Runs only
/// with SWIFTVMM_BENCH=1; benchmarks never assert timings.
@Suite struct BenchmarkTests {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["SWIFTVMM_BENCH"] == "1", "a benchmark: set SWIFTVMM_BENCH=1"))
    func cpuBoundLoop() throws {
        let m = try TestMachine()
        try m.setupLongMode()
        let iterations = 25_000_000
        try m.load(try Assembler.assemble("""
            mov rcx, \(iterations)
            xor eax, eax
            lea rsi, [rip + 2f]
        1:  add rax, rcx
            mov rdx, [rsi]
            xor rdx, rax
            mov [rsi], rdx
            dec rcx
            jnz 1b
            hlt
        2:  .quad 0
        """))
        func cpuSeconds() -> Double {
            var ts = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        }
        let start = Date(), cpuStart = cpuSeconds()
        let exit = try m.run()
        let seconds = Date().timeIntervalSince(start), cpu = cpuSeconds() - cpuStart
        #expect(exit.isHalt)
        let n = Double(m.vcpu.instructionCount)
        print("cpuBoundLoop: \(m.vcpu.instructionCount) instructions in \(String(format: "%.2f", seconds)) s = \(String(format: "%.1f", n / seconds / 1e6)) MIPS wall, \(String(format: "%.1f", n / cpu / 1e6)) MIPS per CPU-second")
    }
}
