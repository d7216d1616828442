/*
 * virtio-test: a freestanding multiboot (v1) test kernel with a minimal virtio-pci
 * "modern" (virtio 1.x) driver. It finds virtio-blk (1af4:1042) and virtio-rng
 * (1af4:1044) by scanning PCI bus 0 through configuration mechanism #1, walks their
 * vendor capabilities, negotiates VIRTIO_F_VERSION_1 only, sets up one split queue each
 * and polls the used ring (interrupts stay off).
 *
 * Command line (multiboot): contains "bench" -> read the whole disk sequentially
 * (4 requests of 256 KiB in flight) and report; "bench0" -> the same set-up without the
 * reading (boot-cost baseline); otherwise the functional test:
 *   - GET_ID, capacity
 *   - read sector 0 and print its first 32 bytes (the host test puts a marker there)
 *   - write a pattern to sector 1 (and 2), read it back and compare, FLUSH
 *   - read 32 bytes from virtio-rng
 * Output on COM1; result through the debug-exit port 0xf4 (0 = pass -> status 1).
 * Test payload only (not part of the VMM); built by guests/build-virtio-test.sh.
 */
#define GUEST_NAME "virtio-test"
#include "virtio-mini.h"

/* ---- virtio-blk ---- */
struct blkreq { u32 type, reserved; u64 sector; };
static struct blkreq hdr[4];
static u8 status[4];
static u8 sector_buf[512 * 4] __attribute__((aligned(512)));
static u8 check_buf[512 * 2] __attribute__((aligned(512)));
#define CHUNK (256 * 1024)
static u8 bench_buf[4][CHUNK] __attribute__((aligned(4096)));

/* Posts request r (descriptors 3r..3r+2). */
static void blk_post(struct vdev *d, int r, u32 type, u64 sector, void *buf, u32 len, int writable) {
    struct vq *q = &d->q;
    u16 b = (u16)(3 * r);
    hdr[r].type = type; hdr[r].reserved = 0; hdr[r].sector = sector;
    status[r] = 0xff;
    setd(q, b, &hdr[r], 16, 0);
    if (len) { setd(q, b + 1, buf, len, writable); setd(q, b + 2, &status[r], 1, 1); post(q, b, 3); }
    else { setd(q, b + 1, &status[r], 1, 1); post(q, b, 2); }
}
static u8 blk_sync(struct vdev *d, u32 type, u64 sector, void *buf, u32 len, int writable) {
    blk_post(d, 0, type, sector, buf, len, writable);
    kick(&d->q);
    wait_used(d);
    return status[0];
}

static void bench(struct vdev *d, int really) {
    u64 sectors = *(volatile u64 *)d->devcfg;
    u64 bytes = sectors * 512, done = 0, sector = 0;
    u64 t0 = rdtsc();
    while (really && done + CHUNK <= bytes) {
        int n = 0;
        while (n < 4 && done + (u64)(n + 1) * CHUNK <= bytes) {
            blk_post(d, n, 0, sector + (u64)n * (CHUNK / 512), bench_buf[n], CHUNK, 1);
            n++;
        }
        kick(&d->q);
        for (int i = 0; i < n; i++) wait_used(d);
        for (int i = 0; i < n; i++) if (status[i] != 0) fail("bench read failed");
        done += (u64)n * CHUNK;
        sector += (u64)n * (CHUNK / 512);
    }
    u64 t1 = rdtsc();
    puts("bench: read "); putdec(done); puts(" bytes in "); putdec(t1 - t0); puts(" tsc cycles\n");
    finish(0);
}

static const char marker[] = "GUEST-WROTE-THIS";

void kmain(u32 magic, u32 info) {
    const char *cmdline = "";
    if (magic == 0x2BADB002u && (R32(info) & 4)) cmdline = (const char *)R32(info + 16);
    puts("virtio-test: start, cmdline '"); puts(cmdline); puts("'\n");

    static struct vdev blk, rng;
    if (!find(&blk, 0x1042)) fail("no virtio-blk device (1af4:1042) on bus 0");
    puts("virtio-blk at slot "); putdec((u64)blk.slot); puts("\n");
    start(&blk);
    if (contains(cmdline, "bench")) bench(&blk, !contains(cmdline, "bench0"));

    u64 capacity = *(volatile u64 *)blk.devcfg;
    puts("capacity "); putdec(capacity); puts(" sectors\n");

    static char id[21];
    memset(id, 0, sizeof id);
    if (blk_sync(&blk, 8, 0, id, 20, 1) != 0) puts("get-id: unsupported\n");
    else { puts("serial '"); puts(id); puts("'\n"); }

    if (blk_sync(&blk, 0, 0, sector_buf, 512, 1) != 0) fail("read of sector 0 failed");
    puts("sector0: ");
    for (int i = 0; i < 32; i++) putc(sector_buf[i] >= 32 && sector_buf[i] < 127 ? (char)sector_buf[i] : '.');
    puts("\n");

    for (int i = 0; i < 1024; i++) check_buf[i] = (u8)(i * 13 + 7);
    for (u32 i = 0; i < sizeof marker - 1; i++) check_buf[i] = (u8)marker[i];
    if (blk_sync(&blk, 1, 1, check_buf, 1024, 0) != 0) fail("write of sectors 1-2 failed");
    memset(sector_buf, 0, sizeof sector_buf);
    if (blk_sync(&blk, 0, 1, sector_buf, 1024, 1) != 0) fail("read-back failed");
    if (memcmp(sector_buf, check_buf, 1024) != 0) fail("read-back differs from what was written");
    puts("write-readback-ok\n");
    if (blk_sync(&blk, 4, 0, 0, 0, 0) != 0) fail("flush failed");
    puts("flush-ok\n");
    /* A read past the end must fail with IOERR, not hang or crash. */
    if (blk_sync(&blk, 0, capacity, sector_buf, 512, 1) != 1) fail("read past the end did not return IOERR");
    puts("bounds-ok\n");

    if (!find(&rng, 0x1044)) fail("no virtio-rng device (1af4:1044) on bus 0");
    start(&rng);
    static u8 rnd[32];
    setd(&rng.q, 0, rnd, 32, 1);
    post(&rng.q, 0, 1);
    kick(&rng.q);
    u32 got = wait_used(&rng);
    int nonzero = 0;
    for (int i = 0; i < 32; i++) nonzero |= rnd[i];
    puts("rng: "); putdec(got); puts(" bytes ");
    for (int i = 0; i < 16; i++) puthex(rnd[i], 2);
    puts("\n");
    if (got == 0 || !nonzero) fail("virtio-rng returned nothing");
    finish(0);
}
