import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// Differential tests: the same instruction sequence runs natively on the host CPU (an
/// mmap'd executable page called through a C function pointer) and in the emulator, on the
/// same generated inputs; registers, flags (the architecturally defined ones), XMM registers
/// and memory must agree.
///
/// Record layout (512 bytes each): inputs rax rbx rcx rdx r8 r9 rflags at 0..55; outputs at
/// 64..135 (same order, then rsi/rdi as offsets from the record); MXCSR at 136 and an
/// FSAVE image at 144..251 for cases that load/store them (through r15, the record);
/// xmm0/xmm1 at 256..287; memory areas at 288..383 (rsi) and 384..511 (rdi).
enum Differential {
    static let recordSize = 512

    static func thunk(_ insn: String) -> String {
        """
            push rbx
            push rbp
            push r12
            push r13
            push r14
            push r15
            mov r15, rdi
            mov r14, rsi
        2:
            test r14, r14
            jz 3f
            movdqu xmm0, [r15+256]
            movdqu xmm1, [r15+272]
            mov rax, [r15+0]
            mov rbx, [r15+8]
            mov rcx, [r15+16]
            mov rdx, [r15+24]
            mov r8, [r15+32]
            mov r9, [r15+40]
            lea rsi, [r15+288]
            lea rdi, [r15+384]
            push qword ptr [r15+48]
            popfq
        \(insn)
            pushfq
            pop qword ptr [r15+112]
            cld
            mov [r15+64], rax
            mov [r15+72], rbx
            mov [r15+80], rcx
            mov [r15+88], rdx
            mov [r15+96], r8
            mov [r15+104], r9
            sub rsi, r15
            mov [r15+120], rsi
            sub rdi, r15
            mov [r15+128], rdi
            movdqu [r15+256], xmm0
            movdqu [r15+272], xmm1
            add r15, 512
            dec r14
            jmp 2b
        3:
            pop r15
            pop r14
            pop r13
            pop r12
            pop rbp
            pop rbx
            ret
        """
    }

    typealias NativeFn = @convention(c) (UnsafeMutableRawPointer, Int) -> Void

    static func runNative(_ code: [UInt8], _ records: UnsafeMutableRawPointer, _ count: Int) {
        let size = (code.count + 4095) & ~4095
        // SAFETY: a fresh private RWX mapping holding only the assembled thunk.
        let page = mmap(nil, size, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        defer { munmap(page, size) }
        code.withUnsafeBytes { page.copyMemory(from: $0.baseAddress!, byteCount: code.count) }
        let fn = unsafeBitCast(page, to: NativeFn.self)
        fn(records, count)
    }

    /// Runs the thunk in the emulator on `tier` (the JIT compiling every block at first
    /// sight); `compiled` counts the compiled-code runs. `avx`: CR4.OSXSAVE set and XCR0 =
    /// x87 | SSE | AVX, as an AVX-using OS leaves them.
    static func runEmulated(_ code: [UInt8], _ records: [UInt8], _ count: Int, avx: Bool = false,
                            tier: CPUTier = .interp, compiled: inout UInt64) throws -> [UInt8] {
        let m = try TestMachine()
        m.cpu.tier = tier
        m.cpu.jitThreshold = 0
        try m.setupLongMode()
        if avx {
            var s = m.cpu.specialRegisters()
            s.cr4 |= X86Bits.cr4OSXSAVE
            m.cpu.setSpecialRegisters(s)
            m.cpu.xcr0 = 7
        }
        let recBase: UInt64 = 0x40_0000
        try m.load(code)
        try m.memory.write(bytes: records, at: recBase)
        try m.memory.write(bytes: [0xF4], at: 0xF_F000)  // return address: hlt
        try m.memory.write(UInt64(0xF_F000), at: 0x8_EFF8)
        var r = m.cpu.registers()
        r.rdi = recBase; r.rsi = UInt64(count); r.rsp = 0x8_EFF8
        m.cpu.setRegisters(r)
        let exit = try m.run()
        guard exit.isHalt else { throw TestError.assembler("emulated thunk did not halt: \(exit)") }
        compiled &+= m.cpu.jitRuns
        return try m.memory.readBytes(at: recBase, count: records.count)
    }
}

struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Values biased towards edge cases.
    mutating func interesting() -> UInt64 {
        let edges: [UInt64] = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000,
                               0xFFFF_FFFF, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, .max, .max - 1]
        switch next() % 4 {
        case 0: return edges[Int(next() % UInt64(edges.count))]
        case 1: return next() & 0xFF
        default: return next()
        }
    }
}

