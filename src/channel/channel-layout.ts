/**
 * Byte layout of shared-memory channels: the ring header, message frames, the channel header and
 * where a channel's two rings sit. docs/channel-ring.md is the specification; the C side
 * (guest/sdk/include/kvmtalk/ring.h) repeats every number here and the two are checked against
 * each other by test/unit/ring-c-compat.test.ts.
 *
 * Nothing in this module touches memory except {@link writeChannelHeader} and
 * {@link readChannelHeader}; it is the single place that knows offsets.
 *
 * @module
 */

/** `"KTRG"` read as a little-endian u32: first word of every ring. */
export const RING_MAGIC = 0x4752544b;
/** Ring layout version; any incompatible change increments it (see the spec, "Versioning"). */
export const RING_VERSION = 1;
/**
 * Bytes before the data area. Three 128-byte blocks: read-only configuration, the producer's
 * words, the consumer's words. 128 rather than 64 so the two indices are not even in the same
 * pair of cache lines that Intel's adjacent-line prefetcher fetches together.
 */
export const RING_HEADER_SIZE = 0x180;
/** Smallest data area: room for a few 8-byte frames. */
export const RING_MIN_CAPACITY = 64;
/** Largest data area (1 GiB): keeps every offset and `capacity / 2` far from 2^32. */
export const RING_MAX_CAPACITY = 2 ** 30;
/** A ring's base must be 8-aligned (frame and index words); 128 is recommended. */
export const RING_MIN_ALIGN = 8;
/** Recommended ring alignment: the header's blocks then each start a cache-line pair. */
export const RING_ALIGN = 128;

/** Byte offsets of the ring header's words (all u32, little-endian). */
export const RING_OFF = {
  // Configuration block, written once by whoever formats the ring, read-only afterwards.
  magic: 0x00,
  version: 0x04,
  capacity: 0x08,
  maxMessage: 0x0c,
  headerSize: 0x10,
  flags: 0x14,
  /** 0 while open; (side << 8) | fault once a side gave up. Either side may write it, once. */
  close: 0x18,
  // Producer block: only the producer writes here.
  prod: 0x80,
  /** Producer sets it non-zero when it waits for space (a "doorbell me" request to the consumer). */
  wantSpace: 0x84,
  // Consumer block: only the consumer writes here.
  cons: 0x100,
  /** Consumer sets it non-zero when it waits for data (a "doorbell me" request to the producer). */
  wantData: 0x104,
} as const;

/** Feature flags of version 1: none. A reader rejects any bit it does not know. */
export const RING_KNOWN_FLAGS = 0;

/** Every frame starts with an 8-byte header: u32 length, u32 reserved (0). */
export const FRAME_HEADER_SIZE = 8;
/** Frames start at multiples of 8 in the data area. */
export const FRAME_ALIGN = 8;
/** Length value of a wrap marker: the rest of the data area is padding, the next frame is at 0. */
export const FRAME_WRAP = 0xffffffff;

/** Who closed a ring: bits 8..15 of the close word. */
export const CLOSED_BY_HOST = 1;
export const CLOSED_BY_GUEST = 2;

/**
 * Why a ring became unusable: the low byte of the close word, shared by C and TypeScript
 * (`KT_RING_FAULT_*` in ring.h).
 */
export const RING_FAULT = {
  'bad-magic': 1,
  'bad-version': 2,
  /** capacity, max message size, header size or flags changed or impossible. */
  'bad-config': 3,
  /** The peer's index is misaligned, more than capacity away, or went backwards. */
  'index-out-of-range': 4,
  /** A frame length above the ring's maximum message size. */
  'bad-length': 5,
  /** A frame (or wrap marker) that extends past the producer index. */
  'frame-overrun': 6,
  /** A frame that runs past the end of the data area, or a wrap marker at offset 0. */
  'frame-crosses-end': 7,
  /** A frame header's reserved word is not 0. */
  'bad-frame-header': 8,
  /** The other side wrote the close word. */
  'peer-closed': 9,
  /** Closed on purpose by this side (no protocol violation). */
  closed: 10,
} as const;

/** Name of a {@link RING_FAULT}. */
export type RingFault = keyof typeof RING_FAULT;

/** The fault name for a close-word reason byte, or undefined for an unknown code. */
export function ringFaultName(code: number): RingFault | undefined {
  for (const [name, value] of Object.entries(RING_FAULT)) if (value === code) return name as RingFault;
  return undefined;
}

/** Rounds up to a multiple of 8. */
export function align8(n: number): number {
  return (n + 7) & ~7;
}

