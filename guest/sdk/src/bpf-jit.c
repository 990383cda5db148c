/*
 * eBPF to x86-64 JIT for the guest runtime (docs/bpf-runtime.md, "JIT").
 *
 * Input is a program the verifier accepted, with every lddw already resolved to an immediate.
 * Output is one SysV function, uint64_t f(void *ctx), in a caller-supplied buffer. Nothing
 * here calls into the guest SDK, so the same file compiles natively for the host-side tests.
 *
 * Register mapping: eBPF r1-r5 sit in the SysV argument registers (rdi, rsi, rdx, rcx, r8),
 * so a helper call is just `movabs rax, fn; call rax`; r6-r9 sit in callee-saved registers
 * (rbx, r13, r14, r15) so helpers preserve them; r0 = rax (the return value); r10 = rbp, the
 * top of a 512-byte area on the native stack. r9, r10 and r11 are scratch.
 *
 * A `call 1` whose map the caller knows to be an array (kt_bpf_jit_compile_inline) is inlined
 * as a bounds check and an address computation, as Linux does; hash lookups keep the call.
 *
 * Code size is found by repeated passes: forward jumps are sized from the previous pass's
 * offsets (a pessimistic guess at first), backward jumps from this pass's exact ones. Once a
 * pass changes no offset, one more pass writes the code. If that takes too long, every jump
 * becomes rel32, which settles in one pass.
 */
#include <kvmtalk.h>

enum { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15 };

static const uint8_t reg_map[11] = { RAX, RDI, RSI, RDX, RCX, R8, RBX, R13, R14, R15, RBP };

/* Scratch registers: never hold an eBPF register. */
#define AUX R9
#define TMP R10
#define TMP2 R11

/* Encoding flags: REX.W, a byte register operand (forces REX so sil/dil/bpl are reachable),
 * and the 16-bit operand-size prefix. */
enum { W = 1, B8 = 2, P66 = 4 };

/* x86 condition codes. */
enum { CC_B = 0x2, CC_AE = 0x3, CC_E = 0x4, CC_NE = 0x5, CC_BE = 0x6, CC_A = 0x7,
       CC_L = 0xc, CC_GE = 0xd, CC_LE = 0xe, CC_G = 0xf, CC_ALWAYS = -1 };

/* Upper bound on the code for one eBPF instruction (the initial guess for forward jumps). */
#define MAX_INSN_BYTES 64
/* Sizing passes before falling back to rel32 jumps. */
#define MAX_PASSES 16

struct jit {
	uint8_t *buf;         /* NULL while sizing */
	unsigned long cap;
	unsigned long len;
	int overflow;
	int long_jumps;
	int changed;          /* some offset moved in this pass */
	uint32_t *addrs;      /* addrs[k]: offset of slot k's code; addrs[n]: the epilogue */
	const struct kt_bpf_insn *insns;
	uint32_t n;
	kt_bpf_helper_fn (*helper)(int32_t id);
	const struct kt_bpf_jit_array *const *arrays; /* per slot, or NULL: lookups to inline */
};

/* ---- byte emission ---------------------------------------------------------------------- */

static void emit1(struct jit *j, uint8_t b)
{
	if (j->buf) {
		if (j->len < j->cap)
			j->buf[j->len] = b;
		else
			j->overflow = 1;
	}
	j->len++;
}

static void emit2(struct jit *j, uint16_t v)
{
	emit1(j, (uint8_t)v);
	emit1(j, (uint8_t)(v >> 8));
}

static void emit4(struct jit *j, uint32_t v)
{
	emit2(j, (uint16_t)v);
	emit2(j, (uint16_t)(v >> 16));
}

static void emit8(struct jit *j, uint64_t v)
{
	emit4(j, (uint32_t)v);
	emit4(j, (uint32_t)(v >> 32));
}

static int fits8(long v)
{
	return v >= -128 && v <= 127;
}

