/**
 * Attaching to a running VM's channel from another process, on real KVM: a VM with a channel
 * serves its control socket; a separate Node process (test/fixtures/attach-child.ts, forked)
 * attaches with attachChannel, reads the guest's messages and sends one back that the guest
 * receives; meanwhile the VMM's own reader sees nothing; once the child is gone the VMM reads
 * again; `kvmtalk ps --json` lists the VM. The guest is test/fixtures/guests/attach-peer.c.
 */
import assert from 'node:assert/strict';
import { execFile, fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadImageFile } from '../../src/loader/image.js';
import { Vm } from '../../src/vmm/vm.js';
import { fixtureGuest, requireKvm, waitFor } from '../helpers/kvm.js';

const here = dirname(fileURLToPath(import.meta.url));
const CHILD = join(here, '..', 'fixtures', 'attach-child.js');
const CLI = join(here, '..', '..', '..', 'bin', 'kvmtalk.js');
const HC_PHASE = 256 + 74;
const N = 300; // ~32-byte frames: more than twice what the 4 KiB ring holds
const VECTOR = 0x41;

type ChildMsg = { type: 'attached'; info: { name: string; gpa: number } } | { type: 'messages'; messages: string[] } | { type: 'sent' } | { type: 'error'; message: string };

/** A forked attacher and what it reported. */
class Child {
  readonly messages: ChildMsg[] = [];
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  constructor(args: string[], env: NodeJS.ProcessEnv) {
    this.proc = fork(CHILD, args, { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.proc.on('message', (m: ChildMsg) => this.messages.push(m));
    this.exited = new Promise((resolve) => this.proc.once('exit', (code) => resolve(code)));
  }
  async next<T extends ChildMsg['type']>(type: T, ms = 20_000): Promise<Extract<ChildMsg, { type: T }>> {
    await waitFor(() => this.messages.some((m) => m.type === type || m.type === 'error'), ms, `the child's '${type}' report`);
    const err = this.messages.find((m) => m.type === 'error');
    if (err) throw new Error(`child failed: ${(err as { message: string }).message}`);
    return this.messages.find((m) => m.type === type) as Extract<ChildMsg, { type: T }>;
  }
}

/** A promise with its resolver exposed. */
function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

function runtimeDir(t: TestContext): string {
  const dir = join(mkdtempSync(join(os.tmpdir(), 'kvmtalk-attach-')), 'rt');
  t.after(() => rmSync(dirname(dir), { recursive: true, force: true }));
  return dir;
}

for (const how of ['exit', 'detach'] as const) {
  test(`another process attaches, reads the guest's messages and answers; the VMM's reader pauses and resumes after the child ${how === 'exit' ? 'exits without detaching' : 'detaches'}`, async (t) => {
    if (!requireKvm(t)) return;
    const dir = runtimeDir(t);
    const env = { ...process.env, KVMTALK_RUNTIME_DIR: dir };
    const vm = Vm.create({ interrupts: true, console: 'capture', log: () => undefined, name: `attach-${how}`, control: { dir } });
    let child: Child | undefined;
    try {
      vm.load(loadImageFile(fixtureGuest('attach-peer')));
      const ch = vm.createChannel('attach', { capacity: 4096, mode: 'hypercall', vector: VECTOR });
      const server = vm.serveControl();
      await server.ready;
      assert.equal(server.name, `attach-${how}`);
      const chunks: Buffer[] = [];
      vm.on('console', (b: Uint8Array) => chunks.push(Buffer.from(b)));
      const consoleText = () => Buffer.concat(chunks).toString();

      // The VMM's own reader, from the start: it must see nothing while the child holds the channel.
      const seenByVmm: string[] = [];
      ch.on('message', (m: Uint8Array) => seenByVmm.push(Buffer.from(m).toString()));

      const attached = deferred();
      const childGone = deferred();
      vm.handleHypercall(HC_PHASE, async (call) => {
        if (call.a0 === 1n) {
          await attached.promise;
          return N;
        }
        await childGone.promise;
        return 0;
      });
      const run = vm.run();

      child = new Child([`attach-${how}`, 'attach', String(N), how], env);
      const info = (await child.next('attached')).info;
      assert.equal(info.name, 'attach');
      assert.equal(info.gpa, ch.gpa);
      assert.equal(ch.state, 'suspended');
      // While attached, `kvmtalk ps --json` (another process again) shows the VM and the attachment.
      const { stdout } = await promisify(execFile)(process.execPath, [CLI, 'ps', '--json'], { env });
      const ps = JSON.parse(stdout) as { name: string; pid: number; channels: { name: string; state: string; attached: boolean }[] }[];
      assert.deepEqual(ps.map((v) => [v.name, v.pid]), [[`attach-${how}`, process.pid]]);
      assert.deepEqual(ps[0].channels.map((c) => [c.name, c.state, c.attached]), [['attach', 'attached', true]]);
      attached.resolve();

      const { messages } = await child.next('messages');
      assert.deepEqual(messages, Array.from({ length: N }, (_, i) => `guest message ${i}`));
      await child.next('sent');
      assert.equal(await child.exited, 0);
      await waitFor(() => ch.state === 'open', 5000, 'the VMM to take the channel back');
      assert.deepEqual(seenByVmm, [], 'the VMM read messages while another process held the channel');
      await waitFor(() => consoleText().includes('attach-peer: got "hello from another process"'), 10_000, 'the guest to receive the child\'s message');

      childGone.resolve();
      await waitFor(() => seenByVmm.length > 0, 10_000, 'the VMM to read again');
      assert.deepEqual(seenByVmm, ['after detach']);
      await ch.send(new TextEncoder().encode('hello from the VMM'));
      const result = await run;
      assert.deepEqual(result, { kind: 'exit', status: 0, cpu: 0 }, consoleText());
      assert.match(consoleText(), /attach-peer: got "hello from the VMM"/);
      // The guest waited for space (the ring was full) and for data: only kicks could wake it.
      const waits = /send waits (\d+), recv waits (\d+)/.exec(consoleText());
      assert.ok(waits && Number(waits[1]) > 0 && Number(waits[2]) > 0, consoleText());
    } finally {
      child?.proc.kill();
      if (vm.stats() === undefined) {
        vm.stop();
        await vm.run().catch(() => undefined);
      }
      vm.close();
    }
    // vm.close() stopped the server and removed its files.
    const { stdout } = await promisify(execFile)(process.execPath, [CLI, 'ps', '--json'], { env });
    assert.deepEqual(JSON.parse(stdout), []);
  });
}

test('attach errors are one line: unknown VM, unknown channel, a channel someone else holds', async (t) => {
  if (!requireKvm(t)) return;
  const dir = runtimeDir(t);
  const env = { ...process.env, KVMTALK_RUNTIME_DIR: dir };
  const vm = Vm.create({ console: 'capture', log: () => undefined, name: 'errors', control: { dir } });
  try {
    vm.load(loadImageFile(fixtureGuest('attach-peer'))); // loaded, never run
    vm.createChannel('one', { capacity: 4096, mode: 'polling' });
    await vm.serveControl().ready;
    const cli = async (...args: string[]) => {
      try {
        await promisify(execFile)(process.execPath, [CLI, ...args], { env });
        return '';
      } catch (e) {
        return (e as { stderr: string }).stderr;
      }
    };
    assert.equal(await cli('attach', 'nope', 'one'), `kvmtalk: unknown VM 'nope' in ${dir} (running: errors)\n`);
    assert.equal(await cli('attach', 'errors', 'two'), `kvmtalk: unknown channel 'two' (channels: one)\n`);
    // Hold the channel from a child, then try again.
    const child = new Child(['errors', 'one', '1000000', 'exit'], env);
    await child.next('attached');
    assert.equal(await cli('attach', 'errors', 'one'), `kvmtalk: channel 'one' is already attached by another process\n`);
    child.proc.kill();
    await child.exited;
  } finally {
    vm.close();
  }
});
