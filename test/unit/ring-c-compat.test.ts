/**
 * The guest SDK's ring code (guest/sdk/src/ring.c, compiled for the host) against the
 * TypeScript host end, over guest RAM: a memfd that the C program maps through
 * /proc/<pid>/fd/N, exactly as another process would map a VM's memory.
 *
 * - layout: every constant and offset of ring.h equals channel-layout.ts;
 * - duplex: a channel formatted by TypeScript, both directions at once, concurrently;
 * - produce: a ring formatted by C (kt_ring_init) and read by TypeScript;
 * - drain: corruption injected by TypeScript is caught by C, which closes the ring;
 * - fuzz: random garbage against C's ring under ASan/UBSan (no out-of-bounds access).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  CHANNEL_HEADER_SIZE, CHANNEL_MAGIC, CHANNEL_OFF, CHANNEL_VERSION, CLOSED_BY_GUEST, CLOSED_BY_HOST, FRAME_HEADER_SIZE, FRAME_WRAP,
  RING_FAULT, RING_HEADER_SIZE, RING_MAGIC, RING_MAX_CAPACITY, RING_MIN_CAPACITY, RING_OFF, RING_VERSION, channelLayout, frameSize,
  maxMessageFor, writeChannelHeader,
} from '../../src/channel/channel-layout.js';
import { Ring, RingCorruptedError } from '../../src/channel/ring.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { FNV_BASIS, Stream, fnv } from '../helpers/ring.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const FIXTURE = path.join(ROOT, 'test/fixtures/ring-c-test.c');
const RING_C = path.join(ROOT, 'guest/sdk/src/ring.c');
const INCLUDE = path.join(ROOT, 'guest/sdk/include');

let dir: string;
let exe: string;
/** The same program with ASan + UBSan, or undefined when this gcc cannot link them. */
let exeSanitized: string | undefined;

function gcc(out: string, extra: string[]): void {
  try {
    execFileSync('gcc', ['-std=gnu11', '-O2', '-g', '-Wall', '-Wextra', '-Werror', '-I', INCLUDE, ...extra, FIXTURE, RING_C, '-o', out], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === 'ENOENT') throw new Error('gcc not found: kvmtalk needs gcc (apt-get install gcc)');
    throw new Error(`gcc failed on ${FIXTURE}:\n${err.stderr?.toString() ?? err.message}`);
  }
}

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'kvmtalk-ring-'));
  exe = path.join(dir, 'ring-c-test');
  gcc(exe, []);
  try {
    const san = path.join(dir, 'ring-c-test-san');
    gcc(san, ['-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer']);
    exeSanitized = san;
  } catch {
    exeSanitized = undefined; // no libasan here: the fuzz runs unsanitized (still checks return codes)
  }
});

after(() => rmSync(dir, { recursive: true, force: true }));

function run(args: (string | number)[], bin = exe): string {
  return execFileSync(bin, args.map(String), { encoding: 'utf8' });
}

/** Path another process can open to map this process's guest RAM. */
function memPath(mem: GuestMemory): string {
  return `/proc/${process.pid}/fd/${mem.regions[0].fd}`;
}

test('ring.h and channel-layout.ts agree on every constant and offset', () => {
  const facts = new Map(run(['layout']).trim().split('\n').map((l) => {
    const [k, v] = l.split(' ');
    return [k, Number(v)] as const;
  }));
  const expected = new Map<string, number>([
    ['RING_MAGIC', RING_MAGIC], ['RING_VERSION', RING_VERSION], ['RING_HEADER_SIZE', RING_HEADER_SIZE],
    ['RING_MIN_CAPACITY', RING_MIN_CAPACITY], ['RING_MAX_CAPACITY', RING_MAX_CAPACITY],
    ['FRAME_HEADER_SIZE', FRAME_HEADER_SIZE], ['FRAME_WRAP', FRAME_WRAP],
    ['CLOSED_BY_HOST', CLOSED_BY_HOST], ['CLOSED_BY_GUEST', CLOSED_BY_GUEST],
    ['CHANNEL_MAGIC', CHANNEL_MAGIC], ['CHANNEL_VERSION', CHANNEL_VERSION], ['CHANNEL_HEADER_SIZE', CHANNEL_HEADER_SIZE],
    ['maxmsg.4096', maxMessageFor(4096)],
    ['frame.0', frameSize(0)], ['frame.1', frameSize(1)], ['frame.8', frameSize(8)], ['frame.9', frameSize(9)],
    ...Object.entries(RING_OFF).map(([k, v]) => [`off.${k}`, v] as [string, number]),
    ...Object.entries(RING_FAULT).map(([k, v]) => [`fault.${k}`, v] as [string, number]),
    ...Object.entries(CHANNEL_OFF).map(([k, v]) => [`chan.${k}`, v] as [string, number]),
  ]);
  assert.deepEqual(Object.fromEntries(facts), Object.fromEntries(expected));
});

