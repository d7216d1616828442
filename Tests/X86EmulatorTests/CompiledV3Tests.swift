import Testing
import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// A C program built with `gcc -O3 -march=x86-64-v3 -ffp-contract=fast` (AVX2
/// auto-vectorized integer loops, FMA-contracted double loops, and the AVX2/FMA/F16C/BMI2
/// intrinsics: permutes, shuffles, gathers, blends, half-precision conversions) runs
/// natively and on the software CPU at level v3 on the same 4 KiB input; the 16 KiB of
/// results must agree bit for bit. At level v2 the same code stops with #UD.
enum CompiledV3 {
    static let source = #"""
#include <stdint.h>
#include <immintrin.h>

#define N 256
typedef uint64_t u64;
typedef uint32_t u32;

static void ints(u32 *o, const uint8_t *in) {
    const int32_t *a = (const int32_t *)in, *b = (const int32_t *)(in + 1024);
    for (int i = 0; i < N; i++) o[i] = (u32)(a[i] * b[i] + (a[i] >> (b[i] & 31)));
    for (int i = 0; i < N; i++) o[N + i] = (u32)(a[i] < b[i] ? a[i] : b[i]) ^ (u32)b[i] << (a[i] & 15);
    const uint8_t *c = in;
    for (int i = 0; i < N; i++) o[2 * N + i] = (u32)(c[i] > c[i + 7] ? c[i] - c[i + 7] : c[i + 7] - c[i]);
    const uint16_t *w = (const uint16_t *)in;
    for (int i = 0; i < N; i++) o[3 * N + i] = (u32)((w[i] * w[i + 3]) >> 16);
    const u64 *q = (const u64 *)in;
    for (int i = 0; i < 64; i++) o[4 * N + i] = (u32)(_pdep_u64(q[i], q[i + 64]) ^ _pext_u64(q[i], q[i + 128]));
    for (int i = 0; i < 64; i++) o[4 * N + 64 + i] = (u32)(__builtin_clzll(q[i] | 1) + __builtin_ctzll(q[i] | 1ULL << 63));
}

static void avx2(u32 *o, const uint8_t *in) {
    const int32_t *t = (const int32_t *)(in + 2048);
    for (int i = 0; i < 32; i++) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(in + 32 * i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(in + 1024 + 32 * i));
        __m256i r = _mm256_shuffle_epi8(a, b);
        r = _mm256_add_epi32(r, _mm256_permutevar8x32_epi32(a, b));
        r = _mm256_xor_si256(r, _mm256_permute4x64_epi64(b, 0x93));
        r = _mm256_sub_epi8(r, _mm256_alignr_epi8(a, b, 7));
        r = _mm256_add_epi16(r, _mm256_maddubs_epi16(a, b));
        r = _mm256_xor_si256(r, _mm256_permute2x128_si256(a, b, 0x21));
        r = _mm256_blendv_epi8(r, _mm256_packs_epi32(a, b), b);
        r = _mm256_add_epi64(r, _mm256_sllv_epi64(a, _mm256_and_si256(b, _mm256_set1_epi64x(63))));
        r = _mm256_xor_si256(r, _mm256_srav_epi32(b, a));
        __m256i idx = _mm256_and_si256(a, _mm256_set1_epi32(255));
        r = _mm256_add_epi32(r, _mm256_i32gather_epi32(t, idx, 4));
        r = _mm256_min_epu8(r, _mm256_max_epi16(a, _mm256_broadcastb_epi8(_mm256_castsi256_si128(b))));
        r = _mm256_inserti128_si256(r, _mm_add_epi8(_mm256_extracti128_si256(r, 1), _mm256_castsi256_si128(a)), 0);
        _mm256_storeu_si256((__m256i *)(o + 8 * i), r);
        o[256 + i] = (u32)_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_min_epu8(a, b), a));
        o[288 + i] = (u32)_mm256_testc_si256(a, b) | (u32)_mm256_testz_si256(a, _mm256_srli_epi64(b, 60)) << 1;
    }
}

