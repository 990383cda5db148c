/**
 * The control socket without KVM: line framing (garbage, oversized lines, invalid JSON, unknown
 * ops), a server over a fake target that survives all of it, attach/detach/kick bookkeeping, the
 * runtime directory (0700, socket 0600, stale entries, unique names, foreign owners), and
 * attachChannel end to end over a real memfd (the "guest" ends of the rings are driven here).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { formatChannel, channelBytes } from '../../src/channel/channel.js';
import { Ring } from '../../src/channel/ring.js';
import { attachChannel } from '../../src/control/attach.js';
import { ControlClient, ControlError } from '../../src/control/client.js';
import { serveControl, type ControlChannel, type ControlTarget } from '../../src/control/control-server.js';
import { LineError, LineSplitter, MAX_LINE, parseMessage } from '../../src/control/protocol.js';
import {
  claimVmName, ensureRuntimeDir, findVm, listVms, processStartTime, RuntimeDirError, runtimeDirPath, vmPaths,
} from '../../src/control/runtime-dir.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';

const tmpRoot = mkdtempSync(join(os.tmpdir(), 'kvmtalk-ctl-'));
after(() => rmSync(tmpRoot, { recursive: true, force: true }));
let dirs = 0;
/** A fresh runtime directory path (not created). */
const freshDir = () => join(tmpRoot, `rt${dirs++}`);

// ---- Line framing ------------------------------------------------------------------------------

test('LineSplitter: lines across chunks, CRLF, empty lines, multi-byte UTF-8 split between chunks', () => {
  const s = new LineSplitter();
  assert.deepEqual(s.push(Buffer.from('{"a":1}\n{"b"')), ['{"a":1}']);
  assert.deepEqual(s.push(Buffer.from(':2}\r\n\n')), ['{"b":2}', '']);
  const euro = Buffer.from('"€"\n');
  assert.deepEqual(s.push(euro.subarray(0, 2)), []);
  assert.deepEqual(s.push(euro.subarray(2)), ['"€"']);
  assert.equal(s.pending, 0);
});

test('LineSplitter: a line of exactly the limit passes; one byte more fails without buffering it, and stays failed', () => {
  const s = new LineSplitter();
  const max = Buffer.alloc(MAX_LINE, 0x61);
  assert.deepEqual(s.push(Buffer.concat([max, Buffer.from('\n')])), [max.toString()]);
  // Fed in pieces with no newline: it fails as soon as the limit is passed, holding at most the limit.
  const t = new LineSplitter();
  for (let i = 0; i < 16; i++) t.push(Buffer.alloc(4096, 0x62));
  assert.equal(t.pending, MAX_LINE);
  assert.throws(() => t.push(Buffer.from('c')), LineError);
  assert.equal(t.pending, 0);
  assert.throws(() => t.push(Buffer.from('\n')), LineError);
});

test('LineSplitter: bytes that are not UTF-8 are a framing error', () => {
  assert.throws(() => new LineSplitter().push(Buffer.from([0x7b, 0xff, 0xfe, 0x7d, 0x0a])), /not valid UTF-8/);
});

test('parseMessage: only JSON objects', () => {
  assert.deepEqual(parseMessage('{"op":"describe"}'), { op: 'describe' });
  for (const bad of ['', 'nope', '{"op":', '[1,2]', '42', 'null', '"describe"']) assert.throws(() => parseMessage(bad), LineError, bad);
});

// ---- Server over a fake target --------------------------------------------------------------------

interface FakeChannel extends ControlChannel {
  calls: string[];
}

function fakeChannel(id: number, name: string, state = 'open'): FakeChannel {
  const calls: string[] = [];
  return {
    id, name, gpa: 0x201000 + id * 0x3000, size: 0x3000, mode: 'hypercall', state, vector: 0x40,
    toHost: { offset: 0x80, size: 0x1180, capacity: 0x1000 }, toGuest: { offset: 0x1200, size: 0x1180, capacity: 0x1000 },
    calls,
    suspend: () => void calls.push('suspend'),
    resume: () => void calls.push('resume'),
    kick: () => (calls.push('kick'), true),
  };
}

