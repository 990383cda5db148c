/** The hypercall ABI shared with the guest SDK (docs/guest-abi.md; guest/sdk/include/kvmtalk.h). */

/** Built-in hypercall numbers. 1–12 are KVM's own and never used. */
export const HC = {
  HELLO: 20,
  SEND_VALUE: 21,
  LOG: 22,
  NOP: 23,
  BENCH_MARK: 24,
  CONSOLE_WRITE: 25,
  FLUSH_TLB: 26,
  WAIT: 27,
  /** Opens (or finds) a channel: RBX = GPA of the name, RCX = its length, RDX = ring capacity, RSI = mode (docs/channels.md). */
  CHAN_OPEN: 30,
  /** RBX = channel id: "I wrote (or consumed) something" (a vCPU-thread built-in that does not wait for the main thread). */
  CHAN_NOTIFY: 31,
  /** RBX = channel id: closes the channel (both rings' close words, directory state closed). */
  CHAN_CLOSE: 32,
  GPA_TO_HPA: 60,
} as const;

/** KT_HC_GPA_TO_HPA flag bits (RSI), as in EvCache's gpa_hpa. */
export const GPA_TO_HPA_FLAGS = {
  /** The host page is huge or part of a compound page (THP, hugetlb, large folio). */
  HUGE: 1,
  /** The host page is mapped (present). */
  MAPPED: 2,
  /** Bits 2–6: folio order. */
  ORDER_SHIFT: 2,
} as const;

/** First number available to user handlers. */
export const HC_USER_BASE = 256;
/** Largest string KT_HC_LOG and KT_HC_CONSOLE_WRITE accept. */
export const HC_LOG_MAX = 4096;

/** KVM's hypercall error codes (include/uapi/linux/kvm_para.h); handlers return their negation. */
export const KT_ERR = {
  EPERM: 1,
  ENOENT: 2,
  E2BIG: 7,
  EFAULT: 14,
  EEXIST: 17,
  EINVAL: 22,
  EOPNOTSUPP: 95,
  ENOSYS: 1000,
} as const;

/** Whether `nr` collides with KVM's own hypercall numbers. */
export function isKvmReserved(nr: number): boolean {
  return nr >= 1 && nr <= 12;
}
