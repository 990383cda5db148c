/**
 * The client end of a VM's control socket ({@link ./protocol.ts}): one connection, requests
 * answered in order. Used by {@link attachChannel} and `kvmtalk ps`.
 *
 * @module
 */
import { connect, type Socket } from 'node:net';
import { encodeMessage, LineSplitter, parseMessage } from './protocol.js';

/** The VMM answered `{"ok":false,"error":…}`. */
export class ControlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ControlError';
  }
}

interface Pending {
  resolve: (reply: Record<string, unknown>) => void;
  reject: (e: Error) => void;
}

/** A connection to one VM's control socket. */
export class ControlClient {
  readonly #socket: Socket;
  readonly #pending: Pending[] = [];
  readonly #lines = new LineSplitter();
  #closedError: Error | undefined;
  readonly #closeListeners: ((reason: Error) => void)[] = [];

  private constructor(socket: Socket, readonly path: string) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      let lines: string[];
      try {
        lines = this.#lines.push(chunk);
      } catch (e) {
        socket.destroy(e as Error);
        return;
      }
      for (const line of lines) {
        const p = this.#pending.shift();
        if (!p) continue; // an unsolicited line: nothing in protocol version 1 sends one
        try {
          p.resolve(parseMessage(line));
        } catch (e) {
          p.reject(e as Error);
        }
      }
    });
    socket.on('error', (e) => this.#end(e));
    socket.on('close', () => this.#end(new Error('the VM closed the control connection')));
  }

  /**
   * Connects to `path`. Rejects with a one-line Error: the VM is gone (no socket, or nobody
   * listening), permission denied, or no answer within `timeoutMs`.
   */
  static connect(path: string, timeoutMs = 5000): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`no answer from ${path} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new ControlClient(socket, path));
      });
      socket.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') reject(new Error(`the VM is not running (nobody listens on ${path})`));
        else if (e.code === 'EACCES' || e.code === 'EPERM') reject(new Error(`permission denied connecting to ${path}`));
        else reject(new Error(`cannot connect to ${path}: ${e.message}`));
      });
    });
  }

  /**
   * Sends one request and resolves with the reply; rejects with {@link ControlError} for
   * `ok: false`. With `timeoutMs`, a VMM that does not answer in time fails the request and the
   * connection (a late reply would otherwise be taken for the answer to the next request).
   */
  async request<T extends object = Record<string, unknown>>(req: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    if (this.#closedError) throw this.#closedError;
    const reply = await new Promise<Record<string, unknown>>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = <A>(f: (a: A) => void) => (a: A) => {
        clearTimeout(timer);
        f(a);
      };
      this.#pending.push({ resolve: done(resolve), reject: done(reject) });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => this.#socket.destroy(new Error(`no answer from ${this.path} within ${timeoutMs} ms`)), timeoutMs);
      }
      this.#socket.write(encodeMessage(req));
    });
    if (reply.ok !== true) throw new ControlError(typeof reply.error === 'string' ? reply.error : 'the VM refused the request');
    return reply as T;
  }

  /** Whether the connection has ended. */
  get closed(): boolean {
    return this.#closedError !== undefined;
  }

  /** Calls `listener` once when the connection ends (at once if it already has). */
  onClose(listener: (reason: Error) => void): void {
    if (this.#closedError) listener(this.#closedError);
    else this.#closeListeners.push(listener);
  }

  /** Closes the connection; pending requests reject. Resolves once the socket is closed. */
  close(): Promise<void> {
    if (this.#socket.closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.#socket.once('close', () => resolve());
      this.#socket.end();
      // end() waits for the peer's FIN; a VMM stuck mid-request must not keep us here.
      setTimeout(() => this.#socket.destroy(), 1000).unref();
    });
  }

  #end(reason: Error): void {
    if (this.#closedError) return;
    this.#closedError = reason;
    for (const p of this.#pending.splice(0)) p.reject(reason);
    for (const l of this.#closeListeners.splice(0)) l(reason);
  }
}
