#!/usr/bin/env bash
# Benchmark 8(c): VMM memory overhead = process RSS minus the guest RAM pages that are
# resident, measured by vmm itself at the end of the run (VMM_STATS=1: /proc/self/statm
# and mincore(2) over guest RAM). Goal <= 5 MiB. QEMU's peak RSS on the same guest is
# printed for context (it includes its guest pages and firmware).
set -euo pipefail
source "$(dirname "$0")/vmm-common.sh"
MEM=${MEM:-128M}
vmm_release
bench_guest
line=$(VMM_STATS=1 "$VMM" -k "$GUEST" -m "$MEM" --accel kvm 2>&1 >/dev/null | grep 'memory: rss_kib' || true)
[ -n "$line" ] || { echo "vmm-memory: vmm printed no statistics"; exit 1; }
rss=$(sed 's/.*rss_kib=\([0-9]*\).*/\1/' <<<"$line")
guest=$(sed 's/.*guest_resident_kib=\([0-9]*\).*/\1/' <<<"$line")
over=$(sed 's/.*overhead_kib=\([0-9]*\).*/\1/' <<<"$line")
peak=$(python3 "$root/bench/vmm-firstbyte.py" 1 -- "$VMM" -k "$GUEST" -m "$MEM" --accel kvm | cut -d' ' -f4)
qpeak=$(python3 "$root/bench/vmm-firstbyte.py" 1 -- qemu-system-x86_64 -enable-kvm -M microvm -m "$MEM" \
    -kernel "$GUEST" -display none -serial stdio -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 | cut -d' ' -f4)
echo "guest: $(basename "$GUEST"), memory $MEM"
echo "vmm-memory: ours rss ${rss} KiB, guest resident ${guest} KiB, overhead ${over} KiB ($(echo "scale=2; $over / 1024" | bc) MiB, goal <= 5 MiB)"
echo "vmm-memory: peak RSS ours ${peak} KiB, qemu -M microvm ${qpeak} KiB; ratio $(echo "scale=3; $peak / $qpeak" | bc)"
