/*
 * A Multiboot v1 payload that triple-faults at once: it loads an IDT with limit 0 and executes
 * int3, so the breakpoint, the #GP it raises and the #DF that follows all miss the IDT and the
 * CPU shuts down. The lab's reliability check (scripts/lab-reliability.sh) boots it under both
 * VMMs first, to check that each one's triple fault is recognised in the log.
 */
        .set MB_MAGIC, 0x1badb002
        .set MB_FLAGS, 0x3
        .section .text
        .code32
        .globl _start
        .align 4
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)
_start:
        cli
        lidt    empty_idt
        int3
1:      hlt
        jmp 1b
        .align 8
empty_idt:
        .word 0
        .long 0
