#!/usr/bin/env bash
# make demo: boot the SMP test guest with vmm (its serial console on this terminal), then
# Debian's own Linux kernel with a busybox initramfs (guests/debian/build.sh) to its init,
# which loads the virtio drivers, touches the disk and the rng, and powers off.
# `--accel auto` decides: KVM where it can run Linux, the software CPU where it cannot (no
# /dev/kvm, or a PVM-backed KVM like these CI hosts; vmm says which and why). On the
# software CPU the Linux boot takes a few minutes. DEMO_LINUX=0 skips it.
# DEMO_KERNEL=path boots another kernel instead (DEMO_INITRD, DEMO_CMDLINE, DEMO_CPUS).
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
[ -n "${DEMO_KERNEL:-}" ] && exit 0
[ "${DEMO_LINUX:-1}" = 0 ] && exit 0

echo "demo: fetching Debian's kernel and building a busybox initramfs (guests/debian/build.sh)"
if ! sh guests/debian/build.sh >/dev/null; then
    echo "demo: could not build the Debian guest (apt access needed); skipping the Linux boot"
    exit 0
fi
deb="$root/.build/guests/debian/amd64"
disk="$out/linux-disk.img"
printf 'HOST-SAYS-HELLO-TO-LINUX' > "$disk"; truncate -s 8M "$disk"
echo "demo: $vmm -k $deb/vmlinux -i $deb/initramfs.cpio.gz -m 256M -d $disk (--accel auto)"
echo "demo: ---- guest console (Ctrl-] stops the VM) ----"
set +e
start=$(date +%s)
"$vmm" -k "$deb/vmlinux" -i "$deb/initramfs.cpio.gz" -m 256M -d "$disk"
status=$?
set -e
echo "demo: ---- vmm exited with status $status after $(( $(date +%s) - start )) s ----"
exit "$status"
