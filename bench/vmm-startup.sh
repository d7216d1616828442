#!/usr/bin/env bash
# Benchmark 8(b): process start -> first serial byte of a test guest, ours (vmm, release)
# vs qemu-system-x86_64 -enable-kvm (microvm machine; pc if microvm cannot load it), same
# kernel, same memory. Prints medians and the ratio ours/QEMU (goal <= 0.25).
set -euo pipefail
source "$(dirname "$0")/vmm-common.sh"
RUNS=${RUNS:-15}
MEM=${MEM:-128M}
vmm_release
bench_guest
fb="python3 $root/bench/vmm-firstbyte.py"

qemu_machine=microvm
probe=$(timeout 20 qemu-system-x86_64 -enable-kvm -M microvm -m "$MEM" -kernel "$GUEST" -display none \
        -serial stdio -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 </dev/null 2>/dev/null | head -c 64 || true)
[ -n "$probe" ] || qemu_machine=pc
qemu=(qemu-system-x86_64 -enable-kvm -M "$qemu_machine" -m "$MEM" -kernel "$GUEST" -display none
      -serial stdio -net none -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04)

# Warm the page cache for both.
$fb 1 -- "$VMM" -k "$GUEST" -m "$MEM" --accel kvm >/dev/null
$fb 1 -- "${qemu[@]}" >/dev/null

ours=$(mktemp); theirs=$(mktemp)
trap 'rm -f "$ours" "$theirs"' EXIT
for _ in $(seq "$RUNS"); do   # interleave so both see the same machine load
    $fb 1 -- "$VMM" -k "$GUEST" -m "$MEM" --accel kvm >>"$ours"
    $fb 1 -- "${qemu[@]}" >>"$theirs"
done
o=$(cut -d' ' -f1 "$ours" | median); q=$(cut -d' ' -f1 "$theirs" | median)
ot=$(cut -d' ' -f2 "$ours" | median); qt=$(cut -d' ' -f2 "$theirs" | median)
echo "guest: $(basename "$GUEST"), memory $MEM, $RUNS runs each, medians"
printf "vmm-startup: ours %.2f ms to first serial byte (%.2f ms to exit); qemu -M %s %.2f ms (%.2f ms to exit)\n" \
    "$o" "$ot" "$qemu_machine" "$q" "$qt"
printf "vmm-startup: ratio ours/qemu = %.3f (goal <= 0.25)\n" "$(echo "$o / $q" | bc -l)"
