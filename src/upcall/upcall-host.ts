/**
 * The main thread's side of the upcall device (docs/upcall-device.md): the command queue, one
 * promise per command, the per-command timeout, and the events the vCPU threads' devices post
 * (ACKs, interrupts to raise, AFFINITY results). The registers themselves are in the shared
 * {@link UpcallState}; this is what `vm.upcall` is.
 *
 * @module
 */
import {
  UPCALL_CMD, UPCALL_NO_PC, type UpcallCounters, type UpcallEvent, type UpcallState,
} from '../devices/upcall-device.js';

/** What the guest answered to a command. */
export interface LoadStatus {
  /** STATUS as a signed i32: 0 success, a negative errno on failure. */
  status: number;
  /** STATUS_PC (instruction index the verifier rejected), or null for "none". */
  pc: number | null;
  /** COMMAND_SEQ of the command. */
  seq: number;
}

/** A guest AFFINITY request and what came of it (0 pinned, else -errno). */
export interface AffinityEvent {
  vcpu: number;
  hostCpu: number;
  result: number;
}

/** Where the host endpoint of a VM listens (docs/upcall-device.md, "Host endpoint protocol"). */
export interface UpcallEndpointInfo {
  /** The Unix socket. */
  socket: string;
  /** The loopback TCP listener's address and port, and the token file, when TCP is on. */
  tcp?: { host: string; port: number; tokenPath: string };
}

/** Commands withdrawn by the host (VM teardown) reject with this. */
export class UpcallCancelledError extends Error {
  readonly errno = 125; // ECANCELED
  constructor(message: string) {
    super(message);
    this.name = 'UpcallCancelledError';
  }
}

/** A command the guest did not ACK in time rejects with this (the command is cancelled). */
export class UpcallTimeoutError extends Error {
  readonly errno = 110; // ETIMEDOUT
  constructor(message: string) {
    super(message);
    this.name = 'UpcallTimeoutError';
  }
}

/** {@link UpcallHost.deliver} / {@link UpcallHost.unload} beyond the pending-command limit reject with this. */
export class UpcallBusyError extends Error {
  readonly errno = 16; // EBUSY
  constructor(message: string) {
    super(message);
    this.name = 'UpcallBusyError';
  }
}

/** Default most commands posted or queued at once (all callers together). */
export const UPCALL_DEFAULT_MAX_PENDING = 64;

/** Default time the guest has to ACK a visible command. */
export const UPCALL_DEFAULT_TIMEOUT_MS = 10_000;

/** Options of {@link UpcallHost}. */
export interface UpcallHostOptions {
  /** Sends `vector` to the guest. May throw: counted as `irqErrors`. */
  raiseIrq: (vector: number) => void;
  /** Per-command ACK timeout in ms (default {@link UPCALL_DEFAULT_TIMEOUT_MS}). */
  commandTimeoutMs?: number;
  /** Most commands posted or queued at once (default {@link UPCALL_DEFAULT_MAX_PENDING}); more reject with {@link UpcallBusyError}. */
  maxPending?: number;
}

interface Command {
  code: number;
  arg: number;
  data: Uint8Array;
  seq: number;
  timer?: NodeJS.Timeout;
  resolve: (status: LoadStatus) => void;
  reject: (error: Error) => void;
}

/** `vm.upcall`: hands programs to the guest and reports its pinning requests. */
export class UpcallHost {
  /** Set by the VM once its endpoint listens. */
  endpoint: UpcallEndpointInfo | undefined;
  private readonly raiseIrq: (vector: number) => void;
  private readonly timeoutMs: number;
  private readonly maxPending: number;
  private readonly listeners = new Set<(e: AffinityEvent) => void>();
  private readonly queue: Command[] = [];
  private current: Command | undefined;
  private lastSeq = 0;
  private closedReason: string | undefined;

  constructor(
    /** The shared registers every vCPU thread's device works on. */
    readonly state: UpcallState,
    options: UpcallHostOptions,
  ) {
    this.raiseIrq = options.raiseIrq;
    this.timeoutMs = options.commandTimeoutMs ?? UPCALL_DEFAULT_TIMEOUT_MS;
    if (!(this.timeoutMs > 0)) throw new RangeError(`command timeout must be > 0 ms, got ${this.timeoutMs}`);
    this.maxPending = options.maxPending ?? UPCALL_DEFAULT_MAX_PENDING;
    if (!Number.isInteger(this.maxPending) || this.maxPending < 1) throw new RangeError(`maxPending must be an integer >= 1, got ${this.maxPending}`);
  }

  /** Largest program {@link deliver} accepts. */
  get maxProgram(): number {
    return this.state.maxProgram;
  }

  /**
   * Queues a LOAD_PROGRAM of `image` (a KTBP image, docs/bpf-runtime.md) at `hook`; resolves
   * with the guest's answer when it ACKs. The bytes are copied. Rejects with RangeError for an
   * empty or oversized image or a hook that is not a u32, {@link UpcallBusyError} when
   * `maxPending` commands are already pending, {@link UpcallTimeoutError} when the guest does not
   * ACK in time, {@link UpcallCancelledError} when the VM stops first or `signal` aborts while the
   * command is still queued (once posted, the guest may be loading it: it runs its course).
   */
  deliver(image: Uint8Array, hook: number, signal?: AbortSignal): Promise<LoadStatus> {
    if (!(image instanceof Uint8Array) || image.length === 0 || image.length > this.maxProgram) {
      return Promise.reject(new RangeError(`program must be 1..${this.maxProgram} bytes`));
    }
    return this.enqueue(UPCALL_CMD.LOAD_PROGRAM, hook, image.slice(), signal);
  }

