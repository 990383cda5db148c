/*
 * kvmtalk guest SDK: driver of the upcall device (docs/upcall-device.md), through which the host
 * hands the guest eBPF programs and the guest asks the host to pin vCPU threads.
 *
 * The pattern is "the driver wakes a daemon": the interrupt handler only counts events; the
 * guest's main loop calls kt_upcall_poll (or sleeps in kt_upcall_wait), which copies the program
 * out of the device and calls the load handler there, outside interrupt context.
 *
 * Needs a VM created with `upcall: true` (and `interrupts: true` for a non-zero vector). On a VM
 * without the device the first register read is an unhandled MMIO access, which ends the VM.
 */
#ifndef KVMTALK_UPCALL_H
#define KVMTALK_UPCALL_H

#include <kvmtalk.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Guest-physical (identity-mapped) base of the register page. */
#define KT_UPCALL_BASE 0xfe000000UL

/* Registers (u32 offsets). */
#define KT_UPCALL_MAGIC           0x000
#define KT_UPCALL_VERSION         0x004
#define KT_UPCALL_IRQ_STATUS      0x008
#define KT_UPCALL_IRQ_VECTOR      0x00c
#define KT_UPCALL_COMMAND         0x010
#define KT_UPCALL_COMMAND_ARG     0x014
#define KT_UPCALL_COMMAND_SEQ     0x018
#define KT_UPCALL_DATA_LEN        0x01c
#define KT_UPCALL_DATA_OFFSET     0x020
#define KT_UPCALL_STATUS          0x024
#define KT_UPCALL_STATUS_PC       0x028
#define KT_UPCALL_ACK             0x02c
#define KT_UPCALL_AFFINITY        0x030
#define KT_UPCALL_AFFINITY_STATUS 0x034
#define KT_UPCALL_WINDOW_SIZE     0x038
#define KT_UPCALL_MAP_DIR_LO      0x03c
#define KT_UPCALL_MAP_DIR_HI      0x040
#define KT_UPCALL_HOST_CPUS       0x044
#define KT_UPCALL_COPY_ADDR_LO    0x048
#define KT_UPCALL_COPY_ADDR_HI    0x04c
#define KT_UPCALL_COPY_LEN        0x050
#define KT_UPCALL_COPY            0x054
#define KT_UPCALL_COPY_STATUS     0x058
#define KT_UPCALL_FEATURES        0x05c
#define KT_UPCALL_WINDOW          0x800

#define KT_UPCALL_MAGIC_VALUE 0x5055544bU /* "KTUP" */
#define KT_UPCALL_VERSION_VALUE 1

/* FEATURES bits. A device without FEATURES reads it as 0xffffffff (reserved): no features. */
#define KT_UPCALL_FEATURE_COPY (1U << 0)

/* COPY_STATUS errors besides -KT_ENOENT (no command) and -KT_EFAULT (buffer outside RAM). */
#define KT_ENOSPC 28  /* COPY_LEN smaller than DATA_LEN */
#define KT_ESTALE 116 /* the value written to COPY is not COMMAND_SEQ */

/* IRQ_STATUS bits. */
#define KT_UPCALL_IRQ_CMD_PENDING   (1U << 0)
#define KT_UPCALL_IRQ_CMD_CANCELLED (1U << 1)
#define KT_UPCALL_IRQ_CMD_DONE      (1U << 2)
#define KT_UPCALL_IRQ_AFFINITY_DONE (1U << 3)

/* COMMAND values. */
#define KT_UPCALL_CMD_NONE   0
#define KT_UPCALL_CMD_LOAD   1
#define KT_UPCALL_CMD_UNLOAD 2

/* AFFINITY's vCPU meaning "the vCPU doing the request". */
#define KT_UPCALL_SELF 0xffffU
/* Largest program the driver copies; a larger one is answered with -KT_E2BIG. */
#define KT_UPCALL_MAX_PROGRAM 65536
/* STATUS_PC meaning "no instruction". */
#define KT_UPCALL_NO_PC 0xffffffffU

