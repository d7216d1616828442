#!/usr/bin/env bash
# Process start -> boot-loader prompt on the serial console, through SeaBIOS (Debian's
# bios-256k.bin for both): ours (vmm) vs qemu-system-x86_64 -M pc, same ISO (GRUB menu of a
# grub-mkrescue ISO on a virtio-scsi CD-ROM) and same disk (SYSLINUX's "boot:" prompt on a
# virtio-blk disk). Software CPU vs QEMU TCG, and KVM vs QEMU -enable-kvm when /dev/kvm
# works. Prints medians and ratios ours/QEMU (goals: <= 1 on the software CPU, <= 0.5 on
# KVM). VMM=path uses that binary instead of building a release one.
set -euo pipefail
source "$(dirname "$0")/vmm-common.sh"
RUNS=${RUNS:-5}
MEM=${MEM:-256M}
CACHE=${SWIFTVMM_GUEST_CACHE:-$root/.build/guests/debian}
[ -n "${VMM:-}" ] || vmm_release
img=$root/.build/guests-firmware-bench
sh "$root/guests/firmware/make-images.sh" "$img" "$CACHE/amd64" --iso >/dev/null
BIOS=/usr/share/seabios/bios-256k.bin
p="python3 $root/bench/firmware-prompt.py"

run_pair() {   # name accel-ours accel-qemu pattern ours-args... -- qemu-args...
    local name=$1 ao=$2 aq=$3 pat=$4; shift 4
    local oargs=() qargs=()
    while [ "$1" != "--" ]; do oargs+=("$1"); shift; done; shift
    qargs=("$@")
    local ours theirs; ours=$(mktemp); theirs=$(mktemp)
    for _ in $(seq "$RUNS"); do   # interleaved: both see the same machine load
        $p 1 300 "$pat" -- "$VMM" --accel "$ao" -m "$MEM" "${oargs[@]}" >>"$ours"
        $p 1 300 "$pat" -- qemu-system-x86_64 -M pc $aq -m "$MEM" -bios "$BIOS" -nodefaults -nographic \
            -serial stdio -no-reboot "${qargs[@]}" >>"$theirs"
    done
    local o q oc qc
    o=$(cut -d' ' -f1 "$ours" | median); q=$(cut -d' ' -f1 "$theirs" | median)
    oc=$(cut -d' ' -f2 "$ours" | median); qc=$(cut -d' ' -f2 "$theirs" | median)
    printf "firmware-boot %-22s ours %8.1f ms (%.2f CPU-s)  qemu %8.1f ms (%.2f CPU-s)  ratio %.3f\n" \
        "$name" "$o" "$oc" "$q" "$qc" "$(echo "$o / $q" | bc -l)"
    rm -f "$ours" "$theirs"
}

cd_q=(-device virtio-scsi-pci -drive "file=$img/grub-cdrom.iso,if=none,id=cd,media=cdrom,format=raw,readonly=on"
      -device scsi-cd,drive=cd)
disk_q=(-drive "file=$img/syslinux-disk.img,if=virtio,format=raw,snapshot=on")
echo "firmware-boot: $RUNS runs each, medians; memory $MEM; $(nproc) CPUs; $(date -u +%Y-%m-%d)"
run_pair "iso->grub emulator" emulator "-accel tcg" "GNU GRUB" -r "$img/grub-cdrom.iso" -- "${cd_q[@]}"
cp "$img/syslinux-disk.img" "$img/bench-disk.img"
run_pair "disk->syslinux emulator" emulator "-accel tcg" "boot:" -d "$img/bench-disk.img" -- "${disk_q[@]}"
if [ -w /dev/kvm ]; then
    run_pair "iso->grub kvm" kvm "-enable-kvm" "GNU GRUB" -r "$img/grub-cdrom.iso" -- "${cd_q[@]}"
    run_pair "disk->syslinux kvm" kvm "-enable-kvm" "SYSLINUX 6" -d "$img/bench-disk.img" -- "${disk_q[@]}"
fi
rm -f "$img/bench-disk.img"
