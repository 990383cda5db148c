/**
 * The upcall endpoint's frame codec and server (docs/upcall-device.md, "Host endpoint protocol")
 * against a fake target, without KVM: well-formed requests, and malformed streams of every kind
 * (random bytes, bad magic, oversize, truncated, unknown types, flags, slow-loris) that must get
 * ERROR and a close while the server goes on serving well-formed clients.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { UpcallClient } from '../../src/upcall/client.js';
import { UpcallServer, type UpcallTarget } from '../../src/upcall/endpoint-server.js';
import {
  encodeFrame, FRAME_MAGIC, FrameError, FrameReader, helloPayload, loadPayload, MSG, parseError, parseResult, type Frame,
} from '../../src/upcall/frames.js';
import { UpcallState } from '../../src/devices/upcall-device.js';
import { UpcallHost, type AffinityEvent, type LoadStatus } from '../../src/upcall/upcall-host.js';
import { rng } from '../helpers/rng.js';

test('frames: encode/decode round trip, split at every byte; header errors', () => {
  const frames = [encodeFrame(MSG.HELLO, 0, helloPayload()), encodeFrame(MSG.LOAD, 7, loadPayload(3, new Uint8Array([1, 2, 3]))), encodeFrame(MSG.UNLOAD, 0xffffffff, new Uint8Array(4))];
  const all = Buffer.concat(frames);
  for (let cut = 0; cut <= all.length; cut++) {
    const r = new FrameReader();
    const got = [...r.push(all.subarray(0, cut)).frames, ...r.push(all.subarray(cut)).frames];
    assert.deepEqual(got.map((f) => [f.type, f.id, Buffer.from(f.payload).toString('hex')]), [
      [MSG.HELLO, 0, '0100000000000000'], [MSG.LOAD, 7, '03000000010203'], [MSG.UNLOAD, 0xffffffff, '00000000'],
    ]);
    assert.equal(r.partial, false);
  }
  const bad = (mutate: (b: Buffer) => void, re: RegExp) => {
    const b = encodeFrame(MSG.UNLOAD, 1, new Uint8Array(4));
    mutate(b);
    const r = new FrameReader();
    const out = r.push(Buffer.concat([encodeFrame(MSG.HELLO, 3, helloPayload()), b]));
    assert.equal(out.frames.length, 1, 'the good frame before the bad header is kept');
    assert.ok(out.error instanceof FrameError && re.test(out.error.message), out.error?.message);
    assert.equal(r.push(encodeFrame(MSG.HELLO, 4, helloPayload())).error, out.error, 'and the stream stays broken');
  };
  bad((b) => b.writeUInt32LE(0x12345678, 0), /bad frame magic/);
  bad((b) => b.writeUInt16LE(1, 6), /flags must be 0/);
  bad((b) => b.writeUInt16LE(99, 4), /unknown frame type 99/);
  bad((b) => b.writeUInt16LE(0, 4), /unknown frame type 0/);
  bad((b) => b.writeUInt32LE(65537, 12), /exceeds 65536/);
  assert.throws(() => loadPayload(-1, new Uint8Array(1)), RangeError);
  assert.throws(() => loadPayload(1, new Uint8Array(65521)), RangeError);
  assert.deepEqual(parseResult(Buffer.from('eaffffff0400000009000000', 'hex')), { status: -22, pc: 4, seq: 9 });
});

/** A target that answers every LOAD after `delayMs` with status -(hook) and records what it got. */
function fakeTarget(delayMs = 0) {
  const got: { hook: number; bytes: number[] }[] = [];
  const listeners = new Set<(e: AffinityEvent) => void>();
  let seq = 0;
  const answer = (hook: number): Promise<LoadStatus> => new Promise((res) => setTimeout(() => res({ status: -hook, pc: null, seq: ++seq }), delayMs));
  const target: UpcallTarget = {
    deliver: (image, hook) => {
      got.push({ hook, bytes: [...image] });
      return answer(hook);
    },
    unload: (hook) => answer(hook),
    onAffinity: (l) => {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    hello: { deviceVersion: 1, vcpus: 2, maxProgram: 65536 },
  };
  return { target, got, affinity: (e: AffinityEvent) => listeners.forEach((l) => l(e)) };
}

async function serve(
  t: { after: (f: () => void) => void },
  opts: { delayMs?: number; frameTimeoutMs?: number; maxPipelined?: number; maxUnreadOutput?: number; target?: UpcallTarget } = {},
) {
  const dir = mkdtempSync(join(os.tmpdir(), 'kvmtalk-ep-'));
  const fake = fakeTarget(opts.delayMs);
  const server = new UpcallServer(opts.target ?? fake.target, {
    socketPath: join(dir, 't.upcall.sock'), tcp: { port: 0 }, tokenPath: join(dir, 't.upcall.token'),
    frameTimeoutMs: opts.frameTimeoutMs ?? 300, maxPipelined: opts.maxPipelined, maxUnreadOutput: opts.maxUnreadOutput,
  });
  await server.ready;
  t.after(() => {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { server, dir, ...fake };
}

/** Sends raw bytes (in pieces, `gapMs` apart) and collects every frame until the server closes. */
function raw(path: string, pieces: Uint8Array[], gapMs = 0): Promise<Frame[]> {
  return new Promise((resolve, reject) => {
    const s: Socket = connect(path);
    const reader = new FrameReader();
    const frames: Frame[] = [];
    s.on('data', (c) => frames.push(...reader.push(c).frames));
    s.on('error', () => undefined);
    s.on('close', () => resolve(frames));
    const timer = setTimeout(() => reject(new Error('the server did not close the connection')), 5000);
    s.on('close', () => clearTimeout(timer));
    s.on('connect', async () => {
      for (const p of pieces) {
        if (s.destroyed) return;
        s.write(p);
        if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
      }
    });
  });
}

const hello = () => encodeFrame(MSG.HELLO, 1, helloPayload());

test('endpoint: HELLO, pipelined LOAD/UNLOAD answered by id, bad arguments keep the connection, AFFINITY events', async (t) => {
  const { server, got, affinity } = await serve(t, { delayMs: 5 });
  const c = await UpcallClient.connect({ socket: server.info.socket });
  assert.deepEqual(c.hello, { version: 1, deviceVersion: 1, vcpus: 2, maxProgram: 65536 });
  const events: AffinityEvent[] = [];
  c.on('affinity', (e: AffinityEvent) => events.push(e));
  const rs = await Promise.all([c.load(1, new Uint8Array([9, 8])), c.unload(2), c.load(3, new Uint8Array(65520))]);
  assert.deepEqual(rs.map((r) => r.status), [-1, -2, -3]);
  assert.deepEqual(got.map((g) => [g.hook, g.bytes.length]), [[1, 2], [3, 65520]]);
  affinity({ vcpu: 1, hostCpu: 0, result: -22 });
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(events, [{ vcpu: 1, hostCpu: 0, result: -22 }]);
  c.close();
});

test('endpoint: too many requests in flight get -EBUSY; the others are answered', async (t) => {
  const { server } = await serve(t, { delayMs: 50, maxPipelined: 2 });
  const c = await UpcallClient.connect({ socket: server.info.socket });
  const rs = await Promise.allSettled([1, 2, 3, 4].map((h) => c.unload(h)));
  assert.deepEqual(rs.map((r) => r.status), ['fulfilled', 'fulfilled', 'rejected', 'rejected']);
  assert.match(String((rs[2] as PromiseRejectedResult).reason), /too many requests/);
  c.close();
});

test('endpoint: malformed streams get ERROR and a close; the server keeps serving', async (t) => {
  const { server, got } = await serve(t, { frameTimeoutMs: 200 });
  const path = server.info.socket;
  const header = (type: number, flags: number, len: number) => {
    const b = Buffer.alloc(16);
    b.writeUInt32LE(FRAME_MAGIC, 0);
    b.writeUInt16LE(type, 4);
    b.writeUInt16LE(flags, 6);
    b.writeUInt32LE(1, 8);
    b.writeUInt32LE(len, 12);
    return b;
  };
  const cases: [string, Uint8Array[], number, RegExp][] = [
    ['bad magic', [Buffer.from('GET / HTTP/1.1\r\n\r\n')], 0, /bad frame magic/],
    ['oversize length', [hello(), header(MSG.LOAD, 0, 65537)], 0, /exceeds 65536/],
    ['unknown type', [hello(), header(42, 0, 0)], 0, /unknown frame type 42/],
    ['non-zero flags', [hello(), header(MSG.UNLOAD, 1, 4), Buffer.alloc(4)], 0, /flags must be 0/],
    ['request before HELLO', [encodeFrame(MSG.UNLOAD, 5, Buffer.alloc(4))], 0, /first frame must be HELLO/],
    ['HELLO twice', [hello(), hello()], 0, /HELLO twice/],
    ['a reply type from the client', [hello(), encodeFrame(MSG.RESULT, 1, Buffer.alloc(12))], 0, /not a request/],
    ['truncated payload', [hello(), header(MSG.LOAD, 0, 100), Buffer.alloc(10)], 0, /timed out/],
    ['slow loris header', [...Buffer.from(encodeFrame(MSG.HELLO, 1, helloPayload())).subarray(0, 10)].map((b) => Buffer.from([b])), 60, /timed out/],
    ['silent client', [], 0, /timed out/],
    ['bad HELLO version', [encodeFrame(MSG.HELLO, 1, Buffer.from('0200000000000000', 'hex'))], 0, /protocol version 2/],
  ];
  for (const [name, pieces, gap, re] of cases) {
    const frames = await raw(path, pieces, gap);
    const last = frames.at(-1);
    assert.equal(last?.type, MSG.ERROR, `${name}: ${JSON.stringify(frames.map((f) => f.type))}`);
    assert.match(parseError(last!.payload).message, re, name);
  }
  // Bad arguments are not framing errors: ERROR with the id, the connection stays.
  const frames = await raw(path, [hello(), encodeFrame(MSG.LOAD, 9, Buffer.alloc(3)), encodeFrame(MSG.UNLOAD, 10, Buffer.alloc(2)), header(7, 7, 0)]);
  assert.deepEqual(frames.map((f) => [f.type, f.id]), [[MSG.HELLO_OK, 1], [MSG.ERROR, 9], [MSG.ERROR, 10], [MSG.ERROR, 0]]);
  // Random garbage, 200 connections' worth.
  const next = rng(7);
  for (let i = 0; i < 200; i++) {
    const bytes = Buffer.from(Array.from({ length: 4 + Math.floor(next() * 64) }, () => Math.floor(next() * 256)));
    if (i % 2) bytes.writeUInt32LE(FRAME_MAGIC, 0); // past the magic, into the other checks
    const out = await raw(path, [bytes]);
    assert.ok(out.length === 0 || out.at(-1)!.type === MSG.ERROR);
  }
  const c = await UpcallClient.connect({ socket: path });
  assert.equal((await c.load(4, new Uint8Array([1]))).status, -4);
  assert.equal(got.length, 1);
  c.close();
});

test('endpoint TCP: loopback only, right token accepted, wrong or missing token refused', async (t) => {
  const { server, dir } = await serve(t);
  const tcp = server.info.tcp!;
  assert.equal(tcp.host, '127.0.0.1');
  const ok = await UpcallClient.connect({ tcp, tokenFile: tcp.tokenPath });
  assert.equal((await ok.unload(6)).status, -6);
  ok.close();
  const wrong = join(dir, 'wrong');
  writeFileSync(wrong, '00'.repeat(32));
  await assert.rejects(UpcallClient.connect({ tcp, tokenFile: wrong }), /bad token/);
  const frames = await new Promise<Frame[]>((resolve) => {
    const s = connect(tcp.port, tcp.host);
    const r = new FrameReader();
    const out: Frame[] = [];
    s.on('data', (c) => out.push(...r.push(c).frames));
    s.on('close', () => resolve(out));
    s.on('connect', () => s.write(hello())); // no token at all
  });
  assert.equal(frames.at(-1)?.type, MSG.ERROR);
  assert.throws(() => new UpcallServer(fakeTarget().target, { socketPath: join(dir, 'x.sock'), tcp: { port: 0, host: '0.0.0.0' }, tokenPath: join(dir, 'x.token') }), /loopback only/);
});

/** A valid HELLO header that promises a 64 KiB payload, and part of it: never a complete frame. */
function endlessHello(): Buffer {
  const b = Buffer.alloc(200);
  encodeFrame(MSG.HELLO, 1, Buffer.alloc(0)).copy(b);
  b.writeUInt32LE(65536, 12);
  return b;
}

/** Connects to `path` and writes `bytes` one byte every `gapMs`; resolves with the ms from connect to the server's close, and the frames. */
function trickle(path: string | { port: number; host: string }, bytes: Uint8Array, gapMs: number): Promise<{ ms: number; sent: number; frames: Frame[] }> {
  return new Promise((resolve, reject) => {
    const s = typeof path === 'string' ? connect(path) : connect(path.port, path.host);
    const reader = new FrameReader();
    const frames: Frame[] = [];
    let sent = 0;
    let t0 = 0;
    let iv: NodeJS.Timeout | undefined;
    s.on('data', (c) => frames.push(...reader.push(c).frames));
    s.on('error', () => undefined);
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`the server still holds a trickling connection after ${sent} bytes`));
    }, 3000);
    s.on('close', () => {
      clearTimeout(timer);
      clearInterval(iv);
      resolve({ ms: Date.now() - t0, sent, frames });
    });
    s.on('connect', () => {
      t0 = Date.now();
      iv = setInterval(() => {
        if (!s.destroyed && sent < bytes.length) s.write(bytes.subarray(sent, ++sent));
      }, gapMs);
    });
  });
}

