/**
 * `kvmtalk bench channel` cannot rot: a tiny run of the whole matrix (every mode, size,
 * direction and vCPU count, plus the C baseline) must finish and produce the documented JSON
 * shape. The numbers themselves are not checked beyond being real measurements: on a shared
 * machine they mean nothing at these counts.
 *
 * runChannelBench is called directly, so bench-results/ (the last real run) is left alone; the
 * CLI wiring is checked through the BENCHMARKS table.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  CHANNEL_BENCH_MODES, CHANNEL_BENCH_SIZES, CHANNEL_BENCH_VCPUS, formatChannelTable, pct, runChannelBench, type Percentiles,
} from '../../src/bench/channel.js';
import { toJson } from '../../src/bench/report.js';
import { BENCHMARKS } from '../../src/cli/commands/bench.js';
import { requireKvm } from '../helpers/kvm.js';

const isPos = (v: unknown) => typeof v === 'number' && Number.isFinite(v) && v > 0;

function assertPercentiles(p: Percentiles, what: string): void {
  for (const v of [p.p50, p.p90, p.p99]) assert.ok(isPos(v), `${what}: ${JSON.stringify(p)}`);
  assert.ok(p.p50 <= p.p90 && p.p90 <= p.p99, `${what}: p50 ≤ p90 ≤ p99: ${JSON.stringify(p)}`);
}

test('pct: nearest-rank percentiles', () => {
  const v = Array.from({ length: 100 }, (_, i) => 100 - i); // 100 … 1, unsorted on purpose
  assert.equal(pct(v, 50), 50);
  assert.equal(pct(v, 90), 90);
  assert.equal(pct(v, 99), 99);
  assert.equal(pct([7], 99), 7);
  assert.ok(Number.isNaN(pct([], 50)));
});

test('bench CLI: `channel` is registered with --rounds and --messages', () => {
  const entry = BENCHMARKS.find((b) => b.name === 'channel');
  assert.ok(entry, 'no channel entry in BENCHMARKS');
  assert.equal(entry.options.rounds, true);
  assert.equal(entry.options.messages, true);
});

test('bench channel: a tiny run yields the full matrix and the documented JSON shape', { timeout: 180_000 }, async (t) => {
  if (!requireKvm(t)) return;
  const messages = 200;
  const r = await runChannelBench({ rounds: 1, messages, phaseLimitMs: 5000 });
  const json = JSON.parse(toJson(r)) as typeof r; // what `--json` and bench-results/channel.json contain

  assert.equal(json.benchmark, 'channel');
  assert.equal(json.rounds, 1);
  assert.equal(json.messages, messages);
  assert.equal(json.round_trips, 20);
  assert.equal(json.ring_capacity, 65536);
  assert.equal(json.phase_limit_ms, 5000);
  assert.deepEqual(json.sizes, [64, 4096]);
  for (const k of ['polling_ratio_64', 'polling_ratio_64_best', 'ioeventfd_over_hypercall', 'ts_polling_64_msgs_per_s', 'c_64_msgs_per_s'] as const) {
    assert.ok(isPos(json[k]), `${k} = ${json[k]}`);
  }
  assert.equal(json.target_polling_ratio_64, 0.5);
  assert.equal(json.target_ioeventfd_over_hypercall, 1);
  assert.equal(json.meets_polling_target, json.polling_ratio_64 >= 0.5);
  assert.equal(json.meets_ioeventfd_target, json.ioeventfd_over_hypercall > 1);
  assert.equal(json.ioeventfd_over_hypercall_by_cell.length, CHANNEL_BENCH_SIZES.length * 2 * CHANNEL_BENCH_VCPUS.length);
  for (const c of json.ioeventfd_over_hypercall_by_cell) assert.ok(isPos(c.ratio), JSON.stringify(c));

  const cells = CHANNEL_BENCH_MODES.length * CHANNEL_BENCH_SIZES.length * CHANNEL_BENCH_VCPUS.length * 2;
  assert.equal(json.matrix.throughput.length, cells);
  assert.equal(json.matrix.latency.length, cells);
  for (const mode of CHANNEL_BENCH_MODES) {
    for (const vcpus of CHANNEL_BENCH_VCPUS) {
      for (const size of CHANNEL_BENCH_SIZES) {
        for (const direction of ['guest-to-host', 'host-to-guest'] as const) {
          const c = json.matrix.throughput.find((x) => x.mode === mode && x.vcpus === vcpus && x.size === size && x.direction === direction);
          assert.ok(c, `throughput ${mode}/${vcpus}/${size}/${direction} missing`);
          assert.ok(isPos(c.msgs_per_s) && isPos(c.mb_per_s), JSON.stringify(c));
          assert.equal(c.per_round.length, 1);
          // With a 5 s limit nothing is cut short: every vCPU moved all its messages.
          assert.deepEqual(c.messages_per_round, [messages * vcpus], JSON.stringify(c));
        }
        for (const initiator of ['host', 'guest'] as const) {
          const c = json.matrix.latency.find((x) => x.mode === mode && x.vcpus === vcpus && x.size === size && x.initiator === initiator);
          assert.ok(c, `latency ${mode}/${vcpus}/${size}/${initiator} missing`);
          assertPercentiles(c.rtt_us, `rtt ${mode}/${vcpus}/${size}/${initiator}`);
          assertPercentiles(c.one_way_us, `one-way ${mode}/${vcpus}/${size}/${initiator}`);
          assert.deepEqual(c.samples_per_round, [20 * vcpus]);
        }
      }
    }
  }
  assert.deepEqual(json.baseline.map((b) => b.size), [64, 4096]);
  for (const b of json.baseline) {
    assert.ok(isPos(b.msgs_per_s), JSON.stringify(b));
    assertPercentiles(b.rtt_us, `C rtt ${b.size}`);
    assert.deepEqual(b.messages_per_round, [messages]);
    assert.deepEqual(b.round_trips_per_round, [20]);
  }
  assert.equal(json.per_round.length, 1);
  assert.ok(isPos(json.per_round[0].polling_ratio_64));
  assert.ok(typeof json.definitions.latency === 'string' && typeof json.definitions.two_vcpus === 'string');
  assert.ok(isPos(json.seconds));
  assert.equal(typeof json.host.kernel, 'string');

  const table = formatChannelTable(r);
  assert.match(table, /polling_ratio_64 = /);
  assert.match(table, /ioeventfd_over_hypercall = /);
  assert.match(table, /C ring, 2 host threads/);
});
