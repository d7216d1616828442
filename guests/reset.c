/* reset: prints a line, then pulses the CPU reset line through the i8042 (out 0x64, 0xfe).
 * A VMM must see the reset and end the run. */
#include "guest.h"

int main(void) {
    printf("reset: resetting through the i8042\n");
    for (int i = 0; i < 1000 && (inb(0x64) & 2); i++) pause();
    outb(0x64, 0xFE);
    for (u32 i = 0; i < 100000000; i++) pause();
    printf("FAIL: still running after the reset pulse\n");
    return 0;
}
