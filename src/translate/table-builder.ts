/**
 * Builds x86-64 or EPT paging structures in a private physical memory: for tests, and to lay out
 * tables (an EPT view, say) that are later copied elsewhere with {@link PageTableBuilder.tables}
 * or {@link PageTableBuilder.image}.
 */
import { PAGE_1G, PAGE_2M, PAGE_4K, frameAddr, hiAddrMask, inRange, indexAt, physAddrBits, splitU64 } from './format.js';
import type { PageSize, PagingFormat } from './format.js';
import { PhysAccessError } from './phys-memory.js';
import type { PhysReader } from './phys-memory.js';

/** Options of a {@link PageTableBuilder}. */
export interface PageTableBuilderOptions {
  /** Physical address of the first table (4 KiB aligned). Default 0x100000. */
  base?: bigint;
  /**
   * Bits of entries that point at tables. Default: everything allowed (x86 P|RW|US, EPT R|W|X,
   * plus XU with MBEC), so rights come from the leaf unless a test narrows a level explicitly.
   */
  tableFlags?: bigint;
  /** Tables to reserve room for up front (memory grows on demand anyway). Default 16. */
  capacity?: number;
}

const TWO32 = 4294967296;

/**
 * Paging structures for one address space, in either format. Tables are 4 KiB, allocated on
 * demand one after another from `base` in a single typed array (the first is the root), so a
 * read is one bounds check and one index; the same memory is exposed as a {@link PhysReader}.
 */
export class PageTableBuilder implements PhysReader {
  /** Address of the top-level table (PML4/PML5, or EPT PML4/PML5): CR3 or the EPTP's address. */
  readonly root: bigint;
  readonly base: bigint;
  private readonly baseNum: number;
  private readonly maxPhysAddr: number;
  private readonly tableLo: number;
  private readonly tableHi: number;
  // Entries are written as native-endian words (mem) and read back through a little-endian DataView
  // (view); kvmtalk only runs on x86-64 (package.json "cpu"), where the two agree.
  private mem: Uint32Array;
  private view: DataView;
  private used = 0;
  private usedWords: Uint32Array;
  /** Physical address of `words[0]` (= base), for the walker's direct path. */
  readonly wordsBase: number;

  constructor(
    readonly format: PagingFormat,
    options: PageTableBuilderOptions = {},
  ) {
    this.maxPhysAddr = physAddrBits(format);
    this.base = options.base ?? 0x100000n;
    if (this.base < 0n || (this.base & 0xfffn) !== 0n || this.base >= 1n << BigInt(this.maxPhysAddr)) {
      throw new RangeError(`table base 0x${this.base.toString(16)} must be 4 KiB aligned and below 2^${this.maxPhysAddr}`);
    }
    this.baseNum = Number(this.base);
    const defaultTable = format.kind === 'x86' ? 0x7n : format.mbec === true ? 0x407n : 0x7n;
    [this.tableHi, this.tableLo] = splitU64(options.tableFlags ?? defaultTable);
    this.mem = new Uint32Array(Math.max(1, options.capacity ?? 16) * 1024);
    this.view = new DataView(this.mem.buffer);
    this.usedWords = this.mem.subarray(0, 0);
    this.wordsBase = this.baseNum;
    this.root = this.allocTable();
  }

  /** Tables allocated so far, the root included. */
  get tableCount(): number {
    return this.used / PAGE_4K;
  }

  /** Default leaf bits: x86 P|RW (supervisor, writable); EPT R|W|X with memory type WB. */
  get defaultLeafFlags(): bigint {
    return this.format.kind === 'x86' ? 0x3n : 0x37n;
  }

  /** Allocates a zeroed 4 KiB table and returns its physical address. */
  allocTable(): bigint {
    return BigInt(this.allocNum());
  }

  private allocNum(): number {
    const addr = this.baseNum + this.used;
    if (addr + PAGE_4K > 2 ** this.maxPhysAddr) throw new RangeError(`page-table memory would exceed MAXPHYADDR (${this.maxPhysAddr} bits)`);
    if (this.used + PAGE_4K > this.mem.byteLength) {
      // Doubling keeps map() amortised O(1); fresh memory is zero, so new tables start empty.
      const grown = new Uint32Array(Math.max(this.mem.length * 2, (this.used + PAGE_4K) / 4));
      grown.set(this.mem);
      this.mem = grown;
      this.view = new DataView(grown.buffer);
    }
    this.used += PAGE_4K;
    this.usedWords = this.mem.subarray(0, this.used / 4);
    return addr;
  }

