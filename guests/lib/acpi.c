#include "guest.h"

struct sdt { char sig[4]; u32 length; u8 rev, csum; char oem[6], table[8]; u32 oemrev, creator, crev; } __attribute__((packed));
struct rsdp { char sig[8]; u8 csum; char oem[6]; u8 rev; u32 rsdt; u32 length; u64 xsdt; u8 xcsum, res[3]; } __attribute__((packed));

static bool sum_ok(const void *p, u32 n) { u8 s = 0; const u8 *b = p; while (n--) s += *b++; return s == 0; }

static const struct rsdp *rsdp_at(uptr a) {
    const struct rsdp *r = (const void *)a;
    if (memcmp(r->sig, "RSD PTR ", 8) || !sum_ok(r, 20)) return NULL;
    return r;
}

static const struct rsdp *find_rsdp(uptr hint) {
    if (hint) return rsdp_at(hint);
    uptr ebda = (uptr)(*(volatile u16 *)0x40E) << 4;
    if (ebda >= 0x80000 && ebda < 0xA0000)
        for (uptr a = ebda; a < ebda + 1024; a += 16) { const struct rsdp *r = rsdp_at(a); if (r) return r; }
    for (uptr a = 0xE0000; a < 0x100000; a += 16) { const struct rsdp *r = rsdp_at(a); if (r) return r; }
    return NULL;
}

/* A table below 4 GiB that passes its checksum, with a sane length. */
static const struct sdt *table(u64 addr) {
    if (!addr || addr >= 0xFFFF0000ull) return NULL;
    const struct sdt *t = (const void *)(uptr)addr;
    if (t->length < sizeof(struct sdt) || t->length > 0x10000 || !sum_ok(t, t->length)) return NULL;
    return t;
}

bool acpi_parse_madt(uptr hint, struct madt_info *m) {
    memset(m, 0, sizeof(*m));
    m->irq0_gsi = 0;
    const struct rsdp *r = find_rsdp(hint);
    if (!r) { puts("acpi: no RSDP\n"); return false; }
    const struct sdt *root = NULL;
    int entry_size = 4;
    if (r->rev >= 2 && r->xsdt && sum_ok(r, r->length < 36 ? 36 : (r->length > 64 ? 64 : r->length))) {
        root = table(r->xsdt); entry_size = 8;
    }
    if (!root) { root = table(r->rsdt); entry_size = 4; }
    if (!root) { puts("acpi: bad RSDT/XSDT\n"); return false; }
    u32 n = (root->length - sizeof(struct sdt)) / entry_size;
    const u8 *entries = (const u8 *)(root + 1);
    const struct sdt *madt = NULL;
    for (u32 i = 0; i < n && i < 64; i++) {
        u64 a = entry_size == 8 ? *(const u64 *)(entries + 8 * i) : *(const u32 *)(entries + 4 * i);
        const struct sdt *t = table(a);
        if (t && !memcmp(t->sig, "APIC", 4)) { madt = t; break; }
    }
    if (!madt) { puts("acpi: no MADT\n"); return false; }
    m->lapic_addr = *(const u32 *)(madt + 1);
    const u8 *p = (const u8 *)madt + sizeof(struct sdt) + 8;
    const u8 *end = (const u8 *)madt + madt->length;
    while (p + 2 <= end && p[1] >= 2 && p + p[1] <= end) {
        switch (p[0]) {
        case 0: /* processor local APIC: uid, apic id, flags */
            if ((*(const u32 *)(p + 4) & 1) && m->cpus < 64) m->apic_ids[m->cpus++] = p[3];
            break;
        case 1: /* IOAPIC */
            if (!m->ioapic_addr) m->ioapic_addr = *(const u32 *)(p + 4);
            break;
        case 2: /* interrupt source override: bus, source, gsi, flags */
            if (p[3] == 0) {
                u16 fl = *(const u16 *)(p + 8);
                m->irq0_gsi = *(const u32 *)(p + 4);
                m->irq0_active_low = (fl & 3) == 3;
                m->irq0_level = ((fl >> 2) & 3) == 3;
            }
            break;
        }
        p += p[1];
    }
    m->found = true;
    return true;
}
