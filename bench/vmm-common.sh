# Shared by bench/vmm-*.sh: release vmm binary and the benchmark guest.
# Sourced, not run.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH

vmm_release() {
    (cd "$root" && swift build -c release --static-swift-stdlib --product vmm >/dev/null 2>&1) || {
        (cd "$root" && swift build -c release --static-swift-stdlib --product vmm 2>&1 | tail -20); exit 1; }
    VMM="$(cd "$root" && swift build -c release --static-swift-stdlib --show-bin-path)/vmm"
}

# The guest the VMM benchmarks boot: a freestanding test kernel that prints on COM1 at once
# and exits through the debug port. Override with BENCH_GUEST=path.
bench_guest() {
    if [ -n "${BENCH_GUEST:-}" ]; then GUEST=$BENCH_GUEST; return; fi
    local out="$root/.build/guests-bench"
    make -s -C "$root/guests" BUILD="$out" >/dev/null
    GUEST="$out/longmode.elf"   # PVH ELF64: prints its first line right after entering long mode
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }
