/**
 * The KVM UAPI structures, each defined once as a koffi type (x86-64 layout of <linux/kvm.h>).
 *
 * koffi gives both marshalling (`encode`/`decode` to plain objects, used on setup paths) and the
 * offsets that the vCPU run loop uses to read `kvm_run` through typed arrays without copying.
 * test/unit/kvm-layout.test.ts checks every size and offset against gcc and the system headers.
 */
import koffi, { type TypeObject } from 'koffi';

const u8 = 'uint8_t';
const u16 = 'uint16_t';
const u32 = 'uint32_t';
const u64 = 'uint64_t';

export const kvm_regs = koffi.struct('kvm_regs', {
  rax: u64, rbx: u64, rcx: u64, rdx: u64, rsi: u64, rdi: u64, rsp: u64, rbp: u64,
  r8: u64, r9: u64, r10: u64, r11: u64, r12: u64, r13: u64, r14: u64, r15: u64,
  rip: u64, rflags: u64,
});

export const kvm_segment = koffi.struct('kvm_segment', {
  base: u64, limit: u32, selector: u16, type: u8, present: u8, dpl: u8, db: u8, s: u8, l: u8,
  g: u8, avl: u8, unusable: u8, padding: u8,
});

export const kvm_dtable = koffi.struct('kvm_dtable', { base: u64, limit: u16, padding: koffi.array(u16, 3) });

export const kvm_sregs = koffi.struct('kvm_sregs', {
  cs: kvm_segment, ds: kvm_segment, es: kvm_segment, fs: kvm_segment, gs: kvm_segment, ss: kvm_segment,
  tr: kvm_segment, ldt: kvm_segment, gdt: kvm_dtable, idt: kvm_dtable,
  cr0: u64, cr2: u64, cr3: u64, cr4: u64, cr8: u64, efer: u64, apic_base: u64,
  interrupt_bitmap: koffi.array(u64, 4),
});

export const kvm_vcpu_events = koffi.struct('kvm_vcpu_events', {
  exception: koffi.struct({ injected: u8, nr: u8, has_error_code: u8, pending: u8, error_code: u32 }),
  interrupt: koffi.struct({ injected: u8, nr: u8, soft: u8, shadow: u8 }),
  nmi: koffi.struct({ injected: u8, pending: u8, masked: u8, pad: u8 }),
  sipi_vector: u32,
  flags: u32,
  smi: koffi.struct({ smm: u8, pending: u8, smm_inside_nmi: u8, latched_init: u8 }),
  triple_fault: koffi.struct({ pending: u8 }),
  reserved: koffi.array(u8, 26),
  exception_has_payload: u8,
  exception_payload: u64,
});

export const kvm_sync_regs = koffi.struct('kvm_sync_regs', {
  regs: kvm_regs,
  sregs: kvm_sregs,
  events: kvm_vcpu_events,
});

const exitIo = koffi.struct('kvm_run_io', { direction: u8, size: u8, port: u16, count: u32, data_offset: u64 });
const exitMmio = koffi.struct('kvm_run_mmio', { phys_addr: u64, data: koffi.array(u8, 8), len: u32, is_write: u8 });
const exitHw = koffi.struct('kvm_run_hw', { hardware_exit_reason: u64 });
const exitFailEntry = koffi.struct('kvm_run_fail_entry', { hardware_entry_failure_reason: u64, cpu: u32 });
const exitEx = koffi.struct('kvm_run_ex', { exception: u32, error_code: u32 });
const exitDebug = koffi.struct('kvm_run_debug', { exception: u32, pad: u32, pc: u64, dr6: u64, dr7: u64 });
const exitHypercall = koffi.struct('kvm_run_hypercall', {
  nr: u64, args: koffi.array(u64, 6), ret: u64, flags: u64,
});
const exitInternal = koffi.struct('kvm_run_internal', { suberror: u32, ndata: u32, data: koffi.array(u64, 16) });
const exitEmulation = koffi.struct('kvm_run_emulation_failure', {
  suberror: u32, ndata: u32, flags: u64, insn_size: u8, insn_bytes: koffi.array(u8, 15),
});
const exitSystemEvent = koffi.struct('kvm_run_system_event', { type: u32, ndata: u32, data: koffi.array(u64, 16) });
const exitMsr = koffi.struct('kvm_run_msr', { error: u8, pad: koffi.array(u8, 7), reason: u32, index: u32, data: u64 });
const exitXen = koffi.struct('kvm_run_xen', {
  type: u32,
  hcall: koffi.struct({ longmode: u32, cpl: u32, input: u64, result: u64, params: koffi.array(u64, 6) }),
});
const exitNotify = koffi.struct('kvm_run_notify', { flags: u32 });

