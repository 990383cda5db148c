/*
 * The eBPF runtime wired to the upcall device and to the SDK's hook points
 * (kvmtalk/bpf-upcall.h; docs/bpf-runtime.md, "Hooks").
 */
#include <kvmtalk.h>
#include <kvmtalk/bpf-upcall.h>
#include <kvmtalk/channel.h>
#include <kvmtalk/irq.h>

#include "bpf-internal.h"

/* LAPIC timer registers (offsets from KT_LAPIC_BASE) and KVM's APIC bus: 1 ns per count. */
#define LAPIC_LVT_TIMER   0x320
#define LAPIC_TIMER_INIT  0x380
#define LAPIC_TIMER_DIV   0x3e0
#define LVT_MASKED        (1u << 16)
#define LVT_PERIODIC      (1u << 17)
#define TIMER_DIV_1       0xb
#define APIC_BUS_NS       1

static inline void lapic_write(uint32_t reg, uint32_t value)
{
	*(volatile uint32_t *)(KT_LAPIC_BASE + reg) = value;
}

static int load_program(uint32_t hook, const void *image, uint32_t len, uint32_t *bad_pc)
{
	struct kt_bpf_verify_error err = { .pc = 0xffffffffu };
	int r = kt_bpf_hook_load(hook, image, len, &err);

	*bad_pc = err.pc;
	if (r < 0 && err.reason[0])
		kt_printf("bpf: hook %u refused the program: %s (pc %u)\n", hook, err.reason, err.pc);
	return r;
}

static void channel_rx(const struct kt_chan *ch, const void *msg, size_t len)
{
	struct kt_bpf_channel_ctx ctx = { .channel = ch->id, .len = (uint32_t)len, .seq = ch->received };
	uint64_t r0;

	memcpy(ctx.data, msg, len < sizeof(ctx.data) ? len : sizeof(ctx.data));
	kt_bpf_hook_run(KT_BPF_HOOK_CHANNEL_RX, &ctx, &r0);
}

int kt_bpf_upcall_start(unsigned vector)
{
	int r = kt_upcall_init(vector ? vector : KT_BPF_UPCALL_VECTOR);

	if (r < 0)
		return r;
	kt_upcall_set_handlers(load_program, kt_bpf_hook_unload);
	kt_upcall_publish_maps(kt_bpf_map_directory());
	kt_chan_rx_observer = channel_rx;
	return 0;
}

long kt_bpf_set_affinity(uint32_t vcpu, uint32_t cpu)
{
	struct kt_bpf_affinity_ctx ctx = {
		.vcpu = vcpu == KT_UPCALL_SELF ? kt_cpu_id() : vcpu,
		.requested_cpu = cpu,
		.host_cpus = kt_upcall_host_cpus(),
	};
	uint64_t r0;
	long status;

	if (kt_bpf_hook_run(KT_BPF_HOOK_AFFINITY, &ctx, &r0)) {
		if ((int32_t)r0 < 0)
			return -KT_EPERM;
		cpu = (uint32_t)r0;
	}
	status = kt_upcall_set_affinity(vcpu, cpu);
	return status < 0 ? status : (long)cpu;
}

/* Ticks per vCPU; each vCPU's handler only touches its own slot. */
static uint64_t ticks[KT_MAX_CPUS], skipped[KT_MAX_CPUS];
static uint32_t period[KT_MAX_CPUS];

static void timer_tick(unsigned vector)
{
	unsigned cpu = kt_cpu_id();
	struct kt_bpf_timer_ctx ctx = { .tick = ++ticks[cpu], .vcpu = cpu, .period_us = period[cpu] };
	uint64_t r0;

	(void)vector;
	/* The interrupted code holds (or waits for) a runtime lock the program might need. */
	if (kt_bpf__cpu_in_runtime()) {
		skipped[cpu]++;
		return;
	}
	kt_bpf_hook_run(KT_BPF_HOOK_TIMER, &ctx, &r0);
}

int kt_bpf_timer_start(unsigned vector, uint32_t period_us)
{
	unsigned cpu = kt_cpu_id();
	int r;

	if (!vector)
		vector = KT_BPF_TIMER_VECTOR;
	if (period_us < 1 || period_us > 1000000 || cpu >= KT_MAX_CPUS)
		return -KT_EINVAL;
	r = kt_irq_set_handler(vector, timer_tick);
	if (r < 0)
		return r;
	ticks[cpu] = skipped[cpu] = 0;
	period[cpu] = period_us;
	lapic_write(LAPIC_TIMER_DIV, TIMER_DIV_1);
	lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | vector);
	lapic_write(LAPIC_TIMER_INIT, period_us * (1000 / APIC_BUS_NS));
	return 0;
}

void kt_bpf_timer_stop(void)
{
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
	lapic_write(LAPIC_TIMER_INIT, 0);
}

uint64_t kt_bpf_timer_ticks(void)
{
	unsigned cpu = kt_cpu_id();

	return cpu < KT_MAX_CPUS ? ticks[cpu] : 0;
}

uint64_t kt_bpf_timer_skipped(void)
{
	unsigned cpu = kt_cpu_id();

	return cpu < KT_MAX_CPUS ? skipped[cpu] : 0;
}
