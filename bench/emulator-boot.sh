#!/bin/sh
# Benchmark: Debian 6.1 amd64 kernel + busybox initramfs boot to the init marker,
# our software CPU (`vmm --accel emulator`, release build) vs qemu-system-x86_64 -accel tcg
# on the same kernel (the extracted vmlinux, PVH entry) and initramfs. Prints the wall time
# at which each console milestone first appears for both, the ratios, and our process's
# CPU seconds (the host is shared: CPU time is steadier than wall time). Then a CPU-bound
# guest loop on our emulator (instructions per second; X86Emulator is built -O even in
# debug builds, see Package.swift).
#
# BENCH_TIMEOUT (seconds, default 600) bounds each boot; a milestone not reached prints "-".
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"
export PATH=/opt/swift/usr/bin:$PATH
CACHE=${SWIFTVMM_GUEST_CACHE:-$ROOT/.build/guests/debian}
TIMEOUT=${BENCH_TIMEOUT:-600}
MARKER=SWIFTVMM-INIT-OK
CMDLINE="console=ttyS0 panic=-1"
MILESTONES="PCI: Using configuration type 1|evm: HMAC attrs|Freeing unused kernel|$MARKER"

"$ROOT/guests/debian/build.sh" >/dev/null
KERNEL=$CACHE/amd64/vmlinux
INITRD=$CACHE/amd64/initramfs.cpio.gz

now() { date +%s.%N; }

# boot NAME LOG COMMAND...: runs COMMAND with its console in LOG, records the time each
# milestone first appears in /tmp/swiftvmm-bench-NAME.times (one line per milestone),
# stops at the marker or after TIMEOUT, and writes the process's CPU seconds to
# /tmp/swiftvmm-bench-NAME.cpu.
boot() {
  name=$1; log=$2; shift 2
  times=/tmp/swiftvmm-bench-$name.times
  : >"$times"
  t0=$(now)
  "$@" >"$log" 2>&1 &
  pid=$!
  cpu=0
  echo "$MILESTONES" | tr '|' '\n' | while IFS= read -r m; do
    while kill -0 $pid 2>/dev/null && ! grep -qF "$m" "$log"; do
      sleep 0.05
      if [ "$(echo "$(now) - $t0 > $TIMEOUT" | bc)" = 1 ]; then break; fi
    done
    if grep -qF "$m" "$log"; then echo "$m=$(printf '%.2f' "$(echo "$(now) - $t0" | bc)")" >>"$times"; else echo "$m=-" >>"$times"; fi
  done
  # utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat).
  if [ -r /proc/$pid/stat ]; then
    ticks=$(awk '{print $14 + $15}' /proc/$pid/stat)
    echo "scale=2; $ticks / $(getconf CLK_TCK)" | bc >/tmp/swiftvmm-bench-$name.cpu
  else
    echo "-" >/tmp/swiftvmm-bench-$name.cpu
  fi
  kill $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
}

echo "== building (release vmm; debug tests for the loop)"
swift build -c release --product vmm 2>&1 | tail -1
swift build --build-tests 2>&1 | tail -1
XCTEST=$(ls -d .build/debug/*.xctest | head -1)

echo "== ours: vmm --accel emulator"
boot ours /tmp/swiftvmm-bench-ours.log .build/release/vmm --accel emulator -k "$KERNEL" -i "$INITRD" -p "$CMDLINE" -m 512M
echo "== peer: qemu-system-x86_64 -accel tcg"
boot qemu /tmp/swiftvmm-bench-qemu.log qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nographic -no-reboot \
  -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE"

printf "%-34s %10s %10s %8s\n" milestone "ours (s)" "qemu (s)" ratio
echo "$MILESTONES" | tr '|' '\n' | while IFS= read -r m; do
  o=$(grep -F "$m=" /tmp/swiftvmm-bench-ours.times | head -1 | sed 's/.*=//')
  q=$(grep -F "$m=" /tmp/swiftvmm-bench-qemu.times | head -1 | sed 's/.*=//')
  if [ "$o" != "-" ] && [ "$q" != "-" ]; then r=$(echo "scale=2; $o / $q" | bc); else r=-; fi
  printf "%-34s %10s %10s %8s\n" "$m" "$o" "$q" "$r"
done
echo "CPU seconds: ours $(cat /tmp/swiftvmm-bench-ours.cpu), qemu $(cat /tmp/swiftvmm-bench-qemu.cpu)"

echo "== CPU-bound guest loop"
SWIFTVMM_BENCH=1 "$XCTEST" --testing-library swift-testing --filter cpuBoundLoop 2>&1 | grep -E "MIPS|instructions" || true