export const kvm_run = koffi.struct('kvm_run', {
  request_interrupt_window: u8,
  immediate_exit: u8,
  padding1: koffi.array(u8, 6),
  exit_reason: u32,
  ready_for_interrupt_injection: u8,
  if_flag: u8,
  flags: u16,
  cr8: u64,
  apic_base: u64,
  exit: koffi.union('kvm_run_exit', {
    hw: exitHw, fail_entry: exitFailEntry, ex: exitEx, io: exitIo, debug: exitDebug, mmio: exitMmio,
    hypercall: exitHypercall, internal: exitInternal, emulation_failure: exitEmulation,
    system_event: exitSystemEvent, msr: exitMsr, xen: exitXen, notify: exitNotify,
    padding: koffi.array(u8, 256),
  }),
  kvm_valid_regs: u64,
  kvm_dirty_regs: u64,
  s: koffi.union('kvm_run_s', { regs: kvm_sync_regs, padding: koffi.array(u8, 2048) }),
});

export const kvm_userspace_memory_region = koffi.struct('kvm_userspace_memory_region', {
  slot: u32, flags: u32, guest_phys_addr: u64, memory_size: u64, userspace_addr: u64,
});

/** `dirty_bitmap` is C's anonymous `union { void *dirty_bitmap; __u64 padding2; }`: a user address. */
export const kvm_dirty_log = koffi.struct('kvm_dirty_log', { slot: u32, padding1: u32, dirty_bitmap: u64 });
/** As {@link kvm_dirty_log}, `dirty_bitmap` is a user address (C's anonymous union). */
export const kvm_clear_dirty_log = koffi.struct('kvm_clear_dirty_log', {
  slot: u32, num_pages: u32, first_page: u64, dirty_bitmap: u64,
});

export const kvm_cpuid_entry2 = koffi.struct('kvm_cpuid_entry2', {
  function: u32, index: u32, flags: u32, eax: u32, ebx: u32, ecx: u32, edx: u32, padding: koffi.array(u32, 3),
});
/** Header of `struct kvm_cpuid2`; the entries follow it. */
export const kvm_cpuid2 = koffi.struct('kvm_cpuid2', { nent: u32, padding: u32 });

export const kvm_translation = koffi.struct('kvm_translation', {
  linear_address: u64, physical_address: u64, valid: u8, writeable: u8, usermode: u8, pad: koffi.array(u8, 5),
});

export const kvm_irq_level = koffi.struct('kvm_irq_level', { irq: u32, level: u32 });
export const kvm_msi = koffi.struct('kvm_msi', {
  address_lo: u32, address_hi: u32, data: u32, flags: u32, devid: u32, pad: koffi.array(u8, 12),
});
export const kvm_irqfd = koffi.struct('kvm_irqfd', {
  fd: u32, gsi: u32, flags: u32, resamplefd: u32, pad: koffi.array(u8, 16),
});
export const kvm_ioeventfd = koffi.struct('kvm_ioeventfd', {
  datamatch: u64, addr: u64, len: u32, fd: 'int32_t', flags: u32, pad: koffi.array(u8, 36),
});
export const kvm_enable_cap = koffi.struct('kvm_enable_cap', {
  cap: u32, flags: u32, args: koffi.array(u64, 4), pad: koffi.array(u8, 64),
});
export const kvm_mp_state = koffi.struct('kvm_mp_state', { mp_state: u32 });

