/* AP start-up trampoline for the x86-64 guests. The BSP copies the bytes between
 * ap_trampoline and ap_trampoline_end to AP_TRAMPOLINE (a page below 1 MiB) and sends
 * INIT/SIPI with vector AP_TRAMPOLINE >> 12. The AP goes real mode -> 32-bit protected
 * mode -> long mode (sharing the BSP's page tables) -> ap_entry64 on the stack in
 * ap_stack_top. */
#define AP_TRAMPOLINE 0x8000
#define T(x) (AP_TRAMPOLINE + (x) - ap_trampoline)

    .data
    .globl ap_trampoline, ap_trampoline_end
    .code16
ap_trampoline:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl T(tramp_gdt_desc)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $T(ap32)
    .code32
ap32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $T(tramp_stack), %esp       /* tiny stack for the call below */
    mov $enter_long_mode, %eax      /* absolute: this code runs away from its link address */
    call *%eax
    ljmp $0x18, $ap_entry64
    .p2align 3
tramp_gdt_desc:
    .word 31
    .long gdt
    .p2align 4
    .skip 64
tramp_stack:
ap_trampoline_end:

    .text
    .code64
ap_entry64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov ap_stack_top(%rip), %rsp
    call ap_main
1:  cli
    hlt
    jmp 1b

    .data
    .p2align 3
    .globl ap_stack_top
ap_stack_top: .quad 0
