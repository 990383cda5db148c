/** Builds {@link CrashReport}s from a stopped vCPU: registers, mode, and the faulting instruction. */
import { EXCEPTION_NAMES, EXCEPTION_STUB_SIZE, EXCEPTION_STUBS, VECTORS_WITH_ERROR_CODE } from '../arch/x86/layout.js';
import { REG_NAMES } from '../kvm/kvm-run.js';
import type { Regs, Sregs, VcpuFd } from '../kvm/vcpu-fd.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { disassemble } from './disassemble.js';
import type { CrashReport } from './outcome.js';

type Mode = CrashReport['sregs']['mode'];

function modeOf(s: Sregs): Mode {
  if (s.cs.l) return '64-bit';
  return (s.cr0 & 1n) && s.cs.db ? '32-bit' : '16-bit';
}

function syncedRegs(regs: BigUint64Array): Regs {
  const out = {} as Regs;
  REG_NAMES.forEach((n, i) => (out[n] = regs[i]));
  return out;
}

/** Up to `len` guest bytes at virtual address `va`, clipped to RAM; empty when unmapped. */
function codeBytes(vcpu: VcpuFd, mem: GuestMemory, sregs: Sregs, va: bigint, len: number): Uint8Array {
  let gpa: bigint;
  if (sregs.cr0 & 0x80000000n) {
    const t = vcpu.translate(va);
    if (!t.valid) return new Uint8Array();
    gpa = t.gpa;
  } else {
    gpa = (sregs.cs.base + va) & 0xffffffffn;
  }
  while (len > 0 && !mem.contains(gpa, len)) len--;
  return len > 0 ? mem.read(gpa, len) : new Uint8Array();
}

const bitsOf = (mode: Mode) => (mode === '64-bit' ? 64 : mode === '32-bit' ? 32 : 16);

function asInstruction(insn: { ip: bigint; bytes: Uint8Array; text: string }): CrashReport['instruction'] {
  return { address: insn.ip, bytes: Array.from(insn.bytes, (b) => b.toString(16).padStart(2, '0')).join(' '), text: insn.text };
}

/** Disassembles the instruction at `rip`. */
function instructionAt(vcpu: VcpuFd, mem: GuestMemory, sregs: Sregs, rip: bigint): CrashReport['instruction'] {
  const [insn] = disassemble(codeBytes(vcpu, mem, sregs, rip, 15), rip, bitsOf(modeOf(sregs)));
  return insn && asInstruction(insn);
}

/**
 * Finds the instruction that ends at `rip`. KVM completes port and MMIO writes before exiting, so
 * RIP already points past the access; x86 cannot be decoded backwards in general, so this takes the
 * shortest valid decoding of the preceding bytes that `accept` recognises as the access.
 */
function instructionBefore(vcpu: VcpuFd, mem: GuestMemory, sregs: Sregs, rip: bigint, accept: (text: string) => boolean): CrashReport['instruction'] {
  for (let k = 1; k <= 15 && BigInt(k) <= rip; k++) {
    const bytes = codeBytes(vcpu, mem, sregs, rip - BigInt(k), k);
    if (bytes.length !== k) continue;
    const [insn] = disassemble(bytes, rip - BigInt(k), bitsOf(modeOf(sregs)));
    if (insn && !insn.invalid && insn.bytes.length === k && accept(insn.text)) return asInstruction(insn);
  }
  return undefined;
}

/** Which instruction a report shows: the one at RIP, or the access that RIP has moved past. */
export type FaultingInstruction = 'at-rip' | 'port-write' | 'mmio-write';

function decodePageFault(err: number, cr2: bigint): string {
  const what = err & 1 ? 'protection violation' : 'not-present page';
  const access = err & 0x10 ? 'instruction fetch' : err & 2 ? 'write' : 'read';
  const where = err & 4 ? 'CPL3' : 'CPL0';
  return `page fault: ${access} of a ${what} at 0x${cr2.toString(16)} from ${where}${err & 8 ? ' (reserved bit set)' : ''}`;
}

