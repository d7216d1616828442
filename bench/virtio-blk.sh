#!/bin/sh
# Sequential-read benchmark for virtio-blk.
#
# One disk image is read three ways in the same run:
#   host   dd with O_DIRECT, 256 KiB blocks
#   ours   guests/virtio-test.c ("bench": 4 x 256 KiB requests in flight) under our vmm (KVM)
#   qemu   the same guest under qemu-system-x86_64 -accel kvm with virtio-blk-pci
#          (modern only), once with cache=none,aio=native (O_DIRECT) and once with the
#          default writeback cache
# Guest throughput comes from the guest's own TSC count around the reads (the TSC runs at the
# host rate here: no TSC scaling), so VM start-up time is not part of it.
#
# Usage: bench/virtio-blk.sh [size-MiB]   (default 256).  Needs /dev/kvm, gcc, qemu.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
size_mib=${1:-256}
work=$(mktemp -d /var/tmp/virtio-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

vmm=${VMM:-$root/.build/release/vmm}
[ -x "$vmm" ] || vmm=$root/.build/debug/vmm
kernel=$work/virtio-test.elf
"$root/guests/build-virtio-test.sh" "$kernel" >/dev/null
disk=$work/disk.img
dd if=/dev/urandom of="$disk" bs=1M count="$size_mib" status=none
sync

# Host TSC frequency (Hz): rdtsc against CLOCK_MONOTONIC over 0.5 s.
cat > "$work/tsc.c" <<'C'
#include <stdio.h>
#include <time.h>
static unsigned long long rdtsc(void){unsigned lo,hi;__asm__ volatile("rdtsc":"=a"(lo),"=d"(hi));return((unsigned long long)hi<<32)|lo;}
int main(void){struct timespec a,b,d={0,500000000};clock_gettime(CLOCK_MONOTONIC,&a);unsigned long long t0=rdtsc();
nanosleep(&d,0);unsigned long long t1=rdtsc();clock_gettime(CLOCK_MONOTONIC,&b);
double s=(b.tv_sec-a.tv_sec)+(b.tv_nsec-a.tv_nsec)/1e9;printf("%.0f\n",(t1-t0)/s);return 0;}
C
gcc -O2 -o "$work/tsc" "$work/tsc.c"
tsc_hz=$("$work/tsc")

# MB/s from a guest log line "bench: read N bytes in C tsc cycles".
guest_mbps() {
    awk -v hz="$tsc_hz" '/^bench: read/ { if ($6 > 0) printf "%.1f\n", $3 / ($6 / hz) / 1e6; found=1 }
                         END { if (!found) print "0" }'
}

host_mbps() {
    dd if="$disk" of=/dev/null bs=256K iflag=direct 2>&1 | awk '/bytes/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^s,?$/ || $i == "s,") t = $(i-1);
        printf "%.1f\n", $1 / t / 1e6 }'
}

run_ours() {
    timeout 300 "$vmm" -k "$kernel" -p bench -m 64M -d "$disk" --accel kvm 2>"$work/ours.err" | tr -d '\r' | guest_mbps
}

run_qemu() {   # $1: drive cache options
    timeout 300 qemu-system-x86_64 -accel kvm -m 64 -nodefaults -display none -serial stdio \
        -kernel "$kernel" -append bench \
        -drive "file=$disk,if=none,id=d0,format=raw,$1" -device virtio-blk-pci,drive=d0,disable-legacy=on \
        -device isa-debug-exit,iobase=0xf4,iosize=1 2>/dev/null | tr -d '\r' | guest_mbps
}

best() {   # best of 3 runs of "$@"
    b=0
    for _ in 1 2 3; do
        v=$("$@" || echo 0)
        b=$(awk -v a="$b" -v c="$v" 'BEGIN { print (c > a) ? c : a }')
    done
    echo "$b"
}

host=$(best host_mbps)
ours=$(best run_ours)
qemu_direct=$(best run_qemu cache=none,aio=native)
qemu_wb=$(best run_qemu cache=writeback)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo "virtio-blk sequential read, ${size_mib} MiB image, best of 3 (MB/s)"
printf '  %-34s %8s\n' "host dd O_DIRECT 256K" "$host"
printf '  %-34s %8s\n' "ours (vmm, KVM)" "$ours"
printf '  %-34s %8s\n' "qemu virtio-blk cache=none,aio=native" "$qemu_direct"
printf '  %-34s %8s\n' "qemu virtio-blk cache=writeback" "$qemu_wb"
echo "ratios: ours/host $(ratio "$ours" "$host")  ours/qemu(cache=none) $(ratio "$ours" "$qemu_direct")  ours/qemu(writeback) $(ratio "$ours" "$qemu_wb")"
[ "$ours" != 0 ] || { echo "note: our run produced no result; see:"; cat "$work/ours.err" | tail -5; }
