/**
 * Channels end to end through the guest SDK (guest/sdk/src/channel.c, kvmtalk/channel.h): the
 * demo's channel value, the echo example in every mode, the chan-stream test guest in every mode
 * both ways on 1 and 2 vCPUs, a blocking kt_chan_recv woken by the host's interrupt, and the
 * guest's kt_chan_send held back by a slow host reader (backpressure).
 *
 * chan-stream's protocol (guest/tests/chan-stream.c): user hypercall 320 (a0 = vCPU) returns the
 * vCPU's configuration; vCPU i streams on "stream" (i = 0) or "stream<i>": it sends N pattern
 * messages, then receives N and checks them against the same pattern.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { ChannelMode } from '../../src/channel/channel-area.js';
import type { Channel } from '../../src/channel/channel.js';
import { statValue } from '../../src/kvm/stats.js';
import type { Vm } from '../../src/vmm/vm.js';
import { bootGuest, requireKvm } from '../helpers/kvm.js';

const BIN = fileURLToPath(new URL('../../../bin/kvmtalk.js', import.meta.url));
const MODES: ChannelMode[] = ['hypercall', 'ioeventfd', 'polling'];
const MODE_NUMBER: Record<ChannelMode, number> = { hypercall: 0, ioeventfd: 1, polling: 2 };
const HC_STREAM_CONFIG = 320;
const enc = new TextEncoder();
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- chan-stream: configuration word and message pattern (see guest/tests/chan-stream.c) ------

interface StreamConfig {
  /** Messages each way. */
  n: number;
  /** Largest message (default 1000). */
  max?: number;
  /** The guest opens the channel itself with KT_HC_CHAN_OPEN in this mode (else kt_chan_find). */
  open?: ChannelMode;
  skipSend?: boolean;
  skipRecv?: boolean;
  /** Every message is exactly `max` bytes. */
  fixed?: boolean;
  /** log2 of the ring capacity for a guest-opened channel. */
  capLog2?: number;
  /** The guest spins while waiting instead of sleeping in KT_HC_WAIT. */
  spin?: boolean;
}

function streamConfig(c: StreamConfig): bigint {
  let v = BigInt(c.n) | (BigInt(c.max ?? 0) << 32n);
  if (c.open) v |= BigInt(MODE_NUMBER[c.open] + 1) << 48n;
  if (c.skipSend) v |= 1n << 52n;
  if (c.skipRecv) v |= 1n << 53n;
  if (c.fixed) v |= 1n << 54n;
  if (c.capLog2) v |= BigInt(c.capLog2) << 56n;
  if (c.spin) v |= 1n << 61n;
  return v;
}

/** Message `i` of the pattern: length (i * 97) % (max + 1) (or max), byte j = i * 31 + j * 7 + 1. */
export function streamMessage(i: number, max = 1000, fixed = false): Uint8Array {
  const len = fixed ? max : (i * 97) % (max + 1);
  const m = new Uint8Array(len);
  for (let j = 0; j < len; j++) m[j] = (i * 31 + j * 7 + 1) & 0xff;
  return m;
}

function assertStreamMessage(msg: Uint8Array | null, i: number, max: number, what: string): void {
  assert.ok(msg, `${what}: the stream ended before message ${i}`);
  const want = streamMessage(i, max);
  assert.equal(msg.length, want.length, `${what}: length of message ${i}`);
  const at = msg.findIndex((b, j) => b !== want[j]);
  assert.equal(at, -1, `${what}: message ${i} differs at byte ${at}`);
}

/** The host end of one chan-stream vCPU: takes N messages, checks them, sends them back. */
async function serveStream(ch: Channel, n: number, max: number, opts: { readDelay?: (i: number) => number } = {}): Promise<void> {
  for (let i = 0; i < n; i++) {
    assertStreamMessage(await ch.recv(), i, max, `channel ${ch.name}`);
    const d = opts.readDelay?.(i) ?? 0;
    if (d > 0) await sleep(d);
  }
  await Promise.all(Array.from({ length: n }, (_, i) => ch.send(streamMessage(i, max))));
}

