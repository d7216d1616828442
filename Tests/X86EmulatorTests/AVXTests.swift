import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// AVX/AVX2/FMA/F16C against the host CPU. Each case loads ymm0-2 from the record's
/// generated memory (96 bytes at rsi), runs, and stores ymm0-2 whole to the rdi area, so
/// the upper halves (zeroed by VEX.128, kept by legacy SSE) are compared too; float cases
/// load a generated MXCSR (every rounding mode, DAZ/FTZ) and store it back.
enum AVXCases {
    static let hostHasAVX = HostFloat.hostHasAVX
    static let load = "vmovdqu ymm0, [rsi]\nvmovdqu ymm1, [rsi+32]\nvmovdqu ymm2, [rsi+64]\n"
    static let store = "\nvmovdqu [rdi], ymm0\nvmovdqu [rdi+32], ymm1\nvmovdqu [rdi+64], ymm2\nvzeroupper"

    static func int(_ insn: String) -> DiffCase {
        DiffCase(asm: load + insn + store, flags: allF, record: LaneGen.edges(dwords: true))
    }

    /// Float lanes (specials) in xmm0/1 and the whole rsi area, and a generated MXCSR.
    static func float(_ insn: String, double: Bool) -> DiffCase {
        let base = SSECases.record(double: double)
        return DiffCase(asm: "ldmxcsr [r15+136]\n" + load + insn + store + "\nstmxcsr [r15+136]\nmov dword ptr [r15+140], 0x1f80\nldmxcsr [r15+140]",
                        flags: allF, record: { rec, b, g in
                            base(&rec, b, &g)
                            for off in stride(from: 320, to: 384, by: double ? 8 : 4) {
                                if double { FloatGen.put(FloatGen.float64(&g), &rec, b + off) } else { FloatGen.put(FloatGen.float32(&g), &rec, b + off) }
                            }
                        })
    }

    /// Shift counts: the rsi area's third quadword (ymm0 bits 191:128 and [rsi+16]) and the
    /// low quadword of ymm2 ([rsi+64]) made small.
    static func shift(_ insn: String) -> DiffCase {
        DiffCase(asm: load + insn + store, flags: allF, record: { rec, b, g in
            LaneGen.edges(dwords: true)(&rec, b, &g)
            for off in [304, 352] { FloatGen.put(UInt64(g.next() % 70), &rec, b + off) }
        })
    }

    static let binary = ["vpaddb", "vpaddw", "vpaddd", "vpaddq", "vpsubb", "vpsubw", "vpsubd", "vpsubq", "vpaddsb", "vpaddsw",
                         "vpaddusb", "vpaddusw", "vpsubsb", "vpsubsw", "vpsubusb", "vpsubusw", "vpmullw", "vpmulhw", "vpmulhuw",
                         "vpmuludq", "vpmaddwd", "vpsadbw", "vpavgb", "vpavgw", "vpminub", "vpminsw", "vpmaxub", "vpmaxsw",
                         "vpand", "vpandn", "vpor", "vpxor", "vpcmpeqb", "vpcmpeqw", "vpcmpeqd", "vpcmpeqq", "vpcmpgtb",
                         "vpcmpgtw", "vpcmpgtd", "vpcmpgtq", "vpunpcklbw", "vpunpckhbw", "vpunpcklwd", "vpunpckhwd",
                         "vpunpckldq", "vpunpckhdq", "vpunpcklqdq", "vpunpckhqdq", "vpacksswb", "vpackssdw", "vpackuswb",
                         "vpackusdw", "vpshufb", "vphaddw", "vphaddd", "vphaddsw", "vphsubw", "vphsubd", "vphsubsw",
                         "vpmaddubsw", "vpmulhrsw", "vpsignb", "vpsignw", "vpsignd", "vpmuldq", "vpmulld", "vpminsb",
                         "vpminsd", "vpminuw", "vpminud", "vpmaxsb", "vpmaxsd", "vpmaxuw", "vpmaxud", "vunpcklps",
                         "vunpckhps", "vunpcklpd", "vunpckhpd", "vandps", "vandnpd", "vorps", "vxorpd", "vpermilps", "vpermilpd"]

