/**
 * The host end of one channel (docs/channels.md): a guest→host ring the host consumes and a
 * host→guest ring it produces into, plus the notification plumbing around them.
 *
 * Receiving has two styles, and a channel uses one at a time:
 * - **pull** (primary): `for await (const msg of channel)`, or `recv()`, `tryRecv()`, `drain(fn)`
 *   with `readable()`. Messages stay in the ring until the host asks for them, so a slow host
 *   consumer is real backpressure on the guest (its ring fills, it waits). This is the style to
 *   use by default.
 * - **push**: `channel.on('message', fn)`. While any 'message' listener is attached the channel
 *   empties the ring as soon as it hears from the guest and emits every message synchronously;
 *   the listener must keep up (the guest is never slowed down by it). Pull methods throw while
 *   listeners are attached, and attaching one during a pending pull throws.
 *
 * Events: `'message'` (Uint8Array, push style), `'doorbell'` (the guest notified this channel; also
 * while suspended, so an attached process can be told), `'error'` (RingCorruptedError, emitted only
 * if someone listens: a guest's fault must never throw into the VMM), `'closed'`
 * ({@link ChannelCloseInfo}).
 *
 * Trust: every ring access goes through {@link Ring}, which validates everything the guest
 * wrote; a violation closes this channel (both rings' close words, directory state closed) and
 * ends its iterator with the error. Nothing else in the VM is affected.
 *
 * @module
 */
import { EventEmitter } from 'node:events';
import type { ChannelMode, DirectoryEntry } from './channel-area.js';
import { channelLayout, CLOSED_BY_HOST, RING_FAULT, RING_OFF, ringFaultName, writeChannelHeader, type ChannelLayout, type RingFault } from './channel-layout.js';
import type { Poller } from './notifier.js';
import { Ring, RingCorruptedError } from './ring.js';

/** Lifecycle of a {@link Channel}. */
export type ChannelState = 'open' | 'suspended' | 'closed';

/** Why and by whom a channel was closed. */
export interface ChannelCloseInfo {
  /** `'host'` (close(), or the host found the guest's ring corrupt), `'guest'`, or `'vm'` (vm.close()). */
  by: 'host' | 'guest' | 'vm';
  /** Human-readable reason. */
  reason: string;
  /** The ring fault, when the channel was closed because of one (either side may report one). */
  fault?: RingFault;
  /** The error that ended the channel; absent for an orderly close. */
  error?: RingCorruptedError;
}

/** A send or receive on a channel that has been closed. */
export class ChannelClosedError extends Error {
  constructor(readonly channel: string, readonly info: ChannelCloseInfo) {
    super(`channel '${channel}' is closed: ${info.reason}`);
    this.name = 'ChannelClosedError';
  }
}

/** Counters of one channel; see {@link Channel.stats}. */
export interface ChannelStats {
  /** Messages and payload bytes the host took from the guest→host ring. */
  toHost: { messages: number; bytes: number };
  /** Messages and payload bytes the host put into the host→guest ring. */
  toGuest: { messages: number; bytes: number };
  notifications: {
    /** Guest→host notifications the VMM saw: KT_HC_CHAN_NOTIFY calls plus doorbell-port writes. */
    fromGuest: number;
    /** Times the host acted on them (several notifications in a row coalesce into one). */
    delivered: number;
    /** Host→guest interrupts raised. */
    toGuest: number;
  };
  /** Times the host had to wait: for data (a receive found the ring empty) and for space (a send found it full). */
  waits: { recv: number; send: number };
  /** Ring violations detected (0 or 1: the first closes the channel). */
  faults: number;
  /** Sends queued behind a full ring, and messages saved from the ring when the guest closed it. */
  pending: { sends: number; backlog: number };
}

/** What a {@link Channel} needs from its VM. */
export interface ChannelHost {
  /** Raises the channel's interrupt in the guest (an irqfd write); absent when the channel has no vector. */
  interrupt?: () => void;
  /** The VM's poll loop, for polling-mode channels. */
  poller?: Poller;
  /** Raw guest notifications counted for this channel so far. */
  notifications(): number;
  /** Called once when the channel closes (the VM marks the directory entry, stops notifications). */
  onClosed(channel: Channel): void;
}

