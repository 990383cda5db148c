/**
 * Checks kvmtalk's hand-written KVM ABI (struct layouts, ioctl numbers, capability ids, exit
 * reasons) against the system's <linux/kvm.h>, as gcc sees it.
 *
 * test/fixtures/kvm-layout.c prints one fact per line; every TypeScript definition must have a
 * matching line and every line must have a TypeScript counterpart, so neither side can silently
 * grow out of coverage. Names the installed header does not define (it may be older than the
 * running kernel) are reported as skipped subtests, never passed silently.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { before, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import koffi, { type TypeObject } from 'koffi';
import { EXIT } from '../../src/kvm/exit-reasons.js';
import {
  CAP, DIRTY_LOG_INITIALLY_SET, DIRTY_LOG_MANUAL_PROTECT_ENABLE, EXIT_XEN_HCALL, IRQ_ROUTING_IRQCHIP, IRQ_ROUTING_MSI, IRQCHIP_IOAPIC,
  IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE, IRQFD_FLAG_DEASSIGN, KVM, MEM_LOG_DIRTY_PAGES, MP_STATE, SYNC_X86_EVENTS, SYNC_X86_REGS,
  SYNC_X86_SREGS, XEN_HVM_CONFIG_INTERCEPT_HCALL,
} from '../../src/kvm/ioctls.js';
import * as structs from '../../src/kvm/structs.js';

const FIXTURE = fileURLToPath(new URL('../../../test/fixtures/kvm-layout.c', import.meta.url));

/** Parsed output of the C program: `"<kind> <name>"` → value, plus the names it reports absent. */
interface Facts {
  values: Map<string, number>;
  absent: Set<string>;
  header: string;
}

let facts: Facts;

