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
import type { AffinityEvent, LoadStatus } from '../../src/upcall/upcall-host.js';
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

async function serve(t: { after: (f: () => void) => void }, opts: { delayMs?: number; frameTimeoutMs?: number; maxPipelined?: number } = {}) {
  const dir = mkdtempSync(join(os.tmpdir(), 'kvmtalk-ep-'));
  const fake = fakeTarget(opts.delayMs);
  const server = new UpcallServer(fake.target, {
    socketPath: join(dir, 't.upcall.sock'), tcp: { port: 0 }, tokenPath: join(dir, 't.upcall.token'),
    frameTimeoutMs: opts.frameTimeoutMs ?? 300, maxPipelined: opts.maxPipelined,
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
