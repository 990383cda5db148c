/**
 * Attaching to a running VM's channel from another host process (docs/channels.md, "Attaching
 * from another host process"): the seed's `read_shared_mem`, done safely.
 *
 *     const ch = await attachChannel('my-vm', 'telemetry');
 *     for await (const msg of ch) console.log(Buffer.from(msg).toString());
 *     await ch.close();
 *
 * How: the VM's control socket says where guest RAM is (`describe`: pid and memfd number) and
 * hands the channel over (`attach`: the VMM stops using it). This process opens
 * `/proc/<pid>/fd/<memfd>` — allowed for root and for the VMM's own user, as for ptrace — maps
 * only the pages of that channel, and runs both rings itself: it consumes guest→host messages
 * and produces host→guest ones.
 *
 * Notifications: the guest's doorbells (hypercall, ioeventfd) go to the VMM, not here, so this
 * end polls the guest→host ring with a short adaptive interval (1 ms after traffic, backing off
 * to 25 ms when idle) and never asks the guest for doorbells. The other way round, only the VMM
 * can raise the guest's interrupt: after writing a message the guest waits for (its `want_data`
 * flag), or consuming while the guest waits for space (`want_space`), this end sends `kick` over
 * the socket and the VMM raises the channel's vector.
 *
 * Trust: guest memory is as untrusted here as in the VMM. The rings are the same validated
 * {@link Ring} code; their geometry is checked against what the VMM reported (the VMM keeps its
 * own copy, the guest cannot change it), and the mapping covers the channel only, so no bug can
 * reach other guest RAM.
 *
 * @module
 */
import { fstatSync, readlinkSync, statSync } from 'node:fs';
import { Ring, RingCorruptedError } from '../channel/ring.js';
import * as sys from '../kvm/sys.js';
import { ControlClient } from './client.js';
import type { AttachInfo, DescribeReply, RingInfo } from './protocol.js';
import { findVm, runtimeDirPath, type VmEntry } from './runtime-dir.js';

/** Options of {@link attachChannel}. */
export interface AttachOptions {
  /** Runtime directory to look the VM up in (default: {@link runtimeDirPath}). */
  dir?: string;
  /** Shortest polling interval, after traffic (ms, default 1). */
  pollMinMs?: number;
  /** Longest polling interval, when idle (ms, default 25). */
  pollMaxMs?: number;
  /** Time limit for connecting and each request (ms, default 5000). */
  timeoutMs?: number;
}

