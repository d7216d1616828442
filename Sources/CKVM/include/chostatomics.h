#ifndef CHOSTATOMICS_H
#define CHOSTATOMICS_H
/*
 * Host atomics on raw pointers for the software CPU (X86Emulator): a LOCK-prefixed
 * read-modify-write, XCHG with memory and a page-table accessed/dirty update act on the
 * guest page's host address. Swift's Synchronization.Atomic only works on storage it owns,
 * not at an arbitrary address in guest RAM, hence these few C wrappers. A header of the
 * project's one C target (CKVM) of its own: it includes nothing of <linux/kvm.h>, and the
 * software CPU uses nothing else of CKVM.
 *
 * SAFETY (every function): `p` points into a mapped guest RAM page with the operand's
 * bytes inside that page, naturally aligned for its size (callers check both; 16 bytes
 * for the 128-bit compare-exchange). All orderings are sequentially consistent, like a
 * locked x86 instruction (a full barrier).
 */
#include <stdint.h>
#include <stdbool.h>

static inline uint64_t cha_load(void *p, int size) {
    switch (size) {
    case 1: return __atomic_load_n((uint8_t *)p, __ATOMIC_SEQ_CST);
    case 2: return __atomic_load_n((uint16_t *)p, __ATOMIC_SEQ_CST);
    case 4: return __atomic_load_n((uint32_t *)p, __ATOMIC_SEQ_CST);
    default: return __atomic_load_n((uint64_t *)p, __ATOMIC_SEQ_CST);
    }
}

/* Compare-and-swap of `size` bytes: true when *p held *expected and now holds desired;
 * otherwise false with the value found stored in *expected. */
static inline bool cha_cas(void *p, int size, uint64_t *expected, uint64_t desired) {
    switch (size) {
    case 1: {
        uint8_t e = (uint8_t)*expected;
        bool ok = __atomic_compare_exchange_n((uint8_t *)p, &e, (uint8_t)desired, false,
                                              __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        *expected = e; return ok;
    }
    case 2: {
        uint16_t e = (uint16_t)*expected;
        bool ok = __atomic_compare_exchange_n((uint16_t *)p, &e, (uint16_t)desired, false,
                                              __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        *expected = e; return ok;
    }
    case 4: {
        uint32_t e = (uint32_t)*expected;
        bool ok = __atomic_compare_exchange_n((uint32_t *)p, &e, (uint32_t)desired, false,
                                              __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        *expected = e; return ok;
    }
    default:
        return __atomic_compare_exchange_n((uint64_t *)p, expected, desired, false,
                                           __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
}

/* Exchange of `size` bytes; returns the old value. */
static inline uint64_t cha_exchange(void *p, int size, uint64_t v) {
    switch (size) {
    case 1: return __atomic_exchange_n((uint8_t *)p, (uint8_t)v, __ATOMIC_SEQ_CST);
    case 2: return __atomic_exchange_n((uint16_t *)p, (uint16_t)v, __ATOMIC_SEQ_CST);
    case 4: return __atomic_exchange_n((uint32_t *)p, (uint32_t)v, __ATOMIC_SEQ_CST);
    default: return __atomic_exchange_n((uint64_t *)p, v, __ATOMIC_SEQ_CST);
    }
}

/* Atomic OR into a 4- or 8-byte page-table entry (accessed/dirty bits). */
static inline void cha_or(void *p, int size, uint64_t bits) {
    if (size == 4) __atomic_fetch_or((uint32_t *)p, (uint32_t)bits, __ATOMIC_SEQ_CST);
    else __atomic_fetch_or((uint64_t *)p, bits, __ATOMIC_SEQ_CST);
}

/* 128-bit compare-and-swap (CMPXCHG16B): `expected` and `desired` are {low, high}. On
 * failure the value found is stored in `expected`. Returns false on hosts without a
 * lock-free 16-byte CAS; callers then take the non-atomic path (cha_has_cas16). */
static inline bool cha_has_cas16(void) {
#if defined(__x86_64__)
    return true;
#else
    return false;
#endif
}

static inline bool cha_cas16(void *p, uint64_t expected[2], const uint64_t desired[2]) {
#if defined(__x86_64__)
    uint64_t lo = expected[0], hi = expected[1];
    bool ok;
    /* Inline LOCK CMPXCHG16B: needs no -mcx16 or libatomic (every x86-64 host that can
     * run this project has CX16). p is 16-byte aligned (the caller checked). */
    __asm__ __volatile__("lock cmpxchg16b %1\n\tsete %0"
                         : "=q"(ok), "+m"(*(volatile __int128 *)p), "+a"(lo), "+d"(hi)
                         : "b"(desired[0]), "c"(desired[1])
                         : "memory", "cc");
    expected[0] = lo; expected[1] = hi;
    return ok;
#else
    (void)p; (void)expected; (void)desired;
    return false;
#endif
}

#endif
