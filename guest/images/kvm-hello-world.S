/*
 * The 12-byte real-mode guest from LWN's "Using the KVM API" (dpw/kvm-hello-world): prints
 * AL + BL as a digit and a newline on COM1, then halts. Run with --mode real and AL/BL set,
 * e.g. 2 + 2 prints "4". Assembled to a raw binary (objcopy -O binary -j .text).
 */
	.code16
	.text
	.globl	_start
_start:
	mov	$0x3f8, %dx
	add	%bl, %al
	add	$'0', %al
	out	%al, (%dx)
	mov	$'\n', %al
	out	%al, (%dx)
	hlt
