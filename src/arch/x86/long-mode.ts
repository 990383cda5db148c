/**
 * Puts a guest straight into 64-bit mode: GDT, per-vCPU TSS with an I/O bitmap, IDT with
 * exception-reporting stubs, identity page tables and per-CPU blocks. No guest boot code runs,
 * which matters where CPL0 instructions are emulated at microseconds each.
 */
import type { Regs, Sregs } from '../../kvm/vcpu-fd.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import {
  EXCEPTION_STUB_SIZE, EXCEPTION_STUBS, GDT, IDT, KERNEL_STACK_SIZE, KERNEL_STACKS, PERCPU, PERCPU_SIZE, PML4, PORT, SEL,
  TSS_BASE, TSS_STRIDE,
} from './layout.js';
import { buildIdentityMap } from './paging.js';
import { codeSegment, dataSegment, encodeDescriptor, encodeTssDescriptor, tssSegment } from './segments.js';

export const CR0_LONG = 0x80010033n; // PE MP ET NE WP PG
export const CR4_LONG = 0x620n; // PAE OSFXSR OSXMMEXCPT
export const EFER_LONG = 0x500n; // LME LMA
/** RFLAGS.IF: maskable interrupts enabled. */
export const RFLAGS_IF = 0x200n;
const TSS_IOPB_OFFSET = 104;
/** 104-byte TSS + 8 KiB I/O bitmap (all zero: every port allowed) + the required 0xff terminator. */
export const TSS_LIMIT = TSS_IOPB_OFFSET + 8192 + 1 - 1;

/** How guest code starts. */
export interface LongModeOptions {
  vcpus: number;
  /** Privilege level of guest code: 3 (native speed on PVM) or 0. */
  cpl: 0 | 3;
  entry: bigint;
  /** Bytes of stack per vCPU, carved from the top of RAM. */
  stackSize: number;
  /** Start with RFLAGS.IF = 1: CPL3 code cannot execute STI itself (IOPL is 0). */
  interrupts?: boolean;
}

/** Writes the shared system structures into guest memory. Returns CR3. */
export function buildLongModeSystem(mem: GuestMemory, vcpus: number): bigint {
  mem.fill(GDT, 0x1000);
  const gdt = [0n, encodeDescriptor(codeSegment(SEL.code0, 0)), encodeDescriptor(dataSegment(SEL.data0, 0)),
    encodeDescriptor(codeSegment(SEL.code3, 3)), encodeDescriptor(dataSegment(SEL.data3, 3))];
  gdt.forEach((d, i) => mem.writeU64(GDT + 8 * i, d));

  for (let cpu = 0; cpu < vcpus; cpu++) {
    const tss = TSS_BASE + cpu * TSS_STRIDE;
    const [lo, hi] = encodeTssDescriptor(BigInt(tss), TSS_LIMIT);
    mem.writeU64(GDT + SEL.tss(cpu), lo);
    mem.writeU64(GDT + SEL.tss(cpu) + 8, hi);
    mem.fill(tss, TSS_STRIDE);
    const kstackTop = BigInt(KERNEL_STACKS + (cpu + 1) * KERNEL_STACK_SIZE);
    mem.writeU64(tss + 4, kstackTop); // RSP0
    mem.writeU64(tss + 36, kstackTop); // IST1: exceptions get a known-good stack even if RSP is wild
    mem.writeU16(tss + 102, TSS_IOPB_OFFSET);
    mem.writeU8(tss + TSS_IOPB_OFFSET + 8192, 0xff);

    const percpu = PERCPU + cpu * PERCPU_SIZE;
    mem.fill(percpu, PERCPU_SIZE);
    mem.writeU64(percpu, BigInt(cpu));
    mem.writeU64(percpu + 8, BigInt(vcpus));
    mem.writeU64(percpu + 16, BigInt(PML4)); // CPL3 code cannot read CR3; the SDK's walker starts here
  }

  // Every vector: a CPL0 interrupt gate on IST1 to an 8-byte stub `out %al,$0xe1; jmp .`.
  // The VMM recovers the vector from the stub's address, so the stub clobbers no register.
  for (let v = 0; v < 256; v++) {
    const stub = EXCEPTION_STUBS + v * EXCEPTION_STUB_SIZE;
    mem.write(stub, Uint8Array.of(0xe6, PORT.exception, 0xeb, 0xfe, 0xf4, 0xf4, 0xf4, 0xf4));
    const lo = BigInt(stub & 0xffff) | (BigInt(SEL.code0) << 16n) | (1n << 32n) /* IST1 */ | (0x8en << 40n) |
      (BigInt((stub >>> 16) & 0xffff) << 48n);
    mem.writeU64(IDT + 16 * v, lo);
    mem.writeU64(IDT + 16 * v + 8, 0n);
  }
  return buildIdentityMap(mem, mem.size);
}

/** The special registers of vCPU `cpu` entering at privilege `cpl`. */
export function longModeSregs(base: Sregs, cpu: number, cpl: 0 | 3, cr3: bigint): Sregs {
  const code = cpl === 3 ? codeSegment(SEL.code3, 3) : codeSegment(SEL.code0, 0);
  const data = cpl === 3 ? dataSegment(SEL.data3, 3) : dataSegment(SEL.data0, 0);
  return {
    ...base,
    cs: code, ss: data, ds: data, es: data, fs: data,
    gs: dataSegment(data.selector, data.dpl, BigInt(PERCPU + cpu * PERCPU_SIZE)),
    tr: tssSegment(SEL.tss(cpu), BigInt(TSS_BASE + cpu * TSS_STRIDE), TSS_LIMIT),
    ldt: { ...base.ldt, unusable: 1, present: 0 },
    gdt: { base: BigInt(GDT), limit: 0xfff, padding: [0, 0, 0] },
    idt: { base: BigInt(IDT), limit: 16 * 256 - 1, padding: [0, 0, 0] },
    cr0: CR0_LONG, cr3, cr4: CR4_LONG, efer: EFER_LONG,
  };
}

/** The general registers vCPU `cpu` starts with (docs/guest-abi.md "Entry state"). */
export function longModeRegs(cpu: number, opts: LongModeOptions, ramSize: number): Regs {
  const stackTop = BigInt(ramSize - cpu * opts.stackSize) & ~0xfn;
  return {
    rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: BigInt(opts.vcpus), rdi: BigInt(cpu), rsp: stackTop, rbp: 0n,
    r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0n, rip: opts.entry,
    rflags: opts.interrupts ? RFLAGS_IF | 2n : 2n,
  };
}
