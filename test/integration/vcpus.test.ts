/**
 * Several vCPUs, and controlling a running VM from the main thread: stop() and run-time handler
 * modules both have to get vCPU threads out of KVM_RUN (immediate_exit + signal).
 */
import assert from 'node:assert/strict';
import { cpusAllowed } from '../../src/kvm/sys.js';
import os from 'node:os';
import { test } from 'node:test';
import { STOPPED_STATUS } from '../../src/vmm/outcome.js';
import { STEP_MS } from '../fixtures/lingering-module.js';
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
  // Each vCPU thread posts its console output on its own port, so lines of different vCPUs may
  // reach the host in any order; vCPU 0's own two lines keep theirs.
  assert.deepEqual([...lines].sort(), ['all 3 cpus checked in', 'cpu 0 of 3 checking in', 'cpu 1 of 3 checking in', 'cpu 2 of 3 checking in']);
  assert.ok(lines.indexOf('cpu 0 of 3 checking in') < lines.indexOf('all 3 cpus checked in'));
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

test('pinVcpu restricts a running vCPU thread to the given host CPUs', async (t) => {
  if (!requireKvm(t)) return;
  const last = os.availableParallelism() - 1;
  let allowed = '';
  const r = await bootGuest('tests', 'spin', {}, {}, {
    during: async (vm, run, text) => {
      await waitFor(() => text().includes('spinning\n'), 10_000, 'the guest to print "spinning"');
      vm.pinVcpu(0, [last]);
      const tid = vm.vcpuThreadId(0);
      allowed = cpusAllowed(tid);
      assert.throws(() => vm.pinVcpu(0, [4096]), RangeError);
      assert.throws(() => vm.pinVcpu(7, [0]), RangeError);
      vm.stop();
      await run;
    },
  });
  assert.equal(allowed, String(last));
  assert.equal(r.result.kind, 'stopped');
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

/** `p`, or a rejection after `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer after ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

test('a module load posted while the vCPU thread finishes the previous one is not lost', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'spin', {}, {}, {
    during: async (vm, _run, text) => {
      await waitFor(() => text() === 'spinning\n', 10_000, 'the guest to print "spinning"');
      // After answering this load, the vCPU thread stays busy in the module's microtasks for
      // STEP_MS ms before it goes back into KVM_RUN ...
      await within(vm.loadHypercallModule(new URL('../fixtures/lingering-module.js', import.meta.url)), 5000, 'first module load');
      // ... so this load's kick (immediate_exit = 1 + SIGUSR2) lands in that gap. It must not be
      // forgotten: the spin guest makes no exits, so nothing else would get the vCPU out of KVM_RUN.
      await new Promise((resolve) => setTimeout(resolve, STEP_MS / 3));
      await within(vm.loadHypercallModule(new URL('../fixtures/hypercall-handlers.js', import.meta.url)), 5000, 'second module load (its kick was lost)');
      vm.stop();
    },
  });
  assert.deepEqual(r.result, { kind: 'stopped', status: STOPPED_STATUS });
});

test('a module load still pending when the VM is stopped settles instead of hanging', async (t) => {
  if (!requireKvm(t)) return;
  let pending: Promise<string> | undefined;
  const r = await bootGuest('tests', 'spin', {}, {}, {
    during: async (vm, run, text) => {
      await waitFor(() => text() === 'spinning\n', 10_000, 'the guest to print "spinning"');
      pending = vm.loadHypercallModule(new URL('../fixtures/hypercall-handlers.js', import.meta.url)).then(
        () => 'resolved',
        (e: Error) => `rejected: ${e.message}`,
      );
      vm.stop();
      await run;
    },
  });
  assert.deepEqual(r.result, { kind: 'stopped', status: STOPPED_STATUS });
  // Either outcome is fine (loaded, or refused because the VM ended); never answering is not.
  const outcome = await within(pending!, 2000, 'loadHypercallModule() issued just before stop()').catch((e: Error) => e.message);
  assert.match(outcome, /^(resolved|rejected: )/);
});
