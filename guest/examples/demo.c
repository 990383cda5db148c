/*
 * The built-in demo guest: serial output plus each of the built-in hypercalls.
 * Only vCPU 0 does the work; any others return at once and are parked by crt0.
 */
#include <kvmtalk.h>

int main(void)
{
	static const char msg[] = "log message from the guest via KT_HC_LOG";

	if (kt_cpu_id() != 0)
		return 0;

	kt_printf("Hello from the kvmtalk demo guest on cpu %u of %u\n", kt_cpu_id(),
		  kt_cpu_count());

	kt_hello();
	kt_send_value(4276993775ULL); /* 0xFEEDBEEF */
	long logged = kt_log(msg, sizeof(msg) - 1);

	kt_printf("hypercalls done (log returned %ld), goodbye\n", logged);
	return 0;
}