test('duplex: a TypeScript-formatted channel, C as the guest, both directions at once', async () => {
  const mem = GuestMemory.create(1 << 20);
  try {
    const gpa = 0x20000;
    // Different capacities, so a mix-up of the two rings cannot go unnoticed.
    const layout = channelLayout(4096, 1024);
    const chan = mem.slice(gpa, layout.size);
    const rx = Ring.init(chan.subarray(layout.toHost.offset, layout.toHost.offset + layout.toHost.size), layout.toHost.capacity);
    const tx = Ring.init(chan.subarray(layout.toGuest.offset, layout.toGuest.offset + layout.toGuest.size), layout.toGuest.capacity, { maxMessageSize: 300 });
    writeChannelHeader(chan, 42, layout);

    const n = 20_000;
    const seed = 0x51ed;
    const child = spawn(exe, ['duplex', memPath(mem), String(gpa), String(layout.size), String(n), String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));

    const rxGen = new Stream(seed);
    const txGen = new Stream(seed ^ 0x9e3779b9);
    let msg = txGen.message(tx.maxMessageSize);
    let sent = 0;
    let received = 0;
    let childDone = false;
    void exited.then(() => (childDone = true));
    const deadline = Date.now() + 60_000;
    // Poll, yielding to the event loop now and then so the child's exit and output get through.
    while ((sent < n || received < n) && !childDone && Date.now() < deadline) {
      let progress = false;
      for (let burst = 0; burst < 256; burst++) {
        if (sent < n && tx.tryWrite(msg)) {
          progress = true;
          if (++sent < n) msg = txGen.message(tx.maxMessageSize);
        }
        const got = received < n ? rx.tryRead() : null;
        if (got) {
          assert.deepEqual(got, rxGen.message(rx.maxMessageSize), `message ${received} from C`);
          received++;
          progress = true;
        }
        if (!progress) break;
      }
      if (!progress) await new Promise((r) => setImmediate(r));
    }
    const code = await exited;
    assert.equal(code, 0, `C side failed: ${out}`);
    assert.match(out, new RegExp(`ok id=42 sent=${n} received=${n}`));
    // The child may finish its last reads before we finished ours: drain what is left.
    while (received < n) {
      const got = rx.tryRead();
      assert.ok(got, `only ${received} of ${n} messages arrived`);
      assert.deepEqual(got, rxGen.message(rx.maxMessageSize));
      received++;
    }
    assert.equal(sent, n);
    assert.equal(rx.tryRead(), null);
  } finally {
    mem.close();
  }
});

test('produce: a ring formatted by kt_ring_init, read by TypeScript', () => {
  const mem = GuestMemory.create(1 << 20);
  try {
    const gpa = 0x8000;
    const cap = 1 << 16;
    const n = 150;
    const seed = 77;
    assert.match(run(['produce', memPath(mem), gpa, cap, 200, n, seed]), /ok max_msg=200/);
    const ring = Ring.attach(mem.slice(gpa, Ring.sizeFor(cap)));
    assert.equal(ring.capacity, cap);
    assert.equal(ring.maxMessageSize, 200);
    const gen = new Stream(seed);
    for (let i = 0; i < n; i++) assert.deepEqual(ring.tryRead(), gen.message(200), `message ${i}`);
    assert.equal(ring.tryRead(), null);
    // max_msg 0 means the default, capacity / 2 - 8.
    run(['produce', memPath(mem), gpa, 256, 0, 1, seed]);
    assert.equal(Ring.attach(mem.slice(gpa, Ring.sizeFor(256))).maxMessageSize, 120);
  } finally {
    mem.close();
  }
});

