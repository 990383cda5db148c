/*
 * The guest's eBPF verifier: the algorithm of src/bpf/verifier.ts, in C with static arenas.
 *
 * Abstract interpretation over all paths. Registers and spilled stack slots are uninit, scalar
 * (an unsigned range [lo, hi]; hi = INF: unknown upper bits), pointers to stack / context / map
 * value (maybe null, with an id per lookup call site) with offset ranges, or map pointers; 512
 * bits track which stack bytes were written. At jump targets a state is recorded: meeting an
 * identical state (on live registers) whose paths are still being explored is an unbounded loop;
 * meeting one that is finished, or one that covers the new state, prunes the path. Exploration
 * is bounded by a budget of processed instructions ("too complex" beyond it).
 *
 * Scalar ranges follow 64- and 32-bit arithmetic (shifts, masks, div/mod, zero extension, JMP32
 * conditions). A backward analysis marks, per instruction, the registers whose range can still
 * matter (reaching an address, a jump condition, a helper's pointer argument or a stack store);
 * at jump targets the other scalars are widened to unknown, so counters that only feed the
 * return value do not multiply states.
 *
 * Ranges are int64 with INF / NINF for the unbounded ends; scalars stay within [0, 2^53 - 1]
 * or become unknown, exactly like the TypeScript version, so both accept the same programs.
 */
#include "bpf-internal.h"

#define STACK KT_BPF_STACK_SIZE
#define SLOTS (STACK / 8)
#define SAFE ((int64_t)0x1fffffffffffff) /* 2^53 - 1 */
#define U32MAX ((int64_t)0xffffffff)
#define INF INT64_MAX
#define NINF (-INT64_MAX)
/* Pointer offsets stay within ±2^29 (Linux's BPF_MAX_VAR_OFF): arithmetic that could leave it is
 * refused, so offset ranges are always small and exact. */
#define MAX_OFF ((int64_t)1 << 29)

enum { T_U, T_S, T_FP, T_CTX, T_MV, T_MAP };

/* 24 bytes, no padding, unused fields zero: equal states are equal bytes. */
struct reg {
	uint8_t t, map, nul, pad;
	uint32_t id;
	int64_t lo, hi;
};

struct node {
	struct node *parent, *next_at_pc, *next_in_bucket;
	int32_t branches;
	uint32_t hash, pc, nspill;
	uint64_t spill_mask;
	uint64_t init[SLOTS / 8];
	struct reg regs[10];
	struct reg spill[]; /* nspill entries, for the set bits of spill_mask in order */
};

struct state {
	struct reg regs[11];
	uint64_t init[SLOTS / 8]; /* bit per stack byte, index = offset + 512 */
	struct reg spill[SLOTS];  /* T_U = nothing spilled */
	struct node *node;
};

/* Header of a queued path (see push). */
struct pending {
	uint32_t pc, back;
	struct node *node;
};

enum { K_ALU, K_END, K_JMP, K_JA, K_CALL, K_EXIT, K_LDDW, K_LDX, K_ST, K_STX, K_ATOMIC, K_LD };
struct info {
	uint8_t kind, op, width, reg_src; /* op: ALU/JMP/atomic code (high nibble), or lddw src */
	uint8_t memsx, fetch;
};

#define HASH_BUCKETS 65536
#define NODE_ARENA (6u << 20)
#define WORK_ARENA (2u << 20)

static struct {
	const struct kt_bpf_insn *insns;
	uint32_t n, ctx_size, budget, processed;
	const struct kt_bpf_map_shape *maps;
	uint32_t nmaps;
	struct kt_bpf_verify_error *err;
	uint8_t second[KT_BPF_MAX_INSNS], prune[KT_BPF_MAX_INSNS];
	struct info info[KT_BPF_MAX_INSNS];
	uint16_t live[KT_BPF_MAX_INSNS], use[KT_BPF_MAX_INSNS], def[KT_BPF_MAX_INSNS];
	/* relevance: registers whose range can matter, and its transfer (see liveness) */
	uint16_t rel[KT_BPF_MAX_INSNS], kill[KT_BPF_MAX_INSNS], gen[KT_BPF_MAX_INSNS], cond[KT_BPF_MAX_INSNS], cgen[KT_BPF_MAX_INSNS];
	uint8_t call_map[KT_BPF_MAX_INSNS]; /* kt_bpf__verify_call_maps() */
	struct node *at_pc[KT_BPF_MAX_INSNS];
	struct node *bucket[HASH_BUCKETS];
	uint32_t node_used, work_used;
	struct state cur;
} v;
static uint8_t node_arena[NODE_ARENA] __attribute__((aligned(16)));
static uint8_t work_arena[WORK_ARENA] __attribute__((aligned(16)));

/* Errors: functions return 0 or this code after filling v.err. */
#define FAILED (-KT_EINVAL)
#define fail(pc, ...) kt_bpf__fail(v.err, FAILED, pc, __VA_ARGS__)
#define TRY(x) do { int r_ = (x); if (r_) return r_; } while (0)

/* ---------------------------------------------------------------- abstract values */

static struct reg mk(uint8_t t, int64_t lo, int64_t hi)
{
	struct reg r = { t, 0, 0, 0, 0, lo, hi };
	return r;
}
static const struct reg UNINIT = { T_U, 0, 0, 0, 0, 0, 0 };
static const struct reg UNKNOWN = { T_S, 0, 0, 0, 0, 0, INF };
static const struct reg U32 = { T_S, 0, 0, 0, 0, 0, U32MAX };
static struct reg scalar(int64_t lo, int64_t hi)
{
	return lo >= 0 && hi <= SAFE && lo <= hi ? mk(T_S, lo, hi) : UNKNOWN;
}
static struct reg konst(int64_t k)
{
	return scalar(k, k);
}
static int is_ptr(const struct reg *r)
{
	return r->t == T_FP || r->t == T_CTX || r->t == T_MV;
}

/* -a for a range end: INF and NINF swap */
static int64_t sneg(int64_t a)
{
	return a == INF ? NINF : a == NINF ? INF : -a;
}

static const char *bound_text(int64_t x, char *buf, size_t len)
{
	if (x == INF || x == NINF)
		return x == INF ? "inf" : "-inf";
	kt_snprintf(buf, len, "%lld", (long long)x);
	return buf;
}

/* "lo..hi", or "k" when lo == hi; the ends may be ±inf. */
static const char *range_text(int64_t lo, int64_t hi, char *buf, size_t len)
{
	char sa[24], sb[24];
	const char *a = bound_text(lo, sa, sizeof sa), *b = bound_text(hi, sb, sizeof sb);
	if (lo == hi)
		kt_snprintf(buf, len, "%s", a);
	else
		kt_snprintf(buf, len, "%s..%s", a, b);
	return buf;
}

static const char *type_name(const struct reg *r)
{
	static const char *names[] = { "uninitialized", "scalar", "stack pointer", "context pointer", "map value pointer", "map pointer" };
	return r->t == T_MV && r->nul ? "map value pointer (or null)" : names[r->t];
}

/** Whether every concrete value of b is described by a. */
static int covers(const struct reg *a, const struct reg *b)
{
	if (a->t == T_U)
		return 1;
	if (a->t != b->t)
		return 0;
	switch (a->t) {
	case T_S: case T_FP: case T_CTX:
		return a->lo <= b->lo && b->hi <= a->hi;
	case T_MV:
		return a->map == b->map && a->nul == b->nul && (!a->nul || a->id == b->id) && a->lo <= b->lo && b->hi <= a->hi;
	default:
		return a->map == b->map;
	}
}

