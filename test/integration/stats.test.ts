/** Run statistics: exit counts by reason, exit-latency histograms, and KVM's binary stats per vCPU. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EXIT } from '../../src/kvm/exit-reasons.js';
import type { StatValues } from '../../src/kvm/stats.js';
import type { LatencyHistogram } from '../../src/vmm/exit-stats.js';
import { bootGuest, requireKvm } from '../helpers/kvm.js';

function stat(values: StatValues, name: string): bigint {
  const v = values.get(name);
  assert.equal(typeof v, 'bigint', `KVM stat ${name} missing or not a scalar`);
  return v as bigint;
}

function assertSaneHistogram(h: LatencyHistogram | undefined, name: string, count: number): void {
  assert.ok(h, `${name} histogram missing with timing: true`);
  assert.equal(h.count, count, `${name} count`);
  const [p50, p90, p99] = [50, 90, 99].map((p) => h.percentile(p));
  for (const p of [p50, p90, p99]) assert.ok(Number.isFinite(p) && p > 0, `${name} percentile ${p}`);
  assert.ok(p50 <= p90 && p90 <= p99, `${name}: p50 ${p50} ≤ p90 ${p90} ≤ p99 ${p99}`);
  // Each sample is a real duration: more than 100 ns, less than 10 s.
  assert.ok(h.percentile(0.001) > 100 && h.percentile(100) < 10e9, `${name}: ${h.percentile(0.001)}…${h.percentile(100)} ns`);
}

test('demo with timing: one port exit per hypercall plus the debug exit, latency histograms, KVM stats', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('examples', 'demo', { timing: true });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
  const stats = r.stats;
  assert.ok(stats);
  // Hypercalls: 3 console writes (one per kt_printf) + hello + send_value + log + the channel
  // open, then maybe channel notifications (only when the host reader was waiting), then port 0xf4.
  const consoleWrites = r.console.split('\n').length - 1;
  assert.equal(consoleWrites, 3);
  const hypercalls = consoleWrites + r.events.hello.length + r.events.values.length + r.events.logs.length + 1;
  assert.equal(hypercalls, 7);
  const io = stats.exits[EXIT.IO];
  assert.ok(io >= hypercalls + 1 && io <= hypercalls + 3, `IO exits ${io}, expected ${hypercalls + 1} plus at most 2 channel notifications`);
  // Nothing else reached userspace: no MMIO, HLT, shutdown, ...
  const total = stats.exits.reduce((a, b) => a + b, 0);
  assert.equal(total, io, `exits: ${stats.exits.map((c, i) => (c ? `${i}:${c}` : '')).filter(Boolean)}`);
  // One inKvm sample per KVM_RUN that returned an exit; one inVmm sample per exit the vCPU resumed from.
  assertSaneHistogram(stats.inKvm, 'inKvm', total);
  assertSaneHistogram(stats.inVmm, 'inVmm', total - 1);

  assert.ok(stats.kvm, 'KVM binary stats (KVM_GET_STATS_FD, Linux 5.14+)');
  assert.equal(stats.kvm.vcpus.length, 1);
  const vcpuExits = stat(stats.kvm.vcpus[0], 'exits');
  // KVM counts every exit, including those it handles in the kernel.
  assert.ok(vcpuExits >= BigInt(stats.exits[EXIT.IO]), `kvm exits ${vcpuExits} < userspace IO exits ${stats.exits[EXIT.IO]}`);
  assert.ok(stats.kvm.vm.size > 0, 'VM-wide stats are present');
});

test('without timing there are counts but no histograms', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'exit-status');
  assert.equal(r.result.status, 42);
  assert.equal(r.stats?.inKvm, undefined);
  assert.equal(r.stats?.inVmm, undefined);
  // One console write and the debug exit.
  assert.equal(r.stats?.exits[EXIT.IO], 2);
});

test('stats of a 2-vCPU run: both vCPUs ran and exited, counts are summed', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'multivcpu', { vcpus: 2, timing: true });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
  const stats = r.stats!;
  assert.equal(stats.kvm?.vcpus.length, 2);
  // vCPU 0 waits for vCPU 1's send_value, so both made at least that one port exit.
  for (const values of stats.kvm!.vcpus) assert.ok(stat(values, 'exits') > 0n);
  // 2 send_value + vCPU 0's printf and debug exit (+ vCPU 1's park, unless it was stopped first).
  assert.ok(stats.exits[EXIT.IO] === 4 || stats.exits[EXIT.IO] === 5, `IO exits ${stats.exits[EXIT.IO]}`);
  assert.ok(stats.inKvm!.count >= stats.exits[EXIT.IO]);
});
