/*
 * The eBPF runtime in a real guest. The host hands out KTBP images one by one (user hypercall
 * 256: a0 = index, a1 = buffer, a2 = its size; returns the length, 0 after the last). Each is
 * loaded for a 16-byte context and run twice, with kt_bpf_prog_run and kt_bpf_prog_interpret,
 * each run on a fresh copy of the same context. Reported with KT_HC_SEND_VALUE per image:
 * the load result, then either both r0s or the verifier's pc. Then the affinity hook runs image
 * 0, and hypercall 257 gives the host the map directory's address to check.
 */
#include <kvmtalk.h>

static uint8_t image[64 * 1024];

static const uint32_t CTX[4] = { 0x11223344, 5, 6, 7 };

int main(void)
{
	int failures = 0;
	for (unsigned i = 0;; i++) {
		long len = kt_hypercall3(KT_HC_USER_BASE, i, (unsigned long)image, sizeof image);
		if (len <= 0)
			break;
		struct kt_bpf_prog *p;
		struct kt_bpf_verify_error err = { 0, "" };
		int r = kt_bpf_prog_load(&p, image, (uint32_t)len, sizeof CTX, &err);
		kt_send_value((uint64_t)(int64_t)r);
		if (r) {
			kt_printf("image %u: refused (%d) at %d: %s\n", i, r, (int)err.pc, err.reason);
			kt_send_value(err.pc);
			continue;
		}
		uint32_t ctx[4];
		memcpy(ctx, CTX, sizeof ctx);
		uint64_t jit = kt_bpf_prog_run(p, ctx);
		memcpy(ctx, CTX, sizeof ctx);
		uint64_t interp = kt_bpf_prog_interpret(p, ctx);
		kt_printf("image %u: %s r0 = %lu, interpreted r0 = %lu\n", i, kt_bpf_prog_is_jitted(p) ? "jitted" : "not jitted",
			  (unsigned long)jit, (unsigned long)interp);
		kt_send_value(jit);
		kt_send_value(interp);
		kt_bpf_prog_free(p);
	}

	/* the affinity hook with image 0 attached */
	long len = kt_hypercall3(KT_HC_USER_BASE, 0, (unsigned long)image, sizeof image);
	struct kt_bpf_affinity_ctx actx = { 0x11223344, 5, 6, 7 };
	uint64_t r0 = 0;
	failures += kt_bpf_hook_load(KT_BPF_HOOK_AFFINITY, image, (uint32_t)len, NULL) != 0;
	failures += kt_bpf_hook_run(KT_BPF_HOOK_AFFINITY, &actx, &r0) != 1;
	kt_send_value(r0);
	failures += kt_bpf_hook_unload(KT_BPF_HOOK_AFFINITY) != 0;
	failures += kt_bpf_hook_run(KT_BPF_HOOK_AFFINITY, &actx, &r0) != 0;

	failures += kt_hypercall1(KT_HC_USER_BASE + 1, kt_bpf_map_directory()) != 0;
	kt_printf("bpf-runtime: %d failures\n", failures);
	return failures;
}
