#!/bin/sh
# Builds guests/virtio-test.c (or SOURCE, e.g. net-test.c) into a 32-bit multiboot ELF:
#   build-virtio-test.sh OUT [SOURCE]
set -e
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../.build/guests/virtio-test.elf}
mkdir -p "$(dirname "$out")"
lds=$(mktemp)
trap 'rm -f "$lds"' EXIT
cat > "$lds" <<'LDS'
ENTRY(_start)
SECTIONS {
  . = 0x100000;
  .text : { KEEP(*(.multiboot)) *(.text*) }
  .rodata : { *(.rodata*) }
  .data : { *(.data*) }
  .bss : { *(.bss*) *(COMMON) }
  /DISCARD/ : { *(.note*) *(.comment) *(.eh_frame*) }
}
LDS
gcc -m32 -O2 -ffreestanding -fno-pic -fno-pie -no-pie -nostdlib -fno-stack-protector \
    -fno-builtin -fno-asynchronous-unwind-tables -Wall -Wno-unused-function \
    -Wl,-T,"$lds" -Wl,--build-id=none -o "$out" "$here/${2:-virtio-test.c}"
echo "$out"
