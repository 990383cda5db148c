/*
 * The upcall device's guest driver against the real VMM (test/integration/upcall.test.ts).
 * Hypercall 256 (no arguments) tells the guest what to do:
 *   bits 0-7   mode: 1 serve commands, 2 take a command and never ACK it, 3 AFFINITY requests,
 *              4 wait for a command, random register accesses and COPYs while it is pending,
 *              then serve it
 *   bits 8-23  count: commands to serve (mode 1), requests (3), thousands of accesses (4)
 *   bit 24     read programs through the DATA window even when the device has COPY
 *   bits 32-47 mode 4: guest RAM in MiB (where COPY must refuse to write)
 * Load handler: hypercall 257(hook, len, FNV-1a of the image) returns what to answer: the low 32
 * bits are the status, bits 32-63 the STATUS_PC plus one (0: none). Unload handler: hypercall
 * 258(hook) returns the status. Mode 3: hypercall 259(i) gives request i's AFFINITY word
 * (vcpu << 16 | cpu), hypercall 260(i, AFFINITY_STATUS) reports its result. Mode 2 reports
 * kt_send_value(0xCA) once the cancellation arrived. Before serving, kt_send_value(1) = ready.
 * Mode 4 reports hypercall 261(COPYs that copied, COPY_STATUS values it did not expect, FNV-1a of
 * the last program copied into its scratch buffer) after the random accesses.
 */
#include <kvmtalk/upcall.h>

#define VECTOR 0x41
#define HC_CONFIG (KT_HC_USER_BASE + 0)
#define HC_LOADED (KT_HC_USER_BASE + 1)
#define HC_UNLOADED (KT_HC_USER_BASE + 2)
#define HC_AFFINITY_REQ (KT_HC_USER_BASE + 3)
#define HC_AFFINITY_RESULT (KT_HC_USER_BASE + 4)
#define HC_FUZZ_RESULT (KT_HC_USER_BASE + 5)

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

/* Spins at CPL3 (no exits) until the device interrupts again after `*seen` interrupts. */
static void await_interrupt(uint32_t *seen)
{
	while (kt_upcall_events() == *seen)
		kt_pause();
	*seen = kt_upcall_events();
}

