#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Floating-point instructions run on the host's own x87 and SSE units.
///
/// Exact x87 results (80-bit arithmetic in every rounding and precision mode, the
/// transcendental instructions, denormals, pseudo-denormals, unnormals, NaN rules, C0-C3,
/// the exception flags) and exact MXCSR flags (DAZ/FTZ, every rounding mode) are what the
/// host's FPU computes. Rather than a software model that would have to reproduce Intel's
/// implementation-specific transcendental results and reciprocal estimates, each such
/// guest instruction runs as the same instruction on the host, inside a fixed thunk that
/// loads the guest's FPU image, executes it and saves the image back. The emulator already
/// needs an x86-64 host (Float80, the differential tests), so this costs no portability.
///
/// The thunks are generated once, at first use, from a closed list of encodings the
/// emulator decodes itself (the guest supplies only data: register images, control words,
/// memory operands); the page is then made read+execute and never written again. An
/// unmasked guest exception cannot fault the host: the x87 thunk ends with FNSAVE, which
/// does not wait and reinitializes the FPU, and SSE thunks run with every MXCSR exception
/// masked (the emulator applies the guest's masks afterwards).
// Immutable after init (the code page is never written again), so shareable.
final class HostFloat: @unchecked Sendable {
    typealias Thunk = @convention(c) (UnsafeMutableRawPointer) -> Void

    static let shared = HostFloat()

    /// x87 thunks: (op - 0xD8) * 72 + (register form ? 8 + modrm & 63 : modrm.reg).
    private let x87Table: UnsafeRawPointer
    /// SSE thunks by encoding key (see `sseKey`).
    private let sse: [UInt64: Int]
    private let base: UnsafeRawPointer
    private static let x87Stride = 48

    // Context block offsets (x87): FSAVE image, memory operand, rflags, host FCW.
    static let x87Image = 0, x87Mem = 112, x87Flags = 128, x87HostCW = 136, x87ContextSize = 144
    // Context block offsets (SSE): xmm0, xmm1, rax, rflags, guest MXCSR, host MXCSR, xmm2.
    static let sseX0 = 0, sseX1 = 16, sseRAX = 32, sseFlags = 40, sseMXCSR = 48, sseHostMXCSR = 52
    static let sseX2 = 64, sseContextSize = 80

