import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// SSE/SSE2 floating point against the host: each case loads a generated MXCSR (every
/// rounding mode, DAZ and FTZ on and off, all exceptions masked, some flags already set),
/// runs on special operands (±0, denormals, quiet and signalling NaNs, infinities, max/min,
/// integer boundaries) and stores MXCSR back, so results, flags and MXCSR compare bit for bit.
enum SSECases {
    static func record(double: Bool) -> (inout [UInt8], Int, inout SplitMix) -> Void {
        { rec, base, g in
            let csr = UInt32(0x1F80) | UInt32(g.next() % 4) << 13 | (g.next() % 2 == 0 ? 0x40 : 0)
                | (g.next() % 2 == 0 ? 0x8000 : 0) | (g.next() % 4 == 0 ? UInt32(g.next() & 0x3F) : 0)
            FloatGen.put(csr, &rec, base + 136)
            for off in stride(from: 256, to: 320, by: double ? 8 : 4) {
                if double { FloatGen.put(FloatGen.float64(&g), &rec, base + off) }
                else { FloatGen.put(FloatGen.float32(&g), &rec, base + off) }
            }
        }
    }

    static func sse(_ insn: String, double: Bool) -> DiffCase {
        // The host's MXCSR is put back to the default afterwards (other tests run natively on this thread).
        DiffCase(asm: "ldmxcsr [r15+136]\n\(insn)\nstmxcsr [r15+136]\nmov dword ptr [r15+140], 0x1f80\nldmxcsr [r15+140]", flags: allF, record: record(double: double))
    }

    static var arithmetic: [DiffCase] {
        var c: [DiffCase] = []
        for op in ["add", "sub", "mul", "div", "min", "max", "sqrt"] {
            c.append(sse("\(op)ss xmm0, xmm1", double: false)); c.append(sse("\(op)ps xmm0, xmm1", double: false))
            c.append(sse("\(op)sd xmm0, xmm1", double: true)); c.append(sse("\(op)pd xmm0, xmm1", double: true))
        }
        c += [sse("addss xmm0, [rsi]", double: false), sse("mulsd xmm1, [rsi+8]", double: true),
              sse("divps xmm0, [rsi+16]", double: false), sse("subpd xmm1, [rsi]", double: true)]
        for pred in ["eq", "lt", "le", "unord", "neq", "nlt", "nle", "ord"] {
            c.append(sse("cmp\(pred)ss xmm0, xmm1", double: false)); c.append(sse("cmp\(pred)pd xmm0, xmm1", double: true))
        }
        c.append(sse("cmpltps xmm0, xmm1", double: false)); c.append(sse("cmplesd xmm0, xmm1", double: true))
        c.append(sse("maskmovdqu xmm0, xmm1", double: false))   // SSE2 byte store, was #UD
        return c
    }

    static var conversions: [DiffCase] {
        [sse("cvtss2sd xmm0, xmm1", double: false), sse("cvtsd2ss xmm0, xmm1", double: true),
         sse("cvtps2pd xmm0, xmm1", double: false), sse("cvtpd2ps xmm0, xmm1", double: true),
         sse("cvtdq2ps xmm0, xmm1", double: false), sse("cvtps2dq xmm0, xmm1", double: false),
         sse("cvttps2dq xmm0, xmm1", double: false), sse("cvtdq2pd xmm0, xmm1", double: false),
         sse("cvtpd2dq xmm0, xmm1", double: true), sse("cvttpd2dq xmm0, xmm1", double: true),
         sse("cvtss2si eax, xmm1\ncvttss2si rcx, xmm0", double: false),
         sse("cvtsd2si rax, xmm1\ncvttsd2si ecx, xmm0", double: true),
         sse("cvtsi2ss xmm0, eax\ncvtsi2sd xmm1, rbx", double: true),
         sse("cvtsi2ss xmm0, rax\ncvtsi2sd xmm1, ecx", double: false),
         sse("cvtss2sd xmm0, [rsi]\ncvtsd2si eax, [rsi+8]", double: false),
         sse("ucomiss xmm0, xmm1", double: false), sse("comiss xmm0, xmm1", double: false),
         sse("ucomisd xmm0, xmm1", double: true), sse("comisd xmm1, [rsi]", double: true)]
    }

