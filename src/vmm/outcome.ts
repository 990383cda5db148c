/** How a vCPU, and then a whole VM, came to an end. */
import type { Regs } from '../kvm/vcpu-fd.js';

/** Why the VM ended badly; produced by the vCPU that saw it, printed by {@link formatCrashReport}. */
export interface CrashReport {
  cpu: number;
  kind: 'triple-fault' | 'exception' | 'internal-error' | 'unhandled-io' | 'unhandled-mmio' | 'entry-failure' | 'system-event' | 'unexpected-exit' | 'kvm-run-error';
  /** KVM's exit reason name, e.g. KVM_EXIT_SHUTDOWN. */
  exitReason: string;
  /** One line: what happened. */
  summary: string;
  /** Further lines (decoded error codes, KVM's data words). */
  details: string[];
  vector?: number;
  errorCode?: number;
  /** Registers at the faulting instruction (for exceptions: as the CPU pushed them). */
  regs: Regs;
  sregs: { cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; efer: bigint; cs: number; ss: number; cpl: number; mode: '16-bit' | '32-bit' | '64-bit' };
  /** The faulting instruction, disassembled when its bytes were readable. */
  instruction?: { address: bigint; bytes: string; text: string };
}

/** The end of one vCPU's run. */
export type VcpuOutcome =
  | { kind: 'exit'; status: number }
  | { kind: 'halt'; rip: bigint; interruptsEnabled: boolean }
  | { kind: 'park' }
  | { kind: 'stopped' }
  | { kind: 'crash'; report: CrashReport }
  | { kind: 'failed'; message: string };

/** The end of a VM run. `status` is what `kvmtalk run` exits with. */
export type VmResult =
  | { kind: 'exit'; status: number; cpu: number }
  | { kind: 'halt'; status: 0; cpu: number; rip: bigint }
  | { kind: 'parked'; status: 0 }
  | { kind: 'stopped'; status: number }
  | { kind: 'crash'; status: number; report: CrashReport }
  | { kind: 'failed'; status: number; message: string };

/** Exit status of `kvmtalk run` when the guest crashed (distinct from the usual guest statuses). */
export const CRASH_STATUS = 125;
/** Exit status when the VMM itself failed (not the guest), e.g. a handler module did not load. */
export const FAILED_STATUS = 70;
/** Exit status when the VM was stopped from the host (like a SIGTERM'd process). */
export const STOPPED_STATUS = 143;

const hex = (v: bigint | number, width = 16) => '0x' + v.toString(16).padStart(width, '0');

/** Multi-line human-readable crash report. */
export function formatCrashReport(r: CrashReport): string {
  const lines = [`guest crashed on vCPU ${r.cpu}: ${r.summary}`, `  exit: ${r.exitReason}`];
  for (const d of r.details) lines.push(`  ${d}`);
  if (r.instruction) lines.push(`  at ${hex(r.instruction.address)}: ${r.instruction.bytes.padEnd(24)} ${r.instruction.text}`);
  else lines.push(`  at ${hex(r.regs.rip)}: (instruction bytes not readable)`);
  const g = r.regs;
  const row = (names: (keyof Regs)[]) => '  ' + names.map((n) => `${n.padStart(6)}=${hex(g[n])}`).join(' ');
  lines.push(row(['rax', 'rbx', 'rcx', 'rdx']), row(['rsi', 'rdi', 'rbp', 'rsp']), row(['r8', 'r9', 'r10', 'r11']),
    row(['r12', 'r13', 'r14', 'r15']), row(['rip', 'rflags']));
  const s = r.sregs;
  lines.push(`  cs=${hex(s.cs, 4)} ss=${hex(s.ss, 4)} cpl=${s.cpl} mode=${s.mode} cr0=${hex(s.cr0, 8)} cr2=${hex(s.cr2)} cr3=${hex(s.cr3, 8)} cr4=${hex(s.cr4, 8)} efer=${hex(s.efer, 4)}`);
  return lines.join('\n');
}

/** A JSON-safe copy of a report (BigInts as hex strings). */
export function crashReportJson(r: CrashReport): unknown {
  return JSON.parse(JSON.stringify(r, (_k, v) => (typeof v === 'bigint' ? hex(v) : v)));
}
