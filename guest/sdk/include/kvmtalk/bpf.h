/*
 * kvmtalk guest SDK: the eBPF runtime (docs/bpf-runtime.md).
 * Included by <kvmtalk.h>; include that, not this file.
 *
 * Programs arrive as KTBP images (from the host's upcall device or anywhere else). Loading one
 * parses the image, creates or reuses its named maps, verifies the program for a context of a
 * given size and JIT-compiles it when the JIT can; running it calls the compiled code or the
 * interpreter. Hooks hold at most one program each. Everything lives in static arenas: no heap.
 *
 * Loading is serialised by one lock, so any vCPU may load; running is lock-free (programs are
 * immutable once loaded), and maps take their own locks.
 */
#ifndef KVMTALK_BPF_H
#define KVMTALK_BPF_H

#include <kvmtalk.h>

#ifdef __cplusplus
extern "C" {
#endif

/** One 8-byte instruction slot (RFC 9669); lddw takes two. */
struct kt_bpf_insn {
	uint8_t code;
	uint8_t regs; /* dst = regs & 0xf, src = regs >> 4 */
	int16_t off;
	int32_t imm;
};

/** Most instruction slots a program may have. */
#define KT_BPF_MAX_INSNS 4096
/** Bytes of eBPF stack a program gets (r10 points at its top). */
#define KT_BPF_STACK_SIZE 512

/** Hook ids (docs/bpf-runtime.md, "Hooks"). */
enum { KT_BPF_HOOK_AFFINITY = 1, KT_BPF_HOOK_CHANNEL_RX = 2, KT_BPF_HOOK_TIMER = 3 };
#define KT_BPF_HOOK_MAX 3

/** Context of the affinity hook (16 bytes). */
struct kt_bpf_affinity_ctx {
	uint32_t vcpu, requested_cpu, host_cpus, flags;
};
/** Context of the channel-rx hook (272 bytes). */
struct kt_bpf_channel_ctx {
	uint32_t channel, len;
	uint64_t seq;
	uint8_t data[256];
};
/** Context of the timer hook (16 bytes). */
struct kt_bpf_timer_ctx {
	uint64_t tick;
	uint32_t vcpu, period_us;
};

/** A helper as programs call it: r1..r5 in, r0 out. */
typedef uint64_t (*kt_bpf_helper_fn)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);
/** A JIT-compiled program: SysV ABI, r1 = ctx, returns r0. */
typedef uint64_t (*kt_bpf_jit_fn)(void *ctx);

/** Why a load failed. */
struct kt_bpf_verify_error {
	uint32_t pc; /* instruction slot, or 0xffffffff when not about one instruction */
	char reason[120];
};

/** A map: its directory entry (layout in docs/bpf-runtime.md, "Maps in guest memory"). */
struct kt_bpf_map;
/** A loaded program (instruction copy, maps, jitted code or NULL). */
struct kt_bpf_prog;

/**
 * Parses a KTBP image, creates or reuses its maps, resolves map references, verifies it for a
 * context of ctx_size bytes, and JIT-compiles it when possible. Returns 0 (with *out set) or
 * -KT_E*: verifier and image failures give -KT_EINVAL (or -KT_E2BIG for too long / too complex)
 * with err filled in (err may be NULL); -KT_ENOMEM when the program pool or map storage is full.
 */
int kt_bpf_prog_load(struct kt_bpf_prog **out, const void *image, uint32_t len, uint32_t ctx_size,
		     struct kt_bpf_verify_error *err);
/** Runs p on ctx (ctx_size bytes it may read and write): the JIT's code if compiled, else the interpreter. */
uint64_t kt_bpf_prog_run(const struct kt_bpf_prog *p, void *ctx);
/** Runs p with the interpreter, whether or not it was compiled. */
uint64_t kt_bpf_prog_interpret(const struct kt_bpf_prog *p, void *ctx);
/** 1 when p runs as native code, 0 when interpreted. */
int kt_bpf_prog_is_jitted(const struct kt_bpf_prog *p);
/** Gives p's slot and code space back. p must not be running or attached. NULL is ignored. */
void kt_bpf_prog_free(struct kt_bpf_prog *p);

/**
 * Loads an image for hook (its context size) and attaches it, replacing and freeing what was
 * there. Returns 0 or what kt_bpf_prog_load returns; -KT_EINVAL for an unknown hook.
 */
int kt_bpf_hook_load(uint32_t hook, const void *image, uint32_t len, struct kt_bpf_verify_error *err);
/** Detaches and frees hook's program: 0, -KT_ENOENT when empty, -KT_EINVAL for an unknown hook. */
int kt_bpf_hook_unload(uint32_t hook);
/** 1 when a program is attached at hook, else 0. */
int kt_bpf_hook_attached(uint32_t hook);
/** Runs hook's program on ctx: 1 ran (*r0 = its answer, r0 may be NULL), 0 nothing attached. */
int kt_bpf_hook_run(uint32_t hook, void *ctx, uint64_t *r0);
/** Bytes of hook's context, 0 for an unknown hook. */
uint32_t kt_bpf_hook_ctx_size(uint32_t hook);

/** The map called name, or NULL. */
struct kt_bpf_map *kt_bpf_map_find(const char *name);
/** Pointer to the value for key (key_size bytes), or NULL. The pointer stays valid memory. */
void *kt_bpf_map_lookup(struct kt_bpf_map *m, const void *key);
/**
 * Sets key's value. flags: 0 any, 1 only new, 2 only existing. Returns 0, -KT_EEXIST,
 * -KT_ENOENT, -KT_E2BIG (hash full or index out of range) or -KT_EINVAL (flags).
 */
int kt_bpf_map_update(struct kt_bpf_map *m, const void *key, const void *value, uint64_t flags);
/** Removes key: 0, -KT_ENOENT, or -KT_EINVAL for an array map. */
int kt_bpf_map_delete(struct kt_bpf_map *m, const void *key);
/** Guest-physical address of the map directory (what the host is told). */
uint64_t kt_bpf_map_directory(void);

/**
 * The JIT (guest/sdk/src/bpf-jit.c). insns: a verified program in which every lddw has
 * src_reg 0; helper(id) gives a helper's function; code/cap: writable and executable memory.
 * Returns the bytes of code written, -KT_E2BIG when cap is too small, or -KT_EOPNOTSUPP for
 * what it does not compile (the runtime then interprets). The code is called as
 * ((kt_bpf_jit_fn)code)(ctx) and keeps a 512-byte eBPF stack on the native stack.
 */
long kt_bpf_jit_compile(const struct kt_bpf_insn *insns, uint32_t n, kt_bpf_helper_fn (*helper)(int32_t id),
			uint8_t *code, unsigned long cap);

/** An array map as the JIT needs it to inline lookups: value i is at data + i * round_up(value_size, 8). */
struct kt_bpf_jit_array {
	uint64_t data;
	uint32_t value_size, max_entries;
};

/**
 * kt_bpf_jit_compile, with array-map lookups inlined as Linux does: arrays (n entries, or NULL
 * for none) gives, for the slot of a `call 1` (map_lookup_elem), the array map that r1 holds
 * there on every path (what the verifier proved), or NULL to call the helper. Such a call becomes
 * r0 = (u32 key at r2) < max_entries ? data + key * stride : 0, and leaves r1-r5 as they were
 * (a call clobbers them anyway). Entries for other slots are ignored. -KT_EINVAL for a map whose
 * stride does not fit in 31 bits.
 */
long kt_bpf_jit_compile_inline(const struct kt_bpf_insn *insns, uint32_t n, kt_bpf_helper_fn (*helper)(int32_t id),
			       const struct kt_bpf_jit_array *const *arrays, uint8_t *code, unsigned long cap);

#ifdef __cplusplus
}
#endif

#endif /* KVMTALK_BPF_H */
