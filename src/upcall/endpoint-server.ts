/**
 * The upcall host endpoint (docs/upcall-device.md, "Host endpoint protocol"): lets another host
 * process (`kvmtalk inject`) hand programs to a running VM's guest and hear about its pinning
 * requests. A Unix socket `<name>.upcall.sock` in the VM's private runtime directory, and
 * optionally a loopback-only TCP listener that requires a random token (`<name>.upcall.token`).
 *
 * Robustness rules, because anything that can connect may send anything:
 * - framing errors (bad magic, flags, type, length; a frame the client may not send; no HELLO
 *   within `frameTimeoutMs` of connecting; a frame not complete `frameTimeoutMs` after its first
 *   byte) get ERROR and close the connection; trickling bytes extends neither deadline;
 * - bad arguments get ERROR with the request's id; the connection stays;
 * - at most `maxPipelined` requests per connection wait for the guest; more get ERROR -EBUSY
 *   (as do requests beyond the target's own limit, the VM's pending-command queue);
 * - a closed connection withdraws its requests the guest has not seen yet;
 * - output a client does not read is bounded by `maxUnreadOutput`: AFFINITY_EVENTs beyond it are
 *   dropped (counted), a reply beyond it closes the connection;
 * - nothing a client sends can throw out of a socket callback.
 *
 * The server serves an {@link UpcallTarget}, so it can be tested without KVM.
 *
 * @module
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { chmodSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { isMainThread } from 'node:worker_threads';
import {
  encodeFrame, ENDPOINT_PROTOCOL_VERSION, errorPayload, FrameReader, helloOkPayload, MSG, parseHello, parseLoad, parseUnload,
  resultPayload, affinityPayload, type Frame,
} from './frames.js';
import type { AffinityEvent, LoadStatus, UpcallEndpointInfo } from './upcall-host.js';

/** What an endpoint serves (a VM's `vm.upcall`, or a fake in tests). */
export interface UpcallTarget {
  /** `signal` aborts when the requesting connection closes: a command still queued should be dropped. */
  deliver(image: Uint8Array, hook: number, signal?: AbortSignal): Promise<LoadStatus>;
  unload(hook: number, signal?: AbortSignal): Promise<LoadStatus>;
  onAffinity(listener: (e: AffinityEvent) => void): () => void;
  /** Device VERSION, vCPU count and largest program, for HELLO_OK. */
  readonly hello: { deviceVersion: number; vcpus: number; maxProgram: number };
}

/** Options of {@link UpcallServer}. */
export interface UpcallServerOptions {
  /** Path of the Unix socket (created 0600; the directory must be private). */
  socketPath: string;
  /** Also listen on TCP: loopback only; port 0 picks one. Needs `tokenPath`. */
  tcp?: { port: number; host?: string };
  /** Where the TCP token is written (hex, mode 0600). */
  tokenPath?: string;
  /** Most connections at once per listener (default 16). */
  maxConnections?: number;
  /** Most requests of one connection waiting for the guest (default 8). */
  maxPipelined?: number;
  /**
   * No HELLO this many ms after connecting, or a frame not complete this many ms after its first
   * byte, closes the connection (default 10 s).
   */
  frameTimeoutMs?: number;
  /**
   * Most bytes of output a connection may leave unread (default 1 MiB): AFFINITY_EVENTs beyond it
   * are dropped for that client, a reply beyond it closes the connection.
   */
  maxUnreadOutput?: number;
  log?: (line: string) => void;
}

/** Linux errno values sent in ERROR frames. */
export const ENDPOINT_ERRNO = { EPERM: 1, EAGAIN: 11, EACCES: 13, EBUSY: 16, EINVAL: 22, EPROTO: 71, ETIMEDOUT: 110, ECANCELED: 125 } as const;

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);
const DEFAULT_MAX_UNREAD_OUTPUT = 1 << 20;
const DEFAULT_MAX_PIPELINED = 8;

/** A running endpoint. */
export class UpcallServer {
  /** Resolves once every listener accepts connections (the TCP port is known then). */
  readonly ready: Promise<void>;
  readonly #unix: Server;
  readonly #tcp: Server | undefined;
  readonly #token: Buffer | undefined;
  readonly #options: UpcallServerOptions;
  readonly #connections = new Set<Connection>();
  readonly #unsubscribe: () => void;
  #closed = false;
  #droppedEvents = 0;