/** Bytes of a channel region whose two rings each have `capacity` bytes of data. */
export function channelBytes(capacity: number): number {
  return channelLayout(capacity, capacity).size;
}

/**
 * Formats a channel in `region` (a view of its guest memory): both rings, then the channel header
 * (magic last). Returns the layout and the host ends of the two rings.
 */
export function formatChannel(region: Uint8Array, id: number, capacity: number): { layout: ChannelLayout; toHost: Ring; toGuest: Ring } {
  const layout = channelLayout(capacity, capacity);
  const view = (p: ChannelLayout['toHost']) => region.subarray(p.offset, p.offset + p.size);
  const toHost = Ring.init(view(layout.toHost), capacity);
  const toGuest = Ring.init(view(layout.toGuest), capacity);
  writeChannelHeader(region, id, layout);
  return { layout, toHost, toGuest };
}

interface PendingSend {
  msg: Uint8Array;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** Messages the push style emits per turn of the event loop before yielding to other work. */
const PUSH_BUDGET = 4096;
/** drain() copies messages up to this many bytes word by word (cheaper than a subarray + set). */
const SMALL_COPY = 256;
/** Fallback re-check of a full host→guest ring, in case the guest never rings back: 1 ms doubling to 50 ms. */
const SPACE_POLL_FIRST_MS = 1;
const SPACE_POLL_MAX_MS = 50;

/** The host end of a channel. Created by `vm.createChannel()` or when the guest opens one. */
export class Channel extends EventEmitter {
  /** Directory id (= index), also the doorbell port's offset from 0x100. */
  readonly id: number;
  readonly name: string;
  /** How the guest notifies the host (see docs/channels.md, "Notification"). */
  readonly mode: ChannelMode;
  /** Guest-physical address of the channel header. */
  readonly gpa: number;
  /** Bytes of the channel region. */
  readonly size: number;
  /** Doorbell port (0x100 + id). */
  readonly port: number;
  /** Interrupt vector for host→guest notifications; 0 = none (the guest polls). */
  readonly vector: number;
  /** The vCPU that receives the channel's interrupts. */
  readonly cpu: number;
  /** Where the two rings are inside the region. */
  readonly layout: ChannelLayout;

  readonly #region: Uint8Array;
  readonly #host: ChannelHost;
  #toHost: Ring;
  #toGuest: Ring;
  #state: ChannelState = 'open';
  #closeInfo: ChannelCloseInfo | undefined;
  /** The VM's run has ended: nothing more will come, nothing sent will be read. */
  #guestStopped = false;
  /** Messages saved from the ring when the guest closed the channel, delivered before the end. */
  #backlog: Uint8Array[] = [];
  /** Wakes the one pending {@link Channel.readable}. */
  #waiter: (() => void) | undefined;
  #pulling = false;
  #iterating = false;
  #push = false;
  /** Whether this end set want_data in the guest→host ring (and must clear it after reading). */
  #wantData = false;
  #sends: PendingSend[] = [];
  #wantSpace = false;
  #spaceTimer: NodeJS.Timeout | undefined;
  #spaceDelay = SPACE_POLL_FIRST_MS;
  #polled = false;
  /** Interrupt coalescing: a re-check is scheduled, and progress happened since the last check. */
  #checkScheduled = false;
  #progressSinceCheck = false;
  #readBuf: Uint8Array | undefined;
  // drain() state: the user's callbacks while a drain runs, the reused view, u32 views for the copy.
  #drainFn: ((msg: Uint8Array) => void) | undefined;
  #frameFn: ((data: Uint8Array, offset: number, len: number) => void | false) | undefined;
  #readView: Uint8Array | undefined;
  /** A drainFrames() callback returned false: the drain ends after that message. */
  #stopDrain = false;
  #buf32: Uint32Array | undefined;
  #data32: Uint32Array | undefined;
  #data32Of: Uint8Array | undefined;
  readonly #stats = {
    toHostMessages: 0, toHostBytes: 0, toGuestMessages: 0, toGuestBytes: 0, delivered: 0, interrupts: 0, recvWaits: 0, sendWaits: 0, faults: 0,
  };

