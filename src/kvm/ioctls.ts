/**
 * KVM ioctl request numbers and capability ids, computed from <linux/kvm.h>'s _IO/_IOR/_IOW/_IOWR
 * definitions so each number carries its struct size (checked against gcc by the layout test).
 */
import {
  kvm_clear_dirty_log, kvm_cpuid2, kvm_dirty_log, kvm_enable_cap, kvm_irq_level, kvm_irq_routing, kvm_irqchip, kvm_irqfd, kvm_ioeventfd,
  kvm_lapic_state, kvm_mp_state, kvm_msi, kvm_regs, kvm_sregs, kvm_translation, kvm_userspace_memory_region, kvm_vcpu_events,
  kvm_xen_hvm_config, sizeOf,
} from './structs.js';

const KVMIO = 0xae;
const NONE = 0;
const WRITE = 1;
const READ = 2;

function ioc(dir: number, nr: number, size: number): number {
  // (dir << 30) overflows int32 in JS bit ops, so build it arithmetically.
  return dir * 2 ** 30 + ((size << 16) | (KVMIO << 8) | nr);
}
const io = (nr: number) => ioc(NONE, nr, 0);
const ior = (nr: number, size: number) => ioc(READ, nr, size);
const iow = (nr: number, size: number) => ioc(WRITE, nr, size);
const iowr = (nr: number, size: number) => ioc(READ | WRITE, nr, size);

/** ioctl request numbers, named as in <linux/kvm.h> without the `KVM_` prefix. */
export const KVM = {
  GET_API_VERSION: io(0x00),
  CREATE_VM: io(0x01),
  CHECK_EXTENSION: io(0x03),
  GET_VCPU_MMAP_SIZE: io(0x04),
  GET_SUPPORTED_CPUID: iowr(0x05, sizeOf(kvm_cpuid2)),
  CREATE_VCPU: io(0x41),
  GET_DIRTY_LOG: iow(0x42, sizeOf(kvm_dirty_log)),
  SET_USER_MEMORY_REGION: iow(0x46, sizeOf(kvm_userspace_memory_region)),
  SET_TSS_ADDR: io(0x47),
  SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  CREATE_IRQCHIP: io(0x60),
  IRQ_LINE: iow(0x61, sizeOf(kvm_irq_level)),
  GET_IRQCHIP: iowr(0x62, sizeOf(kvm_irqchip)),
  // _IOR although userspace writes it: a historical mistake in <linux/kvm.h>, kept for ABI's sake.
  SET_IRQCHIP: ior(0x63, sizeOf(kvm_irqchip)),
  SET_GSI_ROUTING: iow(0x6a, sizeOf(kvm_irq_routing)),
  IRQFD: iow(0x76, sizeOf(kvm_irqfd)),
  IOEVENTFD: iow(0x79, sizeOf(kvm_ioeventfd)),
  XEN_HVM_CONFIG: iow(0x7a, sizeOf(kvm_xen_hvm_config)),
  RUN: io(0x80),
  GET_REGS: ior(0x81, sizeOf(kvm_regs)),
  SET_REGS: iow(0x82, sizeOf(kvm_regs)),
  GET_SREGS: ior(0x83, sizeOf(kvm_sregs)),
  SET_SREGS: iow(0x84, sizeOf(kvm_sregs)),
  TRANSLATE: iowr(0x85, sizeOf(kvm_translation)),
  GET_LAPIC: ior(0x8e, sizeOf(kvm_lapic_state)),
  SET_LAPIC: iow(0x8f, sizeOf(kvm_lapic_state)),
  SET_CPUID2: iow(0x90, sizeOf(kvm_cpuid2)),
  GET_MP_STATE: ior(0x98, sizeOf(kvm_mp_state)),
  SET_MP_STATE: iow(0x99, sizeOf(kvm_mp_state)),
  GET_VCPU_EVENTS: ior(0x9f, sizeOf(kvm_vcpu_events)),
  ENABLE_CAP: iow(0xa3, sizeOf(kvm_enable_cap)),
  SIGNAL_MSI: iow(0xa5, sizeOf(kvm_msi)),
  CLEAR_DIRTY_LOG: iowr(0xc0, sizeOf(kvm_clear_dirty_log)),
  GET_STATS_FD: io(0xce),
} as const;

/** Capability ids for KVM_CHECK_EXTENSION, named as in <linux/kvm.h> without `KVM_CAP_`. */
export const CAP = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  NR_VCPUS: 9,
  NR_MEMSLOTS: 10,
  IRQ_ROUTING: 25,
  IRQFD: 32,
  IOEVENTFD: 36,
  SET_IDENTITY_MAP_ADDR: 37,
  XEN_HVM: 38,
  MAX_VCPUS: 66,
  SYNC_REGS: 74,
  SIGNAL_MSI: 77,
  SPLIT_IRQCHIP: 121,
  IMMEDIATE_EXIT: 136,
  X86_DISABLE_EXITS: 143,
  MANUAL_DIRTY_LOG_PROTECT2: 168,
  X86_USER_SPACE_MSR: 188,
  DIRTY_LOG_RING: 192,
  EXIT_HYPERCALL: 201,
  BINARY_STATS_FD: 203,
  GUEST_MEMFD: 234,
} as const;

/** `kvm_run.kvm_valid_regs` / `kvm_dirty_regs` bits. */
export const SYNC_X86_REGS = 1;
export const SYNC_X86_SREGS = 2;
export const SYNC_X86_EVENTS = 4;

/** `KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL`: VMCALL exits to userspace as KVM_EXIT_XEN. */
export const XEN_HVM_CONFIG_INTERCEPT_HCALL = 1 << 1;
export const EXIT_XEN_HCALL = 1;

/** `kvm_userspace_memory_region.flags`: log guest writes to the slot (KVM_GET_DIRTY_LOG). */
export const MEM_LOG_DIRTY_PAGES = 1;
/** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 argument bit: KVM_GET_DIRTY_LOG no longer clears or re-protects; KVM_CLEAR_DIRTY_LOG does. */
export const DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1;
/** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 argument bit: logging starts with every page dirty and none write-protected. */
export const DIRTY_LOG_INITIALLY_SET = 2;

/** `kvm_mp_state.mp_state` values kvmtalk uses. */
export const MP_STATE = {
  RUNNABLE: 0,
  /** KVM_RUN sleeps in the kernel until an interrupt (or a signal) arrives. */
  HALTED: 3,
} as const;

/** `kvm_irq_routing_entry.type`. */
export const IRQ_ROUTING_IRQCHIP = 1;
export const IRQ_ROUTING_MSI = 2;
/** `kvm_irqchip.chip_id` and `kvm_irq_routing_irqchip.irqchip`. */
export const IRQCHIP_PIC_MASTER = 0;
export const IRQCHIP_PIC_SLAVE = 1;
export const IRQCHIP_IOAPIC = 2;
/** `kvm_irqfd.flags`: remove the irqfd instead of adding it. */
export const IRQFD_FLAG_DEASSIGN = 1;
