/*
 * Internals shared by the eBPF runtime's modules (bpf-*.c). Not part of the SDK's API.
 *
 * The core (image, maps, verifier, interpreter, prog) uses nothing guest-only, so the native
 * test harness (test/native/bpf-runtime-host.c) compiles it with the host's gcc; the one
 * guest-only piece it needs, kt_bpf__helper(), lives in bpf-helpers.c (or the harness's shim).
 */
#ifndef KVMTALK_BPF_INTERNAL_H
#define KVMTALK_BPF_INTERNAL_H

#include <kvmtalk.h>

/* ---- KTBP image (docs/bpf-runtime.md, "Program image") ---- */
#define KT_BPF_IMAGE_MAGIC   0x5042544bu /* "KTBP" */
#define KT_BPF_IMAGE_VERSION 1
#define KT_BPF_IMAGE_HEADER  16
#define KT_BPF_MAPDEF_SIZE   32
#define KT_BPF_MAX_MAPS      16

/* Map types (Linux's numbers). */
#define KT_BPF_MAP_HASH  1
#define KT_BPF_MAP_ARRAY 2
#define KT_BPF_MAP_NAME_MAX 16

/** A map definition as an image carries it. */
struct kt_bpf_map_def {
	char name[KT_BPF_MAP_NAME_MAX];
	uint32_t type, key_size, value_size, max_entries;
};

/** A parsed image: insns points into the image (may be unaligned: copy with memcpy). */
struct kt_bpf_image {
	uint32_t insn_count, map_count;
	struct kt_bpf_map_def maps[KT_BPF_MAX_MAPS];
	const uint8_t *insns;
};

/** Validates and parses image; 0 or -KT_EINVAL / -KT_E2BIG with err filled in. */
int kt_bpf__image_parse(struct kt_bpf_image *out, const void *image, uint32_t len, struct kt_bpf_verify_error *err);

/* ---- maps (docs/bpf-runtime.md, "Maps in guest memory") ---- */
#define KT_BPF_MAPDIR_MAGIC    0x4d42544bu /* "KTBM" */
#define KT_BPF_MAPDIR_VERSION  1
#define KT_BPF_MAPDIR_CAPACITY 64
#define KT_BPF_HASH_EMPTY   0
#define KT_BPF_HASH_USED    1
#define KT_BPF_HASH_DELETED 2

/** A directory entry, exactly 64 bytes. */
struct kt_bpf_map {
	char name[KT_BPF_MAP_NAME_MAX];
	uint32_t type, key_size, value_size, max_entries;
	uint64_t data, bytes;
	uint32_t lock, live, buckets, zero;
};
_Static_assert(sizeof(struct kt_bpf_map) == 64, "map directory entry is 64 bytes");

/** The map named by def, created if new; -KT_EINVAL if it exists with another definition, -KT_ENOMEM when full. */
int kt_bpf__map_get(struct kt_bpf_map **out, const struct kt_bpf_map_def *def);

/* Helpers 1-3 (r1 = map pointer, r2 = key, r3 = value, r4 = flags). */
uint64_t kt_bpf__helper_map_lookup(uint64_t map, uint64_t key, uint64_t, uint64_t, uint64_t);
uint64_t kt_bpf__helper_map_update(uint64_t map, uint64_t key, uint64_t value, uint64_t flags, uint64_t);
uint64_t kt_bpf__helper_map_delete(uint64_t map, uint64_t key, uint64_t, uint64_t, uint64_t);

/** A helper's function by id (bpf-helpers.c in the guest), NULL for an unknown id. */
kt_bpf_helper_fn kt_bpf__helper(int32_t id);

/* ---- instruction encoding ---- */
#define KT_BPF_LDDW 0x18
#define KT_BPF_PSEUDO_MAP 1
static inline unsigned kt_bpf__dst(const struct kt_bpf_insn *i) { return i->regs & 0xf; }
static inline unsigned kt_bpf__src(const struct kt_bpf_insn *i) { return i->regs >> 4; }

/* ---- verifier ---- */
/** What the verifier needs of a map: image index → sizes. */
struct kt_bpf_map_shape {
	uint32_t key_size, value_size;
};
/** Budget of processed instructions over all paths for kt_bpf_prog_load: 1M as in Linux (tests lower it). */
extern uint32_t kt_bpf__verify_budget;

/**
 * Verifies insns (n slots, lddw src 1 = map index into maps[nmaps]) for a ctx_size-byte context.
 * 0, -KT_EINVAL (unsafe: err names the slot and reason) or -KT_E2BIG (too complex).
 */
int kt_bpf__verify(const struct kt_bpf_insn *insns, uint32_t n, const struct kt_bpf_map_shape *maps, uint32_t nmaps,
		   uint32_t ctx_size, uint32_t budget, struct kt_bpf_verify_error *err);

/** A call_maps entry for a call that gets different maps on different paths. */
#define KT_BPF_CALL_MAP_MIXED 0xff
/**
 * After kt_bpf__verify accepted a program: per slot, for a call to a helper whose r1 is a map,
 * 1 + the image index of the map r1 held on every path that reached it, KT_BPF_CALL_MAP_MIXED
 * when paths disagree, 0 for any other slot or one never reached. Valid until the next verify.
 */
const uint8_t *kt_bpf__verify_call_maps(void);

/* ---- interpreter ---- */
/** Runs a verified, resolved program (every lddw src 0) on ctx. */
uint64_t kt_bpf__interpret(const struct kt_bpf_insn *insns, void *ctx);

/* ---- shared utilities ---- */
/** Fills err (if any) with pc and a formatted reason; returns ret. */
int kt_bpf__fail(struct kt_bpf_verify_error *err, int ret, uint32_t pc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/** A spinlock word taken with a locked compare-exchange (shared with the host for maps). */
/*
 * Runtime locks each vCPU holds or is waiting for. The timer hook runs its program from an
 * interrupt handler, and CPL3 code cannot mask interrupts: if the interrupted code on the same
 * vCPU holds a map's lock and the program touches that map, the handler would spin forever. So
 * the count goes up before the lock is tried and down after it is released, and the timer skips
 * a tick while it is non-zero (kt_bpf__cpu_in_runtime).
 */
extern uint32_t kt_bpf__locks_held[KT_MAX_CPUS];
/* This vCPU's index (bpf-helpers.c in the guest; the native harness has its own). */
unsigned kt_bpf__cpu(void);

static inline int kt_bpf__cpu_in_runtime(void)
{
	return __atomic_load_n(&kt_bpf__locks_held[kt_bpf__cpu() % KT_MAX_CPUS], __ATOMIC_RELAXED) != 0;
}

static inline void kt_bpf__lock(uint32_t *word)
{
	__atomic_add_fetch(&kt_bpf__locks_held[kt_bpf__cpu() % KT_MAX_CPUS], 1, __ATOMIC_RELAXED);
	for (;;) {
		uint32_t expect = 0;
		if (__atomic_compare_exchange_n(word, &expect, 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return;
		while (__atomic_load_n(word, __ATOMIC_RELAXED))
			kt_pause();
	}
}
static inline void kt_bpf__unlock(uint32_t *word)
{
	__atomic_store_n(word, 0, __ATOMIC_RELEASE);
	__atomic_sub_fetch(&kt_bpf__locks_held[kt_bpf__cpu() % KT_MAX_CPUS], 1, __ATOMIC_RELAXED);
}

#endif /* KVMTALK_BPF_INTERNAL_H */
