/** Booting the example and test guests end to end: console output, events, exit status, real mode. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bootGuest, requireKvm } from '../helpers/kvm.js';

test('demo: greeting on the console, hello and value events, exit 0', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('examples', 'demo');
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
  assert.match(r.console, /^Hello from the kvmtalk demo guest on cpu 0 of 1\n/);
  assert.match(r.console, /hypercalls done \(log returned 40\), goodbye\n$/);
  assert.equal(r.events.hello.length, 1);
  assert.deepEqual(r.events.values, [{ cpu: 0, value: 4276993775n }]);
  assert.deepEqual(r.events.logs, [{ cpu: 0, text: 'log message from the guest via KT_HC_LOG' }]);
  assert.ok(r.log.some((l) => l.includes('received value 4276993775 (0xfeedbeef)')), r.log.join('\n'));
});

test('kvm-hello-world in real mode: prints "4\\n" for 2 + 2, then halts', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('images', 'kvm-hello-world', {}, { mode: 'real', regs: { rax: 2n, rbx: 2n } }, { image: { loadAddr: 0x1000n } });
  assert.equal(r.console, '4\n');
  assert.equal(r.result.kind, 'halt');
  assert.equal(r.result.status, 0);
  // HLT is the 12th byte at 0x1000; KVM reports RIP after it.
  if (r.result.kind === 'halt') assert.equal(r.result.rip, 0x100cn);
});

test('kvm-hello-world in real mode: 3 + 4 prints "7\\n"', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('images', 'kvm-hello-world', {}, { mode: 'real', regs: { rax: 3n, rbx: 4n } }, { image: { loadAddr: 0x1000n } });
  assert.equal(r.console, '7\n');
  assert.equal(r.result.kind, 'halt');
});

test('hello example prints one line and exits 0', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('examples', 'hello');
  assert.equal(r.console, 'Hello, world!\n');
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
});

test('exit-status: main returning 42 becomes the VM status', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'exit-status');
  assert.equal(r.console, 'exit-status: returning 42\n');
  assert.deepEqual(r.result, { kind: 'exit', status: 42, cpu: 0 });
});

test('exit-status at CPL0 (emulated) also exits with 42', async (t) => {
  if (!requireKvm(t)) return;
  const r = await bootGuest('tests', 'exit-status', {}, { cpl: 0 });
  assert.equal(r.console, 'exit-status: returning 42\n');
  assert.deepEqual(r.result, { kind: 'exit', status: 42, cpu: 0 });
});