/* Prefixes, REX and opcode (one byte, or 0x0f xx). reg is ModRM.reg (or an opcode extension),
 * rm is ModRM.rm or the register folded into the opcode. */
static void enc(struct jit *j, int f, unsigned op, int reg, int rm)
{
	uint8_t rex = 0x40 | ((f & W) ? 8 : 0) | ((reg & 8) ? 4 : 0) | ((rm & 8) ? 1 : 0);

	if (f & P66)
		emit1(j, 0x66);
	if (rex != 0x40 || ((f & B8) && ((reg >= 4 && reg < 8) || (rm >= 4 && rm < 8))))
		emit1(j, rex);
	if (op > 0xff)
		emit1(j, (uint8_t)(op >> 8));
	emit1(j, (uint8_t)op);
}

/* op with register operands: ModRM.reg = reg, ModRM.rm = rm. */
static void rr(struct jit *j, int f, unsigned op, int reg, int rm)
{
	enc(j, f, op, reg, rm);
	emit1(j, (uint8_t)(0xc0 | (reg & 7) << 3 | (rm & 7)));
}

/* op with a memory operand [base + disp]. */
static void rm(struct jit *j, int f, unsigned op, int reg, int base, int32_t disp)
{
	int mod = disp == 0 && (base & 7) != RBP ? 0 : fits8(disp) ? 1 : 2;

	enc(j, f, op, reg, base);
	emit1(j, (uint8_t)(mod << 6 | (reg & 7) << 3 | (base & 7)));
	if ((base & 7) == RSP)
		emit1(j, 0x24); /* SIB: base only */
	if (mod == 1)
		emit1(j, (uint8_t)disp);
	else if (mod == 2)
		emit4(j, (uint32_t)disp);
}

/* ---- common sequences --------------------------------------------------------------------- */

/* mov dst, src; a 32-bit move to itself is kept because it zero-extends. */
static void mov_rr(struct jit *j, int w, int dst, int src)
{
	if (w && dst == src)
		return;
	rr(j, w ? W : 0, 0x89, src, dst);
}

/* dst = imm, sign-extended to 64 bits when w, zero-extended otherwise. */
static void mov_imm(struct jit *j, int w, int dst, int32_t imm)
{
	if (imm == 0) {
		rr(j, 0, 0x31, dst, dst); /* xor r32, r32 */
	} else if (!w || imm > 0) {
		enc(j, 0, 0xb8 | (dst & 7), 0, dst);
		emit4(j, (uint32_t)imm);
	} else {
		rr(j, W, 0xc7, 0, dst);
		emit4(j, (uint32_t)imm);
	}
}

static void mov_imm64(struct jit *j, int dst, uint64_t v)
{
	if (v <= 0xffffffffu) {
		mov_imm(j, 0, dst, (int32_t)(uint32_t)v);
	} else if ((int64_t)v == (int32_t)v) {
		mov_imm(j, 1, dst, (int32_t)v);
	} else {
		enc(j, W, 0xb8 | (dst & 7), 0, dst);
		emit8(j, v);
	}
}

/* Group-1 op (ext: /0 add, /1 or, /4 and, /5 sub, /6 xor, /7 cmp) with an immediate. */
static void alu_imm(struct jit *j, int w, int ext, int dst, int32_t imm)
{
	if (fits8(imm)) {
		rr(j, w ? W : 0, 0x83, ext, dst);
		emit1(j, (uint8_t)imm);
	} else {
		rr(j, w ? W : 0, 0x81, ext, dst);
		emit4(j, (uint32_t)imm);
	}
}

/* Short forward jump inside one instruction's code: returns where to patch. */
static unsigned long jcc8_fwd(struct jit *j, int cc)
{
	emit1(j, cc == CC_ALWAYS ? 0xeb : (uint8_t)(0x70 | cc));
	emit1(j, 0);
	return j->len;
}

/* Points the jump that ended at `at` to the current position. */
static void land(struct jit *j, unsigned long at)
{
	if (j->buf && at <= j->cap)
		j->buf[at - 1] = (uint8_t)(j->len - at);
}

