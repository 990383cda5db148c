/*
 * Private declarations for the eBPF JIT until <kvmtalk/bpf.h> (owned by the runtime) lands.
 * Matches the shared API text exactly. When it lands, bpf-jit.c and test/native/bpf-jit-host.c
 * include <kvmtalk/bpf.h> instead and this file goes.
 */
#ifndef KT_BPF_JIT_H
#define KT_BPF_JIT_H

#include <stdint.h>

struct kt_bpf_insn { uint8_t code; uint8_t regs; /* dst = regs & 0xf, src = regs >> 4 */ int16_t off; int32_t imm; };
typedef uint64_t (*kt_bpf_helper_fn)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);
typedef uint64_t (*kt_bpf_jit_fn)(void *ctx);
#define KT_BPF_MAX_INSNS 4096
#define KT_BPF_STACK_SIZE 512

long kt_bpf_jit_compile(const struct kt_bpf_insn *insns, uint32_t n, kt_bpf_helper_fn (*helper)(int32_t id), uint8_t *code, unsigned long cap);

#endif