    static var integer: [DiffCase] {
        var c: [DiffCase] = []
        for op in binary {
            c.append(int("\(op) ymm0, ymm1, ymm2"))
            c.append(int("\(op) xmm1, xmm2, [rsi+8]"))
        }
        c += ["vpermd ymm0, ymm1, ymm2", "vpermps ymm1, ymm2, [rsi+8]", "vpermd ymm2, ymm0, ymm0"].map(int)
        for op in ["vpabsb", "vpabsw", "vpabsd"] { c += [int("\(op) ymm0, ymm1"), int("\(op) xmm1, [rsi+4]")] }
        for k in ["bw", "bd", "bq", "wd", "wq", "dq"] {
            c.append(int("vpmovsx\(k) ymm0, xmm1\nvpmovzx\(k) ymm1, [rsi+3]\nvpmovzx\(k) xmm2, xmm2"))
        }
        c += ["vpbroadcastb ymm0, xmm1\nvpbroadcastw xmm1, [rsi+5]\nvpbroadcastd ymm2, [rsi+9]",
              "vpbroadcastq ymm0, xmm2\nvpbroadcastd xmm1, xmm1\nvpbroadcastw ymm2, xmm0",
              "vpbroadcastb xmm0, [rsi+77]\nvbroadcastss ymm1, xmm2\nvbroadcastsd ymm2, [rsi+1]",
              "vbroadcasti128 ymm0, [rsi+16]\nvbroadcastf128 ymm1, [rsi+40]\nvbroadcastss xmm2, [rsi+3]"].map(int)
        for imm in [0, 0x1B, 0xE4, 0x93, 0xFF] {
            c.append(int("vpshufd ymm0, ymm1, \(imm)\nvpshufhw ymm1, ymm2, \(imm)\nvpshuflw xmm2, [rsi+4], \(imm)"))
            c.append(int("vpermq ymm0, ymm1, \(imm)\nvpermpd ymm1, [rsi+8], \(imm)\nvpermilps ymm2, ymm2, \(imm)"))
            c.append(int("vshufps ymm0, ymm1, ymm2, \(imm)\nvshufpd ymm1, ymm2, [rsi+16], \(imm)\nvpermilpd ymm2, ymm0, \(imm)"))
            c.append(int("vpblendd ymm0, ymm1, ymm2, \(imm)\nvpblendw ymm1, ymm2, [rsi+8], \(imm)\nvblendps ymm2, ymm0, ymm1, \(imm)"))
            c.append(int("vblendpd ymm0, ymm1, ymm2, \(imm & 15)\nvmpsadbw ymm1, ymm2, ymm0, \(imm & 0x3F)\nvblendps xmm2, xmm0, xmm1, \(imm & 15)"))
            c.append(int("vperm2i128 ymm0, ymm1, ymm2, \(imm)\nvperm2f128 ymm1, ymm2, [rsi+8], \(imm)"))
        }
        for imm in [0, 1, 3, 8, 15, 16, 17, 31, 32, 255] {
            c.append(int("vpalignr ymm0, ymm1, ymm2, \(imm)\nvpsrldq ymm1, ymm2, \(imm)\nvpslldq xmm2, xmm0, \(imm)"))
        }
        for n in [0, 1, 7, 15, 16, 31, 32, 63, 64, 200] {
            c.append(int("vpsrlw ymm0, ymm1, \(n)\nvpsrad ymm1, ymm2, \(n)\nvpsllq xmm2, xmm0, \(n)"))
            c.append(int("vpsraw ymm0, ymm1, \(n)\nvpsrld ymm1, ymm2, \(n)\nvpsrlq ymm2, ymm0, \(n)\nvpsllw ymm0, ymm0, \(n)\nvpslld ymm1, ymm1, \(n)"))
        }
        for op in ["vpsrlw", "vpsrld", "vpsrlq", "vpsraw", "vpsrad", "vpsllw", "vpslld", "vpsllq"] {
            c.append(shift("\(op) ymm1, ymm1, xmm2\n\(op) ymm0, ymm0, [rsi+16]"))
        }
        for op in ["vpsrlvd", "vpsrlvq", "vpsravd", "vpsllvd", "vpsllvq"] {
            c.append(shift("vpand ymm2, ymm2, [rsi]\n\(op) ymm0, ymm1, ymm2\n\(op) xmm1, xmm0, [rsi+16]"))
        }
        c.append(shift("vpsrlvq ymm0, ymm1, ymm2\nvpsllvd ymm1, ymm0, ymm1"))
        c += gathers
        c += ["vpblendvb ymm1, ymm1, ymm2, ymm0\nvblendvps ymm2, ymm0, [rsi+4], ymm1\nvblendvpd xmm0, xmm1, xmm2, xmm0"].map(int)
        return c
    }

