/*
 * The upcall device's guest driver against the real VMM (test/integration/upcall.test.ts).
 * Hypercall 256 (no arguments) tells the guest what to do:
 *   bits 0-7   mode: 1 serve commands, 2 take a command and never ACK it, 3 AFFINITY requests,
 *              4 random register accesses, then serve commands
 *   bits 8-23  count: commands to serve (modes 1, 4), requests (3), thousands of accesses (4)
 * Load handler: hypercall 257(hook, len, FNV-1a of the image) returns what to answer: the low 32
 * bits are the status, bits 32-63 the STATUS_PC plus one (0: none). Unload handler: hypercall
 * 258(hook) returns the status. Mode 3: hypercall 259(i) gives request i's AFFINITY word
 * (vcpu << 16 | cpu), hypercall 260(i, AFFINITY_STATUS) reports its result. Mode 2 reports
 * kt_send_value(0xCA) once the cancellation arrived. Before serving, kt_send_value(1) = ready.
 */
#include <kvmtalk/upcall.h>

#define VECTOR 0x41
#define HC_CONFIG (KT_HC_USER_BASE + 0)
#define HC_LOADED (KT_HC_USER_BASE + 1)
#define HC_UNLOADED (KT_HC_USER_BASE + 2)
#define HC_AFFINITY_REQ (KT_HC_USER_BASE + 3)
#define HC_AFFINITY_RESULT (KT_HC_USER_BASE + 4)

static uint32_t fnv1a(const uint8_t *p, uint32_t len)
{
	uint32_t h = 0x811c9dc5;

	for (uint32_t i = 0; i < len; i++)
		h = (h ^ p[i]) * 0x01000193;
	return h;
}

static int on_load(uint32_t hook, const void *image, uint32_t len, uint32_t *bad_pc)
{
	unsigned long r = (unsigned long)kt_hypercall3(HC_LOADED, hook, len, fnv1a(image, len));

	if (r >> 32)
		*bad_pc = (uint32_t)(r >> 32) - 1;
	return (int32_t)r;
}

static int on_unload(uint32_t hook)
{
	return (int)kt_hypercall1(HC_UNLOADED, hook);
}

static void serve(uint32_t n)
{
	kt_upcall_set_handlers(on_load, on_unload);
	kt_send_value(1);
	for (uint32_t done = 0; done < n;) {
		int r = kt_upcall_wait();

		if (r < 0) {
			kt_printf("upcall-driver: kt_upcall_wait returned %d\n", r);
			kt_exit(2);
		}
		done += (uint32_t)r;
	}
}

static void never_ack(void)
{
	uint32_t seen = kt_upcall_events();

	kt_send_value(1);
	/* Interrupts: the command arriving, then the host withdrawing it. Spin at CPL3 (no exits). */
	for (;;) {
		while (kt_upcall_events() == seen)
			kt_pause();
		seen = kt_upcall_events();
		if (kt_upcall_read(KT_UPCALL_IRQ_STATUS) & KT_UPCALL_IRQ_CMD_CANCELLED)
			break;
	}
	if (kt_upcall_read(KT_UPCALL_COMMAND) != KT_UPCALL_CMD_NONE)
		kt_exit(3);
	kt_send_value(0xCA);
}

static void affinity(uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		uint32_t word = (uint32_t)kt_hypercall1(HC_AFFINITY_REQ, i);
		long r = kt_upcall_set_affinity(word >> 16, word & 0xffff);

		kt_hypercall2(HC_AFFINITY_RESULT, i, (unsigned long)r);
	}
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Random sizes, offsets and values anywhere in the page (never across its end). */
static void fuzz(uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		uint64_t r = next(), v = next();
		unsigned size = 1U << (r & 3);
		/* Half the accesses go to a register (aligned), half anywhere in the page. */
		uint32_t off = (r >> 8) & 1 ? (uint32_t)((r >> 16) % 18) * 4 : (uint32_t)((r >> 16) % 0x1000);

		if (off > 0x1000 - size)
			off = 0x1000 - size;
		uintptr_t a = KT_UPCALL_BASE + off;

		if ((r >> 4) & 1) {
			switch (size) {
			case 1: *(volatile uint8_t *)a = (uint8_t)v; break;
			case 2: *(volatile uint16_t *)a = (uint16_t)v; break;
			case 4: *(volatile uint32_t *)a = (uint32_t)v; break;
			default: *(volatile uint64_t *)a = v; break;
			}
		} else {
			switch (size) {
			case 1: (void)*(volatile uint8_t *)a; break;
			case 2: (void)*(volatile uint16_t *)a; break;
			case 4: (void)*(volatile uint32_t *)a; break;
			default: (void)*(volatile uint64_t *)a; break;
			}
		}
	}
}

int main(unsigned cpu)
{
	if (cpu != 0)
		kt_park();
	unsigned long cfg = (unsigned long)kt_hypercall0(HC_CONFIG);
	uint32_t mode = cfg & 0xff, count = (cfg >> 8) & 0xffff;
	int r = kt_upcall_init(VECTOR);

	if (r < 0) {
		kt_printf("upcall-driver: kt_upcall_init returned %d\n", r);
		kt_exit(1);
	}
	switch (mode) {
	case 1:
		serve(count);
		break;
	case 2:
		never_ack();
		break;
	case 3:
		affinity(count);
		break;
	case 4:
		fuzz(count * 1000);
		/* The fuzzing may have changed IRQ_VECTOR and left events behind: start over. */
		r = kt_upcall_init(VECTOR);
		if (r < 0)
			kt_exit(1);
		serve(1);
		break;
	default:
		kt_exit(4);
	}
	kt_printf("upcall-driver: mode %u done\n", mode);
	return 0;
}