/* ---------------------------------------------------------------- decoding */

static int32_t target(uint32_t pc)
{
	const struct kt_bpf_insn *i = &v.insns[pc];
	if (v.info[pc].kind == K_JMP || (v.info[pc].kind == K_JA && i->code == 0x05))
		return (int32_t)pc + 1 + i->off;
	return (int32_t)((int64_t)pc + 1 + i->imm); /* gotol; wraps to out of range for absurd imm */
}

/* The strict validation of src/bpf/isa.ts describe(): reserved encodings and non-zero unused fields. */
static int decode(uint32_t pc, struct info *o)
{
	const struct kt_bpf_insn *i = &v.insns[pc];
	unsigned code = i->code, cls = code & 7, op = code & 0xf0, d = kt_bpf__dst(i), s = kt_bpf__src(i), x = code & 8;
	memset(o, 0, sizeof *o);
#define BAD(...) return fail(pc, "invalid instruction: " __VA_ARGS__)
#define ZERO(f, what) do { if (f) BAD("unused " what " field must be 0 (is %d)", (int)(f)); } while (0)
#define REG(r, what) do { if ((r) > 10) BAD("bad " what " register r%u (valid: r0..r10)", (r)); } while (0)
	if (cls == 4 || cls == 7) {
		o->width = cls == 7 ? 64 : 32;
		REG(d, "dst");
		if (op == 0xd0) {
			ZERO(s, "src");
			ZERO(i->off, "offset");
			if (i->imm != 16 && i->imm != 32 && i->imm != 64)
				BAD("byte swap width must be 16, 32 or 64 (is %d)", i->imm);
			if (cls == 7 && x)
				BAD("reserved: END with source X in ALU64 class");
			o->kind = K_END;
			return 0;
		}
		o->kind = K_ALU;
		o->op = op;
		if (op == 0x80) {
			if (x)
				BAD("reserved: NEG with source X");
			ZERO(s, "src");
			ZERO(i->off, "offset");
			ZERO(i->imm, "imm");
			return 0;
		}
		if (op > 0xc0)
			BAD("reserved ALU operation 0x%02x", op);
		if (x) {
			REG(s, "src");
			ZERO(i->imm, "imm");
		} else {
			ZERO(s, "src");
		}
		o->reg_src = !!x;
		if ((op == 0x30 || op == 0x90) && i->off == 1)
			return 0;
		if (op == 0xb0 && x && i->off) {
			if (i->off != 8 && i->off != 16 && (i->off != 32 || cls == 4))
				BAD("bad MOVSX offset %d for %u-bit move", i->off, o->width);
			return 0;
		}
		if (i->off)
			BAD("bad offset %d for ALU operation 0x%02x", i->off, op);
		return 0;
	}
	if (cls == 5 || cls == 6) {
		o->width = cls == 5 ? 64 : 32;
		if (op == 0x00 || op == 0x80 || op == 0x90) {
			if (x)
				BAD("reserved: JA/CALL/EXIT with source X");
			ZERO(d, "dst");
		}
		if (op == 0x00) {
			ZERO(s, "src");
			if (cls == 6)
				ZERO(i->off, "offset");
			else
				ZERO(i->imm, "imm");
			o->kind = K_JA;
			return 0;
		}
		if (op == 0x80) {
			if (cls == 6)
				BAD("reserved: CALL in JMP32 class");
			ZERO(i->off, "offset");
			if (s > 2)
				BAD("unknown call type src=%u", s);
			o->kind = K_CALL;
			o->op = s;
			return 0;
		}
		if (op == 0x90) {
			if (cls == 6)
				BAD("reserved: EXIT in JMP32 class");
			ZERO(s, "src");
			ZERO(i->off, "offset");
			ZERO(i->imm, "imm");
			o->kind = K_EXIT;
			return 0;
		}
		if (op > 0xd0)
			BAD("reserved jump operation 0x%02x", op);
		REG(d, "dst");
		if (x) {
			REG(s, "src");
			ZERO(i->imm, "imm");
		} else {
			ZERO(s, "src");
		}
		o->kind = K_JMP;
		o->op = op;
		o->reg_src = !!x;
		return 0;
	}
	unsigned mode = code & 0xe0, size = code & 0x18;
	o->width = size == 0x00 ? 32 : size == 0x08 ? 16 : size == 0x10 ? 8 : 64;
	if (cls == 0) {
		if (mode == 0x00) {
			if (size != 0x18)
				BAD("reserved: LD IMM requires size DW");
			REG(d, "dst");
			ZERO(i->off, "offset");
			if (s > 6)
				BAD("unknown lddw pseudo source %u", s);
			if (s != 0 && s != 2 && s != 6 && v.insns[pc + 1].imm)
				BAD("upper immediate must be 0 for lddw pseudo source %u", s);
			o->kind = K_LDDW;
			o->op = s;
			return 0;
		}
		if (mode == 0x20 || mode == 0x40) {
			if (size == 0x18)
				BAD("reserved: legacy packet load with size DW");
			ZERO(d, "dst");
			ZERO(i->off, "offset");
			if (mode == 0x20)
				ZERO(s, "src");
			else
				REG(s, "src");
			o->kind = K_LD;
			return 0;
		}
		BAD("reserved mode 0x%02x for LD class", mode);
	}
	REG(d, "dst");
	if (cls == 1) {
		if (mode != 0x60 && mode != 0x80)
			BAD("reserved mode 0x%02x for LDX class", mode);
		if (mode == 0x80 && size == 0x18)
			BAD("reserved: sign-extending load of size DW");
		REG(s, "src");
		ZERO(i->imm, "imm");
		o->kind = K_LDX;
		o->memsx = mode == 0x80;
		return 0;
	}
	if (cls == 2) {
		if (mode != 0x60)
			BAD("reserved mode 0x%02x for ST class", mode);
		ZERO(s, "src");
		o->kind = K_ST;
		return 0;
	}
	REG(s, "src");
	if (mode == 0x60) {
		ZERO(i->imm, "imm");
		o->kind = K_STX;
		return 0;
	}
	if (mode != 0xc0)
		BAD("reserved mode 0x%02x for STX class", mode);
	if (size != 0x00 && size != 0x18)
		BAD("reserved: atomic operation must be size W or DW");
	int32_t a = i->imm & ~1;
	if (i->imm < 0 || i->imm > 0xff || (a != 0x00 && a != 0x40 && a != 0x50 && a != 0xa0 && a != 0xe0 && a != 0xf0) ||
	    ((a == 0xe0 || a == 0xf0) && !(i->imm & 1)))
		BAD("unknown atomic operation imm=0x%x", (unsigned)i->imm);
	o->kind = K_ATOMIC;
	o->op = (uint8_t)a;
	o->fetch = i->imm & 1;
	return 0;
#undef BAD
#undef ZERO
#undef REG
}

/* ---------------------------------------------------------------- helpers */