    /// Gathers: indices masked to 0-15 so every element stays in the 96-byte rsi area;
    /// ymm1's sign bits choose the elements (and it ends zero); xmm4 as the index (SIB
    /// index field 100) too.
    static var gathers: [DiffCase] {
        let d = "mov eax, 15\nvmovd xmm3, eax\nvpbroadcastd ymm3, xmm3\nvpand ymm2, ymm2, ymm3\n"
        let q = "mov eax, 15\nvmovq xmm3, rax\nvpbroadcastq ymm3, xmm3\nvpand ymm2, ymm2, ymm3\n"
        return [d + "vpgatherdd ymm0, [rsi+ymm2*4], ymm1", d + "vpgatherdd xmm0, [rsi+xmm2*2+8], xmm1",
                d + "vpgatherdq ymm0, [rsi+xmm2*4], ymm1", d + "vgatherdpd xmm0, [rsi+xmm2*1+3], xmm1",
                d + "vgatherdps ymm0, [rsi+ymm2*4+4], ymm1", d + "vmovdqa ymm4, ymm2\nvpgatherdd ymm0, [rsi+ymm4*4], ymm1",
                q + "vpgatherqd xmm0, [rsi+ymm2*4], xmm1", q + "vpgatherqd xmm0, [rsi+xmm2*4+1], xmm1",
                q + "vpgatherqq ymm0, [rsi+ymm2*2+16], ymm1", q + "vgatherqps xmm0, [rsi+ymm2*4], xmm1",
                q + "vgatherqpd xmm0, [rsi+xmm2*4], xmm1", q + "vmovdqa ymm4, ymm2\nvgatherqpd ymm0, [rsi+ymm4*4], ymm1"].map(int)
    }

