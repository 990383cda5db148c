/*
 * Upcall latency (`kvmtalk bench bpf`): how long from the host handing a program to the upcall
 * device until the guest has verified, attached and run it once. Mark 0 returns the number of
 * programs to expect. The guest says it is ready (kt_send_value(1)), then for each command serves
 * it (COPY into the driver's buffer, verify, JIT, attach, ACK) and runs the timer hook's new
 * program once before stamping KT_HC_BENCH_MARK mark 1.
 */
#include <kvmtalk.h>
#include <kvmtalk/bpf-upcall.h>

int main(void)
{
	long n = kt_hypercall1(KT_HC_BENCH_MARK, 0);
	int r = kt_bpf_upcall_start(0);

	if (n <= 0 || r < 0) {
		kt_printf("bench-upcall: no plan (%ld) or no upcall device (%d)\n", n, r);
		return 1;
	}
	kt_send_value(1);
	for (long i = 0; i < n; i++) {
		struct kt_bpf_timer_ctx ctx = { .tick = (uint64_t)i };
		uint64_t r0;

		do
			r = kt_upcall_wait();
		while (r == 0);
		if (r < 0) {
			kt_printf("bench-upcall: kt_upcall_wait failed (%d)\n", r);
			return 2;
		}
		if (!kt_bpf_hook_run(KT_BPF_HOOK_TIMER, &ctx, &r0)) {
			kt_printf("bench-upcall: command %ld left no program at the timer hook\n", i);
			return 3;
		}
		kt_hypercall1(KT_HC_BENCH_MARK, 1);
	}
	return 0;
}
