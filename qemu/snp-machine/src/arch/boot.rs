//! PVH entry of the machine: QEMU jumps to `pvh_start32` in 32-bit protected mode
//! with paging off and EBX = physical address of the `hvm_start_info`. This code
//! zeroes .bss, identity-maps the first 4 GiB with 2 MiB pages, enables SSE, XSAVE
//! (the machine swaps each VMPL's XCR0 and extended state), long mode and NX, loads
//! an IDT whose every exception stops the machine with a report, and calls
//! `machine_main64` with the start-info address.

core::arch::global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .p2align 2
    .long 4                 /* namesz */
    .long 4                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32

    .section .text.boot, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi

    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    movl $boot_pd, %edi
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 1b

    movl $boot_pdpt, %edi
    movl $boot_pd, %eax
    orl $0x3, %eax
    movl %eax, 0(%edi)
    addl $0x1000, %eax
    movl %eax, 8(%edi)
    addl $0x1000, %eax
    movl %eax, 16(%edi)
    addl $0x1000, %eax
    movl %eax, 24(%edi)

    movl $boot_pml4, %edi
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, (%edi)
    movl %edi, %cr3

    movl %cr4, %eax
    orl $0x40620, %eax          /* PAE | OSFXSR | OSXMMEXCPT | OSXSAVE */
    movl %eax, %cr4

    movl $0xC0000080, %ecx      /* EFER */
    rdmsr
    orl $0x900, %eax            /* LME | NXE */
    wrmsr

    movl %cr0, %eax
    andl $0xFFFFFFF3, %eax      /* clear EM, TS */
    orl $0x80010003, %eax       /* PG | WP | MP | PE */
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $2f

    .code64
2:  movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leaq boot_stack_top(%rip), %rsp
    xorl %ecx, %ecx
    movl $3, %eax
    xorl %edx, %edx
    xsetbv                      /* XCR0 = x87 | SSE */
    movl %esi, %edi
    call machine_main64
3:  cli
    hlt
    jmp 3b

    .section .rodata.boot, "a"
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF93000000FFFF    /* 0x10: data */
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    .p2align 12
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
boot_stack:
    .skip 256 * 1024
boot_stack_top:

    /* Exceptions in the machine itself: push the vector (and a zero error code
       where the CPU pushes none) and report. */
    .section .text.exceptions, "ax", @progbits
    .code64
    .altmacro
    .macro exc_stub n
    exc_stub_\n:
    .if (\n == 8) || (\n >= 10 && \n <= 14) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
    .else
        pushq $0
    .endif
        pushq $\n
        jmp exc_common
    .endm
    .set i, 0
    .rept 32
    exc_stub %i
    .set i, i + 1
    .endr
exc_common:
    movq (%rsp), %rdi           /* vector */
    movq 8(%rsp), %rsi          /* error code */
    movq 16(%rsp), %rdx         /* RIP */
    andq $-16, %rsp
    call machine_exception
4:  cli
    hlt
    jmp 4b

    .section .rodata.exc_stubs, "a"
    .p2align 3
    .global machine_exc_stubs
    .macro stub_addr n
        .quad exc_stub_\n
    .endm
machine_exc_stubs:
    .set i, 0
    .rept 32
    stub_addr %i
    .set i, i + 1
    .endr
    "#,
    options(att_syntax)
);