struct DiffCase: CustomStringConvertible {
    let asm: String
    /// Arithmetic flags (and DF) to compare.
    let flags: UInt64
    /// Adjusts generated inputs (register array rax rbx rcx rdx r8 r9 flags) and memory.
    var fix: ((inout [UInt64], inout SplitMix) -> Void)? = nil
    /// Adjusts the whole record (bytes, record base) after the random fill.
    var record: ((inout [UInt8], Int, inout SplitMix) -> Void)? = nil
    var description: String { asm.replacingOccurrences(of: "\n", with: "; ") }
}

let allF: UInt64 = 0x8D5
let noAF: UInt64 = 0x8C5
let cfOF: UInt64 = 0x801

func smallCount(_ maxCount: UInt64) -> (inout [UInt64], inout SplitMix) -> Void {
    { r, g in r[2] = g.next() % (maxCount + 1) }
}

enum DiffCases {
    static var integer: [DiffCase] {
        var c: [DiffCase] = []
        for op in ["add", "adc", "sub", "sbb", "cmp"] {
            for (a, b) in [("rax", "rbx"), ("eax", "ebx"), ("ax", "bx"), ("al", "bl"), ("bh", "cl"), ("r8d", "r9d")] {
                c.append(DiffCase(asm: "\(op) \(a), \(b)", flags: allF))
            }
            c.append(DiffCase(asm: "\(op) rax, 0x7fffffff", flags: allF))
            c.append(DiffCase(asm: "\(op) ecx, -3", flags: allF))
            c.append(DiffCase(asm: "\(op) qword ptr [rsi], rbx", flags: allF))
            c.append(DiffCase(asm: "\(op) bx, word ptr [rsi+3]", flags: allF))
        }
        for op in ["and", "or", "xor", "test"] {
            for (a, b) in [("rax", "rbx"), ("eax", "ebx"), ("ax", "bx"), ("al", "bl"), ("ah", "dl")] {
                c.append(DiffCase(asm: "\(op) \(a), \(b)", flags: noAF))
            }
            c.append(DiffCase(asm: "\(op) dword ptr [rsi+8], 0x80001234", flags: noAF))
        }
        for op in ["inc", "dec", "neg", "not"] {
            for r in ["rax", "ebx", "cx", "dl", "r9"] { c.append(DiffCase(asm: "\(op) \(r)", flags: allF)) }
            c.append(DiffCase(asm: "\(op) byte ptr [rsi+5]", flags: allF))
        }
        c += [
            DiffCase(asm: "xadd rax, rbx", flags: allF), DiffCase(asm: "xadd dword ptr [rsi], ecx", flags: allF),
            DiffCase(asm: "cmpxchg rbx, rcx", flags: allF), DiffCase(asm: "cmpxchg cl, dl", flags: allF),
            DiffCase(asm: "cmpxchg dword ptr [rsi], ebx", flags: allF, fix: { r, g in if g.next() & 1 == 0 { r[0] = 0 } }),
            DiffCase(asm: "xchg rax, rbx\nxchg cl, dh\nxchg r8d, r9d", flags: allF),
            DiffCase(asm: "movsx rax, bl\nmovzx ecx, dh\nmovsxd rdx, r8d\nmovsx r9w, al", flags: allF),
            DiffCase(asm: "cbw\ncwd", flags: allF), DiffCase(asm: "cwde\ncdq", flags: allF), DiffCase(asm: "cdqe\ncqo", flags: allF),
            DiffCase(asm: "bswap rax\nbswap ebx", flags: allF),
            DiffCase(asm: "lea rax, [rbx+rcx*4+0x123]\nlea edx, [rax+r8*2-7]\nlea r9w, [rbx+rcx]", flags: allF),
            DiffCase(asm: "cmp rax, rbx\nsetl cl\nsetle dl\nsetb r8b\nseta r9b\nsetg bl", flags: allF),
            DiffCase(asm: "cmp al, bl\nsetl cl\nsetge dl\nsetbe r8b\nsetae r9b", flags: allF),
            DiffCase(asm: "sub eax, ebx\ncmovl ecx, edx\ncmovbe r8, r9\nseto dl\nsetp bh", flags: allF),
            DiffCase(asm: "add ax, bx\nsets cl\nsetz dl\nsetc r8b\nseto r9b\nsetnp bl", flags: allF),
            DiffCase(asm: "inc al\nsetc cl\nseto dl\nsetz r8b\nsets r9b", flags: allF),
            DiffCase(asm: "test rax, rbx\ncmovg rcx, rdx\ncmovns r8, r9", flags: allF),
            DiffCase(asm: "cmovo eax, ebx\ncmovp rcx, rdx\ncmovae r8d, r9d", flags: allF),
            DiffCase(asm: "stc\nadc rax, rbx\nclc\nsbb rcx, rdx\ncmc\nadc r8b, r9b", flags: allF),
            DiffCase(asm: "lahf\nmov bl, ah\nxor ah, 0xd5\nsahf", flags: allF),
            DiffCase(asm: "push rbx\npush rax\npop rcx\npop rdx\npushfq\npop r8\nand r8, 0xcd5", flags: allF),
        ]
        return c
    }

    static var shifts: [DiffCase] {
        var c: [DiffCase] = []
        for op in ["shl", "shr", "sar"] {
            c.append(DiffCase(asm: "\(op) rax, cl", flags: 0xC5, fix: smallCount(63)))
            c.append(DiffCase(asm: "\(op) ebx, cl", flags: 0xC5, fix: smallCount(31)))
            c.append(DiffCase(asm: "\(op) dx, cl", flags: 0xC5, fix: smallCount(15)))
            c.append(DiffCase(asm: "\(op) al, cl", flags: 0xC5, fix: smallCount(7)))
            c.append(DiffCase(asm: "\(op) rax, 1", flags: 0x8C5))
            c.append(DiffCase(asm: "\(op) r9d, 13", flags: 0xC5))
            c.append(DiffCase(asm: "\(op) byte ptr [rsi+1], 3", flags: 0xC5))
        }
        for op in ["rol", "ror", "rcl", "rcr"] {
            c.append(DiffCase(asm: "\(op) rax, cl", flags: 0xD5, fix: smallCount(63)))
            c.append(DiffCase(asm: "\(op) ebx, cl", flags: 0xD5, fix: smallCount(31)))
            c.append(DiffCase(asm: "\(op) dx, cl", flags: 0xD5, fix: smallCount(31)))
            c.append(DiffCase(asm: "\(op) al, cl", flags: 0xD5, fix: smallCount(31)))
            c.append(DiffCase(asm: "\(op) rbx, 1", flags: 0x8D5))
            c.append(DiffCase(asm: "\(op) word ptr [rsi+2], 1", flags: 0x8D5))
        }
        c.append(DiffCase(asm: "shld rax, rbx, cl", flags: 0xC5, fix: smallCount(63)))
        c.append(DiffCase(asm: "shrd rax, rbx, cl", flags: 0xC5, fix: smallCount(63)))
        c.append(DiffCase(asm: "shld edx, ebx, cl", flags: 0xC5, fix: smallCount(31)))
        c.append(DiffCase(asm: "shrd edx, ebx, cl", flags: 0xC5, fix: smallCount(31)))
        c.append(DiffCase(asm: "shld ax, bx, cl", flags: 0xC5, fix: smallCount(15)))
        c.append(DiffCase(asm: "shrd ax, bx, 5", flags: 0xC5))
        c.append(DiffCase(asm: "shld rax, rbx, 1", flags: 0x8C5))
        return c
    }

