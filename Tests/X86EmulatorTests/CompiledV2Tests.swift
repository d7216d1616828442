import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// A C program built with `gcc -O3 -march=x86-64-v2` (auto-vectorized loops, and the
/// SSSE3/SSE4.1/SSE4.2 intrinsics: string compares, CRC32, ROUND, DPPS, blends, ...) runs
/// natively and on the software CPU at level v2 on the same 4 KiB input; the 16 KiB of
/// results must agree bit for bit. At level baseline the same code stops with #UD.
enum CompiledV2 {
    static let source = #"""
#include <stdint.h>
#include <nmmintrin.h>
#include <smmintrin.h>
#include <tmmintrin.h>

#define N 256
typedef uint64_t u64;
typedef uint32_t u32;

static void ints(u32 *o, const uint8_t *in) {
    const int32_t *a = (const int32_t *)in, *b = (const int32_t *)(in + 1024);
    for (int i = 0; i < N; i++) o[i] = (u32)(a[i] * b[i]);
    for (int i = 0; i < N; i++) o[N + i] = (u32)(a[i] < b[i] ? a[i] : b[i]);
    for (int i = 0; i < N; i++) o[2 * N + i] = (u32)(a[i] < 0 ? -a[i] : a[i]);
    const int8_t *c = (const int8_t *)in;
    for (int i = 0; i < N; i++) o[3 * N + i] = (u32)(c[i] + (uint8_t)c[i + 1]);
    const uint16_t *w = (const uint16_t *)in;
    for (int i = 0; i < N; i++) o[4 * N + i] = w[i] > w[i + 1] ? w[i] : w[i + 1];
    const int64_t *q = (const int64_t *)in;
    for (int i = 0; i < 64; i++) o[5 * N + i] = q[i] > q[i + 64] ? 1u : 2u;
    for (int i = 0; i < 64; i++) o[5 * N + 64 + i] = (u32)__builtin_popcountll((u64)q[i]);
}

static void strings(u32 *o, const uint8_t *in) {
    /* text: bytes folded into a small alphabet with NULs, so the compares find things */
    uint8_t text[272];
    for (int i = 0; i < 272; i++) { uint8_t v = in[2048 + i] % 11; text[i] = v == 0 ? 0 : (uint8_t)('a' + v); }
    const __m128i set = _mm_setr_epi8('b', 'e', 'g', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m128i range = _mm_setr_epi8('c', 'f', 'i', 'j', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m128i needle = _mm_loadu_si128((const __m128i *)(text + 3));
    int k = 0;
    for (int i = 0; i + 16 <= 272; i += 16, k += 8) {
        __m128i t = _mm_loadu_si128((const __m128i *)(text + i));
        o[k] = (u32)_mm_cmpistri(set, t, _SIDD_CMP_EQUAL_ANY);
        o[k + 1] = (u32)_mm_cmpistri(range, t, _SIDD_CMP_RANGES | _SIDD_MOST_SIGNIFICANT);
        o[k + 2] = (u32)_mm_cmpistri(needle, t, _SIDD_CMP_EQUAL_ORDERED);
        o[k + 3] = (u32)_mm_cmpestri(needle, i % 17, t, (i * 7) % 19, _SIDD_CMP_EQUAL_EACH | _SIDD_NEGATIVE_POLARITY);
        __m128i m = _mm_cmpistrm(set, t, _SIDD_CMP_EQUAL_ANY | _SIDD_UNIT_MASK);
        o[k + 4] = (u32)_mm_movemask_epi8(m);
        o[k + 5] = (u32)_mm_cvtsi128_si32(_mm_cmpestrm(range, 4, t, 16 - i % 16, _SIDD_CMP_RANGES | _SIDD_MASKED_NEGATIVE_POLARITY));
        o[k + 6] = (u32)(_mm_cmpistrc(set, t, _SIDD_UWORD_OPS) | _mm_cmpistrz(set, t, 0) << 1 | _mm_cmpistrs(set, t, 0) << 2
                         | _mm_cmpistro(set, t, 0) << 3 | _mm_cmpistra(set, t, 0) << 4);
        o[k + 7] = (u32)_mm_cmpestri(needle, -5, t, 200, _SIDD_SWORD_OPS | _SIDD_CMP_RANGES);
    }
}

static void crc(u32 *o, const uint8_t *in) {
    u64 c = 0xFFFFFFFF;
    const u64 *q = (const u64 *)in;
    for (int i = 0; i < 512; i++) c = _mm_crc32_u64(c, q[i]);
    o[0] = (u32)c;
    u32 d = 0;
    for (int i = 0; i < 4096; i++) d = _mm_crc32_u8(d, in[i]);
    o[1] = d;
    o[2] = _mm_crc32_u16(_mm_crc32_u32(d, 0x12345678u), 0xBEEF);
}

static void floats(u64 *o, const uint8_t *in) {
    const double *x = (const double *)(in + 512);
    for (int i = 0; i < 64; i++) {
        double v = x[i] * 1e-300 * 1e-7;  /* bring exponents down to a useful range */
        double f = __builtin_floor(v), c = __builtin_ceil(v), t = __builtin_trunc(v), r = __builtin_nearbyint(v);
        __builtin_memcpy(&o[4 * i], &f, 8); __builtin_memcpy(&o[4 * i + 1], &c, 8);
        __builtin_memcpy(&o[4 * i + 2], &t, 8); __builtin_memcpy(&o[4 * i + 3], &r, 8);
    }
    const float *y = (const float *)(in + 3072);
    for (int i = 0; i < 32; i += 4) {
        __m128 a = _mm_loadu_ps(y + i), b = _mm_loadu_ps(y + i + 32);
        a = _mm_mul_ps(a, _mm_set1_ps(1e-30f)); b = _mm_mul_ps(b, _mm_set1_ps(1e-30f));
        __m128 d = _mm_dp_ps(a, b, 0xF1);
        _mm_storeu_ps((float *)&o[256 + i], _mm_round_ps(_mm_mul_ps(a, _mm_set1_ps(1e6f)), _MM_FROUND_TO_NEAREST_INT));
        _mm_storeu_ps((float *)&o[258 + i], d);
    }
}

static void ssse3(u32 *o, const uint8_t *in) {
    for (int i = 0; i < 64; i++) {
        __m128i a = _mm_loadu_si128((const __m128i *)(in + 16 * i));
        __m128i b = _mm_loadu_si128((const __m128i *)(in + 1024 + 16 * i));
        __m128i r = _mm_shuffle_epi8(a, b);
        r = _mm_add_epi16(r, _mm_maddubs_epi16(a, b));
        r = _mm_xor_si128(r, _mm_mulhrs_epi16(a, b));
        r = _mm_add_epi32(r, _mm_hadd_epi32(a, b));
        r = _mm_sub_epi16(r, _mm_hsubs_epi16(a, b));
        r = _mm_xor_si128(r, _mm_sign_epi8(a, b));
        r = _mm_add_epi8(r, _mm_alignr_epi8(a, b, 5));
        r = _mm_packus_epi32(r, _mm_minpos_epu16(a));
        r = _mm_xor_si128(r, _mm_mpsadbw_epu8(a, b, 5));
        r = _mm_blendv_epi8(r, a, b);
        r = _mm_insert_epi8(_mm_insert_epi32(r, _mm_extract_epi8(a, 7), 2), _mm_extract_epi16(b, 3), 11);
        _mm_storeu_si128((__m128i *)(o + 4 * i), r);
        o[256 + i] = (u32)_mm_testc_si128(a, b) | (u32)_mm_testz_si128(a, a) << 1;
    }
}

__attribute__((section(".text.entry"), used))
void entry(uint8_t *out, const uint8_t *in) {
    ints((u32 *)out, in);
    strings((u32 *)(out + 8192), in);
    crc((u32 *)(out + 10240), in);
    floats((u64 *)(out + 10496), in);
    ssse3((u32 *)(out + 14336), in);
}
"""#

    static let linkScript = "SECTIONS { . = 0; .text : { *(.text.entry) *(.text*) *(.rodata*) } /DISCARD/ : { *(.comment) *(.note*) *(.eh_frame*) } }\n"

    static var gccAvailable: Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/gcc") }

    /// The program as position-independent flat code, its entry at offset 0.
    static func build(source: String = CompiledV2.source, march: String = "x86-64-v2") throws -> [UInt8] {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("x86v2-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let p = dir.path
        try source.write(toFile: p + "/v2.c", atomically: true, encoding: .utf8)
        try linkScript.write(toFile: p + "/link.ld", atomically: true, encoding: .utf8)
        try Assembler.run("/usr/bin/gcc", ["-O3", "-march=" + march, "-ffp-contract=fast", "-fPIC", "-fvisibility=hidden", "-ffreestanding",
                                 "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
                                 "-fno-tree-loop-distribute-patterns", "-c", p + "/v2.c", "-o", p + "/v2.o"])
        try Assembler.run("/usr/bin/ld", ["-T", p + "/link.ld", "-o", p + "/v2.elf", p + "/v2.o"])
        try Assembler.run("/usr/bin/objcopy", ["-O", "binary", "-j", ".text", p + "/v2.elf", p + "/v2.bin"])
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: p + "/v2.bin")))
    }

    typealias Entry = @convention(c) (UnsafeMutableRawPointer, UnsafeRawPointer) -> Void

    static func runNative(_ code: [UInt8], _ input: [UInt8]) -> [UInt8] {
        let size = (code.count + 4095) & ~4095
        // SAFETY: a fresh private RWX mapping holding only the compiled program, which
        // writes 16 KiB to `out` and reads 4 KiB of `input`.
        let page = mmap(nil, size, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        defer { munmap(page, size) }
        code.withUnsafeBytes { page.copyMemory(from: $0.baseAddress!, byteCount: code.count) }
        var out = [UInt8](repeating: 0, count: 16384)
        out.withUnsafeMutableBytes { o in input.withUnsafeBytes { i in unsafeBitCast(page, to: Entry.self)(o.baseAddress!, i.baseAddress!) } }
        return out
    }

    /// `avx`: CR4.OSXSAVE set and XCR0 = x87 | SSE | AVX, as an AVX-using OS leaves them.
    static func runEmulated(_ code: [UInt8], _ input: [UInt8], level: X86CPULevel, avx: Bool = false) throws -> (VCPUExit, [UInt8]) {
        let m = try TestMachine()
        m.cpu.cpuLevel = level
        try m.setupLongMode()
        if avx {
            var s = m.cpu.specialRegisters()
            s.cr4 |= X86Bits.cr4OSXSAVE
            m.cpu.setSpecialRegisters(s)
            m.cpu.xcr0 = 7
        }
        try m.load(code)
        try m.memory.write(bytes: input, at: 0x40_0000)
        try m.memory.write(bytes: [UInt8](repeating: 0, count: 16384), at: 0x50_0000)
        try m.memory.write(bytes: [0xF4], at: 0xF_F000)   // return address: hlt
        try m.memory.write(UInt64(0xF_F000), at: 0x8_EFF8)
        var r = m.cpu.registers()
        r.rdi = 0x50_0000; r.rsi = 0x40_0000; r.rsp = 0x8_EFF8
        m.cpu.setRegisters(r)
        let exit = try m.run()
        return (exit, try m.memory.readBytes(at: 0x50_0000, count: 16384))
    }
}

@Suite struct CompiledV2Tests {
    @Test(.enabled(if: CompiledV2.gccAvailable, "needs gcc"))
    func gccX8664V2ProgramMatchesTheHost() throws {
        let code = try CompiledV2.build()
        var g = SplitMix(state: 120)
        for round in 0..<3 {
            let input = (0..<4096).map { _ in UInt8(truncatingIfNeeded: round == 2 ? g.interesting() : g.next()) }
            let native = CompiledV2.runNative(code, input)
            let (exit, emulated) = try CompiledV2.runEmulated(code, input, level: .v2)
            #expect(exit.isHalt, "\(exit)")
            #expect(native.filter { $0 != 0 }.count > 4000)   // the program did write its results
            let diffs = (0..<native.count).filter { native[$0] != emulated[$0] }
            #expect(diffs.isEmpty, "round \(round): \(diffs.count) bytes differ, first at +\(diffs.first ?? 0)")
        }
        // The same program at level baseline: #UD (no IDT here, so the machine shuts down).
        let (exit, _) = try CompiledV2.runEmulated(code, [UInt8](repeating: 1, count: 4096), level: .baseline)
        #expect(!exit.isHalt)
    }
}
