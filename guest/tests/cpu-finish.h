/*
 * The end of a multi-vCPU guest test, shared by chan-stream.c and bench-channel.c: every vCPU
 * reports its status, the first non-zero one wins, and vCPU 0 waits for all the others before it
 * returns that status (which ends the VM).
 */
#ifndef KVMTALK_TESTS_CPU_FINISH_H
#define KVMTALK_TESTS_CPU_FINISH_H

#include <kvmtalk.h>

static unsigned finished;
static int status;

/* Records vCPU `cpu`'s status r; returns what main() returns: the first failure on vCPU 0, else 0. */
static int finish_cpu(unsigned cpu, int r)
{
	if (r)
		__atomic_compare_exchange_n(&status, &(int){0}, r, false, __ATOMIC_RELAXED,
					    __ATOMIC_RELAXED);
	__atomic_fetch_add(&finished, 1, __ATOMIC_RELEASE);
	if (cpu != 0)
		return 0;
	while (__atomic_load_n(&finished, __ATOMIC_ACQUIRE) < kt_cpu_count())
		kt_pause();
	return __atomic_load_n(&status, __ATOMIC_RELAXED);
}

#endif
