#!/bin/sh
# Transmit benchmark for virtio-net: guest -> host tap.
#
# guests/net-test.c with "bench" sends 200000 frames of 1514 bytes as fast as the device
# takes them (a queue of 16 in flight, one kick per batch) and prints the TSC cycles. Run in
# the same invocation under
#   ours   vmm --accel kvm --net tap:NAME
#   qemu   qemu-system-x86_64 -accel kvm, -netdev tap (no vhost) + virtio-net-pci (modern only)
# both on the same persistent tap (created here with `ip`, up, nobody reading: the host
# stack drops the frames). Frames/s come from the guest's TSC count and the host TSC rate.
#
# Usage: bench/virtio-net.sh [runs]  (default 1; best of N).  Needs root, /dev/kvm, gcc, qemu.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
runs=${1:-1}
work=$(mktemp -d /var/tmp/net-bench.XXXXXX)
tap=swnb$$
cleanup() { ip link del "$tap" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
vmm=${VMM:-$root/.build/release/vmm}
[ -x "$vmm" ] || vmm=$root/.build/debug/vmm
kernel=$work/net-test.elf
"$root/guests/build-virtio-test.sh" "$kernel" net-test.c >/dev/null 2>&1
ip tuntap add "$tap" mode tap
ip link set "$tap" up

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

# frames/s from "bench: sent N frames of 1514 bytes in C tsc cycles".
fps() { awk -v hz="$tsc_hz" '/^bench: sent/ { if ($9 > 0) printf "%.0f\n", $3 / ($9 / hz); found=1 } END { if (!found) print "0" }'; }

run_ours() {
    timeout 300 "$vmm" -k "$kernel" -p bench -m 64M --accel kvm --net "tap:$tap" 2>"$work/ours.err" | tr -d '\r' | fps
}
run_qemu() {
    timeout 300 qemu-system-x86_64 -accel kvm -m 64 -nodefaults -display none -serial stdio \
        -kernel "$kernel" -append bench \
        -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device virtio-net-pci,netdev=n0,disable-legacy=on \
        -device isa-debug-exit,iobase=0xf4,iosize=1 2>/dev/null | tr -d '\r' | fps
}
best() { b=0; i=0; while [ $i -lt "$runs" ]; do v=$("$@" || echo 0); b=$(awk -v a="$b" -v c="$v" 'BEGIN { print (c > a) ? c : a }'); i=$((i+1)); done; echo "$b"; }

ours=$(best run_ours)
qemu=$(best run_qemu)
echo "virtio-net transmit, 200000 x 1514-byte frames to a tap, best of $runs (frames/s, MB/s)"
printf '  %-28s %8s %8s\n' "ours (vmm, KVM)" "$ours" "$(awk -v f="$ours" 'BEGIN { printf "%.1f", f * 1514 / 1e6 }')"
printf '  %-28s %8s %8s\n' "qemu virtio-net (no vhost)" "$qemu" "$(awk -v f="$qemu" 'BEGIN { printf "%.1f", f * 1514 / 1e6 }')"
echo "ratio ours/qemu $(awk -v a="$ours" -v b="$qemu" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')"
[ "$ours" != 0 ] || { echo "note: our run produced no result:"; tail -5 "$work/ours.err"; }
