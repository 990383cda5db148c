/* Pure ALU: 32-bit FNV-1a over the whole packet, one byte per loop iteration. */
#include "bench-bpf.h"

INLINE u32 fnv(const u8 *pkt)
{
	u32 h = 2166136261u;

#pragma clang loop unroll(disable)
	for (u32 i = 0; i < BENCH_PKT_LEN; i++) {
		h ^= pkt[i];
		h *= 16777619u;
	}
	return h;
}

BENCH_PROGRAM(fnv)
