/*
 * virtio-mini.h: the minimal virtio-pci "modern" (virtio 1.x) driver and runtime shared by
 * the freestanding multiboot test kernels virtio-test.c and net-test.c: multiboot header,
 * entry, port I/O, COM1 console, PCI configuration mechanism #1, capability walk, one split
 * queue per device, polled used ring. Define GUEST_NAME before including it. Test payload
 * only (not part of the VMM).
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
    puts(code == 0 ? GUEST_NAME ": PASS\n" : GUEST_NAME ": FAIL\n");
    outb(0xf4, (u8)code);
    for (;;) __asm__ volatile("cli; hlt");
}
static void fail(const char *why) { puts(GUEST_NAME ": error: "); puts(why); puts("\n"); finish(1); }

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
