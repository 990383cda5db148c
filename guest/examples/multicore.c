/*
 * Every vCPU says hello; vCPU 0 waits until all of them have, then ends the VM.
 * Run it with several vCPUs (see `npx kvmtalk run --help`).
 */
#include <kvmtalk.h>

static unsigned checked_in;

int main(void)
{
	unsigned id = kt_cpu_id(), n = kt_cpu_count();

	kt_printf("cpu %u of %u checking in\n", id, n);
	__atomic_fetch_add(&checked_in, 1, __ATOMIC_RELEASE);

	if (id != 0)
		return 0; /* crt0 parks this vCPU */

	while (__atomic_load_n(&checked_in, __ATOMIC_ACQUIRE) < n)
		kt_pause();
	kt_printf("all %u cpus checked in\n", n);
	return 0;
}