test('endpoint: bytes trickled faster than the timeout extend neither the HELLO nor a frame deadline', { timeout: 15_000 }, async (t) => {
  const { server } = await serve(t, { frameTimeoutMs: 300 });
  const tcp = server.info.tcp!;
  // Before HELLO, on TCP (1 byte per 50 ms): closed 300 ms after connecting.
  const a = await trickle(tcp, endlessHello(), 50);
  assert.ok(a.ms >= 250 && a.ms < 900, `closed after ${a.ms} ms`);
  assert.match(parseError(a.frames.at(-1)!.payload).message, /no HELLO within 300 ms/);
  // After HELLO, a frame trickled in: closed 300 ms after its first byte.
  const s = connect(server.info.socket);
  const reader = new FrameReader();
  const frames: Frame[] = [];
  s.on('data', (c) => frames.push(...reader.push(c).frames));
  await new Promise((r) => s.once('connect', r));
  s.write(hello());
  // Complete frames spread over more than the timeout keep the connection.
  for (let i = 0; i < 6; i++) {
    await new Promise((r) => setTimeout(r, 100));
    s.write(encodeFrame(MSG.UNLOAD, 10 + i, Buffer.from([i, 0, 0, 0])));
  }
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(frames.map((f) => [f.type, f.id]), [[MSG.HELLO_OK, 1], ...[10, 11, 12, 13, 14, 15].map((id) => [MSG.RESULT, id])]);
  const closed = new Promise((r) => s.once('close', r));
  const frame = encodeFrame(MSG.LOAD, 20, loadPayload(1, new Uint8Array(100)));
  const t0 = Date.now();
  for (let i = 0; i < frame.length && !s.destroyed; i++) {
    s.write(frame.subarray(i, i + 1));
    await new Promise((r) => setTimeout(r, 50));
  }
  await closed;
  const ms = Date.now() - t0;
  assert.ok(ms >= 250 && ms < 900, `closed after ${ms} ms`);
  assert.match(parseError(frames.at(-1)!.payload).message, /incomplete frame timed out/);
});

