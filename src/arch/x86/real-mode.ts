/** 16-bit real-mode entry state for raw images (e.g. the classic kvm-hello-world). */
import type { Regs, Sregs } from '../../kvm/vcpu-fd.js';
import { realModeSegment } from './segments.js';

/** Real-mode registers that start executing at linear address `entry` (< 1 MiB). */
export function realModeState(base: Sregs, entry: bigint): { sregs: Sregs; rip: bigint } {
  if (entry >= 0x100000n) throw new RangeError(`real-mode entry 0x${entry.toString(16)} is above 1 MiB`);
  const selector = entry > 0xffffn ? Number(entry >> 4n) : 0;
  const cs = realModeSegment(selector, true);
  const data = realModeSegment(0, false);
  return {
    sregs: { ...base, cs, ds: data, es: data, fs: data, gs: data, ss: data, cr0: base.cr0 & ~0x80000001n, efer: 0n },
    rip: entry - cs.base,
  };
}

/** All-zero general registers with RFLAGS' reserved bit set. */
export function zeroRegs(): Regs {
  return {
    rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0n, rdi: 0n, rsp: 0n, rbp: 0n,
    r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0n, rip: 0n, rflags: 2n,
  };
}