/** The general state every report carries. Call only on the crash path (it issues ioctls). */
export function crashReport(
  vcpu: VcpuFd, mem: GuestMemory, syncRegs: BigUint64Array,
  base: Pick<CrashReport, 'cpu' | 'kind' | 'exitReason' | 'summary' | 'details'>,
  which: FaultingInstruction = 'at-rip',
): CrashReport {
  let sregs: Sregs | undefined;
  try {
    sregs = vcpu.getSregs();
  } catch {
    // A vCPU in a failed-entry state may refuse even this; report what we have.
  }
  const regs = syncedRegs(syncRegs);
  const report: CrashReport = {
    ...base,
    regs,
    sregs: sregs
      ? { cr0: sregs.cr0, cr2: sregs.cr2, cr3: sregs.cr3, cr4: sregs.cr4, efer: sregs.efer, cs: sregs.cs.selector, ss: sregs.ss.selector, cpl: sregs.cs.dpl, mode: modeOf(sregs) }
      : { cr0: 0n, cr2: 0n, cr3: 0n, cr4: 0n, efer: 0n, cs: 0, ss: 0, cpl: 0, mode: '16-bit' },
  };
  if (sregs) {
    try {
      report.instruction = which === 'at-rip' ? instructionAt(vcpu, mem, sregs, regs.rip)
        : instructionBefore(vcpu, mem, sregs, regs.rip, which === 'port-write' ? (t) => t.startsWith('out') : (t) => t.includes('('));
      if (which !== 'at-rip') report.details.push('RIP had already moved past the access; the instruction shown is the one ending at RIP');
    } catch {
      // Unreadable code is reported as such by the formatter.
    }
  }
  return report;
}

/**
 * A report for a write to the exception port by the VMM's IDT stub. The stub's address gives the
 * vector; the frame the CPU pushed on IST1 gives the faulting RIP, RSP and RFLAGS.
 */
export function exceptionReport(vcpu: VcpuFd, mem: GuestMemory, syncRegs: BigUint64Array, cpu: number, exitReason: string): CrashReport {
  const stubRip = syncRegs[REG_NAMES.indexOf('rip')];
  const vector = Number((stubRip - BigInt(EXCEPTION_STUBS)) / BigInt(EXCEPTION_STUB_SIZE));
  let rsp = syncRegs[REG_NAMES.indexOf('rsp')];
  let errorCode: number | undefined;
  const details: string[] = [];
  const frame: bigint[] = [];
  try {
    if (VECTORS_WITH_ERROR_CODE.has(vector)) {
      errorCode = Number(mem.readU64(rsp) & 0xffffffffn);
      rsp += 8n;
    }
    for (let i = 0; i < 5; i++) frame.push(mem.readU64(rsp + BigInt(8 * i)));
  } catch {
    details.push('exception frame not readable');
  }
  const name = EXCEPTION_NAMES[vector] ?? (vector < 32 ? `reserved exception` : `unexpected interrupt`);
  const regsCopy = BigUint64Array.from(syncRegs);
  if (frame.length === 5) {
    regsCopy[REG_NAMES.indexOf('rip')] = frame[0];
    regsCopy[REG_NAMES.indexOf('rflags')] = frame[2];
    regsCopy[REG_NAMES.indexOf('rsp')] = frame[3];
  }
  const report = crashReport(vcpu, mem, regsCopy, {
    cpu, kind: 'exception', exitReason,
    summary: `exception ${name} (vector ${vector}${errorCode !== undefined ? `, error code 0x${errorCode.toString(16)}` : ''})`,
    details,
  });
  report.vector = vector;
  report.errorCode = errorCode;
  if (frame.length === 5) {
    // The report was taken in the CPL0 stub; show the privilege the guest faulted at.
    report.sregs.cs = Number(frame[1]);
    report.sregs.ss = Number(frame[4]);
    report.sregs.cpl = Number(frame[1] & 3n);
  }
  if (vector === 14 && errorCode !== undefined) details.push(decodePageFault(errorCode, report.sregs.cr2));
  return report;
}
