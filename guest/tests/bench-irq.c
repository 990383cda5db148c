/*
 * Interrupt-to-handler latency (`kvmtalk bench bpf`). Mark 0 returns the plan: bits 0-15 the
 * interrupts per phase (n), bits 16-47 the bare hypercalls of the last phase. The handler of
 * vector 0x40 stamps KT_HC_BENCH_MARK mark 1 and then counts, so the host can send the next
 * interrupt once it has the stamp. The guest sends its counter's address (kt_send_value: "ready")
 * and takes n interrupts while polling the counter (it is running when they arrive), then n
 * while asleep in KT_HC_WAIT; then marks 2 and 3 bracket the bare KT_HC_NOP round trips.
 */
#include <kvmtalk.h>

#define VECTOR 0x40

static volatile uint32_t counter;

static void handler(unsigned vector)
{
	(void)vector;
	kt_hypercall1(KT_HC_BENCH_MARK, 1);
	counter++;
}

int main(void)
{
	long plan = kt_hypercall1(KT_HC_BENCH_MARK, 0);
	uint32_t n = plan & 0xffff, seen = 0;
	unsigned long nops = (unsigned long)plan >> 16;

	if (plan < 0 || kt_irq_set_handler(VECTOR, handler) != 0) {
		kt_printf("bench-irq: no plan (%ld) or no handler\n", plan);
		return 1;
	}
	kt_send_value((unsigned long)&counter);
	while (seen < n) {
		while (counter == seen)
			kt_pause();
		seen = counter;
	}
	while (seen < 2 * n) {
		long r = kt_wait_until_changed(&counter, seen);

		if (r < 0) {
			kt_printf("bench-irq: kt_wait failed (%ld)\n", r);
			return 2;
		}
		seen = (uint32_t)r;
	}
	kt_hypercall1(KT_HC_BENCH_MARK, 2);
	for (unsigned long i = 0; i < nops; i++)
		kt_hypercall0(KT_HC_NOP);
	kt_hypercall1(KT_HC_BENCH_MARK, 3);
	return 0;
}
