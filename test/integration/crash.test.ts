/**
 * Faulting guests: every fault ends the VM with a crash report (never the Node process), with the
 * right vector, error code, faulting instruction and registers; then the VM closes cleanly.
 */
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';
import { test } from 'node:test';
import { IMAGE_BASE } from '../../src/arch/x86/layout.js';
import { CRASH_STATUS, formatCrashReport, type CrashReport } from '../../src/vmm/outcome.js';
import type { LoadOptions } from '../../src/vmm/vm.js';
import { bootGuest, requireKvm } from '../helpers/kvm.js';

/**
 * Open fds that belong to KVM or guest RAM (/dev/kvm, kvm-vm, kvm-vcpu, stats fds, the RAM memfd).
 * Other fds are left out: a finished vCPU worker's event-loop fds go away asynchronously.
 */
function kvmFds(): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const link = readlinkSync(`/proc/self/fd/${fd}`);
      if (/kvm/.test(link)) out.push(`${fd} -> ${link}`);
    } catch {
      // the fd of the readdir itself, already closed
    }
  }
  return out;
}

/** Boots a test guest that must crash; returns its report and checks the VM released its fds. */
async function crash(name: string, load: LoadOptions = {}): Promise<{ report: CrashReport; console: string }> {
  const before = kvmFds();
  const r = await bootGuest('tests', name, {}, load);
  assert.equal(r.result.kind, 'crash', `${name}: ${JSON.stringify(r.result, (_k, v) => (typeof v === 'bigint' ? v.toString(16) : v))}`);
  assert.equal(r.result.status, CRASH_STATUS);
  // close() released /dev/kvm, the VM, the vCPU and the RAM memfd (and the stats fds).
  assert.deepEqual(kvmFds(), before, `${name}: file descriptors leaked by the VM`);
  if (r.result.kind !== 'crash') throw new Error('unreachable');
  const report = r.result.report;
  assert.equal(report.cpu, 0);
  // The formatter copes with every report.
  assert.match(formatCrashReport(report), /^guest crashed on vCPU 0: /);
  return { report, console: r.console };
}

/** The faulting RIP lies inside the loaded program (the SDK links it at 0x400000). */
function assertRipInImage(report: CrashReport): void {
  assert.ok(report.regs.rip >= BigInt(IMAGE_BASE) && report.regs.rip < BigInt(IMAGE_BASE) + 0x100000n, `rip 0x${report.regs.rip.toString(16)}`);
  assert.equal(report.instruction?.address, report.regs.rip);
}

