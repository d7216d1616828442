#include "guest.h"

/* Interrupt descriptor table for both widths; stubs are 16 bytes apart from isr_stubs
 * (entry*.S), each pushing (error code,) vector and jumping to the common path, which
 * calls irq_dispatch with a pointer to struct irq_frame. */
extern char isr_stubs[];
static irq_handler handlers[256];

#ifdef __x86_64__
struct gate { u16 off0, sel; u8 ist, type; u16 off1; u32 off2, res; } __attribute__((packed));
#define CODE_SEL 0x18
#else
struct gate { u16 off0, sel; u8 zero, type; u16 off1; } __attribute__((packed));
#define CODE_SEL 0x08
#endif
static struct gate idt[256] __attribute__((aligned(16)));

void idt_init(void) {
    for (int v = 0; v < 256; v++) {
        uptr a = (uptr)isr_stubs + 16 * v;
        struct gate *g = &idt[v];
        memset(g, 0, sizeof(*g));
        g->off0 = (u16)a;
        g->sel = CODE_SEL;
        g->type = 0x8E;  /* present, DPL 0, interrupt gate */
        g->off1 = (u16)(a >> 16);
#ifdef __x86_64__
        g->off2 = (u32)(a >> 32);
#endif
    }
    load_idt();
}

void load_idt(void) {
    struct { u16 limit; uptr base; } __attribute__((packed)) d = { sizeof(idt) - 1, (uptr)idt };
    __asm__ volatile("lidt %0" : : "m"(d));
}

void set_irq_handler(int vector, irq_handler h) { if (vector >= 0 && vector < 256) handlers[vector] = h; }

static const char *const names[] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound",
    "#UD invalid opcode", "#NM no FPU", "#DF double fault", "coprocessor overrun", "#TS bad TSS",
    "#NP segment not present", "#SS stack fault", "#GP general protection", "#PF page fault",
    "reserved", "#MF x87", "#AC alignment", "#MC machine check", "#XM SIMD",
};

void irq_dispatch(struct irq_frame *f) {
    uptr v = f->vector & 0xFF;
    if (handlers[v]) { handlers[v](f); return; }
    if (v < 32) {
        printf("FAIL: unexpected exception %u (%s), error 0x%lx, at %p\n", (unsigned)v,
               v < 20 ? names[v] : "reserved", (unsigned long)f->error, (void *)f->ip);
        debug_exit(2);
    }
    printf("unexpected interrupt vector %u\n", (unsigned)v);
    if (v >= 0x20) lapic_eoi();
}
