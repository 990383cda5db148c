/**
 * The upcall device wired into real VMs (docs/upcall-device.md): programs delivered through
 * vm.upcall and through the host endpoint (Unix socket and TCP with a token), the guest driver
 * (guest/sdk/src/upcall.c) answering them, the host-side timeout, AFFINITY pinning real vCPU
 * threads, and a guest hammering the register page with random accesses.
 * The guest is guest/tests/upcall-driver.c.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { fnv1a32 } from '../../src/bpf/guest-maps.js';
import { cpusAllowed, schedGetaffinity } from '../../src/kvm/sys.js';
import { UpcallClient } from '../../src/upcall/client.js';
import { UpcallTimeoutError, type AffinityEvent, type LoadStatus } from '../../src/upcall/upcall-host.js';
import { Vm, type VmOptions } from '../../src/vmm/vm.js';
import { bootGuest, requireKvm, waitFor } from '../helpers/kvm.js';

const MODE = { SERVE: 1, NEVER_ACK: 2, AFFINITY: 3, FUZZ: 4 } as const;
/** Config bit: the guest driver reads programs through the DATA window instead of COPY. */
const WINDOW = 1 << 24;
/** Guest RAM of the fuzz test's VM, in MiB (the guest aims its hostile COPYs around its end). */
const FUZZ_RAM_MIB = 64;


interface Loaded {
  hook: number;
  len: number;
  sum: number;
}

/**
 * Answers upcall-driver.c's hypercalls: `mode`/`count` for its config, each load recorded in
 * `loads` and answered by `answer` (status, pc), unloads in `unloads`, readiness in `ready`.
 */
function driver(mode: number, count: number, answer: (l: Loaded) => { status: number; pc?: number } = () => ({ status: 0 }), flags = 0) {
  const g = { loads: [] as Loaded[], unloads: [] as number[], values: [] as bigint[], fuzz: [] as bigint[] };
  const setup = (vm: Vm) => {
    vm.handleHypercall(256, () => BigInt(mode | (count << 8) | flags) | (BigInt(FUZZ_RAM_MIB) << 32n));
    vm.handleHypercall(257, (c) => {
      const l = { hook: Number(c.a0), len: Number(c.a1), sum: Number(c.a2) };
      g.loads.push(l);
      const a = answer(l);
      return (BigInt(a.pc === undefined ? 0 : a.pc + 1) << 32n) | BigInt(a.status >>> 0);
    });
    vm.handleHypercall(258, (c) => {
      g.unloads.push(Number(c.a0));
      return -2; // -ENOENT
    });
    vm.handleHypercall(261, (c) => void g.fuzz.push(c.a0, c.a1, c.a2));
    vm.on('value', (p: { value: bigint }) => g.values.push(p.value));
  };
  return { g, setup, ready: () => waitFor(() => g.values.includes(1n), 10_000, 'the guest driver to be ready') };
}

