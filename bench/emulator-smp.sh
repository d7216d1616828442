#!/usr/bin/env bash
# The smp test guest (guests/smp.c: MADT parse, INIT/SIPI start-up of every AP with the
# guest's delay loops, then 50000 `lock xadd` and 2000 spinlock rounds per CPU) on the
# software CPU with 1-16 vCPUs, ours (vmm --accel emulator) vs QEMU TCG -smp N (MTTCG), same
# ELF, 64 MiB. Wall-clock medians and the ratio ours/QEMU. Our vCPUs take turns (one
# executes at a time); QEMU's run in parallel.
# Environment: RUNS (default 3), CPUS (default "1 2 4 8 16"), VMM (a vmm binary; default:
# build the release one).
set -euo pipefail
source "$(dirname "$0")/vmm-common.sh"
RUNS=${RUNS:-3}
CPUS=${CPUS:-1 2 4 8 16}
if [ -z "${VMM:-}" ]; then vmm_release; fi
out="$root/.build/guests-bench"
make -s -C "$root/guests" BUILD="$out" >/dev/null
GUEST="$out/smp.elf"

wall() {   # runs "$@", prints seconds; fails unless the guest passed (exit status 1, no FAIL)
    local s e log; log=$(mktemp)
    s=$(date +%s.%N)
    set +e; timeout 600 "$@" >"$log" 2>&1; local rc=$?; set -e
    e=$(date +%s.%N)
    if [ "$rc" != 1 ] || grep -q '^FAIL' "$log"; then echo "guest failed (exit $rc): $*" >&2; tail -5 "$log" >&2; rm -f "$log"; exit 1; fi
    rm -f "$log"
    echo "$e - $s" | bc
}

printf '%-6s %12s %12s %8s\n' vcpus ours_s qemu_s ratio
for c in $CPUS; do
    o=$(for _ in $(seq "$RUNS"); do wall "$VMM" -k "$GUEST" -m 64M --accel emulator -c "$c"; done | median)
    q=$(for _ in $(seq "$RUNS"); do wall qemu-system-x86_64 -accel tcg -machine pc -m 64 -smp "$c" \
          -display none -serial stdio -monitor none -no-reboot \
          -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$GUEST"; done | median)
    printf '%-6s %12.3f %12.3f %8.2f\n' "$c" "$o" "$q" "$(echo "$o / $q" | bc -l)"
done