    static var mulDiv: [DiffCase] {
        func unsignedDiv(_ size: Int) -> (inout [UInt64], inout SplitMix) -> Void {
            { r, g in
                let m: UInt64 = size == 8 ? .max : (1 << UInt64(size * 8)) - 1
                var d = r[1] & m; if d == 0 { d = 1 }
                r[1] = (r[1] & ~m) | d
                if size == 1 { r[0] = (r[0] & ~0xFFFF) | ((g.next() % UInt64(d)) << 8) | (r[0] & 0xFF) }
                else { r[3] = (r[3] & ~m) | (g.next() % d) }
            }
        }
        func signedDiv(_ size: Int) -> (inout [UInt64], inout SplitMix) -> Void {
            { r, g in
                let bits = UInt64(size * 8)
                let m: UInt64 = size == 8 ? .max : (1 << bits) - 1
                var d = r[1] & m; if d == 0 || d == m { d = 3 }
                r[1] = (r[1] & ~m) | d
                // dividend = sign extension of the low half: quotient always fits.
                let lowHalf = size == 1 ? (r[0] & 0x7F) : (r[0] & m >> 1)
                let neg = g.next() & 1 == 0 && lowHalf != 0
                if size == 1 {
                    let v: UInt64 = neg ? (0 &- lowHalf) & 0xFFFF : lowHalf
                    r[0] = (r[0] & ~0xFFFF) | v
                } else {
                    let lo = neg ? (0 &- lowHalf) & m : lowHalf
                    r[0] = (r[0] & ~m) | lo
                    r[3] = (r[3] & ~m) | (neg ? m : 0)
                }
            }
        }
        return [
            DiffCase(asm: "mul rbx", flags: cfOF), DiffCase(asm: "mul ebx", flags: cfOF),
            DiffCase(asm: "mul bx", flags: cfOF), DiffCase(asm: "mul bl", flags: cfOF),
            DiffCase(asm: "imul rbx", flags: cfOF), DiffCase(asm: "imul ecx", flags: cfOF),
            DiffCase(asm: "imul cx", flags: cfOF), DiffCase(asm: "imul cl", flags: cfOF),
            DiffCase(asm: "imul rax, rbx", flags: cfOF), DiffCase(asm: "imul ecx, edx", flags: cfOF),
            DiffCase(asm: "imul dx, r8w", flags: cfOF), DiffCase(asm: "imul r9, rbx, -100000", flags: cfOF),
            DiffCase(asm: "imul eax, ebx, 77", flags: cfOF), DiffCase(asm: "mul qword ptr [rsi]", flags: cfOF),
            DiffCase(asm: "div rbx", flags: 0, fix: unsignedDiv(8)), DiffCase(asm: "div ebx", flags: 0, fix: unsignedDiv(4)),
            DiffCase(asm: "div bx", flags: 0, fix: unsignedDiv(2)), DiffCase(asm: "div bl", flags: 0, fix: unsignedDiv(1)),
            DiffCase(asm: "idiv rbx", flags: 0, fix: signedDiv(8)), DiffCase(asm: "idiv ebx", flags: 0, fix: signedDiv(4)),
            DiffCase(asm: "idiv bx", flags: 0, fix: signedDiv(2)), DiffCase(asm: "idiv bl", flags: 0, fix: signedDiv(1)),
        ]
    }

    static var strings: [DiffCase] {
        let cnt = smallCount(40)
        let cnt8 = smallCount(8)
        func withDF(_ base: @escaping (inout [UInt64], inout SplitMix) -> Void) -> (inout [UInt64], inout SplitMix) -> Void {
            { r, g in base(&r, &g); if g.next() % 3 == 0 { r[6] |= 0x400 } else { r[6] &= ~0x400 } }
        }
        return [
            DiffCase(asm: "rep movsb", flags: allF | 0x400, fix: withDF(cnt)),
            DiffCase(asm: "rep movsq", flags: allF | 0x400, fix: withDF(cnt8)),
            DiffCase(asm: "rep movsd", flags: allF | 0x400, fix: cnt8),
            DiffCase(asm: "movsw\nmovsb", flags: allF | 0x400, fix: withDF(cnt)),
            DiffCase(asm: "rep stosb", flags: allF | 0x400, fix: withDF(cnt)),
            DiffCase(asm: "rep stosq", flags: allF | 0x400, fix: withDF(cnt8)),
            DiffCase(asm: "rep stosw", flags: allF | 0x400, fix: cnt8),
            DiffCase(asm: "lodsb\nlodsq", flags: allF | 0x400, fix: withDF(cnt)),
            DiffCase(asm: "repe cmpsb", flags: allF | 0x400, fix: cnt),
            DiffCase(asm: "repne cmpsb", flags: allF | 0x400, fix: cnt),
            DiffCase(asm: "repne scasb", flags: allF | 0x400, fix: cnt),
            DiffCase(asm: "repe scasw", flags: allF | 0x400, fix: cnt8),
            DiffCase(asm: "cmpsq\nscasd", flags: allF | 0x400),
        ]
    }