    /// The reciprocal estimates (F3 0F 53 raised #UD before): results follow the host CPU.
    static var estimates: [DiffCase] {
        [sse("rcpss xmm0, xmm1", double: false), sse("rcpps xmm0, xmm1", double: false),
         sse("rsqrtss xmm0, xmm1", double: false), sse("rsqrtps xmm0, xmm1", double: false),
         sse("rcpss xmm1, [rsi]", double: false), sse("rsqrtps xmm0, [rsi]", double: false)]
    }
}

extension SSECases {
    static var sse3: [DiffCase] {
        [sse("addsubps xmm0, xmm1", double: false), sse("addsubpd xmm0, xmm1", double: true),
         sse("haddps xmm0, xmm1", double: false), sse("haddpd xmm0, xmm1", double: true),
         sse("hsubps xmm0, xmm1", double: false), sse("hsubpd xmm1, [rsi]", double: true),
         sse("movsldup xmm0, xmm1\nmovshdup xmm1, [rsi]", double: false),
         sse("movddup xmm0, xmm1\nmovddup xmm1, [rsi+8]", double: true),
         sse("lddqu xmm0, [rsi+3]", double: false)]
    }
}

@Suite struct SSEHostTests {
    @Test func sse3MatchesTheHost() throws { try DifferentialTests().check(SSECases.sse3, seed: 83) }

    @Test func sse3IsUDBelowV2() throws {
        for insn in ["addsubps xmm0, xmm1", "haddpd xmm0, xmm1", "hsubps xmm0, xmm1", "movsldup xmm0, xmm1",
                     "movshdup xmm0, xmm1", "movddup xmm0, xmm1", "lddqu xmm0, [rsp]"] {
            #expect(try X87Tests.vectorRaised(insn, level: .baseline) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, level: .v2) == nil, "\(insn)")
        }
    }

    @Test func arithmeticResultsAndFlagsMatchTheHost() throws { try DifferentialTests().check(SSECases.arithmetic, seed: 80) }
    @Test func conversionsMatchTheHost() throws { try DifferentialTests().check(SSECases.conversions, seed: 81) }
    @Test func reciprocalEstimatesMatchTheHost() throws { try DifferentialTests().check(SSECases.estimates, seed: 82) }

    @Test func unmaskedExceptionsFault() throws {
        // Divide by zero with ZE unmasked: #XM with CR4.OSXMMEXCPT, #UD without.
        let setup = "sub rsp, 16\nmov dword ptr [rsp], 0x1d80\nldmxcsr [rsp]\nmov eax, 0x3f800000\nmovd xmm0, eax\nxorps xmm1, xmm1\n"
        #expect(try X87Tests.vectorRaised(setup + "divss xmm0, xmm1") == 19)
        #expect(try X87Tests.vectorRaised(setup + "divss xmm0, xmm1", cr4Clear: X86Bits.cr4OSXMMEXCPT) == 6)
        // Masked (the default MXCSR): no fault; the flag is set and the result is infinity.
        let m = try TestMachine()
        try m.setupLongMode()
        try m.load(try Assembler.assemble("sub rsp, 16\nmov eax, 0x3f800000\nmovd xmm0, eax\nxorps xmm1, xmm1\ndivss xmm0, xmm1\nstmxcsr [rsp]\nmov ebx, [rsp]\nmovd ecx, xmm0\nhlt"))
        #expect(try m.run().isHalt)
        let r = m.cpu.registers()
        #expect(r.rbx & 0x3F == 0x4)
        #expect(r.rcx & 0xFFFF_FFFF == 0x7F80_0000)
        // An unmasked fault leaves the destination unchanged.
        #expect(try X87Tests.vectorRaised(setup + "sqrtss xmm0, xmm1") == nil)
    }
}
