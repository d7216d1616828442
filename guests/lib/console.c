#include "guest.h"
#include <stdarg.h>

#define COM1 0x3f8

void serial_init(void) {
    outb(COM1 + 1, 0x00);   /* no interrupts */
    outb(COM1 + 3, 0x80);   /* DLAB */
    outb(COM1 + 0, 0x01);   /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);   /* 8N1 */
    outb(COM1 + 2, 0xC7);   /* FIFO on, cleared */
    outb(COM1 + 4, 0x03);   /* DTR, RTS */
}

void putchar(char c) {
    if (c == '\n') putchar('\r');
    /* Poll LSR.THRE, bounded so a missing UART cannot hang the guest. */
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++) pause();
    outb(COM1, (u8)c);
}

void puts(const char *s) { while (*s) putchar(*s++); }

/* u64 / small divisor without libgcc (i386 has no 64-bit divide instruction). */
static u64 divmod(u64 v, u32 d, u32 *rem) {
    u64 q = 0;
    u32 r = 0;
    for (int i = 63; i >= 0; i--) {
        r = (r << 1) | (u32)((v >> i) & 1);
        if (r >= d) { r -= d; q |= 1ull << i; }
    }
    *rem = r;
    return q;
}

static void put_num(u64 v, int base, int width, char pad, bool neg) {
    char buf[24];
    int n = 0;
    u32 r;
    do { v = divmod(v, base, &r); buf[n++] = "0123456789abcdef"[r]; } while (v && n < 23);
    if (neg) buf[n++] = '-';
    while (n < width && n < 23) buf[n++] = pad;
    while (n) putchar(buf[--n]);
}

/* %d %u %x %s %c %p %%, with l/ll and a zero/width prefix. */
static void vprintf(const char *fmt, va_list ap) {
    for (; *fmt; fmt++) {
        if (*fmt != '%') { putchar(*fmt); continue; }
        fmt++;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*fmt == '0') { pad = '0'; fmt++; }
        while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') { longs++; fmt++; }
        switch (*fmt) {
        case 'd': {
            long long v = longs >= 2 ? va_arg(ap, long long) : longs ? va_arg(ap, long) : va_arg(ap, int);
            put_num(v < 0 ? -(u64)v : (u64)v, 10, width, pad, v < 0);
            break;
        }
        case 'u': case 'x': {
            u64 v = longs >= 2 ? va_arg(ap, unsigned long long) : longs ? va_arg(ap, unsigned long) : va_arg(ap, unsigned);
            put_num(v, *fmt == 'u' ? 10 : 16, width, pad, false);
            break;
        }
        case 'p': puts("0x"); put_num((uptr)va_arg(ap, void *), 16, 0, ' ', false); break;
        case 's': { const char *s = va_arg(ap, const char *); puts(s ? s : "(null)"); break; }
        case 'c': putchar((char)va_arg(ap, int)); break;
        case '%': putchar('%'); break;
        case 0: return;
        default: putchar('%'); putchar(*fmt);
        }
    }
}

int printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    return 0;
}

static int tests, failures;

void report(bool pass, const char *fmt, ...) {
    va_list ap;
    tests++;
    if (!pass) failures++;
    puts(pass ? "PASS: " : "FAIL: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

void debug_exit(u8 value) {
    outb(0xf4, value);
    /* Not under a VMM with a debug-exit port: stop here. */
    for (;;) { cli(); __asm__ volatile("hlt"); }
}

void report_summary(void) {
    printf("SUMMARY: %d tests, %d failures\n", tests, failures);
    debug_exit(failures ? 1 : 0);
}