function compileAndRun(): Facts {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kvmtalk-layout-'));
  try {
    const exe = path.join(dir, 'kvm-layout');
    try {
      execFileSync('gcc', ['-std=gnu11', '-Wall', '-o', exe, FIXTURE], { stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
      // gcc is a hard requirement of the project: a missing compiler is a failure, not a skip.
      if (err.code === 'ENOENT') throw new Error('gcc not found: kvmtalk needs gcc (apt-get install gcc)');
      throw new Error(`gcc failed on ${FIXTURE}:\n${err.stderr?.toString() ?? err.message}`);
    }
    const out = execFileSync(exe, { encoding: 'utf8' });
    const values = new Map<string, number>();
    const absent = new Set<string>();
    let header = '?';
    for (const line of out.trim().split('\n')) {
      const [kind, name, value] = line.split(' ');
      if (kind === 'header') header = value;
      else if (kind === 'absent') absent.add(`${name} ${value}`);
      else values.set(`${kind} ${name}`, Number(value)); // Number() parses the 0x… ioctl numbers too.
    }
    return { values, absent, header };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function headerVersion(): string {
  const code = Number(facts.header);
  return `${code >> 16}.${(code >> 8) & 0xff}.${code & 0xff}`;
}

/**
 * Compares TypeScript values with the C facts of one kind. Fails once, listing every mismatch
 * and every name only one side knows; names the header lacks become skipped subtests.
 */
async function compare(t: TestContext, kind: string, expected: Map<string, number>, hex = false): Promise<void> {
  const problems: string[] = [];
  const show = (v: number) => (hex ? `0x${v.toString(16)}` : String(v));
  for (const [name, tsValue] of expected) {
    const key = `${kind} ${name}`;
    const c = facts.values.get(key);
    if (c !== undefined) {
      if (c !== tsValue) problems.push(`${key}: TypeScript ${show(tsValue)}, <linux/kvm.h> ${show(c)}`);
    } else if (facts.absent.has(key)) {
      await t.test(key, { skip: `not defined by the system <linux/kvm.h> (${headerVersion()})` }, () => {});
    } else {
      problems.push(`${key}: not printed by test/fixtures/kvm-layout.c (add it there)`);
    }
  }
  for (const key of [...facts.values.keys(), ...facts.absent]) {
    const [k, name] = key.split(' ');
    if (k === kind && !expected.has(name)) problems.push(`${key}: in <linux/kvm.h> output but kvmtalk has no such definition`);
  }
  assert.equal(problems.length, 0, `${problems.length} ${kind} mismatch(es):\n  ${problems.join('\n  ')}`);
}

/** The KVM structs exported by structs.ts, by C name. */
const STRUCTS = new Map<string, TypeObject>(
  Object.entries(structs).filter(([name]) => name.startsWith('kvm_')) as [string, TypeObject][],
);

/** C types of the STRUCTS, so nested exported structs are checked once, on their own. */
const STRUCT_TYPE_NAMES = new Set([...STRUCTS.values()].map((t) => koffi.type(t).name));

/** Every field path of a koffi struct/union, depth first, not descending into arrays or exported structs. */
function fieldPaths(type: TypeObject, prefix = ''): string[] {
  const out: string[] = [];
  for (const member of Object.values(koffi.type(type).members ?? {})) {
    const p = prefix + member.name;
    out.push(p);
    const info = koffi.type(member.type);
    if ((info.primitive === 'Record' || info.primitive === 'Union') && !STRUCT_TYPE_NAMES.has(info.name)) {
      out.push(...fieldPaths(member.type, `${p}.`));
    }
  }
  return out;
}

/** Nested fields checked in addition to fieldPaths(): the run loop reads synced registers in place. */
const EXTRA_PATHS: Record<string, string[]> = { kvm_run: ['s.regs.regs', 's.regs.sregs', 's.regs.events'] };

/** TypeScript field path → C member designator, where the two are spelled differently. */
function cDesignator(struct: string, tsPath: string): string {
  if (struct !== 'kvm_run') return tsPath;
  if (tsPath === 'exit') return 'hw'; // C's exit union is anonymous; its first member shares its offset.
  if (!tsPath.startsWith('exit.')) return tsPath;
  const p = tsPath.slice('exit.'.length);
  if (p.startsWith('debug.')) return p.replace('debug.', 'debug.arch.'); // struct kvm_debug_exit_arch arch
  if (p.startsWith('xen.hcall')) return p.replace('xen.hcall', 'xen.u.hcall'); // struct kvm_xen_exit's union u
  // Before 6.x the header has `__u32 longmode; __u32 pad;`, later `union { __u32 longmode; __u64 flags; }`.
  if (p === 'hypercall.flags') return 'hypercall.longmode';
  return p;
}

/** C flexible array members (the TS structs describe only the fixed header): they start at sizeof. */
const FLEX_ARRAYS: Record<string, string> = { kvm_cpuid2: 'entries', kvm_stats_desc: 'name', kvm_irq_routing: 'entries' };

before(() => {
  facts = compileAndRun();
});

test('struct sizes match <linux/kvm.h>', async (t) => {
  await compare(t, 'size', new Map([...STRUCTS].map(([name, type]) => [name, structs.sizeOf(type)])));
});

test('struct field offsets match <linux/kvm.h>', async (t) => {
  const expected = new Map<string, number>();
  for (const [name, type] of STRUCTS) {
    for (const p of [...fieldPaths(type), ...(EXTRA_PATHS[name] ?? [])]) {
      expected.set(`${name}.${cDesignator(name, p)}`, structs.offsetOf(type, p));
    }
    if (FLEX_ARRAYS[name]) expected.set(`${name}.${FLEX_ARRAYS[name]}`, structs.sizeOf(type));
  }
  await compare(t, 'offset', expected);
});

test('ioctl numbers match <linux/kvm.h>', async (t) => {
  await compare(t, 'ioctl', new Map(Object.entries(KVM).map(([k, v]) => [`KVM_${k}`, v])), true);
});

test('capability ids match <linux/kvm.h>', async (t) => {
  await compare(t, 'cap', new Map(Object.entries(CAP).map(([k, v]) => [`KVM_CAP_${k}`, v])));
});

test('exit reasons match <linux/kvm.h>', async (t) => {
  await compare(t, 'exit', new Map(Object.entries(EXIT).map(([k, v]) => [`KVM_EXIT_${k}`, v])));
});

test('sync-regs, Xen, dirty-log and interrupt constants match <linux/kvm.h>', async (t) => {
  await compare(t, 'const', new Map([
    ['KVM_SYNC_X86_REGS', SYNC_X86_REGS],
    ['KVM_SYNC_X86_SREGS', SYNC_X86_SREGS],
    ['KVM_SYNC_X86_EVENTS', SYNC_X86_EVENTS],
    ['KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL', XEN_HVM_CONFIG_INTERCEPT_HCALL],
    ['KVM_EXIT_XEN_HCALL', EXIT_XEN_HCALL],
    ['KVM_MEM_LOG_DIRTY_PAGES', MEM_LOG_DIRTY_PAGES],
    ['KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE', DIRTY_LOG_MANUAL_PROTECT_ENABLE],
    ['KVM_DIRTY_LOG_INITIALLY_SET', DIRTY_LOG_INITIALLY_SET],
    ['KVM_MP_STATE_RUNNABLE', MP_STATE.RUNNABLE],
    ['KVM_MP_STATE_HALTED', MP_STATE.HALTED],
    ['KVM_IRQ_ROUTING_IRQCHIP', IRQ_ROUTING_IRQCHIP],
    ['KVM_IRQ_ROUTING_MSI', IRQ_ROUTING_MSI],
    ['KVM_IRQCHIP_PIC_MASTER', IRQCHIP_PIC_MASTER],
    ['KVM_IRQCHIP_PIC_SLAVE', IRQCHIP_PIC_SLAVE],
    ['KVM_IRQCHIP_IOAPIC', IRQCHIP_IOAPIC],
    ['KVM_IRQFD_FLAG_DEASSIGN', IRQFD_FLAG_DEASSIGN],
  ]));
});