    static var bits: [DiffCase] {
        let small: (inout [UInt64], inout SplitMix) -> Void = { r, g in r[1] = g.next() % 256 }
        return [
            DiffCase(asm: "bt rax, rbx", flags: 0x1), DiffCase(asm: "bts rax, rbx", flags: 0x1),
            DiffCase(asm: "btr ecx, ebx", flags: 0x1), DiffCase(asm: "btc dx, bx", flags: 0x1),
            DiffCase(asm: "bt rax, 45", flags: 0x1), DiffCase(asm: "bts ecx, 7", flags: 0x1),
            DiffCase(asm: "btr rdx, 63", flags: 0x1), DiffCase(asm: "btc r8w, 3", flags: 0x1),
            DiffCase(asm: "bt qword ptr [rsi], rbx", flags: 0x1, fix: small),
            DiffCase(asm: "bts dword ptr [rsi], ebx", flags: 0x1, fix: small),
            DiffCase(asm: "btr word ptr [rsi+2], bx", flags: 0x1, fix: { r, g in r[1] = g.next() % 128 }),
            DiffCase(asm: "btc qword ptr [rsi+8], 44", flags: 0x1),
            DiffCase(asm: "bsf rax, rbx", flags: 0x40, fix: { r, g in if r[1] == 0 { r[1] = 1 << (g.next() % 64) } }),
            DiffCase(asm: "bsr rax, rbx", flags: 0x40, fix: { r, g in if r[1] == 0 { r[1] = 1 << (g.next() % 64) } }),
            DiffCase(asm: "bsf ecx, edx", flags: 0x40, fix: { r, _ in if r[3] & 0xFFFF_FFFF == 0 { r[3] = 0x100 } }),
            DiffCase(asm: "bsr cx, dx", flags: 0x40, fix: { r, _ in if r[3] & 0xFFFF == 0 { r[3] = 0x1 } }),
            DiffCase(asm: "popcnt rax, rbx", flags: allF), DiffCase(asm: "popcnt ecx, edx", flags: allF),
        ]
    }

