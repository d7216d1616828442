import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// XSAVE/XRSTOR/XGETBV/XSETBV, XCR0, CR4.OSXSAVE and CPUID leaf 0xD (level v3; x87, SSE
/// and AVX state).
@Suite struct XSaveTests {
    static let osxsave = "mov rax, cr4\nor eax, 0x40000\nmov cr4, rax\n"
    /// CR4.OSXSAVE and XCR0 = x87 | SSE.
    static let xcr0SSE = osxsave + "xor ecx, ecx\nmov eax, 3\nxor edx, edx\nxsetbv\n"
    static let area: UInt64 = 0x20_0000, other: UInt64 = 0x20_1000

    /// Runs `asm` (then hlt) at level v3 and returns the machine.
    static func run(_ asm: String, level: X86CPULevel = .v3) throws -> TestMachine {
        let m = try TestMachine()
        m.cpu.cpuLevel = level
        try m.setupLongMode()
        try m.load(try Assembler.assemble(asm + "\nhlt"))
        #expect(try m.run().isHalt)
        return m
    }

    @Test func cpuidOffersXSaveForX87AndSSEAtV3Only() {
        func q(_ leaf: UInt32, _ sub: UInt32 = 0, cr4: UInt64 = 0, _ level: X86CPULevel = .v3) -> (UInt32, UInt32, UInt32, UInt32) {
            CPUIDTable.query(leaf: leaf, subleaf: sub, apicID: 0, cr4: cr4, level: level)
        }
        #expect(q(1).2 & (1 << 26) != 0 && q(1, 0, .v2).2 & (1 << 26) == 0)
        #expect(q(1).2 & (1 << 27) == 0 && q(1, cr4: X86Bits.cr4OSXSAVE).2 & (1 << 27) != 0)
        // Subleaf 0: supported bits, size for XCR0 (x87 only at reset; with AVX), size for all.
        #expect(q(0xD) == (7, 576, 832, 0))
        #expect(CPUIDTable.query(leaf: 0xD, subleaf: 0, apicID: 0, cr4: 0, level: .v3, xcr0: 7) == (7, 832, 832, 0))
        #expect(q(0xD, 1) == (1, 0, 0, 0) && q(0xD, 2) == (256, 576, 0, 0) && q(0xD, 3) == (0, 0, 0, 0))
        #expect(q(0xD, 0, .v2) == (0, 0, 0, 0))
    }

    @Test func osxsaveAndXCR0FaultLikeHardware() throws {
        // Without CR4.OSXSAVE: #UD; below v3 setting CR4.OSXSAVE is #GP.
        for insn in ["xgetbv", "xsetbv", "xsave [rsp]", "xrstor [rsp]", "xsaveopt [rsp]"] {
            #expect(try X87Tests.vectorRaised("xor ecx, ecx\nmov eax, 1\nxor edx, edx\nand rsp, -64\n" + insn, level: .v3) == 6, "\(insn)")
        }
        #expect(try X87Tests.vectorRaised(Self.osxsave, level: .v2) == 13)
        #expect(try X87Tests.vectorRaised(Self.osxsave, level: .v3) == nil)
        let pre = Self.osxsave + "xor ecx, ecx\nxor edx, edx\n"
        #expect(try X87Tests.vectorRaised(pre + "mov eax, 3\nxsetbv", level: .v3) == nil)
        #expect(try X87Tests.vectorRaised(pre + "mov eax, 7\nxsetbv", level: .v3) == nil)
        for bad in ["mov eax, 0\nxsetbv", "mov eax, 2\nxsetbv", "mov eax, 5\nxsetbv", "mov eax, 15\nxsetbv", "mov eax, 3\nmov edx, 1\nxsetbv",
                    "mov eax, 3\nmov ecx, 1\nxsetbv", "mov ecx, 1\nxgetbv"] {
            #expect(try X87Tests.vectorRaised(pre + bad, level: .v3) == 13, "\(bad)")
        }
        // The area must be 64-byte aligned; CR0.TS raises #NM.
        let xs = pre + "mov eax, 3\nsub rsp, 1024\nand rsp, -64\n"
        #expect(try X87Tests.vectorRaised(xs + "xsave [rsp]", level: .v3) == nil)
        #expect(try X87Tests.vectorRaised(xs + "xsave [rsp+16]", level: .v3) == 13)
        #expect(try X87Tests.vectorRaised(xs + "xsave [rsp]", cr0Set: X86Bits.cr0TS, level: .v3) == 7)
        #expect(try X87Tests.vectorRaised(xs + "xsaveopt [rsp+16]", level: .v3) == 13)
        #expect(try X87Tests.vectorRaised(xs + "xsaveopt [rsp]", cr0Set: X86Bits.cr0TS, level: .v3) == 7)
    }

