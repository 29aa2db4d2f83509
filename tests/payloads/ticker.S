/*
 * A Multiboot v1 payload for the control-socket tests: it writes '.' to COM1 at a steady
 * pace (so a paused VM is one whose console stops growing) and polls the power button's
 * GED register (port 0x608, read to clear): when bit 0 is set it does what an ACPI OS does
 * for the power button, an S5 sleep through SLEEP_CONTROL_REG (port 0x600: SLP_TYP 5,
 * SLP_EN), after writing "P" and a newline.
 */
        .set MB_MAGIC, 0x1badb002
        .set MB_FLAGS, 0x3
        .set COM1, 0x3f8
        .set GED, 0x608
        .set SLEEP_CONTROL, 0x600
        .set S5_SLP_EN, (5 << 2) | (1 << 5)
        .set DELAY, 5000
        .section .text
        .code32
        .globl _start
        .align 4
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)
_start:
        cli
tick:
        mov $'.', %al
        mov $COM1, %dx
        outb %al, %dx
        mov $GED, %dx
        inb %dx, %al
        test $1, %al
        jnz power_button
        mov $DELAY, %ecx
1:      dec %ecx
        jnz 1b
        jmp tick
power_button:
        mov $COM1, %dx
        mov $'P', %al
        outb %al, %dx
        mov $'\n', %al
        outb %al, %dx
        mov $SLEEP_CONTROL, %dx
        mov $S5_SLP_EN, %al
        outb %al, %dx
2:      hlt
        jmp 2b
