#include "guest.h"

void *memset(void *d, int c, uptr n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
void *memcpy(void *d, const void *s, uptr n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }
int memcmp(const void *a, const void *b, uptr n) {
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++) if (*p != *q) return *p < *q ? -1 : 1;
    return 0;
}
uptr strlen(const char *s) { uptr n = 0; while (s[n]) n++; return n; }
void delay_loops(u32 n) { for (volatile u32 i = 0; i < n; i++) pause(); }
