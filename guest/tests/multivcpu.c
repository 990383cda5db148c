/*
 * Every vCPU sends 100 + its index with KT_HC_SEND_VALUE; vCPU 0 waits for all of them to
 * check in, then ends the VM with status 0.
 */
#include <kvmtalk.h>

static unsigned checked_in;

int main(void)
{
	unsigned id = kt_cpu_id(), n = kt_cpu_count();

	kt_send_value(100 + id);
	__atomic_fetch_add(&checked_in, 1, __ATOMIC_RELEASE);
	if (id != 0)
		return 0;

	while (__atomic_load_n(&checked_in, __ATOMIC_ACQUIRE) < n)
		kt_pause();
	kt_printf("multivcpu: %u vcpus checked in\n", n);
	return 0;
}
