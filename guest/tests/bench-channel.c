/*
 * Channel benchmark guest (src/bench/channel.ts, `kvmtalk bench channel`).
 *
 * vCPU c (0 or 1) works on the channel "bench<c>" the host created (kt_chan_find). It runs
 * phases the host hands out one at a time: before each phase it asks with user hypercall 330
 * (KT_HC_USER_BASE + 74), a0 = its vCPU index, a1 = the previous phase's status (0 = fine),
 * a2 = the address of its report block (struct report below, read by the host after the phase).
 * The answer packs the next phase:
 *   bits 0-31   N: messages (or round trips)
 *   bits 32-47  S: message size in bytes (8 .. 65535)
 *   bits 48-51  kind: 0 done (the vCPU ends; vCPU 0 ends the VM with the first failure status),
 *               1 send    N messages to the host as fast as kt_chan_send allows (guest → host)
 *               2 recv    N messages from the host and check them (host → guest)
 *               3 echo    N times: receive a message, send it back (host-initiated ping-pong)
 *               4 ping    N times: send a message, receive the host's echo, record the round
 *                         trip in TSC ticks (guest-initiated ping-pong)
 * A negative answer (no handler) counts as "done".
 *
 * Every message carries its sequence number (u32) in its first 4 bytes; the receiving end checks
 * it and the length. That is all the per-message work either side does besides the ring's own
 * validation and copy, the same as the C baseline (bench/c/channel-baseline.c).
 *
 * Time limit: the host may end a phase early. It sets the report's stop word, which the guest
 * checks before each message it sends or round trip it starts ("send", "ping"), or it sends the
 * END message (sequence number 0xffffffff, same size) instead of the next one ("recv", "echo").
 * A guest that stops early sends END itself, so the host's side ends too. report.done says how
 * many messages or round trips the guest completed.
 *
 * Timing (KT_HC_BENCH_MARK ids, so the host's clock stamps them on the vCPU thread):
 *   2 + c before the first send of a "send" phase, 4 + c after the last receive of a "recv"
 *   phase, 6 + c and 8 + c around a "ping" phase, each followed at once by an RDTSC stored in
 *   the report: the TSC ticks between the two RDTSCs over the host time between the two marks
 *   give the TSC rate that converts the round trips to nanoseconds (the constant delay between
 *   a mark's host timestamp and the RDTSC after it cancels out in the difference).
 *
 * Failure statuses: 2 channel not found, 3 send failed, 4 receive failed, 5 wrong message,
 * 6 bad phase.
 */
#include <kvmtalk.h>

#include "cpu-finish.h"

#define HC_PHASE (KT_HC_USER_BASE + 74)
#define MAX_CPUS 2
#define MAX_MSG 65535u
#define MAX_SAMPLES 65536u

#define KIND_DONE 0
#define KIND_SEND 1
#define KIND_RECV 2
#define KIND_ECHO 3
#define KIND_PING 4

#define MARK_START 2
#define MARK_END 4
#define MARK_CAL0 6
#define MARK_CAL1 8

#define SEQ_END 0xffffffffu

/* Read by the host at the address passed in a2 of every phase hypercall. */
struct report {
	uint32_t magic;    /* 0x00: 0x48434b42 "BKCH" */
	uint32_t count;    /* 0x04: samples[] entries of the last ping phase */
	uint64_t tsc_cal0; /* 0x08: RDTSC right after mark 6 + c */
	uint64_t tsc_cal1; /* 0x10: RDTSC right after mark 8 + c */
	uint32_t stop;     /* 0x18: written by the host: non-zero ends the phase early */
	uint32_t done;     /* 0x1c: messages / round trips the last phase completed */
	uint32_t samples[MAX_SAMPLES]; /* 0x20: round trips of the last ping phase, TSC ticks (saturated) */
};

static struct report reports[MAX_CPUS];
static uint8_t bufs[MAX_CPUS][MAX_MSG + 1] __attribute__((aligned(64)));
static struct kt_chan chans[MAX_CPUS];

static inline void put_seq(uint8_t *p, uint32_t seq)
{
	__builtin_memcpy(p, &seq, 4);
}

static inline uint32_t get_seq(const uint8_t *p)
{
	uint32_t seq;

	__builtin_memcpy(&seq, p, 4);
	return seq;
}

static void mark(unsigned id)
{
	kt_hypercall1(KT_HC_BENCH_MARK, id);
}

static bool stopped(unsigned cpu)
{
	return __atomic_load_n(&reports[cpu].stop, __ATOMIC_RELAXED) != 0;
}

static int send_seq(struct kt_chan *ch, uint8_t *buf, unsigned cpu, uint32_t seq, uint32_t size)
{
	int err;

	put_seq(buf, seq);
	err = kt_chan_send(ch, buf, size);
	if (err)
		kt_printf("bench-channel: cpu %u: send %u failed: error %d\n", cpu, seq, err);
	return err ? 3 : 0;
}