/* Argument kinds; a key or value follows its map argument. */
enum { A_MAP = 1, A_SCALAR, A_KEY, A_VALUE };
struct helper_spec {
	int32_t id;
	const char *name;
	uint8_t nargs, args[5], ret_map_value;
};
/* docs/bpf-runtime.md, "Helpers". */
static const struct helper_spec HELPERS[] = {
	{ 1, "map_lookup_elem", 2, { A_MAP, A_KEY }, 1 },
	{ 2, "map_update_elem", 4, { A_MAP, A_KEY, A_VALUE, A_SCALAR }, 0 },
	{ 3, "map_delete_elem", 2, { A_MAP, A_KEY }, 0 },
	{ 5, "ktime_get_ns", 0, { 0 }, 0 },
	{ 7, "get_prandom_u32", 0, { 0 }, 0 },
	{ 8, "get_smp_processor_id", 0, { 0 }, 0 },
};

static const struct helper_spec *helper_spec(int32_t id)
{
	for (unsigned k = 0; k < sizeof HELPERS / sizeof HELPERS[0]; k++)
		if (HELPERS[k].id == id)
			return &HELPERS[k];
	return NULL;
}

/* ---------------------------------------------------------------- static checks and liveness */

static int static_checks(void)
{
	/* first the two-slot structure, as src/bpf/isa.ts decodeProgram() checks it */
	for (uint32_t pc = 0; pc < v.n; pc++) {
		if (v.insns[pc].code != KT_BPF_LDDW)
			continue;
		if (pc + 1 >= v.n)
			return fail(pc, "invalid instruction: truncated lddw: second slot missing");
		const struct kt_bpf_insn *n2 = &v.insns[++pc];
		if (n2->code || n2->regs || n2->off)
			return fail(pc, "invalid instruction: bad lddw second slot: opcode, registers and offset must be zero");
		v.second[pc] = 1;
	}
	/* then every instruction and jump target, also in unreachable code */
	for (uint32_t pc = 0; pc < v.n; pc++) {
		if (v.second[pc])
			continue;
		TRY(decode(pc, &v.info[pc]));
		/* also in unreachable code: the loader resolves every map reference */
		const struct info *d = &v.info[pc];
		int32_t imm = v.insns[pc].imm;
		if (d->kind == K_LDDW && (d->op == 1 || d->op == 2 || d->op == 5 || d->op == 6) && (imm < 0 || (uint32_t)imm >= v.nmaps))
			return fail(pc, "unknown map %d", imm);
		if (v.info[pc].kind == K_JMP || v.info[pc].kind == K_JA) {
			int32_t t = target(pc);
			if (t < 0 || (uint32_t)t >= v.n)
				return fail(pc, "jump out of range: target %d outside [0, %u)", t, v.n);
			if (v.second[t])
				return fail(pc, "jump into the middle of lddw at %d", t - 1);
			v.prune[t] = 1;
			if (pc + 1 < v.n)
				v.prune[pc + 1] = 1;
		}
	}
	return 0;
}

/*
 * Backward analyses over r0..r9: liveness, so pruning ignores dead registers, and relevance, so
 * it can widen scalars whose range no longer matters. Relevance flows into what an instruction
 * reads only when the register it computes is relevant (cond -> cgen), except for addresses,
 * jump operands, pointer arguments and stored values (gen), which always matter; what an
 * instruction writes (kill) is not relevant before it.
 */
static void liveness(void)
{
#define B(r) ((r) < 10 ? 1u << (r) : 0u)
	for (uint32_t pc = 0; pc < v.n; pc++) {
		const struct kt_bpf_insn *i = &v.insns[pc];
		const struct info *d = &v.info[pc];
		unsigned u = 0, df = 0, g = 0, c = 0, cg = 0, dst = kt_bpf__dst(i), src = kt_bpf__src(i);
		if (v.second[pc]) {
			v.use[pc] = v.def[pc] = v.kill[pc] = v.gen[pc] = v.cond[pc] = v.cgen[pc] = 0;
			continue;
		}
		switch (d->kind) {
		case K_ALU:
			if (d->reg_src)
				u |= B(src);
			if (d->op != 0xb0)
				u |= B(dst);
			df |= B(dst);
			c = B(dst);
			cg = u;
			break;
		case K_END: u |= B(dst); df |= B(dst); c = cg = B(dst); break;
		case K_JMP: u |= B(dst); if (d->reg_src) u |= B(src); g = u; break;
		case K_CALL: {
			const struct helper_spec *h = d->op == 0 ? helper_spec(i->imm) : NULL;
			for (unsigned k = 1; k <= (h ? h->nargs : 5u); k++) {
				u |= B(k);
				if (!h || h->args[k - 1] != A_SCALAR)
					g |= B(k);
			}
			df |= 0x3f;
			break;
		}
		case K_EXIT: u |= 1; break;
		case K_LDDW: df |= B(dst); break;
		case K_LD: u |= B(src) | B(6); df |= 0x3f; g = u; break;
		case K_LDX: u |= B(src); df |= B(dst); g = B(src); break;
		case K_ST: u |= B(dst); g = u; break;
		case K_STX: u |= B(dst) | B(src); g = u; break;
		case K_ATOMIC:
			u |= B(dst) | B(src);
			if (d->op == 0xf0) {
				u |= 1;
				df |= 1;
			} else if (d->fetch) {
				df |= B(src);
			}
			g = u;
			break;
		}
		v.use[pc] = (uint16_t)u;
		v.def[pc] = (uint16_t)(df & ~u);
		v.kill[pc] = (uint16_t)df;
		v.gen[pc] = (uint16_t)g;
		v.cond[pc] = (uint16_t)c;
		v.cgen[pc] = (uint16_t)cg;
	}
#undef B
	for (int changed = 1; changed;) {
		changed = 0;
		for (int32_t pc = (int32_t)v.n - 1; pc >= 0; pc--) {
			if (v.second[pc])
				continue;
			const struct info *d = &v.info[pc];
			unsigned out = 0, rout = 0;
			uint32_t next = pc + (d->kind == K_LDDW ? 2 : 1);
			if (d->kind == K_JMP || d->kind == K_JA) {
				out |= v.live[target(pc)];
				rout |= v.rel[target(pc)];
			}
			if (d->kind != K_JA && d->kind != K_EXIT && next < v.n) {
				out |= v.live[next];
				rout |= v.rel[next];
			}
			uint16_t nv = (uint16_t)(v.use[pc] | (out & ~v.def[pc]));
			uint16_t nr = (uint16_t)(v.gen[pc] | (rout & ~v.kill[pc]) | (rout & v.cond[pc] ? v.cgen[pc] : 0));
			if (nv != v.live[pc] || nr != v.rel[pc]) {
				v.live[pc] = nv;
				v.rel[pc] = nr;
				changed = 1;
			}
		}
	}
}

/* ---------------------------------------------------------------- state records */

static void *arena_alloc(uint8_t *arena, uint32_t cap, uint32_t *used, uint32_t size)
{
	size = (size + 15) & ~15u;
	if (size > cap - *used)
		return NULL;
	void *p = arena + *used;
	*used += size;
	return p;
}

static uint64_t spill_mask(const struct state *st, uint32_t *count)
{
	uint64_t m = 0;
	uint32_t c = 0;
	for (unsigned k = 0; k < SLOTS; k++)
		if (st->spill[k].t != T_U) {
			m |= 1ull << k;
			c++;
		}
	*count = c;
	return m;
}