/** A channel this process has taken over; see the module comment. */
export interface AttachedChannel extends AsyncIterable<Uint8Array> {
  /** The VM, as announced in the runtime directory. */
  readonly vm: VmEntry;
  /** The channel, as the VMM described it when attaching. */
  readonly info: AttachInfo;
  /** Why the channel ended (guest closed it, VM exited, closed here), or undefined while it runs. */
  readonly endReason: string | undefined;
  /** The next guest→host message, or null once nothing more will come (see {@link endReason}). */
  recv(): Promise<Uint8Array | null>;
  /** The next guest→host message if one is waiting, else null. */
  tryRecv(): Uint8Array | null;
  /**
   * Sends a host→guest message (a string is sent as UTF-8). Waits while the ring is full; kicks
   * the guest through the VMM if it waits for data. Resolves once the message is in the ring.
   */
  send(msg: Uint8Array | string): Promise<void>;
  /** Detaches (the VMM takes the channel back) and unmaps. Idempotent. */
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The page-aligned file range that covers [gpa, gpa + size). */
function pageRange(gpa: number, size: number, pageSize: number): { start: number; length: number } {
  const start = Math.floor(gpa / pageSize) * pageSize;
  const end = Math.ceil((gpa + size) / pageSize) * pageSize;
  return { start, length: end - start };
}

/** Opens the VMM's guest RAM memfd through /proc; one-line errors for the usual failures. */
function openMemfd(pid: number, memfd: number): number {
  const path = `/proc/${pid}/fd/${memfd}`;
  let target: string;
  try {
    target = readlinkSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') throw new Error(`permission denied reading ${path}: attach as root or as the user running the VM`);
    throw new Error(`cannot find the VM's memory at ${path}: ${(e as Error).message}`);
  }
  // The number came over a socket: make sure it really is guest RAM, not some other file.
  if (!target.startsWith('/memfd:')) throw new Error(`${path} is ${target}, not a memfd: the VM described itself wrongly`);
  try {
    return sys.open(path, sys.O_RDWR);
  } catch (e) {
    if (e instanceof sys.SysError && (e.code === 'EACCES' || e.code === 'EPERM')) throw new Error(`permission denied opening ${path}: attach as root or as the user running the VM`);
    throw e;
  }
}

/**
 * The pid comes from the socket, and this process may be root: a VM must not be able to make it
 * open another user's memory (say, a root VMM's) by naming that process. So the described pid
 * must be the one the VM announced, and belong to the user who owns the socket.
 */
function checkOwner(entry: VmEntry, pid: number): void {
  if (pid !== entry.pid) throw new Error(`VM '${entry.name}' announced pid ${entry.pid} but describes itself as pid ${pid}`);
  let procUid: number;
  try {
    procUid = statSync(`/proc/${pid}`).uid;
  } catch {
    throw new Error(`VM '${entry.name}': process ${pid} is gone`);
  }
  const socketUid = statSync(entry.socket).uid;
  if (procUid !== socketUid) throw new Error(`VM '${entry.name}': process ${pid} belongs to uid ${procUid}, its socket to uid ${socketUid}; refusing to attach`);
}

/** Attaches to one ring and checks it against the VMM's record of its geometry. */
function attachRing(channel: Uint8Array, r: RingInfo, what: string): Ring {
  if (r.offset < 0 || r.offset + r.size > channel.length) throw new Error(`the VMM placed the ${what} ring outside the channel`);
  const ring = Ring.attach(channel.subarray(r.offset, r.offset + r.size));
  if (ring.capacity !== r.capacity) throw new RingCorruptedError('bad-config', `${what} ring capacity ${ring.capacity} in guest memory, the VMM created it with ${r.capacity}`);
  return ring;
}

/**
 * Attaches to channel `channelName` of the VM named `vm` (or the only VM of process `vm`, given a
 * pid). Rejects with a one-line Error for an unknown VM or channel, a channel another process
 * holds, permission denied, or a VM whose RAM is not shareable.
 */
export async function attachChannel(vm: string | number, channelName: string, options: AttachOptions = {}): Promise<AttachedChannel> {
  const entry = findVm(vm, options.dir ?? runtimeDirPath());
  const client = await ControlClient.connect(entry.socket, options.timeoutMs);
  let fd = -1;
  let attached = false;
  try {
    const timeout = options.timeoutMs ?? 5000;
    const d = await client.request<DescribeReply>({ op: 'describe' }, timeout);
    checkOwner(entry, d.pid);
    const pow2 = (n: unknown) => Number.isSafeInteger(n) && (n as number) >= 4096 && (n as number) <= 2 ** 30 && ((n as number) & ((n as number) - 1)) === 0;
    if (!pow2(d.pageSize) || !Number.isSafeInteger(d.memSize) || d.memSize <= 0) throw new Error(`VM '${entry.name}' described its memory wrongly (size ${d.memSize}, page size ${d.pageSize})`);
    if (d.memfd === null) throw new Error(`VM '${entry.name}' has guest RAM that other processes cannot map (anonymous THP memory); run it with another memory backing`);
    // Open the memory before attaching, so a permission problem leaves the VMM's channel alone.
    fd = openMemfd(d.pid, d.memfd);
    const { channel: info } = await client.request<{ channel: AttachInfo }>({ op: 'attach', channel: channelName }, timeout);
    attached = true;
    const range = pageRange(info.gpa, info.size, d.pageSize);
    // Mapping past the end of the file would turn the first access into SIGBUS: check first.
    const fileSize = fstatSync(fd).size;
    if (!Number.isSafeInteger(info.gpa) || !Number.isSafeInteger(info.size) || info.gpa < 0 || info.size <= 0 || range.start + range.length > Math.min(d.memSize, fileSize)) {
      throw new Error(`the VMM placed channel '${channelName}' (${info.gpa}+${info.size}) outside guest RAM (${Math.min(d.memSize, fileSize)} bytes)`);
    }
    const addr = sys.mmap(range.length, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_SHARED, fd, range.start);
    sys.close(fd);
    fd = -1;
    try {
      const bytes = new Uint8Array(sys.view(addr, range.length));
      const channel = bytes.subarray(info.gpa - range.start, info.gpa - range.start + info.size);
      const toHost = attachRing(channel, info.toHost, 'to-host');
      const toGuest = attachRing(channel, info.toGuest, 'to-guest');
      return new Attachment(entry, info, client, { addr, length: range.length }, toHost, toGuest, options);
    } catch (e) {
      sys.munmap(addr, range.length);
      throw e;
    }
  } catch (e) {
    if (fd >= 0) sys.close(fd);
    if (attached) await client.request({ op: 'detach', channel: channelName }, options.timeoutMs ?? 5000).catch(() => undefined);
    await client.close();
    throw e;
  }
}

/** The {@link AttachedChannel} implementation. */
class Attachment implements AttachedChannel {
  #mapping: { addr: bigint; length: number } | undefined;
  #endReason: string | undefined;
  #vmGone = false;
  #kicking: Promise<void> | undefined;
  #kickAgain = false;
  #closing: Promise<void> | undefined;
  readonly #pollMin: number;
  readonly #pollMax: number;
  readonly #timeout: number;

  constructor(
    readonly vm: VmEntry,
    readonly info: AttachInfo,
    private readonly client: ControlClient,
    mapping: { addr: bigint; length: number },
    private readonly toHost: Ring,
    private readonly toGuest: Ring,
    options: AttachOptions,
  ) {
    this.#mapping = mapping;
    this.#pollMin = Math.max(1, options.pollMinMs ?? 1);
    this.#pollMax = Math.max(this.#pollMin, options.pollMaxMs ?? 25);
    this.#timeout = options.timeoutMs ?? 5000;
    // The VMM may have asked for doorbells (its reader waiting for data, its sender for space);
    // this end polls, so the guest need not ring for either. The VMM re-arms them on resume.
    this.toHost.endWaitData();
    this.toGuest.endWaitSpace();
    client.onClose(() => {
      this.#vmGone = true;
    });
  }

  get endReason(): string | undefined {
    return this.#endReason;
  }

  tryRecv(): Uint8Array | null {
    if (!this.#mapping) return null; // closed: the memory is gone, never touch it
    let msg: Uint8Array | null;
    try {
      msg = this.toHost.tryRead();
    } catch (e) {
      this.#ringEnded(e);
      return null;
    }
    if (msg && this.toHost.spaceDoorbellNeeded()) this.#kick();
    return msg;
  }

  async recv(): Promise<Uint8Array | null> {
    let delay = this.#pollMin;
    for (;;) {
      if (this.#endReason !== undefined) return null;
      const msg = this.tryRecv();
      if (msg) return msg;
      if (this.#endReason !== undefined) return null;
      if (this.#vmGone) {
        // Everything the guest wrote before the VMM went away has been read.
        this.#endReason = 'the VM exited';
        return null;
      }
      await sleep(delay);
      delay = Math.min(delay * 2, this.#pollMax);
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    for (;;) {
      const msg = await this.recv();
      if (!msg) return;
      yield msg;
    }
  }

  async send(msg: Uint8Array | string): Promise<void> {
    const bytes = typeof msg === 'string' ? new TextEncoder().encode(msg) : msg;
    if (bytes.length > this.toGuest.maxMessageSize) throw new RangeError(`message of ${bytes.length} bytes is above the channel's maximum of ${this.toGuest.maxMessageSize}`);
    let delay = this.#pollMin;
    for (;;) {
      if (this.#endReason !== undefined || !this.#mapping) throw new Error(`channel '${this.info.name}' has ended: ${this.#endReason ?? 'closed'}`);
      if (this.#vmGone) throw new Error(`channel '${this.info.name}': the VM exited`);
      let written: boolean;
      try {
        written = this.toGuest.tryWrite(bytes);
      } catch (e) {
        this.#ringEnded(e);
        continue; // throws the ended error above
      }
      if (written) break;
      await sleep(delay);
      delay = Math.min(delay * 2, this.#pollMax);
    }
    if (this.toGuest.dataDoorbellNeeded()) await this.#kick();
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const mapping = this.#mapping!;
    this.#mapping = undefined; // from here on nothing touches the rings
    this.#endReason ??= 'closed by this process';
    await this.#kicking?.catch(() => undefined);
    if (!this.client.closed) await this.client.request({ op: 'detach', channel: this.info.name }, this.#timeout).catch(() => undefined);
    await this.client.close();
    sys.munmap(mapping.addr, mapping.length);
  }

  /** A ring error: the guest closed the channel (a normal end) or corrupted it (an error). */
  #ringEnded(e: unknown): void {
    if (!(e instanceof RingCorruptedError)) throw e;
    if (e.fault === 'peer-closed' || e.fault === 'closed') {
      this.#endReason = `channel closed (${e.message})`;
      return;
    }
    this.#endReason = `channel corrupted: ${e.message}`;
    throw e;
  }

  /**
   * Asks the VMM to raise the channel's interrupt. At most one request is in flight; calls
   * meanwhile are folded into one more request after it, so a burst costs two round trips.
   */
  #kick(): Promise<void> {
    if (this.#kicking) {
      this.#kickAgain = true;
      return this.#kicking;
    }
    const run = async () => {
      try {
        do {
          this.#kickAgain = false;
          if (this.client.closed) return;
          await this.client.request({ op: 'kick', channel: this.info.name }, this.#timeout);
        } while (this.#kickAgain);
      } finally {
        this.#kicking = undefined;
      }
    };
    this.#kicking = run();
    // tryRecv() does not wait for it: keep a failed kick from becoming an unhandled rejection.
    this.#kicking.catch(() => undefined);
    return this.#kicking;
  }
}
