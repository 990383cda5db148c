/*
 * channel-baseline: the guest SDK's ring code (guest/sdk/src/ring.c, compiled for the host)
 * between two host threads, as the reference `kvmtalk bench channel` (src/bench/channel.ts)
 * measures the TypeScript channel against.
 *
 * usage: channel-baseline <messages> <round-trips> <capacity> <max-ms> <size>...
 *
 * For each message size:
 *   throughput  a producer thread writes <messages> messages of <size> bytes into one ring
 *               (kt_ring_try_write, PAUSE while full); a consumer thread reads them in
 *               batches (read_batch below: validate each frame, check length and sequence
 *               number in place, one consumer-index store per batch; PAUSE while empty), the
 *               same protocol-level work as the TypeScript polling consumer. Time: from just
 *               before the producer's first write to just after the consumer's last read.
 *   round trip  thread A writes a message into ring 1 and waits for it to come back on ring 2;
 *               thread B reads it and writes it back. <round-trips> of them, each timed on A
 *               with CLOCK_MONOTONIC; percentiles of the round trip.
 * Per-message work is what the TypeScript and guest ends do in the benchmark: the producer
 * stores the sequence number in the first 4 bytes and writes (validate, copy, advance); the
 * consumer validates the frame, checks the length and sequence in place and advances (throughput,
 * batched) or reads with kt_ring_try_read (validate, copy out, advance; round trips, one message
 * at a time, as the TypeScript echo does too).
 * Rings have <capacity> data bytes (a power of two), both in one anonymous mapping, 4 KiB apart
 * like a channel's.
 *
 * Time limit, as in the TypeScript benchmark: a measurement that has not finished after <max-ms>
 * milliseconds is ended early. The main thread sets a stop flag, which the producer (pinger)
 * checks before each message (round trip); it then sends the END message (sequence number
 * 0xffffffff, same size), which ends the consumer (echoer). Rates and percentiles cover what was
 * done; "messages" and "round_trips" in each size's entry say how much that was.
 *
 * Prints one JSON line on stdout:
 *   {"capacity": C, "messages": N, "round_trips": R,
 *    "sizes": [{"size": S, "msgs_per_s": ..., "elapsed_ns": ..., "messages": ..., "round_trips": ...,
 *               "full_spins": ..., "empty_spins": ...,
 *               "rtt_ns": {"p50": ..., "p90": ..., "p99": ..., "min": ..., "mean": ...}}, ...]}
 *
 * Build, from the repository root:
 *   gcc -O2 -Wall -Wextra -pthread -I bench/c -I guest/sdk/include \
 *       -o channel-baseline bench/c/channel-baseline.c guest/sdk/src/ring.c
 */
#define _GNU_SOURCE
#include <kvmtalk/ring.h>

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define BENCH_PROG "channel-baseline"
#include "bench-common.h"

#define MAX_SIZES 8
#define RING_GAP 4096 /* rings start at page boundaries, like a channel's regions */
#define SEQ_END 0xffffffffu

static inline void cpu_pause(void)
{
	__asm__ volatile("pause" ::: "memory");
}

static inline void put_seq(uint8_t *p, uint32_t seq)
{
	memcpy(p, &seq, 4);
}

static inline uint32_t get_seq(const uint8_t *p)
{
	uint32_t seq;

	memcpy(&seq, p, 4);
	return seq;
}

struct shared {
	uint8_t *mem1, *mem2;      /* ring regions */
	size_t region;
	uint32_t messages, round_trips, size, max_msg;
	uint32_t done;             /* messages / round trips completed */
	int go;                    /* start flag: both threads wait for it */
	int ready;                 /* threads attached */
	int stop;                  /* time is up: the producer / pinger ends early */
	uint64_t t_start, t_end;   /* throughput: producer's start, consumer's end */
	uint64_t full_spins, empty_spins;
	uint64_t *samples;         /* round trips, ns */
	int failed;
};

static void wait_go(struct shared *s)
{
	__atomic_fetch_add(&s->ready, 1, __ATOMIC_ACQ_REL);
	while (!__atomic_load_n(&s->go, __ATOMIC_ACQUIRE))
		cpu_pause();
}

static void attach(struct kt_ring *r, uint8_t *mem, size_t size)
{
	int err = kt_ring_attach(r, mem, size);

	if (err)
		die("kt_ring_attach: %d", err);
}

