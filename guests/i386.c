/* i386: a 32-bit protected-mode guest (PVH entry, or multiboot v1 when built as
 * multiboot.elf). Port I/O, MMIO, and the PIT interrupt through the 8259 PIC. */
#include "guest.h"

volatile u32 ticks;
static void pit_tick(struct irq_frame *f) { (void)f; ticks++; pic_eoi(0); }

int main(void) {
    printf("i386: hello from 32-bit protected mode\n");
    boot_describe();
    if (boot_magic == MULTIBOOT_MAGIC) {
        report(true, "booted by a multiboot loader (magic 0x%x)", boot_magic);
        const u32 *mbi = (const u32 *)boot_info;
        report((mbi[0] & 1) && mbi[2] >= 1024, "multiboot memory info: %u KiB above 1 MiB", mbi[2]);
    } else {
        report(boot_magic == PVH_MAGIC, "booted through the PVH entry (start_info 0x%x)", boot_info);
    }
    u32 cr0;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    report((cr0 & 1) && !(cr0 & 0x80000000), "CR0.PE set, paging off (CR0 0x%x)", cr0);
    report(sizeof(void *) == 4, "32-bit code");

    u8 old = inb(0x21);
    outb(0x21, 0x5A);
    u8 got = inb(0x21);
    outb(0x21, old);
    report(got == 0x5A, "port I/O: PIC IMR reads back 0x%x", got);

    u32 ver = lapic_read(0x30);
    report((ver & 0xFF) >= 0x10 && (ver & 0xFF) <= 0x15, "MMIO: local APIC version 0x%x", ver);

    /* PIT channel 0 at 1 kHz on IRQ 0 through the PIC (vectors 0x20-0x2f). */
    pic_remap(0x20, 0x28);
    set_irq_handler(0x20, pit_tick);
    pit_periodic(1000);
    pic_set_mask(~1 & 0xFFFF);
    sti();
    for (u32 spins = 0; ticks < 20 && spins < 200000000; spins++) __asm__ volatile("hlt");
    cli();
    pic_set_mask(0xFFFF);
    report(ticks >= 20, "PIT: %u timer interrupts through the PIC", ticks);
    return 0;
}
