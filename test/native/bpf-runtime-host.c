/*
 * The guest eBPF runtime's core (bpf-image/maps/verifier/interp/prog.c) built for the host, driven
 * by test/unit/bpf-runtime-native.test.ts: one command per stdin line, one answer per stdout line.
 *
 *   verify CTX_SIZE IMAGE          → ok | err RET PC REASON
 *   run CTX_SIZE IMAGE CTX         → ok R0 CTX_AFTER | err ...
 *   time CTX_SIZE IMAGE N          → ok MICROSECONDS_PER_LOAD | err ...
 *   load CTX_SIZE IMAGE            → ok SLOT | err ...             (kept until `free SLOT`)
 *   free SLOT                      → ok
 *   hook HOOK IMAGE                → ret RET [PC REASON]
 *   unhook HOOK                    → ret RET
 *   hookrun HOOK CTX               → ran N R0 CTX_AFTER
 *   hooksize HOOK                  → size N
 *   update NAME KEY VALUE FLAGS    → ret RET
 *   lookup NAME KEY                → val VALUE | null
 *   delete NAME KEY                → ret RET
 *   dir                            → dir ADDRESS BYTES (header + used entries)
 *   storage NAME                   → mem BYTES   (the `bytes` at `data` of NAME's directory entry)
 *   budget N                       → ok   (the verifier's instruction budget from now on)
 *   sites                          → sites PC=MAP:VALUE_SIZE:MAX_ENTRIES ... | sites -
 *                                    (the lookups the last load asked the JIT to inline)
 *
 * Byte strings are hex ("-" for none), numbers decimal, addresses 0x-hex. Helpers here are
 * deterministic stand-ins for the guest-only ones: 5 counts up from 1000, 7 is xorshift32 from
 * 2463534242 (reset by every `run`), 8 is 0.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../guest/sdk/src/bpf-internal.h"

/* ---- shims for what the core takes from the rest of the SDK ---- */

uint32_t kt_bpf__locks_held[KT_MAX_CPUS];

unsigned kt_bpf__cpu(void)
{
	return 0;
}

int kt_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	return vsnprintf(buf, size, fmt, ap);
}

int kt_snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

/* What the runtime asked the JIT to inline on the last compile: "sites" prints it. */
static struct kt_bpf_jit_array jit_sites[KT_BPF_MAX_INSNS];
static uint8_t jit_inline[KT_BPF_MAX_INSNS];
static uint32_t jit_n;

/* Host memory is not executable: every program is interpreted here; the JIT's input is kept. */
long kt_bpf_jit_compile_inline(const struct kt_bpf_insn *insns, uint32_t n, kt_bpf_helper_fn (*helper)(int32_t id),
			       const struct kt_bpf_jit_array *const *arrays, uint8_t *code, unsigned long cap)
{
	(void)insns, (void)helper, (void)code, (void)cap;
	jit_n = n;
	for (uint32_t pc = 0; pc < n; pc++) {
		jit_inline[pc] = arrays && arrays[pc];
		if (jit_inline[pc])
			jit_sites[pc] = *arrays[pc];
	}
	return -KT_EOPNOTSUPP;
}

static uint64_t ktime = 1000;
static uint32_t rng = 2463534242u;

static uint64_t h_ktime(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e)
{
	(void)a, (void)b, (void)c, (void)d, (void)e;
	return ktime++;
}
static uint64_t h_prandom(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e)
{
	(void)a, (void)b, (void)c, (void)d, (void)e;
	rng ^= rng << 13;
	rng ^= rng >> 17;
	rng ^= rng << 5;
	return rng;
}
static uint64_t h_cpu(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e)
{
	(void)a, (void)b, (void)c, (void)d, (void)e;
	return 0;
}

kt_bpf_helper_fn kt_bpf__helper(int32_t id)
{
	switch (id) {
	case 1: return kt_bpf__helper_map_lookup;
	case 2: return kt_bpf__helper_map_update;
	case 3: return kt_bpf__helper_map_delete;
	case 5: return h_ktime;
	case 7: return h_prandom;
	case 8: return h_cpu;
	default: return NULL;
	}
}

/* ---- protocol ---- */

