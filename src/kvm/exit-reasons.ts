/** KVM exit reasons (`kvm_run.exit_reason`) and their names, for decoding every exit. */
export const EXIT = {
  UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, SET_TPR: 11, TPR_ACCESS: 12, S390_SIEIC: 13, S390_RESET: 14,
  DCR: 15, NMI: 16, INTERNAL_ERROR: 17, OSI: 18, PAPR_HCALL: 19, S390_UCONTROL: 20, WATCHDOG: 21,
  S390_TSCH: 22, EPR: 23, SYSTEM_EVENT: 24, S390_STSI: 25, IOAPIC_EOI: 26, HYPERV: 27, ARM_NISV: 28,
  X86_RDMSR: 29, X86_WRMSR: 30, DIRTY_RING_FULL: 31, AP_RESET_HOLD: 32, X86_BUS_LOCK: 33, XEN: 34,
  RISCV_SBI: 35, RISCV_CSR: 36, NOTIFY: 37, LOONGARCH_IOCSR: 38, MEMORY_FAULT: 39, TDX: 40,
} as const;

const names: string[] = [];
for (const [name, value] of Object.entries(EXIT)) names[value] = `KVM_EXIT_${name}`;

/** `KVM_EXIT_IO` for 2; unknown numbers are shown as such rather than guessed. */
export function exitReasonName(reason: number): string {
  return names[reason] ?? `KVM_EXIT_${reason} (unknown to kvmtalk)`;
}

/** Number of exit reason slots, for per-reason counters. */
export const EXIT_REASON_SLOTS = 64;

/** `kvm_run.internal.suberror` names. */
export const INTERNAL_ERROR: Record<number, string> = {
  1: 'emulation failure',
  2: 'exception while delivering an exception (simultaneous exceptions)',
  3: 'event delivery failed',
  4: 'unexpected exit reason',
};

/** `kvm_run.system_event.type` names. */
export const SYSTEM_EVENT: Record<number, string> = {
  1: 'shutdown', 2: 'reset', 3: 'crash', 4: 'wakeup', 5: 'suspend', 6: 'SEV termination',
};
