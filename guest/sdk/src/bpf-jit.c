/* eBPF to x86-64 JIT (stub: the runtime interprets until the compiler lands). */
#include <kvmtalk.h>
#include "bpf-jit.h"

long kt_bpf_jit_compile(const struct kt_bpf_insn *insns, uint32_t n, kt_bpf_helper_fn (*helper)(int32_t id), uint8_t *code, unsigned long cap)
{
	(void)insns; (void)n; (void)helper; (void)code; (void)cap;
	return -KT_EOPNOTSUPP;
}