test('fault-null: #PF (14) from CPL3 at address 0', async (t) => {
  if (!requireKvm(t)) return;
  const { report, console } = await crash('fault-null');
  assert.equal(console, 'fault-null: reading address 0\n');
  assert.equal(report.kind, 'exception');
  assert.equal(report.vector, 14);
  assert.ok(report.errorCode !== undefined);
  assert.equal(report.errorCode! & 0x4, 0x4, 'error code U/S bit (user access)');
  assert.equal(report.errorCode! & 0x1, 0, 'not-present page, not a protection violation');
  assert.equal(report.errorCode! & 0x10, 0, 'a data read, not an instruction fetch');
  assert.equal(report.sregs.cr2, 0n);
  assert.equal(report.sregs.cpl, 3);
  assert.equal(report.sregs.cs, 0x1b);
  assert.match(report.summary, /#PF/);
  assert.ok(report.details.some((d) => d.includes('not-present page at 0x0 from CPL3')), report.details.join('\n'));
  assertRipInImage(report);
  assert.match(report.instruction!.text, /^mov /);
});

test('fault-ud: #UD (6) at ud2', async (t) => {
  if (!requireKvm(t)) return;
  const { report, console } = await crash('fault-ud');
  assert.equal(console, 'fault-ud: executing ud2\n');
  assert.equal(report.kind, 'exception');
  assert.equal(report.vector, 6);
  assert.equal(report.errorCode, undefined, '#UD has no error code');
  assertRipInImage(report);
  assert.equal(report.instruction!.text, 'ud2');
  assert.equal(report.instruction!.bytes, '0f 0b');
});

test('fault-div0: #DE (0) at the division', async (t) => {
  if (!requireKvm(t)) return;
  const { report, console } = await crash('fault-div0');
  assert.equal(console, 'fault-div0: dividing by zero\n');
  assert.equal(report.kind, 'exception');
  assert.equal(report.vector, 0);
  assert.equal(report.errorCode, undefined);
  assertRipInImage(report);
  assert.match(report.instruction!.text, /^i?div/);
});

test('fault-gp: #GP (13) for hlt at CPL3', async (t) => {
  if (!requireKvm(t)) return;
  const { report, console } = await crash('fault-gp');
  assert.equal(console, 'fault-gp: executing hlt at CPL3\n');
  assert.equal(report.kind, 'exception');
  assert.equal(report.vector, 13);
  assert.equal(report.errorCode, 0);
  assert.equal(report.sregs.cpl, 3);
  assertRipInImage(report);
  assert.equal(report.instruction!.text, 'hlt');
});

test('unhandled-port: out to port 0x80 ends the VM with unhandled-io', async (t) => {
  if (!requireKvm(t)) return;
  const { report, console } = await crash('unhandled-port');
  assert.equal(console, 'unhandled-port: outb to port 0x80\n');
  assert.equal(report.kind, 'unhandled-io');
  assert.equal(report.exitReason, 'KVM_EXIT_IO');
  assert.match(report.summary, /port 0x80\b/);
  assert.match(report.summary, /write of 0x42/);
  assert.equal(report.vector, undefined);
  assert.equal(report.regs.rax & 0xffn, 0x42n);
  assert.ok(report.regs.rip >= BigInt(IMAGE_BASE), `rip 0x${report.regs.rip.toString(16)}`);
});

test('unhandled-mmio: write to 0xc0000000 ends the VM with unhandled-mmio', async (t) => {
  if (!requireKvm(t)) return;
  const { report, console } = await crash('unhandled-mmio');
  assert.equal(console, 'unhandled-mmio: writing 0x12345678 to 0xc0000000\n');
  assert.equal(report.kind, 'unhandled-mmio');
  assert.equal(report.exitReason, 'KVM_EXIT_MMIO');
  assert.match(report.summary, /0xc0000000\b/);
  assert.match(report.summary, /write of 0x12345678/);
  assert.equal(report.regs.rax, 0xc0000000n);
  assert.ok(report.regs.rip >= BigInt(IMAGE_BASE), `rip 0x${report.regs.rip.toString(16)}`);
});

test('triple-fault at CPL0: empty IDT + ud2 ends with KVM_EXIT_SHUTDOWN', async (t) => {
  if (!requireKvm(t)) return;
  const { report, console } = await crash('triple-fault', { cpl: 0 });
  assert.equal(console, 'triple-fault: lidt with limit 0, then ud2\n');
  assert.equal(report.kind, 'triple-fault');
  assert.equal(report.exitReason, 'KVM_EXIT_SHUTDOWN');
  assert.equal(report.sregs.cpl, 0);
  assert.equal(report.sregs.cs, 0x08);
  assertRipInImage(report);
  assert.equal(report.instruction!.text, 'ud2');
});

test('triple-fault guest at CPL3: lidt itself is a #GP', async (t) => {
  if (!requireKvm(t)) return;
  const { report } = await crash('triple-fault');
  assert.equal(report.kind, 'exception');
  assert.equal(report.vector, 13);
  assertRipInImage(report);
  assert.match(report.instruction!.text, /^lidt/);
});

test('the process and KVM are still fine after all those crashes', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'exit-status');
  assert.deepEqual(r.result, { kind: 'exit', status: 42, cpu: 0 });
});
