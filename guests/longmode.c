/* longmode: enters 64-bit long mode itself (from the PVH 32-bit entry), then checks
 * port I/O, string port I/O, MMIO to the local APIC and IOAPIC, and CPUID. */
#include "guest.h"

int main(void) {
    printf("longmode: hello from 64-bit long mode\n");
    boot_describe();

    u64 efer = rdmsr(0xC0000080);
    report((efer & 0x500) == 0x500, "EFER.LME and EFER.LMA are set (EFER 0x%llx)", (unsigned long long)efer);
    uptr cr0, cr4;
    __asm__ volatile("mov %%cr0, %0; mov %%cr4, %0" : "=r"(cr0) : : );
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    report((cr0 & 0x80000001) == 0x80000001 && (cr4 & 0x20), "CR0.PG, CR0.PE and CR4.PAE are set");

    u32 a, b, c, d;
    cpuid(0, 0, &a, &b, &c, &d);
    char vendor[13];
    memcpy(vendor, &b, 4); memcpy(vendor + 4, &d, 4); memcpy(vendor + 8, &c, 4); vendor[12] = 0;
    printf("cpuid: vendor \"%s\", max leaf 0x%x\n", vendor, a);
    cpuid(1, 0, &a, &b, &c, &d);
    if (c & (1u << 31)) {
        char sig[13];
        cpuid(0x40000000, 0, &a, &b, &c, &d);
        memcpy(sig, &b, 4); memcpy(sig + 4, &c, 4); memcpy(sig + 8, &d, 4); sig[12] = 0;
        printf("cpuid: hypervisor \"%s\"\n", sig);
    }

    /* Port I/O: the master PIC's mask register holds what we write. */
    u8 old = inb(0x21);
    outb(0x21, 0xA5);
    u8 got = inb(0x21);
    outb(0x21, old);
    report(got == 0xA5, "port I/O: PIC IMR reads back 0x%x", got);

    /* String port I/O: one `rep outsb` of a whole line to COM1. */
    static const char line[] = "string I/O: rep outsb reached the console\r\n";
    const char *p = line;
    uptr n = sizeof(line) - 1;
    __asm__ volatile("rep outsb" : "+S"(p), "+c"(n) : "d"(0x3f8) : "memory");
    report(n == 0, "rep outsb completed");

    /* MMIO: local APIC and IOAPIC registers. */
    u32 ver = lapic_read(0x30);
    report((ver & 0xFF) >= 0x10 && (ver & 0xFF) <= 0x15 && ((ver >> 16) & 0xFF) >= 3,
           "MMIO: local APIC version 0x%x", ver);
    report(lapic_id() == 0, "MMIO: boot CPU has APIC ID 0");
    u32 iov = ioapic_read(1);
    report(((iov >> 16) & 0xFF) == 23, "MMIO: IOAPIC version 0x%x has 24 pins", iov);

    /* Memory above 1 MiB through the identity map. */
    volatile u64 *probe = (volatile u64 *)0x300000;
    *probe = 0x0123456789abcdefull;
    report(*probe == 0x0123456789abcdefull, "RAM at 3 MiB holds a 64-bit value");
    return 0;
}
