/**
 * The TypeScript ring against itself: framing and wraparound, full/empty, the doorbell flags,
 * two-thread stress runs (a SharedArrayBuffer, and guest RAM mapped through koffi in two
 * threads), targeted corruption, and a random-garbage fuzz in which nothing but
 * RingCorruptedError may ever come out.
 *
 * This file is also the worker script of the stress tests (the `isMainThread` branch at the
 * bottom), so the two threads run exactly the same Ring code.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import {
  CHANNEL_OFF, CLOSED_BY_HOST, ChannelHeaderError, FRAME_HEADER_SIZE, FRAME_WRAP, RING_FAULT, RING_HEADER_SIZE, RING_OFF, channelLayout, frameSize, layoutChannels,
  maxMessageFor, readChannelHeader, writeChannelHeader,
} from '../../src/channel/channel-layout.js';
import { Ring, RingCorruptedError } from '../../src/channel/ring.js';
import { GuestMemory, type MemoryRegion } from '../../src/memory/guest-memory.js';
import { FNV_BASIS, Stream, fnv } from '../helpers/ring.js';

/** A fresh 8-aligned view of exactly one ring region (its own ArrayBuffer, so any OOB DataView access throws). */
function region(capacity: number): Uint8Array {
  return new Uint8Array(Ring.sizeFor(capacity));
}

/** A fresh ring region formatted by a producer, and a consumer attached to it. */
function ringPair(capacity: number): { view: Uint8Array; prod: Ring; cons: Ring } {
  const view = region(capacity);
  const prod = Ring.init(view, capacity);
  return { view, prod, cons: Ring.attach(view) };
}

/** A ringPair holding `count` 32-byte messages, filled with 1, 2, 3, ... */
function ringWithMessages(capacity: number, count: number): { view: Uint8Array; prod: Ring; cons: Ring } {
  const ring = ringPair(capacity);
  for (let i = 0; i < count; i++) assert.ok(ring.prod.tryWrite(new Uint8Array(32).fill(i + 1)));
  return ring;
}

function u32(view: Uint8Array, off: number): number {
  return new DataView(view.buffer, view.byteOffset).getUint32(off, true);
}
function setU32(view: Uint8Array, off: number, v: number): void {
  new DataView(view.buffer, view.byteOffset).setUint32(off, v >>> 0, true);
}

/** A frame running past the end of the data area, and a wrap marker past the producer index. */
const END_CASES = [['frame-crosses-end', 40], ['frame-overrun', FRAME_WRAP]] as const;

/**
 * A ring with a bad frame at its end: `advance` moves both indices to offset capacity - 16
 * (`frames` empty messages), then the frame there gets length word `len` and the producer
 * publishes 8 bytes for a wrap marker (it pads 16), 56 for a long frame (it fits before the
 * producer index, not before the end). Returns the consumer.
 */
function frameAtEnd(capacity: number, len: number, advance: (prod: Ring, cons: Ring, frames: number) => void): Ring {
  const { view, prod, cons } = ringPair(capacity);
  advance(prod, cons, (capacity - 16) / 8);
  const p = u32(view, RING_OFF.prod);
  setU32(view, RING_HEADER_SIZE + (capacity - 16), len);
  setU32(view, RING_OFF.prod, p + (len === FRAME_WRAP ? 8 : 56));
  return cons;
}

// ---- Fuzzing ----------------------------------------------------------------------------------

const GUARD = 256;

/** Like ringPair, but the region is in the middle of a larger buffer filled with 0xee: the guards catch stray writes. */
function guardedPair(capacity: number): { whole: Uint8Array; view: Uint8Array; prod: Ring; cons: Ring } {
  const whole = new Uint8Array(GUARD + Ring.sizeFor(capacity) + GUARD).fill(0xee);
  const view = whole.subarray(GUARD, GUARD + Ring.sizeFor(capacity));
  const prod = Ring.init(view, capacity);
  return { whole, view, prod, cons: Ring.attach(view) };
}

function assertGuardsIntact(whole: Uint8Array, trial: number): void {
  for (let i = 0; i < GUARD; i++) {
    if (whole[i] !== 0xee || whole[whole.length - 1 - i] !== 0xee) assert.fail(`trial ${trial}: a write outside the ring region`);
  }
}

/** Garbage in one of the header `words`: random, or small and 8-aligned like an index. */
function corruptWord(gen: Stream, dv: DataView, words: number[]): void {
  const v = gen.next();
  dv.setUint32(words[gen.next() % words.length], gen.next() % 2 ? v : v & 0xfff8, true);
}

/** A random frame header in the data area: a wrap marker or a length up to twice the capacity, sometimes a non-zero reserved word. */
function corruptFrame(gen: Stream, dv: DataView, capacity: number): void {
  const at = RING_HEADER_SIZE + ((gen.next() % capacity) & ~7);
  dv.setUint32(at, gen.next() % 3 === 0 ? FRAME_WRAP : gen.next() % (2 * capacity), true);
  if (gen.next() % 4 === 0) dv.setUint32(at + 4, gen.next(), true);
}

/** Random bytes scattered over the data area. */
function scribble(gen: Stream, view: Uint8Array): void {
  for (let i = RING_HEADER_SIZE; i < view.length; i++) if (gen.next() % 16 === 0) view[i] = gen.next() & 0xff;
}

function assertFault(fn: () => unknown, fault: keyof typeof RING_FAULT): RingCorruptedError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof RingCorruptedError, `expected RingCorruptedError(${fault}), got ${String(caught)}`);
  assert.equal(caught.fault, fault, caught.message);
  return caught;
}

// ---- Stress workers ---------------------------------------------------------------------------

