#include "guest.h"

int main(void);

/* Called by entry.S with a stack, our GDT and (x86-64) long mode. */
void guest_start(void) {
    serial_init();
    idt_init();
    main();
    report_summary();
}
