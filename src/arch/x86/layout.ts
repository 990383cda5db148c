/** The guest-physical memory map of a long-mode kvmtalk guest (docs/guest-abi.md is the spec). */
export const GDT = 0x1000;
export const IDT = 0x2000;
export const EXCEPTION_STUBS = 0x3000;
export const EXCEPTION_STUB_SIZE = 8;
export const PERCPU = 0x4000;
export const PERCPU_SIZE = 64;
export const PML4 = 0x5000;
export const PDPT = 0x6000;
/** 4 KiB page table for the first 2 MiB, so page 0 can stay unmapped. */
export const PT_LOW = 0x7000;
export const PD_BASE = 0x8000;
export const MAX_PD_PAGES = 64;
export const TSS_BASE = 0x50000;
export const TSS_STRIDE = 0x3000;
export const KERNEL_STACKS = 0x110000;
export const KERNEL_STACK_SIZE = 0x2000;
/** Channel directory and channel regions (docs/channels.md), up to SYSTEM_END. */
export const CHANNEL_AREA = 0x200000;
/** Default ELF base of the SDK's linker script. */
export const IMAGE_BASE = 0x400000;
/** End of the VMM-owned area: images must not load below this (except raw real-mode images). */
export const SYSTEM_END = IMAGE_BASE;

/** Most vCPUs a guest can have: bounded by the TSS and kernel-stack areas above. */
export const MAX_VCPUS = 64;
/** Largest RAM the page directories (one page per GiB) can map. */
export const MAX_RAM = MAX_PD_PAGES * 2 ** 30;
/** Identity map at least this much, so MMIO addresses below 4 GiB are mapped. */
export const MIN_IDENTITY_MAP = 4 * 2 ** 30;

/** GDT selectors. */
export const SEL = {
  code0: 0x08,
  data0: 0x10,
  code3: 0x1b,
  data3: 0x23,
  tss: (cpu: number) => 0x28 + 16 * cpu,
} as const;

/** Ports owned by the VMM's core devices. */
export const PORT = {
  com1: 0x3f8,
  hypercall: 0xe0,
  exception: 0xe1,
  debugExit: 0xf4,
  park: 0xf5,
} as const;

/** Exception vectors that push an error code. */
export const VECTORS_WITH_ERROR_CODE = new Set([8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);

export const EXCEPTION_NAMES: Record<number, string> = {
  0: '#DE divide error', 1: '#DB debug', 2: 'NMI', 3: '#BP breakpoint', 4: '#OF overflow',
  5: '#BR bound range', 6: '#UD invalid opcode', 7: '#NM device not available', 8: '#DF double fault',
  10: '#TS invalid TSS', 11: '#NP segment not present', 12: '#SS stack fault', 13: '#GP general protection',
  14: '#PF page fault', 16: '#MF x87 floating point', 17: '#AC alignment check', 18: '#MC machine check',
  19: '#XM SIMD floating point', 20: '#VE virtualization', 21: '#CP control protection',
};