/** chan-stream's summary line for one vCPU: its counts and how often send/recv waited. */
function streamLine(console: string, cpu: number): { name: string; mode: number; sent: number; received: number; sendWaits: number; recvWaits: number } {
  const m = new RegExp(`chan-stream: cpu ${cpu} "([^"]+)" mode (\\d): sent (\\d+), received (\\d+), send waits (\\d+), recv waits (\\d+)`).exec(console);
  assert.ok(m, `no summary line for vCPU ${cpu} in:\n${console}`);
  return { name: m[1], mode: Number(m[2]), sent: Number(m[3]), received: Number(m[4]), sendWaits: Number(m[5]), recvWaits: Number(m[6]) };
}

/** Waits for the channel called `name` (created by the host, or by the guest's KT_HC_CHAN_OPEN). */
function channelNamed(vm: Vm, name: string): Promise<Channel> {
  const ch = vm.channel(name);
  if (ch) return Promise.resolve(ch);
  return new Promise((resolve) => {
    const on = (c: Channel) => {
      if (c.name !== name) return;
      vm.off('channel', on);
      resolve(c);
    };
    vm.on('channel', on);
  });
}

/** How long one step of a test may take before it fails (the VM is then stopped, not left running). */
const STEP_MS = 60_000;

/**
 * Races `p` against the VM's run and a deadline: a guest that ends early or a step that hangs
 * fails the test (bootGuest then stops the VM) instead of hanging it. After the run ends, `p`
 * still gets a moment: what the guest sent before it ended stays readable.
 */
async function orRunEnd<T>(p: Promise<T>, run: Promise<unknown>, console: () => string, ms = STEP_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let grace: NodeJS.Timeout | undefined;
  let settled = false;
  try {
    return await Promise.race([
      p,
      run.then((r) => new Promise<never>((_, reject) => {
        if (settled) return;
        grace = setTimeout(() => reject(new Error(`the VM ended first: ${JSON.stringify(r)}\n${console()}`)), 2000);
      })),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`step timed out after ${ms} ms; console so far:\n${console()}`)), ms);
      }),
    ]);
  } finally {
    settled = true;
    clearTimeout(timer);
    clearTimeout(grace);
  }
}

// ---- The demo ------------------------------------------------------------------------------------