    static var movesAndFlags: [DiffCase] {
        var c: [DiffCase] = []
        c += ["vmovdqu ymm0, [rsi+3]\nvmovdqu [rdi+96], xmm1\nvmovups xmm2, [rsi+5]",
              "vmovdqu [rdi+97], ymm2\nvmovupd ymm1, ymm0\nvmovaps ymm2, ymm1\nvmovdqa xmm0, xmm0",
              "vmovd xmm0, eax\nvmovq xmm1, rbx\nvmovd ecx, xmm2\nvmovq rdx, xmm1\nvmovd [rdi+100], xmm2",
              "vmovq xmm0, xmm1\nvmovq xmm2, [rsi+8]\nvmovq [rdi+96], xmm1",
              "vmovss xmm0, xmm1, xmm2\nvmovsd xmm1, xmm2, xmm0\nvmovss xmm2, [rsi+4]\nvmovsd [rdi+96], xmm0",
              "vmovlps xmm0, xmm1, [rsi+8]\nvmovhps xmm1, xmm2, [rsi]\nvmovhlps xmm2, xmm0, xmm1\nvmovhpd [rdi+96], xmm0",
              "vmovlhps xmm0, xmm1, xmm2\nvmovlpd xmm1, xmm0, [rsi+3]\nvmovhpd xmm2, xmm1, [rsi+40]\nvmovlps [rdi+100], xmm2",
              "vmovddup ymm0, ymm1\nvmovsldup ymm1, [rsi+8]\nvmovshdup xmm2, xmm0\nvmovddup xmm1, [rsi+4]",
              "vlddqu ymm0, [rsi+1]\nvlddqu xmm1, [rsi+7]",
              "vinserti128 ymm0, ymm1, xmm2, 1\nvinsertf128 ymm1, ymm2, [rsi+8], 0\nvextracti128 xmm2, ymm0, 1\nvextractf128 [rdi+96], ymm1, 1",
              "vpinsrb xmm0, xmm1, eax, 5\nvpinsrw xmm1, xmm2, [rsi+3], 7\nvpinsrd xmm2, xmm0, ebx, 2\nvpinsrq xmm0, xmm0, rcx, 1",
              "vpextrb eax, xmm1, 9\nvpextrw ecx, xmm2, 3\nvpextrd [rdi+96], xmm0, 3\nvpextrq rdx, xmm1, 1\nvextractps ebx, xmm2, 2",
              "vinsertps xmm0, xmm1, xmm2, 0x9c\nvinsertps xmm1, xmm2, [rsi+4], 0x31",
              "vmaskmovps ymm0, ymm1, [rsi+8]\nvmaskmovpd xmm1, xmm2, [rsi]\nvpmaskmovd ymm2, ymm0, [rsi+4]",
              "vpmaskmovq ymm0, ymm1, [rsi+16]\nvmaskmovps [rdi+96], ymm2, ymm0\nvpmaskmovq [rdi+100], xmm1, xmm2",
              "vpmaskmovd [rdi+96], ymm1, ymm0\nvmaskmovpd [rdi+64], ymm2, ymm1",
              "vzeroupper", "vzeroall", "vpaddb xmm0, xmm1, xmm2\nvzeroupper\nvpaddb ymm1, ymm1, ymm0",
              // Legacy SSE keeps bits 255:128; VEX.128 zeroes them.
              "movdqa xmm0, xmm1\npaddb xmm2, xmm1\naddps xmm1, xmm0\npshufb xmm0, xmm2",
              "vpor xmm0, xmm0, xmm0\nvmovaps xmm1, xmm1\nvpxor xmm2, xmm2, xmm2",
              "vptest ymm0, ymm1", "vptest ymm0, ymm0\nsetz al\nsetc bl\nvptest xmm2, [rsi]", "vpxor ymm2, ymm2, ymm2\nvptest ymm2, ymm1",
              "vpcmpeqb ymm2, ymm2, ymm2\nvptest ymm2, ymm1", "vpandn ymm2, ymm0, ymm1\nvptest ymm0, ymm2",
              "vtestps ymm0, ymm1", "vtestpd xmm1, [rsi]", "vtestps ymm2, ymm2",
              "vpmovmskb eax, ymm0\nvpmovmskb ecx, xmm1\nvmovmskps edx, ymm2\nvmovmskpd ebx, ymm1\nvmovmskps r8d, xmm0",
              "vpcmpeqb ymm0, ymm0, [rsi+1]\nvpmovmskb eax, ymm0\nvpminub ymm1, ymm1, ymm2\nvpcmpeqb ymm1, ymm1, ymm2\nvpmovmskb ecx, ymm1",
              "vpcmpistri xmm0, xmm1, 0x0c\nvpcmpestrm xmm1, [rsi], 0x44"].map(int)
        return c
    }

