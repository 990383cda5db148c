/**
 * The channel area of a long-mode VM (docs/channels.md, "The channel area"): guest-physical
 * [0x200000, 0x400000). Its first 4 KiB is the **directory** the guest reads to find channels;
 * channel regions follow, allocated first-fit at multiples of 4 KiB.
 *
 * Trust: the guest can write every byte of the area, the directory included. So the directory in
 * guest memory is only ever *written* here, from a private, authoritative copy of every entry;
 * nothing in this module reads it back. Each change republishes the whole directory (4 KiB), so
 * whatever a guest scribbled over it is repaired on the next change.
 *
 * @module
 */
import { CHANNEL_AREA, SYSTEM_END } from '../arch/x86/layout.js';
import { isValidCapacity } from './channel-layout.js';

/** Guest-physical base of the channel area (and of its directory). */
export const CHANNEL_AREA_BASE = CHANNEL_AREA;
/** End of the channel area (exclusive): where the program image starts. */
export const CHANNEL_AREA_END = SYSTEM_END;
/** Bytes of the directory at the start of the area. */
export const DIRECTORY_SIZE = 0x1000;
/** Channel regions start at multiples of this (page-sized: an attacher may map them page by page). */
export const CHANNEL_REGION_ALIGN = 0x1000;
/** `"KTDR"` as a little-endian u32. */
export const DIRECTORY_MAGIC = 0x5244544b;
/** Directory layout version; a guest that finds another one must not interpret the entries. */
export const DIRECTORY_VERSION = 1;
/** Offset of entry 0 in the directory; entries are {@link DIRECTORY_ENTRY_SIZE} bytes each. */
export const DIRECTORY_ENTRY_OFFSET = 64;
/** Bytes of one directory entry. */
export const DIRECTORY_ENTRY_SIZE = 64;
/** Entries that fit the directory: (4096 − 64) / 64. Also the largest number of channels per VM. */
export const DIRECTORY_MAX = (DIRECTORY_SIZE - DIRECTORY_ENTRY_OFFSET) / DIRECTORY_ENTRY_SIZE;
/** Channel `id`'s doorbell port is `DOORBELL_PORT_BASE + id`. */
export const DOORBELL_PORT_BASE = 0x100;
/** Longest channel name in bytes (the entry's 32-byte field keeps a NUL). */
export const CHANNEL_NAME_MAX = 31;

/** Smallest ring capacity a guest may ask for with KT_HC_CHAN_OPEN. */
export const GUEST_MIN_CAPACITY = 4096;
/**
 * Largest ring capacity KT_HC_CHAN_OPEN accepts (and the host's limit too). Note that a channel
 * of two 1 MiB rings is larger than the whole area: 512 KiB is the largest that fits.
 */
export const GUEST_MAX_CAPACITY = 1 << 20;
/** Ring capacity when KT_HC_CHAN_OPEN passes 0 and `createChannel` passes none. */
export const DEFAULT_CAPACITY = 64 * 1024;

/** Byte offsets of a directory entry's fields. */
export const DIR_ENTRY_OFF = {
  id: 0, state: 4, gpa: 8, size: 16, mode: 20, port: 24, vector: 26, reserved: 27, flags: 28, name: 32,
} as const;

/** Directory entry states as stored (u32). A closed entry is never reused. */
export const CHANNEL_STATE = { free: 0, open: 1, closed: 2 } as const;
/** Name of a stored entry state. */
export type DirectoryState = keyof typeof CHANNEL_STATE;

/** Notification modes as stored in the entry and passed to KT_HC_CHAN_OPEN (RSI). */
export const CHANNEL_MODE = { hypercall: 0, ioeventfd: 1, polling: 2 } as const;
/** How the guest tells the host "I wrote (or consumed) something"; see docs/channels.md, "Notification". */
export type ChannelMode = keyof typeof CHANNEL_MODE;

/** The name of a stored mode number, or undefined for an unknown one. */
export function channelModeName(mode: number): ChannelMode | undefined {
  return (Object.keys(CHANNEL_MODE) as ChannelMode[]).find((m) => CHANNEL_MODE[m] === mode);
}

/** One directory entry: the host's own copy, which is the truth whatever guest memory says. */
export interface DirectoryEntry {
  id: number;
  state: DirectoryState;
  /** Guest-physical address of the channel header. */
  gpa: number;
  /** Bytes of the channel region (a multiple of 4 KiB). */
  size: number;
  mode: ChannelMode;
  /** Doorbell port: {@link DOORBELL_PORT_BASE} + id. */
  port: number;
  /** Host→guest interrupt vector, 0 = none. */
  vector: number;
  name: string;
}

/** The area or the directory has no room for another channel (KT_HC_CHAN_OPEN returns -KT_E2BIG). */
export class ChannelAreaFullError extends Error {
  constructor(detail: string) {
    super(`no room for another channel: ${detail}`);
    this.name = 'ChannelAreaFullError';
  }
}

