/**
 * The VMM's control socket (docs/channels.md, "Attaching from another host process"): a Unix
 * socket `<name>.sock` in the runtime directory through which another host process finds guest
 * RAM and takes channels over. Protocol: {@link ./protocol.ts}.
 *
 * Robustness rules, because anything running as the same user can connect:
 * - every line is bounded ({@link MAX_LINE}); a longer one, bytes that are not UTF-8 or text that
 *   is not a JSON object get an error line and the connection is closed;
 * - a bad request (unknown op, unknown channel, …) gets an error line, the connection stays;
 * - nothing a client sends can throw out of a socket callback, and replies a client does not
 *   read stop the reading of its requests (no unbounded output buffer);
 * - a connection that goes away for any reason gives back the channels it attached.
 *
 * The server is independent of {@link Vm}: it serves a {@link ControlTarget}, so the protocol can
 * be tested without KVM. {@link startControlServer} adapts a VM.
 *
 * @module
 */
import { EventEmitter } from 'node:events';
import { chmodSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { isMainThread } from 'node:worker_threads';
import { CHANNEL_AREA_BASE, DIRECTORY_SIZE } from '../channel/channel-area.js';
import type { Channel } from '../channel/channel.js';
import { GuestMapError, type GuestBpfMap } from '../bpf/guest-maps.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import {
  CONTROL_OPS, CONTROL_PROTOCOL_VERSION, encodeMessage, LineSplitter, MAX_LINE, parseMessage,
  type AttachInfo, type BpfMapDump, type ChannelSummary, type DescribeReply, type RingInfo,
} from './protocol.js';
import { claimVmName, ensureRuntimeDir, releaseVmName, removeVmFiles, runtimeDirPath, type VmEntry } from './runtime-dir.js';

/** One channel as the control server sees it. */
export interface ControlChannel {
  readonly id: number;
  readonly name: string;
  /** GPA of the channel header. */
  readonly gpa: number;
  /** Bytes of the channel region. */
  readonly size: number;
  /** `hypercall`, `ioeventfd` or `polling`. */
  readonly mode: string;
  /** `open`, `closed`, …: only `open` channels can be attached. */
  readonly state: string;
  /** Host→guest interrupt vector (0: none). */
  readonly vector: number;
  readonly toHost: RingInfo;
  readonly toGuest: RingInfo;
  /** Stop using the channel's rings until {@link resume}: another process runs them now. */
  suspend(): void;
  /** Take the rings back, re-reading their indices (the attacher moved them). */
  resume(): void;
  /** Raise the channel's interrupt in the guest; false when it has none (no vector, no interrupts). */
  kick(): boolean;
}

/** What a control server serves. */
export interface ControlTarget {
  /** The guest eBPF runtime's maps (docs/bpf-runtime.md); absent when the VM has no upcall device. */
  bpfMaps?(): readonly GuestBpfMap[];
  /** Guest RAM: the memfd's fd number in this process (-1: not shareable), its size and page size. */
  readonly memory: { fd: number; size: number; pageSize: number };
  /** The channel directory, if any. */
  readonly directory?: { gpa: number; size: number } | null;
  /** The current channels. */
  channels(): readonly ControlChannel[];
}

/** Options of {@link serveControl} and {@link startControlServer}. */
export interface ControlServerOptions {
  /** VM name (default `vm-<pid>`, made unique). */
  name?: string;
  /** Runtime directory (default {@link runtimeDirPath}). */
  dir?: string;
  /** Most connections served at once (default 32); more are closed at once. */
  maxConnections?: number;
  /** Where to report problems no client can be told about (default: ignored). */
  log?: (line: string) => void;
}

/** Servers not closed yet, for the process 'exit' cleanup. */
const liveServers = new Set<ControlServer>();
function removeAllFiles(): void {
  for (const s of liveServers) s.removeFiles();
}

/** Replies a client has not read, in bytes, before its requests stop being read. */
const MAX_UNREAD_OUTPUT = 1 << 20;

/**
 * A running control server. Events: `attach` and `detach` (channel name), `error` is never
 * emitted (failures are per connection).
 */
export class ControlServer extends EventEmitter {
  /** The VM's name in the runtime directory. */
  readonly name: string;
  /** Path of the socket. */
  readonly path: string;
  /** The runtime directory. */
  readonly dir: string;
  /** Resolves once the socket accepts connections; rejects if it cannot listen. */
  readonly ready: Promise<void>;
  readonly #server: Server;
  readonly #entry: VmEntry;
  readonly #target: ControlTarget;
  /** Which connection holds each attached channel, by channel id. */
  readonly #holders = new Map<number, Connection>();
  readonly #connections = new Set<Connection>();
  readonly #log: (line: string) => void;
  #closed = false;

