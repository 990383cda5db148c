/**
 * The channel area (src/channel/channel-area.ts): directory format, first-fit allocation,
 * exhaustion, names, and that the directory in memory is only ever rewritten from the host's
 * own copy. The second half drives the host `Channel` class (src/channel/channel.ts) over plain
 * memory without KVM, with a TypeScript ring end standing in for the guest, to pin down its
 * logic (pull and push styles, backpressure, interrupts, corruption, closing, suspend/resume)
 * where timing is fully under the test's control.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  CHANNEL_AREA_BASE, CHANNEL_AREA_END, ChannelArea, ChannelAreaFullError, channelNameBytes, decodeDirectory, DIR_ENTRY_OFF, DIRECTORY_ENTRY_OFFSET,
  DIRECTORY_MAGIC, DIRECTORY_MAX, DIRECTORY_SIZE, isGuestCapacity, type DirectoryEntry,
} from '../../src/channel/channel-area.js';
import { Channel, ChannelClosedError, channelBytes, formatChannel, type ChannelCloseInfo } from '../../src/channel/channel.js';
import { readChannelHeader, RING_OFF } from '../../src/channel/channel-layout.js';
import { Poller } from '../../src/channel/notifier.js';
import { Ring, RingCorruptedError } from '../../src/channel/ring.js';

const AREA = CHANNEL_AREA_END - CHANNEL_AREA_BASE;
const newArea = () => {
  const view = new Uint8Array(AREA);
  return { view, area: new ChannelArea(view) };
};
const noInit = () => {};
const req = (name: string, bytes = 4096, mode: 'hypercall' | 'ioeventfd' | 'polling' = 'hypercall', vector = 0x30) => ({ name, bytes, mode, vector });

// ---- Directory and allocation ------------------------------------------------------------------

test('format writes an empty directory: magic, version 1, count 0, max 63', () => {
  const { view, area } = newArea();
  view.fill(0xaa, 0, DIRECTORY_SIZE);
  area.format();
  const dv = new DataView(view.buffer);
  assert.equal(dv.getUint32(0, true), DIRECTORY_MAGIC);
  assert.deepEqual([dv.getUint32(4, true), dv.getUint32(8, true), dv.getUint32(12, true)], [1, 0, 63]);
  assert.equal(DIRECTORY_MAX, 63);
  assert.ok(view.subarray(16, DIRECTORY_SIZE).every((b) => b === 0), 'everything else is zero (stale bytes are wiped)');
  assert.deepEqual(decodeDirectory(view).entries, []);
});

test('allocation: first fit from 0x201000, 4 KiB-aligned; entries in the documented format', () => {
  const { view, area } = newArea();
  area.format();
  const a = area.allocate(req('alpha', 5000, 'ioeventfd', 0x41), noInit);
  const b = area.allocate(req('beta', 4096, 'polling', 0), noInit);
  assert.deepEqual(a, { id: 0, state: 'open', gpa: 0x201000, size: 8192, mode: 'ioeventfd', port: 0x100, vector: 0x41, name: 'alpha' });
  assert.deepEqual(b, { id: 1, state: 'open', gpa: 0x203000, size: 4096, mode: 'polling', port: 0x101, vector: 0, name: 'beta' });
  // Byte by byte, entry 0 as docs/channels.md specifies it.
  const dv = new DataView(view.buffer);
  const o = DIRECTORY_ENTRY_OFFSET;
  assert.equal(dv.getUint32(8, true), 2, 'count');
  assert.equal(dv.getUint32(o + 0, true), 0);
  assert.equal(dv.getUint32(o + 4, true), 1, 'state open');
  assert.equal(dv.getBigUint64(o + 8, true), 0x201000n);
  assert.equal(dv.getUint32(o + 16, true), 8192);
  assert.equal(dv.getUint32(o + 20, true), 1, 'mode ioeventfd');
  assert.equal(dv.getUint16(o + 24, true), 0x100);
  assert.equal(dv.getUint8(o + 26), 0x41);
  assert.equal(dv.getUint8(o + 27), 0);
  assert.equal(dv.getUint32(o + 28, true), 0);
  assert.equal(Buffer.from(view.subarray(o + 32, o + 64)).toString('latin1'), 'alpha'.padEnd(32, '\0'));
  assert.deepEqual(decodeDirectory(view).entries, [a, b]);
  assert.deepEqual(area.entries(), [a, b]);
});

test('init formats the region before the entry is published; an init that throws allocates nothing', () => {
  const { view, area } = newArea();
  area.format();
  let seenCount = -1;
  const e = area.allocate(req('c', channelBytes(4096)), (region, entry) => {
    seenCount = new DataView(view.buffer).getUint32(8, true);
    formatChannel(region, entry.id, 4096);
  });
  assert.equal(seenCount, 0, 'the entry was not visible while the channel was being formatted');
  const header = readChannelHeader(view.subarray(e.gpa - CHANNEL_AREA_BASE, e.gpa - CHANNEL_AREA_BASE + e.size));
  assert.equal(header.id, 0);
  assert.throws(() => area.allocate(req('d'), () => {
    throw new Error('boom');
  }), /boom/);
  assert.equal(area.entries().length, 1);
  assert.equal(area.allocate(req('d'), noInit).gpa, e.gpa + e.size, 'the failed allocation left no hole');
});

test('exhaustion: the area (about 2 MiB) and the directory (63 entries) both end in ChannelAreaFullError', () => {
  const { area } = newArea();
  area.format();
  const big = area.allocate(req('big', 2 * 1024 * 1024 - 3 * 4096), noInit);
  assert.equal(big.gpa, 0x201000);
  assert.throws(() => area.allocate(req('more', 12288), noInit), ChannelAreaFullError);
  assert.equal(area.allocate(req('fits', 8192), noInit).gpa, 0x3fe000, 'a smaller one still fits the rest');
  assert.throws(() => area.allocate(req('full', 4096), noInit), /largest free part of the channel area is 0 bytes/);

  const { area: area2 } = newArea();
  for (let i = 0; i < DIRECTORY_MAX; i++) area2.allocate(req(`c${i}`, 4096), noInit);
  assert.throws(() => area2.allocate(req('c63', 4096), noInit), /at most 63 channels/);
  // A channel of two 1 MiB rings needs more than the whole area.
  const { area: area3 } = newArea();
  assert.throws(() => area3.allocate(req('huge', channelBytes(1 << 20)), noInit), ChannelAreaFullError);
  assert.equal(area3.allocate(req('half', channelBytes(1 << 19)), noInit).size, 0x101000);
});

test('closing marks the entry closed for good; its region and id are never handed out again', () => {
  const { view, area } = newArea();
  area.format();
  const a = area.allocate(req('a'), noInit);
  area.close(a.id);
  assert.equal(area.get(a.id)?.state, 'closed');
  assert.equal(area.findOpen('a'), undefined);
  const again = area.allocate(req('a'), noInit);
  assert.deepEqual([again.id, again.gpa], [1, a.gpa + a.size], 'a new id and region, same name allowed');
  assert.equal(area.findOpen('a')?.id, 1);
  assert.deepEqual(decodeDirectory(view).entries.map((e) => e.state), ['closed', 'open']);
});

test('the directory in memory is only written: guest scribbles are repaired on the next change, never read', () => {
  const { view, area } = newArea();
  area.format();
  const a = area.allocate(req('a'), noInit);
  // The guest rewrites everything: the host's view of its channels does not change.
  view.fill(0x5a, 0, DIRECTORY_SIZE);
  assert.deepEqual(area.get(0), a);
  assert.equal(area.findOpen('a')?.gpa, a.gpa);
  area.allocate(req('b'), noInit);
  const d = decodeDirectory(view);
  assert.deepEqual(d.entries.map((e: DirectoryEntry) => [e.name, e.gpa, e.state]), [['a', a.gpa, 'open'], ['b', a.gpa + 4096, 'open']]);
  assert.ok(view.subarray(DIRECTORY_ENTRY_OFFSET + 2 * 64, DIRECTORY_SIZE).every((b) => b === 0), 'unused entries wiped');
  assert.equal(view[DIRECTORY_ENTRY_OFFSET + DIR_ENTRY_OFF.reserved], 0);
});

test('names: 1–31 bytes of printable ASCII', () => {
  assert.deepEqual([...channelNameBytes('a b~')], [0x61, 0x20, 0x62, 0x7e]);
  assert.equal(channelNameBytes('x'.repeat(31)).length, 31);
  for (const bad of ['', 'x'.repeat(32), 'tab\t', 'nul\0', 'é', new Uint8Array([0x80])]) {
    assert.throws(() => channelNameBytes(bad), RangeError, JSON.stringify(String(bad)));
  }
  const { area } = newArea();
  assert.throws(() => area.allocate(req('bad\n'), noInit), RangeError);
  assert.throws(() => area.allocate({ ...req('m'), mode: 'smoke' as 'polling' }, noInit), RangeError);
  assert.ok(isGuestCapacity(4096) && isGuestCapacity(1 << 20) && !isGuestCapacity(2048) && !isGuestCapacity(3 << 12) && !isGuestCapacity(2 << 20));
});

// ---- The Channel class over plain memory ----------------------------------------------------------

/** A channel in an ArrayBuffer plus the guest's ring ends over the same bytes. */
function harness(capacity = 256, opts: { vector?: number; mode?: 'hypercall' | 'polling' } = {}) {
  const region = new Uint8Array(channelBytes(capacity));
  const formatted = formatChannel(region, 0, capacity);
  const L = formatted.layout;
  const view = (p: typeof L.toHost) => region.subarray(p.offset, p.offset + p.size);
  const guest = { tx: Ring.attach(view(L.toHost)), rx: Ring.attach(view(L.toGuest)) };
  const counters = { interrupts: 0, closed: 0 };
  const entry: DirectoryEntry = { id: 0, state: 'open', gpa: 0x201000, size: region.length, mode: opts.mode ?? 'hypercall', port: 0x100, vector: opts.vector ?? 0x30, name: 't' };
  const poller = new Poller();
  const ch = new Channel(entry, formatted, region, 0, {
    interrupt: entry.vector ? () => counters.interrupts++ : undefined,
    poller: entry.mode === 'polling' ? poller : undefined,
    notifications: () => 0,
    onClosed: () => counters.closed++,
  });
  return { ch, guest, counters, region, L, poller };
}

