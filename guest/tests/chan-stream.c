/*
 * Channel stream test guest (test/integration/channels.test.ts, channel-host.test.ts, benches).
 *
 * Every vCPU asks the host what to do with user hypercall 320 (a0 = its index). The answer:
 *   bits 0-31   N: messages each way (0: this vCPU does nothing)
 *   bits 32-47  L: largest message (0: 1000 bytes; at most 65535)
 *   bits 48-51  0: find the channel the host created (kt_chan_find);
 *               m + 1: open it with KT_HC_CHAN_OPEN in mode m (kt_chan_open)
 *   bit 52      skip the send phase
 *   bit 53      skip the receive phase
 *   bit 54      every message is exactly L bytes (instead of the pattern below)
 *   bit 55      stamp the phases with KT_HC_BENCH_MARK: 2 before sending, 3 after the last
 *               send, 4 before receiving, 5 after the last receive (meaningful on one vCPU)
 *   bits 56-60  log2 of the ring capacity for kt_chan_open (0: the default, 64 KiB)
 *   bit 61      spin while waiting, never sleep in KT_HC_WAIT (kt_chan_set_spin)
 * A negative answer (e.g. -KT_ENOSYS: no handler) counts as N = 0.
 *
 * The channel is "stream" for vCPU 0 and "stream<i>" for vCPU i > 0 (so each vCPU can run its
 * own channel). A vCPU with work:
 *   1. sends messages 0 .. N-1 (kt_chan_send, blocking with backpressure);
 *   2. receives N messages (kt_chan_recv, blocking) and checks that message i is the same
 *      pattern message i (the host can send back exactly what it received);
 *   3. prints "chan-stream: cpu C \"NAME\" mode M: sent N, received N, send waits W, recv waits W".
 * The pattern, shared with the host side (test/integration/channels.test.ts, streamMessage):
 *   length of message i = L when bit 54 is set, else (i * 97) % (L + 1)
 *   byte j of message i  = (i * 31 + j * 7 + 1) & 0xff
 *
 * vCPU 0 waits for every vCPU to finish and ends the VM: 0 when all succeeded, else the first
 * failure: 2 find/open failed, 3 send failed, 4 receive failed, 5 wrong message (each printed).
 */
#include <kvmtalk.h>

#include "cpu-finish.h"

#define HC_CONFIG (KT_HC_USER_BASE + 64)
#define MAX_CPUS 8
#define MAX_MSG 65535u

#define CFG_SKIP_SEND (1UL << 52)
#define CFG_SKIP_RECV (1UL << 53)
#define CFG_FIXED     (1UL << 54)
#define CFG_MARKS     (1UL << 55)
#define CFG_SPIN      (1UL << 61)

static uint8_t bufs[MAX_CPUS][MAX_MSG + 1];
static struct kt_chan chans[MAX_CPUS];

static uint32_t msg_len(uint32_t i, uint32_t max, bool fixed)
{
	return fixed ? max : (uint32_t)(((uint64_t)i * 97) % (max + 1));
}

static void fill(uint8_t *p, uint32_t i, uint32_t len)
{
	for (uint32_t j = 0; j < len; j++)
		p[j] = (uint8_t)(i * 31 + j * 7 + 1);
}

/* Index of the first byte that differs from the pattern, or len when all match. */
static uint32_t first_mismatch(const uint8_t *p, uint32_t i, uint32_t len)
{
	for (uint32_t j = 0; j < len; j++)
		if (p[j] != (uint8_t)(i * 31 + j * 7 + 1))
			return j;
	return len;
}

static void mark(unsigned long cfg, unsigned id)
{
	if (cfg & CFG_MARKS)
		kt_hypercall1(KT_HC_BENCH_MARK, id);
}

static int stream(unsigned cpu, unsigned long cfg)
{
	struct kt_chan *ch = &chans[cpu];
	uint8_t *buf = bufs[cpu];
	uint32_t n = (uint32_t)cfg, max = (cfg >> 32) & 0xffff;
	unsigned open_mode = (cfg >> 48) & 0xf, cap_log2 = (cfg >> 56) & 0x1f;
	bool fixed = (cfg & CFG_FIXED) != 0;
	uint32_t sent = 0, received = 0;
	char name[16];
	int err;

	if (max == 0)
		max = 1000;
	kt_snprintf(name, sizeof(name), cpu == 0 ? "stream" : "stream%u", cpu);
	if (open_mode)
		err = kt_chan_open(ch, name, cap_log2 ? 1UL << cap_log2 : 0, (int)open_mode - 1);
	else
		err = kt_chan_find(ch, name);
	if (err) {
		kt_printf("chan-stream: cpu %u: %s \"%s\" failed: error %d\n", cpu,
			  open_mode ? "open" : "find", name, err);
		return 2;
	}
	if (cfg & CFG_SPIN)
		kt_chan_set_spin(ch, true);
	if (!(cfg & CFG_SKIP_SEND)) {
		mark(cfg, 2);
		for (; sent < n; sent++) {
			uint32_t len = msg_len(sent, max, fixed);

			fill(buf, sent, len);
			err = kt_chan_send(ch, buf, len);
			if (err) {
				kt_printf("chan-stream: cpu %u: send %u (%u bytes) failed: error %d\n",
					  cpu, sent, len, err);
				return 3;
			}
		}
		mark(cfg, 3);
	}
	if (!(cfg & CFG_SKIP_RECV)) {
		mark(cfg, 4);
		for (; received < n; received++) {
			uint32_t want = msg_len(received, max, fixed), bad;
			long got = kt_chan_recv(ch, buf, MAX_MSG + 1);

			if (got < 0) {
				kt_printf("chan-stream: cpu %u: recv %u failed: error %ld\n", cpu,
					  received, got);
				return 4;
			}
			if ((uint32_t)got != want) {
				kt_printf("chan-stream: cpu %u: message %u has %ld bytes, expected %u\n",
					  cpu, received, got, want);
				return 5;
			}
			bad = first_mismatch(buf, received, want);
			if (bad != want) {
				kt_printf("chan-stream: cpu %u: message %u differs at byte %u\n", cpu,
					  received, bad);
				return 5;
			}
		}
		mark(cfg, 5);
	}
	kt_printf("chan-stream: cpu %u \"%s\" mode %u: sent %u, received %u, send waits %lu, "
		  "recv waits %lu\n",
		  cpu, name, ch->mode, sent, received, (unsigned long)ch->send_waits,
		  (unsigned long)ch->recv_waits);
	return 0;
}

int main(unsigned cpu)
{
	long cfg = kt_hypercall1(HC_CONFIG, cpu);
	int r = 0;

	if (cfg > 0 && (uint32_t)cfg != 0) {
		if (cpu >= MAX_CPUS) {
			kt_printf("chan-stream: cpu %u: only vCPUs 0-%u can stream\n", cpu, MAX_CPUS - 1);
			r = 2;
		} else {
			r = stream(cpu, (unsigned long)cfg);
		}
	}
	return finish_cpu(cpu, r);
}