    /// XSAVEOPT (offered in CPUID 0xD.1) writes the XSAVE image: x87, SSE and AVX state
    /// and XSTATE_BV, and XRSTOR brings it back.
    @Test func xsaveoptWritesTheXSaveImage() throws {
        let m = try Self.run(Self.osxsave + """
            xor ecx, ecx
            mov eax, 7
            xor edx, edx
            xsetbv
            mov rdi, \(Self.area)
            fldpi
            vpcmpeqb ymm3, ymm3, ymm3
            mov rax, 0x1122334455667788
            vmovq xmm1, rax
            vpbroadcastq ymm9, xmm1
            mov eax, 7
            xsave64 [rdi]
            xsaveopt64 [rdi+0x3000]
            vpxor ymm9, ymm9, ymm9
            fninit
            xrstor64 [rdi+0x3000]
            """)
        let x = try m.memory.readBytes(at: Self.area, count: 832)
        let opt = try m.memory.readBytes(at: Self.area + 0x3000, count: 832)
        #expect(opt == x)
        #expect(opt[512] == 7)
        #expect(AVXStateTests.ymm(m, 9) == [0x1122_3344_5566_7788, 0x1122_3344_5566_7788, 0x1122_3344_5566_7788, 0x1122_3344_5566_7788])
    }

    @Test func xgetbvReadsWhatXsetbvWrote() throws {
        let m = try Self.run(Self.osxsave + "xor ecx, ecx\nxgetbv\nmov r8, rax\nmov eax, 3\nxor edx, edx\nxsetbv\nxgetbv")
        #expect(m.cpu.registers().r8 == 1)
        #expect(m.cpu.registers().rax == 3 && m.cpu.registers().rdx == 0)
    }

    /// The legacy region is the FXSAVE image; XSTATE_BV gets the requested components, the
    /// rest of the header is left alone; XRSTOR brings the state back.
    @Test func xsaveImageIsTheFXSaveImageAndXrstorRestoresIt() throws {
        let m = try Self.run(Self.xcr0SSE + """
            mov rdi, \(Self.area)
            mov qword ptr [rdi+540], 0x5a5a
            fldpi
            fld1
            mov rax, 0x1122334455667788
            movq xmm0, rax
            pinsrq xmm0, rax, 1
            movq xmm9, rax
            mov eax, 3
            xor edx, edx
            xsave64 [rdi]
            fxsave64 [rdi+0x1000]
            fninit
            pxor xmm0, xmm0
            pxor xmm9, xmm9
            xrstor64 [rdi]
            fxsave64 [rdi+0x2000]
            """)
        let x = try m.memory.readBytes(at: Self.area, count: 576)
        let fx = try m.memory.readBytes(at: Self.other, count: 416)
        let after = try m.memory.readBytes(at: Self.area + 0x2000, count: 416)
        #expect(Array(x[0..<416]) == fx)
        #expect(after == fx)
        #expect(x[512] == 3 && x[513..<520].allSatisfy { $0 == 0 })   // XSTATE_BV
        #expect(x[540] == 0x5A && x[541] == 0x5A)     // the header's other bytes untouched
        #expect(m.cpu.xmm[18] == 0x1122_3344_5566_7788)
    }

    @Test func xrstorInitializesComponentsAbsentFromXStateBV() throws {
        let m = try Self.run(Self.xcr0SSE + """
            mov rdi, \(Self.area)
            fld1
            pcmpeqb xmm0, xmm0
            pcmpeqb xmm1, xmm1
            mov dword ptr [rdi+24], 0x1f80
            mov qword ptr [rdi+512], 0
            mov eax, 3
            xrstor [rdi]
            fxsave [rdi+0x1000]
            pcmpeqb xmm1, xmm1
            mov rsi, \(Self.area + 0x400)
            mov dword ptr [rsi+24], 0x1f80
            mov qword ptr [rsi+512], 3
            mov eax, 1
            xrstor [rsi]
            """)
        let fx = try m.memory.readBytes(at: Self.other, count: 416)
        #expect(fx[0] == 0x7F && fx[1] == 0x03 && fx[2] == 0 && fx[4] == 0)   // FCW 0x37F, FSW 0, all empty
        #expect(fx[32..<48].allSatisfy { $0 == 0 })
        #expect(fx[160..<192].allSatisfy { $0 == 0 })                       // xmm0, xmm1 zeroed
        // RFBM = x87 only: the SSE state is left alone.
        #expect(m.cpu.xmm[2] == .max && m.cpu.xmm[3] == .max)
    }

    @Test func xrstorRejectsBadHeaders() throws {
        let pre = Self.xcr0SSE + "sub rsp, 1024\nand rsp, -64\nxsave [rsp]\n"
        #expect(try X87Tests.vectorRaised(pre + "xrstor [rsp]", level: .v3) == nil)
        #expect(try X87Tests.vectorRaised(pre + "mov byte ptr [rsp+512], 7\nxrstor [rsp]", level: .v3) == 13)      // AVX not in XCR0
        #expect(try X87Tests.vectorRaised(pre + "mov byte ptr [rsp+527], 0x80\nxrstor [rsp]", level: .v3) == 13)   // compacted
        #expect(try X87Tests.vectorRaised(pre + "mov byte ptr [rsp+530], 1\nxrstor [rsp]", level: .v3) == 13)      // reserved
        #expect(try X87Tests.vectorRaised(pre + "mov byte ptr [rsp+27], 1\nxrstor [rsp]", level: .v3) == 13)       // MXCSR
        #expect(try X87Tests.vectorRaised(pre + "mov byte ptr [rsp+27], 1\nmov eax, 1\nxrstor [rsp]", level: .v3) == nil)
    }
}
