#!/bin/sh
# Runs test guests under QEMU's software CPU (TCG), which proves them correct independently
# of our VMM. Usage: ./run-qemu.sh build/longmode.elf ...   (make check runs all of them)
# Environment: QEMU (default qemu-system-x86_64), ACCEL (default tcg), TIMEOUT (seconds).
#
# Expected QEMU exit status: isa-debug-exit turns the guest's value v into 2v+1, so a
# passing guest (v = 0) ends with 1; triplefault and reset end with 0 because of -no-reboot.
QEMU=${QEMU:-qemu-system-x86_64}
ACCEL=${ACCEL:-tcg}
TIMEOUT=${TIMEOUT:-120}
failed=0
for elf in "$@"; do
    name=$(basename "$elf" .elf)
    case $name in
        triplefault|reset) want=0 ;;
        *) want=1 ;;
    esac
    out=$(timeout "$TIMEOUT" "$QEMU" -accel "$ACCEL" -machine pc -m 128 -smp 4 \
        -display none -serial stdio -monitor none -no-reboot \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -kernel "$elf" -append "test-cmdline" 2>&1)
    status=$?
    if [ "$status" = "$want" ] && ! printf '%s\n' "$out" | grep -q '^FAIL'; then
        echo "ok   $name (exit $status)"
    else
        echo "FAIL $name (exit $status, expected $want)"
        printf '%s\n' "$out" | sed 's/^/    /'
        failed=1
    fi
done
exit $failed
