/*
 * A tiny Multiboot v1 payload for minivmm's integration test (a few hundred instructions):
 * enters long mode with its own GDT and page tables, writes a line to COM1, routes the UART's
 * interrupt (ISA IRQ 4) through the IOAPIC to vector 0x40, takes it, writes a second line,
 * and ends the VM through the isa-debug-exit port with value 0x21 (exit status 0x43).
 *
 * Built with `cc -c` (so the preprocessor runs) and linked at 1 MiB. As Multiboot: converted
 * to ELF32 (objcopy). With -DPVH: an ELF64 with a XEN_ELFNOTE_PHYS32_ENTRY note and no Multiboot
 * header, entered through PVH with EBX = hvm_start_info.
 */
        .set MB_MAGIC, 0x1badb002
        .set PVH_START_MAGIC, 0x336ec578
        .set FW_CFG, 0x510
        .set MB_FLAGS, 0x3
        .set COM1, 0x3f8
        .set DEBUG_EXIT, 0xf4
        .set IOAPIC, 0xfec00000
        .set LAPIC, 0xfee00000
        .set VECTOR, 0x40

        .section .text
        .code32
        .globl _start
        .align 4
#ifndef PVH
mb_header:
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)
#else
        .pushsection .note.pvh, "a"
        .align 4
        .long 4                         /* name size: "Xen\0" */
        .long 4                         /* descriptor size */
        .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .long _start
        .popsection
#endif

_start:
#ifdef PVH
        cmpl $PVH_START_MAGIC, (%ebx)   /* PVH: EBX points at hvm_start_info */
#else
        cmpl $0x2badb002, %eax          /* Multiboot handshake */
#endif
        jne fail32
        movl $stack_top, %esp

        /* PML4[0] -> PDPT; PDPT[0] -> PD0 (0-1 GiB), PDPT[3] -> PD3 (3-4 GiB) */
        movl $pdpt, %eax
        orl $3, %eax
        movl %eax, pml4
        movl $pd0, %eax
        orl $3, %eax
        movl %eax, pdpt
        movl $pd3, %eax
        orl $3, %eax
        movl %eax, pdpt + 3*8
        movl $0x83, pd0                 /* 0-2 MiB, present|writable|2M */
        movl $0xfec00083, pd3 + 0x1f6*8 /* IOAPIC 2 MiB page (uncached by PCD below) */
        orl $0x10, pd3 + 0x1f6*8
        movl $0xfee00093, pd3 + 0x1f7*8 /* LAPIC, PCD */

        movl %cr4, %eax
        orl $0x20, %eax                 /* PAE */
        movl %eax, %cr4
        movl $pml4, %eax
        movl %eax, %cr3
        movl $0xc0000080, %ecx          /* EFER.LME */
        rdmsr
        orl $0x100, %eax
        wrmsr
        movl %cr0, %eax
        orl $0x80000001, %eax           /* PG | PE */
        movl %eax, %cr0
        lgdt gdt_ptr
        ljmp $0x08, $long_mode

fail32:
        movw $DEBUG_EXIT, %dx
        movl $0x7f, %eax
        outl %eax, %dx
        hlt

        .code64
long_mode:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %ss
        leaq msg_hello(%rip), %rsi
        call puts

        /* fw_cfg: select the signature item and copy its 4 bytes to COM1 */
        leaq msg_fwcfg(%rip), %rsi
        call puts
        movw $FW_CFG, %dx
        xorw %ax, %ax
        outw %ax, %dx
        movl $4, %ecx
5:      movw $FW_CFG + 1, %dx
        inb %dx, %al
        movw $COM1, %dx
        outb %al, %dx
        loop 5b
        movb $'\n', %al
        outb %al, %dx

        /* IDT entry for VECTOR: 64-bit interrupt gate to irq_handler */
        leaq irq_handler(%rip), %rax
        leaq idt + VECTOR*16(%rip), %rdi
        movw %ax, (%rdi)
        movw $0x08, 2(%rdi)
        movw $0x8e00, 4(%rdi)
        shrq $16, %rax
        movw %ax, 6(%rdi)
        shrq $16, %rax
        movl %eax, 8(%rdi)
        lidt idt_ptr(%rip)

        /* Software-enable the local APIC (SVR bit 8, spurious vector 0xff) */
        movl $LAPIC, %edi
        movl $0x1ff, 0xf0(%rdi)

        /* IOAPIC pin 4 -> VECTOR, edge, physical destination APIC 0 */
        movl $IOAPIC, %edi
        movl $0x19, (%rdi)              /* IOREGSEL: RTE 4 high */
        movl $0, 0x10(%rdi)
        movl $0x18, (%rdi)              /* RTE 4 low */
        movl $VECTOR, 0x10(%rdi)

        /* UART: enable the THR-empty interrupt, then send a byte to cause one */
        movw $COM1 + 1, %dx
        movb $0x02, %al
        outb %al, %dx
        movw $COM1, %dx
        movb $'!', %al
        outb %al, %dx
        sti
1:      hlt
        jmp 1b

irq_handler:
        leaq msg_irq(%rip), %rsi
        call puts
        movl $LAPIC, %edi
        movl $0, 0xb0(%rdi)             /* EOI */
        movw $DEBUG_EXIT, %dx
        movl $0x21, %eax
        outl %eax, %dx
2:      hlt
        jmp 2b

/* puts: writes the NUL-terminated string at %rsi to COM1 */
puts:
        movw $COM1, %dx
3:      lodsb
        testb %al, %al
        jz 4f
        outb %al, %dx
        jmp 3b
4:      ret

        .section .data
        .align 8
gdt:
        .quad 0
        .quad 0x00af9b000000ffff        /* 64-bit code */
        .quad 0x00cf93000000ffff        /* data */
gdt_ptr:
        .word gdt_ptr - gdt - 1
        .long gdt
idt_ptr:
        .word 256*16 - 1
        .quad idt
msg_hello:
        .asciz "minivmm-payload: hello from long mode\n"
msg_fwcfg:
        .asciz "minivmm-payload: fw_cfg signature "
msg_irq:
        .asciz "\nminivmm-payload: IOAPIC interrupt on vector 0x40\n"

        .section .bss
        .align 4096
pml4:   .space 4096
pdpt:   .space 4096
pd0:    .space 4096
pd3:    .space 4096
idt:    .space 256*16
        .space 4096
stack_top:
