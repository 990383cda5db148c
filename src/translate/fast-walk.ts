/**
 * Translation-only page walks tuned for throughput: no steps, no access check, no allocation.
 *
 * {@link FastWalker.translate} handles the common entry (a valid table pointer, a 4 KiB leaf) with
 * one or two mask tests over a direct Uint32Array window, in int32 arithmetic; anything else
 * (large pages, faults, EPT execute-only entries, tables above 4 GiB, readers without a window)
 * continues through the same classifiers `walk()` uses. The fast tests accept only entries the
 * classifiers also accept, so both paths agree; the unit tests fuzz that.
 *
 * `translate` is deliberately compact, under V8's inlining limit, so the JIT can inline it into the
 * caller's loop; that alone is worth ~1.4x in throughput.
 */
import { eptClassify } from './ept.js';
import { Entry, frameAddr, hiAddrMask, hiReservedMask, indexAt, leafSize, physAddrBits } from './format.js';
import type { PagingFormat } from './format.js';
import type { PhysReader } from './phys-memory.js';
import { x86Classify } from './x86-paging.js';

/** Out-parameter of {@link walkFast}. */
export interface FastWalkInfo {
  /** Page size of the leaf, or 0 when the walk failed. */
  pageSize: number;
  /** Leaf level on success; the level of the faulting (or unreadable) entry on failure. */
  level: number;
}

const TWO32 = 4294967296;

/**
 * A reusable translator for one reader and format, with the format reduced to masks up front.
 * Results are Numbers (exact: physical addresses are below 2^52); -1 means "does not translate".
 */
export class FastWalker {
  /** Page size of the last translation, 0 if it failed. */
  pageSize = 0;
  /** Leaf level of the last translation, or the level of the entry where it failed. */
  level = 0;

  // The format as masks (see retarget). Plain number/boolean fields keep the object monomorphic.
  private x86 = true;
  private levels = 4;
  private physBits = 46;
  private topShift = 15;
  private canon = -1;
  private addrHi = 0;
  private rsvdHi = 0;
  private hiBad = 0;
  private tableTest = 0;
  private badTypes = 0;
  private gbPages = true;
  private mbec = false;
  private executeOnly = true;
  /** The direct window last validated (null: none yet, or the reader has no usable one). */
  private words: Uint32Array | null = null;
  private baseW = 0;

  private reader: PhysReader;

  constructor(reader: PhysReader, format: PagingFormat) {
    this.reader = reader;
    this.retarget(reader, format);
  }

  /** Points the walker at another reader and/or format, without allocating. */
  retarget(reader: PhysReader, format: PagingFormat): void {
    const m = physAddrBits(format);
    const x86 = format.kind === 'x86';
    this.reader = reader;
    this.x86 = x86;
    this.levels = format.levels;
    this.physBits = m;
    // x86: canonical = bits 63:47 (63:56) all equal, i.e. hi >> 15 (24) is 0 or -1.
    // EPT: a 48-bit (57-bit) guest-physical address, i.e. hi >> 16 (25) is 0.
    this.topShift = (format.levels === 5 ? 24 : 15) + (x86 ? 0 : 1);
    this.canon = x86 ? -1 : 0;
    this.addrHi = hiAddrMask(m);
    this.rsvdHi = hiReservedMask(m) | (x86 && !format.nxe ? 0x80000000 : 0);
    // A table pointer the fast path may follow: bit 0 (P, or EPT R) set, PS clear (EPT: bits 7:3
    // clear), no reserved high bits, and the next table below 4 GiB.
    this.hiBad = this.rsvdHi | this.addrHi;
    this.tableTest = x86 ? 0x81 : 0xf9;
    this.badTypes = x86 ? 0 : 0x8c; // EPT memory types 2, 3 and 7 are reserved
    this.gbPages = format.gbPages !== false;
    this.mbec = !x86 && format.mbec === true;
    this.executeOnly = x86 || format.executeOnly !== false;
    this.words = null;
  }

  /**
   * Translates the address with unsigned 32-bit halves `hi`:`lo` through the tables at `root`
   * (bits 11:0 ignored). Returns the physical address or -1; sets `pageSize` and `level`.
   */
  translate(root: number, hi: number, lo: number): number {
    // Written for V8: under its 460-byte bytecode inlining limit (one exit per outcome), literal
    // constants (a module `const` is re-checked for TDZ at every use), int32 arithmetic throughout.
    const words = this.reader.words;
    let level = this.levels;
    let elo = 0;
    let ehi = 0;
    fast: if (words === this.words || this.accept(words)) {
      const top = hi >> this.topShift;
      if ((top !== 0 && top !== this.canon) || root >= 4294967296) break fast;
      const w = words as Uint32Array; // accept() vetted it (this.words is never undefined)
      const n1 = w.length - 1;
      const baseW = this.baseW;
      let t = ((root >>> 12) << 10) - baseW; // the table's word index: address / 4, an int32 below 4 GiB
      for (;;) {
        const e = t + indexAt(hi, lo, level) * 2;
        if (e >>> 0 >= n1) break fast; // outside the window (a negative e too)
        elo = w[e];
        ehi = w[e + 1];
        if (level === 1) {
          // x86: P. EPT: R (so W or X alone cannot misconfigure it) and a memory type other than 2, 3, 7.
          if ((elo & 1) === 0 || (ehi & this.rsvdHi) !== 0 || ((this.badTypes >>> ((elo >>> 3) & 7)) & 1) !== 0) break;
          this.level = 1;
          this.pageSize = 4096;
          return (ehi & this.addrHi) * 4294967296 + ((elo & 0xfffff000) >>> 0) + (lo & 0xfff);
        }
        if ((elo & this.tableTest) !== 1 || (ehi & this.hiBad) !== 0) break;
        t = ((elo >>> 12) << 10) - baseW;
        level--;
      }
      return this.continueAt(elo, ehi, hi, lo, level);
    }
    return this.general(root, hi, lo);
  }