/* Writes msg, spinning while the ring is full; counts the spins. */
static void write_msg(struct kt_ring *r, const uint8_t *msg, uint32_t len, uint64_t *spins)
{
	for (;;) {
		long w = kt_ring_try_write(r, msg, len);

		if (w == 0)
			return;
		if (w != -KT_EAGAIN)
			die("kt_ring_try_write: %ld", w);
		(*spins)++;
		cpu_pause();
	}
}

/*
 * Reads the next message into buf, spinning while the ring is empty, and checks it. Returns 0,
 * or -1 for the END message.
 */
static int read_msg(struct kt_ring *r, uint8_t *buf, uint32_t cap, uint32_t want_len,
		    uint32_t want_seq, uint64_t *spins)
{
	for (;;) {
		long n = kt_ring_try_read(r, buf, cap);

		if (n >= 0) {
			if ((uint32_t)n == want_len && get_seq(buf) == SEQ_END)
				return -1;
			if ((uint32_t)n != want_len || get_seq(buf) != want_seq)
				die("message %u: %ld bytes, sequence %u", want_seq, n, get_seq(buf));
			return 0;
		}
		if (n != -KT_EAGAIN)
			die("kt_ring_try_read: %ld", n);
		(*spins)++;
		cpu_pause();
	}
}

/*
 * The consumer's batch read, the same protocol-level work as the TypeScript host's polling
 * consumer (Ring.readBatch under Channel.drainFrames): one check of the header and one
 * acquire-load of the producer index (kt_ring_available: ring_check + the validated index) per
 * batch; per frame, the header words loaded once and every check of ring.c's ring_peek (reserved
 * word, wrap marker, length, overrun, end of the data area), then the payload is read in place
 * (the sequence number and length are checked, nothing is copied); one release-store of the
 * consumer index per batch and after every capacity / 4 bytes. It lives here rather than in the
 * SDK because only this benchmark uses it; it uses only the public struct kt_ring.
 * Returns the messages taken (0: empty), or -1 after taking the END message.
 */
static long read_batch(struct kt_ring *r, uint32_t want_len, uint32_t *next_seq)
{
	long used = kt_ring_available(r);
	uint32_t cons = r->cons, stored = r->cons, mask = r->capacity - 1;
	uint32_t store_every = r->capacity / 4;
	long n = 0;
	int end = 0;

	if (used < 0)
		die("kt_ring_available: %ld", used);
	while (used != 0) {
		uint32_t off = cons & mask, len, reserved, frame, seq;
		const struct kt_ring_frame *f = (const struct kt_ring_frame *)(r->data + off);

		len = __atomic_load_n(&f->len, __ATOMIC_RELAXED);
		reserved = __atomic_load_n(&f->reserved, __ATOMIC_RELAXED);
		if (reserved != 0)
			die("bad frame header at %u", cons);
		if (len == KT_RING_WRAP) {
			uint32_t tail = r->capacity - off;

			if (off == 0 || tail > (uint32_t)used)
				die("bad wrap marker at %u", cons);
			cons += tail;
			used -= tail;
			continue;
		}
		if (len > r->max_msg)
			die("bad length %u at %u", len, cons);
		frame = (uint32_t)KT_RING_FRAME_SIZE(len);
		if (frame > (uint32_t)used || off + frame > r->capacity)
			die("frame overrun at %u", cons);
		seq = len >= 4 ? __atomic_load_n((const uint32_t *)(r->data + off + KT_RING_FRAME_HEADER),
						 __ATOMIC_RELAXED) : 0;
		cons += frame;
		used -= frame;
		n++;
		if (len == want_len && seq == SEQ_END) {
			end = 1;
			break;
		}
		if (len != want_len || seq != *next_seq)
			die("message %u: %u bytes, sequence %u", *next_seq, len, seq);
		(*next_seq)++;
		if (cons - stored >= store_every) {
			stored = cons;
			__atomic_store_n(&r->hdr->cons, cons, __ATOMIC_RELEASE);
		}
	}
	r->cons = cons;
	if (cons != stored)
		__atomic_store_n(&r->hdr->cons, cons, __ATOMIC_RELEASE);
	return end ? -1 : n;
}

static inline int stopped(struct shared *s)
{
	return __atomic_load_n(&s->stop, __ATOMIC_RELAXED);
}

