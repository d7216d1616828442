/* Freestanding test-guest library: port I/O, COM1 console, printf, reporting, exit.
 * Builds for i386 (-m32) and x86-64 (-m64). */
#ifndef GUEST_H
#define GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long uptr;
typedef int bool;
#define true 1
#define false 0
#define NULL ((void *)0)

/* ---- port I/O ---- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* ---- MMIO ---- */
static inline u32 mmio_read32(uptr a) { return *(volatile u32 *)a; }
static inline void mmio_write32(uptr a, u32 v) { *(volatile u32 *)a = v; }

/* ---- CPU ---- */
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return (u64)hi << 32 | lo; }
static inline u64 rdmsr(u32 msr) { u32 lo, hi; __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr)); return (u64)hi << 32 | lo; }
static inline void sti(void) { __asm__ volatile("sti"); }
static inline void cli(void) { __asm__ volatile("cli"); }
static inline void pause(void) { __asm__ volatile("pause"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

/* ---- libc bits ---- */
void *memset(void *d, int c, uptr n);
void *memcpy(void *d, const void *s, uptr n);
int memcmp(const void *a, const void *b, uptr n);
uptr strlen(const char *s);

/* ---- console (COM1, polled) ---- */
void serial_init(void);
void putchar(char c);
void puts(const char *s);
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- tests (kvm-unit-tests style) ---- */
void report(bool pass, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints the summary and exits through the debug-exit port: status 0 when every report
 * passed, 1 otherwise (QEMU's isa-debug-exit turns value v into process status v*2+1). */
void __attribute__((noreturn)) report_summary(void);
void __attribute__((noreturn)) debug_exit(u8 value);

/* ---- interrupts (idt.c + entry*.S) ---- */
struct irq_frame { uptr vector, error, ip, cs, flags; };
typedef void (*irq_handler)(struct irq_frame *f);
void idt_init(void);
void set_irq_handler(int vector, irq_handler h);
void load_idt(void);

/* ---- legacy chips ---- */
void pic_remap(u8 master_base, u8 slave_base);
void pic_set_mask(u16 mask);   /* bit n set = IRQ n masked */
void pic_eoi(int irq);
void pit_periodic(u32 hz);      /* channel 0, mode 2 */

/* ---- local APIC / IOAPIC (xAPIC MMIO) ---- */
#define LAPIC_BASE 0xFEE00000u
#define IOAPIC_BASE 0xFEC00000u
u32 lapic_read(u32 reg);
void lapic_write(u32 reg, u32 v);
u32 lapic_id(void);
void lapic_enable(void);
void lapic_eoi(void);
u32 ioapic_read(u32 reg);
void ioapic_write(u32 reg, u32 v);
void ioapic_route(u32 pin, u8 vector, u32 dest_apic, bool level, bool active_low);

/* ---- ACPI ---- */
struct madt_info {
    int cpus;
    u8 apic_ids[64];
    u32 lapic_addr;
    u32 ioapic_addr;
    u32 irq0_gsi;          /* after interrupt source overrides */
    bool irq0_active_low, irq0_level;
    bool found;
};
/* Finds the RSDP (at `hint` when non-zero, else in the EBDA and 0xE0000-0xFFFFF) and
 * parses the MADT. Every table is checksum- and length-checked. */
bool acpi_parse_madt(uptr rsdp_hint, struct madt_info *out);

/* ---- boot information ---- */
/* Set by the entry code: PVH start_info (magic 0x336ec578) or multiboot info. */
extern u32 boot_magic;
extern u32 boot_info;
#define PVH_MAGIC 0x336ec578u
#define MULTIBOOT_MAGIC 0x2BADB002u
struct hvm_start_info {
    u32 magic, version, flags, nr_modules;
    u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    u32 memmap_entries, reserved;
};
const char *boot_cmdline(void);
uptr boot_rsdp(void);
void boot_describe(void);

/* ---- timing ---- */
extern volatile u32 ticks;
void delay_loops(u32 n);

#endif
