#!/bin/sh
# Guest -> host TCP throughput over virtio-net and a host tap, on the software CPU:
#   ours   vmm --accel emulator --net tap:NAME
#   qemu   qemu-system-x86_64 -accel tcg, -netdev tap (no vhost) + virtio-net-pci
# Same Debian kernel and `net` initramfs (guests/debian/build.sh --variant net), which
# configures eth0 statically (swiftvmm.ip) and sends MIB MiB of zeros with busybox nc
# to a receiver on the host (swiftvmm.bulk); the receiver times first byte to EOF.
# Prints MB/s for both and the ratio. Needs root (a persistent tap made here with `ip`)
# and qemu-system-x86_64.  Usage: bench/net-tcp.sh [MIB]  (default 8)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
mib=${1:-8}
cache=${SWIFTVMM_GUEST_CACHE:-$root/.build/guests/debian}
SWIFTVMM_GUEST_CACHE=$cache sh "$root/guests/debian/build.sh" --variant net >/dev/null
kernel=$cache/amd64/vmlinux
initrd=$cache/amd64/initramfs-net.cpio.gz
vmm=${VMM:-$root/.build/release/vmm}
[ -x "$vmm" ] || vmm=$root/.build/debug/vmm
work=$(mktemp -d /var/tmp/net-tcp.XXXXXX)
tap=swnt$$
cleanup() { ip link del "$tap" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ip tuntap add "$tap" mode tap
ip addr add 10.216.0.2/31 dev "$tap"
ip link set "$tap" up

# receive PORTFILE OUT: accepts one connection on a free port (written to PORTFILE), writes
# "bytes seconds" to OUT when the sender closes.
receive() {
    python3 - "$1" "$2" <<'PY'
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.216.0.2", 0)); s.listen(1); s.settimeout(900)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
c, _ = s.accept(); n = 0; t0 = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    if t0 is None: t0 = time.monotonic()
    n += len(b)
open(sys.argv[2], "w").write("%d %f\n" % (n, time.monotonic() - (t0 or time.monotonic())))
PY
}

# run NAME COMMAND...: the guest sends; prints MB/s (0 when nothing arrived).
run() {
    name=$1; shift
    rm -f "$work/port" "$work/$name.out"
    receive "$work/port" "$work/$name.out" &
    rpid=$!
    while [ ! -s "$work/port" ]; do sleep 0.1; done
    append="console=ttyS0 panic=-1 swiftvmm.ip=10.216.0.3/31,10.216.0.2 swiftvmm.bulk=$(cat "$work/port"):$mib"
    timeout 1200 "$@" "$append" >"$work/$name.log" 2>&1 || true
    kill "$rpid" 2>/dev/null || true
    wait "$rpid" 2>/dev/null || true
    if [ -s "$work/$name.out" ]; then
        awk '{ if ($2 > 0) printf "%.2f %d %.2f\n", $1 / $2 / 1e6, $1, $2; else print "0 0 0" }' "$work/$name.out"
    else
        echo "0 0 0"; tail -5 "$work/$name.log" >&2
    fi
}

ours=$(run ours sh -c 'exec "$0" --accel emulator -k "$1" -i "$2" -m 256M --net "tap:$3" -p "$4"' \
    "$vmm" "$kernel" "$initrd" "$tap")
qemu=$(run qemu sh -c 'exec qemu-system-x86_64 -accel tcg -m 256 -nodefaults -no-reboot -display none -serial stdio \
    -kernel "$0" -initrd "$1" -netdev "tap,id=n0,ifname=$2,script=no,downscript=no" \
    -device virtio-net-pci,netdev=n0 -append "$3"' "$kernel" "$initrd" "$tap")
echo "guest -> host TCP, $mib MiB over virtio-net + tap, software CPU (MB/s, bytes, seconds)"
echo "  ours (vmm --accel emulator)      $ours"
echo "  qemu tcg virtio-net (no vhost)   $qemu"
echo "ratio ours/qemu $(echo "$ours $qemu" | awk '{ if ($4 > 0) printf "%.2f", $1 / $4; else print "n/a" }')"
