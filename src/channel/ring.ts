/**
 * The host end of a single-producer/single-consumer ring of variable-length messages in shared
 * memory (docs/channel-ring.md). The guest SDK's guest/sdk/src/ring.c is the other end and is
 * byte-compatible.
 *
 * Trust: the memory is writable by the guest at any moment, so every word read from it is a
 * claim to check, never a fact. This end keeps its own index and the ring's geometry in private
 * fields and only *publishes* them; the only shared words it acts on are the peer's index, frame
 * headers, and the configuration block it compares with its private copy. Any violation throws
 * {@link RingCorruptedError}, marks the ring closed in shared memory (best effort) and makes every
 * later call throw the same error. No other exception can come out of a guest's doing; RangeError
 * is reserved for the caller's own mistakes (a bad capacity, a message above the maximum, a too
 * small buffer).
 *
 * Memory ordering: index and flag words go through `Atomics` on an Int32Array, which V8
 * implements as sequentially consistent machine accesses also on the non-shared ArrayBuffer of a
 * `koffi.view` (a MOV for loads, an XCHG for stores on x86-64); payload and frame headers are
 * plain typed-array accesses ordered around them. The spec's "Memory ordering" section has the
 * full argument and its limits.
 *
 * @module
 */
import {
  CLOSED_BY_HOST, FRAME_HEADER_SIZE, FRAME_WRAP, RING_FAULT, RING_HEADER_SIZE, RING_KNOWN_FLAGS, RING_MAGIC, RING_MIN_ALIGN,
  RING_OFF, RING_VERSION, frameSize, isValidCapacity, maxMessageFor, ringFaultName, type RingFault,
} from './channel-layout.js';

/**
 * The ring is unusable: the peer broke the protocol (a corrupted header, index or frame), either
 * side closed it, or a previous call already failed. `fault` says which; `detail` the numbers.
 */
export class RingCorruptedError extends Error {
  /** Numeric form of {@link RingCorruptedError.fault}, as stored in the close word. */
  readonly code: number;

  constructor(
    readonly fault: RingFault,
    readonly detail: string,
  ) {
    super(`ring ${fault === 'closed' ? 'closed' : 'corrupted'}: ${fault}: ${detail}`);
    this.name = 'RingCorruptedError';
    this.code = RING_FAULT[fault];
  }
}

/** Options of {@link Ring.init}. */
export interface RingInitOptions {
  /** Largest payload in bytes; at most (and by default) `capacity / 2 - 8`. */
  maxMessageSize?: number;
}

// Word indices of the header words in the Int32Array view (byte offset / 4).
const W_CLOSE = RING_OFF.close >> 2;
const W_PROD = RING_OFF.prod >> 2;
const W_WANT_SPACE = RING_OFF.wantSpace >> 2;
const W_CONS = RING_OFF.cons >> 2;
const W_WANT_DATA = RING_OFF.wantData >> 2;

/** Configuration words compared with the private copy on every operation (close is separate). */
const CONFIG_WORDS = [RING_OFF.magic, RING_OFF.version, RING_OFF.capacity, RING_OFF.maxMessage, RING_OFF.headerSize, RING_OFF.flags] as const;

const hex = (n: number) => `0x${(n >>> 0).toString(16)}`;

/**
 * One end of a ring. A program uses one object per role it plays (the host produces on the
 * to-guest ring and consumes on the to-host ring); producer methods and consumer methods keep
 * separate private indices, so one object may even play both roles in a loopback test.
 */
export class Ring {
  /** Bytes of the data area (a power of two). */
  readonly capacity: number;
  /** Largest payload {@link Ring.tryWrite} accepts and a valid frame may carry. */
  readonly maxMessageSize: number;

  readonly #data: Uint8Array;
  readonly #dv: DataView;
  /** The data area as u32 words (frame headers are 8-aligned): the batch reader's frame loads. */
  readonly #u32: Uint32Array;
  readonly #words: Int32Array;
  readonly #mask: number;
  /** Private copies of the configuration block, indexed like {@link CONFIG_WORDS}. */
  readonly #config: number[];