const bytes = (...v: number[]) => Uint8Array.from(v);
const tick = () => new Promise((r) => setImmediate(r));

test('pull: recv/for await deliver in order, wait for data with want_data set, and wake on notify()', async () => {
  const { ch, guest } = harness();
  guest.tx.tryWrite(bytes(1));
  assert.deepEqual(await ch.recv(), bytes(1));
  const pending = ch.recv();
  await tick();
  assert.equal(guest.tx.dataDoorbellNeeded(), true, 'the host asked for a doorbell');
  assert.throws(() => ch.on('message', () => {}), /cannot also have 'message' listeners/, 'one consumer style at a time');
  guest.tx.tryWrite(bytes(2));
  ch.notify();
  assert.deepEqual(await pending, bytes(2));
  assert.equal(guest.tx.dataDoorbellNeeded(), false, 'cleared once data came');
  const got: number[] = [];
  const loop = (async () => {
    for await (const m of ch) got.push(m[0]);
  })();
  for (let i = 3; i < 40; i++) {
    while (!guest.tx.tryWrite(bytes(i))) {
      ch.notify();
      await tick();
    }
    ch.notify();
  }
  await tick();
  ch.close();
  await loop;
  assert.deepEqual(got, Array.from({ length: 37 }, (_, i) => i + 3));
  assert.equal(ch.stats().toHost.messages, 39);
});

