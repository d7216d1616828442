/* smp: finds the CPUs in the ACPI MADT, starts every application processor with
 * INIT/SIPI/SIPI through the local APIC, and has each report in over the console. */
#include "guest.h"

#define AP_TRAMPOLINE 0x8000
extern char ap_trampoline[], ap_trampoline_end[];
extern u64 ap_stack_top;

static volatile u32 ap_online;           /* APs that reached C */
static volatile u32 ap_seen[64];         /* APIC IDs that reported */
static u8 ap_stacks[16][8192] __attribute__((aligned(16)));

/* Atomicity check: every CPU adds to a counter with LOCK XADD and to another one under
 * an XCHG spinlock released by a plain store; no update may be lost. */
#define ATOMIC_ROUNDS 50000
#define LOCK_ROUNDS 2000   /* PAUSE in the spin exits to the host under PVM: keep it short */
static volatile u32 go, finished;
static volatile u64 atomic_counter, locked_counter;
static volatile u32 spin;

static void hammer(void) {
    for (u32 i = 0; i < ATOMIC_ROUNDS; i++)
        __atomic_fetch_add(&atomic_counter, 1, __ATOMIC_SEQ_CST);
    for (u32 i = 0; i < LOCK_ROUNDS; i++) {
        while (__atomic_exchange_n(&spin, 1, __ATOMIC_ACQUIRE)) pause();
        locked_counter = locked_counter + 1;
        __atomic_store_n(&spin, 0, __ATOMIC_RELEASE);
    }
}

void ap_main(void) {
    u32 id = lapic_id();
    printf("smp: cpu with APIC ID %u is online in long mode\n", id);
    if (id < 64) ap_seen[id] = 1;
    __atomic_fetch_add(&ap_online, 1, __ATOMIC_SEQ_CST);
    while (!go) pause();
    hammer();
    __atomic_fetch_add(&finished, 1, __ATOMIC_SEQ_CST);
}

static void icr_wait(void) {
    for (u32 i = 0; i < 1000000 && (lapic_read(0x300) & (1u << 12)); i++) pause();
}

static void send_ipi(u32 apic, u32 low) {
    lapic_write(0x310, apic << 24);
    lapic_write(0x300, low);
    icr_wait();
}

int main(void) {
    printf("smp: bring-up through INIT/SIPI\n");
    struct madt_info m;
    bool ok = acpi_parse_madt(boot_rsdp(), &m);
    report(ok && m.cpus >= 1, "ACPI MADT lists %d CPU(s)", m.cpus);
    if (!ok) return 0;
    u32 me = lapic_id();
    printf("smp: BSP is APIC ID %u; MADT APIC IDs:", me);
    for (int i = 0; i < m.cpus; i++) printf(" %u", m.apic_ids[i]);
    putchar('\n');

    lapic_enable();
    memcpy((void *)AP_TRAMPOLINE, ap_trampoline, ap_trampoline_end - ap_trampoline);

    int started = 0, slot = 0;
    for (int i = 0; i < m.cpus; i++) {
        u32 id = m.apic_ids[i];
        if (id == me) continue;
        if (slot >= 16) { printf("smp: more than 16 APs, not starting APIC ID %u\n", id); continue; }
        ap_stack_top = (u64)(uptr)&ap_stacks[slot++][8192];
        u32 before = ap_online;
        send_ipi(id, 0x00004500);                        /* INIT, assert */
        delay_loops(100000);
        send_ipi(id, 0x00004600 | (AP_TRAMPOLINE >> 12)); /* SIPI */
        delay_loops(10000);
        if (ap_online == before) send_ipi(id, 0x00004600 | (AP_TRAMPOLINE >> 12));
        for (u32 t = 0; t < 200000000 && ap_online == before; t++) pause();
        report(ap_online > before, "AP with APIC ID %u started", id);
        started++;
    }
    /* Every AP printed before it counted itself online; now all hammer the counters. */
    go = 1;
    hammer();
    for (u32 t = 0; t < 400000000 && finished < ap_online; t++) pause();
    u32 reported = 0;
    for (int i = 0; i < m.cpus; i++) if (m.apic_ids[i] != me && ap_seen[m.apic_ids[i]]) reported++;
    report(reported == (u32)started, "%u of %d APs reported their APIC ID", reported, started);
    u32 cpus = ap_online + 1;
    report(finished == ap_online, "%u of %u APs finished the atomicity rounds", finished, ap_online);
    report(atomic_counter == (u64)cpus * ATOMIC_ROUNDS, "LOCK XADD counter is %u (want %u)",
           (u32)atomic_counter, cpus * ATOMIC_ROUNDS);
    report(locked_counter == (u64)cpus * LOCK_ROUNDS, "spinlock counter is %u (want %u)",
           (u32)locked_counter, cpus * LOCK_ROUNDS);
    printf("smp: %u CPU(s) online\n", reported + 1);
    return 0;
}
