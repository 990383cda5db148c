/*
 * Host-side harness for the guest eBPF JIT (guest/sdk/src/bpf-jit.c), built with the host's gcc
 * by test/unit/bpf-jit-native.test.ts.
 *
 * The context memory is mapped at 0x100000000, the address the TS interpreter gives its memory
 * argument (BPF_MEMORY_BASE), so pointers into it are the same in both and results compare
 * bit for bit.
 *
 *   bpf-jit-host run [CAP] stdin: records; prints "ok <r0> <code bytes> <memory hex> <helper 1
 *                          calls>" or "err <code>" per record; CAP bounds the code buffer
 *                          (default 1 MiB)
 *   bpf-jit-host bench N   stdin: records; prints "bench <compile ns> <run ns> <r0>", run
 *                          time averaged over N calls
 *   bpf-jit-host native NAME N
 *                          times the C version of a benchmark program: "native <ns> <r0>"
 *
 * A record is u32 slots, u32 memory bytes, u32 maps, the instructions (8 bytes a slot), the
 * memory, then for each map u64 handle, u64 data, u32 value_size, u32 max_entries, and when there
 * are maps one byte per slot: 0, or k to inline the lookup there as map k - 1. Without maps the
 * program goes to kt_bpf_jit_compile, with them to kt_bpf_jit_compile_inline. Helper 1 is an
 * array lookup when r1 is a map's handle (the layout of docs/bpf-runtime.md), else h_mix.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <kvmtalk.h>

#define MEM_BASE 0x100000000ul
#define MEM_MAX 65536
#define CODE_MAX (1u << 20)
#define MAX_SLOTS 8192
#define MAX_MAPS 16

static uint8_t *mem;
static uint8_t *code;

/* The current record's array maps and the lookups to inline. */
static uint64_t map_handle[MAX_MAPS];
static struct kt_bpf_jit_array maps[MAX_MAPS];
static uint32_t nmaps;
static const struct kt_bpf_jit_array *sites[MAX_SLOTS];
static unsigned long lookup_calls;

/* Test helpers: the TS side implements the same functions. */
static uint64_t h_mix(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e)
{
	return ((a ^ (b << 1)) + c * 3 - (d >> 2)) ^ (e + 0x1234);
}

static uint64_t h_const(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e)
{
	(void)a; (void)b; (void)c; (void)d; (void)e;
	return 42;
}

/* Stores b at the 8 bytes at a (the tests only pass addresses in the memory area). */
static uint64_t h_store(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e)
{
	(void)c; (void)d; (void)e;
	if (a < MEM_BASE || a + 8 > MEM_BASE + MEM_MAX)
		abort();
	memcpy((void *)(uintptr_t)a, &b, 8);
	return a - MEM_BASE;
}

/* map_lookup_elem for the record's maps (key: a u32 the program put on its stack), else h_mix. */
static uint64_t h_lookup(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e)
{
	lookup_calls++;
	for (uint32_t k = 0; k < nmaps; k++) {
		if (map_handle[k] != a)
			continue;
		uint32_t key;
		memcpy(&key, (const void *)(uintptr_t)b, 4);
		return key < maps[k].max_entries ? maps[k].data + (uint64_t)key * ((maps[k].value_size + 7ull) & ~7ull) : 0;
	}
	return h_mix(a, b, c, d, e);
}

