#!/bin/sh
# Long fuzzing runs (not CI): each harness in turn, niced, for EXECS executions (default
# 10,000,000), one at a time so a shared machine keeps a core. The corpus grows in
# .build/fuzz/corpus/<harness> (seeded from fuzz/corpus); crashes land in .build/fuzz/crash-*.
# Prints one line per harness (executions, seconds, exec/s, crashes) for docs/fuzzing.md.
#   bench/fuzz.sh [harness ...]
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${FUZZ_OUT:-$ROOT/.build/fuzz}
EXECS=${EXECS:-10000000}
"$ROOT/fuzz/build.sh" "$@" || exit 1
names=${*:-$(cd "$OUT/bin" && ls)}
for n in $names; do
    mkdir -p "$OUT/corpus/$n"
    start=$(date +%s)
    nice -n 19 "$OUT/bin/$n" -runs="$EXECS" -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="$OUT/crash-$n-" "$OUT/corpus/$n" "$ROOT/fuzz/corpus/$n" \
        >"$OUT/long-$n.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    done_runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$OUT/long-$n.log" | grep -o '[0-9]*$')
    crashes=$(ls "$OUT"/crash-"$n"-* 2>/dev/null | wc -l)
    echo "$n: ${done_runs:-?} executions in ${secs}s, exit $rc, crash files $crashes"
done