static inline uint32_t kt_upcall_read(uint32_t offset)
{
	return *(volatile uint32_t *)(KT_UPCALL_BASE + offset);
}

static inline void kt_upcall_write(uint32_t offset, uint32_t value)
{
	*(volatile uint32_t *)(KT_UPCALL_BASE + offset) = value;
}

/*
 * A LOAD_PROGRAM handler: image/len is the program (a KTBP image, docs/bpf-runtime.md) at
 * hook. Returns 0 or a negative KT_E* error; on a verifier error it sets *bad_pc to the
 * instruction index (it starts as KT_UPCALL_NO_PC).
 */
typedef int (*kt_upcall_load_fn)(uint32_t hook, const void *image, uint32_t len, uint32_t *bad_pc);
/* An UNLOAD handler: 0, or e.g. -KT_ENOENT when nothing was loaded at hook. */
typedef int (*kt_upcall_unload_fn)(uint32_t hook);

/*
 * Checks MAGIC and VERSION (-KT_ENODEV for another device, -KT_EOPNOTSUPP for another
 * register-model version), installs the interrupt handler for vector and writes IRQ_VECTOR.
 * When the device has COPY (FEATURES), points COPY_ADDR/COPY_LEN at the driver's buffer and
 * uses COPY from then on. vector 0 = no interrupts: the guest polls. Returns 0 or a negative
 * KT_E* error (also kt_irq_set_handler's for a bad vector).
 */
int kt_upcall_init(unsigned vector);

/*
 * Whether kt_upcall_poll copies programs with COPY (2 MMIO exits) rather than through the DATA
 * window (one exit per 4 bytes). enable = 0 forces the window; enable = 1 uses COPY if the device
 * has it. Returns whether COPY is used now. Call after kt_upcall_init.
 */
int kt_upcall_use_copy(int enable);

/* The handlers kt_upcall_poll calls; NULL answers that command with -KT_EOPNOTSUPP. */
void kt_upcall_set_handlers(kt_upcall_load_fn load, kt_upcall_unload_fn unload);

/*
 * Services the pending command, if any: copies the program into a static buffer (COPY, or the
 * DATA window), calls the handler, writes STATUS / STATUS_PC and ACKs. A COPY the device refuses
 * (the host withdrew the command meanwhile) is answered with its error, without the handler.
 * Returns 1 if it serviced one, 0 if none was pending. Not reentrant: call it from one vCPU at a
 * time.
 */
int kt_upcall_poll(void);

/*
 * Sleeps (kt_wait) until the device interrupts, then kt_upcall_poll(). Returns kt_upcall_poll's
 * result (0 when the interrupt was not a new command, e.g. a cancellation), or kt_wait's
 * negative error. Needs a non-zero vector.
 */
int kt_upcall_wait(void);

/* Interrupts the driver's handler has taken so far. */
uint32_t kt_upcall_events(void);

/*
 * Asks the host to pin vCPU vcpu's thread (KT_UPCALL_SELF: this vCPU) to host CPU host_cpu.
 * Returns AFFINITY_STATUS: 0, or a negative errno (-KT_EPERM: not allowed; -KT_EINVAL: no such
 * vCPU, or a CPU outside the host's allowed set; others from sched_setaffinity).
 */
long kt_upcall_set_affinity(uint32_t vcpu, uint32_t host_cpu);

/* HOST_CPUS: how many host CPUs AFFINITY may name (0 when the host does not pin). */
static inline uint32_t kt_upcall_host_cpus(void)
{
	return kt_upcall_read(KT_UPCALL_HOST_CPUS);
}

/* Publishes the GPA of the eBPF map directory (MAP_DIR_LO/HI) for the host to read. */
void kt_upcall_publish_maps(uint64_t gpa);

#ifdef __cplusplus
}
#endif

#endif /* KVMTALK_UPCALL_H */