static kt_bpf_helper_fn helper(int32_t id)
{
	switch (id) {
	case 1: return h_lookup;
	case 2: return h_const;
	case 3: return h_store;
	default: return NULL;
	}
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int read_exact(void *p, size_t n)
{
	return fread(p, 1, n, stdin) == n;
}

/* Reads one record into insns/mem/maps/sites; 0 at a clean end of input. */
static int read_record(struct kt_bpf_insn *insns, uint32_t *slots, uint32_t *mem_len)
{
	uint32_t hdr[3];
	uint8_t site[MAX_SLOTS];

	if (!read_exact(hdr, sizeof(hdr)))
		return 0;
	if (hdr[0] > MAX_SLOTS || hdr[1] > MEM_MAX || hdr[2] > MAX_MAPS) {
		fprintf(stderr, "bad record: %u slots, %u bytes, %u maps\n", hdr[0], hdr[1], hdr[2]);
		exit(2);
	}
	if (!read_exact(insns, hdr[0] * 8u) || !read_exact(mem, hdr[1])) {
		fprintf(stderr, "truncated record\n");
		exit(2);
	}
	nmaps = hdr[2];
	for (uint32_t k = 0; k < nmaps; k++) {
		if (!read_exact(&map_handle[k], 8) || !read_exact(&maps[k].data, 8) || !read_exact(&maps[k].value_size, 4) ||
		    !read_exact(&maps[k].max_entries, 4)) {
			fprintf(stderr, "truncated record\n");
			exit(2);
		}
	}
	if (nmaps && !read_exact(site, hdr[0])) {
		fprintf(stderr, "truncated record\n");
		exit(2);
	}
	for (uint32_t i = 0; i < hdr[0]; i++)
		sites[i] = nmaps && site[i] && site[i] <= nmaps ? &maps[site[i] - 1] : NULL;
	*slots = hdr[0];
	*mem_len = hdr[1];
	return 1;
}

static long compile(const struct kt_bpf_insn *insns, uint32_t slots, unsigned long cap)
{
	if (!nmaps)
		return kt_bpf_jit_compile(insns, slots, helper, code, cap);
	return kt_bpf_jit_compile_inline(insns, slots, helper, sites, code, cap);
}

static void run_all(unsigned long cap)
{
	static struct kt_bpf_insn insns[MAX_SLOTS];
	uint32_t slots, mem_len;

	while (read_record(insns, &slots, &mem_len)) {
		long len = compile(insns, slots, cap);

		if (len < 0) {
			printf("err %ld\n", len);
		} else {
			uint64_t r0;

			lookup_calls = 0;
			r0 = ((kt_bpf_jit_fn)code)(mem);
			printf("ok %016llx %ld ", (unsigned long long)r0, len);
			for (uint32_t i = 0; i < mem_len; i++)
				printf("%02x", mem[i]);
			printf(" %lu\n", lookup_calls);
		}
		fflush(stdout);
	}
}

static void bench(long iters)
{
	static struct kt_bpf_insn insns[MAX_SLOTS];
	uint32_t slots, mem_len;

	while (read_record(insns, &slots, &mem_len)) {
		uint64_t t0, t1, r0;
		long compiles = 0, len;

		/* Compile repeatedly for about 20 ms. */
		t0 = now_ns();
		do {
			len = compile(insns, slots, CODE_MAX);
			compiles++;
			t1 = now_ns();
		} while (len >= 0 && t1 - t0 < 20000000u);
		if (len < 0) {
			printf("err %ld\n", len);
			continue;
		}
		uint64_t compile_ns = (t1 - t0) / (uint64_t)compiles;
		kt_bpf_jit_fn fn = (kt_bpf_jit_fn)code;
		r0 = fn(mem); /* the result on the memory as given; later calls may see it changed */
		t0 = now_ns();
		for (long i = 0; i < iters; i++)
			fn(mem);
		t1 = now_ns();
		printf("bench %llu %.2f %016llx\n", (unsigned long long)compile_ns, (double)(t1 - t0) / (double)iters,
		       (unsigned long long)r0);
		fflush(stdout);
	}
}

/* ---- the benchmark programs in C (the TS test has the same ones in eBPF) ------------------ */

/* Sum of the first 64 u64 words of the context. */
static __attribute__((noinline)) uint64_t c_sum(void *ctx)
{
	const uint64_t *p = ctx;
	uint64_t s = 0;

	for (int i = 0; i < 64; i++)
		s += p[i];
	return s;
}

/* 32-bit FNV-1a over the first 256 bytes of the context. */
static __attribute__((noinline)) uint64_t c_fnv(void *ctx)
{
	const uint8_t *p = ctx;
	uint32_t h = 2166136261u;

	for (int i = 0; i < 256; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

/* An affinity-hook-like decision on a 16-byte context (vcpu, requested, host_cpus, flags). */
static __attribute__((noinline)) uint64_t c_affinity(void *ctx)
{
	const uint32_t *c = ctx;

	if (c[2] == 0)
		return c[1];
	if (c[1] >= c[2])
		return (c[0] * 7 + 3) % c[2];
	return c[1];
}

static void native(const char *name, long iters)
{
	uint64_t (*fn)(void *) = !strcmp(name, "sum") ? c_sum : !strcmp(name, "fnv") ? c_fnv :
				 !strcmp(name, "affinity") ? c_affinity : NULL;
	uint64_t t0, t1, r0 = 0;

	if (!fn) {
		fprintf(stderr, "unknown program %s\n", name);
		exit(2);
	}
	if (!read_exact(mem, MEM_MAX)) {
		fprintf(stderr, "native wants %d bytes of memory on stdin\n", MEM_MAX);
		exit(2);
	}
	t0 = now_ns();
	for (long i = 0; i < iters; i++) {
		r0 = fn(mem);
		__asm__ volatile("" ::: "memory"); /* each call really runs */
	}
	t1 = now_ns();
	printf("native %.2f %016llx\n", (double)(t1 - t0) / (double)iters, (unsigned long long)r0);
}

int main(int argc, char **argv)
{
	mem = mmap((void *)MEM_BASE, MEM_MAX, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	code = mmap(NULL, CODE_MAX, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem != (void *)MEM_BASE || code == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	if ((argc == 2 || argc == 3) && !strcmp(argv[1], "run")) {
		unsigned long cap = argc == 3 ? strtoul(argv[2], NULL, 0) : CODE_MAX;

		run_all(cap < CODE_MAX ? cap : CODE_MAX);
	}
	else if (argc == 3 && !strcmp(argv[1], "bench"))
		bench(atol(argv[2]));
	else if (argc == 4 && !strcmp(argv[1], "native"))
		native(argv[2], atol(argv[3]));
	else {
		fprintf(stderr, "usage: bpf-jit-host run [CAP] | bench ITERS | native sum|fnv|affinity ITERS\n");
		return 2;
	}
	return 0;
}