/* The recorded form of st at pc: dead registers uninit. */
static void canonical(struct node *nd, const struct state *st, uint32_t pc, uint64_t mask)
{
	unsigned live = v.live[pc], c = 0;
	for (unsigned k = 0; k < 10; k++)
		nd->regs[k] = live & (1u << k) ? st->regs[k] : UNINIT;
	memcpy(nd->init, st->init, sizeof nd->init);
	nd->spill_mask = mask;
	for (unsigned k = 0; k < SLOTS; k++)
		if (mask >> k & 1)
			nd->spill[c++] = st->spill[k];
	nd->pc = pc;
}

static uint32_t node_hash(const struct node *nd)
{
	const uint8_t *p = (const uint8_t *)&nd->spill_mask;
	size_t len = (size_t)((const uint8_t *)(nd->spill + nd->nspill) - p);
	uint64_t h = 0xcbf29ce484222325ull ^ nd->pc;
	for (size_t k = 0; k < len; k += 8) {
		uint64_t w;
		memcpy(&w, p + k, 8);
		h = (h ^ w) * 0x100000001b3ull;
		h ^= h >> 29;
	}
	return (uint32_t)(h ^ h >> 32);
}

static int same_node(const struct node *a, const struct node *b)
{
	if (a->pc != b->pc || a->hash != b->hash || a->nspill != b->nspill)
		return 0;
	size_t len = (size_t)((const uint8_t *)(a->spill + a->nspill) - (const uint8_t *)&a->spill_mask);
	return memcmp(&a->spill_mask, &b->spill_mask, len) == 0;
}

static int subsumes(const struct node *old, const struct state *st, unsigned live)
{
	for (unsigned k = 0; k < 10; k++)
		if (live & (1u << k) && !covers(&old->regs[k], &st->regs[k]))
			return 0;
	for (unsigned k = 0; k < SLOTS / 8; k++)
		if (old->init[k] & ~st->init[k])
			return 0;
	unsigned c = 0;
	for (unsigned k = 0; k < SLOTS; k++) {
		const struct reg *o = old->spill_mask >> k & 1 ? &old->spill[c++] : NULL;
		const struct reg *s = st->spill[k].t != T_U ? &st->spill[k] : NULL;
		if (s && !(o && covers(o, s))) {
			/* a pointer spill where old had plain data is not covered; a scalar spill is */
			if (!o && s->t == T_S)
				continue;
			return 0;
		}
		if (o && !s && o->t != T_S)
			return 0;
		if (o && !s && (o->lo != 0 || o->hi != INF))
			return 0;
	}
	return 1;
}

enum { V_NEW, V_PRUNE, V_LOOP };

static int visit(uint32_t pc, struct state *st)
{
	/* scalars whose range cannot matter any more: forget it (sound, and states then coincide) */
	unsigned loose = (unsigned)v.live[pc] & ~(unsigned)v.rel[pc];
	for (unsigned k = 0; k < 10; k++)
		if (loose >> k & 1 && st->regs[k].t == T_S)
			st->regs[k] = UNKNOWN;
	uint32_t nspill;
	uint64_t mask = spill_mask(st, &nspill);
	uint32_t size = (uint32_t)(sizeof(struct node) + nspill * sizeof(struct reg));
	uint32_t mark = v.node_used;
	struct node *nd = arena_alloc(node_arena, NODE_ARENA, &v.node_used, size);
	if (!nd)
		return V_NEW; /* out of room: stop recording (slower, still sound) */
	nd->nspill = nspill;
	canonical(nd, st, pc, mask);
	nd->hash = node_hash(nd);
	struct node **b = &v.bucket[nd->hash % HASH_BUCKETS];
	for (struct node *o = *b; o; o = o->next_in_bucket)
		if (same_node(o, nd)) {
			v.node_used = mark;
			return o->branches > 0 ? V_LOOP : V_PRUNE;
		}
	unsigned k = 0;
	for (struct node *o = v.at_pc[pc]; o && k < 16; o = o->next_at_pc, k++)
		if (o->branches == 0 && subsumes(o, st, v.live[pc])) {
			v.node_used = mark;
			return V_PRUNE;
		}
	nd->parent = st->node;
	nd->branches = 1;
	nd->next_in_bucket = *b;
	*b = nd;
	nd->next_at_pc = v.at_pc[pc];
	v.at_pc[pc] = nd;
	st->node = nd;
	return V_NEW;
}

static void end_path(struct node *nd)
{
	for (; nd; nd = nd->parent)
		if (--nd->branches > 0)
			break;
}

/* Queued paths live on a LIFO byte stack: a header, r0..r9, init, the spill mask, the spilled
 * slots, and last the entry's size so pop() finds its start. */
static int push(uint32_t pc, uint32_t back, const struct state *st)
{
	uint32_t nspill;
	uint64_t mask = spill_mask(st, &nspill);
	uint32_t size = (uint32_t)(sizeof(struct pending) + 10 * sizeof(struct reg) + sizeof st->init + 8 +
				   nspill * sizeof(struct reg) + 4);
	size = (size + 15) & ~15u;
	uint8_t *p = arena_alloc(work_arena, WORK_ARENA, &v.work_used, size);
	if (!p)
		return kt_bpf__fail(v.err, -KT_E2BIG, pc, "program too complex: too many pending branches");
	struct pending h = { pc, back, st->node };
	memcpy(p + size - 4, &size, 4);
	memcpy(p, &h, sizeof h);
	p += sizeof h;
	memcpy(p, st->regs, 10 * sizeof(struct reg));
	p += 10 * sizeof(struct reg);
	memcpy(p, st->init, sizeof st->init);
	p += sizeof st->init;
	memcpy(p, &mask, 8);
	p += 8;
	for (unsigned k = 0; k < SLOTS; k++)
		if (mask >> k & 1) {
			memcpy(p, &st->spill[k], sizeof(struct reg));
			p += sizeof(struct reg);
		}
	return 0;
}

static int pop(uint32_t *pc, uint32_t *back, struct state *st)
{
	if (v.work_used == 0)
		return 0;
	uint32_t size;
	memcpy(&size, work_arena + v.work_used - 4, 4);
	v.work_used -= size;
	const uint8_t *p = work_arena + v.work_used;
	struct pending h;
	memcpy(&h, p, sizeof h);
	p += sizeof h;
	*pc = h.pc;
	*back = h.back;
	st->node = h.node;
	memcpy(st->regs, p, 10 * sizeof(struct reg));
	st->regs[10] = mk(T_FP, 0, 0);
	p += 10 * sizeof(struct reg);
	memcpy(st->init, p, sizeof st->init);
	p += sizeof st->init;
	uint64_t mask;
	memcpy(&mask, p, 8);
	p += 8;
	for (unsigned k = 0; k < SLOTS; k++) {
		if (mask >> k & 1) {
			memcpy(&st->spill[k], p, sizeof(struct reg));
			p += sizeof(struct reg);
		} else {
			st->spill[k] = UNINIT;
		}
	}
	return 1;
}

/* ---------------------------------------------------------------- transfer functions */

static int rd(struct state *st, uint32_t pc, unsigned r, struct reg *out)
{
	if (st->regs[r].t == T_U)
		return fail(pc, "r%u is read before it is initialized%s", r, r >= 1 && r <= 5 ? " (r1-r5 are clobbered by calls)" : "");
	*out = st->regs[r];
	return 0;
}

