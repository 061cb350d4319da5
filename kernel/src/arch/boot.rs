//! PVH entry: QEMU (or any PVH loader) jumps to `pvh_start32` in 32-bit protected
//! mode with paging off and EBX = physical address of the `hvm_start_info`. This
//! code zeroes .bss, identity-maps the first 4 GiB with 2 MiB pages (a bootstrap
//! mapping, replaced by the W^X tables of [`super::paging`] before anything but the
//! PVH start info is read), enables SSE (the precompiled `core` uses it), long mode,
//! NX and write protection, and calls `svsm_main64` on the boot stack with the
//! start-info address as its argument.
//!
//! The stacks live here too, in `.bss.stacks`: the boot stack and the four IST
//! stacks, each above a guard page that the final page tables leave unmapped, so a
//! stack that overflows faults instead of running into its neighbour.
//! `nitride_stack_guards` lists the guard pages and `nitride_ist_tops` the IST
//! stacks' tops.

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
    orl $0x620, %eax            /* PAE | OSFXSR | OSXMMEXCPT */
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
    movl %esi, %edi
    call svsm_main64
3:  cli
    hlt
    jmp 3b

    /* Read-only and measured (launch measurement): the descriptors come with their
       accessed bit already set, so the CPU never writes it when loading them. */
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

    /* Each stack sits right above its guard page (never mapped). */
    .section .bss.stacks, "aw", @nobits
    .p2align 12
boot_stack_guard:
    .skip 4096
boot_stack:
    .skip 128 * 1024
boot_stack_top:
    .irp n, 1, 2, 3, 4
ist\n\()_guard:
    .skip 4096
    .skip 32 * 1024
ist\n\()_top:
    .endr

    .section .rodata.stacks, "a"
    .p2align 3
    .global nitride_stack_guards
nitride_stack_guards:
    .quad boot_stack_guard, ist1_guard, ist2_guard, ist3_guard, ist4_guard
    .global nitride_ist_tops
nitride_ist_tops:
    .quad ist1_top, ist2_top, ist3_top, ist4_top
    "#,
    options(att_syntax)
);
