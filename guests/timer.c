/* timer: the PIT through the IOAPIC (IRQ 0 routed by the MADT's interrupt source
 * override) and the local APIC timer in periodic mode, in 64-bit long mode. */
#include "guest.h"

volatile u32 ticks;
static volatile u32 apic_ticks;
static void pit_tick(struct irq_frame *f) { (void)f; ticks++; lapic_eoi(); }
static void apic_tick(struct irq_frame *f) { (void)f; apic_ticks++; lapic_eoi(); }

int main(void) {
    printf("timer: PIT via IOAPIC and LAPIC timer\n");
    struct madt_info m;
    bool ok = acpi_parse_madt(boot_rsdp(), &m);
    report(ok, "ACPI MADT found");
    u32 gsi = ok ? m.irq0_gsi : 2;
    printf("timer: IRQ0 -> GSI %u%s\n", gsi, m.irq0_active_low ? " (active low)" : "");

    pic_remap(0x20, 0x28);          /* park the PIC away from exception vectors, all masked */
    lapic_enable();
    set_irq_handler(0x30, pit_tick);
    set_irq_handler(0x31, apic_tick);
    ioapic_route(gsi, 0x30, lapic_id(), m.irq0_level, m.irq0_active_low);
    pit_periodic(1000);
    sti();
    u64 t0 = rdtsc();
    for (u32 spins = 0; ticks < 50 && spins < 100000000; spins++) __asm__ volatile("hlt");
    u64 t1 = rdtsc();
    report(ticks >= 50, "PIT: %u interrupts through IOAPIC pin %u", ticks, gsi);
    ioapic_write(0x10 + 2 * gsi, 1u << 16);  /* mask */
    if (ticks >= 50) printf("timer: TSC ~%llu kHz\n", (unsigned long long)((t1 - t0) / 50));

    /* LAPIC timer: divide by 16, periodic, vector 0x31. */
    lapic_write(0x3E0, 0x3);
    lapic_write(0x320, 0x31 | (1u << 17));
    lapic_write(0x380, 100000);
    for (u32 spins = 0; apic_ticks < 20 && spins < 100000000; spins++) __asm__ volatile("hlt");
    lapic_write(0x320, 1u << 16);   /* mask */
    cli();
    report(apic_ticks >= 20, "LAPIC timer: %u periodic interrupts", apic_ticks);
    return 0;
}
