/*
 * net-test: a freestanding multiboot (v1) test kernel that drives virtio-net
 * (1af4:1041) with the same minimal virtio-pci modern driver as virtio-test.c
 * (its PCI/virtio helpers are repeated here so each payload is one file).
 *
 * It negotiates VERSION_1 | MAC | STATUS, reads the MAC and link status, posts receive
 * buffers on queue 0 and then, up to 500 times (every ~20-50 ms), transmits on queue 1 one broadcast
 * Ethernet frame of ethertype 0x88b5 whose payload is "SWIFTVMM-NET-PING <n>" and polls
 * the receive queue for a frame of that ethertype whose payload starts with
 * "SWIFTVMM-NET-PONG" (other frames, e.g. IPv6 ND from the host, are skipped and their
 * buffers re-posted). The host side (the test, through a tap and an AF_PACKET socket)
 * answers the ping. Prints "net-test: rx '<payload>'" and passes (debug-exit 0), or
 * fails after the retries. With "bench" on the command line it instead sends 200000
 * 1514-byte frames as fast as it can and prints the TSC cycles (bench/virtio-net.sh).
 * Interrupts stay off (polling). Test payload only.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

/* ---- multiboot header ---- */
#define MB_MAGIC 0x1BADB002u
#define MB_FLAGS 0x00000002u /* memory info */
__attribute__((section(".multiboot"), used, aligned(4)))
static const u32 multiboot_header[3] = { MB_MAGIC, MB_FLAGS, (u32)-(MB_MAGIC + MB_FLAGS) };

u8 stack[16384] __attribute__((aligned(16), used));
void kmain(u32 magic, u32 info);

__asm__(".globl _start\n"
        "_start:\n"
        "  cli\n"
        "  mov $stack+16384, %esp\n"
        "  push %ebx\n"
        "  push %eax\n"
        "  call kmain\n"
        "1: hlt\n"
        "  jmp 1b\n");

