/*
 * Array-map counters: the first 16 packet bytes pick one of 16 u64 counters each (low 4 bits),
 * which is looked up and incremented. Returns the last counter's new value.
 */
#include "bench-bpf.h"

struct bpf_map_def SEC("maps") counters = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = 4,
	.value_size = 8,
	.max_entries = 16,
};

INLINE u32 array_count(const u8 *pkt)
{
	u64 last = 0;

#pragma clang loop unroll(disable)
	for (u32 i = 0; i < 16; i++) {
		u32 key = pkt[i] & 15;
		u64 *v = bpf_map_lookup_elem(&counters, &key);
		if (!v)
			return 0;
		last = ++*v;
	}
	return (u32)last;
}

BENCH_PROGRAM(array_count)