    static var floats: [DiffCase] {
        var c: [DiffCase] = []
        for d in [false, true] {
            let s = d ? "d" : "s"
            for op in ["add", "sub", "mul", "div", "min", "max"] {
                c.append(float("v\(op)p\(s) ymm0, ymm1, ymm2\nv\(op)p\(s) xmm1, xmm2, [rsi+16]\nv\(op)s\(s) xmm2, xmm0, xmm1", double: d))
                c.append(float("v\(op)s\(s) xmm0, xmm1, [rsi+8]", double: d))
            }
            c.append(float("vsqrtp\(s) ymm0, ymm1\nvsqrts\(s) xmm1, xmm2, xmm0\nvsqrtp\(s) xmm2, [rsi+32]", double: d))
            c.append(float("vaddsubp\(s) ymm0, ymm1, ymm2\nvhaddp\(s) ymm1, ymm2, ymm0\nvhsubp\(s) xmm2, xmm0, [rsi]", double: d))
            for imm in 0..<32 { c.append(float("vcmpp\(s) ymm0, ymm1, ymm2, \(imm)\nvcmps\(s) xmm1, xmm2, xmm0, \(imm)", double: d)) }
            for imm in [0, 1, 2, 3, 4, 8, 9, 12, 0x13] {
                c.append(float("vroundp\(s) ymm0, ymm1, \(imm)\nvrounds\(s) xmm1, xmm2, xmm0, \(imm)", double: d))
            }
            c.append(float("vucomis\(s) xmm0, xmm1", double: d)); c.append(float("vcomis\(s) xmm1, [rsi+8]", double: d))
            for fma in ["vfmadd", "vfmsub", "vfnmadd", "vfnmsub", "vfmaddsub", "vfmsubadd"] {
                for order in ["132", "213", "231"] {
                    c.append(float("\(fma)\(order)p\(s) ymm0, ymm1, ymm2\n\(fma)\(order)p\(s) xmm1, xmm2, [rsi+8]", double: d))
                    // Scalar forms: not for FMADDSUB/FMSUBADD.
                    if fma.count <= 7 { c.append(float("\(fma)\(order)s\(s) xmm0, xmm1, xmm2\n\(fma)\(order)s\(s) xmm2, xmm0, [rsi+4]", double: d)) }
                }
            }
        }
        c += [float("vrcpps ymm0, ymm1\nvrsqrtps xmm1, xmm2\nvrcpss xmm2, xmm0, xmm1\nvrsqrtss xmm0, xmm1, [rsi]", double: false),
              float("vdpps ymm0, ymm1, ymm2, 0xf1\nvdpps xmm1, xmm2, [rsi], 0x3f\nvdppd xmm2, xmm0, xmm1, 0x31", double: false),
              float("vcvtps2pd ymm0, xmm1\nvcvtps2pd xmm1, [rsi+4]\nvcvtpd2ps xmm2, ymm2", double: false),
              float("vcvtpd2ps xmm0, ymm1\nvcvtpd2ps xmm1, xmm2\nvcvtpd2ps xmm2, ymmword ptr [rsi]", double: true),
              float("vcvtdq2ps ymm0, ymm1\nvcvtps2dq ymm1, ymm2\nvcvttps2dq xmm2, [rsi+4]", double: false),
              float("vcvtdq2pd ymm0, xmm1\nvcvtpd2dq xmm1, ymm2\nvcvttpd2dq xmm2, ymm0\nvcvttpd2dq xmm0, xmmword ptr [rsi]", double: true),
              float("vcvtss2sd xmm0, xmm1, xmm2\nvcvtsd2ss xmm1, xmm2, [rsi+8]", double: true),
              float("vcvtsd2ss xmm0, xmm1, xmm2\nvcvtss2sd xmm1, xmm2, [rsi+4]", double: false),
              float("vcvtsi2sd xmm0, xmm1, rax\nvcvtsi2ss xmm1, xmm2, ebx\nvcvtsi2ss xmm2, xmm0, rcx", double: true),
              float("vcvtss2si eax, xmm1\nvcvttss2si rcx, xmm2\nvcvtsd2si rdx, xmm0\nvcvttsd2si ebx, [rsi+8]", double: false),
              float("vcvtsd2si eax, xmm1\nvcvttsd2si rcx, xmm2", double: true),
              float("vcvtph2ps ymm0, xmm1\nvcvtph2ps xmm1, [rsi+4]\nvcvtph2ps ymm2, [rsi+16]", double: false)]
        for imm in [0, 1, 2, 3, 4, 7, 0xF9] {
            c.append(float("vcvtps2ph xmm0, ymm1, \(imm)\nvcvtps2ph xmm1, xmm2, \(imm)\nvcvtps2ph [rdi+96], ymm2, \(imm)", double: false))
        }
        return c
    }
}

