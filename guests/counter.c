/* counter: counts forever, for the pause and snapshot tests. Never exits on its own.
 *
 * Each iteration writes the COM1 scratch register and reads it back (a port write and a
 * port read the VMM handles in user space on every backend, so a pause often lands on an
 * exit whose read must be completed), scribbles on its page, and bumps `count`; every
 * 4096 iterations it prints "count N" (N = lines printed so far, from 1). The RTC's
 * periodic interrupt is enabled at 1024 Hz with its IRQ left masked, so the VMM's device
 * timer thread runs the whole time.
 *
 * The page's address is printed first ("counter: page at 0x..."); its layout:
 *   +0 magic "COUNTER!", +8 count, +16 lines, +24 scratch read-back mismatches. */
#include "guest.h"

struct counter_page {
    volatile u64 magic;
    volatile u64 count;
    volatile u64 lines;
    volatile u64 mismatches;
    volatile u8 scribble[4096 - 32];
} __attribute__((aligned(4096)));

static struct counter_page page;

int main(void) {
    cli();
    page.magic = 0x215245544E554F43ULL;   /* "COUNTER!" */
    printf("counter: page at 0x%lx\n", (uptr)&page);
    outb(0x70, 0x0A); outb(0x71, (u8)((inb(0x71) & 0xF0) | 6));
    outb(0x70, 0x0B); outb(0x71, (u8)(inb(0x71) | 0x40));
    for (;;) {
        u64 n = page.count + 1;
        u8 m = (u8)(n * 7 + 1);
        outb(0x3FF, m);
        if (inb(0x3FF) != m) page.mismatches++;
        page.scribble[n % sizeof page.scribble] = (u8)n;
        page.count = n;
        if (n % 4096 == 0) {
            page.lines++;
            printf("count %llu\n", page.lines);
        }
    }
    return 0;
}