function fakeTarget(channels: FakeChannel[]): ControlTarget {
  return { memory: { fd: 7, size: 64 << 20, pageSize: 4096 }, directory: { gpa: 0x200000, size: 0x1000 }, channels: () => channels };
}

/** A raw connection: write bytes, collect reply lines, see when the server closes it. */
class Raw {
  readonly lines: string[] = [];
  closed = false;
  readonly #socket: Socket;
  #buf = '';
  constructor(path: string) {
    this.#socket = connect(path);
    this.#socket.on('data', (d) => {
      this.#buf += d.toString();
      let nl: number;
      while ((nl = this.#buf.indexOf('\n')) >= 0) {
        this.lines.push(this.#buf.slice(0, nl));
        this.#buf = this.#buf.slice(nl + 1);
      }
    });
    this.#socket.on('error', () => undefined);
    this.#socket.on('close', () => (this.closed = true));
  }
  write(data: string | Buffer): void {
    this.#socket.write(data);
  }
  async reply(n = 1): Promise<Record<string, unknown>> {
    await until(() => this.lines.length >= n || this.closed, `reply ${n}`);
    assert.ok(this.lines.length >= n, `connection closed before reply ${n}`);
    return JSON.parse(this.lines[n - 1]) as Record<string, unknown>;
  }
  async closedByServer(): Promise<void> {
    await until(() => this.closed, 'the server to close the connection');
  }
  destroy(): void {
    this.#socket.destroy();
  }
}