test('endpoint: trickling clients filling maxConnections are gone within the HELLO timeout; a token holder gets in', { timeout: 15_000 }, async (t) => {
  const { server } = await serve(t, { frameTimeoutMs: 300 });
  const tcp = server.info.tcp!;
  const squatters = Array.from({ length: 16 }, () => trickle(tcp, endlessHello(), 100));
  await new Promise((r) => setTimeout(r, 100));
  // The 17th connection is refused while the squatters hold every slot...
  await assert.rejects(UpcallClient.connect({ tcp, tokenFile: tcp.tokenPath, timeoutMs: 200 }));
  for (const s of await Promise.all(squatters)) assert.ok(s.ms < 900 && s.sent < 10, `a squatter lasted ${s.ms} ms, ${s.sent} bytes`);
  // ...and accepted once they are gone.
  const c = await UpcallClient.connect({ tcp, tokenFile: tcp.tokenPath });
  assert.equal((await c.unload(5)).status, -5);
  c.close();
});

/** A raw connection that has said HELLO and been answered. */
async function helloed(path: string): Promise<{ s: Socket; frames: Frame[] }> {
  const s = connect(path);
  const reader = new FrameReader();
  const frames: Frame[] = [];
  s.on('data', (c) => frames.push(...reader.push(c).frames));
  s.on('error', () => undefined);
  await new Promise((r) => s.once('connect', r));
  s.write(hello());
  for (let wait = 0; frames.length === 0 && wait < 500; wait++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(frames[0]?.type, MSG.HELLO_OK);
  return { s, frames };
}

const tick = () => new Promise((r) => setImmediate(r));

test('endpoint: a client that stops reading gets at most maxUnreadOutput of AFFINITY_EVENTs; the rest are dropped and counted', { timeout: 15_000 }, async (t) => {
  const LIMIT = 4096;
  const { server, affinity } = await serve(t, { maxUnreadOutput: LIMIT });
  const { s, frames } = await helloed(server.info.socket);
  const reader = await helloed(server.info.socket); // a client that reads: gets every event
  s.pause();
  // Bursts of 100 (2,800 bytes, under the limit): a client that reads keeps up with every one.
  const N = 50_000;
  for (let round = 0; round < N / 100; round++) {
    for (let i = 0; i < 100; i++) affinity({ vcpu: 0, hostCpu: 1, result: round });
    for (let wait = 0; reader.frames.length < 1 + (round + 1) * 100 && wait < 500; wait++) await new Promise((r) => setTimeout(r, 1));
  }
  // What the socket holds is the limit plus what the kernel took, not 50,000 × 28 bytes.
  const dropped = server.droppedEvents;
  assert.ok(dropped > N - 10_000, `only ${dropped} of ${N} events dropped`);
  s.resume();
  const deadline = Date.now() + 5000;
  while (frames.length < 1 + N - dropped && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(frames.length, 1 + N - dropped, 'every event not dropped arrives, and no more');
  assert.ok(frames.slice(1).every((f) => f.type === MSG.AFFINITY_EVENT));
  assert.equal(reader.frames.length, 1 + N);
  // Reading again, it gets events and answers again.
  affinity({ vcpu: 1, hostCpu: 0, result: 0 });
  s.write(encodeFrame(MSG.UNLOAD, 77, Buffer.from([7, 0, 0, 0])));
  for (let wait = 0; frames.length < 3 + N - dropped && wait < 500; wait++) await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(frames.slice(-2).map((f) => [f.type, f.id]), [[MSG.AFFINITY_EVENT, 0], [MSG.RESULT, 77]]);
  assert.equal(server.droppedEvents, dropped);
  s.destroy();
  reader.s.destroy();
});

test('endpoint: replies a client does not read beyond maxUnreadOutput close its connection; others are served', { timeout: 15_000 }, async (t) => {
  const { server } = await serve(t, { maxUnreadOutput: 4096 });
  const { s, frames } = await helloed(server.info.socket);
  s.pause();
  const closed = new Promise((r) => s.once('close', r));
  // Each bad LOAD gets a ~70-byte ERROR: 100,000 of them are 7 MB no socket buffer holds.
  const bad = encodeFrame(MSG.LOAD, 9, Buffer.alloc(3));
  let written = 0;
  for (let i = 0; i < 1000 && !s.destroyed; i++) {
    s.write(Buffer.concat(Array.from({ length: 100 }, () => bad)));
    written += 100;
    await tick();
  }
  s.resume();
  let timer: NodeJS.Timeout | undefined;
  const gaveUp = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('the server kept a connection with unread replies')), 5000)));
  await Promise.race([closed, gaveUp]);
  clearTimeout(timer);
  // The close may reset the connection (its requests unread): what came is some replies, never all.
  assert.ok(frames.length < 1 + written, `${frames.length} frames for ${written} requests`);
  const c = await UpcallClient.connect({ socket: server.info.socket });
  assert.equal((await c.unload(3)).status, -3);
  c.close();
});

