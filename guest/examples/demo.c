/*
 * The built-in demo guest: serial output plus each of the built-in hypercalls, then the same
 * value once more through a shared-memory channel named "demo" (an 8-byte little-endian message
 * that `kvmtalk demo` prints on the host).
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

	/* The same value through a channel: x86 is little-endian, so the u64 is the message. */
	struct kt_chan ch;
	uint64_t value = 4276993775ULL;
	int err = kt_chan_open(&ch, "demo", 0, KT_CHAN_MODE_HYPERCALL);

	if (err == 0)
		err = kt_chan_send(&ch, &value, sizeof(value));
	if (err == 0)
		kt_printf("sent %lu through channel \"demo\" (id %u)\n", (unsigned long)value, ch.id);
	else
		kt_printf("channel \"demo\" failed: error %d\n", err);

	kt_printf("hypercalls done (log returned %ld), goodbye\n", logged);
	return err == 0 ? 0 : 1;
}