test('push: message events drain on notify; pull methods refuse meanwhile; removing the listener returns to pull', async () => {
  const { ch, guest } = harness();
  guest.tx.tryWrite(bytes(1));
  const got: number[] = [];
  const fn = (m: Uint8Array) => got.push(m[0]);
  ch.on('message', fn);
  await tick();
  assert.deepEqual(got, [1], 'what was waiting is delivered on the next tick');
  assert.throws(() => ch.tryRecv(), /'message' listeners/);
  assert.throws(() => ch.drain(() => {}), /'message' listeners/);
  guest.tx.tryWrite(bytes(2));
  guest.tx.tryWrite(bytes(3));
  ch.notify();
  assert.deepEqual(got, [1, 2, 3]);
  ch.off('message', fn);
  guest.tx.tryWrite(bytes(4));
  ch.notify();
  assert.deepEqual(ch.tryRecv(), bytes(4));
  assert.equal(ch.tryRecv(), null);
});

test('drain and readable: everything at once through a reused buffer; the space interrupt is checked after', async () => {
  const { ch, guest, counters } = harness(256);
  let n = 0;
  while (guest.tx.tryWrite(bytes(n & 0xff, 1, 2))) n++;
  assert.equal(guest.tx.prepareWaitSpace(3), true, 'the guest waits for space');
  const seen: number[] = [];
  assert.equal(await ch.readable(), true);
  assert.equal(ch.drain((m) => seen.push(m[0])), n);
  assert.deepEqual(seen, Array.from({ length: n }, (_, i) => i));
  assert.equal(counters.interrupts, 1, 'one interrupt for the whole drain');
  assert.equal(ch.drain(() => {}), 0);
});

