/*
 * Error paths and results of the hypercall doorbell. Prints each check and returns the
 * number of failed ones (0 = all passed).
 */
#include <kvmtalk.h>

static int failures;

static void expect(const char *what, long got, long want)
{
	bool ok = got == want;

	kt_printf("%s %s: got %ld, want %ld\n", ok ? "ok  " : "FAIL", what, got, want);
	failures += !ok;
}

int main(void)
{
	static const char msg[] = "hypercalls: hello from KT_HC_LOG";

	expect("unknown number 999", kt_hypercall0(999), -KT_ENOSYS);
	expect("log outside RAM", kt_hypercall2(KT_HC_LOG, 0x7fffffff0000UL, 8), -KT_EFAULT);
	expect("log too long", kt_hypercall2(KT_HC_LOG, (unsigned long)msg, 1UL << 20), -KT_E2BIG);
	expect("log valid string", kt_log(msg, sizeof(msg) - 1), (long)(sizeof(msg) - 1));
	expect("nop", kt_hypercall0(KT_HC_NOP), 0);

	/* The host test registers a handler for this number and checks the printed value. */
	long r = kt_hypercall4(KT_HC_USER_BASE, 1, 2, 3, 4);
	kt_printf("user hypercall %d(1, 2, 3, 4) = 0x%lx\n", KT_HC_USER_BASE, (unsigned long)r);

	kt_printf("hypercalls: %d failures\n", failures);
	return failures;
}
