/**
 * The host side of channels (src/channel/channel.ts, channel-area.ts, notifier.ts and the VMM
 * integration) against test/fixtures/guests/chan-host.c, a guest written with the ring API and
 * raw hypercalls only: every notification mode in both directions, interrupts, backpressure,
 * a corrupting guest, the guest closing, suspend/resume, and "ioeventfd mode costs no exits".
 * Each test prints its throughput (rough: these are shared 2-core machines).
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { CHANNEL_AREA_BASE, decodeDirectory, DIRECTORY_SIZE, type ChannelMode } from '../../src/channel/channel-area.js';
import { ChannelClosedError, type Channel, type ChannelCloseInfo } from '../../src/channel/channel.js';
import { Ring, RingCorruptedError } from '../../src/channel/ring.js';
import { EXIT } from '../../src/kvm/exit-reasons.js';
import type { Vm } from '../../src/vmm/vm.js';
import { bootGuest, requireKvm, type BootResult } from '../helpers/kvm.js';

const MODES: ChannelMode[] = ['hypercall', 'ioeventfd', 'polling'];
const MODE_NUM: Record<ChannelMode, number> = { hypercall: 0, ioeventfd: 1, polling: 2 };
const KIND = { send: 1, recv: 2, corrupt: 3, sendClose: 4 } as const;
const F_ALWAYS_RING = 1;
const F_SPIN = 2;

interface Params {
  kind: number;
  mode: ChannelMode;
  capacity?: number;
  n?: number;
  flags?: number;
  maxMsg?: number;
}

// ---- The message generator of chan-host.c ------------------------------------------------------

function msgLen(i: number, max: number): number {
  const x = Math.imul(i, 2654435761) >>> 0;
  switch (i % 5) {
    case 0: return 0;
    case 1: return max;
    case 2: return 1 + ((x >>> 8) % 8);
    default: return (x >>> 4) % (max + 1);
  }
}

function makeMsg(i: number, max: number): Uint8Array {
  const m = new Uint8Array(msgLen(i, max));
  for (let j = 0; j < m.length; j++) m[j] = (i * 31 + j * 7 + (j >>> 8)) & 0xff;
  return m;
}

function checkMsg(i: number, max: number, got: Uint8Array): void {
  const want = makeMsg(i, max);
  if (got.length !== want.length || !Buffer.from(got).equals(want)) {
    assert.fail(`message ${i}: ${got.length} bytes, expected ${want.length}${got.length === want.length ? ' (contents differ)' : ''}`);
  }
}

/** Boots chan-host with `p`; `setup` sees the VM after load(), `during` while it runs. */
function boot(p: Params, extras: { setup?: (vm: Vm) => void; during?: (vm: Vm) => Promise<void> } = {}, vmOpts = { interrupts: true }): Promise<BootResult> {
  const params = [p.kind, MODE_NUM[p.mode], p.capacity ?? 0, p.n ?? 0, p.flags ?? 0, p.maxMsg ?? 0];
  return bootGuest('fixtures', 'chan-host', vmOpts, {}, {
    setup: (vm) => {
      vm.handleHypercall(256, (c) => params[Number(c.a0)] ?? 0);
      extras.setup?.(vm);
    },
    during: extras.during,
  });
}

/** Consumes `n` messages with `for await` as soon as the guest opens its channel; resolves with the channel. */
function consumeFromGuest(vm: Vm, n: number, maxMsg: () => number): Promise<{ ch: Channel; ms: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    vm.once('channel', (ch: Channel) => {
      void (async () => {
        const t0 = performance.now();
        let i = 0;
        let bytes = 0;
        for await (const msg of ch) {
          checkMsg(i++, maxMsg(), msg);
          bytes += msg.length;
          if (i === n) break;
        }
        resolve({ ch, ms: performance.now() - t0, bytes });
      })().catch(reject);
    });
  });
}

function rate(t: TestContext, what: string, n: number, bytes: number, ms: number): void {
  const line = `${what}: ${n} messages, ${(bytes / 1024).toFixed(0)} KiB in ${ms.toFixed(1)} ms = ${Math.round(n / (ms / 1000))} msg/s, ${(bytes / 1024 / 1024 / (ms / 1000)).toFixed(1)} MiB/s`;
  t.diagnostic(line);
  console.log(`# ${line}`);
}

function assertExit(r: BootResult, console: RegExp): void {
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, `guest said: ${r.console}`);
  assert.match(r.console, console);
}