/* ---- instruction groups ------------------------------------------------------------------- */

/* Shift by a register: x86 takes the count in cl, which is eBPF r4's register. */
static void shift_x(struct jit *j, int w, int ext, int dst, int src)
{
	int f = w ? W : 0;

	if (src == RCX) {
		rr(j, f, 0xd3, ext, dst);
		return;
	}
	mov_rr(j, 1, TMP2, RCX);
	mov_rr(j, 1, RCX, src);
	if (dst == RCX) {
		rr(j, f, 0xd3, ext, TMP2);
		mov_rr(j, 1, RCX, TMP2);
	} else {
		rr(j, f, 0xd3, ext, dst);
		mov_rr(j, 1, RCX, TMP2);
	}
}

/* The x86 divide itself, divisor in TMP2 and known to be safe; rax and rdx are preserved
 * unless they are dst. */
static void div_core(struct jit *j, int w, int is_mod, int is_signed, int dst)
{
	int f = w ? W : 0;
	int result = is_mod ? RDX : RAX;

	if (dst != RAX)
		mov_rr(j, 1, TMP, RAX);
	if (dst != RDX)
		mov_rr(j, 1, AUX, RDX);
	if (dst != RAX)
		mov_rr(j, w, RAX, dst);
	if (is_signed) {
		if (w)
			emit1(j, 0x48);
		emit1(j, 0x99); /* cqo / cdq */
	} else {
		rr(j, 0, 0x31, RDX, RDX);
	}
	rr(j, f, 0xf7, is_signed ? 7 : 6, TMP2); /* idiv / div */
	if (dst != result)
		mov_rr(j, 1, dst, result); /* a 32-bit divide already zero-extended it */
	if (dst != RAX)
		mov_rr(j, 1, RAX, TMP);
	if (dst != RDX)
		mov_rr(j, 1, RDX, AUX);
}

/* What eBPF defines for a zero divisor: div gives 0, mod leaves dst (zero-extended if 32-bit). */
static void div_by_zero(struct jit *j, int w, int is_mod, int dst)
{
	if (!is_mod)
		rr(j, 0, 0x31, dst, dst);
	else if (!w)
		mov_rr(j, 0, dst, dst);
}

/* Division by -1, where idiv would fault on INT_MIN: sdiv negates (INT_MIN stays), smod is 0. */
static void sdiv_by_minus1(struct jit *j, int w, int is_mod, int dst)
{
	if (is_mod)
		rr(j, 0, 0x31, dst, dst);
	else
		rr(j, w ? W : 0, 0xf7, 3, dst);
}

static void divmod(struct jit *j, int w, int is_mod, int is_signed, int dst, int src, int is_k, int32_t imm)
{
	unsigned long to_zero, to_do = 0, to_done1 = 0, to_done2;
	int f = w ? W : 0;

	if (is_k) {
		if (imm == 0)
			div_by_zero(j, w, is_mod, dst);
		else if (is_signed && imm == -1)
			sdiv_by_minus1(j, w, is_mod, dst);
		else {
			mov_imm(j, w, TMP2, imm);
			div_core(j, w, is_mod, is_signed, dst);
		}
		return;
	}
	mov_rr(j, w, TMP2, src);
	rr(j, f, 0x85, TMP2, TMP2); /* test */
	to_zero = jcc8_fwd(j, CC_E);
	if (is_signed) {
		alu_imm(j, w, 7, TMP2, -1); /* cmp */
		to_do = jcc8_fwd(j, CC_NE);
		sdiv_by_minus1(j, w, is_mod, dst);
		to_done1 = jcc8_fwd(j, CC_ALWAYS);
		land(j, to_do);
	}
	div_core(j, w, is_mod, is_signed, dst);
	to_done2 = jcc8_fwd(j, CC_ALWAYS);
	land(j, to_zero);
	div_by_zero(j, w, is_mod, dst);
	if (is_signed)
		land(j, to_done1);
	land(j, to_done2);
}