async function until(pred: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('server: runtime directory 0700, socket 0600, JSON entry; files removed on close', async () => {
  const dir = freshDir();
  const server = serveControl(fakeTarget([]), { dir, name: 'perm-test' });
  await server.ready;
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  const st = statSync(server.path);
  assert.ok(st.isSocket());
  assert.equal(st.mode & 0o777, 0o600);
  const entry = JSON.parse(readFileSync(join(dir, 'perm-test.json'), 'utf8')) as Record<string, unknown>;
  assert.equal(entry.pid, process.pid);
  assert.equal(entry.name, 'perm-test');
  assert.equal(entry.socket, server.path);
  assert.equal(statSync(join(dir, 'perm-test.json')).mode & 0o777, 0o600);
  assert.deepEqual(listVms(dir).map((v) => v.name), ['perm-test']);
  server.close();
  assert.equal(existsSync(server.path), false);
  assert.equal(existsSync(join(dir, 'perm-test.json')), false);
});

test('server: garbage, invalid JSON, non-objects and oversized lines get an error line and a closed connection; the server survives', async () => {
  const server = serveControl(fakeTarget([fakeChannel(0, 'c')]), { dir: freshDir() });
  await server.ready;
  try {
    const cases: (string | Buffer)[] = [
      'hello there\n',
      '{"op":"describe"\n',
      '[1,2,3]\n',
      Buffer.from([0xc3, 0x28, 0x0a]), // invalid UTF-8
      Buffer.alloc(MAX_LINE + 100, 0x78), // no newline at all: refused once past the limit
      Buffer.concat([Buffer.from('{"op":"describe","pad":"'), Buffer.alloc(MAX_LINE, 0x20), Buffer.from('"}\n')]),
    ];
    for (const data of cases) {
      const c = new Raw(server.path);
      c.write(data);
      const r = await c.reply();
      assert.equal(r.ok, false);
      assert.equal(typeof r.error, 'string');
      await c.closedByServer();
    }
    // A valid line followed by garbage in the same chunk: the valid one is answered first.
    const c = new Raw(server.path);
    c.write('{"op":"list"}\nnot json\n{"op":"list"}\n');
    assert.equal((await c.reply(1)).ok, true);
    assert.equal((await c.reply(2)).ok, false);
    await c.closedByServer();
    assert.equal(c.lines.length, 2);
    // Still serving.
    const client = await ControlClient.connect(server.path);
    const d = await client.request<{ name: string; memfd: number }>({ op: 'describe' });
    assert.equal(d.name, server.name);
    assert.equal(d.memfd, 7);
    await client.close();
  } finally {
    server.close();
  }
});

test('server: unknown ops, missing fields and unknown channels are error replies on a connection that stays open', async () => {
  const chans = [fakeChannel(0, 'alpha'), fakeChannel(1, 'beta')];
  const server = serveControl(fakeTarget(chans), { dir: freshDir() });
  await server.ready;
  try {
    const client = await ControlClient.connect(server.path);
    await assert.rejects(client.request({ op: 'reboot' }), (e: Error) => e instanceof ControlError && /unknown op 'reboot'/.test(e.message));
    await assert.rejects(client.request({ nothing: true }), /missing "op"/);
    await assert.rejects(client.request({ op: 'attach' }), /"channel" must be/);
    await assert.rejects(client.request({ op: 'attach', channel: 'gamma' }), /unknown channel 'gamma' \(channels: alpha, beta\)/);
    await assert.rejects(client.request({ op: 'kick', channel: 'alpha' }), /not attached on this connection/);
    const d = await client.request<{ protocol: number; pid: number; memSize: number; pageSize: number; channels: { name: string; state: string }[] }>({ op: 'describe', id: 'x1' });
    assert.equal(d.pid, process.pid);
    assert.equal(d.memSize, 64 << 20);
    assert.equal(d.pageSize, 4096);
    assert.deepEqual(d.channels.map((c) => [c.name, c.state]), [['alpha', 'open'], ['beta', 'open']]);
    assert.equal((d as unknown as { id: string }).id, 'x1');
    assert.equal(chans[0].calls.length, 0);
    await client.close();
  } finally {
    server.close();
  }
});

test('server: attach suspends, is exclusive, kick needs the holder, detach and a dropped connection resume', async () => {
  const chans = [fakeChannel(0, 'alpha'), fakeChannel(1, 'beta'), fakeChannel(2, 'gone', 'closed')];
  const server = serveControl(fakeTarget(chans), { dir: freshDir() });
  await server.ready;
  const events: string[] = [];
  server.on('attach', (n: string) => events.push(`attach ${n}`));
  server.on('detach', (n: string) => events.push(`detach ${n}`));
  try {
    const a = await ControlClient.connect(server.path);
    const b = await ControlClient.connect(server.path);
    const info = await a.request<{ channel: { name: string; gpa: number; toHost: { capacity: number }; vector: number; state: string } }>({ op: 'attach', channel: 'alpha' });
    assert.equal(info.channel.gpa, chans[0].gpa);
    assert.equal(info.channel.toHost.capacity, 0x1000);
    assert.equal(info.channel.vector, 0x40);
    assert.equal(info.channel.state, 'attached');
    assert.deepEqual(chans[0].calls, ['suspend']);
    // Attaching again on the same connection is a no-op; another connection is refused.
    await a.request({ op: 'attach', channel: 'alpha' });
    assert.deepEqual(chans[0].calls, ['suspend']);
    await assert.rejects(b.request({ op: 'attach', channel: 'alpha' }), /already attached by another process/);
    await assert.rejects(b.request({ op: 'kick', channel: 'alpha' }), /not attached on this connection/);
    await assert.rejects(b.request({ op: 'detach', channel: 'alpha' }), /not attached on this connection/);
    await assert.rejects(b.request({ op: 'attach', channel: 'gone' }), /channel 'gone' is closed/);
    assert.deepEqual(await a.request({ op: 'kick', channel: 'alpha' }), { ok: true, raised: true });
    const list = await b.request<{ channels: { name: string; attached: boolean }[] }>({ op: 'list' });
    assert.deepEqual(list.channels.map((c) => [c.name, c.attached]), [['alpha', true], ['beta', false], ['gone', false]]);
    assert.deepEqual(server.attachedChannels(), ['alpha']);
    // By id works too; explicit detach resumes.
    await b.request({ op: 'attach', channel: 1 });
    await b.request({ op: 'detach', channel: 'beta' });
    assert.deepEqual(chans[1].calls, ['suspend', 'resume']);
    // Closing a connection gives its channels back.
    await a.close();
    await until(() => chans[0].calls.length === 3, 'resume after the connection closed');
    assert.deepEqual(chans[0].calls, ['suspend', 'kick', 'resume']);
    assert.deepEqual(events, ['attach alpha', 'attach beta', 'detach beta', 'detach alpha']);
    // Now b may take it.
    await b.request({ op: 'attach', channel: 'alpha' });
    await b.close();
    await until(() => chans[0].calls.length === 5, 'second resume');
  } finally {
    server.close();
  }
});

test('server: a connection dropped mid-line (no newline) still resumes its channels; close() resumes and disconnects everyone', async () => {
  const chans = [fakeChannel(0, 'alpha')];
  const server = serveControl(fakeTarget(chans), { dir: freshDir() });
  await server.ready;
  const c = new Raw(server.path);
  c.write('{"op":"attach","channel":"alpha"}\n{"op":"des');
  assert.equal((await c.reply()).ok, true);
  c.destroy();
  await until(() => chans[0].calls.join() === 'suspend,resume', 'resume');
  const d = new Raw(server.path);
  d.write('{"op":"attach","channel":"alpha"}\n');
  assert.equal((await d.reply()).ok, true);
  server.close();
  await d.closedByServer();
  assert.deepEqual(chans[0].calls, ['suspend', 'resume', 'suspend', 'resume']);
  // A second close is harmless.
  server.close();
});

test('server: a client that never reads cannot make the server buffer without bound', async () => {
  const server = serveControl(fakeTarget(Array.from({ length: 40 }, (_, i) => fakeChannel(i, `channel-with-a-long-name-${i}`))), { dir: freshDir() });
  await server.ready;
  try {
    const socket = connect(server.path);
    socket.on('error', () => undefined);
    socket.pause(); // never read
    await new Promise((r) => socket.once('connect', r));
    const before = process.memoryUsage().heapUsed;
    const req = Buffer.from('{"op":"describe"}\n'.repeat(2000));
    for (let i = 0; i < 50; i++) socket.write(req); // 100 000 requests: ~600 MB of replies if all were answered
    await new Promise((r) => setTimeout(r, 500));
    const grown = process.memoryUsage().heapUsed - before;
    // Measured: ~20 MB with flow control, ~130 MB in the same time without it.
    assert.ok(grown < 60e6, `heap grew by ${(grown / 1e6).toFixed(0)} MB`);
    socket.destroy();
    // And it still answers others.
    const client = await ControlClient.connect(server.path);
    await client.request({ op: 'list' });
    await client.close();
  } finally {
    server.close();
  }
});

// ---- Runtime directory -----------------------------------------------------------------------------

test('runtime dir: default path follows XDG_RUNTIME_DIR, root, or /tmp; the override wins', () => {
  assert.equal(runtimeDirPath({ KVMTALK_RUNTIME_DIR: '/x/y' }), '/x/y');
  assert.equal(runtimeDirPath({ XDG_RUNTIME_DIR: '/run/user/1000' }), '/run/user/1000/kvmtalk');
  const uid = process.getuid!();
  assert.equal(runtimeDirPath({}), uid === 0 ? '/run/kvmtalk' : `/tmp/kvmtalk-${uid}`);
});

test('runtime dir: created 0700; a looser one of ours is tightened; a symlink, a file or a foreign owner is refused', (t) => {
  const dir = freshDir();
  ensureRuntimeDir(dir);
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  chmodSync(dir, 0o755);
  ensureRuntimeDir(dir);
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  const link = freshDir();
  symlinkSync(dir, link);
  assert.throws(() => ensureRuntimeDir(link), (e: Error) => e instanceof RuntimeDirError && /symbolic link/.test(e.message));
  const file = freshDir();
  writeFileSync(file, '');
  assert.throws(() => ensureRuntimeDir(file), RuntimeDirError);
  if (process.getuid!() !== 0) {
    t.diagnostic('not root: the foreign-owner case needs chown');
    return;
  }
  const foreign = freshDir();
  mkdirSync(foreign, { mode: 0o700 });
  chownSync(foreign, 65534, 65534);
  assert.throws(() => ensureRuntimeDir(foreign), (e: Error) => e instanceof RuntimeDirError && /owned by uid 65534, not by you/.test(e.message));
  assert.throws(() => serveControl(fakeTarget([]), { dir: foreign }), RuntimeDirError);
  // Root may still look into another user's directory (to attach to that user's VMs), read-only.
  assert.deepEqual(listVms(foreign), []);
  assert.equal(statSync(foreign).uid, 65534);
});

test('runtime dir: another user gets a one-line "permission denied", not a stack trace', (t) => {
  if (process.getuid!() !== 0) {
    t.skip('needs root to run a child as another user');
    return;
  }
  const dir = ensureRuntimeDir(freshDir());
  const mod = new URL('../../src/control/runtime-dir.js', import.meta.url).href;
  const script = `process.setgid(65534); process.setuid(65534);
    const m = await import(${JSON.stringify(mod)});
    try { m.listVms(${JSON.stringify(dir)}); console.log('listed'); } catch (e) { console.log(e.name + ': ' + e.message); }`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(r.stdout.trim(), `RuntimeDirError: permission denied reading runtime directory ${dir}: its VMs belong to another user (run as that user or root)`, r.stderr);
});

/** The pid of a process that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
  return Number(r.stdout.toString());
}

test('runtime dir: stale entries (dead pid, or a reused pid with another start time) are dropped and removed', () => {
  const dir = ensureRuntimeDir(freshDir());
  const dead = vmPaths(dir, 'dead');
  writeFileSync(dead.json, JSON.stringify({ name: 'dead', pid: deadPid(), socket: dead.socket }));
  writeFileSync(dead.socket, '');
  const reused = vmPaths(dir, 'reused');
  writeFileSync(reused.json, JSON.stringify({ name: 'reused', pid: process.pid, socket: reused.socket, startTime: processStartTime(process.pid)! - 1 }));
  const live = vmPaths(dir, 'live');
  writeFileSync(live.json, JSON.stringify({ name: 'live', pid: process.pid, socket: live.socket, startTime: processStartTime(process.pid) }));
  // Not entries: ignored and left alone.
  writeFileSync(join(dir, 'junk.json'), '{ not json');
  writeFileSync(join(dir, 'liar.json'), JSON.stringify({ name: 'other', pid: process.pid, socket: '/x' }));
  writeFileSync(join(dir, 'elsewhere.json'), JSON.stringify({ name: 'elsewhere', pid: process.pid, socket: '/run/kvmtalk/someone-else.sock' }));
  assert.deepEqual(listVms(dir).map((v) => v.name), ['live']);
  assert.equal(existsSync(dead.json), false);
  assert.equal(existsSync(dead.socket), false);
  assert.equal(existsSync(reused.json), false);
  assert.equal(existsSync(join(dir, 'junk.json')), true);
  assert.equal(findVm('live', dir).pid, process.pid);
  assert.equal(findVm(process.pid, dir).name, 'live');
  assert.throws(() => findVm('nope', dir), /unknown VM 'nope' .*running: live/);
  assert.deepEqual(listVms(join(tmpRoot, 'does-not-exist')), []);
});

test('runtime dir: names are unique; defaults are vm-<pid>[-n]; a live name is refused, a stale one taken over', () => {
  const dir = ensureRuntimeDir(freshDir());
  const a = claimVmName(dir);
  const b = claimVmName(dir);
  assert.match(a.name, new RegExp(`^vm-${process.pid}(-\\d+)?$`));
  assert.match(b.name, new RegExp(`^vm-${process.pid}-\\d+$`));
  assert.notEqual(a.name, b.name);
  claimVmName(dir, 'named');
  assert.throws(() => claimVmName(dir, 'named'), /a VM named 'named' is already running/);
  const stale = vmPaths(dir, 'stale');
  writeFileSync(stale.json, JSON.stringify({ name: 'stale', pid: deadPid(), socket: stale.socket }));
  assert.equal(claimVmName(dir, 'stale').pid, process.pid);
  for (const bad of ['', '-x', 'a/b', '../up', 'x'.repeat(65), 'sp ace']) assert.throws(() => claimVmName(dir, bad), RangeError, bad);
});

// ---- attachChannel over a real memfd, without KVM ---------------------------------------------------

test('attachChannel: maps the channel from /proc/<pid>/fd, reads and sends, kicks only when the guest waits, detaches on close', async () => {
  const mem = GuestMemory.create(4 << 20);
  const dir = freshDir();
  const gpa = 0x201000;
  const region = mem.slice(gpa, channelBytes(4096));
  const { layout } = formatChannel(region, 0, 4096);
  // The "guest" ends of the two rings, as the C SDK would hold them.
  const ringView = (p: { offset: number; size: number }) => region.subarray(p.offset, p.offset + p.size);
  const guestTx = Ring.attach(ringView(layout.toHost));
  const guestRx = Ring.attach(ringView(layout.toGuest));
  const chan: FakeChannel = { ...fakeChannel(0, 'mem'), gpa, size: region.length, toHost: layout.toHost, toGuest: layout.toGuest };
  const server = serveControl({ memory: { fd: mem.regions[0].fd, size: mem.size, pageSize: 4096 }, channels: () => [chan] }, { dir, name: 'memvm' });
  await server.ready;
  const enc = (s: string) => new TextEncoder().encode(s);
  const dec = (b: Uint8Array | null) => (b ? Buffer.from(b).toString() : null);
  try {
    guestTx.tryWrite(enc('before attach'));
    const ch = await attachChannel('memvm', 'mem', { dir });
    assert.deepEqual(chan.calls, ['suspend']);
    assert.equal(ch.info.gpa, gpa);
    assert.equal(dec(await ch.recv()), 'before attach');
    assert.equal(ch.tryRecv(), null);
    // Arrives while recv() polls.
    setTimeout(() => guestTx.tryWrite(enc('later')), 30);
    assert.equal(dec(await ch.recv()), 'later');
    // host → guest: no kick while the guest does not wait, one when it does.
    await ch.send('no kick');
    assert.equal(dec(guestRx.tryRead()), 'no kick');
    assert.equal(guestRx.prepareWaitData(), true);
    await ch.send(enc('kick me'));
    assert.deepEqual(chan.calls, ['suspend', 'kick']);
    assert.equal(dec(guestRx.tryRead()), 'kick me');
    guestRx.endWaitData();
    // A guest waiting for space is kicked after the attacher reads.
    let n = 0;
    while (guestTx.tryWrite(enc(`fill ${n}`))) n++;
    assert.equal(guestTx.prepareWaitSpace(16), true);
    assert.equal(dec(await ch.recv()), 'fill 0');
    await until(() => chan.calls.length === 3, 'the space kick');
    guestTx.endWaitSpace(); // the woken guest clears its flag: no more kicks
    for (let i = 1; i < n; i++) assert.equal(dec(await ch.recv()), `fill ${i}`);
    // The guest closing its ring ends the stream.
    guestTx.close('closed', 'guest done');
    assert.equal(await ch.recv(), null);
    assert.match(ch.endReason!, /channel closed/);
    await assert.rejects(ch.send('x'), /has ended/);
    await ch.close();
    await ch.close();
    await until(() => chan.calls.at(-1) === 'resume', 'detach');
    assert.deepEqual(chan.calls, ['suspend', 'kick', 'kick', 'resume']);
    // Another process (or this one) can attach now; an unknown channel is a one-line error.
    await assert.rejects(attachChannel('memvm', 'nope', { dir }), /unknown channel 'nope' \(channels: mem\)/);
  } finally {
    server.close();
    mem.close();
  }
});

test('attachChannel: a VM whose RAM cannot be shared, and a VMM that does not answer, are clear errors', async () => {
  const dir = freshDir();
  const server = serveControl({ memory: { fd: -1, size: 1 << 20, pageSize: 4096 }, channels: () => [fakeChannel(0, 'c')] }, { dir, name: 'anon' });
  await server.ready;
  try {
    await assert.rejects(attachChannel('anon', 'c', { dir }), /cannot map \(anonymous THP memory\)/);
  } finally {
    server.close();
  }
  // A socket that accepts and never answers.
  const mute = join(ensureRuntimeDir(freshDir()), 'mute.sock');
  const srv = createServer(() => undefined).listen(mute);
  await new Promise((r) => srv.once('listening', r));
  try {
    const client = await ControlClient.connect(mute);
    await assert.rejects(client.request({ op: 'describe' }, 100), /no answer from .* within 100 ms/);
    assert.equal(client.closed, true);
  } finally {
    srv.close();
  }
});
