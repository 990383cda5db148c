/**
 * KVM binary statistics against the real kernel: VM and vCPU stats fds parse, expose the names
 * every x86 KVM since 5.14 has, and count the exits of a two-instruction real-mode guest.
 * The format test at the end uses a synthetic stats file and needs no KVM.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { EXIT } from '../../src/kvm/exit-reasons.js';
import { CAP } from '../../src/kvm/ioctls.js';
import { Kvm, KvmUnavailableError } from '../../src/kvm/kvm.js';
import { KvmStats, formatStats, statValue, type StatDesc, type StatValues } from '../../src/kvm/stats.js';
import * as sys from '../../src/kvm/sys.js';

/** Opens /dev/kvm, or skips the test with the reason printed (a skip must never look like a pass). */
function openKvm(t: TestContext): Kvm | undefined {
  try {
    const kvm = Kvm.open();
    if (kvm.checkExtension(CAP.BINARY_STATS_FD) === 0) {
      kvm.close();
      const reason = 'KVM_CAP_BINARY_STATS_FD is absent (kernel older than 5.14)';
      console.log(`kvm-stats: skipped: ${reason}`);
      t.skip(reason);
      return undefined;
    }
    return kvm;
  } catch (e) {
    if (!(e instanceof KvmUnavailableError)) throw e;
    console.log(`kvm-stats: skipped: ${e.reason}`);
    t.skip(e.reason);
    return undefined;
  }
}

/** Structural checks every stats fd must pass. */
function checkDescriptors(stats: KvmStats): void {
  const descs = stats.describe();
  assert.ok(descs.length > 0, `${stats.id}: no descriptors`);
  assert.equal(new Set(descs.map((d) => d.name)).size, descs.length, `${stats.id}: duplicate names`);
  const byOffset = [...descs].sort((a, b) => a.offset - b.offset);
  let end = 0;
  for (const d of byOffset) {
    assert.match(d.name, /^[a-z0-9_]+$/, `${stats.id}: odd name ${JSON.stringify(d.name)}`);
    assert.notEqual(d.type, 'unknown', `${d.name}: unknown type in flags 0x${d.flags.toString(16)}`);
    assert.notEqual(d.unit, 'unknown', `${d.name}: unknown unit in flags 0x${d.flags.toString(16)}`);
    assert.ok(d.size >= 1 && d.size <= 1024, `${d.name}: size ${d.size}`);
    assert.equal(d.offset % 8, 0, `${d.name}: offset ${d.offset} not u64-aligned`);
    assert.ok(d.offset >= end, `${d.name}: overlaps the previous stat`);
    if (d.type === 'log-hist' || d.type === 'linear-hist') assert.ok(d.size > 1, `${d.name}: histogram of ${d.size}`);
    end = d.offset + 8 * d.size;
  }
  const values = stats.read();
  for (const d of descs) {
    const v = values.get(d.name);
    if (d.size === 1 && !d.type.endsWith('hist')) assert.equal(typeof v, 'bigint', `${d.name}: ${typeof v}`);
    else assert.ok(Array.isArray(v) && v.length === d.size && v.every((x) => typeof x === 'bigint'), `${d.name}: not ${d.size} bigints`);
  }
}

function assertNames(stats: KvmStats, names: string[]): void {
  const have = new Set(stats.describe().map((d) => d.name));
  const missing = names.filter((n) => !have.has(n));
  assert.deepEqual(missing, [], `${stats.id} lacks ${missing.join(', ')}; it has: ${[...have].join(' ')}`);
}

