#!/bin/sh
# Benchmark 8(a): exits per second of a port-I/O loop guest (real mode: out 0x10,al; inc al;
# jmp) through our KVM layer (kvm-exit-bench, release build) vs a minimal C KVM_RUN loop
# (bench/kvm-exits.c) on the same guest bytes and VM set-up. Runs both ROUNDS times,
# interleaved, and compares the best round of each. Goal: ratio >= 0.95.
# Usage: bench/kvm-exits.sh [EXITS] [ROUNDS]
set -e
cd "$(dirname "$0")/.."
EXITS=${1:-200000}
ROUNDS=${2:-5}
export PATH=/opt/swift/usr/bin:$PATH
[ -w /dev/kvm ] || { echo "kvm-exits: /dev/kvm is not usable here; skipping"; exit 0; }
mkdir -p .build/bench
cc -O2 -Wall -o .build/bench/kvm-exits-c bench/kvm-exits.c
swift build -c release --product kvm-exit-bench >/dev/null
SWIFT_BIN=$(swift build -c release --show-bin-path)/kvm-exit-bench

best_c=0; best_s=0
rate() { echo "$1" | awk '{ printf "%.0f", $1 / $2 }'; }
for i in $(seq "$ROUNDS"); do
    c=$(rate "$(.build/bench/kvm-exits-c "$EXITS")")
    s=$(rate "$("$SWIFT_BIN" "$EXITS")")
    echo "round $i: C $c exits/s, Swift $s exits/s"
    [ "$c" -gt "$best_c" ] && best_c=$c
    [ "$s" -gt "$best_s" ] && best_s=$s
done
echo "best: C $best_c exits/s ($(awk "BEGIN{printf \"%.2f\", 1e6/$best_c}") us/exit), Swift $best_s exits/s ($(awk "BEGIN{printf \"%.2f\", 1e6/$best_s}") us/exit)"
echo "ratio (Swift / C): $(awk "BEGIN{printf \"%.3f\", $best_s/$best_c}")  (goal >= 0.95)"
