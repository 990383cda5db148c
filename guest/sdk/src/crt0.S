/*
 * kvmtalk guest entry point.
 *
 * The VMM starts every vCPU here in 64-bit mode (CPL3 by default, CPL0 with --cpl 0) with
 * RSP = 16-byte aligned stack top, RDI = cpu index, RSI = vCPU count, interrupts off.
 * Memory is already zeroed by the VMM; .bss is deliberately not cleared here because other
 * vCPUs may already be running main() and using it.
 */
	.section .text.entry, "ax", @progbits
	.globl _start
	.type _start, @function
_start:
	.cfi_startproc
	/* Debuggers stop unwinding here. */
	.cfi_undefined rip
	xorl	%ebp, %ebp
	/* The SysV ABI promises DF = 0 at every call; the SDK's string instructions rely on it. */
	cld
	/* The VMM aligns RSP already; re-aligning costs one instruction and protects main()'s
	   SSE spills should a loader ever get it wrong. RSP 16-aligned before the call is
	   exactly what the ABI wants (the call pushes the return address). */
	andq	$-16, %rsp
	/* Callee-saved, so it survives main(). RDI/RSI stay untouched: main may declare
	   (unsigned cpu, unsigned ncpus) parameters if it likes. */
	movq	%rdi, %r12
	call	main
	movl	%eax, %edi
	testq	%r12, %r12
	jnz	1f
	call	kt_exit
1:	call	kt_park
	ud2
	.cfi_endproc
	.size _start, . - _start

	.section .note.GNU-stack, "", @progbits