@Suite struct AVXTests {
    static let host = AVXCases.hostHasAVX

    @Test(.enabled(if: host, "the host CPU lacks AVX2/FMA/F16C"))
    func integerMatchesTheHost() throws { try DifferentialTests().check(AVXCases.integer, perCase: 40, seed: 300, avx: true) }

    @Test(.enabled(if: host, "the host CPU lacks AVX2/FMA/F16C"))
    func movesAndFlagsMatchTheHost() throws { try DifferentialTests().check(AVXCases.movesAndFlags, perCase: 40, seed: 301, avx: true) }

    @Test(.enabled(if: host, "the host CPU lacks AVX2/FMA/F16C"))
    func floatFMAAndF16CMatchTheHost() throws { try DifferentialTests().check(AVXCases.floats, perCase: 40, seed: 302, avx: true) }
}

/// The AVX state rules on the emulator alone: when VEX instructions fault, the XSAVE AVX
/// component, VZEROUPPER and the snapshot.
@Suite struct AVXStateTests {
    static let avxOn = XSaveTests.osxsave + "xor ecx, ecx\nmov eax, 7\nxor edx, edx\nxsetbv\n"

    @Test func vexInstructionsFaultLikeHardware() throws {
        let insns = ["vpaddb ymm0, ymm1, ymm2", "vmovdqu xmm0, xmm1", "vzeroupper", "vaddps ymm0, ymm1, ymm2",
                     "vpbroadcastb ymm0, xmm1", "vfmadd231ps xmm0, xmm1, xmm2", "vcvtph2ps ymm0, xmm1"]
        for insn in insns {
            #expect(try X87Tests.vectorRaised(Self.avxOn + insn, level: .v3) == nil, "\(insn)")
            // XCR0 without AVX, CR4.OSXSAVE clear, below v3: #UD; CR0.TS: #NM (CR0.EM ignored).
            #expect(try X87Tests.vectorRaised(XSaveTests.xcr0SSE + insn, level: .v3) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, level: .v3) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, level: .v2) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(Self.avxOn + "mov rax, cr0\nor eax, 8\nmov cr0, rax\n" + insn, level: .v3) == 7, "\(insn)")
            #expect(try X87Tests.vectorRaised(Self.avxOn + "mov rax, cr0\nor eax, 4\nmov cr0, rax\n" + insn, level: .v3) == nil, "\(insn)")
        }
        // Alignment: VMOVDQA/VMOVAPS ymm need 32 bytes, VMOVDQU none; unused vvvv, VEX.L on
        // VMOVD, VEX.256 VPERMQ with W0: #UD.
        let aligned = Self.avxOn + "sub rsp, 128\nand rsp, -64\n"
        #expect(try X87Tests.vectorRaised(aligned + "vmovdqa ymm0, [rsp+16]", level: .v3) == 13)
        #expect(try X87Tests.vectorRaised(aligned + "vmovaps [rsp+32], ymm0\nvmovdqa xmm1, [rsp+16]", level: .v3) == nil)
        #expect(try X87Tests.vectorRaised(aligned + "vmovdqu ymm0, [rsp+3]\nvmovntdq [rsp], ymm0", level: .v3) == nil)
        #expect(try X87Tests.vectorRaised(aligned + "vmovntdq [rsp+16], ymm0", level: .v3) == 13)
        // A gather whose destination, index and mask are not three different registers.
        for bad in ["vpgatherdd ymm0, [rsp+ymm0*4], ymm1", "vpgatherdd ymm0, [rsp+ymm1*4], ymm0", "vgatherqpd ymm2, [rsp+ymm1*4], ymm1"] {
            #expect(try X87Tests.vectorRaised(Self.avxOn + bad, level: .v3) == 6, "\(bad)")
        }
        for bad in [".byte 0xc5, 0xf6, 0x6f, 0xc1",          // vmovdqu with vvvv = xmm0... (1110b)
                    ".byte 0xc5, 0xfd, 0x6e, 0xc0",          // vmovd with VEX.L = 1
                    ".byte 0xc4, 0xe3, 0x7d, 0x00, 0xc1, 0x1b", // vpermq with W0
                    ".byte 0xc4, 0xe3, 0xf9, 0x00, 0xc1, 0x1b"] { // vpermq VEX.128
            #expect(try X87Tests.vectorRaised(Self.avxOn + bad, level: .v3) == 6, "\(bad)")
        }
    }