  /** {@link translate} for bigint addresses: -1n when the address does not translate. */
  translateAddress(root: bigint, address: bigint): bigint {
    const a = BigInt.asUintN(64, address);
    const pa = this.translate(Number(BigInt.asUintN(this.physBits, root) & ~0xfffn), Number(a >> 32n), Number(a & 0xffffffffn));
    return pa < 0 ? -1n : BigInt(pa);
  }

  /**
   * Adopts the reader's direct window if the fast path can index it with int32 arithmetic: a
   * 4-byte-aligned base and an end at or below 4 GiB. Otherwise walks go through the reader's methods.
   */
  private accept(words: Uint32Array | undefined): words is Uint32Array {
    const base = this.reader.wordsBase ?? 0;
    if (words !== undefined && words.length >= 2 && base % 4 === 0 && base + words.length * 4 <= TWO32) {
      this.words = words;
      this.baseW = base / 4;
      return true;
    }
    this.words = null;
    return false;
  }

  /** The whole walk through the reader's methods and the shared classifiers. */
  private general(root: number, hi: number, lo: number): number {
    const top = hi >> this.topShift;
    if (top !== 0 && top !== this.canon) return this.fail(this.levels);
    return this.walkFrom(root - (root % 4096), hi, lo, this.levels);
  }

  /** Resumes at an entry the fast path would not judge (a large page, a fault, a table above 4 GiB...). */
  private continueAt(elo: number, ehi: number, hi: number, lo: number, level: number): number {
    const code = this.classify(elo, ehi, level);
    if (code === Entry.Leaf) return this.leaf(elo, ehi, lo, level);
    if (code !== Entry.Table) return this.fail(level);
    return this.walkFrom(frameAddr(elo, ehi, this.addrHi, 4096), hi, lo, level - 1);
  }

  private walkFrom(table: number, hi: number, lo: number, level: number): number {
    const reader = this.reader;
    for (;;) {
      const addr = table + indexAt(hi, lo, level) * 8;
      let elo: number;
      let ehi: number;
      try {
        if (reader.readU32 !== undefined) {
          elo = reader.readU32(addr);
          ehi = reader.readU32(addr + 4);
        } else {
          const v = BigInt.asUintN(64, reader.readU64(BigInt(addr)));
          elo = Number(v & 0xffffffffn);
          ehi = Number(v >> 32n);
        }
      } catch {
        return this.fail(level); // unreadable table
      }
      const code = this.classify(elo, ehi, level);
      if (code === Entry.Leaf) return this.leaf(elo, ehi, lo, level);
      if (code !== Entry.Table) return this.fail(level);
      table = frameAddr(elo, ehi, this.addrHi, 4096);
      level--;
    }
  }

  private classify(elo: number, ehi: number, level: number): number {
    return this.x86
      ? x86Classify(elo, ehi, level, this.rsvdHi, this.gbPages)
      : eptClassify(elo, ehi, level, this.rsvdHi, this.gbPages, this.mbec, this.executeOnly);
  }

  private leaf(elo: number, ehi: number, lo: number, level: number): number {
    const size = leafSize(level);
    this.level = level;
    this.pageSize = size;
    return frameAddr(elo, ehi, this.addrHi, size) + (lo & (size - 1));
  }

  private fail(level: number): number {
    this.level = level;
    this.pageSize = 0;
    return -1;
  }
}

// Shared by walkFast so the convenience function allocates nothing but its result.
let scratch: FastWalker | undefined;

/**
 * Translates `address` through the tables at `root` (CR3 or EPTP; flag bits are ignored): the
 * physical address, or -1n when it does not translate (not present, reserved bit, EPT
 * misconfiguration, non-canonical, unreadable table). Access rights are not checked: use `walk`
 * for that and for the reason of a failure. `info` receives the page size and level. For bulk
 * work, a {@link FastWalker} avoids the BigInt conversions.
 */
export function walkFast(reader: PhysReader, root: bigint, address: bigint, format: PagingFormat, info?: FastWalkInfo): bigint {
  if (scratch === undefined) scratch = new FastWalker(reader, format);
  else scratch.retarget(reader, format);
  const pa = scratch.translateAddress(root, address);
  if (info !== undefined) {
    info.pageSize = scratch.pageSize;
    info.level = scratch.level;
  }
  return pa;
}
