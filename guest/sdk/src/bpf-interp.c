/*
 * The eBPF interpreter (RFC 9669) for verified programs whose lddw are resolved (src 0).
 *
 * The verifier has proven every access in bounds and every path finite, so memory is touched
 * directly. Arithmetic follows eBPF, not C: division by zero gives 0 (modulo leaves dst),
 * INT_MIN / -1 is INT_MIN, shift counts are masked, 32-bit results are zero-extended.
 * Unaligned accesses are legal in eBPF, hence memcpy for loads and stores.
 */
#include "bpf-internal.h"

static uint64_t ld(uint64_t addr, unsigned size, int sx)
{
	const void *p = (const void *)(uintptr_t)addr;
	switch (size) {
	case 1: { uint8_t v; memcpy(&v, p, 1); return sx ? (uint64_t)(int64_t)(int8_t)v : v; }
	case 2: { uint16_t v; memcpy(&v, p, 2); return sx ? (uint64_t)(int64_t)(int16_t)v : v; }
	case 4: { uint32_t v; memcpy(&v, p, 4); return sx ? (uint64_t)(int64_t)(int32_t)v : v; }
	default: { uint64_t v; memcpy(&v, p, 8); return v; }
	}
}

static void st(uint64_t addr, unsigned size, uint64_t v)
{
	void *p = (void *)(uintptr_t)addr;
	switch (size) {
	case 1: { uint8_t x = (uint8_t)v; memcpy(p, &x, 1); break; }
	case 2: { uint16_t x = (uint16_t)v; memcpy(p, &x, 2); break; }
	case 4: { uint32_t x = (uint32_t)v; memcpy(p, &x, 4); break; }
	default: memcpy(p, &v, 8);
	}
}

static uint64_t bswap(uint64_t v, int32_t width)
{
	switch (width) {
	case 16: return __builtin_bswap16((uint16_t)v);
	case 32: return __builtin_bswap32((uint32_t)v);
	default: return __builtin_bswap64(v);
	}
}

/* Signed division and modulo without C's undefined cases. */
static int64_t sdiv64(int64_t a, int64_t b)
{
	if (b == 0)
		return 0;
	if (b == -1)
		return (int64_t)(0 - (uint64_t)a);
	return a / b;
}
static int64_t smod64(int64_t a, int64_t b)
{
	if (b == 0)
		return a;
	if (b == -1)
		return 0;
	return a % b;
}

static uint64_t alu64(unsigned op, int16_t off, uint64_t a, uint64_t b)
{
	switch (op) {
	case 0x00: return a + b;
	case 0x10: return a - b;
	case 0x20: return a * b;
	case 0x30: return off ? (uint64_t)sdiv64((int64_t)a, (int64_t)b) : b ? a / b : 0;
	case 0x40: return a | b;
	case 0x50: return a & b;
	case 0x60: return a << (b & 63);
	case 0x70: return a >> (b & 63);
	case 0x80: return 0 - a;
	case 0x90: return off ? (uint64_t)smod64((int64_t)a, (int64_t)b) : b ? a % b : a;
	case 0xa0: return a ^ b;
	case 0xb0:
		switch (off) {
		case 8: return (uint64_t)(int64_t)(int8_t)b;
		case 16: return (uint64_t)(int64_t)(int16_t)b;
		case 32: return (uint64_t)(int64_t)(int32_t)b;
		default: return b;
		}
	default: /* 0xc0 */
		return (uint64_t)((int64_t)a >> (b & 63));
	}
}

static uint32_t alu32(unsigned op, int16_t off, uint32_t a, uint32_t b)
{
	switch (op) {
	case 0x30: return off ? (uint32_t)(int32_t)sdiv64((int32_t)a, (int32_t)b) : b ? a / b : 0;
	case 0x60: return a << (b & 31);
	case 0x70: return a >> (b & 31);
	case 0x90: return off ? (uint32_t)(int32_t)smod64((int32_t)a, (int32_t)b) : b ? a % b : a;
	case 0xb0:
		switch (off) {
		case 8: return (uint32_t)(int32_t)(int8_t)b;
		case 16: return (uint32_t)(int32_t)(int16_t)b;
		default: return b;
		}
	case 0xc0: return (uint32_t)((int32_t)a >> (b & 31));
	default: return (uint32_t)alu64(op, 0, a, b);
	}
}

static int cond(unsigned code, uint64_t a, uint64_t b)
{
	if ((code & 7) == 6) {
		uint32_t x = (uint32_t)a, y = (uint32_t)b;
		switch (code & 0xf0) {
		case 0x10: return x == y;
		case 0x20: return x > y;
		case 0x30: return x >= y;
		case 0x40: return (x & y) != 0;
		case 0x50: return x != y;
		case 0x60: return (int32_t)x > (int32_t)y;
		case 0x70: return (int32_t)x >= (int32_t)y;
		case 0xa0: return x < y;
		case 0xb0: return x <= y;
		case 0xc0: return (int32_t)x < (int32_t)y;
		default: return (int32_t)x <= (int32_t)y;
		}
	}
	switch (code & 0xf0) {
	case 0x10: return a == b;
	case 0x20: return a > b;
	case 0x30: return a >= b;
	case 0x40: return (a & b) != 0;
	case 0x50: return a != b;
	case 0x60: return (int64_t)a > (int64_t)b;
	case 0x70: return (int64_t)a >= (int64_t)b;
	case 0xa0: return a < b;
	case 0xb0: return a <= b;
	case 0xc0: return (int64_t)a < (int64_t)b;
	default: return (int64_t)a <= (int64_t)b;
	}
}

