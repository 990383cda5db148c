/**
 * Host-to-guest console input: a byte ring in a SharedArrayBuffer, written by the main thread (which
 * owns stdin) and drained by the UART inside a vCPU worker.
 */

/** Default ring capacity in bytes. */
export const SERIAL_INPUT_CAPACITY = 4096;

// Header words (Uint32). `head` and `tail` run freely and wrap at 2^32; with a power-of-two
// capacity, `counter & mask` stays a valid slot across that wrap and `tail - head` is the fill level.
const HEAD = 0; // advanced only by the consumer
const TAIL = 1; // advanced only by the producer
const DROPPED = 2; // bytes the producer could not fit
const CAPACITY = 3; // stored so a worker can reattach from the buffer alone
const HEADER_BYTES = 16;

/**
 * A single-producer / single-consumer byte ring backed by a SharedArrayBuffer.
 *
 * The producer writes the bytes and then publishes them with an `Atomics.store` of `tail`; the
 * consumer's `Atomics.load` of `tail` therefore also makes those bytes visible (and the reverse
 * for `head`), so the data area itself needs no atomics.
 */
export class SerialInput {
  private readonly header: Uint32Array;
  private readonly data: Uint8Array;
  private readonly mask: number;

  /**
   * Creates an empty ring of `capacity` bytes (a power of two, default 4 KiB), or, given a buffer,
   * attaches to an existing ring as {@link SerialInput.fromBuffer} does.
   */
  constructor(capacityOrBuffer: number | SharedArrayBuffer = SERIAL_INPUT_CAPACITY) {
    let sab: SharedArrayBuffer;
    let capacity: number;
    if (typeof capacityOrBuffer === 'number') {
      capacity = capacityOrBuffer;
      assertCapacity(capacity);
      sab = new SharedArrayBuffer(HEADER_BYTES + capacity);
      Atomics.store(new Uint32Array(sab, 0, HEADER_BYTES / 4), CAPACITY, capacity);
    } else {
      sab = capacityOrBuffer;
      if (sab.byteLength < HEADER_BYTES) throw new RangeError('SerialInput buffer too small');
      capacity = Atomics.load(new Uint32Array(sab, 0, HEADER_BYTES / 4), CAPACITY);
      assertCapacity(capacity);
      if (sab.byteLength !== HEADER_BYTES + capacity) throw new RangeError('not a SerialInput buffer');
    }
    this.header = new Uint32Array(sab, 0, HEADER_BYTES / 4);
    this.data = new Uint8Array(sab, HEADER_BYTES, capacity);
    this.mask = capacity - 1;
  }

  /** Reattaches (typically in a worker) to a ring created elsewhere, given its {@link buffer}. */
  static fromBuffer(sab: SharedArrayBuffer): SerialInput {
    return new SerialInput(sab);
  }

  /** The shared memory to post to a worker (pass it to {@link SerialInput.fromBuffer} there). */
  get buffer(): SharedArrayBuffer {
    return this.data.buffer as SharedArrayBuffer;
  }

  /** Ring size in bytes. */
  get capacity(): number {
    return this.mask + 1;
  }

  /** Total bytes {@link push} has discarded because the ring was full. */
  get dropped(): number {
    return Atomics.load(this.header, DROPPED);
  }

  /** Bytes waiting to be read. Safe from either side. */
  size(): number {
    return (Atomics.load(this.header, TAIL) - Atomics.load(this.header, HEAD)) >>> 0;
  }

  /** Bytes {@link push} can accept right now without dropping. */
  freeSpace(): number {
    return this.capacity - this.size();
  }

  /**
   * Producer side: appends as many of `bytes` as fit and drops (and counts) the rest, because the
   * main thread must never block on a guest that is not reading. Returns the number accepted.
   */
  push(bytes: Uint8Array): number {
    const tail = Atomics.load(this.header, TAIL);
    const free = this.capacity - ((tail - Atomics.load(this.header, HEAD)) >>> 0);
    const n = Math.min(free, bytes.length);
    const start = tail & this.mask;
    const first = Math.min(n, this.capacity - start);
    this.data.set(bytes.subarray(0, first), start);
    if (n > first) this.data.set(bytes.subarray(first, n), 0);
    Atomics.store(this.header, TAIL, (tail + n) >>> 0);
    if (n < bytes.length) Atomics.add(this.header, DROPPED, bytes.length - n);
    return n;
  }

  /** Consumer side: the next byte, or -1 when the ring is empty. */
  pop(): number {
    const head = Atomics.load(this.header, HEAD);
    if (head === Atomics.load(this.header, TAIL)) return -1;
    const byte = this.data[head & this.mask]!;
    Atomics.store(this.header, HEAD, (head + 1) >>> 0);
    return byte;
  }

  /** Consumer side: whether {@link pop} would return a byte. */
  available(): boolean {
    return Atomics.load(this.header, HEAD) !== Atomics.load(this.header, TAIL);
  }
}

function assertCapacity(capacity: number): void {
  if (!Number.isInteger(capacity) || capacity < 1 || capacity > 0x4000_0000 || (capacity & (capacity - 1)) !== 0) {
    throw new RangeError(`SerialInput capacity must be a power of two, got ${capacity}`);
  }
}
