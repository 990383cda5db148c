/*
 * The eBPF runtime's timer and channel-rx hooks in a real guest (test/integration/bpf-hooks.test.ts).
 * The host injects one program per hook; the guest then takes TICKS periodic LAPIC timer ticks and
 * receives MESSAGES messages on channel "hooks". The programs count into maps the host reads.
 * While the timer ticks, the main loop keeps updating hash map "seen", which the timer program
 * updates too: a tick that lands while this vCPU holds the map's lock must be skipped, not spin.
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
	struct kt_bpf_map *seen = kt_bpf_map_find("seen");
	uint32_t key = 1000;
	uint64_t updates = 0;

	if (!seen)
		return 15;
	/* Until the program has run TICKS times; ticks inside the lock are skipped, not counted. */
	while (kt_bpf_timer_ticks() - kt_bpf_timer_skipped() < TICKS) {
		if (kt_bpf_map_update(seen, &key, &updates, 0) < 0)
			return 16;
		updates++;
		for (int i = 0; i < 200; i++)
			kt_pause();
	}
	kt_bpf_timer_stop();
	kt_printf("guest: %lu timer ticks, %lu skipped inside a map lock, %lu updates\n",
		  (unsigned long)kt_bpf_timer_ticks(), (unsigned long)kt_bpf_timer_skipped(), (unsigned long)updates);

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