  // This end's own indices: authoritative here, only ever stored to shared memory, never read back.
  #prod: number;
  #cons: number;
  // The peer's index as last validated: it may only move forward from here.
  #seenProd: number;
  #seenCons: number;

  /** Set once the ring is unusable; every later call throws it again. */
  #fault: RingCorruptedError | undefined;
  // Where the frame found by #peek() starts (payload offset in the data area) and its size.
  #pendingOffset = 0;
  #pendingFrame = 0;
  /** A {@link Ring.readBatch} callback is running: consumer calls are refused until it returns. */
  #inBatch = false;

  /**
   * Takes the geometry and indices as already validated values: re-reading them from shared
   * memory here would let the peer swap them between the check and the use.
   */
  private constructor(view: Uint8Array, capacity: number, maxMessageSize: number, flags: number, prod: number, cons: number) {
    this.capacity = capacity;
    this.maxMessageSize = maxMessageSize;
    this.#mask = capacity - 1;
    this.#data = view.subarray(RING_HEADER_SIZE, RING_HEADER_SIZE + capacity);
    this.#dv = new DataView(view.buffer, view.byteOffset + RING_HEADER_SIZE, capacity);
    this.#u32 = new Uint32Array(view.buffer, view.byteOffset + RING_HEADER_SIZE, capacity >>> 2);
    this.#words = new Int32Array(view.buffer, view.byteOffset, RING_HEADER_SIZE / 4);
    this.#config = [RING_MAGIC, RING_VERSION, capacity, maxMessageSize, RING_HEADER_SIZE, flags];
    this.#prod = this.#seenProd = prod;
    this.#cons = this.#seenCons = cons;
  }

  /** Bytes a ring with a `capacity`-byte data area needs (header + data). */
  static sizeFor(capacity: number): number {
    return RING_HEADER_SIZE + capacity;
  }

  /**
   * Formats a new, empty ring over `view` (the whole ring region: header then data area) and
   * returns its host end. Throws RangeError for a capacity that is not a power of two in
   * [64, 2^30], a view that is too small or not 8-aligned, or a bad maximum message size.
   */
  static init(view: Uint8Array, capacity: number, options: RingInitOptions = {}): Ring {
    if (!isValidCapacity(capacity)) throw new RangeError(`ring capacity must be a power of two in [64, 2^30], got ${capacity}`);
    checkView(view);
    if (view.length < Ring.sizeFor(capacity)) throw new RangeError(`ring of capacity ${capacity} needs ${Ring.sizeFor(capacity)} bytes, the view has ${view.length}`);
    const maxMsg = options.maxMessageSize ?? maxMessageFor(capacity);
    if (!Number.isInteger(maxMsg) || maxMsg < 0 || maxMsg > maxMessageFor(capacity)) {
      throw new RangeError(`maxMessageSize must be an integer in [0, ${maxMessageFor(capacity)}] for capacity ${capacity}, got ${maxMsg}`);
    }
    view.fill(0, 0, Ring.sizeFor(capacity));
    const dv = new DataView(view.buffer, view.byteOffset, RING_HEADER_SIZE);
    dv.setUint32(RING_OFF.version, RING_VERSION, true);
    dv.setUint32(RING_OFF.capacity, capacity, true);
    dv.setUint32(RING_OFF.maxMessage, maxMsg, true);
    dv.setUint32(RING_OFF.headerSize, RING_HEADER_SIZE, true);
    dv.setUint32(RING_OFF.flags, 0, true);
    // Magic last, with a seq_cst store: a reader that sees it sees the rest.
    Atomics.store(new Int32Array(view.buffer, view.byteOffset, 1), 0, RING_MAGIC);
    return new Ring(view, capacity, maxMsg, 0, 0, 0);
  }

