#!/usr/bin/env bash
# Snapshot size and time, and restore time to the guest running again: the counter guest
# (guests/counter.c) on the software CPU, saved mid-run with `vmm --save-to` + SIGUSR2 and
# run again with `vmm --restore`; QEMU (TCG, -M pc) side by side: `stop` and `migrate` to a
# file over its monitor, then `-incoming` from it and `cont`. Prints medians and ratios
# ours/QEMU.
set -euo pipefail
source "$(dirname "$0")/vmm-common.sh"
vmm_release
out="$root/.build/guests-bench"
make -s -C "$root/guests" BUILD="$out" >/dev/null
exec python3 "$root/bench/snapshot.py" "$VMM" "$out/counter.elf" "${RUNS:-5}" ${MEMS:-32M 512M}