// ---- Guest → host, every mode ------------------------------------------------------------------------

for (const mode of MODES) {
  test(`${mode} mode: guest→host, many messages of varying sizes, in order`, async (t) => {
    if (!requireKvm(t)) return;
    const n = 4000;
    let got: Awaited<ReturnType<typeof consumeFromGuest>> | undefined;
    const r = await boot({ kind: KIND.send, mode, capacity: 16384, n, maxMsg: 2000 }, {
      during: async (vm) => {
        got = await consumeFromGuest(vm, n, () => 2000);
      },
    });
    assertExit(r, new RegExp(`sent ${n} messages \\(up to 2000 bytes\\) in mode ${MODE_NUM[mode]}`));
    const s = got!.ch.stats();
    assert.equal(s.toHost.messages, n);
    assert.equal(s.toHost.bytes, got!.bytes);
    assert.equal(s.faults, 0);
    if (mode === 'polling') assert.equal(s.notifications.fromGuest, 0, 'a polling guest never notifies');
    else assert.ok(s.notifications.fromGuest > 0, 'the host waited, so the guest notified');
    rate(t, `guest→host ${mode}`, n, got!.bytes, got!.ms);
  });
}

// ---- Host → guest with interrupts, every mode --------------------------------------------------

for (const mode of MODES) {
  test(`${mode} mode: host→guest, the guest sleeps in KT_HC_WAIT and wakes on the channel interrupt`, async (t) => {
    if (!requireKvm(t)) return;
    const n = 2000;
    let ch: Channel | undefined;
    let ms = 0;
    let bytes = 0;
    const r = await boot({ kind: KIND.recv, mode, capacity: 16384, n }, {
      setup: (vm) => vm.once('channel', (c: Channel) => (ch = c)),
      during: async (vm) => {
        while (!ch) await new Promise((res) => setTimeout(res, 1));
        assert.equal(vm.channel('t'), ch);
        const t0 = performance.now();
        for (let i = 0; i < n; i++) {
          const m = makeMsg(i, ch.maxMessageSize);
          bytes += m.length;
          await ch.send(m);
        }
        ms = performance.now() - t0;
      },
    });
    assertExit(r, new RegExp(`received ${n} messages in mode ${MODE_NUM[mode]}`));
    const s = ch!.stats();
    assert.equal(s.toGuest.messages, n);
    if (mode !== 'polling') assert.ok(s.notifications.toGuest > 0, 'the guest waited for data, so the host raised its interrupt');
    rate(t, `host→guest ${mode}`, n, bytes, ms);
  });
}

// ---- Backpressure --------------------------------------------------------------------------------

test('backpressure: a 256-byte host-created ring, the host sends far more than fits; all arrive in order', async (t) => {
  if (!requireKvm(t)) return;
  const n = 1500;
  let ch: Channel | undefined;
  const r = await boot({ kind: KIND.recv, mode: 'hypercall', n }, {
    setup: (vm) => {
      ch = vm.createChannel('t', { capacity: 256 });
      assert.equal(ch.maxMessageSize, 120);
    },
    during: async () => {
      // Every send is issued at once: all but the first few wait in the channel's queue.
      const sends: Promise<void>[] = [];
      for (let i = 0; i < n; i++) sends.push(ch!.send(makeMsg(i, 120)));
      assert.ok(ch!.stats().pending.sends > 0, 'sends are queued behind the full ring');
      await Promise.all(sends);
    },
  });
  assertExit(r, new RegExp(`received ${n} messages in mode 0`));
  const s = ch!.stats();
  assert.equal(s.toGuest.messages, n);
  assert.ok(s.waits.send > 0, 'the host had to wait for space');
  assert.ok(s.notifications.fromGuest > 0, 'the guest rang back after making room');
  t.diagnostic(`backpressure: ${s.waits.send} waits for space, ${s.notifications.fromGuest} guest notifications, ${s.notifications.toGuest} interrupts`);
});

