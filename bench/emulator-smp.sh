#!/usr/bin/env bash
# The smp test guest (guests/smp.c: MADT parse, INIT/SIPI start-up of every AP with the
# guest's delay loops, then 50000 `lock xadd` and 2000 spinlock rounds per CPU) on the
# software CPU with 1-16 vCPUs, ours (vmm --accel emulator) vs QEMU TCG -smp N (MTTCG), same
# ELF, 64 MiB. Wall-clock medians and the ratio ours/QEMU. MODE picks how our vCPUs run:
# `turnstile` (the default: they take turns, one executes at a time), `parallel`
# (SWIFTVMM_EMU_PARALLEL=1: one host thread each, at once, as QEMU's MTTCG) or `both` (a
# column each; the ratio is parallel/QEMU).
# Environment: RUNS (default 3), CPUS (default "1 2 4 8 16"), MODE (default turnstile),
# QEMU (default 1; 0 skips the QEMU column), VMM (a vmm binary; default: build the release
# one).
set -euo pipefail
source "$(dirname "$0")/vmm-common.sh"
RUNS=${RUNS:-3}
CPUS=${CPUS:-1 2 4 8 16}
MODE=${MODE:-turnstile}
QEMU=${QEMU:-1}
case "$MODE" in turnstile) MODES=turnstile ;; parallel) MODES=parallel ;; both) MODES="turnstile parallel" ;;
    *) echo "MODE must be turnstile, parallel or both" >&2; exit 2 ;; esac
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

ours() {   # median wall time of our vmm in mode $1 with $2 vCPUs
    local par=0; [ "$1" = parallel ] && par=1
    for _ in $(seq "$RUNS"); do
        wall env SWIFTVMM_EMU_PARALLEL=$par "$VMM" -k "$GUEST" -m 64M --accel emulator -c "$2"
    done | median
}

header="vcpus"
for m in $MODES; do header="$header ${m}_s"; done
[ "$QEMU" = 1 ] && header="$header qemu_s ratio"
echo "$header" | awk '{printf "%-6s", $1; for (i = 2; i <= NF; i++) printf " %12s", $i; print ""}'
for c in $CPUS; do
    line=$(printf '%-6s' "$c"); last=
    for m in $MODES; do last=$(ours "$m" "$c"); line="$line $(printf '%12.3f' "$last")"; done
    if [ "$QEMU" = 1 ]; then
        q=$(for _ in $(seq "$RUNS"); do wall qemu-system-x86_64 -accel tcg -machine pc -m 64 -smp "$c" \
              -display none -serial stdio -monitor none -no-reboot \
              -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$GUEST"; done | median)
        line="$line $(printf '%12.3f %8.2f' "$q" "$(echo "$last / $q" | bc -l)")"
    fi
    echo "$line"
done