static void *producer(void *arg)
{
	struct shared *s = arg;
	struct kt_ring r;
	uint8_t *msg = aligned_alloc(64, s->max_msg + 64);
	uint64_t spins = 0;
	uint32_t i;

	attach(&r, s->mem1, s->region);
	memset(msg, 0xa5, s->max_msg);
	wait_go(s);
	s->t_start = now_ns();
	for (i = 0; i < s->messages && !stopped(s); i++) {
		put_seq(msg, i);
		write_msg(&r, msg, s->size, &spins);
	}
	if (i < s->messages) {
		put_seq(msg, SEQ_END);
		write_msg(&r, msg, s->size, &spins);
	}
	s->full_spins = spins;
	free(msg);
	return NULL;
}

static void *consumer(void *arg)
{
	struct shared *s = arg;
	struct kt_ring r;
	uint8_t *buf = aligned_alloc(64, s->max_msg + 64);
	uint64_t spins = 0;

	uint32_t i = 0;

	attach(&r, s->mem1, s->region);
	wait_go(s);
	/* Batches, like the TypeScript polling consumer (see read_batch). */
	while (i < s->messages) {
		long n = read_batch(&r, s->size, &i);

		if (n < 0)
			break;
		if (n == 0) {
			spins++;
			cpu_pause();
		}
	}
	s->t_end = now_ns();
	s->done = i;
	s->empty_spins = spins;
	free(buf);
	return NULL;
}

/*
 * The setup of both round-trip threads: attaches *on1 to ring 1 and *on2 to ring 2, and returns a
 * message buffer (free it).
 */
static uint8_t *round_trip_rings(struct shared *s, struct kt_ring *on1, struct kt_ring *on2)
{
	uint8_t *buf = aligned_alloc(64, s->max_msg + 64);

	attach(on1, s->mem1, s->region);
	attach(on2, s->mem2, s->region);
	return buf;
}

/* Thread A of the round trips: ping on ring 1, pong on ring 2, one sample per round trip. */
static void *pinger(void *arg)
{
	struct shared *s = arg;
	struct kt_ring tx, rx;
	uint8_t *buf = round_trip_rings(s, &tx, &rx);
	uint64_t spins = 0;
	uint32_t i;

	memset(buf, 0x5a, s->max_msg);
	wait_go(s);
	for (i = 0; i < s->round_trips && !stopped(s); i++) {
		uint64_t t0 = now_ns();

		put_seq(buf, i);
		write_msg(&tx, buf, s->size, &spins);
		if (read_msg(&rx, buf, s->max_msg, s->size, i, &spins))
			die("END message in a round trip");
		s->samples[i] = now_ns() - t0;
	}
	s->done = i;
	if (i < s->round_trips) {
		put_seq(buf, SEQ_END);
		write_msg(&tx, buf, s->size, &spins);
	}
	free(buf);
	return NULL;
}

/* Thread B of the round trips: sends every message back. */
static void *echoer(void *arg)
{
	struct shared *s = arg;
	struct kt_ring rx, tx;
	uint8_t *buf = round_trip_rings(s, &rx, &tx);
	uint64_t spins = 0;

	wait_go(s);
	for (uint32_t i = 0; i < s->round_trips; i++) {
		if (read_msg(&rx, buf, s->max_msg, s->size, i, &spins))
			break;
		write_msg(&tx, buf, s->size, &spins);
	}
	free(buf);
	return NULL;
}

/*
 * Formats fresh rings, starts the two threads, releases them together and joins them; sets the
 * stop flag if thread a (producer or pinger) is not done after max_ms.
 */
