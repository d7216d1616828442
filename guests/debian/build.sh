#!/bin/sh
# Builds the Debian test guests for the software CPU (and anyone else):
#   $CACHE/amd64/vmlinuz        Debian linux-image-amd64 kernel (bzImage)
#   $CACHE/amd64/initramfs.cpio.gz  busybox initramfs that loads the virtio modules,
#                                   prints SWIFTVMM-INIT-OK and powers off
#   $CACHE/i386/...             the same for linux-image-686:i386 (with --i386)
# --variant NAME builds only $CACHE/ARCH/initramfs-NAME.cpio.gz, the same initramfs whose
# checks are variant NAME's (init_checks_NAME below) instead of the default ones; the
# default initramfs is left as it is. Variants: net (DHCP with udhcpc, ping the router, a
# TCP exchange with the host, a peer VM's listener or client, a forged MAC; markers
# SWIFTVMM-NET-*), vsock (loads Debian's vsock modules
# and runs guests/vsock-echo.c, built here with gcc -static: a round trip in each direction
# with the host's hybrid vsock socket; markers SWIFTVMM-VSOCK-*), v3 (for `--cpu-level v3`:
# prints the kernel's xstate line and the CPU flags, runs guests/v3-check.c, built here
# with gcc -static -march=x86-64-v3 and also left as $CACHE/amd64/v3-check for the host's
# run; marker SWIFTVMM-V3-DONE).
# CACHE defaults to .build/guests/debian (override with SWIFTVMM_GUEST_CACHE).
# Needs: apt-get (packages are fetched with `apt-get download`, never installed),
# dpkg-deb, cpio, gzip and busybox-static (and gcc with libc6-dev for --variant vsock/v3). Idempotent: re-running reuses the cache.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${SWIFTVMM_GUEST_CACHE:-$ROOT/.build/guests/debian}
ARCHES="amd64"
VARIANT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --i386) ARCHES="$ARCHES i386" ;;
    --only-i386) ARCHES="i386" ;;
    --variant) [ $# -ge 2 ] || { echo "--variant needs a name" >&2; exit 2; }
               VARIANT=$2; shift ;;
    *) echo "usage: $0 [--i386|--only-i386] [--variant net|vsock|v3]" >&2; exit 2 ;;
  esac
  shift
done
case "$VARIANT" in ""|net|vsock|v3) ;; *) echo "unknown variant $VARIANT (known: net, vsock, v3)" >&2; exit 2 ;; esac

MARKER="SWIFTVMM-INIT-OK"
MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk failover net_failover virtio_net virtio-rng virtio_console"
if [ "$VARIANT" = vsock ]; then
  MODULES="$MODULES vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport"
fi

build_arch() {
  arch=$1
  case "$arch" in
    amd64) meta=linux-image-amd64; pkgarch=amd64 ;;
    i386) meta=linux-image-686; pkgarch=i386
          if ! dpkg --print-foreign-architectures | grep -qx i386; then
            if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi
            $SUDO dpkg --add-architecture i386
            # A partial index failure (e.g. a security mirror mid-sync) must not stop us:
            # the kernel and busybox come from the main archive.
            $SUDO apt-get update -qq || echo "warning: apt-get update reported errors; continuing" >&2
          fi ;;
  esac
  out=$CACHE/$arch
  if [ -f "$out/vmlinuz" ] && [ -f "$out/vmlinux" ] && [ -f "$out/kernel-version" ] && [ -d "$out/root/lib/modules" ]; then
    echo "$arch kernel already fetched in $out"
    kver=$(cat "$out/kernel-version")
    build_initramfs "$arch" "$out" "$kver"
    return 0
  fi
  mkdir -p "$out/debs" "$out/root"
  # The meta package depends on the versioned image package: resolve it.
  image=$(apt-cache depends "$meta:$pkgarch" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$image" ] || { echo "cannot resolve the kernel package behind $meta:$pkgarch (run apt-get update)" >&2; exit 1; }
  image=${image%%:*}
  echo "fetching $image:$pkgarch"
  (cd "$out/debs" && ls "$image"_*.deb >/dev/null 2>&1 || apt-get download "$image:$pkgarch")
  rm -rf "$out/root"; mkdir -p "$out/root"
  dpkg-deb -x "$out/debs/$image"_*.deb "$out/root"
  kver=$(ls "$out/root/lib/modules" | head -1)
  cp "$out/root/boot/vmlinuz-$kver" "$out/vmlinuz"
  # The uncompressed kernel (ELF with a PVH entry note): skips the in-guest XZ
  # decompression, which dominates boot time on the software CPU.
  off=$(grep -abo "$(printf '\3757zXZ')" "$out/vmlinuz" | head -1 | cut -d: -f1)
  if [ -n "$off" ]; then
    tail -c +$((off + 1)) "$out/vmlinuz" | xz -dc > "$out/vmlinux" 2>/dev/null || true
  fi
  echo "$kver" > "$out/kernel-version"
  build_initramfs "$arch" "$out" "$kver"
}

