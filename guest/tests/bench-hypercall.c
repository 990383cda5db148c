/*
 * Hypercall round-trip benchmark. Mark 0 asks the host for the iteration count; marks 1 and 2
 * bracket the timed loop, which calls the user hypercall the benchmark registers. Nothing is
 * printed inside the loop.
 */
#include <kvmtalk.h>

int main(void)
{
	long n = kt_hypercall1(KT_HC_BENCH_MARK, 0);

	if (n < 0) {
		kt_printf("bench-hypercall: mark 0 failed (%ld)\n", n);
		return 1;
	}
	kt_hypercall1(KT_HC_BENCH_MARK, 1);
	for (unsigned long i = 0; i < (unsigned long)n; i++)
		kt_hypercall1(KT_HC_USER_BASE, i);
	kt_hypercall1(KT_HC_BENCH_MARK, 2);
	return 0;
}
