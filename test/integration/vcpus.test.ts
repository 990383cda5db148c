/**
 * Several vCPUs, and controlling a running VM from the main thread: stop() and run-time handler
 * modules both have to get vCPU threads out of KVM_RUN (immediate_exit + signal).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { STOPPED_STATUS } from '../../src/vmm/outcome.js';
import { bootGuest, requireKvm, waitFor } from '../helpers/kvm.js';

for (const vcpus of [2, 4]) {
  test(`multivcpu with ${vcpus} vCPUs: values 100..${100 + vcpus - 1} each exactly once, exit 0`, async (t) => {
    if (!requireKvm(t)) return;
    const r = await bootGuest('tests', 'multivcpu', { vcpus });
    assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
    const got = r.events.values.map((v) => [v.cpu, v.value]).sort((a, b) => Number(a[0]) - Number(b[0]));
    assert.deepEqual(got, Array.from({ length: vcpus }, (_, i) => [i, BigInt(100 + i)]));
    assert.equal(r.console, `multivcpu: ${vcpus} vcpus checked in\n`);
  });
}

test('multicore example with 3 vCPUs: every vCPU checks in, then vCPU 0 ends the VM', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('examples', 'multicore', { vcpus: 3 });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
  const lines = r.console.split('\n');
  assert.equal(lines.pop(), '');
  assert.equal(lines.pop(), 'all 3 cpus checked in');
  assert.deepEqual(lines.sort(), ['cpu 0 of 3 checking in', 'cpu 1 of 3 checking in', 'cpu 2 of 3 checking in']);
});

/** Wall-clock ms from `start`. */
const since = (start: number) => performance.now() - start;

test('spin: stop() after "spinning" ends the run with kind stopped', async (t) => {
  if (!requireKvm(t)) return;
  let stoppedAt = 0;
  const r = await bootGuest('tests', 'spin', {}, {}, {
    during: async (vm, run, text) => {
      await waitFor(() => text().includes('spinning\n'), 10_000, 'the guest to print "spinning"');
      stoppedAt = performance.now();
      vm.stop();
      await run;
    },
  });
  assert.ok(since(stoppedAt) < 3000, `stop took ${since(stoppedAt)} ms`);
  assert.deepEqual(r.result, { kind: 'stopped', status: STOPPED_STATUS });
  assert.equal(r.console, 'spinning\n');
});

test('spin with 2 vCPUs: a handler module loaded while running reaches both, then stop()', async (t) => {
  if (!requireKvm(t)) return;
  let loadMs = -1;
  let badError: unknown;
  const r = await bootGuest('tests', 'spin', { vcpus: 2 }, {}, {
    during: async (vm, _run, text) => {
      await waitFor(() => text() === 'spinning\nspinning\n', 10_000, 'both vCPUs to print "spinning"');
      const start = performance.now();
      await vm.loadHypercallModule(new URL('../fixtures/hypercall-handlers.js', import.meta.url));
      loadMs = since(start);
      // A module the vCPU threads refuse: the error can only have come from them.
      badError = await vm.loadHypercallModule(new URL('../fixtures/reserved-module.js', import.meta.url)).then(() => undefined, (e: unknown) => e);
      vm.stop();
    },
  });
  assert.ok(loadMs >= 0 && loadMs < 3000, `module load took ${loadMs} ms`);
  assert.ok(badError instanceof Error, 'loading the reserved-number module must reject');
  assert.match(badError.message, /reserved-module\.js: hypercall number 5 is reserved/);
  assert.deepEqual(r.result, { kind: 'stopped', status: STOPPED_STATUS });
});

test('stop() right after run() starts (before the vCPUs are ready) still ends the run', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'spin', { vcpus: 2 }, {}, {
    during: (vm) => vm.stop(),
  });
  assert.deepEqual(r.result, { kind: 'stopped', status: STOPPED_STATUS });
});
