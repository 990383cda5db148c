/*
 * The helpers eBPF programs may call in the guest (docs/bpf-runtime.md, "Helpers"): the map
 * helpers of bpf-maps.c plus the guest-only ones (TSC clock, per-vCPU random numbers, vCPU index).
 */
#include "bpf-internal.h"

uint32_t kt_bpf__locks_held[KT_MAX_CPUS];

unsigned kt_bpf__cpu(void)
{
	return kt_cpu_id();
}


static void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c)
{
	uint32_t d;
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(d) : "a"(leaf), "c"(0));
}

/* ns = ticks * mult >> 32; mult = 0 when the TSC frequency is unknown (ticks are returned). */
static uint64_t tsc_mult;
static int tsc_probed;

static uint64_t tsc_hz(void)
{
	uint32_t a, b, c, max;
	cpuid(0, &max, &b, &c);
	if (max >= 0x15) {
		cpuid(0x15, &a, &b, &c);
		if (a && b && c)
			return (uint64_t)c * b / a;
	}
	if (max >= 0x16) {
		cpuid(0x16, &a, &b, &c);
		if (a & 0xffff)
			return (uint64_t)(a & 0xffff) * 1000000;
	}
	return 0;
}

static uint64_t ktime_get_ns(uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5)
{
	(void)a1, (void)a2, (void)a3, (void)a4, (void)a5;
	if (!__atomic_load_n(&tsc_probed, __ATOMIC_ACQUIRE)) {
		uint64_t hz = tsc_hz();
		__atomic_store_n(&tsc_mult, hz ? (1000000000ull << 32) / hz : 0, __ATOMIC_RELAXED);
		__atomic_store_n(&tsc_probed, 1, __ATOMIC_RELEASE);
	}
	uint64_t t = kt_rdtsc(), m = __atomic_load_n(&tsc_mult, __ATOMIC_RELAXED);
	return m ? (uint64_t)(((unsigned __int128)t * m) >> 32) : t;
}

static uint32_t rng[KT_MAX_CPUS];

static uint64_t get_prandom_u32(uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5)
{
	(void)a1, (void)a2, (void)a3, (void)a4, (void)a5;
	uint32_t *s = &rng[kt_cpu_id() % KT_MAX_CPUS];
	uint32_t x = *s;
	if (!x)
		x = (uint32_t)kt_rdtsc() | 1;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	*s = x;
	return x;
}

static uint64_t get_smp_processor_id(uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5)
{
	(void)a1, (void)a2, (void)a3, (void)a4, (void)a5;
	return kt_cpu_id();
}

kt_bpf_helper_fn kt_bpf__helper(int32_t id)
{
	switch (id) {
	case 1: return kt_bpf__helper_map_lookup;
	case 2: return kt_bpf__helper_map_update;
	case 3: return kt_bpf__helper_map_delete;
	case 5: return ktime_get_ns;
	case 7: return get_prandom_u32;
	case 8: return get_smp_processor_id;
	default: return NULL;
	}
}
