/**
 * Zero-copy access to a vCPU's shared `struct kvm_run` page.
 *
 * The run loop reads the exit reason, I/O and MMIO fields and the synced registers through typed
 * arrays created once per vCPU, so an exit costs no allocation and no ioctl beyond KVM_RUN.
 */
import { kvm_run, offsetOf } from './structs.js';
import * as sys from './sys.js';

const OFF = {
  immediateExit: offsetOf(kvm_run, 'immediate_exit'),
  exitReason: offsetOf(kvm_run, 'exit_reason'),
  readyForInjection: offsetOf(kvm_run, 'ready_for_interrupt_injection'),
  ifFlag: offsetOf(kvm_run, 'if_flag'),
  exit: offsetOf(kvm_run, 'exit'),
  ioDirection: offsetOf(kvm_run, 'exit.io.direction'),
  ioSize: offsetOf(kvm_run, 'exit.io.size'),
  ioPort: offsetOf(kvm_run, 'exit.io.port'),
  ioCount: offsetOf(kvm_run, 'exit.io.count'),
  ioDataOffset: offsetOf(kvm_run, 'exit.io.data_offset'),
  mmioPhysAddr: offsetOf(kvm_run, 'exit.mmio.phys_addr'),
  mmioData: offsetOf(kvm_run, 'exit.mmio.data'),
  mmioLen: offsetOf(kvm_run, 'exit.mmio.len'),
  mmioIsWrite: offsetOf(kvm_run, 'exit.mmio.is_write'),
  validRegs: offsetOf(kvm_run, 'kvm_valid_regs'),
  dirtyRegs: offsetOf(kvm_run, 'kvm_dirty_regs'),
  syncRegs: offsetOf(kvm_run, 's.regs.regs'),
} as const;

/** Indexes of `struct kvm_regs` fields in {@link KvmRun.regs}. */
export const REG = {
  rax: 0, rbx: 1, rcx: 2, rdx: 3, rsi: 4, rdi: 5, rsp: 6, rbp: 7,
  r8: 8, r9: 9, r10: 10, r11: 11, r12: 12, r13: 13, r14: 14, r15: 15, rip: 16, rflags: 17,
} as const;
export type RegName = keyof typeof REG;
export const REG_NAMES = Object.keys(REG) as RegName[];

/** A mapped `kvm_run`. */
export class KvmRun {
  /** The whole mapping (the I/O data area lies past `struct kvm_run`). */
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** `s.regs.regs` (struct kvm_regs) as 18 u64, valid after each exit when SYNC_X86_REGS is enabled. */
  readonly regs: BigUint64Array;

  constructor(
    readonly address: bigint,
    readonly size: number,
  ) {
    const buf = sys.view(address, size);
    this.bytes = new Uint8Array(buf);
    this.view = new DataView(buf);
    this.regs = new BigUint64Array(buf, OFF.syncRegs, 18);
  }

  get exitReason(): number {
    return this.view.getUint32(OFF.exitReason, true);
  }
  set immediateExit(v: boolean) {
    this.bytes[OFF.immediateExit] = v ? 1 : 0;
  }
  get immediateExit(): boolean {
    return this.bytes[OFF.immediateExit] !== 0;
  }
  get readyForInterruptInjection(): boolean {
    return this.bytes[OFF.readyForInjection] !== 0;
  }
  get ifFlag(): boolean {
    return this.bytes[OFF.ifFlag] !== 0;
  }

  get ioDirection(): number {
    return this.bytes[OFF.ioDirection];
  }
  get ioSize(): number {
    return this.bytes[OFF.ioSize];
  }
  get ioPort(): number {
    return this.view.getUint16(OFF.ioPort, true);
  }
  get ioCount(): number {
    return this.view.getUint32(OFF.ioCount, true);
  }
  get ioDataOffset(): number {
    // Always within the mapping (a page offset), so the low word is the whole value.
    return this.view.getUint32(OFF.ioDataOffset, true);
  }

  get mmioPhysAddr(): bigint {
    return this.view.getBigUint64(OFF.mmioPhysAddr, true);
  }
  /** The 8-byte MMIO data buffer (read by the guest on a load, written by it on a store). */
  get mmioData(): Uint8Array {
    return this.bytes.subarray(OFF.mmioData, OFF.mmioData + 8);
  }
  get mmioLen(): number {
    return this.view.getUint32(OFF.mmioLen, true);
  }
  get mmioIsWrite(): boolean {
    return this.bytes[OFF.mmioIsWrite] !== 0;
  }

  /** Offset of the exit union, for decoding less common exits with koffi. */
  get exitOffset(): number {
    return OFF.exit;
  }

  set validRegs(v: bigint) {
    this.view.setBigUint64(OFF.validRegs, v, true);
  }
  /** `kvm_dirty_regs` (only the low word holds flags); set per exit, so no BigInt. */
  set dirtyRegs(v: number) {
    this.view.setUint32(OFF.dirtyRegs, v, true);
  }

  unmap(): void {
    sys.munmap(this.address, this.size);
  }
}
