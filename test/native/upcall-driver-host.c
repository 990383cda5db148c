/*
 * The guest's upcall driver (guest/sdk/src/upcall.c) built for the host against a model of the
 * device's command registers, driven by test/unit/upcall-driver-native.test.ts.
 *
 * Every register access is a separate exit on a real VM, and the host may withdraw a command (its
 * timeout) and post the next between any two. Here that happens deterministically: for every k,
 * command A is posted, the driver polls, and just before its k-th register access A is withdrawn
 * and B posted (or nothing, or B after A was already answered). For every k, both ways of getting
 * the program (COPY, window) and every pair of command kinds it checks that
 *   - each handler call sees one whole command: its kind, hook, length and bytes;
 *   - each ACK the device accepts carries the status the handler gave for that command;
 *   - B, when posted, is answered by the polls that follow (three polls in all).
 * Output: "FAIL ..." lines, then one "mode M scenarios N handoffs H" line per mode, where H
 * counts scenarios in which the driver dropped a withdrawn A and serviced B in the same poll.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include <kvmtalk/upcall.h>

enum { NONE = 0 };

struct command {
	uint32_t kind, hook, len;
	uint8_t prog[6000];
};

static struct command cmd_a, cmd_b;

/* The device's registers (the ones the driver uses). */
static struct {
	const struct command *cur; /* visible command, NULL = none */
	uint32_t seq, offset, status, pc, irq, copy_lo, copy_hi, copy_len, features;
	int32_t copy_status;
} dev;

/* The switch: before access number switch_at, withdraw the command and post `next` (may be NULL). */
static long accesses, switch_at = -1;
static const struct command *next;

/* What happened. */
struct call {
	const struct command *matches; /* the command whose kind, hook and bytes the handler saw, or NULL */
	int status;
};
static struct call calls[8];
static int ncalls;
static struct {
	uint32_t seq;
	int32_t status;
} acks[8];
static int nacks;

static void post(const struct command *c, uint32_t seq)
{
	dev.cur = c;
	dev.seq = seq;
	dev.offset = 0;
	dev.status = 0;
	dev.pc = KT_UPCALL_NO_PC;
	dev.irq |= KT_UPCALL_IRQ_CMD_PENDING;
}

static void withdraw(void)
{
	if (dev.cur)
		dev.irq = (dev.irq & ~KT_UPCALL_IRQ_CMD_PENDING) | KT_UPCALL_IRQ_CMD_CANCELLED;
	dev.cur = NULL;
	dev.seq = 0;
	dev.offset = 0;
}

static void access_starts(void)
{
	if (accesses++ == switch_at) {
		withdraw();
		if (next)
			post(next, 2);
	}
}

uint32_t kt_upcall_read(uint32_t off)
{
	access_starts();
	const struct command *c = dev.cur;

	if (off >= KT_UPCALL_WINDOW) {
		uint32_t v = 0;

		for (uint32_t b = 0; b < 4 && c; b++) {
			uint32_t at = dev.offset + off - KT_UPCALL_WINDOW + b;

			if (at < c->len)
				v |= (uint32_t)c->prog[at] << (8 * b);
		}
		return v;
	}
	switch (off) {
	case KT_UPCALL_MAGIC: return KT_UPCALL_MAGIC_VALUE;
	case KT_UPCALL_VERSION: return KT_UPCALL_VERSION_VALUE;
	case KT_UPCALL_IRQ_STATUS: return dev.irq;
	case KT_UPCALL_COMMAND: return c ? c->kind : NONE;
	case KT_UPCALL_COMMAND_ARG: return c ? c->hook : 0;
	case KT_UPCALL_COMMAND_SEQ: return dev.seq;
	case KT_UPCALL_DATA_LEN: return c ? c->len : 0;
	case KT_UPCALL_DATA_OFFSET: return dev.offset;
	case KT_UPCALL_COPY_STATUS: return (uint32_t)dev.copy_status;
	case KT_UPCALL_FEATURES: return dev.features;
	}
	printf("FAIL the driver read register 0x%x\n", off);
	return 0xffffffffU;
}