test('backpressure guest→host: the host reads slowly, the guest sleeps on a full ring and is woken', async (t) => {
  if (!requireKvm(t)) return;
  const n = 300;
  let ch: Channel | undefined;
  const r = await boot({ kind: KIND.send, mode: 'ioeventfd', capacity: 4096, n, maxMsg: 1000 }, {
    setup: (vm) => vm.once('channel', (c: Channel) => (ch = c)),
    during: async () => {
      while (!ch) await new Promise((res) => setTimeout(res, 1));
      let i = 0;
      for await (const msg of ch) {
        checkMsg(i++, 1000, msg);
        if (i % 50 === 0) await new Promise((res) => setTimeout(res, 5)); // the ring fills meanwhile
        if (i === n) break;
      }
    },
  });
  assertExit(r, /sent 300 messages/);
  assert.ok(ch!.stats().notifications.toGuest > 0, 'the host woke the guest after making room');
});

// ---- Corruption, closing, suspend ---------------------------------------------------------------

test('a guest that writes a huge frame length: channel closed with the reason, the VM runs on and exits normally', async (t) => {
  if (!requireKvm(t)) return;
  let ch: Channel | undefined;
  let info: ChannelCloseInfo | undefined;
  let errorEvent: Error | undefined;
  const received: string[] = [];
  let iteratorError: unknown;
  let directoryState: string | undefined;
  const r = await boot({ kind: KIND.corrupt, mode: 'hypercall', flags: F_ALWAYS_RING }, {
    setup: (vm) => vm.once('channel', (c: Channel) => {
      ch = c;
      c.on('closed', (i: ChannelCloseInfo) => (info = i));
      c.on('error', (e: Error) => (errorEvent = e));
    }),
    during: async (vm) => {
      while (!ch) await new Promise((res) => setTimeout(res, 1));
      try {
        for await (const msg of ch) received.push(Buffer.from(msg).toString());
      } catch (e) {
        iteratorError = e;
      }
      directoryState = decodeDirectory(vm.memory.read(CHANNEL_AREA_BASE, DIRECTORY_SIZE)).entries[ch.id].state;
    },
  });
  assertExit(r, /close word 0x105, write after close -32/);
  assert.deepEqual(received, ['hello']);
  assert.ok(iteratorError instanceof RingCorruptedError && iteratorError.fault === 'bad-length', `iterator ended with ${String(iteratorError)}`);
  assert.equal(info?.fault, 'bad-length');
  assert.equal(info?.by, 'host');
  assert.match(info!.reason, /corrupted the ring: bad-length/);
  assert.equal(errorEvent, iteratorError);
  assert.equal(ch!.state, 'closed');
  assert.equal(ch!.stats().faults, 1);
  assert.equal(directoryState, 'closed');
  await assert.rejects(ch!.send(new Uint8Array(1)), RingCorruptedError);
  assert.throws(() => ch!.tryRecv(), RingCorruptedError);
});

test('KT_HC_CHAN_CLOSE: the host still gets every message sent before it, then the stream ends', async (t) => {
  if (!requireKvm(t)) return;
  const n = 50;
  let ch: Channel | undefined;
  let closed: Promise<ChannelCloseInfo> | undefined;
  const r = await boot({ kind: KIND.sendClose, mode: 'polling', capacity: 4096, n, maxMsg: 32 }, {
    setup: (vm) => vm.once('channel', (c: Channel) => {
      ch = c;
      closed = new Promise((res) => c.once('closed', res));
    }),
  });
  assertExit(r, /closed \(0\), write after close -32/);
  const info = await closed!;
  assert.equal(info.by, 'guest');
  assert.equal(info.error, undefined);
  let i = 0;
  for await (const msg of ch!) checkMsg(i++, 32, msg);
  assert.equal(i, n);
  await assert.rejects(ch!.send(new Uint8Array(1)), ChannelClosedError);
});

test('suspend/resume: while suspended another reader takes messages; after resume the host continues in order', async (t) => {
  if (!requireKvm(t)) return;
  const n = 400;
  let ch: Channel | undefined;
  const seen: number[] = [];
  const r = await boot({ kind: KIND.send, mode: 'hypercall', capacity: 4096, n, maxMsg: 64, flags: F_SPIN }, {
    setup: (vm) => vm.once('channel', (c: Channel) => {
      ch = c;
      c.suspend(); // before the guest gets the id back: the host never touches the rings
    }),
    during: async (vm) => {
      while (!ch) await new Promise((res) => setTimeout(res, 1));
      assert.equal(ch.state, 'suspended');
      const pulled = ch.recv(); // waits across the suspension
      // The "other process": its own ring end over the same guest memory.
      const p = ch.layout.toHost;
      const other = Ring.attach(vm.memory.slice(ch.gpa + p.offset, p.size));
      for (let i = 0; i < 150;) {
        const m = other.tryRead();
        if (!m) {
          await new Promise((res) => setImmediate(res));
          continue;
        }
        checkMsg(i++, 64, m);
      }
      assert.equal(ch.stats().toHost.messages, 0, 'the host consumed nothing while suspended');
      ch.resume();
      const first = await pulled;
      checkMsg(150, 64, first!);
      seen.push(150);
      for (let i = 151; i < n; i++) {
        const m = await ch.recv();
        checkMsg(i, 64, m!);
        seen.push(i);
      }
    },
  });
  assertExit(r, /sent 400 messages/);
  assert.equal(seen.length, n - 150);
});

