/*
 * The guest of `kvmtalk demo upcall`: the HyperUpCall flow with kvmtalk's pieces.
 *
 * It starts the eBPF runtime's upcall service, waits until the host has injected a program at the
 * affinity hook, then asks for a series of host CPUs. Each request runs the program (which picks
 * the CPU and counts its decisions in a map) and is relayed through the upcall device's AFFINITY
 * register; the host pins this vCPU's thread. After each request the guest tells the host what it
 * asked for and got (hypercall KT_HC_USER_BASE), so the host can check the thread's affinity while
 * this vCPU waits for the answer.
 */
#include <kvmtalk.h>
#include <kvmtalk/bpf-upcall.h>

#define HC_REPORT KT_HC_USER_BASE /* a0 = requested CPU, a1 = kt_bpf_set_affinity's result */

/* Requests 0…3 and a repeat, then one the policy refuses (>= 1024). */
static const uint32_t requests[] = { 0, 1, 2, 3, 1, 4096 };

int main(void)
{
	int r = kt_bpf_upcall_start(0);

	if (r < 0) {
		kt_printf("guest: no upcall device (error %d): run with the upcall device on\n", r);
		return 2;
	}
	kt_printf("guest: upcall device ready, waiting for a program at the affinity hook\n");
	do {
		r = kt_upcall_wait();
	} while (r >= 0 && !kt_bpf_hook_attached(KT_BPF_HOOK_AFFINITY));
	if (r < 0) {
		kt_printf("guest: waiting for the program failed (error %d)\n", r);
		return 3;
	}
	for (size_t i = 0; i < sizeof(requests) / sizeof(requests[0]); i++) {
		long got = kt_bpf_set_affinity(KT_UPCALL_SELF, requests[i]);

		if (got >= 0)
			kt_printf("guest: asked for host CPU %u, pinned to host CPU %ld\n", requests[i], got);
		else
			kt_printf("guest: asked for host CPU %u, refused (error %ld)\n", requests[i], got);
		kt_hypercall2(HC_REPORT, requests[i], (unsigned long)got);
	}
	return 0;
}
