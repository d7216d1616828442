/* Entry for every guest. Built twice:
 *   -m32 (i386 guests): 32-bit protected mode all the way.
 *   -m64 (x86-64 guests): 32-bit entry, then identity paging of the low 4 GiB with 2 MiB
 *                          pages, EFER.LME, paging on, far jump to 64-bit code.
 * Both entries expect what PVH and multiboot v1 give: flat 32-bit protected mode, paging
 * off, interrupts off; EAX = multiboot magic or EBX = PVH start_info. The ELF note or
 * multiboot header that advertises the entry is chosen with -DPVH / -DMULTIBOOT. */

#define XEN_ELFNOTE_PHYS32_ENTRY 18

#ifdef PVH
    .section .note.pvh, "a", @note
    .p2align 2
    .long 4                         /* name size ("Xen\0") */
#ifdef __x86_64__
    .long 8                         /* desc size: ELF64 -> u64 */
#else
    .long 4
#endif
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .p2align 2
#ifdef __x86_64__
    .quad _start32
#else
    .long _start32
#endif
#endif

#ifdef MULTIBOOT
    .section .multiboot, "a"
    .p2align 2
    .long 0x1BADB002                /* magic */
    .long 0x00000003                /* page-align modules, want memory info */
    .long -(0x1BADB002 + 0x00000003)
#endif

    .section .text.entry, "ax"
    .code32
    .globl _start32
_start32:
    cli
    cld
    /* Remember how we were booted. */
    cmp $0x2BADB002, %eax
    je 1f
    xor %eax, %eax
    test %ebx, %ebx
    jz 1f
    cmpl $0x336ec578, (%ebx)
    jne 1f
    mov $0x336ec578, %eax
1:  mov %eax, boot_magic
    mov %ebx, boot_info
    mov $boot_stack_top, %esp
    lgdt gdt_desc
    ljmp $0x08, $2f
2:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
#ifdef __x86_64__
    /* PML4[0] -> PDPT; PDPT[0..3] -> PD0..PD3; 2048 x 2 MiB identity pages. */
    mov $pdpt, %eax
    or $3, %eax
    mov %eax, pml4
    mov $pd, %eax
    or $3, %eax
    mov $pdpt, %edi
    mov $4, %ecx
3:  mov %eax, (%edi)
    add $0x1000, %eax
    add $8, %edi
    loop 3b
    mov $pd, %edi
    xor %eax, %eax
    mov $2048, %ecx
4:  mov %eax, %edx
    or $0x83, %edx                  /* present, writable, 2 MiB */
    mov %edx, (%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 4b
    call enter_long_mode
    ljmp $0x18, $start64

    .globl enter_long_mode
enter_long_mode:                    /* shared with the AP trampoline */
    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx           /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax            /* PG */
    mov %eax, %cr0
    ret

    .code64
start64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $boot_stack_top, %rsp
    call guest_start
5:  cli
    hlt
    jmp 5b
#else
    call guest_start
5:  cli
    hlt
    jmp 5b
#endif

/* ---- interrupt stubs: 256 x 16 bytes ---- */
    .text
    .p2align 4
    .globl isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .p2align 4
    .if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    push $0
    .endif
    push $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
#ifdef __x86_64__
    push %rax; push %rcx; push %rdx; push %rbx; push %rbp; push %rsi; push %rdi
    push %r8; push %r9; push %r10; push %r11; push %r12; push %r13; push %r14; push %r15
    lea 120(%rsp), %rdi             /* -> vector, error, rip, cs, rflags */
    call irq_dispatch
    pop %r15; pop %r14; pop %r13; pop %r12; pop %r11; pop %r10; pop %r9; pop %r8
    pop %rdi; pop %rsi; pop %rbp; pop %rbx; pop %rdx; pop %rcx; pop %rax
    add $16, %rsp
    iretq
#else
    pusha
    lea 32(%esp), %eax
    push %eax
    call irq_dispatch
    add $4, %esp
    /* Return without a 32-bit iret, which the PVM-backed KVM here cannot emulate in guest
     * ring 0 ("KVM could not emulate an instruction" at the iret). Same privilege level,
     * so popf + lret restores the same state: rewrite [vector][error][eip][cs][eflags]
     * as [.][.][eflags][eip][cs], then popa, drop 8 bytes, popf, lret. */
    mov 48(%esp), %eax              /* eflags */
    mov 44(%esp), %ebx              /* cs */
    mov 40(%esp), %ecx              /* eip */
    mov %eax, 40(%esp)
    mov %ecx, 44(%esp)
    mov %ebx, 48(%esp)
    popa
    add $8, %esp
    popf
    lret
#endif

/* ---- GDT: 0x08 code32, 0x10 data, 0x18 code64 ---- */
    .data
    .p2align 3
    .globl gdt
gdt:
    .quad 0
    .quad 0x00CF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00AF9B000000FFFF
gdt_end:
    .globl gdt_desc
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    .bss
    .p2align 12
#ifdef __x86_64__
    .globl pml4
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4 * 4096
#endif
boot_stack: .skip 16384
    .globl boot_stack_top
boot_stack_top:
