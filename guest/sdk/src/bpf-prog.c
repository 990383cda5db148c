/*
 * Loading and running eBPF programs, and the hook table.
 *
 * load = parse the KTBP image → create or reuse its maps → verify (map references still as image
 * indices, so the verifier knows their shapes) → resolve each `lddw src 1` to the map's address
 * (src 0) → JIT into the code arena (inlining lookups in the array maps the verifier pinned to a
 * call site), or interpret when the JIT declines.
 *
 * Programs sit in a fixed pool of slots; their machine code takes a contiguous extent of one
 * static arena (guest memory is executable at CPL3). Freeing a program gives both back.
 */
#include "bpf-internal.h"

#define PROG_SLOTS 16
#define CODE_BYTES (256u << 10)

struct kt_bpf_prog {
	uint32_t used, n;
	uint32_t code_off, code_len; /* code_len 0: interpreted */
	struct kt_bpf_insn insns[KT_BPF_MAX_INSNS];
};

uint32_t kt_bpf__verify_budget = 1000000;

static struct kt_bpf_prog progs[PROG_SLOTS];
static uint8_t code_arena[CODE_BYTES] __attribute__((aligned(4096)));
/* Serialises loads, frees and hook changes (the verifier and map creation are single-user). */
static uint32_t load_lock;

static struct {
	struct kt_bpf_prog *prog;
	uint32_t active; /* runs in progress: a replaced program is freed once this drops to 0 */
} hooks[KT_BPF_HOOK_MAX + 1];

static const uint32_t HOOK_CTX_SIZE[KT_BPF_HOOK_MAX + 1] = {
	[KT_BPF_HOOK_AFFINITY] = sizeof(struct kt_bpf_affinity_ctx),
	[KT_BPF_HOOK_CHANNEL_RX] = sizeof(struct kt_bpf_channel_ctx),
	[KT_BPF_HOOK_TIMER] = sizeof(struct kt_bpf_timer_ctx),
};

/* The largest free extent of the code arena (16-byte granules). */
static void largest_gap(uint32_t *off, uint32_t *len)
{
	uint32_t start[PROG_SLOTS], end[PROG_SLOTS], n = 0;
	for (unsigned k = 0; k < PROG_SLOTS; k++) {
		if (!progs[k].used || !progs[k].code_len)
			continue;
		uint32_t j = n++;
		for (; j > 0 && start[j - 1] > progs[k].code_off; j--) {
			start[j] = start[j - 1];
			end[j] = end[j - 1];
		}
		start[j] = progs[k].code_off;
		end[j] = progs[k].code_off + progs[k].code_len;
	}
	uint32_t at = 0;
	*off = *len = 0;
	for (uint32_t j = 0; j <= n; j++) {
		uint32_t stop = j < n ? start[j] : CODE_BYTES;
		if (stop - at > *len) {
			*off = at;
			*len = stop - at;
		}
		if (j < n)
			at = end[j];
	}
}

/*
 * Compiles p, inlining the lookups whose map the verifier pinned to an array (call_maps: its
 * per-slot answer, map indices into maps[]). Under load_lock, which guards the static tables.
 */
static void jit(struct kt_bpf_prog *p, const uint8_t *call_maps, struct kt_bpf_map *const *maps, uint32_t nmaps)
{
	static struct kt_bpf_jit_array arrays[KT_BPF_MAX_MAPS];
	static const struct kt_bpf_jit_array *sites[KT_BPF_MAX_INSNS];
	for (uint32_t k = 0; k < nmaps; k++)
		arrays[k] = (struct kt_bpf_jit_array){ maps[k]->data, maps[k]->value_size, maps[k]->max_entries };
	for (uint32_t pc = 0; pc < p->n; pc++) {
		uint32_t m = call_maps[pc];
		int lookup = p->insns[pc].code == 0x85 && p->insns[pc].imm == 1; /* map_lookup_elem */
		sites[pc] = lookup && m >= 1 && m <= nmaps && maps[m - 1]->type == KT_BPF_MAP_ARRAY ? &arrays[m - 1] : NULL;
	}
	uint32_t off, cap;
	largest_gap(&off, &cap);
	long n = cap ? kt_bpf_jit_compile_inline(p->insns, p->n, kt_bpf__helper, sites, code_arena + off, cap) : -KT_E2BIG;
	if (n <= 0)
		return; /* the interpreter runs it */
	p->code_off = off;
	p->code_len = ((uint32_t)n + 15) & ~15u;
}

static int load_locked(struct kt_bpf_prog **out, const void *image, uint32_t len, uint32_t ctx_size,
		       struct kt_bpf_verify_error *err)
{
	struct kt_bpf_image img;
	int r = kt_bpf__image_parse(&img, image, len, err);
	if (r)
		return r;
	struct kt_bpf_prog *p = NULL;
	for (unsigned k = 0; k < PROG_SLOTS && !p; k++)
		if (!progs[k].used)
			p = &progs[k];
	if (!p)
		return kt_bpf__fail(err, -KT_ENOMEM, 0xffffffffu, "no free program slot (%u loaded)", PROG_SLOTS);
	struct kt_bpf_map *maps[KT_BPF_MAX_MAPS];
	struct kt_bpf_map_shape shapes[KT_BPF_MAX_MAPS];
	for (uint32_t k = 0; k < img.map_count; k++) {
		r = kt_bpf__map_get(&maps[k], &img.maps[k]);
		if (r == -KT_EINVAL)
			return kt_bpf__fail(err, r, 0xffffffffu, "map %s exists with a different definition", img.maps[k].name);
		if (r)
			return kt_bpf__fail(err, r, 0xffffffffu, "no room for map %s", img.maps[k].name);
		shapes[k].key_size = img.maps[k].key_size;
		shapes[k].value_size = img.maps[k].value_size;
	}
	memcpy(p->insns, img.insns, (size_t)img.insn_count * sizeof p->insns[0]);
	p->n = img.insn_count;
	r = kt_bpf__verify(p->insns, p->n, shapes, img.map_count, ctx_size, kt_bpf__verify_budget, err);
	if (r)
		return r;
	for (uint32_t pc = 0; pc + 1 < p->n; pc++) {
		struct kt_bpf_insn *i = &p->insns[pc];
		if (i->code != KT_BPF_LDDW)
			continue;
		if (kt_bpf__src(i) == KT_BPF_PSEUDO_MAP) {
			/* the verifier checked every map reference, reachable or not; a slip must not index past maps[] */
			if (i->imm < 0 || (uint32_t)i->imm >= img.map_count)
				return kt_bpf__fail(err, -KT_EINVAL, pc, "unknown map %d", i->imm);
			uint64_t a = (uint64_t)(uintptr_t)maps[i->imm];
			i->regs &= 0x0f;
			i->imm = (int32_t)(uint32_t)a;
			i[1].imm = (int32_t)(uint32_t)(a >> 32);
		}
		pc++;
	}
	p->code_len = 0;
	p->used = 1;
	jit(p, kt_bpf__verify_call_maps(), maps, img.map_count);
	*out = p;
	return 0;
}

int kt_bpf_prog_load(struct kt_bpf_prog **out, const void *image, uint32_t len, uint32_t ctx_size,
		     struct kt_bpf_verify_error *err)
{
	if (!out)
		return kt_bpf__fail(err, -KT_EINVAL, 0xffffffffu, "no place for the program (out is NULL)");
	kt_bpf__lock(&load_lock);
	int r = load_locked(out, image, len, ctx_size, err);
	kt_bpf__unlock(&load_lock);
	return r;
}

uint64_t kt_bpf_prog_interpret(const struct kt_bpf_prog *p, void *ctx)
{
	return kt_bpf__interpret(p->insns, ctx);
}

uint64_t kt_bpf_prog_run(const struct kt_bpf_prog *p, void *ctx)
{
	if (p->code_len)
		return ((kt_bpf_jit_fn)(void *)(code_arena + p->code_off))(ctx);
	return kt_bpf__interpret(p->insns, ctx);
}

int kt_bpf_prog_is_jitted(const struct kt_bpf_prog *p)
{
	return p->code_len != 0;
}

static void free_locked(struct kt_bpf_prog *p)
{
	p->used = 0;
	p->code_len = 0;
}

void kt_bpf_prog_free(struct kt_bpf_prog *p)
{
	if (!p)
		return;
	kt_bpf__lock(&load_lock);
	free_locked(p);
	kt_bpf__unlock(&load_lock);
}

/* ---- hooks ---- */

uint32_t kt_bpf_hook_ctx_size(uint32_t hook)
{
	return hook >= 1 && hook <= KT_BPF_HOOK_MAX ? HOOK_CTX_SIZE[hook] : 0;
}

/* Puts p on hook and frees what was there once no run still uses it. Under load_lock. */
static void attach_locked(uint32_t hook, struct kt_bpf_prog *p)
{
	struct kt_bpf_prog *old = __atomic_exchange_n(&hooks[hook].prog, p, __ATOMIC_SEQ_CST);
	if (!old)
		return;
	while (__atomic_load_n(&hooks[hook].active, __ATOMIC_SEQ_CST))
		kt_pause();
	free_locked(old);
}

int kt_bpf_hook_load(uint32_t hook, const void *image, uint32_t len, struct kt_bpf_verify_error *err)
{
	uint32_t size = kt_bpf_hook_ctx_size(hook);
	if (!size)
		return kt_bpf__fail(err, -KT_EINVAL, 0xffffffffu, "unknown hook %u", hook);
	struct kt_bpf_prog *p;
	kt_bpf__lock(&load_lock);
	int r = load_locked(&p, image, len, size, err);
	if (!r)
		attach_locked(hook, p);
	kt_bpf__unlock(&load_lock);
	return r;
}

int kt_bpf_hook_unload(uint32_t hook)
{
	if (!kt_bpf_hook_ctx_size(hook))
		return -KT_EINVAL;
	kt_bpf__lock(&load_lock);
	int r = hooks[hook].prog ? 0 : -KT_ENOENT;
	attach_locked(hook, NULL);
	kt_bpf__unlock(&load_lock);
	return r;
}

int kt_bpf_hook_attached(uint32_t hook)
{
	return kt_bpf_hook_ctx_size(hook) && __atomic_load_n(&hooks[hook].prog, __ATOMIC_SEQ_CST) != NULL;
}

int kt_bpf_hook_run(uint32_t hook, void *ctx, uint64_t *r0)
{
	if (!kt_bpf_hook_ctx_size(hook))
		return 0;
	__atomic_add_fetch(&hooks[hook].active, 1, __ATOMIC_SEQ_CST);
	struct kt_bpf_prog *p = __atomic_load_n(&hooks[hook].prog, __ATOMIC_SEQ_CST);
	uint64_t v = p ? kt_bpf_prog_run(p, ctx) : 0;
	__atomic_sub_fetch(&hooks[hook].active, 1, __ATOMIC_SEQ_CST);
	if (p && r0)
		*r0 = v;
	return p != NULL;
}
