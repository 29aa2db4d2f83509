/* A 64 KiB firmware image for `minivmm --bios`: it starts at the reset vector in real mode
 * (CS base 0xffff0000, IP 0xfff0) and checks, with port I/O only, the platform OVMF's SEC and
 * PEI need: the Q35 host bridge ID, PMBASE/ACPI_EN on the ICH9 LPC bridge and a moving PM
 * timer at PMBASE + 8, the CMOS and i8042 status, fw_cfg's signature through the port and
 * the DMA interface, and that a write to the image is dropped. It prints each step on
 * isa-debugcon (port 0x402) and powers off through PM1_CNT (SLP_EN, SLP_TYP 0); a failed
 * check writes 1 to isa-debug-exit (status 3). It first resets the machine once through
 * 0xCF9 (RAM keeps a mark, so the second boot goes on). Built with -DTRIPLE_FAULT it instead writes
 * 0x42 to port 0x80 after the first check and triple-faults (protected mode, an empty IDT,
 * then int3).
 * Built with: cc -c; ld -Ttext=0; objcopy -O binary. */
        .code16
        .text
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0x7000, %sp

#ifndef TRIPLE_FAULT
        /* 0. Reset once: the first boot leaves a mark in RAM (kept across a reset) and
         * writes 0x06 to RST_CNT (0xCF9), then 0xFE to the i8042, as OVMF's ResetCold; the
         * second goes on. */
        cmpl    $0x5445534d, 0x3000
        je      0f
        movl    $0x5445534d, 0x3000
        mov     $msg_reset, %si
        call    print
        mov     $0xcf9, %dx
        mov     $0x06, %al
        out     %al, %dx
        mov     $0xfe, %al              /* and the keyboard controller's reset, as OVMF */
        out     %al, $0x64
8:      hlt
        jmp     8b
0:      mov     $msg_again, %si
        call    print
#endif

        /* 1. 00:00.0 device ID (CONFIG_ADDRESS 0x80000000, word at 0xcfe). */
        mov     $0xcf8, %dx
        mov     $0x80000000, %eax
        out     %eax, %dx
        mov     $0xcfe, %dx
        in      %dx, %ax
        cmp     $0x29c0, %ax
        jne     fail
        mov     $msg_q35, %si
        call    print
#ifdef TRIPLE_FAULT
        mov     $0x42, %al
        out     %al, $0x80
        /* Protected mode (a flat 32-bit code segment), then an empty IDT and int3. */
        lgdtl   %cs:gdt_desc
        mov     %cr0, %eax
        or      $1, %eax
        mov     %eax, %cr0
        .byte   0x66, 0xea              /* ljmpl $0x08, $(0xffff0000 + pm32) */
        .long   0xffff0000 + pm32
        .word   0x08
        .code32
pm32:   lidt    0xffff0000 + empty_idt
        int3
        .code16
#endif

        /* 2. PMBASE = 0x600 (00:1f.0 0x40), ACPI_EN (0x44 bit 7), as OVMF's SEC. */
        mov     $0xcf8, %dx
        mov     $0x8000f840, %eax
        out     %eax, %dx
        mov     $0xcfc, %dx
        mov     $0x601, %eax
        out     %eax, %dx
        mov     $0xcf8, %dx
        mov     $0x8000f844, %eax
        out     %eax, %dx
        mov     $0xcfc, %dx
        mov     $0x80, %al
        out     %al, %dx

        /* 3. The PM timer at 0x608 moves. */
        mov     $0x608, %dx
        in      %dx, %eax
        mov     %eax, %ebx
        mov     $0x1000000, %ecx
1:      in      %dx, %eax
        cmp     %eax, %ebx
        jne     2f
        dec     %ecx
        jnz     1b
        jmp     fail
2:      mov     $msg_pmtimer, %si
        call    print

        /* 4. CMOS register D: VRT; i8042 status: no controller. */
        mov     $0x0d, %al
        out     %al, $0x70
        in      $0x71, %al
        cmp     $0x80, %al
        jne     fail
        in      $0x64, %al
        cmp     $0xff, %al
        jne     fail
        mov     $msg_cmos, %si
        call    print

        /* 5. fw_cfg signature through the data port. */
        mov     $0x510, %dx
        xor     %ax, %ax
        out     %ax, %dx
        mov     $0x511, %dx
        mov     $sig, %si
        mov     $4, %cx
3:      in      %dx, %al
        cmp     %cs:(%si), %al
        jne     fail
        inc     %si
        dec     %cx
        jnz     3b

        /* 6. fw_cfg DMA: select 0 + read 4 bytes to 0x2000; FWCfgDmaAccess at 0x1000. */
        movl    $0x0a000000, 0x1000     /* control BE: SELECT | READ, key 0 */
        movl    $0x04000000, 0x1004     /* length BE: 4 */
        movl    $0, 0x1008              /* address BE: 0x2000 */
        movl    $0x00200000, 0x100c
        movl    $0, 0x2000
        mov     $0x514, %dx
        xor     %eax, %eax
        out     %eax, %dx               /* high half */
        mov     $0x518, %dx
        mov     $0x00100000, %eax       /* low half 0x1000, big-endian */
        out     %eax, %dx
        cmpl    $0, 0x1000
        jne     fail
        cmpl    $0x554d4551, 0x2000     /* "QEMU" */
        jne     fail
        mov     $msg_fwcfg, %si
        call    print

        /* 7. The image is read-only: the write is dropped. */
        movb    $0x5a, %cs:rom_byte
        cmpb    $0xa5, %cs:rom_byte
        jne     fail
        mov     $msg_rom, %si
        call    print

        /* 8. Power off: PM1_CNT = SLP_EN | SLP_TYP 0. */
        mov     $msg_done, %si
        call    print
        mov     $0x604, %dx
        mov     $0x2000, %ax
        out     %ax, %dx
4:      hlt
        jmp     4b

fail:
        mov     $msg_fail, %si
        call    print
        mov     $1, %al
        out     %al, $0xf4
5:      hlt
        jmp     5b

/* Prints the NUL-terminated string at CS:SI on isa-debugcon. */
print:
        mov     $0x402, %dx
6:      mov     %cs:(%si), %al
        test    %al, %al
        jz      7f
        out     %al, %dx
        inc     %si
        jmp     6b
7:      ret

empty_idt:      .word 0
                .long 0
                .align 8
gdt:            .quad 0
                .quad 0x00cf9a000000ffff   /* 0x08: 32-bit code, base 0, 4 GiB */
gdt_desc:       .word gdt_desc - gdt - 1
                .long 0xffff0000 + gdt
sig:            .ascii "QEMU"
rom_byte:       .byte 0xa5
msg_reset:      .asciz "bios: first boot, resetting\n"
msg_again:      .asciz "bios: booted again after the reset\n"
msg_q35:        .asciz "bios: host bridge 8086:29c0\n"
msg_pmtimer:    .asciz "bios: PM timer at PMBASE+8 counts\n"
msg_cmos:       .asciz "bios: CMOS valid, no i8042\n"
msg_fwcfg:      .asciz "bios: fw_cfg QEMU by port and DMA\n"
msg_rom:        .asciz "bios: image write dropped\n"
msg_done:       .asciz "bios: powering off\n"
msg_fail:       .asciz "bios: FAIL\n"

        /* The reset vector: the last 16 bytes of the image. */
        .org    0xfff0
        jmp     _start
        .org    0x10000