static int alu(struct jit *j, const struct kt_bpf_insn *in, int dst, int src)
{
	int w = (in->code & 7) == 0x07, x = in->code & 0x08, f = w ? W : 0;
	int32_t imm = in->imm;

	switch (in->code & 0xf0) {
	case 0x00: case 0x10: case 0x40: case 0x50: case 0xa0: { /* add sub or and xor */
		static const uint8_t opc[11] = { [0] = 0x01, [1] = 0x29, [4] = 0x09, [5] = 0x21, [10] = 0x31 };
		static const uint8_t ext[11] = { [0] = 0, [1] = 5, [4] = 1, [5] = 4, [10] = 6 };
		int k = in->code >> 4;

		if (x)
			rr(j, f, opc[k], src, dst);
		else
			alu_imm(j, w, ext[k], dst, imm);
		return 0;
	}
	case 0x20: /* mul */
		if (x) {
			rr(j, f, 0x0faf, dst, src);
		} else if (fits8(imm)) {
			rr(j, f, 0x6b, dst, dst);
			emit1(j, (uint8_t)imm);
		} else {
			rr(j, f, 0x69, dst, dst);
			emit4(j, (uint32_t)imm);
		}
		return 0;
	case 0x30: case 0x90: /* div mod, off 1 = signed */
		if (in->off != 0 && in->off != 1)
			return -KT_EINVAL;
		divmod(j, w, (in->code & 0xf0) == 0x90, in->off, dst, src, !x, imm);
		return 0;
	case 0x60: case 0x70: case 0xc0: { /* lsh rsh arsh */
		int ext = (in->code & 0xf0) == 0x60 ? 4 : (in->code & 0xf0) == 0x70 ? 5 : 7;
		int count = imm & (w ? 63 : 31);

		if (x)
			shift_x(j, w, ext, dst, src);
		else if (count == 0)
			mov_rr(j, w, dst, dst); /* nothing, but a 32-bit op still zero-extends */
		else if (count == 1)
			rr(j, f, 0xd1, ext, dst);
		else {
			rr(j, f, 0xc1, ext, dst);
			emit1(j, (uint8_t)count);
		}
		return 0;
	}
	case 0x80: /* neg */
		rr(j, f, 0xf7, 3, dst);
		return 0;
	case 0xb0: /* mov, movsx */
		if (!x) {
			mov_imm(j, w, dst, imm);
		} else if (in->off == 0) {
			mov_rr(j, w, dst, src);
		} else if (in->off == 8) {
			rr(j, f | B8, 0x0fbe, dst, src);
		} else if (in->off == 16) {
			rr(j, f, 0x0fbf, dst, src);
		} else if (in->off == 32 && w) {
			rr(j, W, 0x63, dst, src);
		} else {
			return -KT_EINVAL;
		}
		return 0;
	case 0xd0: /* le, be (ALU), bswap (ALU64 K) */
		if (w && x)
			return -KT_EINVAL;
		if (!w && !x) { /* to little endian: truncate */
			if (imm == 16)
				rr(j, 0, 0x0fb7, dst, dst);
			else if (imm == 32)
				mov_rr(j, 0, dst, dst);
			else if (imm != 64)
				return -KT_EINVAL;
			return 0;
		}
		if (imm == 16) {
			rr(j, P66, 0xc1, 0, dst); /* rol r16, 8 */
			emit1(j, 8);
			rr(j, 0, 0x0fb7, dst, dst);
		} else if (imm == 32 || imm == 64) {
			enc(j, imm == 64 ? W : 0, 0x0fc8 | (dst & 7), 0, dst);
		} else {
			return -KT_EINVAL;
		}
		return 0;
	}
	return -KT_EINVAL;
}

