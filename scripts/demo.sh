#!/usr/bin/env bash
# make demo: build a test guest, boot it with vmm (its serial console on this terminal),
# and exit cleanly. DEMO_KERNEL=path boots another kernel instead (e.g. a Linux bzImage
# with DEMO_INITRD=path; on a host whose KVM cannot run Linux, --accel auto picks the
# software CPU once it is built in).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH
cd "$root"
swift build --product vmm >/dev/null
vmm="$(swift build --show-bin-path)/vmm"
out="$root/.build/guests-demo"
mkdir -p "$out"

kernel=${DEMO_KERNEL:-}
args=()
if [ -z "$kernel" ]; then
    make -s -C guests BUILD="$out" >/dev/null
    kernel="$out/smp.elf"   # brings up every vCPU with INIT/SIPI, each reports on COM1
fi
[ -n "${DEMO_INITRD:-}" ] && args+=(-i "$DEMO_INITRD")
[ -n "${DEMO_CMDLINE:-}" ] && args+=(-p "$DEMO_CMDLINE")

echo "demo: $vmm -k $kernel -m 256M -c ${DEMO_CPUS:-2} ${args[*]:-}"
echo "demo: ---- guest console (Ctrl-] stops the VM) ----"
set +e
"$vmm" -k "$kernel" -m 256M -c "${DEMO_CPUS:-2}" "${args[@]}"
status=$?
set -e
echo "demo: ---- vmm exited with status $status ----"
# A guest's debug-exit status is odd ((value << 1) | 1; 1 = the test guest passed); 0 is
# power-off/reset/Ctrl-]. Only an even non-zero status (vmm could not run the guest) fails.
if [ "$status" -ne 0 ] && [ $((status % 2)) -eq 0 ]; then exit "$status"; fi
exit 0