void kt_upcall_write(uint32_t off, uint32_t v)
{
	access_starts();
	switch (off) {
	case KT_UPCALL_IRQ_STATUS: dev.irq &= ~v; return;
	case KT_UPCALL_IRQ_VECTOR: return;
	case KT_UPCALL_DATA_OFFSET: if (!(v & 3)) dev.offset = v; return;
	case KT_UPCALL_STATUS: dev.status = v; return;
	case KT_UPCALL_STATUS_PC: dev.pc = v; return;
	case KT_UPCALL_COPY_ADDR_LO: dev.copy_lo = v; return;
	case KT_UPCALL_COPY_ADDR_HI: dev.copy_hi = v; return;
	case KT_UPCALL_COPY_LEN: dev.copy_len = v; return;
	case KT_UPCALL_ACK:
		if (dev.cur && v == dev.seq && nacks < 8) {
			acks[nacks].seq = v;
			acks[nacks++].status = (int32_t)dev.status;
			withdraw();
			dev.irq &= ~KT_UPCALL_IRQ_CMD_CANCELLED;
		}
		return;
	case KT_UPCALL_COPY:
		if (!dev.cur) {
			dev.copy_status = -KT_ENOENT;
		} else if (v != dev.seq) {
			dev.copy_status = -KT_ESTALE;
		} else if (dev.copy_len < dev.cur->len) {
			dev.copy_status = -KT_ENOSPC;
		} else {
			memcpy((void *)(uintptr_t)(((uint64_t)dev.copy_hi << 32) | dev.copy_lo), dev.cur->prog, dev.cur->len);
			dev.copy_status = (int32_t)dev.cur->len;
		}
		return;
	}
	printf("FAIL the driver wrote register 0x%x\n", off);
}

/* Not reached with vector 0; here because upcall.c links against them. */
int kt_irq_set_handler(unsigned vector, kt_irq_handler fn)
{
	(void)vector, (void)fn;
	return -KT_EOPNOTSUPP;
}

long kt_wait_until_changed(volatile uint32_t *word, uint32_t old)
{
	(void)word, (void)old;
	return -KT_EOPNOTSUPP;
}

static const struct command *which(uint32_t kind, uint32_t hook, const void *image, uint32_t len)
{
	const struct command *both[] = { &cmd_a, &cmd_b };

	for (int i = 0; i < 2; i++) {
		const struct command *c = both[i];

		if (c->kind == kind && c->hook == hook && (kind != KT_UPCALL_CMD_LOAD || (c->len == len && !memcmp(c->prog, image, len))))
			return c;
	}
	return NULL;
}

/* Handler statuses say which handler ran for which hook. */
static int load_handler(uint32_t hook, const void *image, uint32_t len, uint32_t *bad_pc)
{
	(void)bad_pc;
	int status = -(int)hook;

	if (ncalls < 8)
		calls[ncalls++] = (struct call){ which(KT_UPCALL_CMD_LOAD, hook, image, len), status };
	return status;
}

static int unload_handler(uint32_t hook)
{
	int status = -(int)hook - 500;

	if (ncalls < 8)
		calls[ncalls++] = (struct call){ which(KT_UPCALL_CMD_UNLOAD, hook, NULL, 0), status };
	return status;
}

static int expected_status(const struct command *c)
{
	return c->kind == KT_UPCALL_CMD_LOAD ? -(int)c->hook : -(int)c->hook - 500;
}

static void make(struct command *c, uint32_t kind, uint32_t hook, uint32_t len, uint8_t seed)
{
	c->kind = kind;
	c->hook = hook;
	c->len = kind == KT_UPCALL_CMD_LOAD ? len : 0;
	for (uint32_t i = 0; i < sizeof c->prog; i++)
		c->prog[i] = (uint8_t)(seed + i * 7 + (i >> 8));
}