static int ldx(struct jit *j, const struct kt_bpf_insn *in, int dst, int src)
{
	int size = in->code & 0x18;

	if ((in->code & 0xe0) == 0x60) {
		static const unsigned op[4] = { 0x8b, 0x0fb7, 0x0fb6, 0x8b }; /* W H B DW */
		rm(j, size == 0x18 ? W : 0, op[size >> 3], dst, src, in->off);
	} else if ((in->code & 0xe0) == 0x80 && size != 0x18) {
		static const unsigned op[3] = { 0x63, 0x0fbf, 0x0fbe }; /* movsxd, movsx w, movsx b */
		rm(j, W, op[size >> 3], dst, src, in->off);
	} else {
		return -KT_EINVAL;
	}
	return 0;
}

static int st(struct jit *j, const struct kt_bpf_insn *in, int dst)
{
	switch (in->code & 0x18) {
	case 0x10: rm(j, 0, 0xc6, 0, dst, in->off); emit1(j, (uint8_t)in->imm); break;
	case 0x08: rm(j, P66, 0xc7, 0, dst, in->off); emit2(j, (uint16_t)in->imm); break;
	case 0x00: rm(j, 0, 0xc7, 0, dst, in->off); emit4(j, (uint32_t)in->imm); break;
	default: rm(j, W, 0xc7, 0, dst, in->off); emit4(j, (uint32_t)in->imm); break;
	}
	return 0;
}

static void stx_mem(struct jit *j, const struct kt_bpf_insn *in, int dst, int src)
{
	switch (in->code & 0x18) {
	case 0x10: rm(j, B8, 0x88, src, dst, in->off); break;
	case 0x08: rm(j, P66, 0x89, src, dst, in->off); break;
	case 0x00: rm(j, 0, 0x89, src, dst, in->off); break;
	default: rm(j, W, 0x89, src, dst, in->off); break;
	}
}

/* Fetching or/and/xor have no x86 instruction: a cmpxchg loop on [TMP2]. */
static void atomic_fetch_loop(struct jit *j, int w, unsigned op, int dst, int src, int16_t off)
{
	int f = w ? W : 0;
	int operand = src == RAX ? TMP : src;
	unsigned long loop;

	rm(j, W, 0x8d, TMP2, dst, off); /* lea */
	mov_rr(j, 1, TMP, RAX);
	rm(j, f, 0x8b, RAX, TMP2, 0);
	loop = j->len;
	mov_rr(j, w, AUX, RAX);
	rr(j, f, op, operand, AUX);
	emit1(j, 0xf0);
	rm(j, f, 0x0fb1, AUX, TMP2, 0);
	emit1(j, 0x70 | CC_NE);
	emit1(j, (uint8_t)(loop - (j->len + 1)));
	if (src == RAX) {
		if (!w)
			mov_rr(j, 0, RAX, RAX);
	} else {
		mov_rr(j, w, src, RAX);
		mov_rr(j, 1, RAX, TMP);
	}
}

static int atomic(struct jit *j, const struct kt_bpf_insn *in, int dst, int src)
{
	int size = in->code & 0x18, w = size == 0x18, f = w ? W : 0;

	if (size != 0x00 && size != 0x18)
		return -KT_EINVAL;
	switch (in->imm) {
	case 0x00: case 0x40: case 0x50: case 0xa0: { /* add or and xor */
		static const uint8_t opc[11] = { [0] = 0x01, [4] = 0x09, [5] = 0x21, [10] = 0x31 };
		emit1(j, 0xf0);
		rm(j, f, opc[in->imm >> 4], src, dst, in->off);
		return 0;
	}
	case 0x01: /* fetch add */
		emit1(j, 0xf0);
		rm(j, f, 0x0fc1, src, dst, in->off);
		return 0;
	case 0x41: atomic_fetch_loop(j, w, 0x09, dst, src, in->off); return 0;
	case 0x51: atomic_fetch_loop(j, w, 0x21, dst, src, in->off); return 0;
	case 0xa1: atomic_fetch_loop(j, w, 0x31, dst, src, in->off); return 0;
	case 0xe1: /* xchg (implicitly locked) */
		rm(j, f, 0x87, src, dst, in->off);
		return 0;
	case 0xf1: /* cmpxchg: r0 is compared and gets the old value */
		emit1(j, 0xf0);
		rm(j, f, 0x0fb1, src, dst, in->off);
		if (!w)
			mov_rr(j, 0, RAX, RAX); /* on success the upper half of rax was left alone */
		return 0;
	}
	return -KT_EINVAL;
}