    static var sse2: [DiffCase] {
        var c: [DiffCase] = []
        for op in ["paddb", "paddw", "paddd", "paddq", "psubb", "psubw", "psubd", "psubq", "pcmpeqb", "pcmpeqw",
                   "pcmpeqd", "pcmpgtb", "pcmpgtw", "pcmpgtd", "pxor", "por", "pand", "pandn", "punpcklbw",
                   "punpcklwd", "punpckldq", "punpcklqdq", "punpckhbw", "punpckhwd", "punpckhdq", "punpckhqdq",
                   "packuswb", "packsswb", "packssdw", "pminub", "pmaxub", "pminsw", "pmaxsw", "psubusb", "psubusw",
                   "paddusb", "paddusw", "paddsb", "paddsw", "psubsb", "psubsw", "pmullw", "pmulhw", "pmulhuw",
                   "pmuludq", "pmaddwd", "psadbw", "pavgb", "pavgw", "psrlw", "psrld", "psrlq", "psllw", "pslld",
                   "psllq", "psraw", "psrad", "xorps", "andps", "orps", "andnps", "unpcklps", "unpckhps",
                   "unpcklpd", "unpckhpd", "movhlps", "movlhps"] {
            c.append(DiffCase(asm: "\(op) xmm0, xmm1", flags: allF))
        }
        c += [
            DiffCase(asm: "paddd xmm0, xmmword ptr [rsi]", flags: allF),
            DiffCase(asm: "psrlw xmm0, xmm1", flags: allF, fix: { r, g in r[7] = g.next() % 20 }),
            DiffCase(asm: "pmovmskb eax, xmm0\npmovmskb ecx, xmm1", flags: allF),
            DiffCase(asm: "movmskps eax, xmm0\nmovmskpd ecx, xmm1", flags: allF),
            DiffCase(asm: "pshufd xmm0, xmm1, 0x1b", flags: allF), DiffCase(asm: "pshuflw xmm0, xmm1, 0xd2", flags: allF),
            DiffCase(asm: "pshufhw xmm0, xmm1, 0x63", flags: allF), DiffCase(asm: "shufps xmm0, xmm1, 0x4e", flags: allF),
            DiffCase(asm: "shufpd xmm0, xmm1, 1", flags: allF),
            DiffCase(asm: "psrldq xmm0, 3\npslldq xmm1, 9", flags: allF),
            DiffCase(asm: "psrlq xmm0, 13\npsllw xmm1, 3\npsrad xmm0, 31\npsraw xmm1, 17", flags: allF),
            DiffCase(asm: "movq xmm0, rax\nmovd xmm1, ebx", flags: allF),
            DiffCase(asm: "movd eax, xmm1\nmovq rcx, xmm0", flags: allF),
            DiffCase(asm: "movq xmm0, xmm1", flags: allF),
            DiffCase(asm: "pextrw eax, xmm1, 3\npinsrw xmm0, ebx, 5", flags: allF),
            DiffCase(asm: "movdqu xmm0, [rsi+1]\nmovdqu [rdi+3], xmm1\nmovups xmm1, [rsi+5]", flags: allF),
            DiffCase(asm: "movq [rdi], xmm0\nmovhps xmm1, [rsi]\nmovlps [rdi+8], xmm1\nmovsd xmm0, [rsi+8]", flags: allF),
            DiffCase(asm: "movss xmm0, xmm1\nmovsd [rdi+16], xmm0", flags: allF),
            DiffCase(asm: "addsd xmm0, xmm1\nmulsd xmm1, xmm0", flags: allF),
            DiffCase(asm: "subpd xmm0, xmm1", flags: allF), DiffCase(asm: "divsd xmm0, xmm1", flags: allF),
            DiffCase(asm: "addps xmm0, xmm1", flags: allF), DiffCase(asm: "mulss xmm0, xmm1", flags: allF),
            DiffCase(asm: "minsd xmm0, xmm1\nmaxpd xmm1, xmm0", flags: allF),
            DiffCase(asm: "cvtsi2sd xmm0, rax\ncvtsi2ss xmm1, ebx", flags: allF),
            DiffCase(asm: "cvttsd2si rax, xmm1\ncvtsd2si ecx, xmm0", flags: allF),
            DiffCase(asm: "cvtss2sd xmm0, xmm1\ncvtsd2ss xmm1, xmm0", flags: allF),
            DiffCase(asm: "cvtdq2pd xmm0, xmm1\ncvttpd2dq xmm1, xmm0", flags: allF),
            DiffCase(asm: "ucomisd xmm0, xmm1", flags: allF), DiffCase(asm: "comiss xmm0, xmm1", flags: allF),
            DiffCase(asm: "cmpltsd xmm0, xmm1\ncmpneqps xmm1, xmm0", flags: allF),
            DiffCase(asm: "sqrtsd xmm0, xmm1", flags: allF),
        ]
        return c
    }
}

