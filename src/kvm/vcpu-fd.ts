/** A KVM vCPU file descriptor: registers, CPUID, translation, and the KVM_RUN call itself. */
import { KVM } from './ioctls.js';
import { encodeCpuid, type CpuidEntry } from './kvm.js';
import { KvmRun, REG_NAMES, type RegName } from './kvm-run.js';
import { decode, encode, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events, sizeOf } from './structs.js';
import * as sys from './sys.js';

/** `struct kvm_regs` with every field as a BigInt. */
export type Regs = Record<RegName, bigint>;

/** `struct kvm_segment`. */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
  padding: number;
}
/** `struct kvm_dtable`. */
export interface DescriptorTable {
  base: bigint;
  limit: number;
  padding: number[];
}
/** `struct kvm_sregs`. */
export interface Sregs {
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment; tr: Segment; ldt: Segment;
  gdt: DescriptorTable; idt: DescriptorTable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint; efer: bigint; apic_base: bigint;
  interrupt_bitmap: bigint[];
}

/** Result of KVM_TRANSLATE. */
export interface Translation {
  gva: bigint;
  gpa: bigint;
  valid: boolean;
}

const big = (v: unknown): bigint => (typeof v === 'bigint' ? v : BigInt(v as number));

function toBigFields<T>(obj: Record<string, unknown>, keys: readonly string[]): T {
  for (const k of keys) obj[k] = big(obj[k]);
  return obj as T;
}

const SREG_U64 = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apic_base'] as const;

/** An open vCPU. */
export class VcpuFd {
  private runMapping?: KvmRun;

  constructor(
    readonly fd: number,
    readonly id: number,
    readonly runSize: number,
  ) {}

  /** The shared `kvm_run` page, mapped on first use. */
  get run(): KvmRun {
    this.runMapping ??= new KvmRun(sys.mmap(this.runSize, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_SHARED, this.fd), this.runSize);
    return this.runMapping;
  }

  /** KVM_GET_REGS. Prefer the synced registers in {@link KvmRun.regs} inside the run loop. */
  getRegs(): Regs {
    const buf = new Uint8Array(sizeOf(kvm_regs));
    sys.ioctlBuf(this.fd, 'KVM_GET_REGS', KVM.GET_REGS, buf);
    return toBigFields<Regs>(decode(buf, kvm_regs), REG_NAMES);
  }

  /** KVM_SET_REGS. */
  setRegs(regs: Regs): void {
    sys.ioctlBuf(this.fd, 'KVM_SET_REGS', KVM.SET_REGS, encode(kvm_regs, regs));
  }

  /** KVM_GET_SREGS. */
  getSregs(): Sregs {
    const buf = new Uint8Array(sizeOf(kvm_sregs));
    sys.ioctlBuf(this.fd, 'KVM_GET_SREGS', KVM.GET_SREGS, buf);
    const s = decode<Record<string, unknown>>(buf, kvm_sregs);
    for (const seg of ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt', 'gdt', 'idt']) {
      toBigFields(s[seg] as Record<string, unknown>, ['base']);
    }
    s.interrupt_bitmap = (s.interrupt_bitmap as unknown[]).map(big);
    return toBigFields<Sregs>(s, SREG_U64);
  }

  /** KVM_SET_SREGS. */
  setSregs(sregs: Sregs): void {
    sys.ioctlBuf(this.fd, 'KVM_SET_SREGS', KVM.SET_SREGS, encode(kvm_sregs, sregs));
  }

  /** KVM_SET_CPUID2. */
  setCpuid(entries: readonly CpuidEntry[]): void {
    sys.ioctlBuf(this.fd, 'KVM_SET_CPUID2', KVM.SET_CPUID2, encodeCpuid(entries));
  }

  /** KVM_TRANSLATE: walk the guest's page tables in the kernel. */
  translate(gva: bigint): Translation {
    const buf = encode(kvm_translation, { linear_address: gva, physical_address: 0n, valid: 0, writeable: 0, usermode: 0, pad: [0, 0, 0, 0, 0] });
    sys.ioctlBuf(this.fd, 'KVM_TRANSLATE', KVM.TRANSLATE, buf);
    const t = decode<{ physical_address: unknown; valid: number }>(buf, kvm_translation);
    return { gva, gpa: big(t.physical_address), valid: t.valid !== 0 };
  }

  /** KVM_GET_MP_STATE (0 runnable, 3 halted, …). */
  getMpState(): number {
    const buf = new Uint8Array(sizeOf(kvm_mp_state));
    sys.ioctlBuf(this.fd, 'KVM_GET_MP_STATE', KVM.GET_MP_STATE, buf);
    return new DataView(buf.buffer).getUint32(0, true);
  }

  /**
   * KVM_SET_MP_STATE. Setting `MP_STATE.HALTED` (in-kernel irqchip only) makes the next KVM_RUN
   * sleep in the kernel until an interrupt can be delivered, as if the guest had run HLT.
   */
  setMpState(state: number): void {
    const buf = new Uint8Array(sizeOf(kvm_mp_state));
    new DataView(buf.buffer).setUint32(0, state, true);
    sys.ioctlBuf(this.fd, 'KVM_SET_MP_STATE', KVM.SET_MP_STATE, buf);
  }

  /** KVM_GET_LAPIC: the local APIC's register page (first 1 KiB; register at offset `r` is the u32 at `r`). */
  getLapic(): Uint8Array {
    const buf = new Uint8Array(sizeOf(kvm_lapic_state));
    sys.ioctlBuf(this.fd, 'KVM_GET_LAPIC', KVM.GET_LAPIC, buf);
    return buf;
  }

  /** KVM_SET_LAPIC: writes back a page read with {@link getLapic}. */
  setLapic(regs: Uint8Array): void {
    if (regs.length !== sizeOf(kvm_lapic_state)) throw new RangeError(`LAPIC state must be ${sizeOf(kvm_lapic_state)} bytes`);
    sys.ioctlBuf(this.fd, 'KVM_SET_LAPIC', KVM.SET_LAPIC, regs);
  }

  /** KVM_GET_VCPU_EVENTS: pending/injected exceptions and interrupts. */
  getEvents(): Record<string, unknown> {
    const buf = new Uint8Array(sizeOf(kvm_vcpu_events));
    sys.ioctlBuf(this.fd, 'KVM_GET_VCPU_EVENTS', KVM.GET_VCPU_EVENTS, buf);
    return decode(buf, kvm_vcpu_events);
  }

  /** KVM_RUN. Returns 0, or -errno (EINTR when kicked) without throwing: this is the hot path. */
  runOnce(): number {
    return sys.ioctlRaw(this.fd, KVM.RUN, 0);
  }

  /** KVM_GET_STATS_FD for this vCPU's binary statistics. */
  statsFd(): number {
    return sys.ioctl(this.fd, 'KVM_GET_STATS_FD', KVM.GET_STATS_FD);
  }

  close(): void {
    this.runMapping?.unmap();
    sys.close(this.fd);
  }
}