static int wr(struct state *st, uint32_t pc, unsigned r, struct reg val)
{
	if (r == 10)
		return fail(pc, "r10 (frame pointer) is read-only");
	st->regs[r] = val;
	return 0;
}

static int init_bit(const struct state *st, int64_t off)
{
	return st->init[(off + STACK) >> 6] >> ((off + STACK) & 63) & 1;
}

/* What an access is, for error messages: "invalid read via r1+4" or a helper argument. */
struct what {
	const char *helper; /* NULL for a load/store */
	unsigned r, write;
	int off;
};

static const char *what_text(const struct what *w, char *buf, size_t len)
{
	if (w->helper)
		kt_snprintf(buf, len, "helper %s arg%u (r%u) %s", w->helper, w->r, w->r, w->write ? "map-value" : "map-key");
	else
		kt_snprintf(buf, len, "invalid %s via r%u%s%d", w->write ? "write" : "read", w->r, w->off < 0 ? "" : "+", w->off);
	return buf;
}

/* Bounds/initialization check of [ptr+off, +size) on the stack; *at = the start offset. */
static int check_stack(const struct state *st, uint32_t pc, const struct reg *p, int64_t off, uint32_t size, int read, const struct what *w, int64_t *at)
{
	char what[64];
	if (p->lo != p->hi)
		return fail(pc, "%s: variable-offset stack access", what_text(w, what, sizeof what));
	int64_t a = p->lo + off;
	if (a < -STACK || a + size > 0)
		return fail(pc, "%s: stack access out of bounds: offset %lld size %u outside [-512, 0)", what_text(w, what, sizeof what), (long long)a, size);
	if (read)
		for (uint32_t k = 0; k < size; k++)
			if (!init_bit(st, a + k))
				return fail(pc, "%s: read of uninitialized stack at offset %lld (slot never written)", what_text(w, what, sizeof what), (long long)(a + k));
	*at = a;
	return 0;
}

static int access(struct state *st, uint32_t pc, unsigned r, int16_t off, uint32_t size, int write, const struct reg *val, struct reg *out)
{
	const struct reg *p = &st->regs[r];
	const struct what w = { NULL, r, (unsigned)write, off };
	char what[64];
	*out = UNKNOWN;
	switch (p->t) {
	case T_U:
		return fail(pc, "r%u is read before it is initialized%s", r, r >= 1 && r <= 5 ? " (r1-r5 are clobbered by calls)" : "");
	case T_S:
		return fail(pc, "%s: r%u is a scalar, not a pointer", what_text(&w, what, sizeof what), r);
	case T_MAP:
		return fail(pc, "%s: cannot dereference a map pointer", what_text(&w, what, sizeof what));
	case T_FP: {
		int64_t a;
		TRY(check_stack(st, pc, p, off, size, !write, &w, &a));
		unsigned slot = (unsigned)(a + STACK) >> 3;
		if (!write) {
			if (size == 8 && a % 8 == 0 && st->spill[slot].t != T_U)
				*out = st->spill[slot];
			else if (size < 8)
				*out = scalar(0, ((int64_t)1 << (size * 8)) - 1);
			return 0;
		}
		for (uint32_t k = 0; k < size; k++)
			st->init[(a + k + STACK) >> 6] |= 1ull << ((a + k + STACK) & 63);
		unsigned last = (unsigned)(a + size - 1 + STACK) >> 3;
		for (unsigned s = slot; s <= last; s++)
			st->spill[s] = UNINIT;
		if (size == 8 && a % 8 == 0 && val && val->t != T_U && !(val->t == T_S && val->hi == INF))
			st->spill[slot] = *val;
		return 0;
	}
	default: { /* T_CTX, T_MV */
		if (p->t == T_MV && p->nul)
			return fail(pc, "%s: possibly NULL map value pointer, a null check is required before dereference", what_text(&w, what, sizeof what));
		int64_t limit = p->t == T_CTX ? v.ctx_size : v.maps[p->map].value_size;
		int64_t lo = p->lo + off, hi = p->hi + off;
		if (!(lo >= 0 && hi + size <= limit)) {
			char range[64];
			range_text(lo, hi, range, sizeof range);
			what_text(&w, what, sizeof what);
			if (p->t == T_CTX)
				return fail(pc, "%s: context access out of bounds: offset %s size %u (context is %lld bytes)", what, range, size, (long long)limit);
			return fail(pc, "%s: map %u value access out of bounds: offset %s size %u (value is %lld bytes)", what, p->map, range, size, (long long)limit);
		}
		if (size < 8)
			*out = scalar(0, ((int64_t)1 << (size * 8)) - 1);
		return 0;
	}
	}
}

#define TWO32 ((int64_t)1 << 32)

/* floor(x / 2^32) */
static int64_t window32(int64_t x)
{
	return x >= 0 ? x / TWO32 : -((-x - 1) / TWO32) - 1;
}

/* The result of an operation whose exact (unwrapped) integer result lies in [lo, hi]. */
static struct reg wrap(int64_t lo, int64_t hi, int w32)
{
	if (!w32)
		return lo >= 0 && hi <= SAFE ? scalar(lo, hi) : UNKNOWN;
	if (lo < -SAFE || hi > SAFE)
		return U32;
	int64_t k = window32(lo);
	return window32(hi) == k ? scalar(lo - k * TWO32, hi - k * TWO32) : U32;
}

/* The low 32 bits of a scalar: exact when its range lies within one 2^32-aligned window. */
static struct reg trunc32(struct reg r)
{
	return r.hi == INF ? U32 : wrap(r.lo, r.hi, 1);
}

/* The smallest 2^k - 1 that is >= x (x <= 2^53 - 1): every bit a value <= x can have. */
static int64_t bits_of(int64_t x)
{
	int64_t m = 0;
	while (m < x)
		m = m * 2 + 1;
	return m;
}

/*
 * The range of `a op b` for scalars. In 32-bit operations a and b are the operands' low 32 bits
 * and the result is zero-extended. neg_imm: the source is an ALU64 immediate below zero, imm (b
 * is then unknown: sign-extended, it is >= 2^63).
 */
