/*
 * An echo server on a shared-memory channel: receives messages on channel "echo" and sends
 * each one back in upper case; the message "quit" closes the channel (kt_chan_close: the host's
 * reader sees the end of the stream) and ends the VM with status 0.
 *
 * The guest opens "echo" with KT_HC_CHAN_OPEN (mode 0, hypercall doorbells). If the host
 * created "echo" before the guest asked (vm.createChannel('echo', { mode, vector })), the guest
 * gets that channel with the host's mode and vector instead. With a vector and a VM created with
 * `interrupts: true`, kt_chan_recv sleeps in KT_HC_WAIT until the host's interrupt; otherwise it
 * spins. Only vCPU 0 serves; other vCPUs return and are parked.
 */
#include <kvmtalk.h>

static char buf[64 << 10];

int main(unsigned cpu)
{
	struct kt_chan ch;
	unsigned long count = 0;
	int err;

	if (cpu != 0)
		return 0;
	err = kt_chan_open(&ch, "echo", 0, KT_CHAN_MODE_HYPERCALL);
	if (err) {
		kt_printf("channel-echo: cannot open \"echo\": error %d\n", err);
		return 1;
	}
	kt_printf("channel-echo: serving \"echo\" (id %u, mode %u, vector %u)\n", ch.id, ch.mode,
		  ch.vector);
	for (;;) {
		long n = kt_chan_recv(&ch, buf, sizeof(buf));

		if (n < 0) {
			kt_printf("channel-echo: recv failed: error %ld\n", n);
			return 2;
		}
		if (n == 4 && memcmp(buf, "quit", 4) == 0)
			break;
		for (long i = 0; i < n; i++)
			if (buf[i] >= 'a' && buf[i] <= 'z')
				buf[i] = (char)(buf[i] - 'a' + 'A');
		err = kt_chan_send(&ch, buf, (size_t)n);
		if (err) {
			kt_printf("channel-echo: send failed: error %d\n", err);
			return 3;
		}
		count++;
	}
	kt_printf("channel-echo: echoed %lu messages, quitting\n", count);
	err = kt_chan_close(&ch);
	if (err)
		kt_printf("channel-echo: close failed: error %d\n", err);
	return err ? 4 : 0;
}