interface StressJob {
  kind: 'produce-sab' | 'guest-memfd' | 'litmus';
  /** litmus: which of the two threads, and whether it uses Atomics or a DataView. */
  side?: 0 | 1;
  atomics?: boolean;
  n: number;
  seed: number;
  sab?: SharedArrayBuffer;
  ringOffset?: number;
  ringSize?: number;
  regions?: MemoryRegion[];
  channelGpa?: number;
  channelSize?: number;
}

interface StressResult {
  sent: number;
  received: number;
  checksum: number;
  error?: string;
  /** litmus: the value of the other thread's word this thread read in each round. */
  seen?: Int32Array;
}

/**
 * One thread of a store-buffering litmus test over guest RAM: each round, this thread stores
 * the round number to its word and then loads the other thread's word. Under sequential
 * consistency at least one of the two threads sees the other's store; x86's store buffer lets
 * both miss it unless the store is a full barrier (XCHG), which is what Atomics.store must be.
 */
function litmus(job: StressJob): StressResult {
  const buf = GuestMemory.attach(job.regions!).bytes.buffer;
  const words = new Int32Array(buf, 0, 1024);
  const dv = new DataView(buf);
  const me = job.side!;
  const mine = me === 0 ? 16 : 32; // word indices, on different cache lines
  const theirs = me === 0 ? 32 : 16;
  const arrive = (side: number) => 128 + side * 16; // barrier counters, one line each
  const seen = new Int32Array(job.n);
  for (let r = 1; r <= job.n; r++) {
    Atomics.store(words, arrive(me), r);
    while (Atomics.load(words, arrive(1 - me)) < r) { /* both start the round together */ }
    if (job.atomics) {
      Atomics.store(words, mine, r);
      seen[r - 1] = Atomics.load(words, theirs);
    } else {
      dv.setInt32(mine * 4, r, true);
      seen[r - 1] = dv.getInt32(theirs * 4, true);
    }
  }
  return { sent: job.n, received: 0, checksum: 0, seen };
}

const DEADLINE_MS = 120_000;

/** Busy-polls `step` (which returns whether it made progress) until `done`, or throws at the deadline. */
function spin(step: () => boolean, done: () => boolean, what: string): void {
  const start = Date.now();
  let idle = 0;
  while (!done()) {
    if (step()) idle = 0;
    else if (++idle % 4096 === 0 && Date.now() - start > DEADLINE_MS) throw new Error(`${what}: no progress before the deadline`);
  }
}

/**
 * Producer side of the SharedArrayBuffer stress test, or the "guest" side of the memfd channel
 * test (sends on to-host, receives and checks on to-guest).
 */
function workerMain(job: StressJob): StressResult {
  if (job.kind === 'litmus') return litmus(job);
  const res: StressResult = { sent: 0, received: 0, checksum: FNV_BASIS };
  if (job.kind === 'produce-sab') {
    const ring = Ring.attach(new Uint8Array(job.sab!, job.ringOffset, job.ringSize));
    const gen = new Stream(job.seed);
    let msg = gen.message(ring.maxMessageSize);
    spin(() => {
      if (!ring.tryWrite(msg)) return false;
      res.checksum = fnv(res.checksum, msg);
      if (++res.sent < job.n) msg = gen.message(ring.maxMessageSize);
      return true;
    }, () => res.sent === job.n, 'producer');
    return res;
  }
  const mem = GuestMemory.attach(job.regions!); // the same memfd mapping, viewed from this thread
  const chan = mem.slice(job.channelGpa!, job.channelSize!);
  const { layout } = readChannelHeader(chan);
  const tx = Ring.attach(chan.subarray(layout.toHost.offset, layout.toHost.offset + layout.toHost.size));
  const rx = Ring.attach(chan.subarray(layout.toGuest.offset, layout.toGuest.offset + layout.toGuest.size));
  const txGen = new Stream(job.seed);
  const rxGen = new Stream(job.seed ^ 0x9e3779b9);
  const buf = new Uint8Array(rx.maxMessageSize);
  const want = new Uint8Array(rx.maxMessageSize);
  let msg = txGen.message(tx.maxMessageSize);
  spin(() => {
    let progress = false;
    if (res.sent < job.n && tx.tryWrite(msg)) {
      progress = true;
      if (++res.sent < job.n) msg = txGen.message(tx.maxMessageSize);
    }
    if (res.received < job.n) {
      const len = rx.readInto(buf);
      if (len !== null) {
        const wlen = rxGen.len(rx.maxMessageSize);
        rxGen.fill(want, wlen);
        if (len !== wlen || Buffer.compare(buf.subarray(0, len), want.subarray(0, wlen)) !== 0) throw new Error(`guest: message ${res.received} differs (${len} bytes, want ${wlen})`);
        res.received++;
        progress = true;
      }
    }
    return progress;
  }, () => res.sent === job.n && res.received === job.n, 'guest');
  return res;
}

/**
 * The SharedArrayBuffer stress test: a worker produces 1e5 messages of stream `seed` into a
 * 1024-byte ring; this thread consumes them with the step `consumer` returns (which hands each
 * message to `check`, and returns whether it made progress), then compares contents, count and
 * checksum.
 */