/* ---- port and memory access ---- */
static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0,%1" ::"a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0,%1" ::"a"(v), "Nd"(p)); }
static inline u8 inb(u16 p) { u8 v; __asm__ volatile("inb %1,%0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 inl(u16 p) { u32 v; __asm__ volatile("inl %1,%0" : "=a"(v) : "Nd"(p)); return v; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }

#define R8(a) (*(volatile u8 *)(a))
#define R16(a) (*(volatile u16 *)(a))
#define R32(a) (*(volatile u32 *)(a))

/* ---- serial ---- */
static void putc(char c) {
    for (int i = 0; i < 100000 && !(inb(0x3fd) & 0x20); i++) {}
    outb(0x3f8, (u8)c);
}
static void puts(const char *s) { while (*s) { if (*s == '\n') putc('\r'); putc(*s++); } }
static void puthex(u64 v, int digits) {
    for (int i = digits - 1; i >= 0; i--) putc("0123456789abcdef"[(v >> (4 * i)) & 15]);
}
static void putdec(u64 v) {
    char b[24]; int n = 0;
    do { b[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) putc(b[--n]);
}
static void finish(int code) {
    puts(code == 0 ? "net-test: PASS\n" : "net-test: FAIL\n");
    outb(0xf4, (u8)code);
    for (;;) __asm__ volatile("cli; hlt");
}
static void fail(const char *why) { puts("net-test: error: "); puts(why); puts("\n"); finish(1); }

static void *memset(void *d, int c, u32 n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
static int memcmp(const void *a, const void *b, u32 n) {
    const u8 *x = a, *y = b;
    for (u32 i = 0; i < n; i++) if (x[i] != y[i]) return x[i] - y[i];
    return 0;
}
static int contains(const char *s, const char *w) {
    for (; *s; s++) { const char *a = s, *b = w; while (*b && *a == *b) { a++; b++; } if (!*b) return 1; }
    return 0;
}

/* ---- PCI configuration mechanism #1 ---- */
static u32 cfg32(int slot, int off) {
    outl(0xcf8, 0x80000000u | ((u32)slot << 11) | (u32)(off & 0xfc));
    return inl(0xcfc);
}
static u8 cfg8(int slot, int off) { return (u8)(cfg32(slot, off) >> (8 * (off & 3))); }
static void cfgw32(int slot, int off, u32 v) {
    outl(0xcf8, 0x80000000u | ((u32)slot << 11) | (u32)(off & 0xfc));
    outl(0xcfc, v);
}

/* ---- virtio-pci modern ---- */
#define QSZ 16
struct desc { u64 addr; u32 len; u16 flags, next; };
struct vq {
    struct desc desc[QSZ] __attribute__((aligned(16)));
    u16 avail[3 + QSZ] __attribute__((aligned(4)));       /* flags, idx, ring[], used_event */
    struct { u16 flags, idx; struct { u32 id, len; } ring[QSZ]; u16 avail_event; } used __attribute__((aligned(4)));
    u16 size, avail_idx, last_used;
    u32 notify;
};
struct vdev { int slot; u32 common, notify_base, isr, devcfg, notify_mult; struct vq q; };

static u32 bar_address(int slot, int bar) {
    u32 lo = cfg32(slot, 0x10 + 4 * bar);
    if (lo & 1) fail("virtio capability in an I/O BAR");
    if (((lo >> 1) & 3) == 2 && cfg32(slot, 0x14 + 4 * bar) != 0) fail("BAR above 4 GiB (no paging here)");
    return lo & ~0xfu;
}

static int find(struct vdev *d, u16 device_id) {
    for (int slot = 0; slot < 32; slot++) {
        u32 id = cfg32(slot, 0);
        if ((id & 0xffff) != 0x1af4 || (id >> 16) != device_id) continue;
        d->slot = slot;
        cfgw32(slot, 4, cfg32(slot, 4) | 0x6); /* memory decode + bus master */
        int ptr = cfg8(slot, 0x34), steps = 0;
        while (ptr && steps++ < 48) {
            if (cfg8(slot, ptr) == 0x09) {
                u8 type = cfg8(slot, ptr + 3);
                u32 addr = bar_address(slot, cfg8(slot, ptr + 4)) + cfg32(slot, ptr + 8);
                if (type == 1 && !d->common) d->common = addr;
                if (type == 2 && !d->notify_base) { d->notify_base = addr; d->notify_mult = cfg32(slot, ptr + 16); }
                if (type == 3 && !d->isr) d->isr = addr;
                if (type == 4 && !d->devcfg) d->devcfg = addr;
            }
            ptr = cfg8(slot, ptr + 1);
        }
        if (!d->common || !d->notify_base || !d->isr) fail("virtio capabilities missing");
        return 1;
    }
    return 0;
}

static void start(struct vdev *d) {
    u32 c = d->common;
    R8(c + 0x14) = 0;
    R8(c + 0x14) = 1;
    R8(c + 0x14) = 3;
    R32(c + 0x00) = 1;
    if (!(R32(c + 0x04) & 1)) fail("device does not offer VIRTIO_F_VERSION_1");
    R32(c + 0x08) = 0; R32(c + 0x0c) = 0;
    R32(c + 0x08) = 1; R32(c + 0x0c) = 1;      /* VERSION_1 only */
    R8(c + 0x14) = 0x0b;
    if (!(R8(c + 0x14) & 0x08)) fail("FEATURES_OK not accepted");
    R16(c + 0x16) = 0;
    u16 max = R16(c + 0x18);
    if (max == 0) fail("queue 0 missing");
    d->q.size = max < QSZ ? max : QSZ;
    R16(c + 0x18) = d->q.size;
    R32(c + 0x20) = (u32)&d->q.desc; R32(c + 0x24) = 0;
    R32(c + 0x28) = (u32)&d->q.avail; R32(c + 0x2c) = 0;
    R32(c + 0x30) = (u32)&d->q.used; R32(c + 0x34) = 0;
    R16(c + 0x1a) = 0xffff;
    d->q.notify = d->notify_base + (u32)R16(c + 0x1e) * d->notify_mult;
    R16(c + 0x1c) = 1;
    R8(c + 0x14) = 0x0f;
    if (R8(c + 0x14) & 0x40) fail("device needs reset after DRIVER_OK");
}

/* Makes descriptors [first, first+n) available as one chain (no notify). */
static void post(struct vq *q, u16 first, int n) {
    for (int i = 0; i < n; i++) {
        if (i + 1 < n) { q->desc[first + i].flags |= 1; q->desc[first + i].next = (u16)(first + i + 1); }
    }
    q->avail[2 + q->avail_idx % q->size] = first;
    barrier();
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    barrier();
}
static void kick(struct vq *q) { R16(q->notify) = 0; }
static u32 wait_used(struct vdev *d) {
    struct vq *q = &d->q;
    for (u64 spins = 0; ; spins++) {
        barrier();
        if (q->used.idx != q->last_used) break;
        if (spins > 4000000000ull) fail("timeout waiting for the used ring");
        __asm__ volatile("pause");
    }
    u32 len = q->used.ring[q->last_used % q->size].len;
    q->last_used++;
    if (R8(d->common + 0x14) & 0x40) fail("device set DEVICE_NEEDS_RESET");
    return len;
}
static void setd(struct vq *q, u16 i, void *addr, u32 len, int writable) {
    q->desc[i].addr = (u32)addr; q->desc[i].len = len; q->desc[i].flags = writable ? 2 : 0; q->desc[i].next = 0;
}


/* ---- virtio-net ---- */
#define HDR 12
#define RXN 8
#define RXLEN (HDR + 1518)
static struct vq rxq, txq;
static u8 rxbuf[RXN][RXLEN] __attribute__((aligned(64)));
static u8 txbuf[HDR + 64] __attribute__((aligned(64)));
static u8 mac[6];

static void setup_queue(struct vdev *d, struct vq *q, u16 index) {
    u32 c = d->common;
    R16(c + 0x16) = index;
    u16 max = R16(c + 0x18);
    if (max == 0) fail("queue missing");
    q->size = max < QSZ ? max : QSZ;
    R16(c + 0x18) = q->size;
    R32(c + 0x20) = (u32)&q->desc; R32(c + 0x24) = 0;
    R32(c + 0x28) = (u32)&q->avail; R32(c + 0x2c) = 0;
    R32(c + 0x30) = (u32)&q->used; R32(c + 0x34) = 0;
    R16(c + 0x1a) = 0xffff;
    q->notify = d->notify_base + (u32)R16(c + 0x1e) * d->notify_mult;
    R16(c + 0x1c) = 1;
}

static void post_rx(u16 i) {
    setd(&rxq, i, rxbuf[i], RXLEN, 1);
    post(&rxq, i, 1);
}

/* Returns the index of a used receive buffer (and its length), or -1 when none. */
static int poll_used(struct vq *q, u32 *len) {
    barrier();
    if (q->used.idx == q->last_used) return -1;
    u32 id = q->used.ring[q->last_used % q->size].id;
    *len = q->used.ring[q->last_used % q->size].len;
    q->last_used++;
    return (int)id;
}

/* "bench": transmit `frames` 1514-byte frames as fast as the device takes them (up to a
 * whole queue in flight, one kick per batch) and print the TSC cycles it took. */
static u8 txb[QSZ][HDR + 1514] __attribute__((aligned(64)));
static void bench_tx(u32 frames) {
    for (u16 i = 0; i < txq.size; i++) {
        u8 *fr = txb[i] + HDR;
        for (int k = 0; k < 6; k++) { fr[k] = 0xff; fr[6 + k] = mac[k]; }
        fr[12] = 0x88; fr[13] = 0xb6;
        for (u32 k = 14; k < 1514; k++) fr[k] = (u8)k;
    }
    u32 sent = 0, done = 0, len;
    u64 t0 = rdtsc();
    while (done < frames) {
        int posted = 0;
        while (sent - done < txq.size && sent < frames) {
            u16 i = (u16)(sent % txq.size);
            setd(&txq, i, txb[i], HDR + 1514, 0);
            post(&txq, i, 1);
            sent++;
            posted = 1;
        }
        if (posted) kick(&txq);
        while (poll_used(&txq, &len) >= 0) done++;
    }
    u64 t1 = rdtsc();
    puts("bench: sent "); putdec(frames); puts(" frames of 1514 bytes in "); putdec(t1 - t0); puts(" tsc cycles\n");
    finish(0);
}

void kmain(u32 magic, u32 info) {
    const char *cmdline = "";
    if (magic == 0x2BADB002u && (R32(info) & 4)) cmdline = (const char *)R32(info + 16);
    puts("net-test: start\n");
    static struct vdev net;
    if (!find(&net, 0x1041)) fail("no virtio-net device (1af4:1041) on bus 0");
    puts("virtio-net at slot "); putdec((u64)net.slot); puts("\n");
    if (!net.devcfg) fail("no device configuration capability");
    u32 c = net.common;
    R8(c + 0x14) = 0; R8(c + 0x14) = 1; R8(c + 0x14) = 3;
    R32(c + 0x00) = 0; u32 f0 = R32(c + 0x04);
    R32(c + 0x00) = 1; u32 f1 = R32(c + 0x04);
    if (!(f1 & 1)) fail("device does not offer VIRTIO_F_VERSION_1");
    if (!(f0 & (1u << 5))) fail("device does not offer VIRTIO_NET_F_MAC");
    u32 want0 = f0 & ((1u << 5) | (1u << 16));
    R32(c + 0x08) = 0; R32(c + 0x0c) = want0;
    R32(c + 0x08) = 1; R32(c + 0x0c) = 1;
    R8(c + 0x14) = 0x0b;
    if (!(R8(c + 0x14) & 0x08)) fail("FEATURES_OK not accepted");
    setup_queue(&net, &rxq, 0);
    setup_queue(&net, &txq, 1);
    for (u16 i = 0; i < RXN; i++) post_rx(i);
    R8(c + 0x14) = 0x0f;
    if (R8(c + 0x14) & 0x40) fail("device needs reset after DRIVER_OK");
    kick(&rxq);

    for (int i = 0; i < 6; i++) mac[i] = R8(net.devcfg + i);
    puts("mac ");
    for (int i = 0; i < 6; i++) { puthex(mac[i], 2); if (i < 5) putc(':'); }
    u16 st = (want0 & (1u << 16)) ? R16(net.devcfg + 6) : 1;
    puts(st & 1 ? " link up\n" : " link down\n");

    if (contains(cmdline, "bench")) bench_tx(200000);

    static const char ping[] = "SWIFTVMM-NET-PING ";
    static const char pong[] = "SWIFTVMM-NET-PONG";
    for (int attempt = 0; attempt < 500; attempt++) {
        /* transmit: zero header, broadcast dst, our src, ethertype 0x88b5, payload */
        memset(txbuf, 0, sizeof txbuf);
        u8 *fr = txbuf + HDR;
        for (int i = 0; i < 6; i++) { fr[i] = 0xff; fr[6 + i] = mac[i]; }
        fr[12] = 0x88; fr[13] = 0xb5;
        u32 n = 14;
        for (u32 i = 0; i < sizeof ping - 1; i++) fr[n++] = (u8)ping[i];
        fr[n++] = (u8)('0' + attempt / 100 % 10); fr[n++] = (u8)('0' + attempt / 10 % 10); fr[n++] = (u8)('0' + attempt % 10);
        while (n < 60) fr[n++] = 0;
        setd(&txq, 0, txbuf, HDR + n, 0);
        post(&txq, 0, 1);
        kick(&txq);
        u32 len;
        for (u64 t0 = rdtsc(); poll_used(&txq, &len) < 0; ) {
            if (rdtsc() - t0 > 20000000000ull) fail("timeout waiting for the transmit buffer");
        }
        if (attempt == 0) puts("tx-done\n");
        /* poll receive for 50M TSC ticks (~20 ms on hardware, 50 ms on the emulator, whose
         * TSC counts nanoseconds) before sending again; no pause: under some hypervisors
         * (PVM) every pause is an exit, which made a spin-count bound take seconds */
        for (u64 t0 = rdtsc(); rdtsc() - t0 < 50000000ull; ) {
            int id = poll_used(&rxq, &len);
            if (id < 0) continue;
            if (id >= RXN || len > RXLEN) fail("bad used element on the receive queue");
            if (R8(c + 0x14) & 0x40) fail("device set DEVICE_NEEDS_RESET");
            u8 *b = rxbuf[id];
            if (b[10] != 1 || b[11] != 0) fail("num_buffers is not 1");
            u8 *e = b + HDR;
            if (len >= HDR + 14 + sizeof pong - 1 && e[12] == 0x88 && e[13] == 0xb5
                && memcmp(e + 14, pong, sizeof pong - 1) == 0) {
                int same = 1;
                for (int i = 0; i < 6; i++) same &= e[i] == mac[i];
                puts(same ? "rx to our mac\n" : "rx to another mac\n");
                puts("net-test: rx '");
                for (u32 i = 14; i < len - HDR && e[i]; i++) putc(e[i] >= 32 && e[i] < 127 ? (char)e[i] : '.');
                puts("'\n");
                puts("frames sent: "); putdec((u64)attempt + 1); puts("\n");
                finish(0);
            }
            post_rx((u16)id);
            kick(&rxq);
        }
    }
    fail("no reply frame received");
}
