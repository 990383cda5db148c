/*
 * examples/attach: a guest that streams telemetry on channel "telemetry", for a host program
 * in another process to read live (`kvmtalk attach <vm> telemetry`): the seed's
 * "guest writes a message into shared memory, read_shared_mem reads it", on a real channel.
 *
 * About every half second (paced by the TSC; the guest has no timer) it sends
 * "tick N: ...". Between ticks it looks for messages from the host without blocking: "quit"
 * ends the VM, anything else is answered with "echo: <text>". After TICKS ticks it says goodbye.
 *
 * If nobody reads, the ring fills up and kt_chan_send waits (backpressure): sleeping in
 * KT_HC_WAIT when the VM has interrupts and the channel a vector, spinning otherwise. The
 * reader's kick wakes it.
 *
 * Build: npx kvmtalk cc examples/attach/guest.c -o guest.elf
 */
#include <kvmtalk.h>

#define TICKS 120
/* ~0.5 s at 2-3 GHz: close enough for a demo. */
#define TICK_CYCLES 1200000000ULL

static char in[4096];
static char out[4096 + 16];

int main(unsigned cpu)
{
	struct kt_chan ch;
	int err;

	if (cpu != 0)
		return 0;
	/* 4 KiB rings: small, so backpressure shows up quickly when nobody reads. */
	err = kt_chan_open(&ch, "telemetry", 4096, KT_CHAN_MODE_HYPERCALL);
	if (err) {
		kt_printf("attach-demo guest: cannot open \"telemetry\": error %d\n", err);
		return 1;
	}
	kt_printf("attach-demo guest: streaming on \"telemetry\" (channel %u)\n", ch.id);
	uint64_t start = kt_rdtsc();
	for (unsigned tick = 1; tick <= TICKS; tick++) {
		uint64_t now = kt_rdtsc();
		int n = kt_snprintf(out, sizeof(out), "tick %u: %lu Mcycles since boot", tick,
				    (unsigned long)((now - start) / 1000000));

		err = kt_chan_send(&ch, out, (size_t)n);
		if (err) {
			kt_printf("attach-demo guest: send failed: error %d\n", err);
			return 2;
		}
		/* Wait for the next tick, answering whatever the host sends meanwhile. */
		while (kt_rdtsc() - now < TICK_CYCLES) {
			long got = kt_chan_try_recv(&ch, in, sizeof(in) - 1);

			if (got == -KT_EAGAIN) {
				for (int i = 0; i < 1000; i++)
					kt_pause();
				continue;
			}
			if (got < 0) {
				kt_printf("attach-demo guest: recv failed: error %ld\n", got);
				return 3;
			}
			in[got] = 0;
			if (got == 4 && memcmp(in, "quit", 4) == 0) {
				kt_printf("attach-demo guest: told to quit after %u ticks\n", tick);
				kt_chan_send(&ch, "bye", 3);
				return 0;
			}
			kt_printf("attach-demo guest: host says \"%s\"\n", in);
			n = kt_snprintf(out, sizeof(out), "echo: %s", in);
			kt_chan_send(&ch, out, (size_t)n);
		}
	}
	kt_chan_send(&ch, "bye", 3);
	kt_printf("attach-demo guest: %u ticks sent, goodbye\n", TICKS);
	return 0;
}