# The initramfs is rebuilt every time (a second or two), so changes to its init script
# take effect without refetching the kernel.
build_initramfs() {
  arch=$1; out=$2; kver=$3
  ird=$out/initramfs
  rm -rf "$ird"; mkdir -p "$ird/bin" "$ird/sbin" "$ird/proc" "$ird/sys" "$ird/dev" "$ird/lib/modules"
  bb=$(command -v busybox || echo /bin/busybox)
  if [ "$arch" = i386 ]; then
    # A 64-bit busybox cannot run on an i386 kernel: use the i386 busybox-static.
    (cd "$out/debs" && ls busybox-static_*_i386.deb >/dev/null 2>&1 || apt-get download busybox-static:i386)
    mkdir -p "$out/bb"; dpkg-deb -x "$out/debs"/busybox-static_*_i386.deb "$out/bb"
    bb=$out/bb/bin/busybox
  fi
  cp "$bb" "$ird/bin/busybox"
  for m in $MODULES; do
    f=$(find "$out/root/lib/modules/$kver" -name "$m.ko*" | head -1)
    if [ -z "$f" ]; then
      f=$(find "$out/root/lib/modules/$kver" -name "$(echo $m | tr - _).ko*" | head -1)
    fi
    [ -n "$f" ] || { echo "module $m not found in the $arch kernel $kver" >&2; exit 1; }
    case "$f" in
      *.ko.xz) xz -dc "$f" > "$ird/lib/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" > "$ird/lib/modules/$m.ko" ;;
      *) cp "$f" "$ird/lib/modules/$m.ko" ;;
    esac
  done
  if [ "$VARIANT" = vsock ]; then
    [ "$arch" = amd64 ] || { echo "--variant vsock is built for amd64 only" >&2; exit 1; }
    gcc -static -O2 -Wall -o "$ird/bin/vsock-echo" "$HERE/../vsock-echo.c"
  fi
  if [ "$VARIANT" = v3 ]; then
    [ "$arch" = amd64 ] || { echo "--variant v3 is built for amd64 only" >&2; exit 1; }
    gcc -static -O2 -Wall -march=x86-64-v3 -o "$out/v3-check" "$HERE/../v3-check.c" -lm
    cp "$out/v3-check" "$ird/bin/v3-check"
  fi
  { init_head; init_checks_${VARIANT:-default}; init_tail; } > "$ird/init"
  chmod +x "$ird/init"
  name=initramfs${VARIANT:+-$VARIANT}.cpio.gz
  (cd "$ird" && find . | cpio -o -H newc --quiet | gzip -9 > "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name")
  echo "built $out/vmlinuz ($kver) and $out/$name"
}

# The init, in three parts: every variant shares the head (mounts, modules, interfaces)
# and the tail (marker, power-off); the checks in between are the variant's.
init_head() {
  cat <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "swiftvmm init: loading virtio modules"
for m in $MODULES; do
  insmod /lib/modules/\$m.ko 2>/dev/null && echo "loaded \$m" || echo "could not load \$m"
done
uname -a
for n in /sys/class/net/*; do echo "net: \${n##*/} \$(cat \$n/address)"; done
INIT
}