/* A jump from the end of slot i's code (it is always the last thing emitted for i) to slot
 * target's code (n = the epilogue). */
static void jump(struct jit *j, int cc, uint32_t i, uint32_t target)
{
	int long_len = cc == CC_ALWAYS ? 5 : 6, use_short;
	long disp;

	if (target == i + 1)
		return;
	if (target <= i) { /* backward: exact, this pass has placed the target already */
		disp = (long)j->addrs[target] - (long)(j->len + 2);
		use_short = !j->long_jumps && fits8(disp);
		if (!use_short)
			disp = (long)j->addrs[target] - (long)(j->len + long_len);
	} else { /* forward: the previous pass's distance, exact once the passes settle */
		disp = (long)j->addrs[target] - (long)j->addrs[i + 1];
		use_short = !j->long_jumps && fits8(disp);
	}
	if (use_short) {
		emit1(j, cc == CC_ALWAYS ? 0xeb : (uint8_t)(0x70 | cc));
		emit1(j, (uint8_t)disp);
	} else {
		if (cc == CC_ALWAYS) {
			emit1(j, 0xe9);
		} else {
			emit1(j, 0x0f);
			emit1(j, (uint8_t)(0x80 | cc));
		}
		emit4(j, (uint32_t)disp);
	}
}

/*
 * map_lookup_elem on the array map a, which r1 holds at this call on every path, inlined as
 * Linux's array_map_gen_lookup: r0 = the u32 key at r2 < max_entries ? data + key * stride : 0.
 * data and the shape are constants here (maps never move), so r1 itself is not read.
 */
static int array_lookup(struct jit *j, const struct kt_bpf_jit_array *a)
{
	uint64_t stride = ((uint64_t)a->value_size + 7) & ~7ull;
	unsigned long to_null, to_done;

	if (stride > 0x7fffffff)
		return -KT_EINVAL;
	rm(j, 0, 0x8b, RAX, reg_map[2], 0);             /* mov eax, [r2]: zero-extended key */
	alu_imm(j, 0, 7, RAX, (int32_t)a->max_entries); /* cmp eax, max_entries (unsigned jae below) */
	to_null = jcc8_fwd(j, CC_AE);
	if (stride && !(stride & (stride - 1))) {
		rr(j, W, 0xc1, 4, RAX);                 /* shl rax, log2(stride) */
		emit1(j, (uint8_t)__builtin_ctzll(stride));
	} else if (stride) {
		rr(j, W, 0x69, RAX, RAX);               /* imul rax, rax, stride */
		emit4(j, (uint32_t)stride);
	}
	if ((int64_t)a->data == (int32_t)a->data) {
		alu_imm(j, 1, 0, RAX, (int32_t)a->data); /* add rax, data */
	} else {
		mov_imm64(j, TMP, a->data);
		rr(j, W, 0x01, TMP, RAX);               /* add rax, TMP */
	}
	to_done = jcc8_fwd(j, CC_ALWAYS);
	land(j, to_null);
	rr(j, 0, 0x31, RAX, RAX);                       /* NULL */
	land(j, to_done);
	return 0;
}

/* Checks a jump's target: inside the program and not the second half of an lddw. */
static int target_ok(const struct jit *j, int64_t t)
{
	return t >= 0 && t < j->n && !(t > 0 && j->insns[t - 1].code == 0x18);
}

