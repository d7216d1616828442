#!/bin/sh
# Benchmark: Debian 6.1 amd64 kernel + busybox initramfs boot to the init marker,
# our software CPU (X86Emulator, release build) vs qemu-system-x86_64 -accel tcg on the
# same kernel (the extracted vmlinux, PVH entry) and initramfs; prints both times and the
# ratio. Then a CPU-bound guest loop on our emulator (instructions per second).
#
# Ours runs through the emulator's Linux boot harness (Tests/X86EmulatorTests) built in
# release mode, until the VMM binary's --accel emulator path is wired in.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"
export PATH=/opt/swift/usr/bin:$PATH
CACHE=${SWIFTVMM_GUEST_CACHE:-$ROOT/.build/guests/debian}
TIMEOUT=${BENCH_TIMEOUT:-1800}
MARKER=SWIFTVMM-INIT-OK
CMDLINE="console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 tsc=reliable no_timer_check"

"$ROOT/guests/debian/build.sh" >/dev/null
KERNEL=$CACHE/amd64/vmlinux
INITRD=$CACHE/amd64/initramfs.cpio.gz

now() { date +%s.%N; }

echo "== building (release, tests enabled)"
swift build -c release --build-tests -Xswiftc -enable-testing 2>&1 | tail -1
XCTEST=$(ls -d .build/release/*.xctest | head -1)

echo "== ours: X86Emulator"
t0=$(now)
SWIFTVMM_LINUX_BOOT=1 SWIFTVMM_BOOT_SECONDS=$TIMEOUT SWIFTVMM_BOOT_LOG=/tmp/swiftvmm-bench-console.log \
  "$XCTEST" --testing-library swift-testing --filter debianAmd64KernelBootsToInit >/tmp/swiftvmm-bench-ours.log 2>&1 || true
t1=$(now)
ours=$(echo "$t1 - $t0" | bc)
if grep -q "$MARKER" /tmp/swiftvmm-bench-console.log 2>/dev/null; then ours_ok=yes; else ours_ok=no; fi
grep -E "guest console" /tmp/swiftvmm-bench-ours.log || true
echo "ours: ${ours}s (marker reached: $ours_ok)"

echo "== peer: qemu-system-x86_64 -accel tcg"
t0=$(now)
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -no-reboot \
  -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE" >/tmp/swiftvmm-bench-qemu.log 2>&1 &
qpid=$!
while kill -0 $qpid 2>/dev/null; do
  if grep -q "$MARKER" /tmp/swiftvmm-bench-qemu.log 2>/dev/null; then break; fi
  sleep 0.05
done
t1=$(now)
kill $qpid 2>/dev/null || true
wait $qpid 2>/dev/null || true
qemu=$(echo "$t1 - $t0" | bc)
if grep -q "$MARKER" /tmp/swiftvmm-bench-qemu.log; then qemu_ok=yes; else qemu_ok=no; fi
echo "qemu tcg: ${qemu}s (marker reached: $qemu_ok)"
echo "ratio ours/qemu-tcg: $(echo "scale=2; $ours / $qemu" | bc)"

echo "== CPU-bound guest loop"
SWIFTVMM_BENCH=1 "$XCTEST" --testing-library swift-testing --filter cpuBoundLoop 2>&1 | grep -E "MIPS|instructions" || true