// ---- ioeventfd: no exits per message -----------------------------------------------------------

test('ioeventfd mode: a doorbell after every message costs no userspace exit', async (t) => {
  if (!requireKvm(t)) return;
  const n = 3000;
  let got: Awaited<ReturnType<typeof consumeFromGuest>> | undefined;
  let ioeventfd = false;
  const r = await boot({ kind: KIND.send, mode: 'ioeventfd', capacity: 65536, n, maxMsg: 256, flags: F_ALWAYS_RING }, {
    setup: (vm) => (ioeventfd = vm.ioeventfdDoorbells),
    during: async (vm) => {
      got = await consumeFromGuest(vm, n, () => 256);
    },
  });
  if (!ioeventfd) return t.skip('this KVM lacks KVM_CAP_IOEVENTFD (doorbells then exit like KT_HC_CHAN_NOTIFY)');
  assertExit(r, /sent 3000 messages/);
  const s = got!.ch.stats();
  const ioExits = r.stats!.exits[EXIT.IO];
  t.diagnostic(`${s.notifications.fromGuest} doorbells, ${s.notifications.delivered} delivered, ${ioExits} port-I/O exits in the whole run`);
  assert.equal(s.notifications.fromGuest, n, 'the eventfd counted every doorbell write');
  // The run's other port exits: 6 parameter hypercalls, KT_HC_CHAN_OPEN, console output, kt_exit.
  assert.ok(ioExits < 30, `${ioExits} port-I/O exits for ${n} doorbells`);
  rate(t, 'guest→host ioeventfd, doorbell per message', n, got!.bytes, got!.ms);
});

// ---- Host API details ------------------------------------------------------------------------------

test('createChannel: guest finds it by name, options are checked, push-style message events, drain()', async (t) => {
  if (!requireKvm(t)) return;
  const n = 2000;
  let ch: Channel | undefined;
  const events: [Channel, string][] = [];
  let count = 0;
  let drained = 0;
  const r = await boot({ kind: KIND.send, mode: 'hypercall', n, maxMsg: 100 }, {
    setup: (vm) => {
      vm.on('channel', (c: Channel, origin: string) => events.push([c, origin]));
      assert.throws(() => vm.createChannel('bad\n'), RangeError);
      assert.throws(() => vm.createChannel('x', { capacity: 3000 }), RangeError);
      assert.throws(() => vm.createChannel('x', { vector: 0x10 }), RangeError);
      assert.throws(() => vm.createChannel('x', { mode: 'carrier-pigeon' as ChannelMode }), RangeError);
      ch = vm.createChannel('t', { capacity: 8192, mode: 'ioeventfd' });
      assert.throws(() => vm.createChannel('t'), /already open/);
      assert.deepEqual(vm.channelDirectory().map((e) => [e.id, e.name, e.state, e.mode, e.port, e.vector]), [[0, 't', 'open', 'ioeventfd', 0x100, 0x30]]);
      assert.ok(vm.memoryFd() >= 0);
      // Push style for the first half, then drain() for the rest.
      const onMessage = (m: Uint8Array) => {
        checkMsg(count++, 100, m);
        if (count === n / 2) ch!.off('message', onMessage);
      };
      ch.on('message', onMessage);
      assert.throws(() => ch!.tryRecv(), /'message' listeners/);
    },
    during: async () => {
      while (count < n / 2) await new Promise((res) => setTimeout(res, 1));
      while (count < n && (await ch!.readable())) {
        drained += ch!.drain((m) => checkMsg(count++, 100, m));
      }
    },
  });
  assertExit(r, /sent 2000 messages .* in mode 1/);
  assert.equal(count, n);
  assert.ok(drained > 0);
  assert.deepEqual(events.map(([c, o]) => [c.name, o]), [['t', 'host']], 'the guest got the existing channel: no new one');
});