  constructor(
    private readonly target: UpcallTarget,
    options: UpcallServerOptions,
  ) {
    this.#options = options;
    const host = options.tcp?.host ?? '127.0.0.1';
    if (options.tcp) {
      if (!LOOPBACK.has(host)) throw new RangeError(`the upcall TCP endpoint listens on loopback only (127.0.0.1 or ::1), not '${host}'`);
      if (!Number.isInteger(options.tcp.port) || options.tcp.port < 0 || options.tcp.port > 65535) throw new RangeError(`bad TCP port ${options.tcp.port}`);
      if (!options.tokenPath) throw new Error('a TCP upcall endpoint needs a token file path');
      this.#token = randomBytes(32);
      rmSync(options.tokenPath, { force: true });
      writeFileSync(options.tokenPath, this.#token.toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
    }
    this.#unix = this.#makeServer(false);
    this.#tcp = options.tcp ? this.#makeServer(true) : undefined;
    const listening = [this.#listenUnix()];
    if (this.#tcp) listening.push(listen(this.#tcp, () => this.#tcp!.listen(options.tcp!.port, host === 'localhost' ? '127.0.0.1' : host)));
    this.ready = Promise.all(listening).then(() => undefined);
    this.ready.catch(() => this.close());
    this.#unsubscribe = target.onAffinity((e) => {
      const frame = encodeFrame(MSG.AFFINITY_EVENT, 0, affinityPayload(e));
      for (const c of this.#connections) if (c.helloDone && !c.sendEvent(frame)) this.#droppedEvents++;
    });
  }

  /** AFFINITY_EVENTs not sent because their client had `maxUnreadOutput` bytes unread (all connections). */
  get droppedEvents(): number {
    return this.#droppedEvents;
  }

  /** Where it listens (the TCP port once {@link ready}). */
  get info(): UpcallEndpointInfo {
    const info: UpcallEndpointInfo = { socket: this.#options.socketPath };
    const addr = this.#tcp?.address();
    if (addr && typeof addr === 'object') info.tcp = { host: addr.address, port: addr.port, tokenPath: this.#options.tokenPath! };
    return info;
  }

  /** Stops listening, drops every connection and removes the socket and token files. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#unsubscribe();
    for (const c of [...this.#connections]) c.destroy();
    this.#unix.close();
    this.#tcp?.close();
    rmSync(this.#options.socketPath, { force: true });
    if (this.#options.tokenPath && this.#token) rmSync(this.#options.tokenPath, { force: true });
  }

  #makeServer(tcp: boolean): Server {
    const server = createServer((socket) => {
      if (this.#closed) return void socket.destroy();
      socket.unref();
      const c = new Connection(socket, tcp ? this.#token : undefined, this.target, this.#options, () => this.#connections.delete(c));
      this.#connections.add(c);
    });
    server.maxConnections = this.#options.maxConnections ?? 16;
    // The VM decides how long this process lives, not its endpoint.
    server.unref();
    return server;
  }

  /** Binds the Unix socket with mode 0600 (umask around bind, chmod after; see control-server.ts). */
  #listenUnix(): Promise<void> {
    return listen(this.#unix, () => {
      rmSync(this.#options.socketPath, { force: true });
      const old = isMainThread ? process.umask(0o177) : undefined;
      try {
        this.#unix.listen(this.#options.socketPath);
      } finally {
        if (old !== undefined) process.umask(old);
      }
      try {
        chmodSync(this.#options.socketPath, 0o600);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
    });
  }
}

function listen(server: Server, start: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
    start();
  });
}

/** One client connection: framing, HELLO, requests, replies. */
class Connection {
  helloDone = false;
  readonly #reader = new FrameReader();
  /** Aborted on close: withdraws this connection's commands the guest has not seen. */
  readonly #gone = new AbortController();
  readonly #timeoutMs: number;
  readonly #maxOutput: number;
  #inflight = 0;
  #failed = false;
  #helloTimer: NodeJS.Timeout | undefined;
  #frameTimer: NodeJS.Timeout | undefined;
  #dropped = 0;

  constructor(
    private readonly socket: Socket,
    /** The TCP token, undefined on the Unix socket. */
    private readonly token: Buffer | undefined,
    private readonly target: UpcallTarget,
    private readonly options: UpcallServerOptions,
    onGone: () => void,
  ) {
    this.#timeoutMs = options.frameTimeoutMs ?? 10_000;
    this.#maxOutput = options.maxUnreadOutput ?? DEFAULT_MAX_UNREAD_OUTPUT;
    setMaxListeners(options.maxPipelined ?? DEFAULT_MAX_PIPELINED, this.#gone.signal); // one per request waiting
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', () => undefined); // a reset peer: 'close' follows
    socket.once('close', () => {
      clearTimeout(this.#helloTimer);
      clearTimeout(this.#frameTimer);
      this.#gone.abort();
      if (this.#dropped) options.log?.(`upcall endpoint: ${this.#dropped} AFFINITY_EVENTs dropped for a client that did not read them`);
      onGone();
    });
    // From connect, never extended: a client trickling bytes cannot hold an unauthenticated slot.
    this.#helloTimer = this.#deadline(`no HELLO within ${this.#timeoutMs} ms of connecting: timed out`);
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Sends an AFFINITY_EVENT unless the client has too much unread: returns false if dropped. */
  sendEvent(frame: Buffer): boolean {
    if (this.socket.destroyed || this.#failed) return true;
    if (this.socket.writableLength + frame.length > this.#maxOutput) {
      this.#dropped++;
      return false;
    }
    this.socket.write(frame);
    return true;
  }

  /** Sends a reply; one that would exceed the unread-output limit closes the connection instead. */
  #reply(frame: Buffer): void {
    if (this.socket.destroyed || this.#failed) return;
    if (this.socket.writableLength + frame.length > this.#maxOutput) {
      this.options.log?.(`upcall endpoint: closing a connection with ${this.socket.writableLength} bytes of replies unread`);
      return this.destroy();
    }
    this.socket.write(frame);
  }

  #deadline(message: string): NodeJS.Timeout {
    const timer = setTimeout(() => this.#fail(ENDPOINT_ERRNO.ETIMEDOUT, message), this.#timeoutMs);
    timer.unref();
    return timer;
  }

  #onData(chunk: Buffer): void {
    if (this.#failed) return;
    const continuing = this.#reader.partial;
    const { frames, error } = this.#reader.push(chunk);
    for (const f of frames) {
      if (this.#failed) return;
      this.#handle(f);
    }
    if (error) return this.#fail(ENDPOINT_ERRNO.EPROTO, error.message);
    // A frame's deadline runs from its first byte; later bytes of the same frame do not extend it.
    if (!this.#reader.partial) {
      clearTimeout(this.#frameTimer);
      this.#frameTimer = undefined;
    } else if (!continuing || frames.length > 0) {
      clearTimeout(this.#frameTimer);
      this.#frameTimer = this.#deadline(`incomplete frame timed out (${this.#timeoutMs} ms)`);
    }
  }

  #handle(f: Frame): void {
    if (!this.helloDone) {
      if (f.type !== MSG.HELLO) return this.#fail(ENDPOINT_ERRNO.EACCES, 'the first frame must be HELLO', f.id);
      let hello: ReturnType<typeof parseHello>;
      try {
        hello = parseHello(f.payload);
      } catch (e) {
        return this.#fail(ENDPOINT_ERRNO.EPROTO, (e as Error).message, f.id);
      }
      if (hello.version !== ENDPOINT_PROTOCOL_VERSION) return this.#fail(ENDPOINT_ERRNO.EPROTO, `protocol version ${hello.version} is not ${ENDPOINT_PROTOCOL_VERSION}`, f.id);
      if (this.token && !tokenMatches(this.token, hello.token)) return this.#fail(ENDPOINT_ERRNO.EACCES, 'bad token', f.id);
      this.helloDone = true;
      clearTimeout(this.#helloTimer);
      this.#reply(encodeFrame(MSG.HELLO_OK, f.id, helloOkPayload({ version: ENDPOINT_PROTOCOL_VERSION, ...this.target.hello })));
      return;
    }
    switch (f.type) {
      case MSG.LOAD:
      case MSG.UNLOAD:
        return this.#request(f);
      case MSG.HELLO:
        return this.#fail(ENDPOINT_ERRNO.EPROTO, 'HELLO twice', f.id);
      default:
        return this.#fail(ENDPOINT_ERRNO.EPROTO, `frame type ${f.type} is not a request`, f.id);
    }
  }

  #request(f: Frame): void {
    let pending: Promise<LoadStatus>;
    try {
      if (this.#inflight >= (this.options.maxPipelined ?? DEFAULT_MAX_PIPELINED)) {
        return this.#reply(encodeFrame(MSG.ERROR, f.id, errorPayload(-ENDPOINT_ERRNO.EBUSY, 'too many requests in flight on this connection')));
      }
      if (f.type === MSG.LOAD) {
        const { hook, program } = parseLoad(f.payload);
        pending = this.target.deliver(program, hook, this.#gone.signal);
      } else {
        pending = this.target.unload(parseUnload(f.payload).hook, this.#gone.signal);
      }
    } catch (e) {
      return this.#reply(encodeFrame(MSG.ERROR, f.id, errorPayload(-ENDPOINT_ERRNO.EINVAL, (e as Error).message)));
    }
    this.#inflight++;
    pending.then(
      (r) => this.#reply(encodeFrame(MSG.RESULT, f.id, resultPayload(r))),
      (e: Error & { errno?: number }) => {
        const errno = e instanceof RangeError ? ENDPOINT_ERRNO.EINVAL : (e.errno ?? ENDPOINT_ERRNO.EINVAL);
        this.#reply(encodeFrame(MSG.ERROR, f.id, errorPayload(-errno, e.message)));
      },
    ).finally(() => this.#inflight--);
  }

  /** A protocol error: report it and close, since later bytes cannot be trusted. */
  #fail(errno: number, message: string, id = 0): void {
    if (this.#failed) return;
    clearTimeout(this.#helloTimer);
    clearTimeout(this.#frameTimer);
    if (!this.socket.destroyed) this.socket.end(encodeFrame(MSG.ERROR, id, errorPayload(-errno, message)));
    this.#failed = true;
    // end() flushes; a client that never reads must not keep the connection open.
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }
}

/** Constant-time token check (lengths are not secret: the token is always 32 bytes). */
function tokenMatches(expected: Buffer, got: Uint8Array): boolean {
  return got.length === expected.length && timingSafeEqual(expected, got);
}
