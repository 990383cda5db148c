/*
 * kvmtalk guest SDK: the single public header.
 *
 * Freestanding C for programs that run inside a kvmtalk microVM. The contract with the VMM
 * (ports, hypercall numbers, entry state, memory map) is docs/guest-abi.md; the numbers below
 * must stay in step with it.
 *
 * Everything here works at CPL3 (the default) and at CPL0. Port I/O is allowed at CPL3 because
 * the VMM's TSS I/O bitmap is all zero. Each port access is a full VM exit to the userspace VMM
 * (tens of microseconds on the development hosts), so the console batches output.
 */
#ifndef KVMTALK_H
#define KVMTALK_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- ABI constants (docs/guest-abi.md) ------------------------------------------------- */

#define KT_ABI_VERSION 1

/* Ports. */
#define KT_PORT_HYPERCALL  0xe0  /* doorbell: registers carry the call */
#define KT_PORT_DEBUG_EXIT 0xf4  /* VM ends, exit code = value & 0xff */
#define KT_PORT_PARK       0xf5  /* this vCPU stops, the VM goes on */
#define KT_PORT_COM1       0x3f8 /* 16550 UART data register (THR) */

/* Built-in hypercall numbers. */
#define KT_HC_HELLO      20 /* host logs "Hello World" */
#define KT_HC_SEND_VALUE 21 /* a0 = 64-bit value */
#define KT_HC_LOG        22 /* a0 = GPA of string, a1 = length (<= KT_LOG_MAX) */
#define KT_HC_NOP        23 /* bare round trip */
#define KT_HC_BENCH_MARK 24 /* a0 = mark id; host records a timestamp */
#define KT_HC_CONSOLE_WRITE 25 /* a0 = GPA of bytes, a1 = length: written to the serial console */
#define KT_HC_FLUSH_TLB  26 /* flushes the calling vCPU's TLB (CPL3 cannot run INVLPG) */
#define KT_HC_WAIT       27 /* a0 = GPA of a u32, a1 = expected: sleep until an interrupt (irq.h) */
#define KT_HC_GPA_TO_HPA 60 /* a0 = GPA; RAX = HPA of its 4 KiB host page, RDX = PFN, RSI = flags */

/* Numbers from here up belong to handlers the host registers at run time. */
#define KT_HC_USER_BASE 256

#define KT_LOG_MAX 4096

/* Error codes; hypercalls return their negation. Same values as KVM's. */
#define KT_EPERM      1
#define KT_ENOENT     2
#define KT_E2BIG      7
#define KT_ENOMEM     12
#define KT_EFAULT     14
#define KT_EEXIST     17
#define KT_ENODEV     19
#define KT_EINVAL     22
#define KT_EOPNOTSUPP 95
#define KT_ENOSYS     1000

/* ---- Hypercalls ---------------------------------------------------------------------- */
/*
 * KVM's register convention: RAX = number in / result out, RBX, RCX, RDX, RSI = arguments.
 * "memory" because a hypercall may read guest memory through a pointer argument (e.g.
 * KT_HC_LOG) or act as a synchronisation point with the host.
 *
 * kt_hypercallN uses the I/O-port doorbell `outb %al, $0xe0`: the port is an immediate, so no
 * argument register is spent on it, and it reaches kvmtalk on every KVM host.
 *
 * kt_vmcallN uses VMCALL with the same registers. It only reaches kvmtalk where the host routes
 * VMCALL to userspace (`kvmtalk info` shows vmcall_transport). Elsewhere KVM answers in the
 * kernel (-KT_EPERM at CPL3, -KT_ENOSYS for unknown numbers at CPL0) or, on PVM hosts, raises
 * #GP at CPL3 and never returns at CPL0. Prefer kt_hypercallN.
 */
#define KT__HYPERCALLS(prefix, insn)                                                          \
	static inline long prefix##0(unsigned long nr)                                        \
	{                                                                                     \
		long ret;                                                                     \
		__asm__ volatile(insn : "=a"(ret) : "a"(nr) : "memory");                      \
		return ret;                                                                   \
	}                                                                                     \
	static inline long prefix##1(unsigned long nr, unsigned long a0)                      \
	{                                                                                     \
		long ret;                                                                     \
		__asm__ volatile(insn : "=a"(ret) : "a"(nr), "b"(a0) : "memory");             \
		return ret;                                                                   \
	}                                                                                     \
	static inline long prefix##2(unsigned long nr, unsigned long a0, unsigned long a1)    \
	{                                                                                     \
		long ret;                                                                     \
		__asm__ volatile(insn : "=a"(ret) : "a"(nr), "b"(a0), "c"(a1) : "memory");    \
		return ret;                                                                   \
	}                                                                                     \
	static inline long prefix##3(unsigned long nr, unsigned long a0, unsigned long a1,    \
				     unsigned long a2)                                        \
	{                                                                                     \
		long ret;                                                                     \
		__asm__ volatile(insn : "=a"(ret) : "a"(nr), "b"(a0), "c"(a1), "d"(a2)        \
				 : "memory");                                                 \
		return ret;                                                                   \
	}                                                                                     \
	static inline long prefix##4(unsigned long nr, unsigned long a0, unsigned long a1,    \
				     unsigned long a2, unsigned long a3)                      \
	{                                                                                     \
		long ret;                                                                     \
		__asm__ volatile(insn : "=a"(ret) : "a"(nr), "b"(a0), "c"(a1), "d"(a2),       \
				 "S"(a3) : "memory");                                         \
		return ret;                                                                   \
	}

