#!/bin/sh
# Storage benchmark: 4 KiB sequential and random reads/writes through our qcow2 and raw
# images (StorageBench, release build), and `qemu-img bench` on the same kind of images.
# Prints throughput and the ratios qcow2/raw (ours) and ours/qemu-img.
# Usage: bench/storage-qcow2.sh [count]      (default 65536 operations of 4 KiB = 256 MiB)
set -eu
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
COUNT=${1:-65536}
BS=4096
SIZE=$((COUNT * BS))
swift build -c release --product StorageBench >/dev/null 2>&1 || swift build -c release --product StorageBench
BIN=$(swift build -c release --show-bin-path)/StorageBench
DIR=$(mktemp -d /tmp/storage-bench.XXXXXX)
trap 'rm -rf "$DIR"' EXIT

ours() { "$BIN" "$@" | awk '{print $1}'; }       # ops/s
# qemu-img bench, page cache, 4 KiB steps; queue depth $DEPTH (1: synchronous like us).
DEPTH=1
qemu() { qemu-img bench -d $DEPTH -t writeback -s $BS -c $COUNT "$@" 2>&1 | awk '/Run completed/ {print int('$COUNT' / $(NF-1))}'; }
qemu64() { DEPTH=64 qemu "$@"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

fresh() {  # fresh images of $SIZE bytes
    rm -f "$DIR"/*
    qemu-img create -q -f raw "$DIR/d.raw" $SIZE
    qemu-img create -q -f qcow2 "$DIR/d.qcow2" $SIZE
    qemu-img create -q -f qcow2 "$DIR/q.qcow2" $SIZE
}

printf "%-24s %10s %11s %9s %11s %9s %12s %9s\n" "4 KiB x $COUNT" "raw ops/s" "qcow2 ops/s" "qcow2/raw" "qemu-img d1" "ours/d1" "qemu-img d64" "ours/d64"
row() { printf "%-24s %10s %11s %9s %11s %9s %12s %9s\n" "$1" "$2" "$3" "$(ratio "$3" "$2")" "$4" "$(ratio "$3" "$4")" "${5:--}" "$(ratio "$3" "${5:-0}")"; }

fresh
R=$(ours "$DIR/d.raw" seq write $BS $COUNT); Q=$(ours "$DIR/d.qcow2" seq write $BS $COUNT); E=$(qemu -w -f qcow2 "$DIR/q.qcow2")
qemu-img create -q -f qcow2 "$DIR/q64.qcow2" $SIZE; F=$(qemu64 -w -f qcow2 "$DIR/q64.qcow2")
row "seq write (allocating)" "$R" "$Q" "$E" "$F"
R=$(ours "$DIR/d.raw" seq write $BS $COUNT); Q=$(ours "$DIR/d.qcow2" seq write $BS $COUNT); E=$(qemu -w -f qcow2 "$DIR/q.qcow2")
F=$(qemu64 -w -f qcow2 "$DIR/q.qcow2")
row "seq write (rewrite)" "$R" "$Q" "$E" "$F"
R=$(ours "$DIR/d.raw" seq read $BS $COUNT); Q=$(ours "$DIR/d.qcow2" seq read $BS $COUNT); E=$(qemu -f qcow2 "$DIR/q.qcow2")
F=$(qemu64 -f qcow2 "$DIR/q.qcow2")
row "seq read" "$R" "$Q" "$E" "$F"
R=$(ours "$DIR/d.raw" rand read $BS $COUNT); Q=$(ours "$DIR/d.qcow2" rand read $BS $COUNT)
row "rand read" "$R" "$Q" "-"
R=$(ours "$DIR/d.raw" rand write $BS $COUNT); Q=$(ours "$DIR/d.qcow2" rand write $BS $COUNT)
row "rand write (allocated)" "$R" "$Q" "-"
fresh
R=$(ours "$DIR/d.raw" rand write $BS $COUNT 7); Q=$(ours "$DIR/d.qcow2" rand write $BS $COUNT 7)
row "rand write (allocating)" "$R" "$Q" "-"
qemu-img check -q "$DIR/d.qcow2" && echo "qemu-img check: our qcow2 image is clean"
# qemu-img raw vs our raw, sequential read, for scale.
R=$(ours "$DIR/d.raw" seq read $BS $COUNT); E=$(qemu -f raw "$DIR/d.raw")
printf "raw seq read: ours %s ops/s, qemu-img %s ops/s, ours/qemu %s\n" "$R" "$E" "$(ratio "$R" "$E")"