test('KVM binary stats of a VM and a vCPU', async (t) => {
  const kvm = openKvm(t);
  if (!kvm) return;
  const vm = kvm.createVm();
  const vcpu = vm.createVcpu(0, kvm.vcpuMmapSize());
  const vmStats = KvmStats.of(vm);
  const vcpuStats = KvmStats.of(vcpu);
  const memSize = 4096;
  let mem = 0n;
  try {
    await t.test('VM stats', () => {
      assert.match(vmStats.id, /^kvm-\d+$/);
      checkDescriptors(vmStats);
      // x86 MMU stats present since binary stats were introduced (5.14).
      assertNames(vmStats, ['remote_tlb_flush', 'mmu_shadow_zapped', 'mmu_cache_miss', 'pages_4k', 'max_mmu_page_hash_collisions']);
      const peak = vmStats.describe().find((d) => d.name === 'max_mmu_page_hash_collisions');
      assert.equal(peak?.type, 'peak');
    });

    await t.test('vCPU stats', () => {
      assert.match(vcpuStats.id, /^kvm-\d+\/vcpu-0$/);
      checkDescriptors(vcpuStats);
      assertNames(vcpuStats, [
        'exits', 'io_exits', 'mmio_exits', 'halt_exits', 'irq_exits', 'signal_exits', 'insn_emulation',
        'pf_fixed', 'halt_wakeup', 'halt_poll_success_ns',
      ]);
      const d = new Map(vcpuStats.describe().map((x) => [x.name, x]));
      assert.deepEqual(
        { type: d.get('halt_poll_success_ns')?.type, unit: d.get('halt_poll_success_ns')?.unit, exp: d.get('halt_poll_success_ns')?.exponent },
        { type: 'cumulative', unit: 'seconds', exp: -9 },
      );
      // Histograms arrived in 5.15: check their decoding where the kernel has them.
      const hist = d.get('halt_wait_hist');
      if (hist) assert.deepEqual([hist.type, hist.unit, hist.exponent], ['log-hist', 'seconds', -9]);
      const values = vcpuStats.read();
      assert.equal(statValue(values, 'exits'), 0n, 'a vCPU that never ran has no exits');
      assert.equal(statValue(values, 'no_such_stat'), 0n);
    });

    await t.test('exits are counted across KVM_RUN', (st) => {
      // One page just below 4 GiB holds the reset vector (CS base 0xffff0000 + RIP 0xfff0):
      // mov al, 0x42; out 0x10, al; hlt — an I/O exit, then a HLT exit (no in-kernel irqchip).
      mem = sys.mmap(memSize, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1);
      new Uint8Array(sys.view(mem, memSize)).set([0xb0, 0x42, 0xe6, 0x10, 0xf4], 0xff0);
      vm.setUserMemoryRegion(0, 0xfffff000n, memSize, mem);

      const before = vcpuStats.read();
      assert.equal(vcpu.runOnce(), 0);
      assert.equal(vcpu.run.exitReason, EXIT.IO);
      assert.equal(vcpu.run.ioPort, 0x10);
      assert.equal(vcpu.runOnce(), 0);
      assert.equal(vcpu.run.exitReason, EXIT.HLT);
      const after = vcpuStats.read();

      const exits = statValue(after, 'exits') - statValue(before, 'exits');
      assert.ok(exits >= 2n, `exits grew by ${exits}, expected at least 2 (OUT and HLT)`);
      assert.ok(statValue(after, 'halt_exits') > statValue(before, 'halt_exits'), 'halt_exits did not grow');
      // Not io_exits: where OUT goes through KVM's instruction emulator (PVM here) it is not counted.
      const table = formatStats(after, vcpuStats.describe(), { since: before });
      assert.match(table, /^exits +\d+$/m);
      assert.match(table, /^halt_exits +1$/m);
      st.diagnostic('vCPU stats after OUT + HLT:');
      for (const line of table.split('\n')) st.diagnostic(`  ${line}`);
    });
  } finally {
    vcpuStats.close();
    vmStats.close();
    vcpu.close();
    vm.close();
    kvm.close();
    if (mem) sys.munmap(mem, memSize);
  }
  assert.throws(() => vcpuStats.read(), /after close/);
});

/** Builds a stats file the way the kernel lays it out: header, id, descriptors, data. */
function statsFile(id: string, stats: { name: string; flags: number; exponent?: number; values: bigint[] }[]): Buffer {
  const nameSize = 16;
  const descOffset = 24 + nameSize;
  const dataOffset = descOffset + stats.length * (16 + nameSize);
  const total = stats.reduce((n, s) => n + s.values.length, 0);
  const buf = Buffer.alloc(dataOffset + 8 * total);
  [0, nameSize, stats.length, 24, descOffset, dataOffset].forEach((v, i) => buf.writeUInt32LE(v, 4 * i));
  buf.write(id, 24);
  let word = 0;
  stats.forEach((s, i) => {
    const o = descOffset + i * (16 + nameSize);
    buf.writeUInt32LE(s.flags, o);
    buf.writeInt16LE(s.exponent ?? 0, o + 4);
    buf.writeUInt16LE(s.values.length, o + 6);
    buf.writeUInt32LE(word * 8, o + 8);
    buf.write(s.name, o + 16);
    for (const v of s.values) buf.writeBigUInt64LE(v, dataOffset + 8 * word++);
  });
  return buf;
}

test('stats parsing and formatting (synthetic stats file)', () => {
  const SECONDS = 0x20;
  const LOG_HIST = 0x4;
  const PEAK = 0x2;
  const BYTES = 0x10;
  const POW2 = 0x100;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kvmtalk-stats-'));
  try {
    const file = path.join(dir, 'stats');
    writeFileSync(file, statsFile('kvm-1/vcpu-0', [
      { name: 'exits', flags: 0, values: [5n] },
      { name: 'idle', flags: 0, values: [0n] },
      { name: 'wait_ns', flags: SECONDS, exponent: -9, values: [1_500_000n] },
      { name: 'wait_hist', flags: LOG_HIST | SECONDS, exponent: -9, values: [0n, 3n, 1n, 0n] },
      { name: 'max_bytes', flags: PEAK | BYTES | POW2, exponent: 10, values: [8n] },
    ]));
    const stats = KvmStats.fromFd(openSync(file, 'r'));
    try {
      assert.equal(stats.id, 'kvm-1/vcpu-0');
      const d = stats.describe().find((x) => x.name === 'max_bytes') as StatDesc;
      assert.deepEqual([d.type, d.unit, d.base, d.exponent, d.size, d.offset], ['peak', 'bytes', 2, 10, 1, 56]);
      const v = stats.read();
      assert.equal(v.get('exits'), 5n);
      assert.deepEqual(v.get('wait_hist'), [0n, 3n, 1n, 0n]);
      assert.equal(statValue(v, 'wait_hist'), 4n);
      assert.equal(formatStats(v, stats.describe()), [
        'exits      5',
        'wait_ns    1.5 ms',
        'wait_hist  n=4 p50<2 ns max<4 ns',
        'max_bytes  8 KiB',
      ].join('\n'));
      const earlier: StatValues = new Map([['exits', 2n], ['wait_ns', 1_500_000n], ['max_bytes', 8n]]);
      assert.equal(formatStats(v, stats.describe(), { since: earlier, match: /^(exits|wait_ns|max_bytes|idle)$/ }), [
        'exits      3',
        'max_bytes  8 KiB', // a peak is shown as is, not as a difference
      ].join('\n'));
      assert.match(formatStats(v, stats.describe(), { all: true }), /^idle +0$/m);
    } finally {
      stats.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