/**
 * Checks a channel name and returns its bytes: 1–31 bytes of printable ASCII (0x20–0x7e).
 * Why so strict: names travel through the directory (NUL-padded), the control socket's JSON and
 * log lines, and the guest supplies them; printable ASCII means one byte string has exactly one
 * spelling everywhere (no invalid UTF-8, no look-alike encodings, no control characters).
 * @throws RangeError otherwise
 */
export function channelNameBytes(name: string | Uint8Array): Uint8Array {
  const bytes = typeof name === 'string' ? new TextEncoder().encode(name) : name;
  if (bytes.length < 1 || bytes.length > CHANNEL_NAME_MAX) throw new RangeError(`a channel name must be 1–${CHANNEL_NAME_MAX} bytes, got ${bytes.length}`);
  for (const b of bytes) {
    if (b < 0x20 || b > 0x7e) throw new RangeError(`a channel name must be printable ASCII; byte 0x${b.toString(16)} is not`);
  }
  return bytes;
}

/** Whether `capacity` is a ring capacity KT_HC_CHAN_OPEN accepts: a power of two in [4 KiB, 1 MiB]. */
export function isGuestCapacity(capacity: number): boolean {
  return isValidCapacity(capacity) && capacity >= GUEST_MIN_CAPACITY && capacity <= GUEST_MAX_CAPACITY;
}

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

/**
 * The directory and the allocator of one VM's channel area, over a view of the whole area
 * (`CHANNEL_AREA_END − CHANNEL_AREA_BASE` bytes of guest RAM at {@link CHANNEL_AREA_BASE}).
 */
export class ChannelArea {
  readonly #view: Uint8Array;
  readonly #dv: DataView;
  /** The authoritative entries, by id (= index). */
  readonly #entries: DirectoryEntry[] = [];

  /** @param view the whole area; its byte 0 is guest-physical {@link CHANNEL_AREA_BASE} */
  constructor(view: Uint8Array) {
    const size = CHANNEL_AREA_END - CHANNEL_AREA_BASE;
    if (view.length < size) throw new RangeError(`the channel area needs ${size} bytes, the view has ${view.length}`);
    this.#view = view.subarray(0, size);
    this.#dv = new DataView(view.buffer, view.byteOffset, size);
  }

  /** Writes an empty directory (header with count 0, every entry free), so a guest finds a valid one even before any channel exists. */
  format(): void {
    this.#publish();
  }

  /** The entries allocated so far (open and closed), by id. Copies: the caller cannot change the truth. */
  entries(): DirectoryEntry[] {
    return this.#entries.map((e) => ({ ...e }));
  }

  /** Entry `id`, or undefined. */
  get(id: number): DirectoryEntry | undefined {
    const e = this.#entries[id];
    return e && { ...e };
  }

  /** The open channel called `name`, if any (a closed channel's name may be reused by a new one). */
  findOpen(name: string): DirectoryEntry | undefined {
    const e = this.#entries.find((x) => x.state === 'open' && x.name === name);
    return e && { ...e };
  }