static void run_pair(struct shared *s, uint32_t capacity, uint32_t max_ms, void *(*a)(void *),
		     void *(*b)(void *))
{
	struct kt_ring init;
	struct timespec deadline;
	pthread_t ta, tb;

	if (kt_ring_init(&init, s->mem1, s->region, capacity, 0) ||
	    kt_ring_init(&init, s->mem2, s->region, capacity, 0))
		die("kt_ring_init failed");
	s->go = 0;
	s->ready = 0;
	s->stop = 0;
	s->done = 0;
	if (pthread_create(&ta, NULL, a, s) || pthread_create(&tb, NULL, b, s))
		die("pthread_create failed");
	while (__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE) < 2)
		sched_yield();
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += max_ms / 1000;
	deadline.tv_nsec += (long)(max_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	__atomic_store_n(&s->go, 1, __ATOMIC_RELEASE);
	if (pthread_timedjoin_np(ta, NULL, &deadline) != 0) {
		__atomic_store_n(&s->stop, 1, __ATOMIC_RELAXED);
		pthread_join(ta, NULL);
	}
	pthread_join(tb, NULL);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted values (the same definition as src/bench/channel.ts). */
static uint64_t percentile(const uint64_t *sorted, uint32_t n, double p)
{
	uint32_t rank = (uint32_t)(p / 100.0 * n + 0.999999999);

	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return sorted[rank - 1];
}

static uint32_t parse_u32(const char *s, const char *what)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v == 0 || v > 0xffffffffUL)
		die("bad %s '%s'", what, s);
	return (uint32_t)v;
}

int main(int argc, char **argv)
{
	struct shared s;
	uint32_t capacity, max_ms, sizes[MAX_SIZES];
	int nsizes;

	if (argc < 6 || argc - 5 > MAX_SIZES)
		die("usage: channel-baseline <messages> <round-trips> <capacity> <max-ms> <size>...");
	memset(&s, 0, sizeof(s));
	s.messages = parse_u32(argv[1], "message count");
	s.round_trips = parse_u32(argv[2], "round-trip count");
	capacity = parse_u32(argv[3], "capacity");
	max_ms = parse_u32(argv[4], "time limit");
	if (capacity < KT_RING_MIN_CAPACITY || capacity > KT_RING_MAX_CAPACITY || (capacity & (capacity - 1)))
		die("capacity %u is not a power of two in [64, 2^30]", capacity);
	s.max_msg = KT_RING_MAX_MSG(capacity);
	nsizes = argc - 5;
	for (int i = 0; i < nsizes; i++) {
		sizes[i] = parse_u32(argv[5 + i], "size");
		if (sizes[i] < 4 || sizes[i] > s.max_msg)
			die("size %u outside [4, %u]", sizes[i], s.max_msg);
	}

	s.region = KT_RING_SIZE((size_t)capacity);
	size_t stride = (s.region + RING_GAP - 1) / RING_GAP * RING_GAP;
	uint8_t *mem = mmap(NULL, 2 * stride, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap failed");
	s.mem1 = mem;
	s.mem2 = mem + stride;
	s.samples = calloc(s.round_trips, sizeof(uint64_t));
	if (!s.samples)
		die("out of memory");

	printf("{\"capacity\": %u, \"messages\": %u, \"round_trips\": %u, \"sizes\": [", capacity,
	       s.messages, s.round_trips);
	for (int i = 0; i < nsizes; i++) {
		uint64_t sum = 0;
		uint32_t msgs, rtts;

		s.size = sizes[i];
		run_pair(&s, capacity, max_ms, producer, consumer);
		uint64_t elapsed = s.t_end - s.t_start;

		msgs = s.done;
		run_pair(&s, capacity, max_ms, pinger, echoer);
		rtts = s.done;
		if (msgs == 0 || rtts == 0)
			die("size %u: nothing done within %u ms", s.size, max_ms);
		for (uint32_t k = 0; k < rtts; k++)
			sum += s.samples[k];
		qsort(s.samples, rtts, sizeof(uint64_t), cmp_u64);
		printf("%s{\"size\": %u, \"msgs_per_s\": %.1f, \"elapsed_ns\": %llu, \"messages\": %u, "
		       "\"round_trips\": %u, \"full_spins\": %llu, \"empty_spins\": %llu, "
		       "\"rtt_ns\": {\"p50\": %llu, \"p90\": %llu, \"p99\": %llu, \"min\": %llu, \"mean\": %.1f}}",
		       i ? ", " : "", s.size, (double)msgs * 1e9 / (double)elapsed,
		       (unsigned long long)elapsed, msgs, rtts, (unsigned long long)s.full_spins,
		       (unsigned long long)s.empty_spins,
		       (unsigned long long)percentile(s.samples, rtts, 50),
		       (unsigned long long)percentile(s.samples, rtts, 90),
		       (unsigned long long)percentile(s.samples, rtts, 99),
		       (unsigned long long)s.samples[0], (double)sum / rtts);
	}
	printf("]}\n");
	return 0;
}