static int do_send(struct kt_chan *ch, uint8_t *buf, unsigned cpu, uint32_t n, uint32_t size)
{
	uint32_t i;

	mark(MARK_START + cpu);
	for (i = 0; i < n && !stopped(cpu); i++) {
		int r = send_seq(ch, buf, cpu, i, size);

		if (r)
			return r;
	}
	reports[cpu].done = i;
	return i < n ? send_seq(ch, buf, cpu, SEQ_END, size) : 0;
}

/*
 * Receives message i into buf and checks its length and sequence number. Returns 0, -1 for the
 * END message, or a failure status.
 */
static int recv_check(struct kt_chan *ch, uint8_t *buf, unsigned cpu, uint32_t i, uint32_t size)
{
	long got = kt_chan_recv(ch, buf, MAX_MSG + 1);

	if (got < 0) {
		kt_printf("bench-channel: cpu %u: recv %u failed: error %ld\n", cpu, i, got);
		return 4;
	}
	if ((uint32_t)got == size && get_seq(buf) == SEQ_END)
		return -1;
	if ((uint32_t)got != size || get_seq(buf) != i) {
		kt_printf("bench-channel: cpu %u: message %u: %ld bytes, sequence %u (expected %u bytes)\n",
			  cpu, i, got, got >= 4 ? get_seq(buf) : 0, size);
		return 5;
	}
	return 0;
}

/*
 * Receives and checks n messages (fewer when the END message comes), sending each one back when
 * echo is set.
 */
static int recv_loop(struct kt_chan *ch, uint8_t *buf, unsigned cpu, uint32_t n, uint32_t size,
		     bool echo)
{
	uint32_t i;

	for (i = 0; i < n; i++) {
		int r = recv_check(ch, buf, cpu, i, size);

		if (r < 0)
			break;
		if (r)
			return r;
		if (!echo)
			continue;
		r = kt_chan_send(ch, buf, size);
		if (r) {
			kt_printf("bench-channel: cpu %u: echo %u failed: error %d\n", cpu, i, r);
			return 3;
		}
	}
	if (!echo)
		mark(MARK_END + cpu);
	reports[cpu].done = i;
	return 0;
}

static int do_ping(struct kt_chan *ch, uint8_t *buf, unsigned cpu, uint32_t n, uint32_t size)
{
	struct report *rep = &reports[cpu];
	uint32_t i;

	if (n > MAX_SAMPLES)
		n = MAX_SAMPLES;
	rep->count = 0;
	mark(MARK_CAL0 + cpu);
	rep->tsc_cal0 = kt_rdtsc();
	for (i = 0; i < n && !stopped(cpu); i++) {
		uint64_t t0 = kt_rdtsc(), dt;
		int r = send_seq(ch, buf, cpu, i, size);

		if (r)
			return r;
		r = recv_check(ch, buf, cpu, i, size);
		if (r)
			return r < 0 ? 5 : r; /* the host never sends END in this phase */
		dt = kt_rdtsc() - t0;
		rep->samples[i] = dt > 0xffffffffu ? 0xffffffffu : (uint32_t)dt;
	}
	mark(MARK_CAL1 + cpu);
	rep->tsc_cal1 = kt_rdtsc();
	rep->count = i;
	rep->done = i;
	return i < n ? send_seq(ch, buf, cpu, SEQ_END, size) : 0;
}

static int run(unsigned cpu)
{
	struct kt_chan *ch = &chans[cpu];
	uint8_t *buf = bufs[cpu];
	char name[16];
	int r = 0, err;

	reports[cpu].magic = 0x48434b42;
	kt_snprintf(name, sizeof(name), "bench%u", cpu);
	err = kt_chan_find(ch, name);
	if (err) {
		kt_printf("bench-channel: cpu %u: find \"%s\" failed: error %d\n", cpu, name, err);
		r = 2;
	}
	for (;;) {
		long cfg = kt_hypercall3(HC_PHASE, cpu, (unsigned long)r, (unsigned long)&reports[cpu]);
		uint32_t n = (uint32_t)cfg, size = (uint32_t)((unsigned long)cfg >> 32) & 0xffff;
		unsigned kind = (unsigned)((unsigned long)cfg >> 48) & 0xf;

		if (cfg <= 0 || kind == KIND_DONE || r)
			return r;
		if (size < 8 || size > kt_chan_max_send(ch) || size > kt_chan_max_msg(ch)) {
			kt_printf("bench-channel: cpu %u: bad message size %u\n", cpu, size);
			r = 6; /* reported with the next phase request */
			continue;
		}
		switch (kind) {
		case KIND_SEND: r = do_send(ch, buf, cpu, n, size); break;
		case KIND_RECV: r = recv_loop(ch, buf, cpu, n, size, false); break;
		case KIND_ECHO: r = recv_loop(ch, buf, cpu, n, size, true); break;
		case KIND_PING: r = do_ping(ch, buf, cpu, n, size); break;
		default: r = 6; break;
		}
	}
}

int main(unsigned cpu)
{
	int r = cpu < MAX_CPUS ? run(cpu) : 0;

	return finish_cpu(cpu, r);
}
