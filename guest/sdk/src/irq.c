/*
 * Interrupt handlers installed from CPL3: the IDT at GPA 0x2000 is identity-mapped and writable
 * by guest code (docs/guest-abi.md), so kt_irq_set_handler writes the gate itself instead of
 * asking the VMM.
 */
#include <kvmtalk.h>

#define KT_IDT 0x2000UL
#define KT_IRQ_STUB_SIZE 16
/*
 * Present, DPL 0, 64-bit *trap* gate: delivery leaves RFLAGS.IF set. An interrupt gate would
 * clear IF, and at CPL3 nothing can set it again: iretq only restores IF when CPL <= IOPL, and
 * IOPL cannot be raised on PVM hosts (measured: after one interrupt through an interrupt gate,
 * KVM's RFLAGS stayed 0x46 and no further interrupt was delivered). The LAPIC still holds back
 * this vector and every lower-priority one until the stub's EOI, so only a higher-priority
 * vector (a higher vector >> 4) can interrupt a running handler.
 */
#define KT_GATE_TRAP 0x8fULL
/* The VMM's GDT code selectors (docs/guest-abi.md). */
#define KT_SEL_CODE0 0x08
#define KT_SEL_CODE3 0x1b

/* irq-entry.S: one entry stub per vector from KT_IRQ_FIRST_VECTOR. */
extern const char kt__irq_stubs[];

static kt_irq_handler handlers[256];

/* The VMM's gates, saved the first time a vector is taken over, so NULL can restore them. */
static uint64_t saved_gates[256][2];
static bool saved[256];

/* Called by the entry stub with the vector. */
void kt__irq_dispatch(unsigned vector);
void kt__irq_dispatch(unsigned vector)
{
	kt_irq_handler fn = handlers[vector & 0xff];

	/* Unset while the gate is being switched back: nothing to do but acknowledge it. */
	if (fn)
		fn(vector);
}

/* Whether a gate points into kt__irq_stubs. */
static bool is_ours(uint64_t lo, uint64_t hi)
{
	uint64_t target = (lo & 0xffff) | ((lo >> 48) << 16) | (hi << 32);
	uint64_t stubs = (uint64_t)kt__irq_stubs;

	return target >= stubs &&
	       target < stubs + KT_IRQ_STUB_SIZE * (KT_IRQ_LAST_VECTOR - KT_IRQ_FIRST_VECTOR + 1);
}

int kt_irq_set_handler(unsigned vector, kt_irq_handler fn)
{
	volatile uint64_t *gate = (volatile uint64_t *)(KT_IDT + 16 * (unsigned long)vector);
	uint64_t stub, lo, hi;
	uint16_t cs;

	if (vector < KT_IRQ_FIRST_VECTOR || vector > KT_IRQ_LAST_VECTOR)
		return -KT_EINVAL;
	/* Save the VMM's gate, not one of ours (another vCPU may have installed it already). */
	if (!saved[vector] && !is_ours(gate[0], gate[1])) {
		saved_gates[vector][0] = gate[0];
		saved_gates[vector][1] = gate[1];
		saved[vector] = true;
	}
	if (!fn && !saved[vector])
		return 0; /* never taken over: the VMM's gate is still there */
	if (!fn) {
		lo = saved_gates[vector][0];
		hi = saved_gates[vector][1];
	} else {
		/* The target is the code segment we run in, so the handler runs at our privilege
		   level without a stack switch (IST 0): the only way to get CPL3 handlers. Only
		   the CPL is taken from CS: on PVM hosts `mov %cs` shows the host's user selector
		   (0x33), not the guest GDT's, so the selector itself comes from the ABI. */
		__asm__("mov %%cs, %0" : "=r"(cs));
		cs = (cs & 3) == 3 ? KT_SEL_CODE3 : KT_SEL_CODE0;
		stub = (uint64_t)(kt__irq_stubs + KT_IRQ_STUB_SIZE * (vector - KT_IRQ_FIRST_VECTOR));
		lo = (stub & 0xffff) | ((uint64_t)cs << 16) | (KT_GATE_TRAP << 40) |
		     (((stub >> 16) & 0xffff) << 48);
		hi = stub >> 32;
	}
	/* Set the handler before the gate can reach it; clear it only after the gate is gone. */
	if (fn)
		__atomic_store_n(&handlers[vector], fn, __ATOMIC_RELEASE);
	/* The upper half holds offset bits 63:32 (0 for the image and the VMM's stubs alike), so
	   the 8-byte store of the lower half switches the gate in one step. */
	gate[1] = hi;
	__atomic_store_n(&gate[0], lo, __ATOMIC_RELEASE);
	if (!fn)
		__atomic_store_n(&handlers[vector], NULL, __ATOMIC_RELEASE);
	return 0;
}

long kt_wait_until_changed(volatile uint32_t *word, uint32_t old)
{
	uint32_t now;

	while ((now = *word) == old) {
		long r = kt_wait(word, old);

		if (r < 0)
			return r;
	}
	return now;
}