/** `struct kvm_lapic_state`: the local APIC's 4 KiB register page, of which KVM keeps the first 1 KiB. */
export const kvm_lapic_state = koffi.struct('kvm_lapic_state', { regs: koffi.array(u8, 1024) });

/** `struct kvm_pic_state` (one 8259): kvmtalk only ever changes `imr`, to mask every line. */
export const kvm_pic_state = koffi.struct('kvm_pic_state', {
  last_irr: u8, irr: u8, imr: u8, isr: u8, priority_add: u8, irq_base: u8, read_reg_select: u8, poll: u8,
  special_mask: u8, init_state: u8, auto_eoi: u8, rotate_on_auto_eoi: u8, special_fully_nested_mode: u8,
  init4: u8, elcr: u8, elcr_mask: u8,
});
/**
 * `struct kvm_irqchip` for KVM_GET/SET_IRQCHIP. The union also holds the IOAPIC state in C; only
 * the PIC member is described because only the PICs are touched (`dummy` fixes the size).
 */
export const kvm_irqchip = koffi.struct('kvm_irqchip', {
  chip_id: u32,
  pad: u32,
  chip: koffi.union('kvm_irqchip_chip', { dummy: koffi.array(u8, 512), pic: kvm_pic_state }),
});

/**
 * `struct kvm_irq_routing_entry` (48 bytes). The union `u` is described with the two members x86
 * uses, irqchip pins and MSI messages; `pad` fixes its size. `msi.devid` shares C's anonymous
 * `union { pad; devid; }`.
 */
export const kvm_irq_routing_entry = koffi.struct('kvm_irq_routing_entry', {
  gsi: u32,
  type: u32,
  flags: u32,
  pad: u32,
  u: koffi.union('kvm_irq_routing_entry_u', {
    irqchip: koffi.struct('kvm_irq_routing_irqchip', { irqchip: u32, pin: u32 }),
    msi: koffi.struct('kvm_irq_routing_msi', { address_lo: u32, address_hi: u32, data: u32, devid: u32 }),
    pad: koffi.array(u32, 8),
  }),
});
/** Header of `struct kvm_irq_routing` (KVM_SET_GSI_ROUTING); `nr` entries follow it. */
export const kvm_irq_routing = koffi.struct('kvm_irq_routing', { nr: u32, flags: u32 });
export const kvm_xen_hvm_config = koffi.struct('kvm_xen_hvm_config', {
  flags: u32, msr: u32, blob_addr_32: u64, blob_addr_64: u64, blob_size_32: u8, blob_size_64: u8,
  pad2: koffi.array(u8, 30),
});

export const kvm_stats_header = koffi.struct('kvm_stats_header', {
  flags: u32, name_size: u32, num_desc: u32, id_offset: u32, desc_offset: u32, data_offset: u32,
});
/** Header of `struct kvm_stats_desc`; `name_size` bytes of name follow it. */
export const kvm_stats_desc = koffi.struct('kvm_stats_desc', {
  flags: u32, exponent: 'int16_t', size: u16, offset: u32, bucket_size: u32,
});

/** Byte offset of a (possibly nested, dot-separated) field, e.g. `offsetOf(kvm_run, 'exit.io.port')`. */
export function offsetOf(type: TypeObject, path: string): number {
  let offset = 0;
  let t = type;
  for (const name of path.split('.')) {
    const member = koffi.type(t).members?.[name];
    if (!member) throw new Error(`no field ${name} in ${path}`);
    offset += member.offset;
    t = member.type;
  }
  return offset;
}

/** sizeof(type). */
export function sizeOf(type: TypeObject): number {
  return koffi.sizeof(type);
}

/** Decodes a struct from bytes into a plain object (uint64 fields become numbers or bigints as koffi decides). */
export function decode<T>(bytes: Uint8Array, type: TypeObject): T {
  return koffi.decode(bytes, type) as T;
}

/** Encodes a plain object into a fresh buffer of sizeof(type) bytes. */
export function encode(type: TypeObject, value: object): Uint8Array {
  const buf = new Uint8Array(koffi.sizeof(type));
  koffi.encode(buf, type, value);
  return buf;
}