    /// VPCMPxSTRx make the VEX checks (XCR0, CR4.OSXSAVE, CR0.TS), not legacy SSE's: CR0.EM
    /// set or CR4.OSFXSR clear do not fault them (they do fault PCMPxSTRx), and the result
    /// is computed.
    @Test func vexStringComparesIgnoreCR0EMAndOSFXSR() throws {
        let em = "mov rax, cr0\nor eax, 4\nmov cr0, rax\n"
        for insn in ["vpcmpistri xmm0, xmm1, 0x0c", "vpcmpestrm xmm1, xmm2, 0x44", "vpcmpestri xmm2, [rsp], 0", "vpcmpistrm xmm0, [rsp+3], 0x18"] {
            let legacy = String(insn.dropFirst())
            #expect(try X87Tests.vectorRaised(Self.avxOn + em + insn, level: .v3) == nil, "\(insn)")
            #expect(try X87Tests.vectorRaised(Self.avxOn + em + legacy, level: .v3) == 6, "\(legacy)")
            #expect(try X87Tests.vectorRaised(Self.avxOn + insn, cr4Clear: X86Bits.cr4OSFXSR, level: .v3) == nil, "\(insn)")
            #expect(try X87Tests.vectorRaised(Self.avxOn + legacy, cr4Clear: X86Bits.cr4OSFXSR, level: .v3) == 6, "\(legacy)")
            #expect(try X87Tests.vectorRaised(Self.avxOn + "mov rax, cr0\nor eax, 8\nmov cr0, rax\n" + insn, level: .v3) == 7, "\(insn)")
            #expect(try X87Tests.vectorRaised(XSaveTests.xcr0SSE + insn, level: .v3) == 6, "\(insn)")
            #expect(try X87Tests.vectorRaised(insn, level: .v3) == 6, "\(insn)")
        }
        // "ab" found at index 2 of "xxab" (equal ordered) with CR0.EM set.
        let m = try XSaveTests.run(Self.avxOn + em + "mov eax, 0x6261\nvmovq xmm0, rax\nmov eax, 0x62617878\nvmovq xmm1, rax\nvpcmpistri xmm0, xmm1, 0x0c")
        #expect(m.cpu.r[1] == 2)
    }

    static func ymm(_ m: TestMachine, _ i: Int) -> [UInt64] { (0..<2).map { m.cpu.xmm[i * 2 + $0] } + (0..<2).map { m.cpu.xmm[32 + i * 2 + $0] } }

