/**
 * `kvmtalk bench bpf` end to end with one round: every runtime that can run here gives positive
 * per-run times (and the benchmark itself throws when runtimes disagree on a program's result),
 * the interrupt latency comes with the bare hypercall round trip, and parts that cannot run are
 * skipped with a reason. Skips without clang for the BPF target.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runBpfBench } from '../../src/bench/bpf.js';
import { BENCH_PROGRAMS, clangBpfAvailable } from '../../src/bench/bpf-programs.js';
import { kvmSkipReason } from '../helpers/kvm.js';

test('bench bpf, one round: figures from every runtime available here', async (t) => {
  const clang = clangBpfAvailable();
  if (!clang.ok) {
    console.log(`SKIP (no clang for -target bpf): ${clang.reason}`);
    return t.skip(clang.reason);
  }
  const r = await runBpfBench({ rounds: 1 });
  assert.equal(r.benchmark, 'bpf');
  assert.deepEqual(r.programs.map((p) => p.name), BENCH_PROGRAMS.map((p) => p.name));
  for (const p of r.programs) {
    assert.ok(p.ts_interp_ns > 0 && p.insns > 0, `${p.name}: ${JSON.stringify(p)}`);
    if (!r.skipped.kernel) assert.ok(p.kernel_ns! > 0 && p.kernel_wall_ns! > 0, `${p.name} kernel: ${JSON.stringify(p)}`);
    if (!r.skipped.guest && !r.skipped.kvm) {
      assert.ok(p.guest_interp_ns! > 0, `${p.name} guest interpreter: ${JSON.stringify(p)}`);
      if (p.guest_jitted) assert.ok(p.guest_jit_ns! > 0, `${p.name} guest JIT: ${JSON.stringify(p)}`);
      if (p.guest_jitted && !r.skipped.kernel) assert.ok(p.guest_jit_vs_kernel! > 0);
    }
  }
  // the TS interpreter does more work for more instructions executed: fnv's 128 iterations cost more than nop
  const ts = Object.fromEntries(r.programs.map((p) => [p.name, p.ts_interp_ns]));
  assert.ok(ts.fnv! > ts.nop!, JSON.stringify(ts));
  assert.ok(r.verifier_4096_ms > 0 && r.verifier_4096_processed >= 4096);
  if (kvmSkipReason() === undefined) {
    const irq = r.interrupt_to_handler_us!;
    assert.ok(irq.running_us > 0 && irq.sleeping_us > 0 && irq.hypercall_round_trip_us > 0, JSON.stringify(irq));
    assert.ok(irq.samples >= 30);
  } else {
    assert.equal(r.interrupt_to_handler_us, null);
    assert.match(r.skipped.kvm!, /./);
  }
  if (kvmSkipReason() === undefined) {
    const up = r.upcall_latency_us!;
    // With COPY the image's size hardly matters (a fixed number of MMIO exits): no order between the two.
    assert.ok(up.minimal_us > 0 && up.policy_us > 0 && up.policy_bytes > up.minimal_bytes && up.samples >= 10, JSON.stringify(up));
  } else assert.equal(r.upcall_latency_us, null);
  if (r.skipped.guest) console.log(`note: guest runtime part skipped: ${r.skipped.guest}`);
  if (r.skipped.kernel) console.log(`note: kernel part skipped: ${r.skipped.kernel}`);
});