test('kvmtalk demo: the value arrives by hypercall and through channel "demo"; exit 0', (t) => {
  if (!requireKvm(t)) return;
  const r = spawnSync(process.execPath, [BIN, 'demo'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /Hello World/);
  assert.match(r.stdout, /received value 4276993775/);
  assert.match(r.stdout, /\[host\] channel "demo": received 4276993775 \(0xfeedbeef\)/);
  assert.match(r.stdout, /sent 4276993775 through channel "demo"/);
});

test('demo guest through the API: one 8-byte little-endian message on the guest-opened channel "demo"', async (t) => {
  if (!requireKvm(t)) return;
  const got: { origin: string; msgs: Uint8Array[] } = { origin: '', msgs: [] };
  const r = await bootGuest('examples', 'demo', {}, {}, {
    setup: (vm) => {
      vm.on('channel', (ch: Channel, origin: string) => {
        got.origin = origin;
        ch.on('message', (m: Uint8Array) => got.msgs.push(m));
      });
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
  assert.equal(got.origin, 'guest');
  assert.equal(got.msgs.length, 1);
  assert.equal(Buffer.from(got.msgs[0]).readBigUInt64LE(0), 4276993775n);
  assert.deepEqual(r.events.values, [{ cpu: 0, value: 4276993775n }]);
});

// ---- The echo example ------------------------------------------------------------------------

const WORDS = ['hello', 'Mixed Case 123', '', 'x'.repeat(20_000), 'über'];
const upper = (s: string) => s.replace(/[a-z]/g, (c) => c.toUpperCase());

for (const mode of MODES) {
  test(`channel-echo (${mode}): the host sends, the guest answers in upper case, "quit" closes the channel`, async (t) => {
    if (!requireKvm(t)) return;
    let echo: Channel | undefined;
    const r = await bootGuest('examples', 'channel-echo', { interrupts: true }, {}, {
      setup: (vm) => {
        echo = vm.createChannel('echo', { mode, vector: 0x40 });
      },
      during: async (_vm, run, console) => {
        for (const w of WORDS) {
          await echo!.send(enc.encode(w));
          const reply = await orRunEnd(echo!.recv(), run, console);
          assert.ok(reply, `no reply to ${JSON.stringify(w.slice(0, 20))}`);
          // Only ASCII a-z change: the UTF-8 bytes of 'ü' pass through unchanged.
          assert.equal(dec.decode(reply), upper(w));
        }
        await echo!.send(enc.encode('quit'));
      },
    });
    assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
    assert.match(r.console, new RegExp(`serving "echo" \\(id 0, mode ${MODE_NUMBER[mode]}, vector 64\\)`));
    assert.match(r.console, new RegExp(`echoed ${WORDS.length} messages, quitting`));
    assert.equal(echo!.state, 'closed', 'the guest closed the channel on "quit"');
    assert.equal(echo!.closeInfo?.by, 'guest');
    const st = echo!.stats();
    assert.equal(st.toHost.messages, WORDS.length);
    assert.equal(st.toGuest.messages, WORDS.length + 1);
    if (mode === 'polling') assert.equal(st.notifications.fromGuest, 0, 'a polling guest never rings');
    else assert.ok(st.notifications.fromGuest >= 1, `${mode}: the guest rang the host (${JSON.stringify(st.notifications)})`);
  });
}

test('channel-echo without a host-created channel: the guest opens "echo", the host gets a channel event; no interrupts (the guest spins)', async (t) => {
  if (!requireKvm(t)) return;
  let origin = '';
  const r = await bootGuest('examples', 'channel-echo', {}, {}, {
    during: async (vm, run, console) => {
      const echo = await orRunEnd(channelNamed(vm, 'echo'), run, console);
      origin = 'guest';
      assert.equal(echo.mode, 'hypercall');
      assert.equal(echo.vector, 0);
      await echo.send(enc.encode('ping'));
      const reply = await orRunEnd(echo.recv(), run, console);
      assert.equal(dec.decode(reply!), 'PING');
      await echo.send(enc.encode('quit'));
    },
  });
  assert.equal(origin, 'guest');
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
  assert.match(r.console, /serving "echo" \(id 0, mode 0, vector 0\)/);
});

// ---- chan-stream: every mode, both directions, 1 and 2 vCPUs ---------------------------------------

const STREAM_N = 300;
const STREAM_MAX = 1000;

for (const mode of MODES) {
  for (const vcpus of [1, 2]) {
    const how = vcpus === 1 ? 'host-created "stream" (kt_chan_find)' : '"stream" found on vCPU 0, "stream1" opened by vCPU 1 (kt_chan_open)';
    test(`chan-stream (${mode}, ${vcpus} vCPU${vcpus > 1 ? 's' : ''}): ${STREAM_N} messages each way, 4 KiB rings; ${how}`, async (t) => {
      if (!requireKvm(t)) return;
      const channels: Channel[] = [];
      const r = await bootGuest('tests', 'chan-stream', { vcpus, interrupts: true }, {}, {
        setup: (vm) => {
          channels.push(vm.createChannel('stream', { mode, capacity: 4096, cpu: 0 }));
          vm.handleHypercall(HC_STREAM_CONFIG, (c) => {
            if (c.a0 === 0n) return streamConfig({ n: STREAM_N, max: STREAM_MAX });
            if (c.a0 === 1n) return streamConfig({ n: STREAM_N, max: STREAM_MAX, open: mode, capLog2: 12 });
            return 0;
          });
        },
        during: async (vm, run, console) => {
          const serving = [serveStream(channels[0], STREAM_N, STREAM_MAX)];
          if (vcpus === 2) {
            const ch1 = await orRunEnd(channelNamed(vm, 'stream1'), run, console);
            assert.equal(ch1.cpu, 1, 'interrupts of a guest-opened channel go to the vCPU that opened it');
            assert.equal(ch1.mode, mode);
            channels.push(ch1);
            serving.push(serveStream(ch1, STREAM_N, STREAM_MAX));
          }
          await orRunEnd(Promise.all(serving), run, console);
        },
      });
      assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
      for (let cpu = 0; cpu < vcpus; cpu++) {
        const line = streamLine(r.console, cpu);
        assert.equal(line.name, cpu === 0 ? 'stream' : `stream${cpu}`);
        assert.equal(line.mode, MODE_NUMBER[mode]);
        assert.equal(line.sent, STREAM_N);
        assert.equal(line.received, STREAM_N);
        const st = channels[cpu].stats();
        assert.equal(st.toHost.messages, STREAM_N);
        assert.equal(st.toGuest.messages, STREAM_N);
        assert.equal(st.faults, 0);
      }
    });
  }
}

// ---- Interrupts and backpressure -------------------------------------------------------------------

test('a blocking kt_chan_recv sleeps in KT_HC_WAIT and is woken by the channel\'s interrupt', async (t) => {
  if (!requireKvm(t)) return;
  let echo: Channel | undefined;
  const r = await bootGuest('examples', 'channel-echo', { interrupts: true }, {}, {
    setup: (vm) => {
      echo = vm.createChannel('echo', { mode: 'hypercall', vector: 0x50 });
    },
    during: async (vm, run, console) => {
      await orRunEnd(waitUntil(() => /serving "echo"/.test(console()), 10_000, 'the guest to open "echo"'), run, console);
      // Give the guest time to find the ring empty, set want_data and sleep.
      await waitUntil(() => readWantData(vm, echo!) === 1, 10_000, 'the guest to set want_data');
      await sleep(100);
      const before = echo!.stats().notifications.toGuest;
      await echo!.send(enc.encode('wake up'));
      assert.equal(echo!.stats().notifications.toGuest, before + 1, 'the host raised the channel\'s interrupt');
      assert.equal(dec.decode((await orRunEnd(echo!.recv(), run, console))!), 'WAKE UP');
      await echo!.send(enc.encode('quit'));
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
  const vcpu = r.stats!.kvm!.vcpus[0];
  assert.ok(statValue(vcpu, 'halt_wakeup') >= 1n, `the vCPU slept in KVM: halt_wakeup = ${statValue(vcpu, 'halt_wakeup')}`);
});

for (const [mode, interrupts] of [['hypercall', true], ['ioeventfd', true], ['polling', false]] as const) {
  test(`backpressure (${mode}${interrupts ? ', guest sleeps' : ', guest spins'}): a slow host reader holds back kt_chan_send; every message arrives in order`, async (t) => {
    if (!requireKvm(t)) return;
    const n = 400;
    let ch: Channel | undefined;
    const r = await bootGuest('tests', 'chan-stream', { interrupts }, {}, {
      setup: (vm) => {
        ch = vm.createChannel('stream', { mode, capacity: 4096, vector: interrupts ? 0x60 : 0 });
        vm.handleHypercall(HC_STREAM_CONFIG, (c) => (c.a0 === 0n ? streamConfig({ n, max: STREAM_MAX, skipRecv: true }) : 0));
      },
      during: async (_vm, run, console) => {
        // 4 KiB ring, ~500-byte messages: the guest can be at most ~8 messages ahead.
        for (let i = 0; i < n; i++) {
          assertStreamMessage(await orRunEnd(ch!.recv(), run, console), i, STREAM_MAX, 'stream');
          if (i % 25 === 0) await sleep(20);
        }
      },
    });
    assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
    const line = streamLine(r.console, 0);
    assert.equal(line.sent, n);
    assert.ok(line.sendWaits > 0, `the guest's send waited for space (${line.sendWaits})`);
    const st = ch!.stats();
    assert.equal(st.toHost.messages, n);
    if (interrupts) assert.ok(st.notifications.toGuest > 0, `the host woke the guest after making room (${JSON.stringify(st.notifications)})`);
  });
}

// ---- The guest does not trust the host either ----------------------------------------------------------

test('a corrupt frame in the host→guest ring: kt_chan_recv returns -KT_EPROTO and the guest closes the ring (no crash)', async (t) => {
  if (!requireKvm(t)) return;
  let ring = 0;
  let closeWord = 0;
  const r = await bootGuest('tests', 'chan-stream', {}, {}, {
    setup: (vm) => {
      const ch = vm.createChannel('stream', { capacity: 4096 });
      vm.handleHypercall(HC_STREAM_CONFIG, (c) => (c.a0 === 0n ? streamConfig({ n: 1, skipSend: true }) : 0));
      // Behind the host's back: one frame whose reserved word is not 0, published with prod = 16.
      ring = ch.gpa + ch.layout.toGuest.offset;
      vm.memory.writeU32(ring + 0x180, 4);
      vm.memory.writeU32(ring + 0x184, 0xdead);
      vm.memory.writeU32(ring + 0x80, 16);
    },
    during: async (vm, run) => {
      await run;
      closeWord = vm.memory.readU32(ring + 0x18);
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 4, cpu: 0 }, r.console);
  assert.match(r.console, /recv 0 failed: error -71\n/);
  // The close word: closed by the guest (2 << 8), fault bad-frame-header (8).
  assert.equal(closeWord, 0x208);
});

test('a corrupt directory entry: kt_chan_find returns -KT_EPROTO; a missing channel -KT_ENOENT', async (t) => {
  if (!requireKvm(t)) return;
  const bad = await bootGuest('tests', 'chan-stream', {}, {}, {
    setup: (vm) => {
      const ch = vm.createChannel('stream');
      vm.handleHypercall(HC_STREAM_CONFIG, (c) => (c.a0 === 0n ? streamConfig({ n: 1 }) : 0));
      vm.memory.writeU16(0x200000 + 64 + 64 * ch.id + 24, 0x999); // the doorbell port must be 0x100 + id
    },
  });
  assert.deepEqual(bad.result, { kind: 'exit', status: 2, cpu: 0 }, bad.console);
  assert.match(bad.console, /find "stream" failed: error -71\n/);
  const missing = await bootGuest('tests', 'chan-stream', {}, {}, {
    setup: (vm) => vm.handleHypercall(HC_STREAM_CONFIG, (c) => (c.a0 === 0n ? streamConfig({ n: 1 }) : 0)),
  });
  assert.deepEqual(missing.result, { kind: 'exit', status: 2, cpu: 0 }, missing.console);
  assert.match(missing.console, /find "stream" failed: error -2\n/);
});

for (const interrupts of [false, true]) {
  test(`the host closes the channel while the guest blocks in kt_chan_recv (${interrupts ? 'sleeping in KT_HC_WAIT' : 'spinning'}): recv returns -KT_EPIPE`, async (t) => {
    if (!requireKvm(t)) return;
    let echo: Channel | undefined;
    const r = await bootGuest('examples', 'channel-echo', { interrupts }, {}, {
      setup: (vm) => {
        echo = vm.createChannel('echo');
      },
      during: async (vm, run, console) => {
        await echo!.send(enc.encode('hi'));
        assert.equal(dec.decode((await orRunEnd(echo!.recv(), run, console))!), 'HI');
        await waitUntil(() => readWantData(vm, echo!) === 1, 10_000, 'the guest to wait for data');
        await sleep(50);
        echo!.close();
        await orRunEnd(run, new Promise(() => {}), console, 10_000);
      },
    });
    assert.deepEqual(r.result, { kind: 'exit', status: 2, cpu: 0 }, r.console);
    assert.match(r.console, /recv failed: error -32\n/);
  });
}

// ---- helpers ---------------------------------------------------------------------------------------

async function waitUntil(pred: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** The guest's want_data flag in the host→guest ring of `ch` (the guest, as consumer, writes it). */
function readWantData(vm: Vm, ch: Channel): number {
  return vm.memory.readU32(ch.gpa + ch.layout.toGuest.offset + 0x104);
}
