/* A bounded loop of 100 iterations of register-only work (xorshift64 steps), seeded by the packet. */
#include "bench-bpf.h"

INLINE u32 loop(const u8 *pkt)
{
	u64 x = (u64)pkt[0] << 8 | pkt[1] | 1;

#pragma clang loop unroll(disable)
	for (u64 i = 0; i < 100; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
	}
	return (u32)(x ^ x >> 32);
}

BENCH_PROGRAM(loop)