test('drain copies (word copy and large messages, any length), drainFrames hands out in place; neither is disturbed by a throwing callback', () => {
  const { ch, guest } = harness(4096);
  const lens = [0, 1, 3, 4, 5, 63, 64, 65, 255, 256, 257, 1000, 0, 7];
  const msg = (i: number, len: number) => Uint8Array.from({ length: len }, (_, k) => (i * 31 + k) & 0xff);
  const send = () => lens.forEach((len, i) => assert.ok(guest.tx.tryWrite(msg(i, len))));
  send();
  const got: Uint8Array[] = [];
  assert.equal(ch.drain((m) => got.push(m.slice())), lens.length);
  assert.deepEqual(got, lens.map((len, i) => msg(i, len)));
  send();
  const inPlace: Uint8Array[] = [];
  assert.equal(ch.drainFrames((d, o, l) => void inPlace.push(d.slice(o, o + l)), 5), 5);
  assert.equal(ch.drainFrames((d, o, l) => {
    inPlace.push(d.slice(o, o + l));
    if (inPlace.length === 8) return false;
  }), 3, 'false stops after that message');
  assert.equal(ch.drainFrames((d, o, l) => void inPlace.push(d.slice(o, o + l))), lens.length - 8);
  assert.deepEqual(inPlace, lens.map((len, i) => msg(i, len)));
  send();
  assert.throws(() => ch.drain(() => {
    throw new Error('user bug');
  }), /user bug/);
  assert.equal(ch.state, 'open', "the callback's own error does not close the channel");
  assert.equal(ch.stats().toHost.messages, 3 * lens.length - lens.length + 1, 'the message whose callback threw was taken');
  assert.throws(() => ch.drainFrames(() => void ch.tryRecv()), /readBatch/, 'reading the same channel from inside the callback is refused');
  assert.equal(ch.state, 'open');
  assert.equal(ch.drain(() => {}), lens.length - 2);
});

test('drainFrames: a corrupt frame closes the channel after the good messages were handed out', () => {
  const { ch, guest, region, L } = harness(256);
  guest.tx.tryWrite(bytes(7));
  guest.tx.tryWrite(bytes(8));
  const dv = new DataView(region.buffer);
  dv.setUint32(L.toHost.offset + 0x180 + 16, 0x10000000, true);
  const got: number[] = [];
  assert.equal(ch.drainFrames((d, o) => void got.push(d[o])), 1);
  assert.deepEqual(got, [7]);
  assert.equal(ch.state, 'closed');
  assert.throws(() => ch.tryRecv(), (e: unknown) => e instanceof RingCorruptedError && e.fault === 'bad-length');
});

test('send: backpressure queues in order behind a full ring, flushed when the guest rings back; interrupts when the guest waits for data', async () => {
  const { ch, guest, counters } = harness(256);
  assert.equal(guest.rx.prepareWaitData(), true);
  const sends: Promise<void>[] = [];
  for (let i = 0; i < 100; i++) sends.push(ch.send(bytes(i, 0, 0, 0, 0, 0, 0, 0, 0)));
  assert.ok(counters.interrupts >= 1, 'the waiting guest was interrupted');
  assert.ok(ch.stats().pending.sends > 0);
  const got: number[] = [];
  const msg = bytes(9, 9);
  msg[0] = 200;
  const late = ch.send(msg);
  msg[0] = 201; // a queued message was copied
  while (got.length < 101) {
    for (let m = guest.rx.tryRead(); m; m = guest.rx.tryRead()) got.push(m[0]);
    if (guest.rx.spaceDoorbellNeeded()) ch.notify();
    await tick();
  }
  await Promise.all([...sends, late]);
  assert.deepEqual(got, [...Array.from({ length: 100 }, (_, i) => i), 200]);
  assert.equal(ch.stats().waits.send, 1);
  assert.equal(guest.rx.spaceDoorbellNeeded(), false, 'want_space cleared once the queue emptied');
  await assert.rejects(ch.send(new Uint8Array(ch.maxMessageSize + 1)), RangeError);
});

