#include "guest.h"

/* ---- 8259A PIC pair ---- */
void pic_remap(u8 master_base, u8 slave_base) {
    outb(0x20, 0x11); outb(0xA0, 0x11);             /* ICW1: edge, cascade, ICW4 */
    outb(0x21, master_base); outb(0xA1, slave_base); /* ICW2: vector bases */
    outb(0x21, 0x04); outb(0xA1, 0x02);             /* ICW3: slave on IRQ2 */
    outb(0x21, 0x01); outb(0xA1, 0x01);             /* ICW4: 8086 mode */
    pic_set_mask(0xFFFF);
}
void pic_set_mask(u16 mask) { outb(0x21, (u8)mask); outb(0xA1, (u8)(mask >> 8)); }
void pic_eoi(int irq) { if (irq >= 8) outb(0xA0, 0x20); outb(0x20, 0x20); }

/* ---- 8254 PIT channel 0 ---- */
void pit_periodic(u32 hz) {
    u32 div = 1193182 / hz;
    outb(0x43, 0x34);               /* channel 0, lobyte/hibyte, mode 2 */
    outb(0x40, (u8)div);
    outb(0x40, (u8)(div >> 8));
}

/* ---- local APIC (xAPIC) ---- */
u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }
u32 lapic_id(void) { return lapic_read(0x20) >> 24; }
void lapic_enable(void) { lapic_write(0xF0, 0x1FF); /* software enable, spurious 0xFF */ }
void lapic_eoi(void) { lapic_write(0xB0, 0); }

/* ---- IOAPIC ---- */
u32 ioapic_read(u32 reg) { mmio_write32(IOAPIC_BASE, reg); return mmio_read32(IOAPIC_BASE + 0x10); }
void ioapic_write(u32 reg, u32 v) { mmio_write32(IOAPIC_BASE, reg); mmio_write32(IOAPIC_BASE + 0x10, v); }
void ioapic_route(u32 pin, u8 vector, u32 dest, bool level, bool active_low) {
    u32 lo = vector | (active_low ? 1u << 13 : 0) | (level ? 1u << 15 : 0);
    ioapic_write(0x10 + 2 * pin + 1, dest << 24);
    ioapic_write(0x10 + 2 * pin, lo);
}

/* ---- boot information ---- */
u32 boot_magic, boot_info;

const char *boot_cmdline(void) {
    if (boot_magic == MULTIBOOT_MAGIC) {
        const u32 *mbi = (const u32 *)(uptr)boot_info;
        return (mbi[0] & (1 << 2)) && mbi[4] ? (const char *)(uptr)mbi[4] : "";
    }
    const struct hvm_start_info *si = (const void *)(uptr)boot_info;
    if (boot_info && si->magic == PVH_MAGIC && si->cmdline_paddr && si->cmdline_paddr < 0x100000000ull)
        return (const char *)(uptr)si->cmdline_paddr;
    return "";
}

uptr boot_rsdp(void) {
    const struct hvm_start_info *si = (const void *)(uptr)boot_info;
    if (boot_magic == PVH_MAGIC && boot_info && si->magic == PVH_MAGIC && si->version >= 1
        && si->rsdp_paddr < 0x100000000ull)
        return (uptr)si->rsdp_paddr;
    return 0;
}

void boot_describe(void) {
    if (boot_magic == PVH_MAGIC) {
        const struct hvm_start_info *si = (const void *)(uptr)boot_info;
        printf("boot: PVH start_info at 0x%x, version %u, rsdp 0x%llx\n",
               boot_info, si->version, (unsigned long long)si->rsdp_paddr);
    } else if (boot_magic == MULTIBOOT_MAGIC) {
        const u32 *mbi = (const u32 *)(uptr)boot_info;
        printf("boot: multiboot info at 0x%x, flags 0x%x", boot_info, mbi[0]);
        if (mbi[0] & 1) printf(", mem_lower %u KiB, mem_upper %u KiB", mbi[1], mbi[2]);
        putchar('\n');
    } else {
        printf("boot: unknown protocol (magic 0x%x)\n", boot_magic);
    }
    printf("cmdline: \"%s\"\n", boot_cmdline());
}