static const char *kind_name(uint32_t kind)
{
	return kind == KT_UPCALL_CMD_LOAD ? "LOAD" : "UNLOAD";
}

/* One scenario; returns 1 when the driver dropped a withdrawn A and serviced B in its first poll. */
static int scenario(const char *mode, long k, int with_b, int *failed)
{
	memset(&dev, 0, sizeof dev);
	dev.pc = KT_UPCALL_NO_PC;
	dev.features = strcmp(mode, "copy") ? 0xffffffffU : KT_UPCALL_FEATURE_COPY;
	switch_at = -1;
	kt_upcall_init(0); /* uses COPY when FEATURES has it */
	kt_upcall_set_handlers(load_handler, unload_handler);
	ncalls = nacks = 0;
	accesses = 0;
	switch_at = k;
	next = with_b ? &cmd_b : NULL;
	post(&cmd_a, 1);
	kt_upcall_poll();
	int calls_after_first = ncalls, acks_after_first = nacks;

	for (int i = 0; i < 2; i++)
		kt_upcall_poll();
	switch_at = -1;

	char what[96];
	snprintf(what, sizeof what, "%s A=%s B=%s k=%ld:", mode, kind_name(cmd_a.kind), with_b ? kind_name(cmd_b.kind) : "none", k);
	int bad = 0;

	for (int i = 0; i < ncalls; i++) {
		if (!calls[i].matches) {
			printf("FAIL %s handler call %d saw parts of two commands\n", what, i);
			bad = 1;
		}
	}
	int b_acked = 0;

	for (int i = 0; i < nacks; i++) {
		const struct command *c = acks[i].seq == 1 ? &cmd_a : &cmd_b;
		int handled = 0;

		for (int j = 0; j < ncalls; j++)
			handled |= calls[j].matches == c;
		if (acks[i].status != expected_status(c) || !handled) {
			printf("FAIL %s ACK of seq %u with status %d, not the handler's %d for it\n", what, acks[i].seq, acks[i].status, expected_status(c));
			bad = 1;
		}
		b_acked |= acks[i].seq == 2;
	}
	if (with_b && !b_acked) {
		printf("FAIL %s B was not answered\n", what);
		bad = 1;
	}
	*failed += bad;
	/* A dropped and B serviced in the first poll: one handler call and one ACK, both B's. */
	return with_b && calls_after_first == 1 && acks_after_first == 1 && calls[0].matches == &cmd_b && acks[0].seq == 2 && k > 0;
}

int main(void)
{
	static const char *modes[] = { "copy", "window" };
	static const uint32_t kinds[] = { KT_UPCALL_CMD_LOAD, KT_UPCALL_CMD_UNLOAD };
	int failed = 0;

	for (int m = 0; m < 2; m++) {
		long scenarios = 0, handoffs = 0;

		for (int ka = 0; ka < 2; ka++) {
			for (int kb = 0; kb < 2; kb++) {
				/* A 3001-byte program (not a multiple of 4) and a 5003-byte one (three windows). */
				make(&cmd_a, kinds[ka], 11, 3001, 0xa0);
				make(&cmd_b, kinds[kb], 22, 5003, 0x3b);
				/* Never switching: the accesses of A's service and two more polls (k = -1). */
				scenario(modes[m], -1, 0, &failed);
				long limit = accesses;

				for (long k = 0; k < limit; k++) {
					/* Withdrawing A with nothing after it does not depend on B's kind: once. */
					for (int with_b = kb == 0 ? 0 : 1; with_b < 2; with_b++) {
						handoffs += scenario(modes[m], k, with_b, &failed);
						scenarios++;
					}
				}
			}
		}
		printf("mode %s scenarios %ld handoffs %ld\n", modes[m], scenarios, handoffs);
	}
	return failed != 0;
}
