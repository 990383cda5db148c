/*
 * Shared by the eBPF benchmark programs in bench/bpf, built with `clang -O2 -target bpf -c`.
 *
 * Each program is one body over a fixed-size packet, `static u32 NAME(const u8 *pkt)`, compiled
 * twice by BENCH_PROGRAM into two entry points so both worlds do the same work:
 *   - NAME_xdp (section "xdp") for the Linux kernel: an XDP program whose context is struct
 *     xdp_md; it checks that the packet holds BENCH_PKT_LEN bytes (BPF_PROG_TEST_RUN gives it
 *     exactly that) and runs the body on the packet data.
 *   - NAME_kt (section "kvmtalk") for kvmtalk's runtimes: the context is the raw packet
 *     (BENCH_PKT_LEN bytes), so the body runs on r1 directly.
 * Only helpers both sides have are used (docs/bpf-runtime.md: 1-3, 7, 8) and maps are legacy
 * `SEC("maps") struct bpf_map_def`, the form src/bpf/elf.ts loads. No kernel headers needed.
 */
#ifndef BENCH_BPF_H
#define BENCH_BPF_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define SEC(name) __attribute__((section(name), used))
#define INLINE static inline __attribute__((always_inline))

/** Bytes of the benchmark packet (the kvmtalk context size). */
#define BENCH_PKT_LEN 128

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_ANY 0

struct bpf_map_def {
	u32 type;
	u32 key_size;
	u32 value_size;
	u32 max_entries;
	u32 map_flags;
};

struct xdp_md {
	u32 data;
	u32 data_end;
	u32 data_meta;
	u32 ingress_ifindex;
	u32 rx_queue_index;
	u32 egress_ifindex;
};

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;

#define BENCH_PROGRAM(name)                                                        \
	SEC("xdp") int name##_xdp(struct xdp_md *ctx)                              \
	{                                                                          \
		const u8 *data = (const u8 *)(long)ctx->data;                      \
		const u8 *end = (const u8 *)(long)ctx->data_end;                   \
		if (data + BENCH_PKT_LEN > end)                                    \
			return -1;                                                 \
		return (int)name(data);                                            \
	}                                                                          \
	SEC("kvmtalk") u64 name##_kt(const u8 *pkt)                                \
	{                                                                          \
		return name(pkt);                                                  \
	}

char LICENSE[] SEC("license") = "GPL";

#endif