@Suite struct DifferentialTests {
    /// On the JIT tier, `compiledAtLeast` of the cases must have run as compiled code.
    func check(_ cases: [DiffCase], perCase: Int = 100, seed: UInt64, avx: Bool = false, tier: CPUTier = .interp,
               compiledAtLeast: Int = 0) throws {
        var g = SplitMix(state: seed)
        var compiledCases = 0
        var failures: [String] = []
        for dc in cases {
            let code = try Assembler.assemble(Differential.thunk(dc.asm))
            var records = [UInt8](repeating: 0, count: perCase * Differential.recordSize)
            var inputs: [[UInt64]] = []
            for i in 0..<perCase {
                // rax rbx rcx rdx r8 r9 flags xmm1-low (for shift counts)
                var regs = (0..<6).map { _ in g.interesting() }
                regs.append(g.next() & 0x8D5)
                regs.append(g.next())
                dc.fix?(&regs, &g)
                inputs.append(regs)
                let base = i * Differential.recordSize
                for j in 0..<7 { withUnsafeBytes(of: regs[j].littleEndian) { for k in 0..<8 { records[base + j * 8 + k] = $0[k] } } }
                // xmm0, xmm1 and the memory areas: random, with the two areas often equal
                for k in 256..<512 { records[base + k] = UInt8(truncatingIfNeeded: g.next()) }
                withUnsafeBytes(of: regs[7].littleEndian) { for k in 0..<8 { records[base + 272 + k] = $0[k] } }
                if g.next() % 2 == 0 {
                    for k in 0..<96 { records[base + 384 + k] = records[base + 288 + k] }
                    if g.next() % 2 == 0 { records[base + 384 + Int(g.next() % 40)] ^= 0x5A }
                }
                dc.record?(&records, base, &g)
            }
            let emulated: [UInt8]
            var compiled: UInt64 = 0
            do { emulated = try Differential.runEmulated(code, records, perCase, avx: avx, tier: tier, compiled: &compiled) } catch {
                failures.append("\(dc): \(error)"); continue
            }
            if compiled >= UInt64(perCase) { compiledCases += 1 }
            var native = records
            native.withUnsafeMutableBytes { Differential.runNative(code, $0.baseAddress!, perCase) }
            for i in 0..<perCase {
                let base = i * Differential.recordSize
                func q(_ a: [UInt8], _ off: Int) -> UInt64 {
                    var v: UInt64 = 0
                    for k in 0..<8 { v |= UInt64(a[base + off + k]) << UInt64(k * 8) }
                    return v
                }
                var diffs: [String] = []
                let names = ["rax", "rbx", "rcx", "rdx", "r8", "r9"]
                for (j, n) in names.enumerated() where q(native, 64 + j * 8) != q(emulated, 64 + j * 8) {
                    diffs.append("\(n) native=\(hex(q(native, 64 + j * 8))) emu=\(hex(q(emulated, 64 + j * 8)))")
                }
                let fm = dc.flags
                if q(native, 112) & fm != q(emulated, 112) & fm {
                    diffs.append("flags native=\(hex(q(native, 112) & fm)) emu=\(hex(q(emulated, 112) & fm))")
                }
                if q(native, 120) != q(emulated, 120) { diffs.append("rsi") }
                if q(native, 128) != q(emulated, 128) { diffs.append("rdi") }
                // MXCSR and the FSAVE image, except its last instruction/data pointer fields
                // (record 156..171), which hold host addresses natively.
                for off in 136..<256 where !(156..<172).contains(off) && native[base + off] != emulated[base + off] {
                    diffs.append("byte +\(off) native=\(hex(UInt64(native[base + off]))) emu=\(hex(UInt64(emulated[base + off])))")
                }
                for off in stride(from: 256, to: 512, by: 8) where q(native, off) != q(emulated, off) {
                    diffs.append("mem/xmm+\(off) native=\(hex(q(native, off))) emu=\(hex(q(emulated, off)))")
                }
                if !diffs.isEmpty {
                    let inp = inputs[i].map(hex).joined(separator: " ")
                    failures.append("\(dc): inputs [\(inp)]: " + diffs.prefix(4).joined(separator: ", "))
                    break
                }
            }
        }
        for f in failures.prefix(40) { Issue.record(Comment(rawValue: f)) }
        #expect(failures.isEmpty, "\(failures.count) of \(cases.count) instruction cases differ from the host CPU")
        #expect(compiledCases >= compiledAtLeast, "only \(compiledCases) cases ran compiled")
    }

    @Test func integerGroup() throws { try check(DiffCases.integer, seed: 1) }
    @Test func shiftRotateGroup() throws { try check(DiffCases.shifts, seed: 2) }
    @Test func multiplyDivideGroup() throws { try check(DiffCases.mulDiv, seed: 3) }
    @Test func stringGroup() throws { try check(DiffCases.strings, seed: 4) }
    @Test func bitGroup() throws { try check(DiffCases.bits, seed: 5) }
    @Test func sse2Group() throws { try check(DiffCases.sse2, seed: 6) }

    // The JIT tier: the instructions it supports run as host code made by our compiler
    // (each thunk's instruction under test starts a block, after POPFQ).
    @Test func integerGroupJIT() throws { try check(DiffCases.integer, seed: 1, tier: .jit, compiledAtLeast: 20) }
    @Test func shiftRotateGroupJIT() throws { try check(DiffCases.shifts, seed: 2, tier: .jit, compiledAtLeast: 5) }
    @Test func multiplyDivideGroupJIT() throws { try check(DiffCases.mulDiv, seed: 3, tier: .jit) }
    @Test func bitGroupJIT() throws { try check(DiffCases.bits, seed: 5, tier: .jit) }
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
