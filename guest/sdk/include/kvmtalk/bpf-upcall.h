/*
 * kvmtalk guest SDK: the eBPF runtime wired to the host and to the SDK's hook points.
 *
 * kt_bpf_upcall_start makes this guest the "daemon" of the HyperUpCall flow: programs the host
 * injects through the upcall device (docs/upcall-device.md) are verified and attached by the
 * runtime (kvmtalk/bpf.h), and the map directory is published so the host can read the maps.
 * The hook points (docs/bpf-runtime.md, "Hooks") are here too: the affinity request path, the
 * channel receive path and a periodic LAPIC timer.
 */
#ifndef KVMTALK_BPF_UPCALL_H
#define KVMTALK_BPF_UPCALL_H

#include <kvmtalk.h>
#include <kvmtalk/bpf.h>
#include <kvmtalk/upcall.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Vectors kvmtalk's own guest code uses by default (channels use 0x30). */
#define KT_BPF_UPCALL_VECTOR 0x40
#define KT_BPF_TIMER_VECTOR  0x41

/**
 * Initializes the upcall device on vector (0 = KT_BPF_UPCALL_VECTOR), routes its LOAD_PROGRAM and
 * UNLOAD commands to kt_bpf_hook_load / kt_bpf_hook_unload, publishes the map directory, and runs
 * the channel-rx hook on every message kt_chan_recv / kt_chan_try_recv return. Commands are then
 * served by kt_upcall_poll() / kt_upcall_wait() on the caller's loop. Returns 0 or a negative KT_E*
 * (-KT_ENODEV when the VM has no upcall device).
 */
int kt_bpf_upcall_start(unsigned vector);

/**
 * The affinity request path: runs the affinity hook's program (if any) on {vcpu, cpu}, then asks
 * the host, through the device's AFFINITY register, to pin vCPU vcpu (0xffff = this one) to the
 * CPU the program chose. Returns that host CPU (>= 0) once pinned, -KT_EPERM when the program
 * refused, or the host's negative error (for example -KT_EINVAL for a CPU it does not have).
 */
long kt_bpf_set_affinity(uint32_t vcpu, uint32_t cpu);

/**
 * Starts this vCPU's LAPIC timer in periodic mode every period_us microseconds (1 … 10^6) on
 * vector (0 = KT_BPF_TIMER_VECTOR); each tick runs the timer hook's program. Returns 0 or
 * -KT_EINVAL.
 */
int kt_bpf_timer_start(unsigned vector, uint32_t period_us);

/** Stops this vCPU's timer. */
void kt_bpf_timer_stop(void);

/** Ticks this vCPU has taken since kt_bpf_timer_start. */
uint64_t kt_bpf_timer_ticks(void);

/**
 * Ticks whose program did not run because they interrupted this vCPU inside the runtime (holding
 * or waiting for a map lock the program might need: running it then could spin forever).
 */
uint64_t kt_bpf_timer_skipped(void);

#ifdef __cplusplus
}
#endif

#endif /* KVMTALK_BPF_UPCALL_H */
