/*
 * Programs whose safety rests on scalar ranges the way clang writes them, compiled with
 * `clang -O2 -target bpf` (test/unit/bpf-verifier-clang.test.ts, with -mcpu=v1 and v3): u32 loop
 * counters (zero-extended by <<32 >>32 in v1, ALU32/JMP32 in v3), byte parsing with shifts and
 * masks, and counters on several branches. Each `bad_*` is an unsafe variant both verifiers must
 * refuse at the offending access. The context is CTX_LEN bytes; `vals` has one 64-byte value.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define SEC(name) __attribute__((section(name), used))
#define CTX_LEN 64

struct bpf_map_def {
	u32 type, key_size, value_size, max_entries, map_flags;
};
struct bpf_map_def SEC("maps") vals = { 2, 4, 64, 1, 0 };

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;

/* Sums n bytes from offset 8, n = the u32 at offset 0 but at most `limit`. */
#define SUM_N(name, limit)                                                 \
	SEC("kvmtalk") u64 name(const u8 *ctx)                             \
	{                                                                  \
		u32 n = *(const u32 *)ctx;                                 \
		u64 s = 0;                                                 \
		for (u32 i = 0; i < n && i < (limit); i++)                 \
			s += ctx[8 + i];                                   \
		return s;                                                  \
	}
SUM_N(sum_n, 56)
SUM_N(bad_sum_n, 57) /* reads ctx[64] */

/* A big-endian u32 and a 7-bit length from the header, then a loop over 8 bytes chosen by i & 7. */
SEC("kvmtalk") u64 parse_be(const u8 *ctx)
{
	u32 a = (u32)ctx[0] << 24 | (u32)ctx[1] << 16 | (u32)ctx[2] << 8 | ctx[3];
	u32 len = ((u32)ctx[4] << 8 | ctx[5]) & 0x7f;
	u64 s = a;
	for (u32 i = 0; i < len && i < 120; i++)
		s = s * 31 + ctx[8 + (i & 7)];
	return s;
}

/* The high nibble of a header byte picks one of 16 four-byte fields: (b >> 4) << 2. */
SEC("kvmtalk") u64 nibble_field(const u8 *ctx)
{
	u32 off = (u32)(ctx[6] >> 4) << 2;
	return *(const u32 *)(ctx + off);
}
SEC("kvmtalk") u64 bad_nibble_field(const u8 *ctx)
{
	u32 off = (u32)(ctx[6] >> 3) << 2; /* up to 124 */
	return *(const u32 *)(ctx + off);
}

/*
 * Histogram of the context's bytes >> 2 in a 64-byte map value, and a sum of entries picked by
 * masked bytes. (Not `% 61`: clang writes x - x / 61 * 61, which no range analysis bounds.)
 */
SEC("kvmtalk") u64 histogram(const u8 *ctx)
{
	u32 key = 0;
	u8 *v = bpf_map_lookup_elem(&vals, &key);
	if (!v)
		return 0;
	u64 s = 0;
	for (u32 i = 0; i < 16; i++) {
		v[(ctx[i] >> 2) & 63] += 1;
		s += v[(ctx[16 + i] ^ 0x5a) & 63];
	}
	return s;
}
SEC("kvmtalk") u64 bad_histogram(const u8 *ctx)
{
	u32 key = 0;
	u8 *v = bpf_map_lookup_elem(&vals, &key);
	if (!v)
		return 0;
	for (u32 i = 0; i < 16; i++)
		v[ctx[i] >> 1] += 1; /* up to 127 */
	return 0;
}

/* Digits, letters, white space and other bytes counted on four branches. */
SEC("kvmtalk") u64 classes(const u8 *ctx)
{
	u32 digits = 0, letters = 0, spaces = 0, other = 0;
	for (u32 i = 0; i < 48; i++) {
		u8 c = ctx[16 + i];
		if (c >= '0' && c <= '9')
			digits++;
		else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
			letters++;
		else if (c == ' ' || c == '\n' || c == '\t')
			spaces++;
		else
			other++;
	}
	return (u64)digits << 48 | (u64)letters << 32 | spaces << 16 | other;
}
/* The same counts, one of them then used as an offset: up to 48, past the end from 16. */
SEC("kvmtalk") u64 bad_classes(const u8 *ctx)
{
	u32 digits = 0, other = 0;
	for (u32 i = 0; i < 48; i++) {
		u8 c = ctx[16 + i];
		if (c >= '0' && c <= '9')
			digits++;
		else
			other++;
	}
	return ctx[16 + digits] + other;
}

char LICENSE[] SEC("license") = "GPL";