/** Bytes a message of `len` bytes occupies in the data area (header + payload + padding). */
export function frameSize(len: number): number {
  return FRAME_HEADER_SIZE + align8(len);
}

/**
 * The largest message a ring of `capacity` bytes may carry: a frame of at most half the data
 * area always fits into an empty ring, wherever the indices stand (see the spec, "Framing").
 */
export function maxMessageFor(capacity: number): number {
  return capacity / 2 - FRAME_HEADER_SIZE;
}

/** Whether `capacity` is a valid data-area size: a power of two in [64, 2^30]. */
export function isValidCapacity(capacity: number): boolean {
  return Number.isInteger(capacity) && capacity >= RING_MIN_CAPACITY && capacity <= RING_MAX_CAPACITY && (capacity & (capacity - 1)) === 0;
}

/** Bytes of a whole ring region (header + data area). */
export function ringSize(capacity: number): number {
  return RING_HEADER_SIZE + capacity;
}

// ---- Channels -------------------------------------------------------------------------------

/** `"KTCH"` read as a little-endian u32: first word of a channel header. */
export const CHANNEL_MAGIC = 0x4843544b;
export const CHANNEL_VERSION = 1;
/** The channel header takes one 128-byte block; the first ring follows it. */
export const CHANNEL_HEADER_SIZE = 0x80;
/** Channels and the rings inside them start at multiples of 128. */
export const CHANNEL_ALIGN = 128;

/** Byte offsets of the channel header's words (u32, little-endian, offsets relative to the channel). */
export const CHANNEL_OFF = {
  magic: 0x00,
  version: 0x04,
  id: 0x08,
  flags: 0x0c,
  /** Bytes of the whole channel region. */
  size: 0x10,
  toHostOffset: 0x14,
  toHostSize: 0x18,
  toGuestOffset: 0x1c,
  toGuestSize: 0x20,
} as const;

/** Where one ring of a channel lives, relative to the channel's base. */
export interface RingPlacement {
  offset: number;
  /** Bytes of the ring region ({@link ringSize} of `capacity`). */
  size: number;
  capacity: number;
}