static struct reg scalar_op(unsigned op, int sdivmod, struct reg a, struct reg b, int w32, int neg_imm, int64_t imm)
{
	struct reg full = w32 ? U32 : UNKNOWN;
	int fin = a.hi != INF && b.hi != INF;
	int64_t bits = w32 ? 32 : 64;
	if (sdivmod) /* signed = unsigned when both sign bits are clear */
		return fin && (!w32 || (a.hi < ((int64_t)1 << 31) && b.hi < ((int64_t)1 << 31))) ? scalar_op(op, 0, a, b, w32, 0, 0) : full;
	switch (op) {
	case 0x00: /* add */
		if (neg_imm)
			return a.hi == INF ? UNKNOWN : wrap(a.lo + imm, a.hi + imm, 0);
		return fin ? wrap(a.lo + b.lo, a.hi + b.hi, w32) : full;
	case 0x10: /* sub */
		if (neg_imm)
			return a.hi == INF ? UNKNOWN : wrap(a.lo - imm, a.hi - imm, 0);
		return fin ? wrap(a.lo - b.hi, a.hi - b.lo, w32) : full;
	case 0x20: /* mul */
		if (!fin || (b.hi != 0 && a.hi > SAFE / b.hi))
			return full;
		return wrap(a.lo * b.lo, a.hi * b.hi, w32);
	case 0x30: /* div: x / 0 = 0, and never more than x */
		if (a.hi == INF)
			return full;
		return b.lo > 0 ? scalar(a.lo / b.hi, a.hi / b.lo) : scalar(0, a.hi);
	case 0x90: /* mod: x % 0 = x, x % y = x when x < y, and never more than x or y - 1 */
		if (a.hi < b.lo)
			return a;
		if (b.lo > 0 && b.hi != INF)
			return scalar(0, a.hi < b.hi - 1 ? a.hi : b.hi - 1);
		return a.hi == INF ? full : scalar(0, a.hi);
	case 0x50: /* and */
		if (neg_imm)
			return a.hi == INF ? UNKNOWN : scalar(0, a.hi);
		if (a.lo == a.hi && b.lo == b.hi)
			return konst(a.lo & b.lo);
		/* a mask that keeps every bit the other side can have changes nothing */
		if (b.lo == b.hi && a.hi != INF && (b.lo & bits_of(a.hi)) == bits_of(a.hi))
			return a;
		if (a.lo == a.hi && b.hi != INF && (a.lo & bits_of(b.hi)) == bits_of(b.hi))
			return b;
		return scalar(0, a.hi < b.hi ? a.hi : b.hi);
	case 0x40: /* or */
	case 0xa0: /* xor */
		if (!fin)
			return full;
		if (a.lo == a.hi && b.lo == b.hi)
			return konst(op == 0x40 ? (a.lo | b.lo) : (a.lo ^ b.lo));
		return scalar(op == 0x40 ? (a.lo > b.lo ? a.lo : b.lo) : 0, bits_of(a.hi > b.hi ? a.hi : b.hi));
	case 0x60: /* lsh */
		if (a.hi == 0)
			return a;
		if (!fin || b.hi >= bits || a.hi > SAFE >> b.hi)
			return full;
		return wrap(a.lo << b.lo, a.hi << b.hi, w32);
	case 0x70: /* rsh */
	case 0xc0: { /* arsh: a logical shift while the sign bit is clear */
		if (op == 0xc0 && (w32 ? a.hi >= ((int64_t)1 << 31) : a.hi == INF))
			return full;
		/* the amount is taken modulo the width: unknown amounts still never grow the value */
		int64_t slo = b.hi < bits ? b.lo : 0, shi = b.hi < bits ? b.hi : bits - 1;
		if (a.hi == INF)
			return slo >= 11 ? scalar(0, (int64_t)(UINT64_MAX >> slo)) : UNKNOWN;
		return scalar(a.lo >> shi, a.hi >> slo);
	}
	case 0x80: /* neg */
		if (a.hi == 0)
			return a;
		return w32 && a.lo > 0 ? scalar(TWO32 - a.hi, TWO32 - a.lo) : full;
	default:
		return full;
	}
}

/*
 * Pointer p moved by a scalar in [lo, hi] (negated for a subtraction); refused when the scalar or
 * the resulting offsets leave ±MAX_OFF, which keeps every sum exact (no saturation or wrap a far
 * excursion could come back from "in bounds").
 */
static int move_pointer(uint32_t pc, struct reg *p, int64_t lo, int64_t hi)
{
	char range[64];
	if (lo < -MAX_OFF || hi > MAX_OFF)
		return fail(pc, "pointer arithmetic: the offset moves by %s, beyond ±%lld (bound the scalar first)",
			    range_text(lo, hi, range, sizeof range), (long long)MAX_OFF);
	p->lo += lo;
	p->hi += hi;
	if (p->lo < -MAX_OFF || p->hi > MAX_OFF)
		return fail(pc, "pointer arithmetic out of range: offset %s leaves ±%lld", range_text(p->lo, p->hi, range, sizeof range),
			    (long long)MAX_OFF);
	return 0;
}

static int alu(uint32_t pc, struct state *st, const struct kt_bpf_insn *i, const struct info *d)
{
	int w32 = d->width == 32;
	unsigned dreg = kt_bpf__dst(i);
	struct reg src = UNINIT, dst = UNINIT;
	int imm_given = !d->reg_src, neg_imm = 0;
	/* immediates: ALU32 uses the low 32 bits, shifts mask the amount, ALU64 sign-extends */
	if (d->reg_src) {
		TRY(rd(st, pc, kt_bpf__src(i), &src));
	} else if (d->op == 0x60 || d->op == 0x70 || d->op == 0xc0) {
		src = konst(i->imm & (w32 ? 31 : 63));
	} else if (w32) {
		src = konst((uint32_t)i->imm);
	} else if (i->imm >= 0) {
		src = konst(i->imm);
	} else {
		src = UNKNOWN;
		neg_imm = 1;
	}
	if (d->op == 0xb0 && !i->off)
		return wr(st, pc, dreg, w32 ? (src.t == T_S ? trunc32(src) : U32) : src);
	if (d->op == 0xb0) {
		/* sign extension from off bits changes nothing when that sign bit is clear */
		struct reg x = src.t == T_S ? (w32 ? trunc32(src) : src) : UNKNOWN;
		return wr(st, pc, dreg, src.t == T_S && x.hi < ((int64_t)1 << (i->off - 1)) ? x : w32 ? U32 : UNKNOWN);
	}
	TRY(rd(st, pc, dreg, &dst));
	if ((dst.t == T_MV && dst.nul) || (src.t == T_MV && src.nul))
		return fail(pc, "arithmetic on a map value pointer that may be null: null-check it first");
	if (dst.t == T_MAP || src.t == T_MAP)
		return fail(pc, "arithmetic on a map pointer is not allowed");
	int sdivmod = (d->op == 0x30 || d->op == 0x90) && i->off == 1;
	if (w32) {
		struct reg a = dst.t == T_S ? trunc32(dst) : U32, b = src.t == T_S ? trunc32(src) : U32;
		return wr(st, pc, dreg, scalar_op(d->op, sdivmod, a, b, 1, 0, 0));
	}
	if (is_ptr(&dst) || is_ptr(&src)) {
		/* pointer +/- scalar keeps the pointer with an adjusted offset range; anything else is a scalar */
		if (is_ptr(&dst) && src.t == T_S && (d->op == 0x00 || d->op == 0x10)) {
			int64_t lo = imm_given ? i->imm : src.lo, hi = imm_given ? i->imm : src.hi;
			TRY(d->op == 0x00 ? move_pointer(pc, &dst, lo, hi) : move_pointer(pc, &dst, sneg(hi), sneg(lo)));
			return wr(st, pc, dreg, dst);
		}
		if (is_ptr(&src) && dst.t == T_S && d->op == 0x00) {
			TRY(move_pointer(pc, &src, dst.lo, dst.hi));
			return wr(st, pc, dreg, src);
		}
		return wr(st, pc, dreg, UNKNOWN);
	}
	return wr(st, pc, dreg, scalar_op(d->op, sdivmod, dst, src, 0, neg_imm, i->imm));
}

/* Condition codes reduced to the unsigned comparisons refine() knows. */
enum { C_EQ, C_NE, C_GT, C_GE, C_LT, C_LE };
static const uint8_t NEGATE[] = { C_NE, C_EQ, C_LE, C_LT, C_GE, C_GT };