  /** Bytes of the area still free in the largest hole (for error messages and tests). */
  largestFree(): number {
    let best = 0;
    this.#holes((start, end) => {
      best = Math.max(best, end - start);
    });
    return best;
  }

  /**
   * Allocates an entry and a region of `bytes` (rounded up to 4 KiB) at the lowest address that
   * fits (first fit), calls `init(region, entry)` to format the channel inside it, and only then
   * publishes the entry as open: a guest never sees an entry whose channel is not ready. If
   * `init` throws, nothing is allocated.
   * @throws ChannelAreaFullError when the directory or the area is full; RangeError for a bad name, mode or vector
   */
  allocate(
    req: { name: string; bytes: number; mode: ChannelMode; vector: number },
    init: (region: Uint8Array, entry: DirectoryEntry) => void,
  ): DirectoryEntry {
    channelNameBytes(req.name);
    if (!Object.hasOwn(CHANNEL_MODE, req.mode)) throw new RangeError(`unknown channel mode ${String(req.mode)}`);
    if (!Number.isInteger(req.vector) || req.vector < 0 || req.vector > 0xff) throw new RangeError(`bad vector ${req.vector}`);
    if (this.#entries.length >= DIRECTORY_MAX) throw new ChannelAreaFullError(`the directory holds at most ${DIRECTORY_MAX} channels per VM (closed ones are never reused)`);
    const size = alignUp(req.bytes, CHANNEL_REGION_ALIGN);
    let at = -1;
    this.#holes((start, end) => {
      if (at < 0 && end - start >= size) at = start;
    });
    if (at < 0) throw new ChannelAreaFullError(`a channel of ${size} bytes does not fit: the largest free part of the channel area is ${this.largestFree()} bytes`);
    const id = this.#entries.length;
    const entry: DirectoryEntry = {
      id, state: 'open', gpa: CHANNEL_AREA_BASE + at, size, mode: req.mode, port: DOORBELL_PORT_BASE + id, vector: req.vector, name: req.name,
    };
    init(this.#view.subarray(at, at + size), { ...entry });
    this.#entries.push(entry);
    this.#publish();
    return { ...entry };
  }

  /** Marks entry `id` closed (for good) and republishes the directory. */
  close(id: number): void {
    const e = this.#entries[id];
    if (!e || e.state === 'closed') return;
    e.state = 'closed';
    this.#publish();
  }

  /**
   * Calls `fn(start, end)` for every free gap (offsets in the area) in address order. Closed
   * channels keep their region: a guest may still hold pointers into it, and a new channel there
   * would be corrupted by a stale writer, so regions are never handed out twice.
   */
  #holes(fn: (start: number, end: number) => void): void {
    const used = this.#entries.map((e) => [e.gpa - CHANNEL_AREA_BASE, e.gpa - CHANNEL_AREA_BASE + e.size]).sort((a, b) => a[0] - b[0]);
    let at = DIRECTORY_SIZE;
    for (const [start, end] of used) {
      if (start > at) fn(at, start);
      at = Math.max(at, end);
    }
    const limit = CHANNEL_AREA_END - CHANNEL_AREA_BASE;
    if (limit > at) fn(at, limit);
  }

  /**
   * Rewrites the whole directory from the private entries. The image is built privately and
   * copied over the old one, so bytes that do not change are never transiently zero for a guest
   * reading concurrently; the entries go first and the header's count last, so a guest that reads
   * the count sees every entry below it complete (x86 keeps stores in order, and the JIT does not
   * move a DataView store across the copy, which is a call).
   */
  #publish(): void {
    const image = new Uint8Array(DIRECTORY_SIZE);
    const dv = new DataView(image.buffer);
    for (const e of this.#entries) {
      const o = DIRECTORY_ENTRY_OFFSET + e.id * DIRECTORY_ENTRY_SIZE;
      dv.setUint32(o + DIR_ENTRY_OFF.id, e.id, true);
      dv.setUint32(o + DIR_ENTRY_OFF.state, CHANNEL_STATE[e.state], true);
      dv.setBigUint64(o + DIR_ENTRY_OFF.gpa, BigInt(e.gpa), true);
      dv.setUint32(o + DIR_ENTRY_OFF.size, e.size, true);
      dv.setUint32(o + DIR_ENTRY_OFF.mode, CHANNEL_MODE[e.mode], true);
      dv.setUint16(o + DIR_ENTRY_OFF.port, e.port, true);
      dv.setUint8(o + DIR_ENTRY_OFF.vector, e.vector);
      image.set(channelNameBytes(e.name), o + DIR_ENTRY_OFF.name);
    }
    this.#view.set(image.subarray(16), 16);
    const out = this.#dv;
    out.setUint32(0, DIRECTORY_MAGIC, true);
    out.setUint32(4, DIRECTORY_VERSION, true);
    out.setUint32(12, DIRECTORY_MAX, true);
    out.setUint32(8, this.#entries.length, true);
  }
}

/**
 * Decodes a directory from raw bytes (e.g. read from another process's mapping of guest RAM):
 * for tools and tests, never for decisions inside the VMM, which has its own copy. Anything
 * malformed is a RangeError naming what is wrong.
 */
export function decodeDirectory(bytes: Uint8Array): { count: number; max: number; entries: DirectoryEntry[] } {
  if (bytes.length < DIRECTORY_SIZE) throw new RangeError(`a directory is ${DIRECTORY_SIZE} bytes, got ${bytes.length}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, DIRECTORY_SIZE);
  if (dv.getUint32(0, true) !== DIRECTORY_MAGIC) throw new RangeError(`bad directory magic 0x${dv.getUint32(0, true).toString(16)}`);
  if (dv.getUint32(4, true) !== DIRECTORY_VERSION) throw new RangeError(`unsupported directory version ${dv.getUint32(4, true)}`);
  const count = dv.getUint32(8, true);
  const max = dv.getUint32(12, true);
  if (max !== DIRECTORY_MAX || count > max) throw new RangeError(`bad directory count ${count} / max ${max}`);
  const entries: DirectoryEntry[] = [];
  for (let i = 0; i < count; i++) {
    const o = DIRECTORY_ENTRY_OFFSET + i * DIRECTORY_ENTRY_SIZE;
    const stateNum = dv.getUint32(o + DIR_ENTRY_OFF.state, true);
    const state = (Object.keys(CHANNEL_STATE) as DirectoryState[]).find((s) => CHANNEL_STATE[s] === stateNum);
    const mode = channelModeName(dv.getUint32(o + DIR_ENTRY_OFF.mode, true));
    if (dv.getUint32(o + DIR_ENTRY_OFF.id, true) !== i || !state || !mode) throw new RangeError(`bad directory entry ${i}`);
    const raw = bytes.subarray(o + DIR_ENTRY_OFF.name, o + DIR_ENTRY_OFF.name + 32);
    const len = raw.indexOf(0);
    const name = new TextDecoder().decode(raw.subarray(0, len < 0 ? CHANNEL_NAME_MAX : len));
    entries.push({
      id: i, state, gpa: Number(dv.getBigUint64(o + DIR_ENTRY_OFF.gpa, true)), size: dv.getUint32(o + DIR_ENTRY_OFF.size, true), mode,
      port: dv.getUint16(o + DIR_ENTRY_OFF.port, true), vector: dv.getUint8(o + DIR_ENTRY_OFF.vector), name,
    });
  }
  return { count, max, entries };
}