init_tail() {
  cat <<INIT
sync
# The guest's clocks, for the boot tests to compare with the host's: the realtime clock
# (set from our RTC at boot, then kept by the kernel) and the time since boot.
echo "SWIFTVMM-CLOCK epoch=\$(date +%s) uptime=\$(cut -d' ' -f1 /proc/uptime)"
echo $MARKER
poweroff -f
INIT
}

# The default checks: what the boot tests look at (eth0 up, the virtio disk, the rng).
init_checks_default() {
  cat <<INIT
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up 2>/dev/null; sleep 1
  echo "eth0: rx \$(cat /sys/class/net/eth0/statistics/rx_packets) tx \$(cat /sys/class/net/eth0/statistics/tx_packets) packets"
fi
ip link 2>/dev/null
# What the integration tests check: the virtio disk (its first bytes, then a write that
# the host reads back after power-off) and the virtio rng.
cat /proc/partitions
if [ -b /dev/vda ]; then
  echo "vda reads: \$(head -c 24 /dev/vda)"
  echo "SWIFTVMM-GUEST-WROTE-THIS" | dd of=/dev/vda bs=512 seek=1 conv=notrunc,sync,fsync 2>/dev/null && echo "vda written"
fi
if [ -c /dev/hwrng ]; then
  echo "hwrng gives: \$(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \\n')"
fi
INIT
}

