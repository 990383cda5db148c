/**
 * How "channel N has something for you" reaches the main thread, for each notification mode
 * (docs/channels.md, "Notification"):
 *
 * - {@link ChannelSignals}: shared words that coalesce notifications. Whoever learns of one (a
 *   vCPU thread on KT_HC_CHAN_NOTIFY or a doorbell-port exit, the notifier thread on an
 *   ioeventfd) sets channel N's pending word and posts a message only if it was clear, so a guest
 *   that notifies faster than the main thread reacts costs one message, not thousands.
 * - {@link Notifier} (mode `ioeventfd`): a worker thread blocked in `epoll_wait` on the channels'
 *   eventfds, which KVM signals in the kernel when the guest writes a doorbell port: the VMM
 *   waits on the eventfd with epoll, off the vCPU threads and off the event loop.
 * - {@link Poller} (mode `polling`): a loop on the main thread that looks at rings nobody rings a
 *   bell for.
 *
 * This file is also the notifier thread's entry point (the branch at the bottom runs only in a
 * worker started with this module's {@link NOTIFIER_TAG}).
 *
 * @module
 */
import { isMainThread, parentPort, receiveMessageOnPort, Worker, workerData } from 'node:worker_threads';
import * as sys from '../kvm/sys.js';
import { DIRECTORY_MAX } from './channel-area.js';

// ---- Shared notification words ----------------------------------------------------------------

/** Int32 offsets of the three arrays in a {@link ChannelSignals} buffer, one word per channel id. */
const PENDING = 0;
const OPEN = DIRECTORY_MAX;
const COUNT = 2 * DIRECTORY_MAX;

/**
 * One VM's notification words, in a SharedArrayBuffer every thread maps: per channel id a
 * "pending" word (set by whoever posts a notification, cleared by the main thread before it
 * looks at the rings), an "open" word (written by the main thread: notifications for other ids
 * are refused) and a running count of raw guest notifications (for statistics).
 */
export class ChannelSignals {
  readonly buffer: SharedArrayBuffer;
  readonly #words: Int32Array;

  constructor(buffer = new SharedArrayBuffer(3 * DIRECTORY_MAX * 4)) {
    this.buffer = buffer;
    this.#words = new Int32Array(buffer);
  }