test('drain: C reads TypeScript frames, and catches the corruption TypeScript injects', () => {
  const mem = GuestMemory.create(1 << 20);
  try {
    const gpa = 0x4000;
    const cap = 1024;
    const view = mem.slice(gpa, Ring.sizeFor(cap));
    const data = gpa + RING_HEADER_SIZE;
    const msgs = [new Uint8Array(0), new Uint8Array([1, 2, 3]), new Uint8Array(maxMessageFor(cap)).fill(9)];

    /** Formats, writes the three messages, applies `corrupt`, lets C drain; returns C's output lines. */
    const drain = (corrupt: (ring: Ring, frame: number) => void): { msgs: string[]; end: string } => {
      const ring = Ring.init(view, cap);
      for (const m of msgs) assert.ok(ring.tryWrite(m));
      corrupt(ring, data + msgs.reduce((a, m) => a + frameSize(m.length), 0));
      const lines = run(['drain', memPath(mem), gpa, Ring.sizeFor(cap)]).trim().split('\n');
      return { msgs: lines.slice(0, -1), end: lines[lines.length - 1] };
    };
    const expectedMsgs = msgs.map((m) => `msg ${m.length} ${fnv(FNV_BASIS, m)}`);
    const closedBy = (fault: keyof typeof RING_FAULT) => (CLOSED_BY_GUEST << 8) | RING_FAULT[fault];

    // Clean: all three, then empty (-KT_EAGAIN).
    assert.deepEqual(drain(() => {}), { msgs: expectedMsgs, end: 'end rc=-11 fault=0 close=0' });

    // A fourth frame claiming more than the ring's maximum, published.
    const prodAt = gpa + RING_OFF.prod;
    const publish = (bytes: number) => mem.writeU32(prodAt, mem.readU32(prodAt) + bytes);
    let r = drain((_ring, f) => {
      mem.writeU32(f, 4 * cap);
      publish(8);
    });
    assert.deepEqual(r.msgs, expectedMsgs);
    assert.equal(r.end, `end rc=-71 fault=${RING_FAULT['bad-length']} close=${closedBy('bad-length')}`);

    // A frame whose length crosses the producer index.
    r = drain((_ring, f) => {
      mem.writeU32(f, 100);
      publish(16);
    });
    assert.equal(r.end, `end rc=-71 fault=${RING_FAULT['frame-overrun']} close=${closedBy('frame-overrun')}`);

    // A producer index beyond the capacity: attach already refuses it (the fuzz covers the
    // same check on an attached ring).
    assert.equal(drain(() => publish(2 * cap)).end, 'end attach=-22');
    assert.equal(drain(() => publish(4)).end, 'end attach=-22');

    // A non-zero reserved word in the second frame.
    r = drain(() => mem.writeU32(data + frameSize(0) + 4, 0xdead));
    assert.deepEqual(r.msgs, expectedMsgs.slice(0, 1));
    assert.equal(r.end, `end rc=-71 fault=${RING_FAULT['bad-frame-header']} close=${closedBy('bad-frame-header')}`);

    // Header damage: attach refuses (-KT_EINVAL for magic and geometry, -KT_EOPNOTSUPP for version).
    assert.equal(drain(() => mem.writeU32(gpa + RING_OFF.magic, 0)).end, 'end attach=-22');
    assert.equal(drain(() => mem.writeU32(gpa + RING_OFF.version, 2)).end, 'end attach=-95');
    assert.equal(drain(() => mem.writeU32(gpa + RING_OFF.capacity, 1000)).end, 'end attach=-22');
    // Closed by the host: the guest gets -KT_EPIPE at attach.
    assert.equal(drain((ring) => ring.close()).end, 'end attach=-32');

    // And the host learns about the guest's verdict from the close word.
    const ring = Ring.init(view, cap);
    ring.tryWrite(new Uint8Array(5));
    mem.writeU32(data, 4 * cap);
    run(['drain', memPath(mem), gpa, Ring.sizeFor(cap)]);
    assert.throws(() => ring.tryWrite(new Uint8Array(1)), (e: unknown) => e instanceof RingCorruptedError && e.fault === 'peer-closed' && /closed by the guest \(bad-length/.test(e.message));
  } finally {
    mem.close();
  }
});

test('fuzz: random garbage against the C ring, under AddressSanitizer and UBSan when available', (t) => {
  if (!exeSanitized) t.diagnostic('gcc could not link -fsanitize=address,undefined: fuzzing the plain build');
  const out = run(['fuzz', 20_000, 0xfeed], exeSanitized ?? exe);
  const m = /^ok faults=(\d+) reads=(\d+) writes=(\d+)/.exec(out);
  assert.ok(m, out);
  assert.ok(Number(m[1]) > 1000 && Number(m[2]) > 100_000, out);
});