# The net checks (a local interface under vmd): udhcpc's lease on eth0 (or the static
# swiftvmm.ip=ADDR/LEN,ROUTER), a ping of the router (the host side of the tap), one TCP
# exchange with the host on the port given as swiftvmm.tcp=PORT on the kernel command line,
# a bulk send for bench/net-tcp.sh (swiftvmm.bulk=PORT:MIB), and the SLAAC address and
# default route when the router advertises a prefix (swiftvmm.inet6 waits for it). Each
# step prints a SWIFTVMM-NET-* marker line.
init_checks_net() {
  cat <<'INIT'
mkdir -p /tmp
cat > /bin/dhcp-event <<'SCRIPT'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    echo "SWIFTVMM-NET-LEASE ip=$ip mask=$mask router=$router dns=$dns hostname=$hostname lease=$lease"
    echo "${router%% *}" > /tmp/router ;;
esac
SCRIPT
chmod +x /bin/dhcp-event
arg() { sed -n "s/.*swiftvmm\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
port=$(arg tcp)
bulk=$(arg bulk)
static=$(arg ip)
ip link set lo up
ip link set eth0 up
t0=$(cut -d' ' -f1 /proc/uptime)
if [ -n "$static" ]; then
  # swiftvmm.ip=ADDR/LEN,ROUTER: no DHCP (a host without our server, e.g. QEMU's tap).
  ip addr add "${static%,*}" dev eth0 && echo "${static#*,}" > /tmp/router
  echo "SWIFTVMM-NET-STATIC $static"
elif udhcpc -i eth0 -s /bin/dhcp-event -n -q -t 20 -T 1 -A 1; then
  echo "SWIFTVMM-NET-DHCP-SECONDS start=$t0 bound=$(cut -d' ' -f1 /proc/uptime)"
else
  echo "SWIFTVMM-NET-DHCP-FAILED"
fi
if [ -s /tmp/router ]; then
  router=$(cat /tmp/router)
  ping -c 1 -W 10 "$router" >/dev/null && echo "SWIFTVMM-NET-PING-OK $router" || echo "SWIFTVMM-NET-PING-FAILED $router"
  if [ -n "$port" ]; then
    reply=$(echo "SWIFTVMM-GUEST-HELLO" | nc -w 10 "$router" "$port")
    echo "SWIFTVMM-NET-TCP $reply"
  fi
  if [ -n "$bulk" ]; then
    # swiftvmm.bulk=PORT:MIB: MIB MiB of zeros to the host over one TCP connection.
    dd if=/dev/zero bs=65536 count=$((${bulk#*:} * 16)) 2>/dev/null | nc -w 10 "$router" "${bulk%:*}"
    echo "SWIFTVMM-NET-BULK-SENT ${bulk#*:} MiB"
  fi
fi
# Two VMs on one switch (static addresses, swiftvmm.ip): swiftvmm.listen=PORT answers one
# TCP line (ping is the kernel's); swiftvmm.peer=ADDR:PORT pings ADDR until it answers (the
# peer may still be booting: at most 300 tries), then exchanges a line with ADDR:PORT.
listen=$(arg listen)
peer=$(arg peer)
if [ -n "$listen" ]; then
  echo "SWIFTVMM-NET-LISTENING $listen"
  got=$(echo "SWIFTVMM-LISTENER-REPLY" | timeout 900 nc -l -p "$listen")
  echo "SWIFTVMM-NET-LISTEN-GOT $got"
fi
if [ -n "$peer" ]; then
  a=${peer%:*}; p=${peer#*:}; reply=""
  for i in $(seq 1 300); do ping -c 1 -W 1 "$a" >/dev/null 2>&1 && break; done
  for i in $(seq 1 60); do
    reply=$(echo "SWIFTVMM-PEER-HELLO" | nc -w 5 "$a" "$p")
    [ -n "$reply" ] && break
    sleep 1
  done
  [ -n "$reply" ] && echo "SWIFTVMM-NET-PEER-OK $a reply=$reply" || echo "SWIFTVMM-NET-PEER-FAILED $a"
fi
# swiftvmm.forgemac=MAC (for `locked lladdr`): eth0 takes the forged MAC and pings the
# router (3 tries), then takes its own MAC back and pings again; markers say which answered.
forge=$(arg forgemac)
if [ -n "$forge" ] && [ -s /tmp/router ]; then
  router=$(cat /tmp/router); real=$(cat /sys/class/net/eth0/address)
  ip link set eth0 down; ip link set eth0 address "$forge"; ip link set eth0 up
  echo "SWIFTVMM-NET-FORGED $(cat /sys/class/net/eth0/address)"
  ping -c 3 -W 1 "$router" >/dev/null 2>&1 && echo "SWIFTVMM-NET-FORGED-PING-ANSWERED" || echo "SWIFTVMM-NET-FORGED-PING-UNANSWERED"
  ip link set eth0 down; ip link set eth0 address "$real"; ip link set eth0 up
  echo "SWIFTVMM-NET-UNFORGED $(cat /sys/class/net/eth0/address)"
  ping -c 5 -W 2 "$router" >/dev/null 2>&1 && echo "SWIFTVMM-NET-UNFORGED-PING-OK" || echo "SWIFTVMM-NET-UNFORGED-PING-FAILED"
fi
# With swiftvmm.inet6 on the command line: wait (at most 15 s) for SLAAC to finish DAD.
if grep -q swiftvmm.inet6 /proc/cmdline; then
  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
    a=$(ip -6 addr show dev eth0 scope global 2>/dev/null)
    case "$a" in *inet6*) case "$a" in *tentative*) ;; *) break ;; esac ;; esac
    sleep 1
  done
fi
ip -6 addr show dev eth0 scope global 2>/dev/null | sed -n 's/.*inet6 \([^ ]*\).*/SWIFTVMM-NET-INET6 \1/p'
ip -6 route show default 2>/dev/null | sed -n 's/^default via \([^ ]*\).*/SWIFTVMM-NET-INET6-ROUTE \1/p'
INIT
}

# The vsock checks: vsock-echo listens on guest port swiftvmm.vsock=PORT (default 1234),
# greets the host on its port swiftvmm.vsockhost=PORT (default 5000), then echoes one
# host-initiated connection until the host closes it.
init_checks_vsock() {
  cat <<'INIT'
arg() { sed -n "s/.*swiftvmm\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
port=$(arg vsock); hostport=$(arg vsockhost)
ls -l /dev/vsock 2>/dev/null
/bin/vsock-echo "${port:-1234}" "${hostport:-5000}" && echo "SWIFTVMM-VSOCK-DONE"
INIT
}

init_checks_v3() {
  cat <<'INIT'
dmesg | grep 'x86/fpu: Enabled xstate'
echo "cpu flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx|avx2|fma|f16c|bmi1|bmi2|movbe|xsave' | tr '\n' ' ')"
/bin/v3-check && echo "SWIFTVMM-V3-DONE"
INIT
}

for a in $ARCHES; do build_arch "$a"; done
