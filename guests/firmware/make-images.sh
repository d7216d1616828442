#!/bin/sh
# Makes the bootable images the firmware (SeaBIOS) tests boot, from Debian packages only:
#   OUT/syslinux-disk.img  raw disk: SYSLINUX's MBR (syslinux-common), one active FAT16
#                          partition (dosfstools, mtools) holding ldlinux (syslinux) and
#                          KERNEL + INITRD; serial console, a prompt, label "linux"
#   OUT/blank-disk.img     raw disk of zeros (no boot sector)
#   OUT/grub-cdrom.iso     (with --iso) grub-mkrescue ISO (grub-pc-bin, xorriso, mtools)
#                          with KERNEL, a serial GRUB menu, a marker file
#                          /swiftvmm-cdrom-marker and an initramfs that loads Debian's
#                          virtio_scsi, sr_mod and isofs, mounts /dev/sr0 and prints the marker
# ARCH is a guests/debian/build.sh output directory (vmlinuz, initramfs.cpio.gz, the
# unpacked initramfs/ and the kernel package's root/lib/modules).
# usage: make-images.sh OUT ARCH [--iso]
# The kernel command line both loaders pass: console=ttyS0 plus what the tests need.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 OUT ARCH [--iso]" >&2; exit 2; }
OUT=$1; ARCH=$2; ISO=${3:-}
KERNEL=$ARCH/vmlinuz; INITRD=$ARCH/initramfs.cpio.gz
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
  # The CD's initramfs: build.sh's, plus the SCSI CD-ROM modules and another init.
  ird=$tmp/ird
  cp -a "$ARCH/initramfs" "$ird"
  kver=$(cat "$ARCH/kernel-version")
  CDMODS="scsi_common scsi_mod virtio_scsi cdrom sr_mod isofs"
  for m in $CDMODS; do
    f=$(find "$ARCH/root/lib/modules/$kver" -name "$m.ko*" | head -1)
    [ -n "$f" ] || { echo "module $m not found in $kver" >&2; exit 1; }
    case "$f" in
      *.ko.xz) xz -dc "$f" > "$ird/lib/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" > "$ird/lib/modules/$m.ko" ;;
      *) cp "$f" "$ird/lib/modules/$m.ko" ;;
    esac
  done
  cat > "$ird/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci $CDMODS; do
  insmod /lib/modules/\$m.ko 2>/dev/null && echo "loaded \$m" || echo "could not load \$m"
done
i=0; while [ ! -b /dev/sr0 ] && [ \$i -lt 60 ]; do sleep 1; i=\$((i + 1)); done
mkdir -p /cdrom
if mount -t iso9660 -o ro /dev/sr0 /cdrom; then
  echo "cdrom marker: \$(cat /cdrom/swiftvmm-cdrom-marker)"
  umount /cdrom
fi
echo SWIFTVMM-INIT-OK
poweroff -f
INIT
  chmod +x "$ird/init"
  (cd "$ird" && find . | cpio -o -H newc --quiet | gzip -9 > "$root/boot/initrd.gz")
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