function image(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = seed;
  for (let i = 0; i < len; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

const VM: VmOptions = { interrupts: true, upcall: true, control: false };

for (const path of ['COPY', 'window'] as const) {
  test(`vm.upcall.deliver (${path}): the guest gets the program (checksum), answers status and pc; queued commands in order`, async (t) => {
    if (!requireKvm(t)) return;
    const images = [image(5000, 1), image(8, 2), image(33_296, 3)];
    const d = driver(MODE.SERVE, 4, (l) => (l.hook === 2 ? { status: -22, pc: 17 } : { status: 0 }), path === 'window' ? WINDOW : 0);
    let results: LoadStatus[] = [];
    let counters: NonNullable<Vm['upcall']>['counters'] | undefined;
    const r = await bootGuest('tests', 'upcall-driver', VM, {}, {
      setup: d.setup,
      during: async (vm) => {
        await d.ready();
        // Queued before the guest answers the first: the host posts each after the previous ACK.
        results = await Promise.all([...images.map((img, i) => vm.upcall!.deliver(img, i + 1)), vm.upcall!.unload(9)]);
        counters = vm.upcall!.counters;
      },
    });
    assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
    assert.deepEqual(d.g.loads, images.map((img, i) => ({ hook: i + 1, len: img.length, sum: fnv1a32(img) })));
    assert.deepEqual(d.g.unloads, [9]);
    assert.deepEqual(results, [
      { status: 0, pc: null, seq: 1 },
      { status: -22, pc: 17, seq: 2 },
      { status: 0, pc: null, seq: 3 },
      { status: -2, pc: null, seq: 4 },
    ]);
    const c = counters!;
    assert.equal(c.acks, 4);
    assert.equal(c.copyErrors, 0);
    // COPY: one write per program. Window: one read per 4 bytes, and no COPY.
    const windowReads = images.reduce((n, img) => n + Math.ceil(img.length / 4), 0);
    if (path === 'COPY') {
      assert.equal(c.copies, 3);
      assert.ok(c.reads + c.writes < 100, `${c.reads} reads, ${c.writes} writes`);
    } else {
      assert.equal(c.copies, 0);
      assert.ok(c.reads >= windowReads, `${c.reads} reads, expected at least ${windowReads}`);
    }
  });
}

test('a guest that never ACKs: the command times out, and the guest sees it cancelled', async (t) => {
  if (!requireKvm(t)) return;
  const d = driver(MODE.NEVER_ACK, 0);
  const r = await bootGuest('tests', 'upcall-driver', { ...VM, upcall: { commandTimeoutMs: 300 } }, {}, {
    setup: d.setup,
    during: async (vm) => {
      await d.ready();
      const started = Date.now();
      await assert.rejects(vm.upcall!.deliver(image(64, 4), 1), UpcallTimeoutError);
      assert.ok(Date.now() - started >= 290);
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
  assert.ok(d.g.values.includes(0xcan), 'the guest saw CMD_CANCELLED with no command left');
});

test('AFFINITY pins the vCPU thread; bad and disallowed CPUs get -EINVAL, the VM goes on', async (t) => {
  if (!requireKvm(t)) return;
  const mine = schedGetaffinity(0);
  const target = mine.at(-1)!;
  const outside = [...Array(1024).keys()].find((c) => !mine.includes(c))!;
  const requests = [(0 << 16) | target, (0xffff << 16) | target, (0 << 16) | 4096 % 0x10000, (0 << 16) | outside, (5 << 16) | target];
  const results: { result: number; allowed: string }[] = [];
  const events: AffinityEvent[] = [];
  let tid = 0;
  const r = await bootGuest('tests', 'upcall-driver', { ...VM, upcall: { allowedCpus: mine } }, {}, {
    setup: (vm) => {
      vm.handleHypercall(256, () => BigInt(MODE.AFFINITY | (requests.length << 8)));
      vm.handleHypercall(259, (c) => requests[Number(c.a0)]!);
      vm.handleHypercall(260, (c) => {
        tid = vm.vcpuThreadId(0);
        results.push({ result: Number(BigInt.asIntN(64, c.a1)), allowed: cpusAllowed(tid) });
      });
      vm.upcall!.onAffinity((e) => events.push(e));
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
  assert.match(r.console, /mode 3 done/);
  assert.deepEqual(results.map((x) => x.result), [0, 0, -22, -22, -22]);
  assert.equal(results[0]!.allowed, String(target));
  assert.equal(results[1]!.allowed, String(target));
  await waitFor(() => events.length === requests.length, 2000, 'every AFFINITY event');
  assert.deepEqual(events[0], { vcpu: 0, hostCpu: target, result: 0 });
  assert.deepEqual(events[1], { vcpu: 0, hostCpu: target, result: 0 }, 'vcpu 0xffff is the writer');
  assert.equal(events[2]!.result, -22);
});

test('AFFINITY with pinning off: -EPERM and the thread keeps its CPUs', async (t) => {
  if (!requireKvm(t)) return;
  const mine = schedGetaffinity(0);
  const results: number[] = [];
  let allowed = '';
  const r = await bootGuest('tests', 'upcall-driver', { ...VM, upcall: { pinning: false } }, {}, {
    setup: (vm) => {
      vm.handleHypercall(256, () => BigInt(MODE.AFFINITY | (1 << 8)));
      vm.handleHypercall(259, () => mine[0]!);
      vm.handleHypercall(260, (c) => {
        results.push(Number(BigInt.asIntN(64, c.a1)));
        allowed = cpusAllowed(vm.vcpuThreadId(0));
      });
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
  assert.deepEqual(results, [-1]);
  assert.equal(allowed, cpusAllowed(process.pid));
});

test('endpoint: LOAD/UNLOAD through the Unix socket by VM name, TCP with the right token; a wrong token is refused', async (t) => {
  if (!requireKvm(t)) return;
  const dir = mkdtempSync(join(os.tmpdir(), 'kvmtalk-upcall-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const d = driver(MODE.SERVE, 3);
  const img = image(1000, 5);
  const r = await bootGuest('tests', 'upcall-driver', { interrupts: true, upcall: { tcp: { port: 0 } }, name: 'up1', control: { dir } }, {}, {
    setup: d.setup,
    during: async (vm) => {
      await d.ready();
      const ep = vm.upcall!.endpoint!;
      assert.equal(ep.socket, join(dir, 'up1.upcall.sock'));
      assert.equal(statSync(ep.socket).mode & 0o777, 0o600);
      await waitFor(() => vm.upcall!.endpoint?.tcp !== undefined, 2000, 'the TCP listener');
      const tcp = vm.upcall!.endpoint!.tcp!;
      assert.equal(tcp.host, '127.0.0.1');
      assert.equal(statSync(tcp.tokenPath).mode & 0o777, 0o600);

      const unix = await UpcallClient.connect({ vm: 'up1', dir });
      assert.deepEqual(unix.hello, { version: 1, deviceVersion: 1, vcpus: 1, maxProgram: 65536 });
      assert.deepEqual(await unix.load(7, img), { status: 0, pc: null, seq: 1 });
      assert.deepEqual(await unix.unload(7), { status: -2, pc: null, seq: 2 });
      await assert.rejects(unix.unload(0x1_0000_0000), RangeError);
      unix.close();

      const good = await UpcallClient.connect({ tcp: { host: tcp.host, port: tcp.port }, tokenFile: tcp.tokenPath });
      assert.deepEqual(await good.load(8, img), { status: 0, pc: null, seq: 3 });
      good.close();

      const bad = join(dir, 'bad.token');
      writeFileSync(bad, 'ab'.repeat(32));
      await assert.rejects(UpcallClient.connect({ tcp: { host: tcp.host, port: tcp.port }, tokenFile: bad }), /refused HELLO: bad token/);
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
  assert.deepEqual(d.g.loads.map((l) => [l.hook, l.sum]), [[7, fnv1a32(img)], [8, fnv1a32(img)]]);
  assert.throws(() => statSync(join(dir, 'up1.upcall.sock')), /ENOENT/, 'the socket is removed when the VM closes');
});

const CLI = fileURLToPath(new URL('../../../bin/kvmtalk.js', import.meta.url));

/** Runs the CLI without blocking this thread (the VM's main-thread hypercalls need it). */
async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [CLI, ...args]);
    return { code: 0, stdout, stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

test('kvmtalk inject and upcall unload: host verification first, then the guest\'s answer and exit code', async (t) => {
  if (!requireKvm(t)) return;
  const dir = mkdtempSync(join(os.tmpdir(), 'kvmtalk-upcall-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'ok.s'), 'r0 = 0\nexit\n');
  writeFileSync(join(dir, 'bad.s'), 'r0 = *(u32 *)(r1 + 4096)\nexit\n');
  const d = driver(MODE.SERVE, 2);
  const r = await bootGuest('tests', 'upcall-driver', { interrupts: true, upcall: true, name: 'upcli', control: { dir } }, {}, {
    setup: d.setup,
    during: async () => {
      await d.ready();
      const bad = await cli(['inject', 'upcli', join(dir, 'bad.s'), '--hook', 'timer', '--dir', dir]);
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /does not verify for hook timer: instruction 0 \(r0 = \*\(u32 \*\)\(r1 \+ 4096\)\): .*out of bounds.*\nnot sent/s);
      const ok = await cli(['inject', 'upcli', join(dir, 'ok.s'), '--hook', 'timer', '--dir', dir, '--json']);
      assert.equal(ok.code, 0, ok.stderr);
      assert.deepEqual(JSON.parse(ok.stdout), { ok: true, status: 0, pc: null, seq: 1 });
      const un = await cli(['upcall', 'unload', 'upcli', '--hook', '3', '--dir', dir]);
      assert.equal(un.code, 1);
      assert.match(un.stdout, /unload of hook timer: the guest refused it: ENOENT \(-2\)/);
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
  assert.equal(d.g.loads.length, 1, 'the program the host verifier refused never reached the guest');
  assert.equal(d.g.loads[0]!.hook, 3);
  assert.equal(d.g.loads[0]!.len, 32);
  assert.deepEqual(d.g.unloads, [3]);
});

for (const path of ['COPY', 'window'] as const) {
  test(`fuzz (${path}): random accesses all over the page and hostile COPYs while a command is pending; the VM survives and the device still works`, async (t) => {
    if (!requireKvm(t)) return;
    const mine = schedGetaffinity(0);
    const d = driver(MODE.FUZZ, 4, undefined, path === 'window' ? WINDOW : 0);
    const img = image(3000, 6);
    let result: LoadStatus | undefined;
    let counters: NonNullable<Vm['upcall']>['counters'] | undefined;
    const r = await bootGuest('tests', 'upcall-driver', { ...VM, memory: FUZZ_RAM_MIB * 2 ** 20, upcall: { allowedCpus: [mine[0]!] } }, {}, {
      setup: d.setup,
      during: async (vm) => {
        await d.ready();
        result = await vm.upcall!.deliver(img, 3);
        counters = vm.upcall!.counters;
      },
    });
    assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
    assert.deepEqual(result, { status: 0, pc: null, seq: 1 });
    assert.deepEqual(d.g.loads, [{ hook: 3, len: 3000, sum: fnv1a32(img) }]);
    // The guest's own account of its hostile COPYs: some copied (into its scratch buffer, the
    // right bytes), every refusal was the errno it expected.
    const [copies, surprises, scratchSum] = d.g.fuzz;
    assert.equal(surprises, 0n, r.console);
    assert.ok(copies! > 0n, `copies ${copies}`);
    assert.equal(scratchSum, BigInt(fnv1a32(img)));
    const c = counters!;
    assert.ok(c.reads + c.writes >= 4000, `accesses ${c.reads + c.writes}`);
    assert.ok(c.badSize > 300 && c.badOffset > 0 && c.readOnlyWrites > 0 && c.staleAcks > 0 && c.affinityRequests > 0, JSON.stringify(c));
    assert.ok(c.copyErrors > 50, JSON.stringify(c));
    // Serving the command afterwards: one more COPY, or none through the window.
    assert.equal(c.copies, Number(copies) + (path === 'COPY' ? 1 : 0));
  });
}

test('upcall options are checked: interrupts required, RAM below the device page', (t) => {
  if (!requireKvm(t)) return;
  {
    assert.throws(() => Vm.create({ upcall: true }), /upcall needs interrupts: true/);
    assert.throws(() => Vm.create({ upcall: true, interrupts: true, memory: 0xfe000000 + 0x200000 }), /at most 0xfe000000/);
    const vm = Vm.create({ interrupts: true, upcall: true, control: false });
    try {
      assert.equal(vm.upcall!.mapDirectory(), 0n);
    } finally {
      vm.close();
    }
    const plain = Vm.create({});
    try {
      assert.equal(plain.upcall, undefined);
    } finally {
      plain.close();
    }
  }
});
