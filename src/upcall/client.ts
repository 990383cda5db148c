/**
 * The client end of a VM's upcall endpoint ({@link ./endpoint-server.ts}): connect by VM name,
 * socket path, or loopback TCP address plus token file; HELLO; LOAD / UNLOAD requests (pipelined,
 * matched by request id); AFFINITY_EVENT frames as events. Used by `kvmtalk inject`.
 *
 * @module
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { findVm, runtimeDirPath, vmPaths } from '../control/runtime-dir.js';
import {
  encodeFrame, FrameReader, helloPayload, loadPayload, MSG, parseAffinity, parseError, parseHelloOk, parseResult, unloadPayload,
  type Frame, type HelloOk,
} from './frames.js';
import type { LoadStatus } from './upcall-host.js';

/** The VMM answered a request with ERROR. */
export class UpcallRemoteError extends Error {
  constructor(
    /** Negative errno. */
    readonly errno: number,
    message: string,
  ) {
    super(message);
    this.name = 'UpcallRemoteError';
  }
}

/** Where to connect: exactly one of `vm` (name or pid in the runtime directory), `socket`, `tcp`. */
export interface UpcallConnectOptions {
  vm?: string;
  /** Runtime directory for `vm` (default {@link runtimeDirPath}). */
  dir?: string;
  socket?: string;
  tcp?: { host: string; port: number };
  /** TCP: the token file the VMM wrote (`<name>.upcall.token`). */
  tokenFile?: string;
  /** Connect + HELLO timeout (default 5 s). */
  timeoutMs?: number;
}

/** The endpoint socket of a VM named in the runtime directory. */
export function upcallSocketPath(vm: string, dir = runtimeDirPath()): string {
  return vmPaths(dir, findVm(vm, dir).name).upcallSocket;
}

/** Reads a hex token file into its 32 bytes. */
export function readTokenFile(path: string): Buffer {
  const text = readFileSync(path, 'utf8').trim();
  if (!/^[0-9a-f]{64}$/i.test(text)) throw new Error(`${path} does not hold a 64-digit hex token`);
  return Buffer.from(text, 'hex');
}

interface Pending {
  resolve: (r: LoadStatus) => void;
  reject: (e: Error) => void;
}

/** One connection to an upcall endpoint. Emits `affinity` ({vcpu, hostCpu, result}) and `close`. */
export class UpcallClient extends EventEmitter {
  /** What HELLO_OK said. */
  hello!: HelloOk;
  readonly #socket: Socket;
  readonly #reader = new FrameReader();
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #closedError: Error | undefined;
  #onHello: ((f: Frame) => void) | undefined;

  private constructor(socket: Socket) {
    super();
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      const { frames, error } = this.#reader.push(chunk);
      for (const f of frames) this.#frame(f);
      if (error) socket.destroy(error);
    });
    socket.on('error', (e) => this.#end(e));
    socket.on('close', () => this.#end(new Error('the VM closed the upcall connection')));
  }

  /** Connects and says HELLO. Rejects with a one-line Error when that fails. */
  static async connect(options: UpcallConnectOptions): Promise<UpcallClient> {
    const timeoutMs = options.timeoutMs ?? 5000;
    let token: Uint8Array = new Uint8Array(0);
    let where: string;
    let socket: Socket;
    if (options.tcp) {
      if (!options.tokenFile) throw new Error('a TCP upcall connection needs the token file');
      token = readTokenFile(options.tokenFile);
      where = `${options.tcp.host}:${options.tcp.port}`;
      socket = connect(options.tcp.port, options.tcp.host);
    } else {
      where = options.socket ?? upcallSocketPath(options.vm ?? '', options.dir);
      socket = connect(where);
    }
    const client = new UpcallClient(socket);
    const hello = new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => socket.destroy(new Error(`no answer from ${where} within ${timeoutMs} ms`)), timeoutMs);
      client.#onHello = (f) => {
        clearTimeout(timer);
        resolve(f);
      };
      client.once('close', (e: Error) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    socket.once('connect', () => socket.write(encodeFrame(MSG.HELLO, 0, helloPayload(token))));
    let f: Frame;
    try {
      f = await hello;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ECONNREFUSED') throw new Error(`the VM's upcall endpoint is not running (nobody listens on ${where})`);
      throw new Error(`cannot connect to ${where}: ${(e as Error).message}`);
    }
    if (f.type === MSG.ERROR) {
      socket.destroy();
      throw new Error(`${where} refused HELLO: ${parseError(f.payload).message}`);
    }
    client.hello = parseHelloOk(f.payload);
    return client;
  }

  /** LOAD: resolves with the guest's answer; rejects with {@link UpcallRemoteError} for ERROR. */
  async load(hook: number, image: Uint8Array): Promise<LoadStatus> {
    return this.#request(MSG.LOAD, loadPayload(hook, image));
  }

  /** UNLOAD of `hook`; RangeError for a hook that is not a u32. */
  async unload(hook: number): Promise<LoadStatus> {
    return this.#request(MSG.UNLOAD, unloadPayload(hook));
  }

  /** Closes the connection; pending requests reject. */
  close(): void {
    this.#socket.destroy();
  }

  #request(type: number, payload: Uint8Array): Promise<LoadStatus> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#socket.write(encodeFrame(type, id, payload));
    });
  }

  #frame(f: Frame): void {
    try {
      if (this.#onHello) {
        const h = this.#onHello;
        this.#onHello = undefined;
        return h(f);
      }
      if (f.type === MSG.AFFINITY_EVENT) return void this.emit('affinity', parseAffinity(f.payload));
      const p = this.#pending.get(f.id);
      if (f.type === MSG.ERROR) {
        const { errno, message } = parseError(f.payload);
        if (p) {
          this.#pending.delete(f.id);
          p.reject(new UpcallRemoteError(errno, message));
        } else {
          this.#socket.destroy(new UpcallRemoteError(errno, message));
        }
        return;
      }
      if (f.type === MSG.RESULT && p) {
        this.#pending.delete(f.id);
        p.resolve(parseResult(f.payload));
      }
    } catch (e) {
      this.#socket.destroy(e as Error);
    }
  }

  #end(reason: Error): void {
    if (this.#closedError) return;
    this.#closedError = reason;
    for (const p of this.#pending.values()) p.reject(reason);
    this.#pending.clear();
    this.emit('close', reason);
  }
}