  /**
   * Attaches to a ring someone else formatted (e.g. the guest with `kt_ring_init`) and validates
   * its header: magic, version, flags, header size, capacity, maximum message size, close word
   * and indices. Throws {@link RingCorruptedError} for anything wrong in the memory, and
   * RangeError if `view` itself is unusable (not 8-aligned, shorter than a header).
   */
  static attach(view: Uint8Array): Ring {
    checkView(view);
    if (view.length < RING_HEADER_SIZE) throw new RangeError(`a ring needs at least ${RING_HEADER_SIZE} bytes, the view has ${view.length}`);
    const dv = new DataView(view.buffer, view.byteOffset, RING_HEADER_SIZE);
    const u32 = (off: number) => dv.getUint32(off, true);
    const fail = (fault: RingFault, detail: string): never => {
      throw new RingCorruptedError(fault, detail);
    };
    if (u32(RING_OFF.magic) !== RING_MAGIC) fail('bad-magic', `magic ${hex(u32(RING_OFF.magic))}, expected ${hex(RING_MAGIC)}`);
    if (u32(RING_OFF.version) !== RING_VERSION) fail('bad-version', `version ${u32(RING_OFF.version)}, this end speaks ${RING_VERSION}`);
    const flags = u32(RING_OFF.flags);
    if ((flags & ~RING_KNOWN_FLAGS) !== 0) fail('bad-version', `unknown feature flags ${hex(flags)}`);
    if (u32(RING_OFF.headerSize) !== RING_HEADER_SIZE) fail('bad-config', `header size ${u32(RING_OFF.headerSize)}, expected ${RING_HEADER_SIZE}`);
    const capacity = u32(RING_OFF.capacity);
    if (!isValidCapacity(capacity)) fail('bad-config', `capacity ${capacity} is not a power of two in [64, 2^30]`);
    if (view.length < Ring.sizeFor(capacity)) fail('bad-config', `capacity ${capacity} does not fit the ${view.length}-byte region`);
    const maxMsg = u32(RING_OFF.maxMessage);
    if (maxMsg > maxMessageFor(capacity)) fail('bad-config', `max message size ${maxMsg} above ${maxMessageFor(capacity)} for capacity ${capacity}`);
    const close = u32(RING_OFF.close);
    if (close !== 0) fail('peer-closed', describeClose(close));
    const prod = u32(RING_OFF.prod);
    const cons = u32(RING_OFF.cons);
    if ((prod | cons) % RING_MIN_ALIGN !== 0 || ((prod - cons) >>> 0) > capacity) {
      fail('index-out-of-range', `producer ${hex(prod)}, consumer ${hex(cons)}, capacity ${capacity}`);
    }
    return new Ring(view, capacity, maxMsg, flags, prod, cons);
  }

  /** The error that made this ring unusable, or undefined while it works. */
  get fault(): RingCorruptedError | undefined {
    return this.#fault;
  }

  // ---- Producer ------------------------------------------------------------------------------