test('a full ring with a guest that never rings back is still flushed by the fallback timer', async () => {
  const { ch, guest } = harness(64);
  const sends = Array.from({ length: 10 }, (_, i) => ch.send(bytes(i)));
  const got: number[] = [];
  while (got.length < 10) {
    for (let m = guest.rx.tryRead(); m; m = guest.rx.tryRead()) got.push(m[0]);
    await new Promise((r) => setTimeout(r, 2));
  }
  await Promise.all(sends);
  assert.deepEqual(got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
});

test('polling mode: the poll loop finds data and room without any notify()', async () => {
  const { ch, guest } = harness(64, { mode: 'polling', vector: 0 });
  const got: number[] = [];
  const reader = (async () => {
    for await (const m of ch) {
      got.push(m[0]);
      if (got.length === 50) break;
    }
  })();
  const sends = Array.from({ length: 30 }, (_, i) => ch.send(bytes(i)));
  const rx: number[] = [];
  for (let i = 0; i < 50;) {
    if (guest.tx.tryWrite(bytes(i))) i++;
    for (let m = guest.rx.tryRead(); m; m = guest.rx.tryRead()) rx.push(m[0]);
    await tick();
  }
  await reader;
  while (rx.length < 30) {
    for (let m = guest.rx.tryRead(); m; m = guest.rx.tryRead()) rx.push(m[0]);
    await tick();
  }
  await Promise.all(sends);
  assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => i));
  assert.deepEqual(rx, Array.from({ length: 30 }, (_, i) => i));
  ch.close();
});

test('corruption: the channel closes with the reason, both close words are set, the iterator throws, later calls fail', async () => {
  const { ch, guest, counters, region, L } = harness(256);
  const infos: ChannelCloseInfo[] = [];
  ch.on('closed', (i: ChannelCloseInfo) => infos.push(i));
  guest.tx.tryWrite(bytes(7));
  const sent = [ch.send(new Uint8Array(120)), ch.send(new Uint8Array(120))]; // fit exactly
  const queued = ch.send(new Uint8Array(120)); // waits for space
  // A frame length far above the maximum, published by moving prod.
  const dv = new DataView(region.buffer);
  const data = L.toHost.offset + 0x180;
  dv.setUint32(data + 16, 0x10000000, true);
  dv.setUint32(L.toHost.offset + RING_OFF.prod, 32, true);
  const got: number[] = [];
  await assert.rejects((async () => {
    for await (const m of ch) got.push(m[0]);
  })(), (e: unknown) => e instanceof RingCorruptedError && e.fault === 'bad-length');
  await Promise.all(sent);
  await assert.rejects(queued, RingCorruptedError);
  assert.deepEqual(got, [7]);
  assert.equal(ch.state, 'closed');
  assert.equal(counters.closed, 1);
  assert.deepEqual(infos.map((i) => [i.by, i.fault]), [['host', 'bad-length']]);
  assert.equal(dv.getUint32(L.toHost.offset + RING_OFF.close, true), 0x105);
  assert.equal(dv.getUint32(L.toGuest.offset + RING_OFF.close, true), 0x105, 'the guest learns it on its receive ring too');
  assert.throws(() => ch.tryRecv(), RingCorruptedError);
  assert.throws(() => ch.suspend(), RingCorruptedError);
  assert.equal(ch.kick(), false);
});

test("without an 'error' listener, corruption never throws out of notify(); the reader that finds it gets the error", () => {
  const { ch, region, L } = harness(256);
  new DataView(region.buffer).setUint32(L.toHost.offset + RING_OFF.prod, 12, true); // misaligned
  assert.doesNotThrow(() => ch.notify());
  assert.equal(ch.state, 'open', 'nobody looked yet: notify() alone does not read without a consumer');
  assert.throws(() => ch.tryRecv(), (e: unknown) => e instanceof RingCorruptedError && e.fault === 'index-out-of-range');
});