static int64_t inc(int64_t x) { return x == INF ? INF : x + 1; }
static int64_t dec(int64_t x) { return x == INF ? INF : x - 1; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/** Ranges of (dst, src) when `dst op src` holds; 0 when it cannot hold. */
static int refine(unsigned op, const struct reg *a, const struct reg *b, struct reg *ra, struct reg *rb)
{
	int64_t alo = a->lo, ahi = a->hi, blo = b->lo, bhi = b->hi;
	switch (op) {
	case C_EQ:
		alo = blo = max64(alo, blo);
		ahi = bhi = min64(ahi, bhi);
		break;
	case C_NE:
		if (alo == ahi && blo == bhi && alo == blo)
			return 0;
		if (blo == bhi) {
			if (alo == blo) alo = inc(alo);
			if (ahi == blo) ahi = dec(ahi);
		}
		if (alo == ahi) {
			if (blo == alo) blo = inc(blo);
			if (bhi == alo) bhi = dec(bhi);
		}
		break;
	case C_GT: alo = max64(alo, inc(blo)); bhi = min64(bhi, dec(ahi)); break;
	case C_GE: alo = max64(alo, blo); bhi = min64(bhi, ahi); break;
	case C_LT: ahi = min64(ahi, dec(bhi)); blo = max64(blo, inc(alo)); break;
	case C_LE: ahi = min64(ahi, bhi); blo = max64(blo, alo); break;
	}
	if (alo > ahi || blo > bhi)
		return 0;
	*ra = mk(T_S, alo, ahi > SAFE ? INF : ahi);
	*rb = mk(T_S, blo, bhi > SAFE ? INF : bhi);
	return 1;
}

static void mark_null(struct state *st, uint32_t id, int is_null)
{
	for (unsigned k = 0; k < 10 + SLOTS; k++) {
		struct reg *r = k < 10 ? &st->regs[k] : &st->spill[k - 10];
		if (r->t == T_MV && r->nul && r->id == id) {
			if (is_null) {
				*r = konst(0);
			} else {
				r->nul = 0;
				r->id = 0;
			}
		}
	}
}

/* Result of a step: the next pc, or two successors (the jump's state is *js). */
enum { S_NEXT, S_EXIT, S_BOTH };

static int branch(uint32_t pc, struct state *st, const struct kt_bpf_insn *i, const struct info *d, uint32_t *next, struct state *js)
{
	struct reg a = UNINIT, b = UNINIT;
	uint32_t fall = pc + 1, jump = (uint32_t)target(pc);
	TRY(rd(st, pc, kt_bpf__dst(i), &a));
	if (d->reg_src)
		TRY(rd(st, pc, kt_bpf__src(i), &b));
	else /* JMP32 compares the low 32 bits with the immediate's 32 bits; JMP sign-extends it */
		b = d->width == 32 ? konst((uint32_t)i->imm) : i->imm >= 0 ? konst(i->imm) : UNKNOWN;
	*next = fall;
	/* null check on a map-value-or-null pointer */
	if (a.t == T_MV && a.nul && !d->reg_src && i->imm == 0 && d->width == 64 && (d->op == 0x10 || d->op == 0x50)) {
		*js = *st;
		mark_null(d->op == 0x10 ? js : st, a.id, 1);
		mark_null(d->op == 0x10 ? st : js, a.id, 0);
		return S_BOTH;
	}
	/* signed = unsigned while both sign bits are clear; a 32-bit comparison is the 64-bit one
	 * when both values fit in 32 bits */
	int sgn = d->op == 0x60 || d->op == 0x70 || d->op == 0xc0 || d->op == 0xd0;
	int64_t limit = d->width == 32 ? (sgn ? 0x7fffffff : U32MAX) : sgn ? SAFE : INF;
	if (a.t != T_S || b.t != T_S || d->op == 0x40 || a.hi > limit || b.hi > limit) {
		*js = *st;
		return S_BOTH;
	}
	unsigned op;
	switch (d->op) {
	case 0x10: op = C_EQ; break;
	case 0x50: op = C_NE; break;
	case 0x20: case 0x60: op = C_GT; break;
	case 0x30: case 0x70: op = C_GE; break;
	case 0xa0: case 0xc0: op = C_LT; break;
	default: op = C_LE; break;
	}
	struct reg ta, tb, fa, fb;
	int t = refine(op, &a, &b, &ta, &tb), f = refine(NEGATE[op], &a, &b, &fa, &fb);
	if (!t)
		return S_NEXT;
	if (!f) {
		*next = jump;
		return S_NEXT;
	}
	*js = *st;
	js->regs[kt_bpf__dst(i)] = ta;
	if (d->reg_src && kt_bpf__src(i) != kt_bpf__dst(i))
		js->regs[kt_bpf__src(i)] = tb;
	st->regs[kt_bpf__dst(i)] = fa;
	if (d->reg_src && kt_bpf__src(i) != kt_bpf__dst(i))
		st->regs[kt_bpf__src(i)] = fb;
	return S_BOTH;
}

static int call(uint32_t pc, struct state *st, int32_t id)
{
	const struct helper_spec *h = helper_spec(id);
	int map = -1;
	if (!h)
		return fail(pc, "unknown helper %d", id);
	for (unsigned k = 0; k < h->nargs; k++) {
		unsigned r = k + 1, kind = h->args[k];
		const struct reg *a = &st->regs[r];
		const char *want = NULL;
		switch (kind) {
		case A_MAP: if (a->t != T_MAP) want = "map pointer"; break;
		case A_SCALAR: if (a->t != T_S) want = a->t == T_U ? "an initialized scalar" : "scalar"; break;
		default: if (a->t != T_FP) want = kind == A_KEY ? "stack pointer to the key" : "stack pointer to the value"; break;
		}
		if (want)
			return fail(pc, "helper %s arg%u (r%u): expected %s, got %s", h->name, r, r, want, type_name(a));
		if (kind == A_MAP) {
			map = a->map;
			/* for the JIT: the map this call gets on every path (pruned paths are covered) */
			uint8_t *seen = &v.call_map[pc];
			*seen = *seen == 0 || *seen == map + 1 ? (uint8_t)(map + 1) : KT_BPF_CALL_MAP_MIXED;
		}
		if (kind == A_KEY || kind == A_VALUE) {
			const struct what w = { h->name, r, kind == A_VALUE, 0 };
			int64_t at;
			TRY(check_stack(st, pc, a, 0, kind == A_KEY ? v.maps[map].key_size : v.maps[map].value_size, 1, &w, &at));
		}
	}
	for (unsigned r = 1; r <= 5; r++)
		st->regs[r] = UNINIT;
	if (!h->ret_map_value) {
		st->regs[0] = UNKNOWN;
		return 0;
	}
	/* an older unchecked result of this same call site can no longer be told apart: demote it */
	for (unsigned k = 0; k < 10 + SLOTS; k++) {
		struct reg *r = k < 10 ? &st->regs[k] : &st->spill[k - 10];
		if (r->t == T_MV && r->nul && r->id == pc + 1)
			*r = UNKNOWN;
	}
	struct reg r0 = { T_MV, (uint8_t)map, 1, 0, pc + 1, 0, 0 };
	st->regs[0] = r0;
	return 0;
}

static int step(uint32_t pc, struct state *st, uint32_t *next, struct state *js)
{
	const struct kt_bpf_insn *i = &v.insns[pc];
	const struct info *d = &v.info[pc];
	unsigned dreg = kt_bpf__dst(i), sreg = kt_bpf__src(i), size = d->width / 8;
	struct reg x = UNINIT, y = UNINIT;
	*next = pc + 1;
	switch (d->kind) {
	case K_ALU:
		TRY(alu(pc, st, i, d));
		return S_NEXT;
	case K_END: {
		/* le (ALU32 class, source K) truncates on this little-endian machine; a swap keeps only the width */
		int w = i->imm;
		TRY(rd(st, pc, dreg, &x));
		y = w == 64 ? UNKNOWN : scalar(0, ((int64_t)1 << w) - 1);
		if (x.t == T_S && d->width == 32 && !(i->code & 8))
			y = w == 64 ? x : w == 32 ? trunc32(x) : x.hi < 65536 ? x : y;
		TRY(wr(st, pc, dreg, y));
		return S_NEXT;
	}
	case K_LDDW:
		*next = pc + 2;
		if (d->op == 0) {
			uint64_t k = (uint32_t)i->imm | (uint64_t)(uint32_t)v.insns[pc + 1].imm << 32;
			TRY(wr(st, pc, dreg, k <= (uint64_t)SAFE ? konst((int64_t)k) : UNKNOWN));
		} else if (d->op == KT_BPF_PSEUDO_MAP) { /* the static checks made sure the map exists */
			struct reg m = { T_MAP, (uint8_t)i->imm, 0, 0, 0, 0, 0 };
			TRY(wr(st, pc, dreg, m));
		} else {
			return fail(pc, "lddw pseudo source %u is not supported (maps are src 1)", d->op);
		}
		return S_NEXT;
	case K_LD:
		return fail(pc, "legacy packet access (LD ABS/IND) is not supported");
	case K_LDX:
		TRY(access(st, pc, sreg, i->off, size, 0, NULL, &x));
		TRY(wr(st, pc, dreg, d->memsx ? UNKNOWN : x));
		return S_NEXT;
	case K_ST:
		x = d->width == 64 && i->imm >= 0 ? konst(i->imm) : UNKNOWN;
		TRY(access(st, pc, dreg, i->off, size, 1, &x, &y));
		return S_NEXT;
	case K_STX:
		TRY(rd(st, pc, sreg, &x));
		TRY(access(st, pc, dreg, i->off, size, 1, &x, &y));
		return S_NEXT;
	case K_ATOMIC:
		TRY(rd(st, pc, sreg, &x));
		if (x.t != T_S)
			return fail(pc, "atomic operand r%u must be a scalar, not a %s", sreg, type_name(&x));
		if (d->op == 0xf0)
			TRY(rd(st, pc, 0, &y));
		TRY(access(st, pc, dreg, i->off, size, 0, NULL, &y));
		/* contexts, map values and the stack are 8-byte aligned, so the offset decides; a
		 * misaligned atomic can split a cache line (a bus lock, fatal under split-lock detection) */
		if (st->regs[dreg].lo != st->regs[dreg].hi || (st->regs[dreg].lo + i->off) % size) {
			char range[64];
			return fail(pc, "misaligned atomic access: offset %s is not %u-byte aligned",
				    range_text(st->regs[dreg].lo + i->off, st->regs[dreg].hi + i->off, range, sizeof range), size);
		}
		TRY(access(st, pc, dreg, i->off, size, 1, &UNKNOWN, &y));
		if (d->op == 0xf0)
			st->regs[0] = size == 4 ? U32 : UNKNOWN;
		else if (d->fetch)
			TRY(wr(st, pc, sreg, size == 4 ? U32 : UNKNOWN));
		return S_NEXT;
	case K_CALL:
		if (d->op != 0)
			return fail(pc, "%s are not supported", d->op == 1 ? "BPF-to-BPF calls" : "kfunc calls");
		TRY(call(pc, st, i->imm));
		return S_NEXT;
	case K_EXIT:
		TRY(rd(st, pc, 0, &x));
		return S_EXIT;
	case K_JA:
		*next = (uint32_t)target(pc);
		return S_NEXT;
	default:
		return branch(pc, st, i, d, next, js);
	}
}

/* ---------------------------------------------------------------- exploration */

static struct state jump_state;

static int too_complex(uint32_t pc, int32_t back)
{
	return kt_bpf__fail(v.err, -KT_E2BIG, back >= 0 ? (uint32_t)back : pc,
			    "program too complex: exceeded %u processed instructions%s", v.budget,
			    back >= 0 ? " (loop not provably bounded)" : "");
}

static int explore(void)
{
	struct state *st = &v.cur;
	memset(st, 0, sizeof *st);
	st->regs[1] = mk(T_CTX, 0, 0);
	st->regs[10] = mk(T_FP, 0, 0);
	uint32_t pc = 0, back = UINT32_MAX;
	for (;;) {
		for (;;) {
			if (++v.processed > v.budget)
				return too_complex(pc, (int32_t)back);
			if (v.prune[pc]) {
				int r = visit(pc, st);
				if (r == V_LOOP)
					return fail(back != UINT32_MAX ? back : pc,
						    "unbounded loop: back-edge to %u reaches an identical state again (infinite loop)", pc);
				if (r == V_PRUNE) {
					end_path(st->node);
					break;
				}
			}
			uint32_t next;
			int r = step(pc, st, &next, &jump_state);
			if (r < 0)
				return r;
			if (r == S_EXIT) {
				end_path(st->node);
				break;
			}
			if (r == S_BOTH) {
				/* continue with the fallthrough, queue the jump */
				uint32_t jump = (uint32_t)target(pc);
				if (st->node)
					st->node->branches++;
				TRY(push(jump, jump <= pc ? pc : back, &jump_state));
			} else if (next <= pc) {
				back = pc;
			}
			pc = next;
			if (pc >= v.n) {
				uint32_t last = v.n - 1;
				if (v.second[last])
					last--;
				return fail(last, "falls off the end of the program (last instruction must be exit or a jump)");
			}
		}
		if (!pop(&pc, &back, st))
			return 0;
	}
}

const uint8_t *kt_bpf__verify_call_maps(void)
{
	return v.call_map;
}

int kt_bpf__verify(const struct kt_bpf_insn *insns, uint32_t n, const struct kt_bpf_map_shape *maps, uint32_t nmaps,
		   uint32_t ctx_size, uint32_t budget, struct kt_bpf_verify_error *err)
{
	if (n == 0)
		return kt_bpf__fail(err, -KT_EINVAL, 0, "empty program");
	if (n > KT_BPF_MAX_INSNS)
		return kt_bpf__fail(err, -KT_E2BIG, 0xffffffffu, "program too long: %u instructions", n);
	v.insns = insns;
	v.n = n;
	v.maps = maps;
	v.nmaps = nmaps;
	v.ctx_size = ctx_size;
	v.budget = budget;
	v.err = err;
	v.processed = 0;
	v.node_used = v.work_used = 0;
	memset(v.second, 0, n);
	memset(v.prune, 0, n);
	memset(v.live, 0, n * sizeof v.live[0]);
	memset(v.rel, 0, n * sizeof v.rel[0]);
	memset(v.at_pc, 0, n * sizeof v.at_pc[0]);
	memset(v.call_map, 0, n);
	memset(v.bucket, 0, sizeof v.bucket);
	TRY(static_checks());
	liveness();
	return explore();
}
