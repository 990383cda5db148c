/* kvmtalk guest runtime: exit, park, per-CPU identity. */
#include <kvmtalk.h>

unsigned kt_cpu_id(void)
{
	uint64_t id;
	/* GS base points at this vCPU's per-CPU block (docs/guest-abi.md). */
	__asm__("movq %%gs:0, %0" : "=r"(id));
	return (unsigned)id;
}

unsigned kt_cpu_count(void)
{
	uint64_t n;
	__asm__("movq %%gs:8, %0" : "=r"(n));
	return (unsigned)n;
}

_Noreturn void kt_exit(int status)
{
	kt_outl(KT_PORT_DEBUG_EXIT, (uint32_t)status);
	/* Only reached if the host resumes us; HLT would #GP at CPL3, so spin. */
	for (;;)
		kt_pause();
}

_Noreturn void kt_park(void)
{
	kt_outb(KT_PORT_PARK, 0);
	for (;;)
		kt_pause();
}