#define ATOMIC_OP(T, p, aop, v, r0, old)                                                              \
	do {                                                                                          \
		switch (aop & ~1) {                                                                   \
		case 0x00: old = __atomic_fetch_add((T *)p, (T)v, __ATOMIC_SEQ_CST); break;          \
		case 0x40: old = __atomic_fetch_or((T *)p, (T)v, __ATOMIC_SEQ_CST); break;           \
		case 0x50: old = __atomic_fetch_and((T *)p, (T)v, __ATOMIC_SEQ_CST); break;          \
		case 0xa0: old = __atomic_fetch_xor((T *)p, (T)v, __ATOMIC_SEQ_CST); break;          \
		case 0xe0: old = __atomic_exchange_n((T *)p, (T)v, __ATOMIC_SEQ_CST); break;         \
		default: {                                                                            \
			T expect = (T)r0;                                                             \
			__atomic_compare_exchange_n((T *)p, &expect, (T)v, false, __ATOMIC_SEQ_CST,   \
						    __ATOMIC_SEQ_CST);                                \
			old = expect;                                                                 \
		}                                                                                     \
		}                                                                                     \
	} while (0)

static const unsigned SIZE[4] = { 4, 2, 1, 8 };

uint64_t kt_bpf__interpret(const struct kt_bpf_insn *insns, void *ctx)
{
	uint64_t stack[KT_BPF_STACK_SIZE / 8];
	uint64_t r[11] = { 0 };
	r[1] = (uint64_t)(uintptr_t)ctx;
	r[10] = (uint64_t)(uintptr_t)(stack + KT_BPF_STACK_SIZE / 8);
	for (uint32_t pc = 0;; pc++) {
		const struct kt_bpf_insn *i = &insns[pc];
		unsigned code = i->code, d = kt_bpf__dst(i), s = kt_bpf__src(i);
		uint64_t imm = (uint64_t)(int64_t)i->imm;
		switch (code & 7) {
		case 7: /* ALU64 */
			if (code == 0xd7)
				r[d] = bswap(r[d], i->imm);
			else
				r[d] = alu64(code & 0xf0, i->off, r[d], code & 8 ? r[s] : imm);
			break;
		case 4: /* ALU */
			if ((code & 0xf0) == 0xd0) {
				if (code & 8)
					r[d] = bswap(r[d], i->imm);
				else
					r[d] = i->imm == 16 ? (uint16_t)r[d] : i->imm == 32 ? (uint32_t)r[d] : r[d];
			} else {
				r[d] = alu32(code & 0xf0, i->off, (uint32_t)r[d], code & 8 ? (uint32_t)r[s] : (uint32_t)i->imm);
			}
			break;
		case 0: /* lddw */
			r[d] = (uint32_t)i->imm | (uint64_t)(uint32_t)insns[pc + 1].imm << 32;
			pc++;
			break;
		case 1: /* LDX, MEM or MEMSX */
			r[d] = ld(r[s] + (uint64_t)(int64_t)i->off, SIZE[(code >> 3) & 3], (code & 0xe0) == 0x80);
			break;
		case 2: /* ST */
			st(r[d] + (uint64_t)(int64_t)i->off, SIZE[(code >> 3) & 3], imm);
			break;
		case 3: { /* STX, MEM or ATOMIC */
			uint64_t addr = r[d] + (uint64_t)(int64_t)i->off;
			if ((code & 0xe0) != 0xc0) {
				st(addr, SIZE[(code >> 3) & 3], r[s]);
				break;
			}
			uint64_t old;
			if (code == 0xc3) {
				uint32_t o;
				ATOMIC_OP(uint32_t, addr, i->imm, r[s], r[0], o);
				old = o;
			} else {
				ATOMIC_OP(uint64_t, addr, i->imm, r[s], r[0], old);
			}
			if ((i->imm & ~1) == 0xf0)
				r[0] = old;
			else if (i->imm & 1)
				r[s] = old;
			break;
		}
		default: /* JMP, JMP32 */
			switch (code) {
			case 0x05: pc += i->off; break;
			case 0x06: pc += i->imm; break;
			case 0x85: r[0] = kt_bpf__helper(i->imm)(r[1], r[2], r[3], r[4], r[5]); break;
			case 0x95: return r[0];
			default:
				if (cond(code, r[d], code & 8 ? r[s] : imm))
					pc += i->off;
			}
		}
	}
}