  /**
   * Maps the `size` page at `va` (a linear address for x86, a guest-physical one for EPT) to `pa`,
   * creating missing tables. `flags` are ORed into the leaf as given (so a test can set any bit,
   * reserved ones included); the PS/large bit is added for 2 MiB and 1 GiB pages. Remapping a page
   * of the same size replaces it; overlapping a page of another size throws.
   */
  map(va: bigint, pa: bigint, size: PageSize = PAGE_4K, flags: bigint = this.defaultLeafFlags): void {
    const leafLevel = size === PAGE_4K ? 1 : size === PAGE_2M ? 2 : size === PAGE_1G ? 3 : 0;
    if (leafLevel === 0) throw new RangeError(`page size must be 4 KiB, 2 MiB or 1 GiB, got ${size}`);
    const [hi, lo] = splitU64(va);
    if (!inRange(hi, this.format)) throw new RangeError(`0x${BigInt.asUintN(64, va).toString(16)} cannot be translated in this format (non-canonical or too wide)`);
    if ((lo & (size - 1)) !== 0) throw new RangeError(`address 0x${va.toString(16)} is not aligned to its ${size}-byte page`);
    if (pa < 0n || pa >= 1n << BigInt(this.maxPhysAddr) || Number(pa % BigInt(size)) !== 0) {
      throw new RangeError(`physical address 0x${pa.toString(16)} must be ${size}-aligned and below 2^${this.maxPhysAddr}`);
    }
    const [fHi, fLo] = splitU64(flags);
    const paNum = Number(pa);
    let table = this.baseNum;
    for (let level = this.format.levels; level > leafLevel; level--) {
      const w = this.wordIndex(table + indexAt(hi, lo, level) * 8);
      const elo = this.mem[w];
      const ehi = this.mem[w + 1];
      if (elo === 0 && ehi === 0) {
        const t = this.allocNum(); // may replace this.mem, so index it afresh below
        this.mem[w] = ((t % TWO32) | this.tableLo) >>> 0;
        this.mem[w + 1] = (Math.floor(t / TWO32) | this.tableHi) >>> 0;
        table = t;
      } else if (level <= 3 && (elo & 0x80) !== 0) {
        throw new RangeError(`0x${va.toString(16)} is inside a larger page already mapped at level ${level}`);
      } else {
        table = frameAddr(elo, ehi, hiAddrMask(this.maxPhysAddr), PAGE_4K);
      }
    }
    const w = this.wordIndex(table + indexAt(hi, lo, leafLevel) * 8);
    if (leafLevel > 1 && (this.mem[w] !== 0 || this.mem[w + 1] !== 0) && (this.mem[w] & 0x80) === 0) {
      throw new RangeError(`0x${va.toString(16)} is already mapped with smaller pages`);
    }
    this.mem[w] = ((paNum % TWO32) | fLo | (leafLevel > 1 ? 0x80 : 0)) >>> 0;
    this.mem[w + 1] = (Math.floor(paNum / TWO32) | fHi) >>> 0;
  }

  /** Maps `length` bytes (a multiple of `size`) from `va` to `pa` with pages of `size`. */
  mapRange(va: bigint, pa: bigint, length: number, size: PageSize = PAGE_4K, flags: bigint = this.defaultLeafFlags): void {
    if (!Number.isSafeInteger(length) || length < 0 || length % size !== 0) throw new RangeError(`length ${length} is not a multiple of ${size}`);
    const step = BigInt(size);
    for (let i = 0; i < length / size; i++) this.map(va + BigInt(i) * step, pa + BigInt(i) * step, size, flags);
  }

  /**
   * Physical address of the entry translating `va` at `level` (5..1), or undefined when a table on
   * the way is missing or a larger page covers `va`. For tests that tamper with one entry.
   */
  entryAddress(va: bigint, level: number): bigint | undefined {
    const [hi, lo] = splitU64(va);
    let table = this.baseNum;
    for (let l = this.format.levels; l > level; l--) {
      const w = this.wordIndex(table + indexAt(hi, lo, l) * 8);
      const elo = this.mem[w];
      const ehi = this.mem[w + 1];
      if ((elo === 0 && ehi === 0) || (l <= 3 && (elo & 0x80) !== 0)) return undefined;
      table = frameAddr(elo, ehi, hiAddrMask(this.maxPhysAddr), PAGE_4K);
    }
    return BigInt(table + indexAt(hi, lo, level) * 8);
  }

  /** The allocated tables as 32-bit words from `base` (the walker's direct path; replaced on growth). */
  get words(): Uint32Array {
    return this.usedWords;
  }

  private wordIndex(addr: number): number {
    const off = addr - this.baseNum;
    if (!(off >= 0 && off + 8 <= this.used && off % 8 === 0)) throw new PhysAccessError(addr, 8);
    return off / 4;
  }

  /** Reads 32 bits; the allocation-free path the walker prefers. */
  readU32(addr: number): number {
    const off = addr - this.baseNum;
    if (off >= 0 && off + 4 <= this.used) return (off & 3) === 0 ? this.mem[off >>> 2] : this.view.getUint32(off, true);
    throw new PhysAccessError(addr, 4);
  }

  readU64(addr: bigint): bigint {
    const off = addr - this.base;
    if (off < 0n || off + 8n > BigInt(this.used)) throw new PhysAccessError(addr, 8);
    return this.view.getBigUint64(Number(off), true);
  }

  writeU64(addr: bigint, value: bigint): void {
    const off = addr - this.base;
    if (off < 0n || off + 8n > BigInt(this.used)) throw new PhysAccessError(addr, 8);
    this.view.setBigUint64(Number(off), BigInt.asUintN(64, value), true);
  }

  /** Every table, in allocation order. The views are live until the next allocation grows the memory. */
  *tables(): IterableIterator<{ addr: bigint; entries: BigUint64Array }> {
    for (let off = 0; off < this.used; off += PAGE_4K) {
      yield { addr: this.base + BigInt(off), entries: new BigUint64Array(this.mem.buffer, off, 512) };
    }
  }

  /** All tables as one little-endian byte image starting at `base` (a live view, as for `tables`). */
  image(): Uint8Array {
    return new Uint8Array(this.mem.buffer, 0, this.used);
  }
}