    /// XSAVE writes YMM bits 255:128 at offset 576 (16 bytes per register) and sets
    /// XSTATE_BV bit 2; XRSTOR loads them back, or zeroes them when XSTATE_BV lacks bit 2;
    /// legacy SSE keeps them, VEX.128 and VZEROUPPER clear them.
    @Test func xsaveCarriesTheUpperHalvesAndVZeroUpperClearsThem() throws {
        let m = try XSaveTests.run(Self.avxOn + """
            mov rdi, \(XSaveTests.area)
            lea r8, [rdi+0x2000]
            vpcmpeqb ymm3, ymm3, ymm3
            mov rax, 0x1122334455667788
            vmovq xmm1, rax
            vpbroadcastq ymm15, xmm1
            mov eax, 7
            xor edx, edx
            xsave64 [rdi]
            paddb xmm15, xmm3
            vmovdqu [r8], ymm15
            vpxor ymm3, ymm3, ymm3
            vpxor ymm15, ymm15, ymm15
            xrstor64 [rdi]
            vmovdqu [r8+32], ymm3
            vpor xmm5, xmm3, xmm3
            vmovdqu [r8+64], ymm5
            vmovdqu [r8+96], ymm15
            vzeroupper
            vmovdqu [r8+128], ymm15
            mov rsi, \(XSaveTests.other)
            mov dword ptr [rsi+24], 0x1f80
            mov qword ptr [rsi+512], 3
            vpcmpeqb ymm3, ymm3, ymm3
            xrstor64 [rsi]
            """)
        let x = try m.memory.readBytes(at: XSaveTests.area, count: 832)
        func q(_ off: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(x[off + $1]) << UInt64($1 * 8) } }
        func y(_ k: Int) throws -> [UInt64] {
            let b = try m.memory.readBytes(at: XSaveTests.area + 0x2000 + UInt64(k * 32), count: 32)
            return (0..<4).map { i in (0..<8).reduce(0) { $0 | UInt64(b[i * 8 + $1]) << UInt64($1 * 8) } }
        }
        let r = 0x1122_3344_5566_7788 as UInt64
        #expect(x[512] == 7)
        #expect(q(576 + 3 * 16) == .max && q(584 + 3 * 16) == .max)
        #expect(q(576 + 15 * 16) == r && q(584 + 15 * 16) == r)
        #expect(q(576) == 0 && q(576 + 2 * 16) == 0)
        #expect(try y(0) == [r &- 0x0101_0101_0101_0101, r &- 0x0101_0101_0101_0101, r, r])   // legacy PADDB kept 255:128
        #expect(try y(1) == [.max, .max, .max, .max])      // XRSTOR brought ymm3 back
        #expect(try y(2) == [.max, .max, 0, 0])            // VEX.128 zeroed bits 255:128
        #expect(try y(3) == [r, r, r, r])
        #expect(try y(4) == [r, r, 0, 0])                  // VZEROUPPER keeps bits 127:0
        // XSTATE_BV without AVX (RFBM 7): the upper halves are initialized (zeroed).
        #expect(Self.ymm(m, 3) == [0, 0, 0, 0])
    }

    @Test func snapshotCarriesTheUpperHalves() throws {
        let m = try XSaveTests.run(Self.avxOn + "vpcmpeqb ymm9, ymm9, ymm9")
        let s = m.cpu.snapshot()
        #expect(s.ymmHigh?[18] == .max && s.ymmHigh?[19] == .max)
        let n = try TestMachine()
        try n.cpu.restore(s)
        #expect(Self.ymm(n, 9) == [.max, .max, .max, .max])
        var old = s
        old.ymmHigh = nil                      // a snapshot from before AVX
        try n.cpu.restore(old)
        #expect(Self.ymm(n, 9) == [.max, .max, 0, 0])
        old.ymmHigh = [1]
        #expect(throws: CPUSnapshotError.self) { try n.cpu.restore(old) }
    }
}
