/*
 * The eBPF runtime's timer and channel-rx hooks in a real guest (test/integration/bpf-hooks.test.ts).
 * The host injects one program per hook; the guest then takes TICKS periodic LAPIC timer ticks and
 * receives MESSAGES messages on channel "hooks". The programs count into maps the host reads.
 * Hypercall 256 tells the host the guest is ready for messages.
 */
#include <kvmtalk.h>
#include <kvmtalk/bpf-upcall.h>
#include <kvmtalk/channel.h>

#define TICKS    5
#define MESSAGES 3

int main(void)
{
	struct kt_chan ch;
	uint8_t buf[512];
	int r = kt_bpf_upcall_start(0);

	if (r < 0)
		return 10;
	while (!kt_bpf_hook_attached(KT_BPF_HOOK_TIMER) || !kt_bpf_hook_attached(KT_BPF_HOOK_CHANNEL_RX))
		if (kt_upcall_wait() < 0)
			return 11;

	if (kt_bpf_timer_start(0, 1000) < 0)
		return 12;
	while (kt_bpf_timer_ticks() < TICKS)
		__builtin_ia32_pause();
	kt_bpf_timer_stop();
	kt_printf("guest: %lu timer ticks\n", (unsigned long)kt_bpf_timer_ticks());

	if (kt_chan_open(&ch, "hooks", 0, KT_CHAN_MODE_HYPERCALL) < 0)
		return 13;
	kt_hypercall0(KT_HC_USER_BASE);
	for (int i = 0; i < MESSAGES; i++) {
		long n = kt_chan_recv(&ch, buf, sizeof(buf));
		if (n < 0)
			return 14;
		kt_printf("guest: message %d, %ld bytes\n", i, n);
	}
	return 0;
}