    private init() {
        var code: [UInt8] = []
        // x87 table.
        for op in 0xD8...0xDF {
            for slot in 0..<72 {
                let modrm = slot < 8 ? UInt8(slot << 3 | 6) : UInt8(0xC0 | (slot - 8))
                var t: [UInt8] = []
                t += [0xD9, 0xBF, 0x88, 0, 0, 0]           // fnstcw [rdi+136]
                t += [0x48, 0x8D, 0x77, 0x70]              // lea rsi, [rdi+112]
                t += [0xFF, 0xB7, 0x80, 0, 0, 0, 0x9D]     // push qword [rdi+128]; popfq
                t += [0xDD, 0x27]                          // frstor [rdi]
                t += [UInt8(op), modrm]                    // the instruction ([rsi] for memory)
                t += [0x9C, 0x8F, 0x87, 0x80, 0, 0, 0]     // pushfq; pop qword [rdi+128]
                t += [0xDD, 0x37]                          // fnsave [rdi] (no wait, then fninit)
                t += [0xD9, 0xAF, 0x88, 0, 0, 0]           // fldcw [rdi+136]
                t += [0xC3]
                precondition(t.count <= HostFloat.x87Stride)
                code += t + [UInt8](repeating: 0xCC, count: HostFloat.x87Stride - t.count)
            }
        }
        var sseOffsets: [UInt64: Int] = [:]
        for enc in HostFloat.sseEncodings() {
            sseOffsets[HostFloat.sseKey(enc)] = code.count
            var t: [UInt8] = []
            t += [0x0F, 0xAE, 0x5F, 0x34]                  // stmxcsr [rdi+52]
            t += [0x0F, 0xAE, 0x57, 0x30]                  // ldmxcsr [rdi+48]
            t += [0xF3, 0x0F, 0x6F, 0x07]                  // movdqu xmm0, [rdi]
            t += [0xF3, 0x0F, 0x6F, 0x4F, 0x10]            // movdqu xmm1, [rdi+16]
            t += [0xF3, 0x0F, 0x6F, 0x57, 0x40]            // movdqu xmm2, [rdi+64]
            t += [0x48, 0x8B, 0x47, 0x20]                  // mov rax, [rdi+32]
            t += [0xFF, 0x77, 0x28, 0x9D]                  // push qword [rdi+40]; popfq
            t += enc
            t += [0x9C, 0x8F, 0x47, 0x28]                  // pushfq; pop qword [rdi+40]
            t += [0xF3, 0x0F, 0x7F, 0x07]                  // movdqu [rdi], xmm0
            t += [0x48, 0x89, 0x47, 0x20]                  // mov [rdi+32], rax
            t += [0x0F, 0xAE, 0x5F, 0x30]                  // stmxcsr [rdi+48]
            t += [0x0F, 0xAE, 0x57, 0x34]                  // ldmxcsr [rdi+52]
            t += [0xC3]
            while t.count % 16 != 0 { t.append(0xCC) }
            code += t
        }
        let size = (code.count + 4095) & ~4095
        // SAFETY: a fresh private anonymous mapping, filled with the generated code and then
        // made read+execute; it is never unmapped (the table lives as long as the process).
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            fatalError("HostFloat: cannot map the thunk page")
        }
        code.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: code.count) }
        guard mprotect(p, size, PROT_READ | PROT_EXEC) == 0 else { fatalError("HostFloat: mprotect failed") }
        base = UnsafeRawPointer(p)
        x87Table = UnsafeRawPointer(p)
        sse = sseOffsets
    }

    /// Runs the x87 instruction `op` (0xD8...0xDF) with `modrm` (a register form, or a
    /// memory form using the context's operand buffer) on the context block.
    func runX87(_ op: Int, _ modrm: Int, _ ctx: UnsafeMutableRawPointer) {
        let slot = modrm >= 0xC0 ? 8 + (modrm & 63) : (modrm >> 3) & 7
        let fn = unsafeBitCast(x87Table + ((op - 0xD8) * 72 + slot) * HostFloat.x87Stride, to: Thunk.self)
        fn(ctx)
    }

    /// Runs an SSE encoding (operands xmm0 = reg, xmm1 = r/m, rax for GPR forms); false if
    /// the encoding is not in the table.
    func runSSE(_ key: UInt64, _ ctx: UnsafeMutableRawPointer) -> Bool {
        guard let off = sse[key] else { return false }
        unsafeBitCast(base + off, to: Thunk.self)(ctx)
        return true
    }

    /// The bytes of an encoding packed little-endian with the length in the top byte.
    static func sseKey(_ enc: [UInt8]) -> UInt64 {
        var k = UInt64(enc.count) << 56
        for (i, b) in enc.prefix(7).enumerated() { k |= UInt64(b) << UInt64(i * 8) }
        return k
    }

    /// Every SSE encoding the emulator runs on the host: register forms with xmm0 as the
    /// destination (ModRM.reg) and xmm1 (or rax/eax) as the source.
    static func sseEncodings() -> [[UInt8]] {
        var e: [[UInt8]] = []
        let prefixes: [[UInt8]] = [[], [0x66], [0xF3], [0xF2]]
        // sqrt, rsqrt, rcp, add, mul, cvt ps<->pd/ss<->sd, cvtdq2ps..., sub, min, div, max
        for p in prefixes {
            for op: UInt8 in [0x51, 0x58, 0x59, 0x5A, 0x5C, 0x5D, 0x5E, 0x5F] { e.append(p + [0x0F, op, 0xC1]) }
            for imm: UInt8 in 0..<8 { e.append(p + [0x0F, 0xC2, 0xC1, imm]) }
        }
        for p in [[], [0xF3]] as [[UInt8]] {
            e.append(p + [0x0F, 0x52, 0xC1]); e.append(p + [0x0F, 0x53, 0xC1])
        }
        for p in [[], [0x66], [0xF3]] as [[UInt8]] { e.append(p + [0x0F, 0x5B, 0xC1]) }
        for p in [[0x66], [0xF3], [0xF2]] as [[UInt8]] { e.append(p + [0x0F, 0xE6, 0xC1]) }
        for p in [[], [0x66]] as [[UInt8]] {
            e.append(p + [0x0F, 0x2E, 0xC1]); e.append(p + [0x0F, 0x2F, 0xC1])
        }
        // cvtsi2ss/sd xmm0, eax/rax; cvt(t)ss/sd2si eax/rax, xmm1
        for p in [[0xF3], [0xF2]] as [[UInt8]] {
            e.append(p + [0x0F, 0x2A, 0xC0]); e.append(p + [0x48, 0x0F, 0x2A, 0xC0])
            for op: UInt8 in [0x2C, 0x2D] { e.append(p + [0x0F, op, 0xC1]); e.append(p + [0x48, 0x0F, op, 0xC1]) }
        }
        // SSE3: addsubpd/ps, haddpd/ps, hsubpd/ps
        for p in [[0x66], [0xF2]] as [[UInt8]] {
            e.append(p + [0x0F, 0xD0, 0xC1]); e.append(p + [0x0F, 0x7C, 0xC1]); e.append(p + [0x0F, 0x7D, 0xC1])
        }
        // SSE4.1: roundps/pd/ss/sd, dpps/dppd
        for op: UInt8 in [0x08, 0x09, 0x0A, 0x0B] {
            for imm: UInt8 in 0..<16 { e.append([0x66, 0x0F, 0x3A, op, 0xC1, imm]) }
        }
        for op: UInt8 in [0x40, 0x41] {
            for imm in 0..<256 { e.append([0x66, 0x0F, 0x3A, op, 0xC1, UInt8(imm)]) }
        }
        return e + vexEncodings()
    }

    /// The VEX-encoded thunks (run only on a host with AVX, FMA and F16C, `hostHasAVX`):
    /// VCMPPS/PD/SS/SD xmm0, xmm0, xmm1 with the 32 predicates; the FMA3 forms xmm0, xmm1,
    /// xmm2 (VEX.128; W0 ps/ss, W1 pd/sd); VCVTPH2PS xmm0, xmm1; VCVTPS2PH xmm0, xmm1, imm.
    static func vexEncodings() -> [[UInt8]] {
        var e: [[UInt8]] = []
        for pp: UInt8 in 0..<4 {
            for imm: UInt8 in 0..<32 { e.append([0xC5, 0xF8 | pp, 0xC2, 0xC1, imm]) }
        }
        for op in Array(0x96...0x9F) + Array(0xA6...0xAF) + Array(0xB6...0xBF) {
            for w: UInt8 in [0x71, 0xF1] { e.append([0xC4, 0xE2, w, UInt8(op), 0xC2]) }
        }
        e.append([0xC4, 0xE2, 0x79, 0x13, 0xC1])
        for imm: UInt8 in 0..<8 { e.append([0xC4, 0xE3, 0x79, 0x1D, 0xC8, imm]) }
        return e
    }

    /// True if the host can run the VEX thunks: AVX, AVX2, FMA and F16C, enabled by the host
    /// kernel (Linux lists a flag only when its state is enabled in XCR0).
    static let hostHasAVX: Bool = {
        guard let fd = fopen("/proc/cpuinfo", "r") else { return false }
        defer { fclose(fd) }
        var line = [CChar](repeating: 0, count: 8192)
        while fgets(&line, Int32(line.count), fd) != nil {
            let s = String(cString: line)
            guard s.hasPrefix("flags") else { continue }
            let flags = Set(s.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init))
            return ["avx", "avx2", "fma", "f16c"].allSatisfy(flags.contains)
        }
        return false
    }()
}