async function sabStress(seed: number, consumer: (cons: Ring, check: (msg: Uint8Array) => void, received: () => number) => () => boolean): Promise<void> {
  const cap = 1024;
  const offset = 128;
  const sab = new SharedArrayBuffer(offset + Ring.sizeFor(cap) + 128);
  const cons = Ring.init(new Uint8Array(sab, offset, Ring.sizeFor(cap)), cap);
  const n = 100_000;
  const worker = runWorker({ kind: 'produce-sab', n, seed, sab, ringOffset: offset, ringSize: Ring.sizeFor(cap) });
  const gen = new Stream(seed);
  const want = new Uint8Array(cons.maxMessageSize);
  let checksum = FNV_BASIS;
  let received = 0;
  let mismatch = '';
  const check = (msg: Uint8Array): void => {
    const len = msg.length;
    const wlen = gen.len(cons.maxMessageSize);
    gen.fill(want, wlen);
    if (!mismatch && (len !== wlen || Buffer.compare(msg, want.subarray(0, wlen)) !== 0)) mismatch = `message ${received}: ${len} bytes, want ${wlen}`;
    checksum = fnv(checksum, msg);
    received++;
  };
  spin(consumer(cons, check, () => received), () => received === n, 'consumer');
  const res = await worker;
  assert.equal(res.error, undefined);
  assert.equal(mismatch, '');
  assert.equal(res.sent, n);
  assert.equal(checksum, res.checksum);
  assert.equal(cons.tryRead(), null);
}

function runWorker(job: StressJob): Promise<StressResult> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL(import.meta.url), { workerData: job });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => code !== 0 && reject(new Error(`worker exited with ${code}`)));
  });
}

if (!isMainThread) {
  let result: StressResult;
  try {
    result = workerMain(workerData as StressJob);
  } catch (e) {
    result = { sent: -1, received: -1, checksum: 0, error: e instanceof Error ? `${e.name}: ${e.message}` : String(e) };
  }
  parentPort!.postMessage(result);
} else {
  registerTests();
}