/* kt_hypercall0(nr) ... kt_hypercall4(nr, a0, a1, a2, a3) */
KT__HYPERCALLS(kt_hypercall, "outb %%al, $0xe0")
/* kt_vmcall0(nr) ... kt_vmcall4(nr, a0, a1, a2, a3) */
KT__HYPERCALLS(kt_vmcall, "vmcall")
#undef KT__HYPERCALLS

/* ---- Built-in hypercall wrappers -------------------------------------------------------- */

/** Asks the host to log "Hello World". Returns 0. */
static inline long kt_hello(void)
{
	return kt_hypercall0(KT_HC_HELLO);
}

/** Hands a 64-bit value to the host (logged and passed to subscribers). Returns 0. */
static inline long kt_send_value(uint64_t value)
{
	return kt_hypercall1(KT_HC_SEND_VALUE, value);
}

/**
 * Logs len bytes at s through the host's logger (one exit, unlike the serial console).
 * Returns the number of bytes logged, -KT_EFAULT or -KT_E2BIG (len > KT_LOG_MAX).
 */
static inline long kt_log(const char *s, size_t len)
{
	return kt_hypercall2(KT_HC_LOG, (unsigned long)s, len);
}

/* ---- Small CPU helpers ------------------------------------------------------------------ */

static inline uint64_t kt_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* Spin-wait hint; also a compiler barrier so polling loops re-read memory. */
static inline void kt_pause(void)
{
	__asm__ volatile("pause" ::: "memory");
}

static inline void kt_outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline void kt_outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint8_t kt_inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

/* ---- Runtime ---------------------------------------------------------------------------- */

/** This vCPU's index (0 … N-1), from the per-CPU block at GS base. */
unsigned kt_cpu_id(void);

/** Number of vCPUs in the VM. */
unsigned kt_cpu_count(void);

/** Ends the whole VM; status & 0xff becomes the exit code of `kvmtalk run`. */
_Noreturn void kt_exit(int status);

/** Stops this vCPU only; the VM goes on while any vCPU runs. */
_Noreturn void kt_park(void);

/* ---- Console (COM1) --------------------------------------------------------------------- */

/** Writes len bytes to the serial console in as few port exits as the host allows. */
void kt_write(const char *s, size_t len);

void kt_putc(char c);

/** Writes s followed by a newline, like libc puts. */
void kt_puts(const char *s);

/*
 * printf subset: %d %i %u %x %X %p %s %c %%, length modifiers hh h l ll z, width (also `*`),
 * precision for %s, flags '0' and '-'. kt_printf returns the number of bytes written;
 * kt_vsnprintf/kt_snprintf return the length the full output would have had (C99 semantics)
 * and always NUL-terminate when size > 0.
 */
int kt_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int kt_vprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
int kt_snprintf(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int kt_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

/* ---- Memory and strings ----------------------------------------------------------------- */
/* Real symbols, because gcc emits calls to mem* on its own even with -ffreestanding. */

void *memcpy(void *__restrict dst, const void *__restrict src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

#define kt_memcpy  memcpy
#define kt_memmove memmove
#define kt_memset  memset
#define kt_memcmp  memcmp
#define kt_strlen  strlen
#define kt_strcmp  strcmp
#define kt_strncmp strncmp

#ifdef __cplusplus
}
#endif

/* Page tables and address translation: kt_walk, kt_map_page, kt_va_to_hpa, ... */
#include <kvmtalk/paging.h>
/* Shared-memory rings and channels: kt_ring_*, kt_channel_attach. */
#include <kvmtalk/ring.h>
/* Interrupts from the host and waiting for them: kt_irq_set_handler, kt_wait, ... */
#include <kvmtalk/irq.h>
#include <kvmtalk/channel.h>
/* The eBPF runtime: programs, hooks, maps (kt_bpf_*). */
#include <kvmtalk/bpf.h>

#endif /* KVMTALK_H */