test('endpoint with an UpcallHost: a closed connection withdraws its queued commands; a full queue answers -EBUSY', { timeout: 15_000 }, async (t) => {
  const host = new UpcallHost(UpcallState.create(1), { raiseIrq: () => undefined, maxPending: 6 });
  t.after(() => host.cancelAll('test over', true));
  const { server } = await serve(t, {
    target: {
      deliver: (image, hook, signal) => host.deliver(image, hook, signal),
      unload: (hook, signal) => host.unload(hook, signal),
      onAffinity: (l) => host.onAffinity(l),
      hello: { deviceVersion: 1, vcpus: 1, maxProgram: host.maxProgram },
    },
  });
  const a = await UpcallClient.connect({ socket: server.info.socket });
  const b = await UpcallClient.connect({ socket: server.info.socket });
  const fromA = [1, 2, 3, 4].map((h) => a.load(h, new Uint8Array([h])));
  const fromB = [5, 6, 7].map((h) => b.unload(h));
  for (const p of [...fromA, ...fromB]) p.catch(() => undefined);
  // Six pending (the guest never answers): B's third is refused by the host's queue.
  await assert.rejects(fromB[2]!, (e: Error & { errno?: number }) => e.errno === -16 && /queue is full/.test(e.message));
  assert.equal(host.pendingCommands, 6);
  assert.equal(host.state.visibleSeq, 1, 'A\'s first command is the one posted');
  a.close();
  for (let wait = 0; host.pendingCommands > 3 && wait < 500; wait++) await new Promise((r) => setTimeout(r, 5));
  await new Promise((r) => setTimeout(r, 20));
  // A's posted command stays (the guest may be loading it); its three queued ones are gone, B's stay.
  assert.equal(host.pendingCommands, 3);
  const more = b.unload(8);
  more.catch(() => undefined);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(host.pendingCommands, 4);
  b.close();
});
