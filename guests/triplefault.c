/* triplefault: prints a line, then faults with no usable IDT: #UD -> #DF -> triple fault.
 * A VMM must report the shutdown instead of hanging. */
#include "guest.h"

int main(void) {
    printf("triplefault: about to triple-fault\n");
    struct { u16 limit; uptr base; } __attribute__((packed)) none = { 0, 0 };
    __asm__ volatile("lidt %0; ud2" : : "m"(none));
    printf("FAIL: still running after the triple fault\n");
    return 0;
}