  /** @internal Use `vm.createChannel()`. */
  constructor(entry: DirectoryEntry, formatted: { layout: ChannelLayout; toHost: Ring; toGuest: Ring }, region: Uint8Array, cpu: number, host: ChannelHost) {
    super();
    this.id = entry.id;
    this.name = entry.name;
    this.mode = entry.mode;
    this.gpa = entry.gpa;
    this.size = entry.size;
    this.port = entry.port;
    this.vector = entry.vector;
    this.cpu = cpu;
    this.layout = formatted.layout;
    this.#toHost = formatted.toHost;
    this.#toGuest = formatted.toGuest;
    this.#region = region;
    this.#host = host;
    this.on('newListener', (event: string | symbol) => {
      if (event !== 'message') return;
      if (this.#pulling || this.#iterating) throw new Error(`channel '${this.name}' is being read with recv()/for await; it cannot also have 'message' listeners`);
      if (this.#push) return;
      this.#push = true;
      this.#updatePolling();
      // The listener is registered only after this hook returns: deliver what is waiting on the next tick.
      queueMicrotask(() => this.#service());
    });
    this.on('removeListener', (event: string | symbol) => {
      if (event !== 'message' || this.listenerCount('message') > 0) return;
      this.#push = false;
      this.#updatePolling();
    });
  }

  /** `'open'`, `'suspended'` (another process holds the rings) or `'closed'`. */
  get state(): ChannelState {
    return this.#state;
  }

  /** Why the channel closed, once it has. */
  get closeInfo(): ChannelCloseInfo | undefined {
    return this.#closeInfo;
  }

  /** Largest message {@link Channel.send} accepts (and the guest can send). */
  get maxMessageSize(): number {
    return this.#toGuest.maxMessageSize;
  }

  // ---- Receiving (guest → host) ----------------------------------------------------------------

  /**
   * Async iteration over the guest's messages, in order (the primary receive API). Ends when the
   * channel closes in an orderly way (after delivering what the guest sent before closing) or the
   * VM's run has ended and the ring is empty; throws the {@link RingCorruptedError} if the guest
   * corrupted the ring. Only one iterator at a time; breaking out of the loop releases it.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array, void, undefined> {
    this.#checkPull('for await');
    if (this.#iterating) throw new Error(`channel '${this.name}' already has an active iterator`);
    this.#iterating = true;
    try {
      for (;;) {
        const msg = await this.recv();
        if (msg === null) return;
        yield msg;
      }
    } finally {
      this.#iterating = false;
    }
  }

  /**
   * The next message (a private copy), waiting for one if needed. Resolves null at the end of
   * the stream (orderly close, or the VM stopped and the ring is empty); rejects with the
   * {@link RingCorruptedError} after a corruption.
   */
  async recv(): Promise<Uint8Array | null> {
    for (;;) {
      const msg = this.#takeOne('recv()');
      if (msg) return msg;
      if (!(await this.readable())) return null;
    }
  }

  /**
   * The next message if one is waiting now, else null (also null once closed in an orderly way;
   * check {@link Channel.state}). Throws the {@link RingCorruptedError} of a corrupted channel.
   */
  tryRecv(): Uint8Array | null {
    const msg = this.#takeOne('tryRecv()');
    if (msg === null && this.#closeInfo?.error && this.#backlog.length === 0) throw this.#closeInfo.error;
    return msg;
  }

  /**
   * Consumes every message available now (at most `max`) in one synchronous call: the fastest
   * way to read that hands out stable bytes. `fn` gets a view into a buffer this channel reuses
   * (a copy of the payload, so the guest cannot change it under `fn`), valid only during the call
   * (copy it to keep it). The guest's "space freed" interrupt is checked once at the end rather
   * than per message. Returns how many messages it consumed. Pair with {@link Channel.readable}:
   * `while (await ch.readable()) ch.drain(fn)`. Reads through {@link Ring.readBatch}; allocates
   * nothing per message (the view is reused while consecutive messages have the same length).
   */
  drain(fn: (msg: Uint8Array) => void, max = Infinity): number {
    this.#checkPull('drain()');
    this.#readBuf ??= new Uint8Array((this.#toHost.maxMessageSize + 7) & ~7);
    this.#drainFn = fn;
    try {
      return this.#drainWith(fn, this.#copyOut, max);
    } finally {
      this.#drainFn = undefined;
    }
  }

  /**
   * Zero-copy {@link Channel.drain}: hands every message to `fn` **in place** in the guest→host
   * ring as `(data, offset, len)`, the payload being `data[offset .. offset + len)`; `fn` may
   * return `false` to stop after that message. Allocates nothing. The offset and length are
   * validated (the frame lies inside the ring and inside what the guest published), but the
   * payload bytes are guest memory that a misbehaving guest can rewrite at any moment, even while
   * `fn` runs: read each byte a decision depends on once, copy what is kept beyond the call, never
   * write to `data` (see {@link Ring.readBatch}). Messages saved before a guest close (backlog)
   * come as `(copy, 0, copy.length)`. Returns how many messages it consumed.
   */
  drainFrames(fn: (data: Uint8Array, offset: number, len: number) => void | false, max = Infinity): number {
    this.#checkPull('drainFrames()');
    this.#frameFn = fn;
    try {
      return this.#drainWith((m) => {
        if (fn(m, 0, m.length) === false) this.#stopDrain = true;
      }, this.#countFrame, max);
    } finally {
      this.#frameFn = undefined;
    }
  }

  /** The loop of drain()/drainFrames(): backlog first, then batches from the ring until empty. */
  #drainWith(backlogFn: (msg: Uint8Array) => void, frameFn: (data: Uint8Array, offset: number, len: number) => void | false, max: number): number {
    let backlog = 0;
    // Ring messages are counted by the frame callbacks (stats), so a throw still counts them.
    const before = this.#stats.toHostMessages;
    const taken = () => backlog + this.#stats.toHostMessages - before;
    this.#stopDrain = false;
    try {
      while (backlog < max && this.#backlog.length > 0) {
        backlog++;
        backlogFn(this.#backlog.shift()!);
        if (this.#stopDrain) return backlog;
      }
      while (taken() < max && this.#state === 'open' && !this.#stopDrain) {
        try {
          if (this.#toHost.readBatch(frameFn, max - taken()) === 0) break;
        } catch (e) {
          // Only the ring's own verdict closes the channel; anything else came from the callback.
          if (e instanceof RingCorruptedError && e === this.#toHost.fault) {
            this.#ringError(e);
            break;
          }
          throw e;
        }
      }
    } finally {
      if (taken() > 0) this.#consumed();
    }
    return taken();
  }

  /** drain()'s frame callback: copy out (word copy for small messages), count, call the user. */
  readonly #copyOut = (data: Uint8Array, offset: number, len: number): void | false => {
    const buf = this.#readBuf!;
    if (len <= SMALL_COPY) {
      let d32 = this.#data32;
      if (this.#data32Of !== data) {
        d32 = this.#data32 = new Uint32Array(data.buffer, data.byteOffset, data.length >>> 2);
        this.#data32Of = data;
        this.#buf32 ??= new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
      }
      // offset is 8-aligned and the frame is padded to 8, so whole words stay inside the frame;
      // buf is a multiple of 8 bytes long.
      const b32 = this.#buf32!;
      const w = offset >>> 2;
      for (let i = 0, words = (len + 3) >>> 2; i < words; i++) b32[i] = d32![w + i];
    } else {
      buf.set(data.subarray(offset, offset + len));
    }
    let view = this.#readView;
    if (view === undefined || view.length !== len) view = this.#readView = buf.subarray(0, len);
    this.#stats.toHostMessages++;
    this.#stats.toHostBytes += len;
    this.#drainFn!(view);
    return this.#state === 'open' ? undefined : false;
  };

  /** drainFrames()'s frame callback: count, call the user in place. */
  readonly #countFrame = (data: Uint8Array, offset: number, len: number): void | false => {
    this.#stats.toHostMessages++;
    this.#stats.toHostBytes += len;
    if (this.#frameFn!(data, offset, len) === false) this.#stopDrain = true;
    return this.#state === 'open' && !this.#stopDrain ? undefined : false;
  };

  /**
   * Resolves true as soon as a message can be read (at once if one is waiting), false at the end
   * of the stream; rejects with the {@link RingCorruptedError} of a corrupted channel. Sets the
   * ring's want_data flag while it waits, so the guest notifies (per the channel's mode). One
   * pending call at a time.
   */
  async readable(): Promise<boolean> {
    this.#checkPull('readable()');
    if (this.#pulling) throw new Error(`channel '${this.name}' already has a pending receive`);
    this.#pulling = true;
    try {
      let waited = false;
      for (;;) {
        if (this.#backlog.length > 0) return true;
        if (this.#state === 'closed') {
          if (this.#closeInfo?.error) throw this.#closeInfo.error;
          return false;
        }
        if (this.#state === 'open') {
          if (this.#available() > 0) return true;
          if (this.#state !== 'open') continue; // the look found corruption
          if (this.#guestStopped) return false;
          if (!this.#armData()) continue; // data arrived while arming
        } else if (this.#guestStopped) {
          return false;
        }
        if (!waited) this.#stats.recvWaits++;
        waited = true;
        await new Promise<void>((resolve) => {
          this.#waiter = resolve;
          this.#updatePolling();
        });
      }
    } finally {
      this.#pulling = false;
      this.#waiter = undefined;
      this.#updatePolling();
    }
  }

  // ---- Sending (host → guest) ----------------------------------------------------------------

  /**
   * Sends one message. Resolves once it is in the ring (at once when there is room); while the
   * ring is full, messages queue in order and the host sets want_space, waiting for the guest to
   * ring back after reading (with a slow timer as fallback). A queued message is copied, so the
   * caller may reuse its buffer. Raises the channel's interrupt when the guest waits for data.
   * Rejects with RangeError above {@link Channel.maxMessageSize}, {@link ChannelClosedError}
   * (or the ring's error) once the channel closes, and an Error once the VM has stopped.
   */
  send(msg: Uint8Array): Promise<void> {
    if (this.#state === 'closed') return Promise.reject(this.#closedError());
    if (this.#guestStopped) return Promise.reject(new Error(`channel '${this.name}': the VM is not running, nobody would read this message`));
    if (msg.length > this.#toGuest.maxMessageSize) {
      return Promise.reject(new RangeError(`message of ${msg.length} bytes is above channel '${this.name}''s maximum of ${this.#toGuest.maxMessageSize}`));
    }
    if (this.#state === 'open' && this.#sends.length === 0) {
      try {
        if (this.#toGuest.tryWrite(msg)) {
          this.#sent(msg.length);
          this.#progress();
          return Promise.resolve();
        }
      } catch (e) {
        this.#ringError(e);
        return Promise.reject(this.#closedError());
      }
    }
    return new Promise<void>((resolve, reject) => {
      this.#sends.push({ msg: msg.slice(), resolve, reject });
      this.#flushSends();
    });
  }

  /**
   * Raises the channel's interrupt in the guest now, whatever its flags say (for a process that
   * attached to the rings and produces into them itself). Returns false when the channel has no
   * vector or is closed.
   */
  kick(): boolean {
    if (this.#state === 'closed' || !this.#host.interrupt) return false;
    this.#raise();
    return true;
  }

  // ---- Lifecycle -------------------------------------------------------------------------------

  /**
   * Hands the rings to someone else (another process attached through the control socket): from
   * now on the host neither consumes nor produces. Pending receives and sends wait; doorbells are
   * still emitted as 'doorbell' events. Idempotent.
   * @throws ChannelClosedError on a closed channel
   */
  suspend(): void {
    if (this.#state === 'closed') throw this.#closedError();
    if (this.#state === 'suspended') return;
    this.#state = 'suspended';
    this.#disarmSpaceTimer();
    this.#updatePolling();
  }

  /**
   * Takes the rings back after {@link Channel.suspend}: re-attaches to both (the other process
   * moved the indices) with full validation, resets this end's doorbell flags and serves
   * whatever waits. A ring the other process left corrupt closes the channel like any
   * corruption. Does nothing unless suspended.
   */
  resume(): void {
    if (this.#state !== 'suspended') return;
    try {
      const view = (p: ChannelLayout['toHost']) => this.#region.subarray(p.offset, p.offset + p.size);
      const toHost = Ring.attach(view(this.layout.toHost));
      const toGuest = Ring.attach(view(this.layout.toGuest));
      this.#toHost = toHost;
      this.#toGuest = toGuest;
      this.#state = 'open';
      toHost.endWaitData();
      toGuest.endWaitSpace();
    } catch (e) {
      this.#state = 'open';
      this.#ringError(e);
      return;
    }
    this.#wantData = false;
    this.#wantSpace = false;
    this.#service();
    this.#progress();
  }

  /**
   * Closes the channel from the host: writes both rings' close words (the guest sees -KT_EPIPE),
   * marks the directory entry closed, ends the iterator, rejects queued sends. Idempotent.
   */
  close(): void {
    this.#finish({ by: 'host', reason: 'closed by the host' }, 'closed');
  }

  /** Counters; see {@link ChannelStats}. */
  stats(): ChannelStats {
    const s = this.#stats;
    return {
      toHost: { messages: s.toHostMessages, bytes: s.toHostBytes },
      toGuest: { messages: s.toGuestMessages, bytes: s.toGuestBytes },
      notifications: { fromGuest: this.#host.notifications(), delivered: s.delivered, toGuest: s.interrupts },
      waits: { recv: s.recvWaits, send: s.sendWaits },
      faults: s.faults,
      pending: { sends: this.#sends.length, backlog: this.#backlog.length },
    };
  }

  /** A plain description (for the control socket and logs). */
  info(): { id: number; name: string; gpa: number; size: number; mode: ChannelMode; port: number; vector: number; cpu: number; state: ChannelState; layout: ChannelLayout } {
    return { id: this.id, name: this.name, gpa: this.gpa, size: this.size, mode: this.mode, port: this.port, vector: this.vector, cpu: this.cpu, state: this.#state, layout: this.layout };
  }

  // ---- Called by the VM --------------------------------------------------------------------------

  /** @internal The guest notified this channel (KT_HC_CHAN_NOTIFY, a doorbell, the notifier thread). */
  notify(): void {
    this.#stats.delivered++;
    this.emit('doorbell');
    this.#service();
  }

  /** @internal Poll-loop hook (polling mode): serves the channel if the rings moved. Returns whether it found work. */
  poll(): boolean {
    if (this.#state !== 'open') return false;
    const before = this.#stats.toGuestMessages + this.#stats.toHostMessages;
    const data = (this.#waiter !== undefined || this.#push) && this.#available() > 0;
    this.#service();
    return data || this.#stats.toGuestMessages + this.#stats.toHostMessages !== before;
  }

  /**
   * @internal KT_HC_CHAN_CLOSE: saves what the guest sent before closing (delivered before the
   * end of the stream), then closes both rings.
   */
  closeFromGuest(): void {
    if (this.#state === 'open') {
      try {
        for (let m = this.#toHost.tryRead(); m; m = this.#toHost.tryRead()) {
          this.#backlog.push(m);
          this.#stats.toHostMessages++;
          this.#stats.toHostBytes += m.length;
        }
      } catch (e) {
        this.#ringError(e);
        return;
      }
    }
    this.#finish({ by: 'guest', reason: 'closed by the guest (KT_HC_CHAN_CLOSE)' }, 'closed');
  }

  /** @internal The VM's run ended: wake receivers (they finish what is in the ring), fail queued sends. */
  guestStopped(): void {
    if (this.#guestStopped) return;
    this.#guestStopped = true;
    this.#disarmSpaceTimer();
    const err = new Error(`channel '${this.name}': the VM stopped before the guest read this message`);
    for (const s of this.#sends.splice(0)) s.reject(err);
    this.#service();
    this.#wake();
    this.#updatePolling();
  }

  /** @internal vm.close(): closes the channel before guest memory goes away. */
  dispose(): void {
    this.#finish({ by: 'vm', reason: 'the VM was closed' }, 'closed');
  }

  // ---- Internals ---------------------------------------------------------------------------------

  #checkPull(what: string): void {
    if (this.#push) throw new Error(`channel '${this.name}' delivers to 'message' listeners; ${what} is not available while they are attached`);
  }

  /** Next message from the backlog or the ring, or null; a ring fault closes the channel and gives null. */
  #takeOne(what: string): Uint8Array | null {
    this.#checkPull(what);
    return this.#next();
  }

  #next(): Uint8Array | null {
    if (this.#backlog.length > 0) return this.#backlog.shift()!;
    if (this.#state !== 'open') return null;
    let msg: Uint8Array | null;
    try {
      msg = this.#toHost.tryRead();
    } catch (e) {
      this.#ringError(e);
      return null;
    }
    if (msg) {
      this.#stats.toHostMessages++;
      this.#stats.toHostBytes += msg.length;
      this.#consumed();
    }
    return msg;
  }

  /** After reading: stop asking for doorbells while busy, and let a guest waiting for space know. */
  #consumed(): void {
    if (this.#wantData && this.#state === 'open') {
      this.#wantData = false;
      try {
        this.#toHost.endWaitData();
      } catch (e) {
        this.#ringError(e);
        return;
      }
    }
    this.#progress();
  }

  /** Bytes waiting in the guest→host ring (0 after a fault, which closes the channel). */
  #available(): number {
    try {
      return this.#toHost.available();
    } catch (e) {
      this.#ringError(e);
      return 0;
    }
  }

  /** Sets want_data and re-checks; true means still empty (wait for a doorbell). */
  #armData(): boolean {
    this.#wantData = true;
    try {
      return this.#toHost.prepareWaitData();
    } catch (e) {
      this.#ringError(e);
      return false;
    }
  }

  /** Reacts to whatever may have changed: queued sends, then the receive side. */
  #service(): void {
    if (this.#state !== 'open') return;
    if (this.#sends.length > 0) this.#flushSends();
    if (this.#push) this.#pushDrain();
    else this.#wake();
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }

  /** Push style: emit everything waiting, then arm want_data (or continue on the next turn). */
  #pushDrain(): void {
    let budget = PUSH_BUDGET;
    for (;;) {
      for (let m = this.#next(); m; m = this.#next()) {
        this.emit('message', m);
        if (!this.#push || this.#state !== 'open') return;
        if (--budget === 0) {
          setImmediate(() => this.#service());
          return;
        }
      }
      if (this.#state !== 'open' || this.#guestStopped) return;
      if (this.#armData()) return;
    }
  }

  #flushSends(): void {
    if (this.#state !== 'open') return;
    let wrote = false;
    try {
      while (this.#sends.length > 0) {
        const s = this.#sends[0];
        if (!this.#toGuest.tryWrite(s.msg)) {
          if (this.#toGuest.prepareWaitSpace(s.msg.length)) {
            if (!this.#wantSpace) this.#stats.sendWaits++;
            this.#wantSpace = true;
            this.#armSpaceTimer();
            break;
          }
          continue; // room appeared between the write and the flag
        }
        this.#sends.shift();
        this.#sent(s.msg.length);
        wrote = true;
        s.resolve();
      }
      if (this.#sends.length === 0 && this.#wantSpace) {
        this.#wantSpace = false;
        this.#toGuest.endWaitSpace();
        this.#disarmSpaceTimer();
      }
    } catch (e) {
      this.#ringError(e);
    }
    if (wrote) {
      this.#spaceDelay = SPACE_POLL_FIRST_MS;
      this.#progress();
    }
    this.#updatePolling();
  }

  #sent(bytes: number): void {
    this.#stats.toGuestMessages++;
    this.#stats.toGuestBytes += bytes;
  }

  /**
   * The host wrote (to-guest data) or read (to-host space): raise the interrupt if the guest
   * waits for either. Coalesced: the first progress in a turn of the event loop checks at once
   * (lowest latency); later progress in the same turn only marks a re-check that runs on the
   * next turn. Every write or read is therefore followed by a flag check that comes after it, so
   * no wakeup is lost, while a burst of sends raises one interrupt, not one per message.
   */
  #progress(): void {
    if (this.#checkScheduled) {
      this.#progressSinceCheck = true;
      return;
    }
    this.#checkFlags();
    this.#checkScheduled = true;
    this.#progressSinceCheck = false;
    // Not unref()ed: an unref'd immediate can wait for unrelated I/O to wake the event loop.
    setImmediate(() => {
      this.#checkScheduled = false;
      if (this.#progressSinceCheck) this.#progress();
    });
  }

  #checkFlags(): void {
    if (this.#state !== 'open' || !this.#host.interrupt) return;
    let needed: boolean;
    try {
      needed = this.#toGuest.dataDoorbellNeeded() || this.#toHost.spaceDoorbellNeeded();
    } catch (e) {
      this.#ringError(e);
      return;
    }
    if (needed) this.#raise();
  }

  #raise(): void {
    this.#stats.interrupts++;
    this.#host.interrupt!();
  }

  #armSpaceTimer(): void {
    if (this.#spaceTimer) return;
    this.#spaceTimer = setTimeout(() => {
      this.#spaceTimer = undefined;
      this.#spaceDelay = Math.min(this.#spaceDelay * 2, SPACE_POLL_MAX_MS);
      this.#flushSends();
    }, this.#spaceDelay);
    this.#spaceTimer.unref();
  }

  #disarmSpaceTimer(): void {
    if (this.#spaceTimer) clearTimeout(this.#spaceTimer);
    this.#spaceTimer = undefined;
    this.#spaceDelay = SPACE_POLL_FIRST_MS;
  }

  /** Polling mode: be in the VM's poll loop exactly while something waits on the guest. */
  #updatePolling(): void {
    const poller = this.#host.poller;
    if (this.mode !== 'polling' || !poller) return;
    const need = this.#state === 'open' && !this.#guestStopped && (this.#waiter !== undefined || this.#push || this.#sends.length > 0);
    if (need === this.#polled) return;
    this.#polled = need;
    if (need) poller.add(this);
    else poller.remove(this);
  }

  /** A ring operation threw: a guest's doing closes the channel; anything else is a host bug and propagates. */
  #ringError(e: unknown): void {
    if (!(e instanceof RingCorruptedError)) throw e;
    if (e.fault === 'peer-closed') {
      const word = Math.max(this.#closeWord(this.layout.toHost.offset), this.#closeWord(this.layout.toGuest.offset));
      const code = word & 0xff;
      const byHost = (word >>> 8) === CLOSED_BY_HOST; // an attached process writes the host side's code
      if (code === RING_FAULT.closed) {
        this.#finish({ by: byHost ? 'host' : 'guest', reason: byHost ? 'the ring was closed on the host side' : 'closed by the guest' }, 'closed');
      } else {
        this.#finish({ by: byHost ? 'host' : 'guest', reason: e.message, fault: ringFaultName(code), error: e }, 'peer-closed');
      }
      return;
    }
    this.#stats.faults++;
    this.#finish({ by: 'host', reason: `the guest corrupted the ring: ${e.fault}: ${e.detail}`, fault: e.fault, error: e }, e.fault);
  }

  #closeWord(ringOffset: number): number {
    return this.#word(ringOffset + RING_OFF.close);
  }

  /** A u32 of the region, loaded once with Atomics (a guest-writable word: advisory only). */
  #word(offset: number): number {
    return Atomics.load(new Int32Array(this.#region.buffer, this.#region.byteOffset + offset, 1), 0) >>> 0;
  }

  #closedError(): Error {
    const info = this.#closeInfo!;
    return info.error ?? new ChannelClosedError(this.name, info);
  }

  /**
   * The one way a channel ends: close words on both rings (each Ring keeps its first error, so a
   * ring that already failed keeps its own code), directory and VM bookkeeping, then everyone
   * waiting hears about it, then the events.
   */
  #finish(info: ChannelCloseInfo, fault: RingFault): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#closeInfo = info;
    // A ring that already failed keeps its code; the other one tells the guest why (or just
    // "closed" when the guest closed first: its own close word is the better record).
    const ringFault = fault === 'peer-closed' ? 'closed' : fault;
    this.#toHost.close(ringFault, info.reason);
    this.#toGuest.close(ringFault, info.reason);
    // A guest asleep waiting for data or space must wake up to see the close word. The flags
    // are read raw (the Ring objects refuse to work once closed), after the close words' seq_cst
    // stores: the guest sets its flag, fences and re-checks, so it sees one or we see the other.
    if (info.by !== 'vm' && this.#host.interrupt && (this.#word(this.layout.toGuest.offset + RING_OFF.wantData) !== 0 || this.#word(this.layout.toHost.offset + RING_OFF.wantSpace) !== 0)) {
      this.#raise();
    }
    this.#disarmSpaceTimer();
    this.#updatePolling();
    this.#host.onClosed(this);
    const err = this.#closedError();
    for (const s of this.#sends.splice(0)) s.reject(err);
    if (this.#push) {
      for (const m of this.#backlog.splice(0)) this.emit('message', m);
    }
    this.#wake();
    if (info.error && this.listenerCount('error') > 0) this.emit('error', info.error);
    this.emit('closed', info);
  }
}
