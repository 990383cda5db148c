/*
 * Hash-map mix: for 8 keys taken from the packet, insert (key -> key * 3), look it up, add the
 * value to a sum, and delete it again, so every run leaves the map as it found it. Returns the
 * sum (or a marker of the first failing step).
 */
#include "bench-bpf.h"

struct bpf_map_def SEC("maps") flows = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = 8,
	.value_size = 8,
	.max_entries = 64,
};

INLINE u32 hash_mix(const u8 *pkt)
{
	u64 sum = 0;

#pragma clang loop unroll(disable)
	for (u32 i = 0; i < 8; i++) {
		u64 key = 0, value;
		__builtin_memcpy(&key, pkt + 8 * i, 8);
		value = key * 3;
		if (bpf_map_update_elem(&flows, &key, &value, BPF_ANY) != 0)
			return 0xdead0001;
		u64 *v = bpf_map_lookup_elem(&flows, &key);
		if (!v)
			return 0xdead0002;
		sum += *v;
		if (bpf_map_delete_elem(&flows, &key) != 0)
			return 0xdead0003;
	}
	return (u32)(sum ^ sum >> 32);
}

BENCH_PROGRAM(hash_mix)
