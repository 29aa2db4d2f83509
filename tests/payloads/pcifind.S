/*
 * A Multiboot v1 payload that looks for the edu device (1234:11e8) on bus 0 the way test
 * kernels written for QEMU do: CONFIG_ADDRESS bits 1:0 select the byte of the configuration
 * dword, and the data is read at 0xCFC itself (QEMU ORs those bits with the data port
 * offset). For each device it reads the vendor ID (address +0, 16-bit), and for 1234 the
 * device ID (address +2, 16-bit read of 0xCFC) and the vendor ID's high byte (address +1,
 * 8-bit read of 0xCFC). It prints what it found and leaves through isa-debug-exit with 0x41
 * (status 0x83) if edu is there, 0x40 (status 0x81) if not.
 */
        .set MB_MAGIC, 0x1badb002
        .set MB_FLAGS, 0x3
        .set COM1, 0x3f8
        .set DEBUG_EXIT, 0xf4
        .set CONFIG_ADDRESS, 0xcf8
        .set CONFIG_DATA, 0xcfc
        .set ENABLE, 0x80000000

        .section .text
        .code32
        .globl _start
        .align 4
mb_header:
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

_start:
        movl $stack_top, %esp
        xorl %ebx, %ebx                 /* device number */
next_device:
        cmpl $32, %ebx
        je not_found
        movl %ebx, %eax
        shll $11, %eax
        orl $ENABLE, %eax
        movl %eax, %edi                 /* CONFIG_ADDRESS of register 0 */
        movw $CONFIG_ADDRESS, %dx
        outl %eax, %dx
        movw $CONFIG_DATA, %dx
        inw %dx, %ax
        cmpw $0x1234, %ax
        jne skip
        /* Device ID: byte 2 selected in CONFIG_ADDRESS, 16-bit read at 0xCFC. */
        movl %edi, %eax
        orl $2, %eax
        movw $CONFIG_ADDRESS, %dx
        outl %eax, %dx
        movw $CONFIG_DATA, %dx
        inw %dx, %ax
        cmpw $0x11e8, %ax
        jne skip
        /* Vendor ID high byte: byte 1 selected, 8-bit read at 0xCFC. */
        movl %edi, %eax
        orl $1, %eax
        movw $CONFIG_ADDRESS, %dx
        outl %eax, %dx
        movw $CONFIG_DATA, %dx
        inb %dx, %al
        cmpb $0x12, %al
        jne skip
        movl $msg_found, %esi
        call puts
        movl $0x41, %eax
        jmp exit
skip:
        incl %ebx
        jmp next_device

not_found:
        movl $msg_not_found, %esi
        call puts
        movl $0x40, %eax
exit:
        movw $DEBUG_EXIT, %dx
        outl %eax, %dx
1:      hlt
        jmp 1b

/* puts: writes the NUL-terminated string at %esi to COM1 */
puts:
        movw $COM1, %dx
2:      lodsb
        testb %al, %al
        jz 3f
        outb %al, %dx
        jmp 2b
3:      ret

        .section .data
msg_found:      .asciz "pcifind: edu 1234:11e8 found with byte-selecting config cycles\n"
msg_not_found:  .asciz "pcifind: no edu\n"

        .section .bss
        .align 16
        .space 4096
stack_top:
