/** The physical-memory interface page walks read through, and a reader over plain bytes. */

/**
 * Physical memory the walker reads paging structures from. `readU64` must throw when the address
 * is outside the memory. The optional members are faster paths the walker prefers:
 * - `readU32` (Number address) avoids allocating a BigInt per entry;
 * - `words`/`wordsBase` expose the memory directly: `words[i]` holds the little-endian 32 bits at
 *   physical address `wordsBase + 4 * i`. The walker uses them only when `wordsBase` is a multiple
 *   of 4 and the window ends at or below 4 GiB, which lets it index tables with int32 arithmetic.
 *
 * `GuestMemory` satisfies this interface (it has `readU64` and `readU32`).
 */
export interface PhysReader {
  readU64(addr: bigint): bigint;
  readU32?(addr: number): number;
  readonly words?: Uint32Array;
  readonly wordsBase?: number;
}

/** A read or write outside the memory a reader owns. */
export class PhysAccessError extends RangeError {
  constructor(
    readonly addr: bigint | number,
    readonly length: number,
  ) {
    super(`physical access 0x${addr.toString(16)}+${length} is outside the memory`);
    this.name = 'PhysAccessError';
  }
}

/** Whether typed arrays are little-endian here, so a Uint32Array reads guest words as they are. */
const HOST_LE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Bytes that sit at physical address `base`: a Uint8Array of table images, or a live view of guest
 * RAM (e.g. `GuestMemory.bytes`) so walks over it take the direct path.
 */
export class ByteMemory implements PhysReader {
  /** Direct window for the walker, when the bytes are 4-byte aligned (undefined otherwise). */
  readonly words: Uint32Array | undefined;
  readonly wordsBase: number;
  private readonly view: DataView;
  private readonly baseNum: number;

  constructor(
    readonly bytes: Uint8Array,
    readonly base: bigint = 0n,
  ) {
    if (base < 0n || base + BigInt(bytes.length) > 1n << 52n) throw new RangeError(`memory at 0x${base.toString(16)}+${bytes.length} exceeds 52-bit physical addresses`);
    this.baseNum = Number(base);
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const aligned = HOST_LE && bytes.byteOffset % 4 === 0 && bytes.length % 4 === 0 && this.baseNum % 4 === 0;
    this.words = aligned ? new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4) : undefined;
    this.wordsBase = this.baseNum;
  }

  readU32(addr: number): number {
    const off = addr - this.baseNum;
    if (off >= 0 && off + 4 <= this.bytes.length) return this.view.getUint32(off, true);
    throw new PhysAccessError(addr, 4);
  }

  readU64(addr: bigint): bigint {
    const off = addr - this.base;
    if (off < 0n || off + 8n > BigInt(this.bytes.length)) throw new PhysAccessError(addr, 8);
    return this.view.getBigUint64(Number(off), true);
  }

  writeU64(addr: bigint, value: bigint): void {
    const off = addr - this.base;
    if (off < 0n || off + 8n > BigInt(this.bytes.length)) throw new PhysAccessError(addr, 8);
    this.view.setBigUint64(Number(off), BigInt.asUintN(64, value), true);
  }
}