static void never_ack(void)
{
	uint32_t seen = kt_upcall_events();

	kt_send_value(1);
	/* Interrupts: the command arriving, then the host withdrawing it. */
	do
		await_interrupt(&seen);
	while (!(kt_upcall_read(KT_UPCALL_IRQ_STATUS) & KT_UPCALL_IRQ_CMD_CANCELLED));
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

#define SCRATCH 8192
static uint8_t scratch[SCRATCH];
static uint32_t copies, surprises, scratch_sum;

/*
 * A COPY of the pending command (seq, len) to a hostile target: past the end of RAM, straddling
 * it, wrapping around 2^64, at the device's own page, anywhere above 4 GiB — or into the scratch
 * buffer, the one target inside RAM (a COPY anywhere else in RAM would overwrite this guest).
 * With a random COPY_LEN and sometimes a wrong sequence number. Checks COPY_STATUS.
 */
static void hostile_copy(uint32_t seq, uint32_t len, uint64_t ram)
{
	uint64_t r = next(), k = next() % (2 * (uint64_t)len), addr;
	int inside = 0;

	switch ((r >> 8) % 6) {
	case 0: addr = ram - 1 - k % len; break;         /* straddles the end of RAM */
	case 1: addr = ram + k; break;                    /* just past it */
	case 2: addr = 0 - 1 - k; break;                  /* addr + len wraps past 2^64 */
	case 3: addr = KT_UPCALL_BASE + (k & ~3ULL); break; /* the register page */
	case 4: addr = next() | (1ULL << 32); break;      /* anywhere above 4 GiB */
	default:
		addr = (uint64_t)(uintptr_t)scratch + next() % (SCRATCH - len + 1);
		inside = 1;
	}
	uint32_t cap = (r >> 16) & 1 ? len + (uint32_t)(k & 7) - 4 : (uint32_t)next();
	uint32_t value = (r >> 20) % 8 == 0 ? seq + 1 + (uint32_t)(k & 1) : seq;

	kt_upcall_write(KT_UPCALL_COPY_ADDR_LO, (uint32_t)addr);
	kt_upcall_write(KT_UPCALL_COPY_ADDR_HI, (uint32_t)(addr >> 32));
	kt_upcall_write(KT_UPCALL_COPY_LEN, cap);
	kt_upcall_write(KT_UPCALL_COPY, value);
	int32_t got = (int32_t)kt_upcall_read(KT_UPCALL_COPY_STATUS);
	int32_t want = value != seq ? -KT_ESTALE : cap < len ? -KT_ENOSPC : !inside ? -KT_EFAULT : (int32_t)len;

	if (got != want) {
		kt_printf("upcall-driver: COPY to %lx cap %u seq %u: %d, expected %d\n",
			  (unsigned long)addr, cap, value, got, want);
		surprises++;
	} else if (got >= 0) {
		copies++;
		scratch_sum = fnv1a((const uint8_t *)(uintptr_t)addr, len);
	}
}

/*
 * Random sizes, offsets and values anywhere in the page (never across its end), with command
 * seq pending; one access in 16 is a hostile COPY instead. The random values never complete the
 * command (ACK) or COPY it (that is hostile_copy's job, with targets that spare this guest).
 */
static void fuzz(uint32_t n, uint32_t seq, uint32_t len, uint64_t ram)
{
	for (uint32_t i = 0; i < n; i++) {
		uint64_t r = next(), v = next();
		unsigned size = 1U << (r & 3);
		/* Half the accesses go to a register (aligned), half anywhere in the page. */
		uint32_t off = (r >> 8) & 1 ? (uint32_t)((r >> 16) % 24) * 4 : (uint32_t)((r >> 16) % 0x1000);

		if (((r >> 40) & 15) == 0) {
			hostile_copy(seq, len, ram);
			continue;
		}
		if (off > 0x1000 - size)
			off = 0x1000 - size;
		if ((off == KT_UPCALL_ACK || off == KT_UPCALL_COPY) && (uint32_t)v == seq)
			v++;
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

/* Mode 4: takes the host's command, fuzzes the device while it is pending, then serves it. */
static void fuzz_then_serve(uint32_t thousands, uint64_t ram, int window)
{
	uint32_t seen = kt_upcall_events();

	kt_send_value(1);
	while (kt_upcall_read(KT_UPCALL_COMMAND) == KT_UPCALL_CMD_NONE)
		await_interrupt(&seen);
	uint32_t seq = kt_upcall_read(KT_UPCALL_COMMAND_SEQ), len = kt_upcall_read(KT_UPCALL_DATA_LEN);

	if (len == 0 || len > SCRATCH)
		kt_exit(5);
	/* No interrupting event left: a random IRQ_VECTOR write must not raise a vector we lack. */
	kt_upcall_write(KT_UPCALL_IRQ_STATUS, KT_UPCALL_IRQ_CMD_PENDING);
	fuzz(thousands * 1000, seq, len, ram);
	kt_hypercall3(HC_FUZZ_RESULT, copies, surprises, scratch_sum);
	/* The fuzzing may have changed IRQ_VECTOR, COPY_ADDR and left events behind: start over. */
	if (kt_upcall_init(VECTOR) < 0)
		kt_exit(1);
	if (window)
		kt_upcall_use_copy(0);
	serve(1);
}

int main(unsigned cpu)
{
	if (cpu != 0)
		kt_park();
	unsigned long cfg = (unsigned long)kt_hypercall0(HC_CONFIG);
	uint32_t mode = cfg & 0xff, count = (cfg >> 8) & 0xffff;
	int window = (cfg >> 24) & 1;
	uint64_t ram = ((cfg >> 32) & 0xffff) << 20;
	int r = kt_upcall_init(VECTOR);

	if (r < 0) {
		kt_printf("upcall-driver: kt_upcall_init returned %d\n", r);
		kt_exit(1);
	}
	/* The device has COPY, so the driver uses it unless told to take the window. */
	if (window)
		kt_upcall_use_copy(0);
	else if (!kt_upcall_use_copy(1))
		kt_exit(6);
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
		fuzz_then_serve(count, ram, window);
		break;
	default:
		kt_exit(4);
	}
	kt_printf("upcall-driver: mode %u done\n", mode);
	return 0;
}
