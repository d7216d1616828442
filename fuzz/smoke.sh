#!/bin/sh
# make test's short pass: builds every harness and runs each over its seed corpus plus
# RUNS (default 500) mutations. A crash fails (libFuzzer exits non-zero and leaves crash-*).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${FUZZ_OUT:-$ROOT/.build/fuzz}
RUNS=${RUNS:-500}
"$ROOT/fuzz/build.sh"
cd "$OUT"
for bin in bin/*; do
    n=$(basename "$bin")
    work=$(mktemp -d)
    if ! "$bin" -runs="$RUNS" -max_len=65536 -seed=1 -artifact_prefix="$OUT/crash-$n-" \
        "$work" "$ROOT/fuzz/corpus/$n" >"$OUT/smoke-$n.log" 2>&1; then
        tail -40 "$OUT/smoke-$n.log" >&2
        echo "fuzz smoke: $n FAILED (log $OUT/smoke-$n.log)" >&2
        rm -rf "$work"
        exit 1
    fi
    rm -rf "$work"
    echo "fuzz smoke: $n ok ($(grep -o 'Done [0-9]* runs' "$OUT/smoke-$n.log"))"
done