static int jmp(struct jit *j, const struct kt_bpf_insn *in, uint32_t i, int dst, int src)
{
	static const int8_t cc_of[16] = {
		[1] = CC_E, [2] = CC_A, [3] = CC_AE, [4] = CC_NE, [5] = CC_NE, [6] = CC_G, [7] = CC_GE,
		[10] = CC_B, [11] = CC_BE, [12] = CC_L, [13] = CC_LE,
	};
	int w = (in->code & 7) == 0x05, f = w ? W : 0, op = in->code >> 4;
	int64_t target = (int64_t)i + 1 + in->off;

	switch (op) {
	case 0x0: /* ja (JMP: off, JMP32: imm) */
		if (!w)
			target = (int64_t)i + 1 + in->imm;
		if (!target_ok(j, target))
			return -KT_EINVAL;
		jump(j, CC_ALWAYS, i, (uint32_t)target);
		return 0;
	case 0x8: { /* call */
		kt_bpf_helper_fn fn;

		if (!w)
			return -KT_EINVAL;
		if ((in->regs >> 4) != 0)
			return -KT_EOPNOTSUPP; /* BPF-to-BPF calls and kfuncs */
		if (in->imm == 1 && j->arrays && j->arrays[i])
			return array_lookup(j, j->arrays[i]);
		fn = j->helper ? j->helper(in->imm) : NULL;
		if (!fn)
			return -KT_EOPNOTSUPP;
		enc(j, W, 0xb8, 0, RAX);
		emit8(j, (uint64_t)(uintptr_t)fn);
		emit1(j, 0xff);
		emit1(j, 0xd0); /* call rax */
		return 0;
	}
	case 0x9: /* exit */
		if (!w)
			return -KT_EINVAL;
		jump(j, CC_ALWAYS, i, j->n);
		return 0;
	}
	if (cc_of[op] == 0 || !target_ok(j, target))
		return -KT_EINVAL;
	if (in->code & 0x08)
		rr(j, f, op == 4 ? 0x85 : 0x39, src, dst); /* test / cmp dst, src */
	else if (op == 4) {
		rr(j, f, 0xf7, 0, dst); /* test dst, imm32 */
		emit4(j, (uint32_t)in->imm);
	} else if (in->imm == 0)
		rr(j, f, 0x85, dst, dst); /* same flags as cmp dst, 0 */
	else
		alu_imm(j, w, 7, dst, in->imm);
	jump(j, cc_of[op], i, (uint32_t)target);
	return 0;
}

/* ---- driver ------------------------------------------------------------------------------- */

/* A one-slot instruction's result: an error, or 1 slot used. */
static int slots(int err)
{
	return err ? err : 1;
}

/* Emits slot i; returns the number of slots it used (1 or 2) or -KT_E*. */
static int emit_insn(struct jit *j, uint32_t i)
{
	const struct kt_bpf_insn *in = &j->insns[i];
	int dst_n = in->regs & 0xf, src_n = in->regs >> 4, cls = in->code & 7;
	int dst, src, writes_dst;

	if (dst_n > 10 || src_n > 10)
		return -KT_EINVAL;
	dst = reg_map[dst_n];
	src = reg_map[src_n];
	/* r10 is read-only: writing rbp would corrupt the frame. */
	writes_dst = cls == 0x04 || cls == 0x07 || cls == 0x01 || cls == 0x00;
	if (writes_dst && dst_n == 10)
		return -KT_EINVAL;

	switch (cls) {
	case 0x00: { /* lddw */
		const struct kt_bpf_insn *hi = in + 1;

		if (in->code != 0x18)
			return -KT_EOPNOTSUPP; /* legacy packet loads */
		if (src_n != 0)
			return -KT_EINVAL; /* unresolved map reference */
		if (i + 1 >= j->n || hi->code != 0 || hi->regs != 0 || hi->off != 0)
			return -KT_EINVAL;
		mov_imm64(j, dst, (uint64_t)(uint32_t)hi->imm << 32 | (uint32_t)in->imm);
		return 2;
	}
	case 0x01:
		return slots(ldx(j, in, dst, src));
	case 0x02:
		if ((in->code & 0xe0) != 0x60)
			return -KT_EINVAL;
		return slots(st(j, in, dst));
	case 0x03:
		if ((in->code & 0xe0) == 0x60) {
			stx_mem(j, in, dst, src);
			return 1;
		}
		if ((in->code & 0xe0) != 0xc0)
			return -KT_EINVAL;
		if ((in->imm & 1) && src_n == 10)
			return -KT_EINVAL; /* a fetch would write r10 */
		return slots(atomic(j, in, dst, src));
	case 0x04:
	case 0x07:
		return slots(alu(j, in, dst, src));
	default: /* 0x05, 0x06 */
		return slots(jmp(j, in, i, dst, src));
	}
}

