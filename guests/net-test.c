/*
 * net-test: a freestanding multiboot (v1) test kernel that drives virtio-net
 * (1af4:1041) with the same minimal virtio-pci modern driver as virtio-test.c
 * (virtio-mini.h).
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
#define GUEST_NAME "net-test"
#include "virtio-mini.h"


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
