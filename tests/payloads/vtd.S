/*
 * A Multiboot v1 payload that drives minivmm's VT-d unit and edu device from 32-bit protected
 * mode (paging off, so MMIO is reached at its physical address):
 *   1. reads the DRHD's VER register,
 *   2. builds a root table, a context entry for 00:01.0 (domain 1, 3-level tables) and page
 *      tables mapping IOVA 0x10000 -> 0x200000 and IOVA 0x11000 -> 0x201000, sets the root
 *      table pointer and turns translation on,
 *   3. has edu copy 64 bytes RAM -> device (IOVA 0x10000) -> RAM (IOVA 0x11000) and compares,
 *   4. aims a device -> RAM copy at the unmapped IOVA 0x50000 and checks that the unit logged
 *      a primary fault with reason 5 (write denied) for requester 00:01.0,
 * printing a line per step, then leaves through isa-debug-exit with 0x31 (status 0x63).
 * Any failed check prints "vtd: FAIL <step>" and exits with 0x30 (status 0x61).
 */
        .set MB_MAGIC, 0x1badb002
        .set MB_FLAGS, 0x3
        .set COM1, 0x3f8
        .set DEBUG_EXIT, 0xf4
        .set DRHD, 0xfed90000
        .set ROOT, 0x300000
        .set CTX, 0x301000
        .set L3, 0x302000
        .set L2, 0x303000
        .set L1, 0x304000
        .set BUF, 0x200000
        .set EDU_BUFFER, 0x40000

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
        movl $msg_start, %esi
        call puts

        /* 1. VER = 0x10 */
        movl $msg_step_ver, %edi
        cmpl $0x10, DRHD + 0x00
        jne fail

        /* 2. Tables: root[bus 0] -> CTX; CTX[devfn 8] -> L3, AW 39-bit, DID 1. */
        movl $(CTX + 1), ROOT
        movl $(L3 + 1), CTX + 8*16
        movl $(1 | (1 << 8)), CTX + 8*16 + 8
        movl $(L2 + 3), L3
        movl $(L1 + 3), L2
        movl $(BUF + 3), L1 + 0x10*8
        movl $(BUF + 0x1000 + 3), L1 + 0x11*8
        movl $ROOT, DRHD + 0x20         /* RTADDR */
        movl $0, DRHD + 0x24
        movl $0x40000000, DRHD + 0x18   /* GCMD.SRTP */
        movl $msg_step_srtp, %edi
        testl $0x40000000, DRHD + 0x1c  /* GSTS.RTPS */
        jz fail
        movl $0x80000000, DRHD + 0x18   /* GCMD.TE */
        movl $msg_step_te, %edi
        testl $0x80000000, DRHD + 0x1c  /* GSTS.TES */
        jz fail
        movl $msg_tables, %esi
        call puts

        /* edu's BAR0, from configuration space (00:01.0, offset 0x10). */
        movl $0x80000810, %eax
        movw $0xcf8, %dx
        outl %eax, %dx
        movw $0xcfc, %dx
        inl %dx, %eax
        andl $0xfffffff0, %eax
        movl %eax, %ebx
        movl $msg_step_ident, %edi
        cmpl $0x010000ed, (%ebx)
        jne fail
        /* Bus mastering on (firmware leaves it off): command register of 00:01.0. */
        movl $0x80000804, %eax
        movw $0xcf8, %dx
        outl %eax, %dx
        movw $0xcfc, %dx
        movw $0x0006, %ax
        outw %ax, %dx

        /* 3. A pattern at BUF, then RAM -> device -> RAM. */
        movl $BUF, %edi
        movl $64, %ecx
        movb $0x5a, %al
1:      movb %al, (%edi)
        incl %edi
        incb %al
        loop 1b
        movl $0x10000, %eax
        movl $EDU_BUFFER, %ecx
        movl $0, %edx                   /* command: start, RAM -> device */
        call edu_dma
        movl $EDU_BUFFER, %eax
        movl $0x11000, %ecx
        movl $2, %edx                   /* start, device -> RAM */
        call edu_dma
        movl $BUF, %esi
        movl $(BUF + 0x1000), %edi
        movl $64, %ecx
        repe cmpsb
        movl $msg_step_dma, %edi
        jne fail
        movl $msg_dma, %esi
        call puts

        /* 4. Device -> RAM at an unmapped IOVA: a fault, reason 5, requester 00:01.0. */
        movl $EDU_BUFFER, %eax
        movl $0x50000, %ecx
        movl $2, %edx
        call edu_dma
        movl $msg_step_fault, %edi
        testl $0x2, DRHD + 0x34         /* FSTS.PPF */
        jz fail
        movl DRHD + 0x20c, %eax         /* FRCD[0] bits 127:96: F, T, FR */
        cmpb $5, %al
        jne fail
        testl $0x80000000, %eax
        jz fail
        movl DRHD + 0x208, %eax         /* FRCD[0] bits 95:64; 79:64 source id */
        andl $0xffff, %eax
        cmpl $0x0008, %eax
        jne fail
        movl $msg_fault, %esi
        call puts

        movl $0x31, %eax
        jmp exit

fail:
        movl $msg_fail, %esi
        call puts
        movl %edi, %esi
        call puts
        movl $0x30, %eax
exit:
        movw $DEBUG_EXIT, %dx
        outl %eax, %dx
2:      hlt
        jmp 2b

/* edu_dma: src %eax, dst %ecx, direction bits %edx; 64 bytes. edu base in %ebx. */
edu_dma:
        movl %eax, 0x80(%ebx)
        movl $0, 0x84(%ebx)
        movl %ecx, 0x88(%ebx)
        movl $0, 0x8c(%ebx)
        movl $64, 0x90(%ebx)
        movl $0, 0x94(%ebx)
        orl $1, %edx
        movl %edx, 0x98(%ebx)
        ret

/* puts: writes the NUL-terminated string at %esi to COM1 */
puts:
        movw $COM1, %dx
3:      lodsb
        testb %al, %al
        jz 4f
        outb %al, %dx
        jmp 3b
4:      ret

        .section .data
msg_start:      .asciz "vtd: start\n"
msg_tables:     .asciz "vtd: translation enabled\n"
msg_dma:        .asciz "vtd: DMA through the IOMMU ok\n"
msg_fault:      .asciz "vtd: unmapped DMA blocked, fault reason 5 recorded\n"
msg_fail:       .asciz "vtd: FAIL "
msg_step_ver:   .asciz "VER\n"
msg_step_srtp:  .asciz "SRTP\n"
msg_step_te:    .asciz "TE\n"
msg_step_ident: .asciz "edu ident\n"
msg_step_dma:   .asciz "DMA compare\n"
msg_step_fault: .asciz "fault record\n"

        .section .bss
        .align 16
        .space 4096
stack_top:
