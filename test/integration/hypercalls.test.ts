/**
 * User hypercalls: handlers on the main thread (vm.handleHypercall, may be async) and handler
 * modules in the vCPU threads (vm.loadHypercallModule); errors from handlers (-EINVAL), wild guest
 * pointers (-EFAULT), unknown numbers (-ENOSYS) and reserved numbers.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { HypercallCall } from '../../src/hypercall/registry.js';
import { Vm } from '../../src/vmm/vm.js';
import { handlers, mixArgs } from '../fixtures/hypercall-handlers.js';
import { bootGuest, requireKvm, waitFor } from '../helpers/kvm.js';

const handlerModule = new URL('../fixtures/hypercall-handlers.js', import.meta.url);

/** The built-in checks of guest/tests/hypercalls.c, which must all pass whatever 256 answers. */
function assertBuiltinChecks(console: string): void {
  for (const what of ['unknown number 999: got -1000', 'log outside RAM: got -14', 'log too long: got -7', 'log valid string: got 32', 'nop: got 0']) {
    assert.ok(console.includes(`ok   ${what}`), `missing "ok   ${what}" in:\n${console}`);
  }
  assert.doesNotMatch(console, /FAIL/);
  assert.match(console, /hypercalls: 0 failures\n$/);
}

test('hypercalls guest: main-thread handler for 256 gets the four arguments', async (t) => {
  if (!requireKvm(t)) return;
  const calls: { nr: bigint; cpu: number; args: bigint[] }[] = [];
  const r = await bootGuest('tests', 'hypercalls', {}, {}, {
    setup: (vm) => vm.handleHypercall(256, (c) => {
      calls.push({ nr: c.nr, cpu: c.cpu, args: [c.a0, c.a1, c.a2, c.a3] });
      return mixArgs(c);
    }),
  });
  assert.deepEqual(calls, [{ nr: 256n, cpu: 0, args: [1n, 2n, 3n, 4n] }]);
  assert.match(r.console, /^user hypercall 256\(1, 2, 3, 4\) = 0x1234$/m);
  assertBuiltinChecks(r.console);
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
  assert.deepEqual(r.events.logs, [{ cpu: 0, text: 'hypercalls: hello from KT_HC_LOG' }]);
});

test('hypercalls guest: an async main-thread handler is awaited', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'hypercalls', {}, {}, {
    setup: (vm) => vm.handleHypercall(256, async (c) => {
      await new Promise((resolve) => setTimeout(resolve, 20));
      return c.a0 + c.a1 + c.a2 + c.a3 + 0xa000n;
    }),
  });
  assert.match(r.console, /^user hypercall 256\(1, 2, 3, 4\) = 0xa00a$/m);
  assertBuiltinChecks(r.console);
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
});

test('hypercalls guest: handler module loaded before run answers 256 in the vCPU thread', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'hypercalls', {}, {}, { setup: (vm) => vm.loadHypercallModule(handlerModule) });
  assert.match(r.console, /^user hypercall 256\(1, 2, 3, 4\) = 0x1234$/m);
  assertBuiltinChecks(r.console);
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
});

test('hypercalls guest: no handler for 256 gives -ENOSYS', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'hypercalls');
  assert.match(r.console, /^user hypercall 256\(1, 2, 3, 4\) = 0xfffffffffffffc18$/m); // -1000
  assertBuiltinChecks(r.console);
});

test('hypercalls guest: a main-thread handler that throws gives the guest -EINVAL', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'hypercalls', {}, {}, {
    setup: (vm) => vm.handleHypercall(256, () => {
      throw new Error('deliberate failure');
    }),
  });
  assert.match(r.console, /^user hypercall 256\(1, 2, 3, 4\) = 0xffffffffffffffea$/m); // -22
  assertBuiltinChecks(r.console);
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
  assert.ok(r.log.some((l) => l.includes('hypercall 256 handler threw: deliberate failure')), r.log.join('\n'));
});

test('hypercalls guest: a main-thread handler reading a wild guest pointer gives -EFAULT', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'hypercalls', {}, {}, {
    // a0 = 1 → 0x7fff_ffff_0001: far outside the 64 MiB of RAM.
    setup: (vm) => vm.handleHypercall(256, (c) => c.memory.readU64(0x7fffffff0000n + c.a0)),
  });
  assert.match(r.console, /^user hypercall 256\(1, 2, 3, 4\) = 0xfffffffffffffff2$/m); // -14
  assertBuiltinChecks(r.console);
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
});

/** The lines user-hypercalls.c prints, all of which must pass. */
function assertUserHypercallChecks(console: string): void {
  const want = [
    'sum of text: got 762', 'host upper-cased text: got 0', 'sum after upper-casing: got 538', 'length past RAM: got -14',
    `read word: got ${0x1122334455667788n}`, 'wild pointer: got -14', 'pointer straddling the end of RAM: got -14',
    'throwing handler: got -22', 'unregistered number: got -1000',
  ];
  for (const w of want) assert.ok(console.includes(`ok   ${w}`), `missing "ok   ${w}" in:\n${console}`);
  assert.doesNotMatch(console, /FAIL/);
  assert.match(console, /user-hypercalls: 0 failures\n$/);
}

test('pointer arguments, -EFAULT, -EINVAL, -ENOSYS with main-thread handlers', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('fixtures', 'user-hypercalls', {}, {}, {
    setup: (vm) => {
      for (const [nr, h] of Object.entries(handlers)) vm.handleHypercall(Number(nr), h);
    },
  });
  assertUserHypercallChecks(r.console);
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
  assert.ok(r.log.some((l) => l.includes('hypercall 302 handler threw: handler 302 always throws')), r.log.join('\n'));
});

test('pointer arguments, -EFAULT, -EINVAL, -ENOSYS with a handler module', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('fixtures', 'user-hypercalls', {}, {}, { setup: (vm) => vm.loadHypercallModule(handlerModule) });
  assertUserHypercallChecks(r.console);
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
});

test('KVM-reserved and invalid hypercall numbers are refused with RangeError', (t) => {
  if (!requireKvm(t)) return;
  const vm = Vm.create({ console: 'capture' });
  try {
    const h = (_c: HypercallCall) => 0;
    for (const nr of [5, 1, 12, 0, -1, 1.5, Number.NaN]) assert.throws(() => vm.handleHypercall(nr, h), RangeError, `nr ${nr}`);
    assert.throws(() => vm.handleHypercall(5, h), /hypercall number 5 is reserved/);
    // The first numbers on either side of KVM's range are accepted.
    vm.handleHypercall(13, h);
    vm.handleHypercall(256, h);
  } finally {
    vm.close();
  }
});

test('a handler module that registers KVM-reserved number 5 makes the run fail', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'exit-status', {}, {}, {
    setup: (vm) => vm.loadHypercallModule(new URL('../fixtures/reserved-module.js', import.meta.url)),
  });
  assert.equal(r.result.kind, 'failed');
  if (r.result.kind === 'failed') assert.match(r.result.message, /hypercall number 5 is reserved/);
  assert.equal(r.console, '', 'the guest never ran');
});

test('stop() while the guest waits on a main-thread handler that never answers ends the run', async (t) => {
  if (!requireKvm(t)) return;
  let called = false;
  let stoppedAt = 0;
  const r = await bootGuest('fixtures', 'call-then-spin', {}, {}, {
    setup: (vm) => vm.handleHypercall(256, (c) => {
      called = c.a0 === 7n;
      return new Promise<bigint>(() => {}); // never settles
    }),
    during: async (vm, run) => {
      await waitFor(() => called, 10_000, 'the guest to call hypercall 256');
      stoppedAt = performance.now();
      vm.stop();
      await run;
    },
  });
  assert.ok(performance.now() - stoppedAt < 3000, 'stop() took too long');
  assert.deepEqual(r.result, { kind: 'stopped', status: 143 });
  // stop() answers the pending call with -EINVAL, then kicks the vCPU; the guest may still print
  // that result before the kick lands, but it must never see any other value.
  assert.match(r.console, /^calling 256\n(256 returned -22\n)?$/);
});