/* Decodes hex (or "-") into a fresh buffer of at least min bytes; *len = decoded bytes. */
static uint8_t *unhex(const char *s, size_t *len, size_t min)
{
	size_t n = s && strcmp(s, "-") ? strlen(s) / 2 : 0;
	uint8_t *b = calloc(n > min ? n : min ? min : 1, 1);
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		if (sscanf(s + 2 * i, "%2x", &v) != 1) {
			fprintf(stderr, "bad hex\n");
			exit(2);
		}
		b[i] = (uint8_t)v;
	}
	*len = n;
	return b;
}

static void hex(const void *p, size_t n)
{
	const uint8_t *b = p;
	if (!n)
		putchar('-');
	for (size_t i = 0; i < n; i++)
		printf("%02x", b[i]);
}

static void print_err(int r, const struct kt_bpf_verify_error *e)
{
	printf("err %d %d %s\n", r, e->pc == 0xffffffffu ? -1 : (int)e->pc, e->reason);
}

static struct kt_bpf_prog *slots[64];

static void cmd_run(char **a, int mode)
{
	size_t ilen, clen;
	uint32_t ctx_size = (uint32_t)strtoul(a[1], NULL, 10);
	uint8_t *img = unhex(a[2], &ilen, 0);
	struct kt_bpf_verify_error e = { 0, "" };
	struct kt_bpf_prog *p;
	if (mode == 't') {
		int n = atoi(a[3]);
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (int i = 0; i < n; i++) {
			int r = kt_bpf_prog_load(&p, img, (uint32_t)ilen, ctx_size, &e);
			if (r) {
				print_err(r, &e);
				free(img);
				return;
			}
			kt_bpf_prog_free(p);
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		printf("ok %.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / n);
		free(img);
		return;
	}
	int r = kt_bpf_prog_load(&p, img, (uint32_t)ilen, ctx_size, &e);
	free(img);
	if (r) {
		print_err(r, &e);
		return;
	}
	if (mode == 'l') {
		for (unsigned k = 0; k < 64; k++)
			if (!slots[k]) {
				slots[k] = p;
				printf("ok %u\n", k);
				return;
			}
		printf("err 0 -1 harness slots full\n");
		return;
	}
	if (mode == 'v') {
		kt_bpf_prog_free(p);
		printf("ok\n");
		return;
	}
	/* ctx: exactly ctx_size bytes on the heap, so ASan sees any access outside it */
	uint8_t *ctx = unhex(a[3], &clen, ctx_size);
	rng = 2463534242u;
	ktime = 1000;
	uint64_t r0 = kt_bpf_prog_run(p, ctx);
	printf("ok %llu ", (unsigned long long)r0);
	hex(ctx, ctx_size);
	putchar('\n');
	kt_bpf_prog_free(p);
	free(ctx);
}

static struct kt_bpf_map *map_named(const char *name)
{
	struct kt_bpf_map *m = kt_bpf_map_find(name);
	if (!m) {
		fprintf(stderr, "no map %s\n", name);
		exit(2);
	}
	return m;
}

static int command(char **a, int n)
{
	if (!strcmp(a[0], "verify") && n == 3)
		cmd_run(a, 'v');
	else if (!strcmp(a[0], "run") && n == 4)
		cmd_run(a, 'r');
	else if (!strcmp(a[0], "time") && n == 4)
		cmd_run(a, 't');
	else if (!strcmp(a[0], "load") && n == 3)
		cmd_run(a, 'l');
	else if (!strcmp(a[0], "free") && n == 2) {
		unsigned k = (unsigned)atoi(a[1]) % 64;
		kt_bpf_prog_free(slots[k]);
		slots[k] = NULL;
		printf("ok\n");
	} else if (!strcmp(a[0], "hook") && n == 3) {
		size_t len;
		uint8_t *img = unhex(a[2], &len, 0);
		struct kt_bpf_verify_error e = { 0, "" };
		int r = kt_bpf_hook_load((uint32_t)atoi(a[1]), img, (uint32_t)len, &e);
		free(img);
		if (r)
			printf("ret %d %d %s\n", r, e.pc == 0xffffffffu ? -1 : (int)e.pc, e.reason);
		else
			printf("ret 0\n");
	} else if (!strcmp(a[0], "unhook") && n == 2) {
		printf("ret %d\n", kt_bpf_hook_unload((uint32_t)atoi(a[1])));
	} else if (!strcmp(a[0], "hookrun") && n == 3) {
		uint32_t hook = (uint32_t)atoi(a[1]), size = kt_bpf_hook_ctx_size(hook);
		size_t len;
		uint8_t *ctx = unhex(a[2], &len, size);
		uint64_t r0 = 0;
		int ran = kt_bpf_hook_run(hook, ctx, &r0);
		printf("ran %d %llu ", ran, (unsigned long long)r0);
		hex(ctx, size);
		putchar('\n');
		free(ctx);
	} else if (!strcmp(a[0], "hooksize") && n == 2) {
		printf("size %u\n", kt_bpf_hook_ctx_size((uint32_t)strtoul(a[1], NULL, 10)));
	} else if (!strcmp(a[0], "update") && n == 5) {
		size_t kl, vl;
		uint8_t *k = unhex(a[2], &kl, 64), *v = unhex(a[3], &vl, 1024);
		printf("ret %d\n", kt_bpf_map_update(map_named(a[1]), k, v, strtoull(a[4], NULL, 10)));
		free(k);
		free(v);
	} else if (!strcmp(a[0], "lookup") && n == 3) {
		size_t kl;
		uint8_t *k = unhex(a[2], &kl, 64);
		struct kt_bpf_map *m = map_named(a[1]);
		uint8_t *v = kt_bpf_map_lookup(m, k);
		if (v) {
			printf("val ");
			hex(v, m->value_size);
			putchar('\n');
		} else {
			printf("null\n");
		}
		free(k);
	} else if (!strcmp(a[0], "delete") && n == 3) {
		size_t kl;
		uint8_t *k = unhex(a[2], &kl, 64);
		printf("ret %d\n", kt_bpf_map_delete(map_named(a[1]), k));
		free(k);
	} else if (!strcmp(a[0], "dir") && n == 1) {
		const uint8_t *d = (const uint8_t *)(uintptr_t)kt_bpf_map_directory();
		uint32_t count;
		memcpy(&count, d + 12, 4);
		printf("dir 0x%llx ", (unsigned long long)(uintptr_t)d);
		hex(d, 64 + 64 * (size_t)count);
		putchar('\n');
	} else if (!strcmp(a[0], "sites") && n == 1) {
		/* "sites PC=NAME:VALUE_SIZE:MAX_ENTRIES ..." (NAME: the map whose storage it is) or "sites -" */
		const uint8_t *d = (const uint8_t *)(uintptr_t)kt_bpf_map_directory();
		uint32_t count, shown = 0;
		memcpy(&count, d + 12, 4);
		printf("sites");
		for (uint32_t pc = 0; pc < jit_n; pc++) {
			if (!jit_inline[pc])
				continue;
			const struct kt_bpf_map *m = (const struct kt_bpf_map *)(d + 64);
			uint32_t k = 0;
			while (k < count && m[k].data != jit_sites[pc].data)
				k++;
			printf(" %u=%s:%u:%u", pc, k < count ? m[k].name : "?", jit_sites[pc].value_size, jit_sites[pc].max_entries);
			shown++;
		}
		printf("%s\n", shown ? "" : " -");
	} else if (!strcmp(a[0], "budget") && n == 2) {
		kt_bpf__verify_budget = (uint32_t)strtoul(a[1], NULL, 10);
		printf("ok\n");
	} else if (!strcmp(a[0], "storage") && n == 2) {
		const struct kt_bpf_map *m = map_named(a[1]);
		printf("mem ");
		hex((const void *)(uintptr_t)m->data, m->bytes);
		putchar('\n');
	} else {
		return -1;
	}
	return 0;
}

int main(void)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	while ((len = getline(&line, &cap, stdin)) > 0) {
		char *a[8];
		int n = 0;
		for (char *tok = strtok(line, " \n"); tok && n < 8; tok = strtok(NULL, " \n"))
			a[n++] = tok;
		if (n == 0)
			continue;
		if (command(a, n)) {
			fprintf(stderr, "bad command %s\n", a[0]);
			return 2;
		}
		fflush(stdout);
	}
	free(line);
	return 0;
}