  /** Queues an UNLOAD of `hook`; resolves with the guest's answer. Errors and `signal` as for {@link deliver}. */
  unload(hook: number, signal?: AbortSignal): Promise<LoadStatus> {
    return this.enqueue(UPCALL_CMD.UNLOAD, hook, new Uint8Array(0), signal);
  }

  /** The guest-physical address of the guest's eBPF map directory (MAP_DIR_LO/HI), 0n if none was published. */
  mapDirectory(): bigint {
    return this.state.mapDirectory();
  }

  /** Calls `listener` after each guest AFFINITY request. Returns a function that removes it. */
  onAffinity(listener: (e: AffinityEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The device's counters (all vCPU threads together). */
  get counters(): UpcallCounters {
    return this.state.counters();
  }

  /** Commands posted or queued and not answered yet. */
  get pendingCommands(): number {
    return (this.current ? 1 : 0) + this.queue.length;
  }

  /**
   * Rejects every command with {@link UpcallCancelledError}; the one the guest sees is withdrawn
   * (CMD_CANCELLED, interrupt). With `final`, later commands reject at once (the VM ended).
   */
  cancelAll(reason = 'cancelled by the host', final = false): void {
    if (final) this.closedReason ??= reason;
    const cmds = this.current ? [this.current, ...this.queue] : [...this.queue];
    this.queue.length = 0;
    if (this.current) {
      clearTimeout(this.current.timer);
      if (this.state.cancel(this.current.seq) && !final) this.interrupt();
      this.current = undefined;
    }
    for (const c of cmds) c.reject(new UpcallCancelledError(reason));
  }

  /** An event from a vCPU thread's device. */
  handleEvent(event: UpcallEvent): void {
    switch (event.kind) {
      case 'ack': {
        const cmd = this.current;
        if (!cmd || cmd.seq !== event.seq) return;
        clearTimeout(cmd.timer);
        this.current = undefined;
        cmd.resolve({ status: event.status, pc: event.pc === UPCALL_NO_PC ? null : event.pc, seq: event.seq });
        this.postNext();
        return;
      }
      case 'irq':
        this.interrupt();
        return;
      case 'affinity':
        for (const l of this.listeners) {
          try {
            l({ vcpu: event.vcpu, hostCpu: event.hostCpu, result: event.result });
          } catch {
            // A listener's failure is its own; the next one still hears of the request.
          }
        }
        return;
    }
  }

  private enqueue(code: number, hook: number, data: Uint8Array, signal: AbortSignal | undefined): Promise<LoadStatus> {
    if (!Number.isInteger(hook) || hook < 0 || hook > 0xffffffff) return Promise.reject(new RangeError(`hook must be a u32, got ${hook}`));
    if (this.closedReason !== undefined) return Promise.reject(new UpcallCancelledError(this.closedReason));
    if (signal?.aborted) return Promise.reject(new UpcallCancelledError('the caller withdrew the command'));
    if (this.pendingCommands >= this.maxPending) {
      return Promise.reject(new UpcallBusyError(`the upcall command queue is full (${this.maxPending} commands pending): try again later`));
    }
    let cmd!: Command;
    const done = new Promise<LoadStatus>((resolve, reject) => {
      cmd = { code, arg: hook, data, seq: 0, resolve, reject };
    });
    if (signal) {
      const onAbort = () => this.withdrawQueued(cmd);
      signal.addEventListener('abort', onAbort, { once: true });
      const off = () => signal.removeEventListener('abort', onAbort);
      done.then(off, off);
    }
    this.queue.push(cmd);
    if (!this.current) this.postNext();
    return done;
  }

  /** Drops `cmd` if it is still queued (not yet posted to the guest), rejecting it. */
  private withdrawQueued(cmd: Command): void {
    const i = this.queue.indexOf(cmd);
    if (i < 0) return;
    this.queue.splice(i, 1);
    cmd.reject(new UpcallCancelledError('the caller withdrew the command before the guest saw it'));
  }

  /** Makes the next queued command visible to the guest, interrupts it and starts its timeout. */
  private postNext(): void {
    const next = this.queue.shift();
    if (!next) return;
    // Sequence numbers run 1..0xffffffff: 0 never names a command.
    this.lastSeq = this.lastSeq >= 0xffffffff ? 1 : this.lastSeq + 1;
    next.seq = this.lastSeq;
    this.current = next;
    // Not unref'd: a caller awaiting the answer keeps the process alive until it settles.
    next.timer = setTimeout(() => this.timeout(next), this.timeoutMs);
    if (this.state.post(next.code, next.arg, next.seq, next.data)) this.interrupt();
  }

  private timeout(cmd: Command): void {
    // The guest may have ACKed just now: then its event is on the way and settles the command.
    if (this.current !== cmd || !this.state.cancel(cmd.seq)) return;
    this.current = undefined;
    this.interrupt();
    cmd.reject(new UpcallTimeoutError(`the guest did not answer command ${cmd.seq} within ${this.timeoutMs} ms`));
    this.postNext();
  }

  private interrupt(): void {
    const vector = this.state.vector;
    if (vector === 0) return;
    try {
      this.raiseIrq(vector);
    } catch {
      this.state.count('irqErrors');
    }
  }
}