static void prologue(struct jit *j)
{
	emit1(j, 0x55);                   /* push rbp */
	emit1(j, 0x53);                   /* push rbx */
	emit2(j, 0x5541);                 /* push r13 */
	emit2(j, 0x5641);                 /* push r14 */
	emit2(j, 0x5741);                 /* push r15: rsp is 16-byte aligned again */
	mov_rr(j, 1, RBP, RSP);           /* r10 = top of the eBPF stack */
	rr(j, W, 0x81, 5, RSP);           /* sub rsp, 512 */
	emit4(j, KT_BPF_STACK_SIZE);
}

static void epilogue(struct jit *j)
{
	rr(j, W, 0x81, 0, RSP);           /* add rsp, 512 */
	emit4(j, KT_BPF_STACK_SIZE);
	emit2(j, 0x5f41);                 /* pop r15 */
	emit2(j, 0x5e41);                 /* pop r14 */
	emit2(j, 0x5d41);                 /* pop r13 */
	emit1(j, 0x5b);                   /* pop rbx */
	emit1(j, 0x5d);                   /* pop rbp */
	emit1(j, 0xc3);                   /* ret */
}

static void set_addr(struct jit *j, uint32_t k)
{
	if (j->addrs[k] != j->len)
		j->changed = 1;
	j->addrs[k] = (uint32_t)j->len;
}

/* One pass over the program; 0 or -KT_E*. */
static int pass(struct jit *j)
{
	uint32_t i = 0;

	j->len = 0;
	j->changed = 0;
	prologue(j);
	set_addr(j, 0);
	while (i < j->n) {
		int used = emit_insn(j, i);

		if (used < 0)
			return used;
		if (used == 2)
			set_addr(j, i + 1);
		i += (uint32_t)used;
		set_addr(j, i);
	}
	epilogue(j);
	return 0;
}

long kt_bpf_jit_compile(const struct kt_bpf_insn *insns, uint32_t n, kt_bpf_helper_fn (*helper)(int32_t id), uint8_t *code, unsigned long cap)
{
	return kt_bpf_jit_compile_inline(insns, n, helper, NULL, code, cap);
}

long kt_bpf_jit_compile_inline(const struct kt_bpf_insn *insns, uint32_t n, kt_bpf_helper_fn (*helper)(int32_t id),
			       const struct kt_bpf_jit_array *const *arrays, uint8_t *code, unsigned long cap)
{
	uint32_t addrs[KT_BPF_MAX_INSNS + 1];
	struct jit j = { .insns = insns, .n = n, .helper = helper, .arrays = arrays, .addrs = addrs };
	int passes, err;

	if (!insns || n == 0 || !code)
		return -KT_EINVAL;
	if (n > KT_BPF_MAX_INSNS)
		return -KT_E2BIG;
	/* A pessimistic first guess, so forward jumps only ever shrink. */
	for (uint32_t k = 0; k <= n; k++)
		addrs[k] = k * MAX_INSN_BYTES + 64;
	for (passes = 0;; passes++) {
		if (passes == MAX_PASSES)
			j.long_jumps = 1;
		err = pass(&j);
		if (err)
			return err;
		if (!j.changed)
			break;
	}
	j.buf = code;
	j.cap = cap;
	err = pass(&j);
	if (err)
		return err;
	if (j.overflow)
		return -KT_E2BIG;
	return (long)j.len;
}
