/*
 * kvmtalk guest SDK: interrupts from the host, and sleeping until one arrives.
 * Included by <kvmtalk.h>; include that, not this file.
 *
 * Needs a VM created with interrupts on (`Vm.create({ interrupts: true })`): the VMM then has
 * masked the 8259 PICs, software-enabled every LAPIC and started the guest with RFLAGS.IF = 1,
 * so no CPL0 code is involved (docs/guest-abi.md, "Interrupts").
 *
 * Handlers run at the guest's own privilege (CPL3 by default) on the interrupted stack: the
 * gate kt_irq_set_handler writes targets the guest's code segment for its current privilege
 * level (0x1b at CPL3) with IST 0, so there is no stack switch. That is why all guest code must be built with -mno-red-zone (kvmtalk's
 * toolchain does): the CPU pushes the interrupt frame right below RSP.
 */
#ifndef KVMTALK_IRQ_H
#define KVMTALK_IRQ_H

#include <kvmtalk.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Vectors free for the guest's handlers (0-0x1f are exceptions, 0xf0-0xff reserved). */
#define KT_IRQ_FIRST_VECTOR 0x20
#define KT_IRQ_LAST_VECTOR  0xef

/* Every vCPU's local APIC, identity-mapped and writable from CPL3. */
#define KT_LAPIC_BASE 0xfee00000UL
#define KT_LAPIC_EOI  (KT_LAPIC_BASE + 0xb0)

/**
 * A handler: called with the vector on the interrupted stack. It runs with RFLAGS.IF still set
 * (a trap gate: at CPL3 an interrupt gate's IF = 0 could never be undone, see irq.c), but the
 * LAPIC holds back this vector and every vector of the same or lower priority class
 * (vector >> 4) until the entry stub's EOI, so only higher classes can nest.
 */
typedef void (*kt_irq_handler)(unsigned vector);

/**
 * Installs fn for vector (KT_IRQ_FIRST_VECTOR..KT_IRQ_LAST_VECTOR) by writing the IDT gate
 * itself; fn == NULL puts back the VMM's default gate (which reports "unexpected interrupt").
 * The IDT is shared, so the handler serves every vCPU. The entry stub saves the caller-saved
 * registers and the SSE state, calls fn, writes the LAPIC EOI and returns with iretq: fn must
 * not call kt_irq_eoi() itself. Returns 0 or -KT_EINVAL for a vector outside the range.
 */
int kt_irq_set_handler(unsigned vector, kt_irq_handler fn);

/**
 * Signals end of interrupt to this vCPU's LAPIC. Only for code that installs raw IDT gates of
 * its own; handlers installed with kt_irq_set_handler get the EOI from the entry stub.
 */
static inline void kt_irq_eoi(void)
{
	*(volatile uint32_t *)KT_LAPIC_EOI = 0;
}

/**
 * Futex-style wait (KT_HC_WAIT): if *word still equals expected, this vCPU sleeps in the
 * host kernel until an interrupt arrives, the handler runs, and kt_wait returns 0; if *word
 * differs it returns 1 at once. No wakeup is lost: the host checks the word and arms the sleep
 * while no interrupt can be taken, and an interrupt already pending ends the sleep at once.
 * Any interrupt ends the wait, so callers loop (see kt_wait_until_changed). Returns
 * -KT_EOPNOTSUPP when the VM has no interrupts, -KT_EFAULT / -KT_EINVAL for a bad or
 * misaligned word.
 */
static inline long kt_wait(volatile uint32_t *word, uint32_t expected)
{
	return kt_hypercall2(KT_HC_WAIT, (unsigned long)word, expected);
}

/**
 * Sleeps (kt_wait) until *word differs from old, typically because an interrupt handler
 * changed it. Returns the new value, or a negative KT_E* error from kt_wait.
 */
long kt_wait_until_changed(volatile uint32_t *word, uint32_t old);

#ifdef __cplusplus
}
#endif

#endif /* KVMTALK_IRQ_H */
