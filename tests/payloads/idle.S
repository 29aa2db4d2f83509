/*
 * A Multiboot v1 payload that never enables its local APIC: it halts with interrupts off,
 * forever. The nested lab runs one in L0 for the whole suite, so that KVM's apic_sw_disabled
 * static key in L0 never drops back to zero while L1s come and go: each such drop or rise
 * patches L0's kernel text, and multi-threaded TCG occasionally lets another CPU run the
 * half-patched code (an "Oops: int3" that kills L0).
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
1:      hlt
        jmp 1b