  /** Use {@link serveControl}. */
  constructor(target: ControlTarget, options: ControlServerOptions = {}) {
    super();
    this.#target = target;
    this.#log = options.log ?? (() => undefined);
    this.dir = ensureRuntimeDir(options.dir ?? runtimeDirPath());
    this.#entry = claimVmName(this.dir, options.name);
    this.name = this.#entry.name;
    this.path = this.#entry.socket;
    try {
      this.#server = createServer((socket) => this.#accept(socket));
      this.#server.maxConnections = options.maxConnections ?? 32;
      // The VM decides how long this process lives, not its control socket or its clients.
      this.#server.unref();
      this.ready = new Promise((resolve, reject) => {
        this.#server.once('listening', resolve);
        this.#server.once('error', (e) => {
          this.close();
          reject(e);
        });
      });
      this.ready.catch(() => undefined); // callers that never await it must not see an unhandled rejection
      this.#listen();
    } catch (e) {
      releaseVmName(this.dir, this.#entry);
      throw e;
    }
    liveServers.add(this);
    if (liveServers.size === 1) process.once('exit', removeAllFiles);
  }

  /** @internal process 'exit': a VMM that ends without vm.close() must not leave its entry behind. */
  removeFiles(): void {
    removeVmFiles(this.dir, this.name);
  }

  /**
   * Binds the socket with mode 0600. bind() creates the file with 0777 & ~umask, so the umask is
   * set around it (main thread only: workers cannot change it), and chmod follows at once anyway.
   * Both happen before the event loop can accept a connection: Node binds synchronously in
   * listen() and accepts only from the loop. The 0700 directory already keeps other users out.
   */
  #listen(): void {
    try {
      // The name is ours now, so a socket file left under it is a dead VMM's.
      rmSync(this.path, { force: true });
      const old = isMainThread ? process.umask(0o177) : undefined;
      try {
        this.#server.listen(this.path);
      } finally {
        if (old !== undefined) process.umask(old);
      }
      chmodSync(this.path, 0o600);
    } catch (e) {
      // chmod of a socket that failed to bind: the 'error' event reports the real reason.
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }

  /** Channels attached by another process now, by name. */
  attachedChannels(): string[] {
    return [...this.#holders.keys()].map((id) => this.#channel(id)?.name ?? String(id));
  }

  /** Stops serving: closes every connection (their channels are resumed), the socket and the files. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    liveServers.delete(this);
    if (liveServers.size === 0) process.off('exit', removeAllFiles);
    for (const c of [...this.#connections]) {
      this.#drop(c); // now, not when 'close' comes: the VM may go on using its channels
      c.destroy();
    }
    this.#server.close();
    releaseVmName(this.dir, this.#entry);
  }

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  #accept(socket: Socket): void {
    if (this.#closed) {
      socket.destroy();
      return;
    }
    socket.unref();
    const c: Connection = new Connection(socket, (req): Record<string, unknown> => this.#handle(c, req), () => this.#drop(c));
    this.#connections.add(c);
  }

  #drop(c: Connection): void {
    this.#connections.delete(c);
    for (const id of c.attached) this.#release(c, id);
  }

  #channel(id: number): ControlChannel | undefined {
    return this.#target.channels().find((ch) => ch.id === id);
  }

  #summary(ch: ControlChannel): ChannelSummary {
    const attached = this.#holders.has(ch.id);
    return { id: ch.id, name: ch.name, gpa: ch.gpa, size: ch.size, mode: ch.mode, state: attached && ch.state === 'open' ? 'attached' : ch.state, attached };
  }

  #find(ref: unknown): ControlChannel {
    if (typeof ref !== 'string' && !(typeof ref === 'number' && Number.isInteger(ref))) throw new RequestError('"channel" must be a channel name (or id)');
    const channels = this.#target.channels();
    const ch = channels.find((c) => (typeof ref === 'string' ? c.name === ref : c.id === ref));
    if (!ch) {
      const names = channels.map((c) => c.name).join(', ') || 'none';
      throw new RequestError(`unknown channel '${String(ref).slice(0, 64)}' (channels: ${names})`);
    }
    return ch;
  }

  #maps(): readonly GuestBpfMap[] {
    if (!this.#target.bpfMaps) throw new RequestError('this VM has no upcall device, so no eBPF maps');
    return this.#target.bpfMaps();
  }

  #map(name: unknown): GuestBpfMap {
    if (typeof name !== 'string') throw new RequestError('"map" must be a map name');
    const maps = this.#maps();
    const m = maps.find((x) => x.info.name === name);
    if (!m) throw new RequestError(`unknown map '${name.slice(0, 64)}' (maps: ${maps.map((x) => x.info.name).join(', ') || 'none'})`);
    return m;
  }

  /** Answers one well-formed message; throws {@link RequestError} for a bad request. */
  #handle(c: Connection, req: Record<string, unknown>): Record<string, unknown> {
    switch (req.op) {
      case 'describe': {
        const m = this.#target.memory;
        const reply: DescribeReply = {
          ok: true, protocol: CONTROL_PROTOCOL_VERSION, pid: process.pid, name: this.name,
          memfd: m.fd >= 0 ? m.fd : null, memSize: m.size, pageSize: m.pageSize,
          directory: this.#target.directory ?? null,
          channels: this.#target.channels().map((ch) => this.#summary(ch)),
        };
        return reply as unknown as Record<string, unknown>;
      }
      case 'list':
        return { ok: true, channels: this.#target.channels().map((ch) => this.#summary(ch)) };
      case 'attach': {
        const ch = this.#find(req.channel);
        const holder = this.#holders.get(ch.id);
        if (holder && holder !== c) throw new RequestError(`channel '${ch.name}' is already attached by another process`);
        if (!holder) {
          if (ch.state !== 'open') throw new RequestError(`channel '${ch.name}' is ${ch.state}`);
          ch.suspend();
          this.#holders.set(ch.id, c);
          c.attached.add(ch.id);
          this.#emit('attach', ch.name);
        }
        const info: AttachInfo = { ...this.#summary(ch), toHost: { ...ch.toHost }, toGuest: { ...ch.toGuest }, vector: ch.vector };
        return { ok: true, channel: info };
      }
      case 'detach': {
        const ch = this.#find(req.channel);
        if (this.#holders.get(ch.id) !== c) throw new RequestError(`channel '${ch.name}' is not attached on this connection`);
        this.#release(c, ch.id);
        return { ok: true };
      }
      case 'kick': {
        const ch = this.#find(req.channel);
        // Only the holder: it is the one that wrote what the guest should wake up for.
        if (this.#holders.get(ch.id) !== c) throw new RequestError(`channel '${ch.name}' is not attached on this connection`);
        return { ok: true, raised: ch.kick() };
      }
      case 'bpf-maps':
        return { ok: true, maps: dumpMaps(this.#maps(), req.max) };
      case 'bpf-map-update': {
        const m = this.#map(req.map);
        const flags = req.flags ?? 0;
        if (flags !== 0 && flags !== 1 && flags !== 2) throw new RequestError('"flags" must be 0 (any), 1 (only new) or 2 (only existing)');
        m.update(hexArg(req.key, 'key'), hexArg(req.value, 'value'), flags);
        return { ok: true };
      }
      case 'bpf-map-delete':
        return { ok: true, deleted: this.#map(req.map).delete(hexArg(req.key, 'key')) };
      case undefined:
        throw new RequestError(`missing "op" (use ${CONTROL_OPS.join(', ')})`);
      default:
        throw new RequestError(`unknown op '${String(req.op).slice(0, 64)}' (use ${CONTROL_OPS.join(', ')})`);
    }
  }

  #release(c: Connection, id: number): void {
    c.attached.delete(id);
    if (this.#holders.get(id) !== c) return;
    this.#holders.delete(id);
    const ch = this.#channel(id);
    // This runs from socket events too, where a throw would take the whole VMM down.
    try {
      ch?.resume();
    } catch (e) {
      this.#log(`resuming channel '${ch?.name}' failed: ${(e as Error).message}`);
    }
    this.#emit('detach', ch?.name ?? String(id));
  }

  /** Emits an event; a throwing listener is logged, never thrown into socket callbacks. */
  #emit(event: 'attach' | 'detach', name: string): void {
    try {
      this.emit(event, name);
    } catch (e) {
      this.#log(`a '${event}' listener threw: ${(e as Error).message}`);
    }
  }
}

/** A request the server understood but refuses; the connection stays open. */
class RequestError extends Error {}

/** Most entries `bpf-maps` lists per map, and the reply bytes it spends on entries in all. */
const DEFAULT_MAP_ENTRIES = 64;
const MAX_MAP_ENTRIES = 4096;
const DUMP_BUDGET = MAX_LINE / 2;

function dumpMaps(maps: readonly GuestBpfMap[], max: unknown): BpfMapDump[] {
  if (max !== undefined && !(Number.isInteger(max) && (max as number) >= 0 && (max as number) <= MAX_MAP_ENTRIES)) {
    throw new RequestError(`"max" must be an integer 0–${MAX_MAP_ENTRIES}`);
  }
  const limit = (max as number | undefined) ?? DEFAULT_MAP_ENTRIES;
  let budget = DUMP_BUDGET;
  return maps.map((m) => {
    const all = m.entries();
    const entries: [string, string][] = [];
    for (const [k, v] of all) {
      const cost = 2 * (k.length + v.length) + 8;
      if (entries.length >= limit || cost > budget) break;
      budget -= cost;
      entries.push([Buffer.from(k).toString('hex'), Buffer.from(v).toString('hex')]);
    }
    const { name, type, keySize, valueSize, maxEntries } = m.info;
    return { name, type, keySize, valueSize, maxEntries, size: m.size, entries, truncated: all.length - entries.length };
  });
}

function hexArg(v: unknown, what: string): Uint8Array {
  if (typeof v !== 'string' || v.length % 2 !== 0 || !/^[0-9a-f]*$/i.test(v)) throw new RequestError(`"${what}" must be hex bytes`);
  return Buffer.from(v, 'hex');
}

/** One client connection: framing, request dispatch, error replies, flow control. */
class Connection {
  /** Ids of the channels this connection attached. */
  readonly attached = new Set<number>();
  readonly #lines = new LineSplitter();
  #failed = false;

  constructor(
    private readonly socket: Socket,
    private readonly handle: (req: Record<string, unknown>) => Record<string, unknown>,
    onGone: () => void,
  ) {
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('drain', () => socket.resume());
    socket.on('error', () => undefined); // a reset peer: 'close' follows and cleans up
    socket.once('close', onGone);
  }

  destroy(): void {
    this.socket.destroy();
  }

  #onData(chunk: Buffer): void {
    if (this.#failed) return;
    let lines: string[];
    try {
      lines = this.#lines.push(chunk);
    } catch (e) {
      return this.#fail((e as Error).message);
    }
    for (const line of lines) {
      if (this.#failed) return;
      if (line.trim() === '') continue;
      let req: Record<string, unknown>;
      try {
        req = parseMessage(line);
      } catch (e) {
        return this.#fail((e as Error).message);
      }
      let reply: Record<string, unknown>;
      try {
        reply = this.handle(req);
      } catch (e) {
        reply = { ok: false, error: e instanceof RequestError || e instanceof GuestMapError ? e.message : `internal error: ${(e as Error).message}` };
      }
      this.#send({ ...reply, ...echoId(req) });
    }
  }

  #send(reply: object): void {
    if (this.socket.destroyed) return;
    this.socket.write(encodeMessage(reply));
    // A client that sends but never reads: stop reading it until it catches up.
    if (this.socket.writableLength > MAX_UNREAD_OUTPUT) this.socket.pause();
  }

  /** A framing error: report it and close, since later bytes cannot be trusted to start a line. */
  #fail(error: string): void {
    this.#failed = true;
    if (this.socket.destroyed) return;
    this.socket.end(encodeMessage({ ok: false, error }));
    // end() flushes; a client that never reads must not keep the connection open.
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }
}

/** The request's `id`, if it is a small scalar worth echoing. */
function echoId(req: Record<string, unknown>): { id?: unknown } {
  const id = req.id;
  if (typeof id === 'number' || (typeof id === 'string' && id.length <= 256)) return { id };
  return {};
}

/** Starts a control server for `target`; see {@link ControlServer}. */
export function serveControl(target: ControlTarget, options: ControlServerOptions = {}): ControlServer {
  return new ControlServer(target, options);
}

/** What {@link startControlServer} needs from a VM: its RAM and its channels. */
export interface ControlledVm {
  readonly memory: GuestMemory;
  /** The VM's channels (open, suspended and closed). */
  channels(): readonly Channel[];
  /** The guest eBPF runtime's maps; throws {@link GuestMapError} when there are none to read. */
  bpfMaps?(): readonly GuestBpfMap[];
}

/** A {@link Channel} as the control server sees it. */
function controlChannel(ch: Channel): ControlChannel {
  return {
    id: ch.id, name: ch.name, gpa: ch.gpa, size: ch.size, mode: ch.mode, vector: ch.vector,
    // 'suspended' is the server's own doing: report it as open (the server adds "attached").
    get state() {
      return ch.state === 'suspended' ? 'open' : ch.state;
    },
    toHost: { ...ch.layout.toHost }, toGuest: { ...ch.layout.toGuest },
    suspend: () => ch.suspend(),
    resume: () => ch.resume(),
    kick: () => ch.kick(),
  };
}

/**
 * Serves `vm`'s control socket. The caller closes it when the VM closes (`Vm.serveControl` does
 * both). Throws {@link RuntimeDirError} for an unusable runtime directory and an Error for a
 * name that is taken.
 */
export function startControlServer(vm: ControlledVm, options: ControlServerOptions = {}): ControlServer {
  const region = vm.memory.regions[0];
  const target: ControlTarget = {
    memory: { fd: vm.memory.shareable ? region.fd : -1, size: vm.memory.size, pageSize: vm.memory.pageSize },
    get directory() {
      return vm.channels().length > 0 ? { gpa: CHANNEL_AREA_BASE, size: DIRECTORY_SIZE } : null;
    },
    channels: () => vm.channels().map(controlChannel),
    bpfMaps: vm.bpfMaps && (() => vm.bpfMaps!()),
  };
  return new ControlServer(target, options);
}
