#!/bin/sh
# Benchmark: Debian 6.1 i386 (linux-image-686) kernel + i386 busybox initramfs boot to the
# init marker and power-off. Ours: the vmm binary with --accel emulator on the uncompressed
# vmlinux (32-bit Linux boot protocol); peer: qemu-system-i386 -accel tcg on the bzImage of
# the same package (QEMU cannot enter an i386 vmlinux without a PVH note; its in-guest XZ
# decompression costs QEMU about a second). Same initramfs, command line, 256 MiB, 1 vCPU.
# Prints wall and CPU seconds (user+sys of the process) for both and the ratios.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"
export PATH=/opt/swift/usr/bin:$PATH
CACHE=${SWIFTVMM_GUEST_CACHE:-$ROOT/.build/guests/debian}
TIMEOUT=${BENCH_TIMEOUT:-1200}
MARKER=SWIFTVMM-INIT-OK
CMDLINE="console=ttyS0 cryptomgr.notests noisapnp"
CONFIG=${BENCH_CONFIG:-debug}   # debug: X86Emulator is built -O even in debug builds

sh "$ROOT/guests/debian/build.sh" --only-i386 >/dev/null
D=$CACHE/i386
echo "== building vmm ($CONFIG)"
swift build -c "$CONFIG" --product vmm 2>&1 | tail -1
VMM=$ROOT/.build/$CONFIG/vmm

run() { # name, log, command...
  name=$1; log=$2; shift 2
  /usr/bin/time -f "%e %U %S" -o /tmp/swiftvmm-bench-i386-time timeout "$TIMEOUT" "$@" >"$log" 2>&1 || true
  set -- $(cat /tmp/swiftvmm-bench-i386-time | tail -1)
  wall=$1; cpu=$(echo "$2 + $3" | bc)
  if grep -q "$MARKER" "$log"; then ok=yes; else ok=no; fi
  echo "$name: wall ${wall}s, cpu ${cpu}s (marker: $ok; guest clock at the marker: $(grep -a 'Run /init' "$log" | sed 's/^\[ *\([0-9.]*\)\].*/\1/' | head -1)s at Run /init)"
}

echo "== ours: vmm --accel emulator"
run ours /tmp/swiftvmm-bench-i386-ours.log "$VMM" --accel emulator -k "$D/vmlinux" -i "$D/initramfs.cpio.gz" \
  -m 256M -p "$CMDLINE"
ours_wall=$wall; ours_cpu=$cpu
echo "== peer: qemu-system-i386 -accel tcg"
run qemu /tmp/swiftvmm-bench-i386-qemu.log qemu-system-i386 -accel tcg -m 256 -smp 1 -nographic -no-reboot \
  -kernel "$D/vmlinuz" -initrd "$D/initramfs.cpio.gz" -append "$CMDLINE"
echo "ratio ours/qemu-tcg: wall $(echo "scale=2; $ours_wall / $wall" | bc), cpu $(echo "scale=2; $ours_cpu / $cpu" | bc)"