function registerTests(): void {
  test('init formats the header; attach reads it back; bad arguments are RangeErrors', () => {
    const view = region(1024);
    const host = Ring.init(view, 1024);
    assert.equal(host.capacity, 1024);
    assert.equal(host.maxMessageSize, maxMessageFor(1024));
    assert.equal(u32(view, RING_OFF.magic), 0x4752544b);
    assert.equal(String.fromCharCode(...view.subarray(0, 4)), 'KTRG');
    assert.equal(u32(view, RING_OFF.capacity), 1024);
    assert.equal(u32(view, RING_OFF.headerSize), RING_HEADER_SIZE);
    const other = Ring.attach(view);
    assert.equal(other.maxMessageSize, host.maxMessageSize);
    assert.equal(Ring.init(region(1024), 1024, { maxMessageSize: 100 }).maxMessageSize, 100);

    for (const cap of [0, 32, 100, 1000, 2 ** 31]) assert.throws(() => Ring.init(new Uint8Array(4096), cap), RangeError, `capacity ${cap}`);
    assert.throws(() => Ring.init(new Uint8Array(Ring.sizeFor(1024) - 1), 1024), RangeError);
    assert.throws(() => Ring.init(new Uint8Array(8192).subarray(4), 1024), RangeError, 'misaligned view');
    assert.throws(() => Ring.init(region(1024), 1024, { maxMessageSize: maxMessageFor(1024) + 1 }), RangeError);
    assert.throws(() => host.tryWrite(new Uint8Array(host.maxMessageSize + 1)), RangeError);
  });

  test('messages of every size keep their order across many wraparounds (tryRead, readInto, peekLength)', () => {
    for (const cap of [64, 256, 4096]) {
      const { prod, cons } = ringPair(cap);
      const gen = new Stream(0x1234 + cap);
      const pending: Uint8Array[] = [];
      const buf = new Uint8Array(cons.maxMessageSize);
      let produced = 0;
      let consumed = 0;
      const sizes = new Set<number>();
      for (let step = 0; step < 20_000; step++) {
        if (gen.next() % 2 === 0) {
          const msg = gen.message(prod.maxMessageSize);
          if (prod.tryWrite(msg)) {
            pending.push(msg);
            produced += frameSize(msg.length);
            sizes.add(msg.length);
          } else {
            // Full means: not even this message fits at the producer's position.
            assert.ok(prod.free() < frameSize(msg.length) * 2, `refused a ${msg.length}-byte message with ${prod.free()} bytes free`);
          }
        } else {
          const expected = pending.shift();
          const how = gen.next() % 3;
          if (how === 0) {
            assert.deepEqual(cons.tryRead(), expected ?? null);
          } else if (how === 1) {
            const len = cons.readInto(buf);
            assert.equal(len, expected ? expected.length : null);
            if (expected) assert.deepEqual(buf.subarray(0, expected.length), expected);
          } else {
            assert.equal(cons.peekLength(), expected ? expected.length : null);
            if (expected) assert.deepEqual(cons.tryRead(), expected);
          }
          if (expected) consumed++;
        }
      }
      while (pending.length) assert.deepEqual(cons.tryRead(), pending.shift());
      assert.equal(cons.tryRead(), null);
      assert.equal(cons.available(), 0);
      assert.ok(produced > 20 * cap, `only ${produced} bytes through a ${cap}-byte ring: too few wraps`);
      assert.ok(sizes.has(0) && sizes.has(prod.maxMessageSize), 'both 0-byte and maximal messages were sent');
      assert.ok(consumed > 1000);
    }
  });

  test('full and empty: a maximal message always fits an empty ring, whatever the offset', () => {
    const cap = 256;
    const { prod, cons } = ringPair(cap);
    assert.equal(cons.tryRead(), null);
    assert.equal(cons.readInto(new Uint8Array(1)), null);
    assert.equal(prod.free(), cap);
    // Fill with 8-byte frames: exactly cap / 8 of them.
    let n = 0;
    while (prod.tryWrite(new Uint8Array(0))) n++;
    assert.equal(n, cap / 8);
    assert.equal(prod.free(), 0);
    assert.equal(cons.available(), cap);
    assert.equal(prod.tryWrite(new Uint8Array(0)), false, 'a full ring refuses, and does not throw');
    assert.deepEqual(cons.tryRead(), new Uint8Array(0));
    assert.equal(prod.tryWrite(new Uint8Array(0)), true);
    while (cons.tryRead()) { /* drain */ }

    const max = new Uint8Array(prod.maxMessageSize).fill(0xab);
    for (let shift = 0; shift < cap; shift += 8) {
      const v = region(cap);
      const p = Ring.init(v, cap);
      const c = Ring.attach(v);
      for (let k = 0; k < shift / 8; k++) {
        assert.ok(p.tryWrite(new Uint8Array(0)));
        assert.ok(c.tryRead());
      }
      assert.ok(p.tryWrite(max), `maximal message refused by an empty ring at offset ${shift}`);
      assert.deepEqual(c.tryRead(), max);
      assert.equal(c.available(), 0);
    }

    // A too-small readInto buffer leaves the message where it is.
    assert.ok(prod.tryWrite(new Uint8Array([1, 2, 3, 4, 5])));
    assert.throws(() => cons.readInto(new Uint8Array(4)), RangeError);
    assert.deepEqual(cons.tryRead(), new Uint8Array([1, 2, 3, 4, 5]));
  });

  test('doorbell flags: prepare-wait re-checks after setting the flag; the other side sees it', () => {
    const { view, prod, cons } = ringPair(256);
    assert.equal(prod.dataDoorbellNeeded(), false);
    assert.equal(cons.prepareWaitData(), true, 'empty: go to sleep');
    assert.equal(u32(view, RING_OFF.wantData), 1);
    assert.ok(prod.tryWrite(new Uint8Array([7])));
    assert.equal(prod.dataDoorbellNeeded(), true);
    assert.equal(cons.prepareWaitData(), false, 'data arrived: do not sleep');
    cons.endWaitData();
    assert.equal(prod.dataDoorbellNeeded(), false);

    while (prod.tryWrite(new Uint8Array(100))) { /* fill */ }
    assert.equal(prod.prepareWaitSpace(100), true);
    assert.equal(cons.spaceDoorbellNeeded(), true);
    cons.tryRead();
    cons.tryRead();
    assert.equal(prod.prepareWaitSpace(100), false);
    prod.endWaitSpace();
    assert.equal(cons.spaceDoorbellNeeded(), false);
  });

  test('two threads, SharedArrayBuffer: 1e5 messages with content and checksum checks', async () => {
    await sabStress(0xc0ffee, (cons, check) => {
      const buf = new Uint8Array(cons.maxMessageSize);
      return () => {
        const len = cons.readInto(buf);
        if (len === null) return false;
        check(buf.subarray(0, len));
        return true;
      };
    });
  });

  test('two threads, SharedArrayBuffer: 1e5 messages through readBatch (in place, batched index stores)', async () => {
    await sabStress(0xba7c4ed, (cons, check, received) => {
      const copy = new Uint8Array(cons.maxMessageSize);
      const onMessage = (data: Uint8Array, off: number, len: number): void => {
        copy.set(data.subarray(off, off + len)); // read once, check the copy
        check(copy.subarray(0, len));
      };
      return () => cons.readBatch(onMessage, 1 + (received() % 7)) > 0;
    });
  });

  test('two threads over guest RAM (memfd, koffi views): a full channel in both directions', async () => {
    const mem = GuestMemory.create(1 << 20);
    try {
      const gpa = 0x10000;
      const layout = channelLayout(2048, 512);
      const chan = mem.slice(gpa, layout.size);
      const rx = Ring.init(chan.subarray(layout.toHost.offset, layout.toHost.offset + layout.toHost.size), layout.toHost.capacity);
      const tx = Ring.init(chan.subarray(layout.toGuest.offset, layout.toGuest.offset + layout.toGuest.size), layout.toGuest.capacity);
      writeChannelHeader(chan, 7, layout);
      const n = 50_000;
      const seed = 0xbeef;
      const worker = runWorker({ kind: 'guest-memfd', n, seed, regions: [...mem.regions], channelGpa: gpa, channelSize: layout.size });
      const rxGen = new Stream(seed);
      const txGen = new Stream(seed ^ 0x9e3779b9);
      let msg = txGen.message(tx.maxMessageSize);
      let sent = 0;
      let received = 0;
      let mismatch = '';
      const want = new Uint8Array(rx.maxMessageSize);
      spin(() => {
        let progress = false;
        if (sent < n && tx.tryWrite(msg)) {
          progress = true;
          if (++sent < n) msg = txGen.message(tx.maxMessageSize);
        }
        const got = received < n ? rx.tryRead() : null;
        if (got) {
          const wlen = rxGen.len(rx.maxMessageSize);
          rxGen.fill(want, wlen);
          if (!mismatch && Buffer.compare(got, want.subarray(0, wlen)) !== 0) mismatch = `message ${received}: ${got.length} bytes, want ${wlen}`;
          received++;
          progress = true;
        }
        return progress;
      }, () => sent === n && received === n, 'host');
      const res = await worker;
      assert.equal(res.error, undefined);
      assert.equal(mismatch, '');
      assert.deepEqual([res.sent, res.received], [n, n]);
    } finally {
      mem.close();
    }
  });

  test('Atomics on a koffi view of guest RAM are full barriers (store-buffering litmus)', async (t) => {
    // The ring's memory-ordering argument (docs/channel-ring.md) rests on V8 emitting XCHG for
    // Atomics.store also on a non-shared ArrayBuffer. If that ever changes, this fails.
    const rounds = 150_000;
    const run = async (atomics: boolean) => {
      const mem = GuestMemory.create(1 << 16);
      try {
        const job = (side: 0 | 1): StressJob => ({ kind: 'litmus', n: rounds, seed: 0, side, atomics, regions: [...mem.regions] });
        const [a, b] = await Promise.all([runWorker(job(0)), runWorker(job(1))]);
        assert.equal(a.error ?? b.error, undefined);
        let bothStale = 0;
        for (let i = 0; i < rounds; i++) if (a.seen![i] < i + 1 && b.seen![i] < i + 1) bothStale++;
        return bothStale;
      } finally {
        mem.close();
      }
    };
    const plain = await run(false);
    t.diagnostic(`DataView store then load: both threads missed the other's store in ${plain} of ${rounds} rounds`);
    assert.equal(await run(true), 0, 'Atomics.store then Atomics.load let a load pass an older store');
  });

  test('corruption: the producer index', () => {
    const cases: [string, (v: Uint8Array, p: number) => number][] = [
      ['beyond capacity', (_v, p) => p + 1024 + 8],
      ['misaligned', (_v, p) => p + 4],
      ['far away', () => 0x80000000],
      ['behind the consumer', (_v, p) => p - 8],
    ];
    for (const [what, bad] of cases) {
      const { view, prod, cons } = ringPair(1024);
      prod.tryWrite(new Uint8Array(16));
      assert.ok(cons.tryRead());
      setU32(view, RING_OFF.prod, bad(view, u32(view, RING_OFF.prod)));
      const err = assertFault(() => cons.tryRead(), 'index-out-of-range');
      assert.match(err.message, /producer index/, what);
      assert.equal(u32(view, RING_OFF.close), (CLOSED_BY_HOST << 8) | RING_FAULT['index-out-of-range'], 'the close word tells the peer');
      // Every later call fails the same way, without looking at memory again.
      assert.equal(assertFault(() => cons.available(), 'index-out-of-range'), err);
      assert.equal(assertFault(() => cons.peekLength(), 'index-out-of-range'), err);
      assert.equal(cons.fault, err);
      // The other end learns from the close word.
      assertFault(() => prod.tryWrite(new Uint8Array(1)), 'peer-closed');
    }

    // Going backwards after having seen more: frames the consumer was promised vanish.
    const { view, prod, cons } = ringPair(1024);
    prod.tryWrite(new Uint8Array(16));
    prod.tryWrite(new Uint8Array(16));
    assert.equal(cons.available(), 48);
    setU32(view, RING_OFF.prod, 24);
    assertFault(() => cons.tryRead(), 'index-out-of-range');
  });

  test('corruption: the consumer index, seen by the producer', () => {
    for (const bad of [(p: number) => p + 8, () => 0x40000000, (p: number) => p - 1024 - 8, () => 4]) {
      const view = region(1024);
      const prod = Ring.init(view, 1024);
      prod.tryWrite(new Uint8Array(40));
      setU32(view, RING_OFF.cons, bad(u32(view, RING_OFF.prod)));
      assertFault(() => prod.tryWrite(new Uint8Array(1)), 'index-out-of-range');
    }
    // Backwards: the consumer un-reads a frame.
    const { view, prod, cons } = ringPair(1024);
    prod.tryWrite(new Uint8Array(8));
    cons.tryRead();
    assert.equal(prod.free(), 1024);
    setU32(view, RING_OFF.cons, 0);
    assertFault(() => prod.free(), 'index-out-of-range');
  });

  test('corruption: frame lengths and markers', () => {
    const cap = 1024;
    const setup = () => ringWithMessages(cap, 1);
    const data = RING_HEADER_SIZE;
    const cases: [keyof typeof RING_FAULT, (v: Uint8Array) => void][] = [
      ['bad-length', (v) => setU32(v, data, cap * 4)], // larger than the ring
      ['bad-length', (v) => setU32(v, data, maxMessageFor(cap) + 1)], // just above the maximum
      ['bad-length', (v) => setU32(v, data, 0xfffffff0)],
      ['frame-overrun', (v) => setU32(v, data, 33)], // 48-byte frame, 40 published
      ['frame-overrun', (v) => setU32(v, data, 200)],
      ['bad-frame-header', (v) => setU32(v, data + 4, 1)],
      ['frame-crosses-end', (v) => setU32(v, data, FRAME_WRAP)], // wrap marker at offset 0
    ];
    for (const [fault, corrupt] of cases) {
      const { view, cons } = setup();
      corrupt(view);
      assertFault(() => cons.tryRead(), fault);
      assert.equal(u32(view, RING_OFF.close) & 0xff, RING_FAULT[fault]);
    }

    // A frame running past the end of the data area, and a wrap marker past the producer index.
    for (const [fault, len] of END_CASES) {
      const cons = frameAtEnd(cap, len, (prod, cons, frames) => {
        for (let i = 0; i < frames; i++) {
          prod.tryWrite(new Uint8Array(0));
          cons.tryRead();
        }
      });
      assertFault(() => cons.tryRead(), fault);
    }
  });

  test('corruption: magic, version, flags and geometry, at attach and while attached', () => {
    const fresh = () => {
      const view = region(1024);
      Ring.init(view, 1024);
      return view;
    };
    const atAttach: [keyof typeof RING_FAULT, number, number][] = [
      ['bad-magic', RING_OFF.magic, 0x12345678],
      ['bad-version', RING_OFF.version, 2],
      ['bad-version', RING_OFF.version, 0],
      ['bad-version', RING_OFF.flags, 1],
      ['bad-config', RING_OFF.capacity, 1000],
      ['bad-config', RING_OFF.capacity, 2048], // larger than the region
      ['bad-config', RING_OFF.capacity, 32],
      ['bad-config', RING_OFF.maxMessage, 1024],
      ['bad-config', RING_OFF.headerSize, 0x100],
      ['peer-closed', RING_OFF.close, (2 << 8) | 10],
      ['index-out-of-range', RING_OFF.prod, 2048],
      ['index-out-of-range', RING_OFF.cons, 4],
    ];
    for (const [fault, off, value] of atAttach) {
      const view = fresh();
      setU32(view, off, value);
      assertFault(() => Ring.attach(view), fault);
    }
    for (const [fault, off, value] of atAttach.slice(0, 10)) {
      const view = fresh();
      const ring = Ring.attach(view);
      setU32(view, off, value);
      assertFault(() => ring.tryWrite(new Uint8Array(1)), fault);
    }
    // A closed ring tells who closed it and why.
    const view = fresh();
    const ring = Ring.attach(view);
    setU32(view, RING_OFF.close, (2 << 8) | RING_FAULT['bad-length']);
    assert.match(assertFault(() => ring.tryRead(), 'peer-closed').message, /closed by the guest \(bad-length/);
    // close() on our side.
    const v2 = fresh();
    const a = Ring.attach(v2);
    const b = Ring.attach(v2);
    a.close();
    assertFault(() => a.tryRead(), 'closed');
    assertFault(() => b.tryRead(), 'peer-closed');
    assert.equal(u32(v2, RING_OFF.close), (CLOSED_BY_HOST << 8) | RING_FAULT.closed);
  });

  test('readBatch: order, wraparound, max, early stop, in-place bounds and batched index stores', () => {
    for (const cap of [64, 256, 4096]) {
      const { prod, cons } = ringPair(cap);
      const gen = new Stream(0xba7c + cap);
      const pending: Uint8Array[] = [];
      let produced = 0;
      let consumed = 0;
      let batches = 0;
      for (let step = 0; step < 20_000; step++) {
        if (gen.next() % 3 !== 0) {
          const msg = gen.message(prod.maxMessageSize);
          if (prod.tryWrite(msg)) {
            pending.push(msg);
            produced += frameSize(msg.length);
          }
          continue;
        }
        const max = gen.next() % 4 === 0 ? 1 + (gen.next() % 3) : Infinity;
        const stopAfter = gen.next() % 4 === 0 ? 1 + (gen.next() % 3) : -1;
        const waiting = pending.length;
        let seen = 0;
        const n = cons.readBatch((data, offset, len) => {
          assert.ok(offset >= FRAME_HEADER_SIZE && offset % 8 === 0 && offset + len <= cap && len <= cons.maxMessageSize);
          assert.deepEqual(data.subarray(offset, offset + len), pending.shift(), 'in order, intact');
          seen++;
          consumed++;
          if (seen === stopAfter) return false;
        }, max);
        assert.equal(n, seen);
        assert.equal(n, Math.min(waiting, max, stopAfter < 0 ? Infinity : stopAfter));
        // The consumer index is published at the end of the batch: the producer sees the room.
        assert.equal(prod.free(), cap - cons.available());
        if (n > 0) batches++;
      }
      while (cons.readBatch((d, o, l) => void assert.deepEqual(d.subarray(o, o + l), pending.shift())) > 0);
      assert.equal(pending.length, 0);
      assert.equal(cons.readBatch(() => assert.fail('empty ring')), 0);
      assert.equal(prod.free(), cap);
      assert.ok(produced > 20 * cap, `only ${produced} bytes through a ${cap}-byte ring`);
      assert.ok(consumed > 1000 && batches > 500);
    }

    // A long batch hands space back every capacity / 4 bytes, not only at its end.
    const cap = 1024;
    const { view, prod, cons } = ringPair(cap);
    while (prod.tryWrite(new Uint8Array(24)));
    const published: number[] = [];
    assert.equal(cons.readBatch(() => void published.push(u32(view, RING_OFF.cons))), cap / 32);
    assert.equal(published[0], 0);
    assert.ok(new Set(published).size >= 4, `the consumer index moved ${new Set(published).size - 1} times during the batch`);
    assert.equal(u32(view, RING_OFF.cons), cap);
  });

  test('readBatch: a throwing callback keeps its message taken; consumer calls from the callback are refused', () => {
    const { view, prod, cons } = ringPair(256);
    for (let i = 0; i < 4; i++) prod.tryWrite(new Uint8Array([i]));
    const got: number[] = [];
    assert.throws(() => cons.readBatch((d, o) => {
      got.push(d[o]);
      if (got.length === 2) throw new Error('boom');
    }), /boom/);
    assert.deepEqual(got, [0, 1]);
    assert.equal(u32(view, RING_OFF.cons), 32, 'both handed-out messages are published as taken');
    assert.throws(() => cons.readBatch(() => void cons.tryRead()), (e: unknown) => e instanceof Error && !(e instanceof RingCorruptedError) && /readBatch/.test(e.message));
    assert.equal(cons.fault, undefined, 'a caller mistake does not close the ring');
    assert.deepEqual(cons.tryRead(), new Uint8Array([3]));
    assert.equal(cons.tryRead(), null);
  });

  test('corruption: readBatch detects the same faults as tryRead, after handing out the good frames', () => {
    const cap = 1024;
    const data = RING_HEADER_SIZE;
    // Two good 32-byte messages (40-byte frames), then the frame under test at data + 80.
    const setup = () => ringWithMessages(cap, 3);
    const at = data + 80;
    const cases: [keyof typeof RING_FAULT, (v: Uint8Array) => void][] = [
      ['bad-length', (v) => setU32(v, at, cap * 4)],
      ['bad-length', (v) => setU32(v, at, maxMessageFor(cap) + 1)],
      ['bad-length', (v) => setU32(v, at, 0xfffffff0)],
      ['frame-overrun', (v) => setU32(v, at, 33)],
      ['frame-overrun', (v) => setU32(v, at, 200)],
      ['frame-overrun', (v) => setU32(v, at, FRAME_WRAP)], // pads to the end, only 40 bytes published
      ['bad-frame-header', (v) => setU32(v, at + 4, 1)],
      ['index-out-of-range', (v) => setU32(v, RING_OFF.prod, 120 + 4)],
      ['index-out-of-range', (v) => setU32(v, RING_OFF.prod, 120 + cap)],
      ['peer-closed', (v) => setU32(v, RING_OFF.close, (2 << 8) | RING_FAULT.closed)],
      ['bad-config', (v) => setU32(v, RING_OFF.capacity, cap * 2)],
    ];
    for (const [fault, corrupt] of cases) {
      const { view, cons } = setup();
      corrupt(view);
      const got: number[] = [];
      const err = assertFault(() => cons.readBatch((d, o) => void got.push(d[o])), fault);
      const frameFault = fault !== 'index-out-of-range' && fault !== 'peer-closed' && fault !== 'bad-config';
      assert.deepEqual(got, frameFault ? [1, 2] : [], fault);
      if (frameFault) assert.equal(u32(view, RING_OFF.cons), 80, 'the frames handed out before the bad one are published as taken');
      if (fault !== 'peer-closed') assert.equal(u32(view, RING_OFF.close) & 0xff, RING_FAULT[fault]);
      assert.equal(assertFault(() => cons.readBatch(() => assert.fail('closed')), fault), err, 'later calls fail the same way');
    }

    // Wrap marker at offset 0, a frame past the end of the data area, a wrap marker past the producer index.
    {
      const { view, cons } = setup();
      setU32(view, data, FRAME_WRAP);
      assertFault(() => cons.readBatch(() => assert.fail('no frame is valid')), 'frame-crosses-end');
    }
    for (const [fault, len] of END_CASES) {
      const cons = frameAtEnd(cap, len, (prod, cons, frames) => {
        for (let i = 0; i < frames; i++) prod.tryWrite(new Uint8Array(0));
        assert.equal(cons.readBatch(() => {}), frames);
      });
      assertFault(() => cons.readBatch(() => assert.fail('no frame is valid')), fault);
    }
  });

  test('fuzz: readBatch over random garbage hands out only in-bounds frames and throws only RingCorruptedError', () => {
    const gen = new Stream(0xb47c4);
    let faults = 0;
    let reads = 0;
    const trials = 3000;
    for (let trial = 0; trial < trials; trial++) {
      const cap = 64 << (gen.next() % 6);
      const { whole, view, prod, cons } = guardedPair(cap);
      const model: Uint8Array[] = [];
      let corrupted = false;
      const dv = new DataView(view.buffer, view.byteOffset, view.length);
      try {
        for (let op = 0; op < 300; op++) {
          const what = gen.next() % 256;
          if (what < 130) {
            const msg = gen.message(prod.maxMessageSize);
            if (prod.tryWrite(msg) && !corrupted) model.push(msg);
          } else if (what < 240) {
            const max = gen.next() % 2 ? Infinity : 1 + (gen.next() % 4);
            const n = cons.readBatch((data, offset, len) => {
              assert.ok(data.length === cap && offset >= FRAME_HEADER_SIZE && offset + len <= cap && len <= cons.maxMessageSize, `frame ${offset}+${len} outside the data area`);
              reads++;
              if (!corrupted) assert.deepEqual(data.subarray(offset, offset + len), model.shift(), 'uncorrupted rings deliver exactly what was sent');
            }, max);
            assert.ok(n <= max);
            if (!corrupted && n < max) assert.equal(model.length, 0);
          } else {
            corrupted = true;
            const kind = gen.next() % 4;
            if (kind === 0) {
              const words = [RING_OFF.magic, RING_OFF.capacity, RING_OFF.maxMessage, RING_OFF.close, RING_OFF.prod];
              corruptWord(gen, dv, words);
            } else if (kind === 1) {
              corruptFrame(gen, dv, cap);
            } else if (kind === 2) {
              scribble(gen, view);
            } else {
              dv.setUint32(RING_OFF.prod, (dv.getUint32(RING_OFF.prod, true) + (gen.next() % 64) * 8 - 256) >>> 0, true);
            }
          }
        }
      } catch (e) {
        if (!(e instanceof RingCorruptedError)) throw e;
        assert.ok(corrupted, `a ring nobody corrupted failed: ${e.message}`);
        faults++;
      }
      assertGuardsIntact(whole, trial);
    }
    assert.ok(faults > trials / 4, `only ${faults} of ${trials} trials detected corruption`);
    assert.ok(reads > trials * 10, `only ${reads} messages read`);
  });

  test('channel layout: placement, several channels, header round trip and validation', () => {
    const layout = channelLayout(4096, 64);
    assert.deepEqual(layout.toHost, { offset: 0x80, size: RING_HEADER_SIZE + 4096, capacity: 4096 });
    assert.equal(layout.toGuest.offset % 128, 0);
    assert.ok(layout.toGuest.offset >= layout.toHost.offset + layout.toHost.size);
    assert.equal(layout.size % 128, 0);
    assert.ok(layout.size >= layout.toGuest.offset + layout.toGuest.size);
    assert.throws(() => channelLayout(100), RangeError);

    const area = layoutChannels([{ toHost: 1024 }, { toHost: 4096, toGuest: 256 }, { toHost: 64 }]);
    assert.deepEqual(area.channels.map((c) => c.offset), [0, 4096, 3 * 4096]);
    assert.equal(area.total, 4 * 4096);

    const buf = new Uint8Array(layout.size);
    writeChannelHeader(buf, 9, layout);
    assert.deepEqual(readChannelHeader(buf), { id: 9, layout });
    const dv = new DataView(buf.buffer);
    const broken: [number, number][] = [
      [CHANNEL_OFF.magic, 0], [CHANNEL_OFF.version, 2], [CHANNEL_OFF.flags, 1], [CHANNEL_OFF.size, layout.size + 1],
      [CHANNEL_OFF.toHostOffset, 0x40], [CHANNEL_OFF.toHostOffset, 0xfffffff8], [CHANNEL_OFF.toGuestSize, 0x1000],
      [CHANNEL_OFF.toGuestOffset, 0x100], // overlaps the to-host ring
    ];
    for (const [off, value] of broken) {
      const copy = buf.slice();
      new DataView(copy.buffer).setUint32(off, value, true);
      assert.throws(() => readChannelHeader(copy), ChannelHeaderError, `word ${off} = ${value}`);
    }
    assert.equal(dv.getUint32(0, true), 0x4843544b);
  });

  test('fuzz: random garbage over header and data never escapes as anything but RingCorruptedError', () => {
    const gen = new Stream(0x5eed);
    let faults = 0;
    let reads = 0;
    let attachFaults = 0;
    const trials = 4000;
    for (let trial = 0; trial < trials; trial++) {
      const cap = 64 << (gen.next() % 6);
      const { whole, view, prod, cons } = guardedPair(cap);
      const model: Uint8Array[] = [];
      let corrupted = false;
      try {
        for (let op = 0; op < 300; op++) {
          const what = gen.next() % 256;
          if (what < 110) {
            const msg = gen.message(prod.maxMessageSize);
            if (prod.tryWrite(msg) && !corrupted) model.push(msg);
          } else if (what < 230) {
            const got = gen.next() % 2 ? cons.tryRead() : (() => {
              const b = new Uint8Array(cons.maxMessageSize);
              const n = cons.readInto(b);
              return n === null ? null : b.subarray(0, n);
            })();
            if (got) {
              reads++;
              assert.ok(got.length <= cons.maxMessageSize);
              if (!corrupted) assert.deepEqual(got, model.shift(), 'uncorrupted rings deliver exactly what was sent');
            } else if (!corrupted) {
              assert.equal(model.length, 0);
            }
          } else if (what < 250) {
            assert.ok(cons.available() <= cap);
            assert.ok(prod.free() <= cap);
          } else {
            corrupted = true;
            const kind = gen.next() % 5;
            const dv = new DataView(view.buffer, view.byteOffset, view.length);
            if (kind === 0) {
              for (let i = 0; i < RING_HEADER_SIZE; i += 4) if (gen.next() % 8 === 0) dv.setUint32(i, gen.next(), true);
            } else if (kind === 1) {
              const words = [RING_OFF.magic, RING_OFF.version, RING_OFF.capacity, RING_OFF.maxMessage, RING_OFF.headerSize, RING_OFF.flags, RING_OFF.close, RING_OFF.prod, RING_OFF.cons];
              corruptWord(gen, dv, words);
            } else if (kind === 2) {
              corruptFrame(gen, dv, cap);
            } else if (kind === 3) {
              scribble(gen, view);
            } else {
              const w = gen.next() % 2 ? RING_OFF.prod : RING_OFF.cons;
              dv.setUint32(w, (dv.getUint32(w, true) + (gen.next() % 64) * 8 - 256) >>> 0, true);
            }
          }
        }
      } catch (e) {
        if (!(e instanceof RingCorruptedError)) throw e;
        assert.ok(corrupted, `a ring nobody corrupted failed: ${e.message}`);
        faults++;
      }
      // Attaching to whatever is left must also fail cleanly or succeed.
      try {
        Ring.attach(view);
      } catch (e) {
        if (!(e instanceof RingCorruptedError)) throw e;
        attachFaults++;
      }
      assertGuardsIntact(whole, trial);
    }
    assert.ok(faults > trials / 4, `only ${faults} of ${trials} trials detected corruption`);
    assert.ok(reads > trials * 10, `only ${reads} messages read`);
    assert.ok(attachFaults > 0);

    // Random bytes over a whole formatted header (some trials keep magic and version so the
    // deeper checks run): attach and every operation either work or throw RingCorruptedError.
    let attached = 0;
    for (let trial = 0; trial < 3000; trial++) {
      const cap = 64 << (gen.next() % 4);
      const view = region(cap);
      Ring.init(view, cap);
      // What survives: 0 nothing, 1 magic and version, 2 the whole configuration block (so
      // indices are garbage), 3 the whole header (so only the frames are garbage).
      const keep = gen.next() % 4;
      const dv = new DataView(view.buffer, view.byteOffset, view.length);
      for (let i = 0; i < RING_HEADER_SIZE; i += 4) {
        if (keep === 3 || (keep === 2 && i < 0x80) || (keep === 1 && i < RING_OFF.capacity)) continue;
        const r = gen.next();
        dv.setUint32(i, gen.next() % 4 === 0 ? r : r % 4 === 0 ? 0 : r & (cap * 2 - 8), true);
      }
      for (let i = RING_HEADER_SIZE; i < view.length; i += 4) dv.setUint32(i, gen.next() % 2 ? gen.next() : gen.next() % cap, true);
      try {
        const ring = Ring.attach(view);
        attached++;
        for (let k = 0; k < 8; k++) {
          ring.tryRead();
          ring.tryWrite(new Uint8Array(gen.next() % (ring.maxMessageSize + 1)));
        }
      } catch (e) {
        if (!(e instanceof RingCorruptedError)) throw e;
      }
    }
    assert.ok(attached > 10, `only ${attached} garbage headers attached: the deeper checks barely ran`);
  });
}