test('guest close: messages sent before it are kept and delivered, then the stream ends; a guest close word ends it too', async () => {
  const { ch, guest } = harness(256);
  for (let i = 0; i < 5; i++) guest.tx.tryWrite(bytes(i));
  ch.closeFromGuest();
  assert.equal(ch.state, 'closed');
  assert.equal(ch.closeInfo?.by, 'guest');
  assert.equal(guest.tx.fault, undefined);
  assert.throws(() => guest.tx.tryWrite(bytes(9)), /peer-closed/);
  const got: number[] = [];
  for await (const m of ch) got.push(m[0]);
  assert.deepEqual(got, [0, 1, 2, 3, 4]);
  await assert.rejects(ch.send(bytes(1)), ChannelClosedError);

  const h = harness(256);
  const recv = h.ch.recv();
  await tick();
  // The guest closes its ring itself (kt_ring_close with KT_RING_FAULT_CLOSED): (2 << 8) | 10.
  new DataView(h.region.buffer).setUint32(h.L.toHost.offset + RING_OFF.close, 0x20a, true);
  h.ch.notify();
  assert.equal(await recv, null);
  assert.deepEqual([h.ch.closeInfo?.by, h.ch.closeInfo?.error], ['guest', undefined]);
});

test('suspend/resume: nothing is consumed or produced while suspended; resume re-attaches at the indices the other side left', async () => {
  const { ch, guest, region, L } = harness(256);
  ch.suspend();
  guest.tx.tryWrite(bytes(1));
  guest.tx.tryWrite(bytes(2));
  ch.notify();
  assert.equal(ch.tryRecv(), null);
  const sent = ch.send(bytes(42));
  await tick();
  assert.equal(guest.rx.tryRead(), null, 'no production while suspended');
  // The other process consumes message 1 and produces one of its own.
  const other = { rx: Ring.attach(region.subarray(L.toHost.offset, L.toHost.offset + L.toHost.size)), tx: Ring.attach(region.subarray(L.toGuest.offset, L.toGuest.offset + L.toGuest.size)) };
  assert.deepEqual(other.rx.tryRead(), bytes(1));
  other.tx.tryWrite(bytes(99));
  ch.resume();
  await sent;
  assert.deepEqual(ch.tryRecv(), bytes(2));
  assert.deepEqual([guest.rx.tryRead(), guest.rx.tryRead()], [bytes(99), bytes(42)]);
  assert.equal(ch.state, 'open');
});

test('resume onto a ring the other side left corrupt closes the channel', () => {
  const { ch, region, L } = harness(256);
  ch.suspend();
  new DataView(region.buffer).setUint32(L.toGuest.offset + RING_OFF.prod, 7, true);
  ch.resume();
  assert.equal(ch.state, 'closed');
  assert.equal(ch.closeInfo?.fault, 'index-out-of-range');
});

test('guestStopped: receivers get what is left then the end; queued sends are rejected; new sends too', async () => {
  const { ch, guest } = harness(64);
  guest.tx.tryWrite(bytes(1));
  const sends = Array.from({ length: 20 }, (_, i) => ch.send(bytes(i)));
  ch.guestStopped();
  assert.deepEqual(await ch.recv(), bytes(1));
  assert.equal(await ch.recv(), null);
  const results = await Promise.allSettled(sends);
  assert.ok(results.some((r) => r.status === 'fulfilled') && results.some((r) => r.status === 'rejected'));
  await assert.rejects(ch.send(bytes(1)), /not running/);
  ch.dispose();
  assert.equal(ch.closeInfo?.by, 'vm');
});

test('closing wakes a guest that sleeps waiting for data or space (it must see the close word), and only then', () => {
  const a = harness(256);
  assert.equal(a.guest.rx.prepareWaitData(), true);
  a.ch.close();
  assert.equal(a.counters.interrupts, 1);

  const b = harness(256);
  while (b.guest.tx.tryWrite(bytes(1))) {}
  assert.equal(b.guest.tx.prepareWaitSpace(1), true);
  b.ch.close();
  assert.equal(b.counters.interrupts, 1);

  const c = harness(256);
  c.ch.close();
  assert.equal(c.counters.interrupts, 0, 'no interrupt for a guest that is not waiting (it may have no handler)');
});
