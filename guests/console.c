/* console: a long-running 32-bit multiboot test kernel for the vmd/vmctl end-to-end tests.
 *
 * Prints a banner and a prompt on COM1 and echoes what it receives there, driven by
 * interrupts: the UART's receive interrupt (IRQ 4) and the PIT (IRQ 0, 100 Hz) reach the
 * CPU through the 8259 PIC, and the CPU sleeps in `sti; hlt` between them. Commands
 * (ended by CR or LF):
 *   ticks     prints how many PIT interrupts arrived since boot
 *   poweroff  enters ACPI S5 through the PM1a control block
 *   deaf      from now on, answer a power-button press with a line but do not power off
 *   help      lists the commands
 * anything else is answered with "echo: <line>". An ACPI power-button press (PM1_STS
 * PWRBTN_STS, signalled by the SCI on IRQ 9) prints "console: power button pressed,
 * powering off" and enters S5.
 *
 * The PM1 ports and the S5 sleep type are the ones our FADT/DSDT describe (Boot's
 * ACPIPowerManagement): PM1a_EVT_BLK 0x600 (PM1_STS +0, PM1_EN +2), PM1a_CNT_BLK 0x604,
 * SCI on IRQ 9, \_S5 SLP_TYP 5. */
#include "guest.h"

#define COM1 0x3f8
#define PM1_STS 0x600
#define PM1_EN 0x602
#define PM1_CNT 0x604
#define PWRBTN (1u << 8)
#define SLP_TYP_S5 5u
#define SLP_EN (1u << 13)

volatile u32 ticks;
static volatile u32 power_button;
static bool deaf;

/* Received bytes, filled by the UART interrupt, drained by the main loop. */
#define RING 1024
static volatile u8 ring[RING];
static volatile u32 ring_head, ring_tail;

static void pit_tick(struct irq_frame *f) { (void)f; ticks++; pic_eoi(0); }

/* Moves what the receive FIFO holds into the ring; the UART lowers its line when empty. */
static void uart_drain(void) {
    for (int i = 0; i < 64 && (inb(COM1 + 5) & 0x01); i++) {
        u8 c = inb(COM1);
        if (ring_head - ring_tail < RING) { ring[ring_head % RING] = c; ring_head++; }
    }
}

static void uart_rx(struct irq_frame *f) { (void)f; uart_drain(); pic_eoi(4); }

static void sci(struct irq_frame *f) {
    (void)f;
    u16 sts = inw(PM1_STS);
    if (sts & PWRBTN) {
        outw(PM1_STS, PWRBTN);  /* write one to clear: the SCI line drops */
        power_button = 1;
    }
    pic_eoi(9);
}

static void __attribute__((noreturn)) power_off(void) {
    outw(PM1_CNT, (u16)(SLP_TYP_S5 << 10 | SLP_EN));
    puts("console: still running after the S5 write\n");
    debug_exit(3);
}

static bool streq(const char *a, const char *b) {
    while (*a && *a == *b) { a++; b++; }
    return *a == *b;
}

static void command(const char *line) {
    if (!*line) return;
    if (streq(line, "poweroff")) { puts("console: powering off\n"); power_off(); }
    if (streq(line, "ticks")) { printf("ticks: %u\n", ticks); return; }
    if (streq(line, "deaf")) { deaf = true; puts("console: ignoring the power button\n"); return; }
    if (streq(line, "help")) { puts("commands: ticks poweroff deaf help\n"); return; }
    printf("echo: %s\n", line);
}

int main(void) {
    pic_remap(0x20, 0x28);
    set_irq_handler(0x20, pit_tick);
    set_irq_handler(0x24, uart_rx);
    set_irq_handler(0x29, sci);
    pit_periodic(100);

    /* COM1: receive-data interrupt on; OUT2 gates the UART's interrupt line. */
    /* Input that arrived before this keeps its place in the FIFO (the tests type early). */
    outb(COM1 + 4, 0x0B);   /* DTR, RTS, OUT2 */
    outb(COM1 + 1, 0x01);   /* IER: received data available */

    /* ACPI: clear a stale power-button status, then enable its SCI. */
    outw(PM1_STS, PWRBTN);
    outw(PM1_EN, PWRBTN);

    pic_set_mask((u16)~(1u << 0 | 1u << 2 | 1u << 4 | 1u << 9));
    puts("console: test kernel ready (ticks, poweroff, deaf, help)\n");
    puts("console> ");

    char line[128];
    u32 len = 0;
    bool after_cr = false;
    for (;;) {
        cli();
        /* Belt and braces: a receive interrupt lost before IRQ 4 was unmasked would leave
         * input in the FIFO; the next wake-up (at worst the 100 Hz tick) picks it up. */
        uart_drain();
        if (ring_tail == ring_head && !power_button) {
            /* sti's one-instruction shadow makes "sti; hlt" free of a lost wake-up. */
            __asm__ volatile("sti; hlt" ::: "memory");
            continue;
        }
        sti();
        if (power_button) {
            power_button = 0;
            if (deaf) {
                puts("\nconsole: power button pressed, ignored\n");
            } else {
                puts("\nconsole: power button pressed, powering off\n");
                power_off();
            }
        }
        while (ring_tail != ring_head) {
            u8 c = ring[ring_tail % RING];
            ring_tail++;
            bool lf_after_cr = c == '\n' && after_cr;
            after_cr = c == '\r';
            if (lf_after_cr) continue;
            if (c == '\r' || c == '\n') {
                putchar('\n');
                line[len] = 0;
                command(line);
                len = 0;
                puts("console> ");
            } else if (c == 0x7f || c == 0x08) {
                if (len) { len--; puts("\b \b"); }
            } else if (c >= 0x20 && c < 0x7f && len + 1 < sizeof(line)) {
                line[len++] = (char)c;
                putchar((char)c);
            }
        }
    }
}