  /**
   * Appends one message (copied into the ring). Returns false, writing nothing, when the ring
   * lacks room for it right now. Throws RangeError for a message above
   * {@link Ring.maxMessageSize} (it would never fit) and {@link RingCorruptedError}.
   */
  tryWrite(msg: Uint8Array): boolean {
    this.#checkHeader();
    const len = msg.length;
    if (len > this.maxMessageSize) throw new RangeError(`message of ${len} bytes is above the ring's maximum of ${this.maxMessageSize}`);
    const frame = frameSize(len);
    const off = this.#prod & this.#mask;
    const tail = this.capacity - off;
    // A frame never straddles the end: if it does not fit before the end, a wrap marker pads the
    // tail (always >= 8 bytes, since everything is 8-aligned) and the frame goes to offset 0.
    const need = frame <= tail ? frame : tail + frame;
    if (need > this.capacity - this.#producerUsed()) return false;
    let at = off;
    if (frame > tail) {
      this.#dv.setUint32(off, FRAME_WRAP, true);
      this.#dv.setUint32(off + 4, 0, true);
      at = 0;
    }
    this.#dv.setUint32(at, len, true);
    this.#dv.setUint32(at + 4, 0, true);
    this.#data.set(msg, at + FRAME_HEADER_SIZE);
    // Publish: the seq_cst store (XCHG) comes after every store above in program order, and x86
    // keeps stores in order, so the consumer that sees the index sees the frame.
    this.#prod = (this.#prod + need) >>> 0;
    Atomics.store(this.#words, W_PROD, this.#prod);
    return true;
  }

  /** Bytes the producer could fill now (frame headers, padding and wrap markers included). */
  free(): number {
    this.#checkHeader();
    return this.capacity - this.#producerUsed();
  }

  /**
   * Whether the consumer asked for a doorbell. Call after a successful {@link Ring.tryWrite}:
   * its index store is a full barrier, so this load cannot be satisfied before the index is
   * visible (the store→load order the wait protocol needs). Advisory: a lying peer only gets
   * spurious or missing doorbells.
   */
  dataDoorbellNeeded(): boolean {
    this.#checkHeader();
    return Atomics.load(this.#words, W_WANT_DATA) !== 0;
  }

  /**
   * Producer about to wait for room for a `len`-byte message: sets the "want space" flag, then
   * re-checks. Returns true if there is still no room (wait for the doorbell), false if there is
   * (write now; the flag may stay set until {@link Ring.endWaitSpace}).
   */
  prepareWaitSpace(len: number): boolean {
    this.#checkHeader();
    Atomics.store(this.#words, W_WANT_SPACE, 1); // XCHG: a full barrier before the re-check
    const frame = frameSize(Math.min(len, this.maxMessageSize));
    const tail = this.capacity - (this.#prod & this.#mask);
    const need = frame <= tail ? frame : tail + frame;
    return need > this.capacity - this.#producerUsed();
  }

  /** Clears the "want space" flag. */
  endWaitSpace(): void {
    this.#checkHeader();
    Atomics.store(this.#words, W_WANT_SPACE, 0);
  }

  // ---- Consumer ------------------------------------------------------------------------------

  /**
   * Takes the next message as a fresh copy (so the peer cannot change it after validation), or
   * returns null when the ring is empty. Throws {@link RingCorruptedError}.
   */
  tryRead(): Uint8Array | null {
    const len = this.#peek();
    if (len < 0) return null;
    const copy = this.#data.slice(this.#pendingOffset, this.#pendingOffset + len);
    this.#consume();
    return copy;
  }

  /**
   * Like {@link Ring.tryRead} without allocating: copies the next message into `buf` and returns
   * its length, or null when empty. If `buf` is shorter than the message, throws RangeError and
   * leaves the message in the ring; a buffer of {@link Ring.maxMessageSize} bytes never is.
   */
  readInto(buf: Uint8Array): number | null {
    const len = this.#peek();
    if (len < 0) return null;
    if (len > buf.length) throw new RangeError(`message of ${len} bytes does not fit a ${buf.length}-byte buffer`);
    buf.set(this.#data.subarray(this.#pendingOffset, this.#pendingOffset + len));
    this.#consume();
    return len;
  }

  /**
   * Batched, zero-copy consumer: validates the waiting frames one by one and hands each to `fn`
   * **in place**, as `(data, offset, len)`: `data` is the whole data area (the same object on
   * every call), the payload is `data[offset .. offset + len)`. Stops when the ring is empty (as
   * of one acquire-load of the producer index at the start), after `max` messages, or after a
   * callback returned `false` (that message counts as taken). Returns how many messages it took.
   * Throws {@link RingCorruptedError} (messages handed out before the bad frame stay taken).
   *
   * What the callback may rely on: `offset` and `len` come from one read of the frame header,
   * checked like {@link Ring.tryRead} checks it: `len <= maxMessageSize`, and the whole frame
   * lies inside the data area and inside what the producer had published. So indexing
   * `data[offset .. offset + len)` never leaves the message's frame. What it may NOT rely on: the
   * payload bytes. They are guest memory, and a malicious guest can rewrite them at any moment,
   * also while the callback runs (an honest one only once the consumer index has moved past
   * them). So: read each byte the decision depends on once (copy, then parse the copy, if a
   * field is used twice); copy whatever is kept after the callback returns
   * (`data.slice(offset, offset + len)`); never write to `data`.
   *
   * The consumer index is stored once at the end of the batch (also when a callback or a check
   * throws: a message counts as taken once its callback was called), and on the way after every
   * `capacity / 4` bytes, so a producer waiting for room gets it while a long batch runs. The
   * callback must not call this ring's consumer methods (that throws Error).
   */
  readBatch(fn: (data: Uint8Array, offset: number, len: number) => void | false, max = Infinity): number {
    if (this.#inBatch) throw new Error('Ring.readBatch: the ring is already being read (consumer call from inside a readBatch callback)');
    this.#checkHeader();
    let used = this.#consumerUsed();
    if (used === 0 || !(max > 0)) return 0;
    const u32 = this.#u32;
    const data = this.#data;
    const mask = this.#mask;
    const capacity = this.capacity;
    const maxMsg = this.maxMessageSize;
    const storeEvery = capacity >>> 2;
    const startCons = this.#cons;
    let cons = startCons;
    let stored = startCons;
    let n = 0;
    this.#inBatch = true;
    try {
      while (used !== 0) {
        // used is a non-zero multiple of 8 here, so at least a frame header is published.
        const off = cons & mask;
        const len = u32[off >>> 2]; // each header word read once, into a local
        const reserved = u32[(off >>> 2) + 1];
        if (reserved !== 0) this.#failAt('bad-frame-header', cons, `reserved word ${hex(reserved)}`);
        if (len === FRAME_WRAP) {
          if (off === 0) this.#failAt('frame-crosses-end', cons, 'wrap marker at offset 0');
          const tail = capacity - off;
          if (tail > used) this.#failAt('frame-overrun', cons, `wrap marker pads ${tail} bytes, only ${used} published`);
          cons = (cons + tail) >>> 0;
          used -= tail;
          continue;
        }
        if (len > maxMsg) this.#failAt('bad-length', cons, `length ${len} above the maximum ${maxMsg}`);
        const frame = FRAME_HEADER_SIZE + ((len + 7) & ~7);
        if (frame > used) this.#failAt('frame-overrun', cons, `${frame} bytes, only ${used} published`);
        if (off + frame > capacity) this.#failAt('frame-crosses-end', cons, `frame at offset ${off} of ${frame} bytes runs past the end (${capacity})`);
        // Taken from here on, even if the callback throws (the finally below publishes it).
        cons = (cons + frame) >>> 0;
        this.#cons = cons;
        used -= frame;
        n++;
        const more = fn(data, off + FRAME_HEADER_SIZE, len);
        if (((cons - stored) >>> 0) >= storeEvery) {
          stored = cons;
          Atomics.store(this.#words, W_CONS, cons); // hand space back during a long batch
        }
        if (more === false || n >= max) break;
      }
    } finally {
      this.#inBatch = false;
      // Also covers wrap padding skipped at the very end. The callbacks' loads of the payload are
      // done (program order, and the seq_cst store is a full barrier) before the slots are freed.
      this.#cons = cons;
      if (cons !== stored) Atomics.store(this.#words, W_CONS, cons);
    }
    return n;
  }

  /** Length of the next message without taking it, or null when empty. */
  peekLength(): number | null {
    const len = this.#peek();
    return len < 0 ? null : len;
  }

  /** Bytes waiting for the consumer (frame headers, padding and wrap markers included). */
  available(): number {
    this.#checkHeader();
    return this.#consumerUsed();
  }

  /**
   * Consumer about to wait for data: sets the "want data" flag, then re-checks. Returns true if
   * the ring is still empty (wait for the doorbell), false if data arrived meanwhile.
   */
  prepareWaitData(): boolean {
    this.#checkHeader();
    Atomics.store(this.#words, W_WANT_DATA, 1); // XCHG: a full barrier before the re-check
    return this.#consumerUsed() === 0;
  }

  /** Clears the "want data" flag. */
  endWaitData(): void {
    this.#checkHeader();
    Atomics.store(this.#words, W_WANT_DATA, 0);
  }

  /** Whether the producer asked for a doorbell when space frees up. Call after consuming. */
  spaceDoorbellNeeded(): boolean {
    this.#checkHeader();
    return Atomics.load(this.#words, W_WANT_SPACE) !== 0;
  }

  // ---- Closing -------------------------------------------------------------------------------

  /**
   * Closes the ring for both sides: writes the close word (host side, `fault`'s code) and makes
   * every later call throw. Idempotent; an already failed ring keeps its first error.
   */
  close(fault: RingFault = 'closed', detail = 'closed by the host'): void {
    if (this.#fault) return;
    this.#fault = new RingCorruptedError(fault, detail);
    this.#publishClose(fault);
  }

  // ---- Internals -----------------------------------------------------------------------------

  #fail(fault: RingFault, detail: string): never {
    const err = new RingCorruptedError(fault, detail);
    this.#fault = err;
    // Tell the peer, unless it is the one that closed (its code is the better record).
    if (fault !== 'peer-closed') this.#publishClose(fault);
    throw err;
  }

  /** {@link Ring.#fail} for a frame at consumer index `at` (kept out of the hot loop's code size). */
  #failAt(fault: RingFault, at: number, what: string): never {
    this.#fail(fault, `frame at ${hex(at)}: ${what}`);
  }

  #publishClose(fault: RingFault): void {
    Atomics.store(this.#words, W_CLOSE, (CLOSED_BY_HOST << 8) | RING_FAULT[fault]);
  }

  /** Throws if the ring already failed, the peer closed it, or the configuration block changed. */
  #checkHeader(): void {
    if (this.#fault) throw this.#fault;
    const close = Atomics.load(this.#words, W_CLOSE);
    if (close !== 0) this.#fail('peer-closed', describeClose(close));
    // Only detection: geometry comes from the private copy, so a changed word cannot steer accesses.
    for (let i = 0; i < CONFIG_WORDS.length; i++) {
      const now = Atomics.load(this.#words, CONFIG_WORDS[i] >> 2) >>> 0;
      if (now !== this.#config[i]) {
        // Feature flags count as version: both say "a layout this end may not understand".
        const fault: RingFault = i === 0 ? 'bad-magic' : i === 1 || i === 5 ? 'bad-version' : 'bad-config';
        this.#fail(fault, `header word at ${hex(CONFIG_WORDS[i])} changed from ${hex(this.#config[i])} to ${hex(now)}`);
      }
    }
  }

  /**
   * Producer side: reads the consumer's index and returns the bytes in use. The index must be
   * 8-aligned and lie in [last seen consumer index, own producer index]: it only moves forward,
   * never past what was produced. That also bounds the result by the capacity.
   */
  #producerUsed(): number {
    const c = Atomics.load(this.#words, W_CONS) >>> 0;
    const moved = (c - this.#seenCons) >>> 0;
    const limit = (this.#prod - this.#seenCons) >>> 0;
    if (c % 8 !== 0 || moved > limit) {
      this.#fail('index-out-of-range', `consumer index ${hex(c)} outside [${hex(this.#seenCons)}, ${hex(this.#prod)}]`);
    }
    this.#seenCons = c;
    return (this.#prod - c) >>> 0;
  }

  /**
   * Consumer side: acquire-loads the producer's index and returns the bytes waiting. The index
   * must be 8-aligned and lie in [last seen producer index, own consumer index + capacity].
   */
  #consumerUsed(): number {
    const p = Atomics.load(this.#words, W_PROD) >>> 0;
    const used = (p - this.#cons) >>> 0;
    const before = (this.#seenProd - this.#cons) >>> 0;
    if (p % 8 !== 0 || used > this.capacity || used < before) {
      this.#fail('index-out-of-range', `producer index ${hex(p)} outside [${hex(this.#seenProd)}, ${hex(this.#cons)} + ${this.capacity}]`);
    }
    this.#seenProd = p;
    return used;
  }

  /**
   * Finds and validates the next message frame. Returns its length (and sets #pendingOffset /
   * #pendingFrame) or -1 when empty. Skips one wrap marker. Every value from shared memory is
   * read once into a local and checked before use, so a peer rewriting it meanwhile changes
   * nothing: offsets and lengths derive from the private index and the checked locals only.
   */
  #peek(): number {
    if (this.#inBatch) throw new Error('Ring: consumer call from inside a readBatch callback');
    this.#checkHeader();
    let used = this.#consumerUsed();
    for (;;) {
      if (used === 0) return -1;
      // used is a non-zero multiple of 8, so at least a frame header is published.
      const off = this.#cons & this.#mask;
      const len = this.#dv.getUint32(off, true);
      const reserved = this.#dv.getUint32(off + 4, true);
      if (reserved !== 0) this.#fail('bad-frame-header', `frame at ${hex(this.#cons)}: reserved word ${hex(reserved)}`);
      if (len === FRAME_WRAP) {
        // off > 0 below makes a second marker in a row impossible: the loop runs at most twice.
        if (off === 0) this.#fail('frame-crosses-end', `wrap marker at offset 0 (index ${hex(this.#cons)})`);
        const tail = this.capacity - off;
        if (tail > used) this.#fail('frame-overrun', `wrap marker at ${hex(this.#cons)} pads ${tail} bytes, only ${used} published`);
        this.#cons = (this.#cons + tail) >>> 0;
        used -= tail;
        Atomics.store(this.#words, W_CONS, this.#cons); // give the padding back at once
        continue;
      }
      if (len > this.maxMessageSize) this.#fail('bad-length', `frame at ${hex(this.#cons)}: length ${len} above the maximum ${this.maxMessageSize}`);
      const frame = frameSize(len);
      if (frame > used) this.#fail('frame-overrun', `frame at ${hex(this.#cons)}: ${frame} bytes, only ${used} published`);
      if (off + frame > this.capacity) this.#fail('frame-crosses-end', `frame at offset ${off} of ${frame} bytes runs past the end (${this.capacity})`);
      this.#pendingOffset = off + FRAME_HEADER_SIZE;
      this.#pendingFrame = frame;
      return len;
    }
  }

  /** Releases the frame #peek() found: the payload has been copied out before this store. */
  #consume(): void {
    this.#cons = (this.#cons + this.#pendingFrame) >>> 0;
    Atomics.store(this.#words, W_CONS, this.#cons);
  }
}

function checkView(view: Uint8Array): void {
  // Atomics needs 4-aligned words; frames and the spec need 8.
  if (view.byteOffset % RING_MIN_ALIGN !== 0) throw new RangeError(`a ring must start at a multiple of ${RING_MIN_ALIGN} bytes, this view starts at byte ${view.byteOffset}`);
}

/** Human-readable close word: who closed the ring and why. */
function describeClose(close: number): string {
  const side = (close >>> 8) & 0xff;
  const who = side === CLOSED_BY_HOST ? 'host' : side === 2 ? 'guest' : `side ${side}`;
  const why = ringFaultName(close & 0xff) ?? `code ${close & 0xff}`;
  return `closed by the ${who} (${why}, close word ${hex(close)})`;
}
