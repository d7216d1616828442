#!/bin/sh
# Makes the bootable images the firmware (SeaBIOS) tests boot, from Debian packages only:
#   OUT/syslinux-disk.img  raw disk: SYSLINUX's MBR (syslinux-common), one active FAT16
#                          partition (dosfstools, mtools) holding ldlinux (syslinux) and
#                          KERNEL + INITRD; serial console, a prompt, label "linux"
#   OUT/blank-disk.img     raw disk of zeros (no boot sector)
#   OUT/grub-cdrom.iso     (with --iso) grub-mkrescue ISO (grub-pc-bin, xorriso, mtools)
#                          with KERNEL + INITRD, serial console, marker file
#                          /swiftvmm-cdrom-marker
# usage: make-images.sh OUT KERNEL INITRD [--iso]
# The kernel command line both loaders pass: console=ttyS0 plus what the tests need.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 OUT KERNEL INITRD [--iso]" >&2; exit 2; }
OUT=$1; KERNEL=$2; INITRD=$3; ISO=${4:-}
CMDLINE="console=ttyS0 cryptomgr.notests tsc=reliable"
mkdir -p "$OUT"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# SYSLINUX disk: 64 MiB, partition from sector 2048.
img=$tmp/disk.img
truncate -s 64M "$img"
printf 'label: dos\nstart=2048, type=6, bootable\n' | sfdisk -q "$img"
part=$tmp/part.img
truncate -s $((64 * 1024 * 1024 - 1024 * 1024)) "$part"
mkfs.vfat -F 16 -n SWIFTVMM "$part" >/dev/null
cat > "$tmp/syslinux.cfg" <<CFG
SERIAL 0 115200
CONSOLE 0
PROMPT 1
TIMEOUT 10
SAY swiftvmm syslinux disk: boot label 'linux'
DEFAULT linux
LABEL linux
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND $CMDLINE
CFG
export MTOOLS_SKIP_CHECK=1
mcopy -i "$part" "$KERNEL" ::/vmlinuz
mcopy -i "$part" "$INITRD" ::/initrd.gz
mcopy -i "$part" "$tmp/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$part"
dd if="$part" of="$img" bs=1M seek=1 conv=notrunc status=none
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$img" bs=440 count=1 conv=notrunc status=none
mv "$img" "$OUT/syslinux-disk.img"

truncate -s 16M "$OUT/blank-disk.img.tmp" && mv "$OUT/blank-disk.img.tmp" "$OUT/blank-disk.img"

if [ "$ISO" = "--iso" ]; then
  root=$tmp/iso
  mkdir -p "$root/boot/grub"
  cp "$KERNEL" "$root/boot/vmlinuz"
  cp "$INITRD" "$root/boot/initrd.gz"
  echo "SWIFTVMM-CDROM-MARKER" > "$root/swiftvmm-cdrom-marker"
  cat > "$root/boot/grub/grub.cfg" <<CFG
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=1
menuentry "swiftvmm cdrom linux" {
  linux /boot/vmlinuz $CMDLINE swiftvmm.cdrom=1
  initrd /boot/initrd.gz
}
CFG
  grub-mkrescue -o "$tmp/cd.iso" "$root" >"$tmp/mkrescue.log" 2>&1 || { cat "$tmp/mkrescue.log" >&2; exit 1; }
  mv "$tmp/cd.iso" "$OUT/grub-cdrom.iso"
fi
echo "images in $OUT"