static void floats(u64 *o, const uint8_t *in) {
    const double *x = (const double *)(in + 512), *y = (const double *)(in + 1536);
    double s[64];
    for (int i = 0; i < 64; i++) s[i] = x[i] * 1e-300 * 1e-7;
    for (int i = 0; i < 64; i++) { double v = s[i] * s[(i + 1) & 63] + y[i] * 1e-310; __builtin_memcpy(&o[i], &v, 8); }
    const float *f = (const float *)(in + 3072);
    for (int i = 0; i < 64; i += 8) {
        __m256 a = _mm256_mul_ps(_mm256_loadu_ps(f + i), _mm256_set1_ps(1e-30f));
        __m256 b = _mm256_mul_ps(_mm256_loadu_ps(f + i + 64), _mm256_set1_ps(1e-30f));
        __m256 c = _mm256_fmadd_ps(a, b, _mm256_set1_ps(1.5f));
        c = _mm256_fnmsub_ps(c, a, _mm256_sqrt_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), b)));
        c = _mm256_blendv_ps(c, _mm256_round_ps(a, _MM_FROUND_TO_ZERO), _mm256_cmp_ps(a, b, _CMP_NLT_UQ));
        _mm256_storeu_ps((float *)&o[64 + i / 2 * 2], c);
        __m128i h = _mm256_cvtps_ph(_mm256_mul_ps(a, _mm256_set1_ps(1e30f)), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)&o[128 + i / 4 * 2], h);
        __m256 back = _mm256_cvtph_ps(h);
        _mm256_storeu_ps((float *)&o[160 + i / 2 * 2], _mm256_hadd_ps(back, _mm256_dp_ps(a, b, 0xF3)));
    }
    __m256d d = _mm256_setzero_pd();
    for (int i = 0; i < 60; i += 4) d = _mm256_fmaddsub_pd(_mm256_loadu_pd(s + i), _mm256_loadu_pd(y + i), d);
    _mm256_storeu_pd((double *)&o[200], d);
}

__attribute__((section(".text.entry"), used))
void entry(uint8_t *out, const uint8_t *in) {
    ints((u32 *)out, in);
    avx2((u32 *)(out + 8192), in);
    floats((u64 *)(out + 10240), in);
    _mm256_zeroupper();
}
"""#
}

@Suite struct CompiledV3Tests {
    @Test(.enabled(if: CompiledV2.gccAvailable && HostFloat.hostHasAVX, "needs gcc and a host with AVX2/FMA/F16C"))
    func gccX8664V3ProgramMatchesTheHost() throws {
        let code = try CompiledV2.build(source: CompiledV3.source, march: "x86-64-v3")
        var g = SplitMix(state: 130)
        for round in 0..<3 {
            let input = (0..<4096).map { _ in UInt8(truncatingIfNeeded: round == 2 ? g.interesting() : g.next()) }
            let native = CompiledV2.runNative(code, input)
            let (exit, emulated) = try CompiledV2.runEmulated(code, input, level: .v3, avx: true)
            #expect(exit.isHalt, "\(exit)")
            #expect(native.filter { $0 != 0 }.count > 4000)   // the program did write its results
            let diffs = (0..<native.count).filter { native[$0] != emulated[$0] }
            #expect(diffs.isEmpty, "round \(round): \(diffs.count) bytes differ, first at +\(diffs.first ?? 0)")
        }
        // At level v2 (and at v3 with XCR0 lacking AVX): #UD, no IDT here, so a shutdown.
        #expect(!(try CompiledV2.runEmulated(code, [UInt8](repeating: 1, count: 4096), level: .v2).0.isHalt))
        #expect(!(try CompiledV2.runEmulated(code, [UInt8](repeating: 1, count: 4096), level: .v3).0.isHalt))
    }
}
