/*
 * The guest side of `kvmtalk bench bpf`: loads the benchmark's KTBP images with the guest eBPF
 * runtime and times runs of them, with the JIT and with the interpreter, as the host asks.
 *
 * Protocol (user hypercalls the benchmark registers; src/bench/bpf.ts):
 *   HC_PACKET(buf, cap)             the host writes the packet (the programs' context) → its length
 *   HC_IMAGE(i, buf, cap)           the host writes image i → its length, 0 past the last one
 *   HC_LOADED(i, rc, jitted, pc)    what kt_bpf_prog_load said about image i
 *   HC_TASK()                       → 0: done; else i << 40 | mode << 32 | runs (mode 1 JIT, 2 interpreter)
 *   HC_RESULT(r0)                   r0 of the task's last run
 * Each task's runs lie between KT_HC_BENCH_MARK marks 1 and 2, which the host timestamps.
 */
#include <kvmtalk.h>

#define HC_PACKET (KT_HC_USER_BASE + 0)
#define HC_IMAGE  (KT_HC_USER_BASE + 1)
#define HC_LOADED (KT_HC_USER_BASE + 2)
#define HC_TASK   (KT_HC_USER_BASE + 3)
#define HC_RESULT (KT_HC_USER_BASE + 4)
#define MODE_JIT 1
#define MODE_INTERP 2
#define MAX_PROGS 16

/* The largest image: header, 16 map definitions and 4096 instruction slots. */
static uint8_t image[16 + 16 * 32 + KT_BPF_MAX_INSNS * 8] __attribute__((aligned(8)));
static uint8_t packet[256] __attribute__((aligned(8)));
static struct kt_bpf_prog *progs[MAX_PROGS];

int main(void)
{
	long plen = kt_hypercall2(HC_PACKET, (unsigned long)packet, sizeof(packet));
	unsigned n = 0;

	if (plen <= 0) {
		kt_printf("bench-bpf: no packet (%ld)\n", plen);
		return 1;
	}
	for (; n < MAX_PROGS; n++) {
		long len = kt_hypercall3(HC_IMAGE, n, (unsigned long)image, sizeof(image));
		struct kt_bpf_verify_error err = { .pc = 0xffffffff };

		if (len <= 0)
			break;
		int rc = kt_bpf_prog_load(&progs[n], image, (uint32_t)len, (uint32_t)plen, &err);

		if (rc != 0) {
			progs[n] = 0;
			kt_printf("bench-bpf: image %u: load failed (%d) at %u: %s\n", n, rc, err.pc, err.reason);
		}
		kt_hypercall4(HC_LOADED, n, (unsigned long)(long)rc, rc == 0 && kt_bpf_prog_is_jitted(progs[n]), err.pc);
	}
	for (;;) {
		unsigned long task = kt_hypercall0(HC_TASK);
		unsigned i = task >> 40, mode = (task >> 32) & 0xff;
		uint32_t runs = (uint32_t)task;
		uint64_t r0 = 0;

		if (task == 0)
			return 0;
		if (i >= n || !progs[i] || (mode != MODE_JIT && mode != MODE_INTERP)) {
			kt_printf("bench-bpf: bad task 0x%lx\n", task);
			return 2;
		}
		const struct kt_bpf_prog *p = progs[i];

		kt_hypercall1(KT_HC_BENCH_MARK, 1);
		if (mode == MODE_JIT)
			for (uint32_t k = 0; k < runs; k++)
				r0 = kt_bpf_prog_run(p, packet);
		else
			for (uint32_t k = 0; k < runs; k++)
				r0 = kt_bpf_prog_interpret(p, packet);
		kt_hypercall1(KT_HC_BENCH_MARK, 2);
		kt_hypercall1(HC_RESULT, r0);
	}
}
