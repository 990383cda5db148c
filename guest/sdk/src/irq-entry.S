/*
 * Interrupt entry stubs for kt_irq_set_handler (irq.c): one 16-byte stub per vector
 * KT_IRQ_FIRST_VECTOR..KT_IRQ_LAST_VECTOR, all funnelling into kt__irq_common.
 *
 * The gate targets the interrupted code's own segment with IST 0, so at CPL3 the CPU switches
 * neither privilege nor stack: it aligns RSP down to 16 and pushes SS, RSP, RFLAGS, CS, RIP
 * right below the interrupted code's stack pointer (hence -mno-red-zone everywhere). A
 * same-privilege iretq returns, which works at CPL3.
 */
	.set KT_IRQ_FIRST_VECTOR, 0x20
	.set KT_IRQ_LAST_VECTOR, 0xef
	.set KT_LAPIC_EOI, 0xfee000b0
	.set KT_IRQ_STUB_SIZE, 16

	.text
	.balign KT_IRQ_STUB_SIZE
	.globl kt__irq_stubs
	.type kt__irq_stubs, @function
kt__irq_stubs:
	.set vector, KT_IRQ_FIRST_VECTOR
	.rept KT_IRQ_LAST_VECTOR - KT_IRQ_FIRST_VECTOR + 1
	.balign KT_IRQ_STUB_SIZE
	/* No error code for external interrupts: the vector takes that slot in the frame. */
	pushq	$vector
	jmp	kt__irq_common
	.set vector, vector + 1
	.endr
	.size kt__irq_stubs, . - kt__irq_stubs

/*
 * Stack on entry: vector, RIP, CS, RFLAGS, RSP, SS (8 bytes each, 16-aligned above the vector).
 * Saves what the SysV ABI lets the C handler clobber: the nine caller-saved general registers
 * and, with fxsave64, x87/SSE state (user code built without -mgeneral-regs-only may hold live
 * XMM values at any instruction).
 */
	.type kt__irq_common, @function
kt__irq_common:
	/* DF may be set (memmove copies backwards with std); the ABI wants it clear at calls. */
	cld
	pushq	%rax
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%rbp
	movq	%rsp, %rbp
	/* fxsave64 needs 512 bytes, 16-aligned; this also 16-aligns RSP for the call. */
	subq	$512, %rsp
	andq	$-16, %rsp
	fxsave64 (%rsp)
	/* The vector sits above the ten registers just pushed. */
	movl	80(%rbp), %edi
	call	kt__irq_dispatch
	fxrstor64 (%rsp)
	/* EOI after the handler: until then the LAPIC holds back this and lower-priority vectors. */
	movl	$KT_LAPIC_EOI, %eax
	movl	$0, (%rax)
	movq	%rbp, %rsp
	popq	%rbp
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rax
	addq	$8, %rsp
	iretq
	.size kt__irq_common, . - kt__irq_common

	.section .note.GNU-stack, "", @progbits
