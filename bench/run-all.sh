#!/usr/bin/env bash
# Runs every benchmark script in bench/ (each prints its own numbers and ratios).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
status=0
for b in "$here"/*.sh; do
    case "$(basename "$b")" in run-all.sh|vmm-common.sh) continue ;; esac
    echo "== $(basename "$b")"
    bash "$b" || { echo "!! $(basename "$b") failed"; status=1; }
done
exit $status