  /** Whether `id` is a channel that takes notifications (open or suspended). */
  isOpen(id: number): boolean {
    return id >= 0 && id < DIRECTORY_MAX && Atomics.load(this.#words, OPEN + id) !== 0;
  }

  /** Main thread: marks `id` as taking notifications, or not. */
  setOpen(id: number, open: boolean): void {
    Atomics.store(this.#words, OPEN + id, open ? 1 : 0);
  }

  /**
   * Records `count` notifications for `id`. Returns true when the caller must post a message to
   * the main thread (nothing was pending), false when one is already on its way.
   */
  raise(id: number, count = 1): boolean {
    Atomics.add(this.#words, COUNT + id, count);
    return Atomics.exchange(this.#words, PENDING + id, 1) === 0;
  }

  /**
   * Main thread, on receiving the message: clears the pending word *before* looking at the ring,
   * so a notification raised after the look posts a new message rather than being swallowed.
   */
  take(id: number): void {
    Atomics.store(this.#words, PENDING + id, 0);
  }

  /** Raw notifications received for `id` so far (mod 2^32). */
  count(id: number): number {
    return Atomics.load(this.#words, COUNT + id) >>> 0;
  }
}

/** The message a vCPU thread or the notifier thread posts to the main thread. */
export interface ChannelNotifyMessage {
  type: 'chan-notify';
  id: number;
}

// ---- The epoll notifier thread ------------------------------------------------------------------

/** `workerData.kind` of the notifier thread. */
export const NOTIFIER_TAG = 'kvmtalk-channel-notifier';
/** epoll tag of the control eventfd (channel ids are below {@link DIRECTORY_MAX}). */
const CONTROL_TAG = 0xffffffff;
/**
 * epoll_wait timeout: the loop normally wakes on the control eventfd, but a finite timeout bounds
 * how long a thread blocked in a system call could delay process exit if a stop were missed.
 */
const WAIT_MS = 500;

interface NotifierData {
  kind: typeof NOTIFIER_TAG;
  control: number;
  signals: SharedArrayBuffer;
  stop: SharedArrayBuffer;
}

type NotifierCommand = { op: 'add'; fd: number; id: number } | { op: 'stop' };

/**
 * The notifier thread of one VM: a worker blocked in `epoll_wait` on every ioeventfd-mode
 * channel's eventfd plus a control eventfd. When KVM signals a channel's eventfd (the guest wrote
 * its doorbell port, no exit to userspace), the thread reads the counter and raises the channel
 * in {@link ChannelSignals}, posting `{ type: 'chan-notify', id }` to the main thread.
 *
 * Ownership: eventfds handed over with {@link Notifier.add} belong to the thread from then on; it
 * closes them (and its epoll fd and the control eventfd) when it stops. Closing them here while
 * the thread might still read them would race with fd-number reuse.
 */
export class Notifier {
  readonly #worker: Worker;
  readonly #control: number;
  readonly #stop = new Int32Array(new SharedArrayBuffer(4));
  #closed = false;

  /** @param onNotify called on the main thread with the channel id, once per posted message */
  constructor(signals: ChannelSignals, onNotify: (id: number) => void, onError: (e: Error) => void) {
    this.#control = sys.eventfd(0, sys.EFD_NONBLOCK);
    const data: NotifierData = { kind: NOTIFIER_TAG, control: this.#control, signals: signals.buffer, stop: this.#stop.buffer as SharedArrayBuffer };
    this.#worker = new Worker(new URL(import.meta.url), { workerData: data });
    this.#worker.on('message', (m: ChannelNotifyMessage) => onNotify(m.id));
    this.#worker.on('error', onError);
    // The VM's own lifetime keeps the process alive; this thread must not. And a process that
    // exits without vm.close() would otherwise wait for the thread's epoll_wait to time out.
    this.#worker.unref();
    process.on('exit', this.#onExit);
  }

  readonly #onExit = (): void => this.close();

  /** Hands eventfd `fd` of channel `id` to the thread (it owns and closes it from now on). */
  add(fd: number, id: number): void {
    if (this.#closed) throw new Error('the notifier thread has stopped');
    this.#command({ op: 'add', fd, id });
  }

  /** Stops the thread; it closes every eventfd it owns on its way out. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    process.off('exit', this.#onExit);
    Atomics.store(this.#stop, 0, 1);
    this.#command({ op: 'stop' });
  }

  #command(cmd: NotifierCommand): void {
    this.#worker.postMessage(cmd);
    // The thread is blocked in epoll_wait, not in its event loop: the control eventfd wakes it
    // and it then reads the port synchronously.
    sys.eventfdSignal(this.#control);
  }
}

/** The notifier thread's loop (runs only inside the worker). */
function notifierMain(data: NotifierData): void {
  const port = parentPort!;
  const signals = new ChannelSignals(data.signals);
  const stop = new Int32Array(data.stop);
  const epfd = sys.epollCreate();
  const fds = new Map<number, number>();
  const events = new Uint8Array(64 * sys.EPOLL_EVENT_SIZE);
  const counter = new BigUint64Array(1);
  sys.epollCtl(epfd, sys.EPOLL_CTL_ADD, data.control, sys.EPOLLIN, CONTROL_TAG);
  try {
    while (Atomics.load(stop, 0) === 0) {
      const n = sys.epollWait(epfd, events, WAIT_MS);
      for (let i = 0; i < n; i++) {
        const tag = sys.epollEventTag(events, i);
        if (tag === CONTROL_TAG) {
          sys.eventfdRead(data.control, counter);
          for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
            const cmd = m.message as NotifierCommand;
            if (cmd.op === 'add') {
              fds.set(cmd.id, cmd.fd);
              sys.epollCtl(epfd, sys.EPOLL_CTL_ADD, cmd.fd, sys.EPOLLIN, cmd.id);
            }
          }
          continue;
        }
        const fd = fds.get(tag);
        if (fd === undefined) continue;
        // The counter is how many doorbell writes KVM saw since the last read: exact statistics
        // for free, and reading resets it so the level-triggered epoll stops reporting it.
        const count = Number(sys.eventfdRead(fd, counter));
        if (count > 0 && signals.raise(tag, count)) port.postMessage({ type: 'chan-notify', id: tag } satisfies ChannelNotifyMessage);
      }
    }
  } finally {
    for (const fd of fds.values()) sys.close(fd);
    sys.close(epfd);
    sys.close(data.control);
  }
}

if (!isMainThread && (workerData as Partial<NotifierData> | null)?.kind === NOTIFIER_TAG) notifierMain(workerData as NotifierData);

// ---- The polling loop ---------------------------------------------------------------------------

/** Something the {@link Poller} looks at: returns true when it found work (data or room). */
export interface Pollable {
  poll(): boolean;
}

/** Tuning of the {@link Poller}. */
export interface PollerOptions {
  /** Empty rounds run back to back with setImmediate before backing off (default 16). */
  spinRounds?: number;
  /** Longest sleep between rounds once idle, in ms (default 8). */
  maxIntervalMs?: number;
  /** sched_yield() after each empty spin round (default true). */
  yield?: boolean;
}

/**
 * The main-thread poll loop of polling-mode channels. The guest never notifies in that mode, so
 * someone has to look; doing it on the main thread needs no extra thread and no shared state,
 * and a look is a few Atomics loads of ring words.
 *
 * Adaptive interval, and the trade-off it makes: while rounds find work, the next round runs at
 * once (setImmediate, interleaved with other I/O so the event loop stays responsive); after
 * {@link PollerOptions.spinRounds} empty rounds (each followed by a sched_yield) it sleeps 1, 2,
 * 4 … ms up to {@link PollerOptions.maxIntervalMs}. A busy channel thus gets near-spin latency
 * for up to one core of the event loop's time, and an idle one costs a wakeup every few ms; the
 * first message after a quiet spell waits up to `maxIntervalMs`.
 *
 * Why the spin phase is short: a polling guest spins too, so host and guest each want a core.
 * On the project's 2-core hosts, with anything else runnable, a long host spin takes the core the
 * vCPU needs and throughput collapses to one handoff per scheduler time slice (measured: the same
 * host→guest transfer ran at ~250 000 msg/s with free cores and ~3 000 msg/s under load). Where
 * latency matters more than a core, use ioeventfd mode (no exits, no polling); for bulk
 * guest→host transfer, `Channel.drain` takes everything available in one call.
 *
 * Channels register only while they wait for something (a pending receive, 'message'
 * listeners, a blocked send), so an idle VM has no timer at all.
 */
export class Poller {
  readonly #members = new Set<Pollable>();
  readonly #spinRounds: number;
  readonly #maxInterval: number;
  readonly #yield: boolean;
  #idle = 0;
  #scheduled: NodeJS.Immediate | NodeJS.Timeout | undefined;
  /** Whether {@link Poller.#scheduled} is a setImmediate (the next round comes at once). */
  #soon = false;

  constructor(opts: PollerOptions = {}) {
    this.#spinRounds = opts.spinRounds ?? 16;
    this.#maxInterval = opts.maxIntervalMs ?? 8;
    this.#yield = opts.yield ?? true;
  }

  /** Starts looking at `p` (at once: the next round runs immediately). */
  add(p: Pollable): void {
    this.#members.add(p);
    this.#idle = 0;
    if (this.#scheduled !== undefined && this.#soon) return;
    this.#cancel(); // a sleeping loop would keep a new member waiting up to maxIntervalMs
    this.#schedule(0);
  }

  /** Stops looking at `p`. */
  remove(p: Pollable): void {
    this.#members.delete(p);
    if (this.#members.size === 0) this.#cancel();
  }

  /** Stops the loop for good (the VM is closing). */
  stop(): void {
    this.#members.clear();
    this.#cancel();
  }

  #round = (): void => {
    this.#scheduled = undefined;
    let busy = false;
    for (const p of [...this.#members]) busy = p.poll() || busy;
    if (this.#members.size === 0) return;
    this.#idle = busy ? 0 : this.#idle + 1;
    const over = this.#idle - this.#spinRounds;
    // Spinning: give the CPU to a runnable thread first (often the very vCPU this loop waits for,
    // when the machine has fewer free cores than spinning threads); costs ~1 µs when none is.
    if (!busy && over <= 0 && this.#yield) sys.schedYield();
    this.#schedule(over <= 0 ? 0 : Math.min(this.#maxInterval, 2 ** Math.min(over - 1, 16)));
  };

  #schedule(ms: number): void {
    this.#soon = ms === 0;
    // Not unref()ed: an unref'd immediate does not stop libuv from blocking in its I/O poll, so
    // the round would wait for some unrelated event. The loop only runs while a channel waits
    // on a running guest (the VM keeps the process alive then anyway).
    this.#scheduled = ms === 0 ? setImmediate(this.#round) : setTimeout(this.#round, ms);
  }

  #cancel(): void {
    if (this.#scheduled === undefined) return;
    if (this.#soon) clearImmediate(this.#scheduled as NodeJS.Immediate);
    else clearTimeout(this.#scheduled as NodeJS.Timeout);
    this.#scheduled = undefined;
  }
}