/** Where everything in one channel lives, relative to the channel's base. */
export interface ChannelLayout {
  /** Bytes of the whole channel (a multiple of {@link CHANNEL_ALIGN}). */
  size: number;
  /** Guest → host ring: the guest produces, the host consumes. */
  toHost: RingPlacement;
  /** Host → guest ring: the host produces, the guest consumes. */
  toGuest: RingPlacement;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * Places a channel: header, then the guest→host ring, then the host→guest ring, each at a
 * multiple of 128. Throws RangeError for an invalid capacity.
 */
export function channelLayout(toHostCapacity: number, toGuestCapacity = toHostCapacity): ChannelLayout {
  for (const c of [toHostCapacity, toGuestCapacity]) {
    if (!isValidCapacity(c)) throw new RangeError(`ring capacity must be a power of two in [${RING_MIN_CAPACITY}, 2^30], got ${c}`);
  }
  const toHost: RingPlacement = { offset: CHANNEL_HEADER_SIZE, size: ringSize(toHostCapacity), capacity: toHostCapacity };
  const toGuestOffset = alignUp(toHost.offset + toHost.size, CHANNEL_ALIGN);
  const toGuest: RingPlacement = { offset: toGuestOffset, size: ringSize(toGuestCapacity), capacity: toGuestCapacity };
  return { size: alignUp(toGuest.offset + toGuest.size, CHANNEL_ALIGN), toHost, toGuest };
}

/**
 * Places several channels back to back from offset 0 of an area, each starting at a multiple
 * of `align` (default 4096, so a channel can be mapped or protected page by page later).
 * Returns each channel's offset and layout; `total` is the bytes the area needs.
 */
export function layoutChannels(
  capacities: readonly { toHost: number; toGuest?: number }[],
  align = 4096,
): { total: number; channels: { offset: number; layout: ChannelLayout }[] } {
  if (!Number.isInteger(align) || align < CHANNEL_ALIGN || align % CHANNEL_ALIGN !== 0) throw new RangeError(`channel alignment must be a multiple of ${CHANNEL_ALIGN}, got ${align}`);
  let at = 0;
  const channels = capacities.map((c) => {
    const layout = channelLayout(c.toHost, c.toGuest);
    const offset = at;
    at = alignUp(at + layout.size, align);
    return { offset, layout };
  });
  return { total: at, channels };
}

/**
 * Writes the channel header at the start of `view` (the channel region). Does not format the
 * rings: the caller does that with `Ring.init` on the two placements, before this header makes
 * the channel visible (the magic is written last).
 */
export function writeChannelHeader(view: Uint8Array, id: number, layout: ChannelLayout): void {
  if (view.length < layout.size) throw new RangeError(`channel region of ${view.length} bytes is smaller than the layout's ${layout.size}`);
  const dv = new DataView(view.buffer, view.byteOffset, CHANNEL_HEADER_SIZE);
  view.fill(0, 0, CHANNEL_HEADER_SIZE);
  dv.setUint32(CHANNEL_OFF.version, CHANNEL_VERSION, true);
  dv.setUint32(CHANNEL_OFF.id, id >>> 0, true);
  dv.setUint32(CHANNEL_OFF.flags, 0, true);
  dv.setUint32(CHANNEL_OFF.size, layout.size, true);
  dv.setUint32(CHANNEL_OFF.toHostOffset, layout.toHost.offset, true);
  dv.setUint32(CHANNEL_OFF.toHostSize, layout.toHost.size, true);
  dv.setUint32(CHANNEL_OFF.toGuestOffset, layout.toGuest.offset, true);
  dv.setUint32(CHANNEL_OFF.toGuestSize, layout.toGuest.size, true);
  dv.setUint32(CHANNEL_OFF.magic, CHANNEL_MAGIC, true);
}

/** A channel header that is not a valid version-1 header for the region it is in. */
export class ChannelHeaderError extends Error {
  constructor(readonly detail: string) {
    super(`bad channel header: ${detail}`);
    this.name = 'ChannelHeaderError';
  }
}

/**
 * Reads and checks a channel header at the start of `view` (the whole channel region): magic,
 * version, flags, and that both rings lie inside the region, 8-aligned, without overlapping each
 * other or the header. Throws {@link ChannelHeaderError}. The host normally never needs this (it
 * keeps the layout it wrote); it exists for tests and for symmetry with `kt_channel_attach`.
 */
export function readChannelHeader(view: Uint8Array): { id: number; layout: ChannelLayout } {
  if (view.length < CHANNEL_HEADER_SIZE) throw new ChannelHeaderError(`region of ${view.length} bytes is smaller than the header`);
  const dv = new DataView(view.buffer, view.byteOffset, CHANNEL_HEADER_SIZE);
  const u32 = (off: number) => dv.getUint32(off, true);
  if (u32(CHANNEL_OFF.magic) !== CHANNEL_MAGIC) throw new ChannelHeaderError(`magic 0x${u32(CHANNEL_OFF.magic).toString(16)}`);
  if (u32(CHANNEL_OFF.version) !== CHANNEL_VERSION) throw new ChannelHeaderError(`unsupported version ${u32(CHANNEL_OFF.version)}`);
  if (u32(CHANNEL_OFF.flags) !== 0) throw new ChannelHeaderError(`unknown flags 0x${u32(CHANNEL_OFF.flags).toString(16)}`);
  const size = u32(CHANNEL_OFF.size);
  if (size > view.length || size < CHANNEL_HEADER_SIZE) throw new ChannelHeaderError(`size ${size} does not fit the ${view.length}-byte region`);
  const ring = (offOff: number, sizeOff: number, what: string): RingPlacement => {
    const offset = u32(offOff);
    const rsize = u32(sizeOff);
    // Numbers here are < 2^32 each, so the sums below are exact in a double.
    if (offset % RING_MIN_ALIGN !== 0 || offset < CHANNEL_HEADER_SIZE || offset + rsize > size) throw new ChannelHeaderError(`${what} ring at ${offset}+${rsize} is outside the channel`);
    const capacity = rsize - RING_HEADER_SIZE;
    if (!isValidCapacity(capacity)) throw new ChannelHeaderError(`${what} ring size ${rsize} is not header + a power-of-two capacity`);
    return { offset, size: rsize, capacity };
  };
  const toHost = ring(CHANNEL_OFF.toHostOffset, CHANNEL_OFF.toHostSize, 'to-host');
  const toGuest = ring(CHANNEL_OFF.toGuestOffset, CHANNEL_OFF.toGuestSize, 'to-guest');
  if (toHost.offset < toGuest.offset + toGuest.size && toGuest.offset < toHost.offset + toHost.size) throw new ChannelHeaderError('the two rings overlap');
  return { id: u32(CHANNEL_OFF.id), layout: { size, toHost, toGuest } };
}
