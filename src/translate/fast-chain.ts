/**
 * The whole chain GVA → GPA → HVA → HPA at bulk speed: the guest stage with {@link FastWalker}
 * over a direct view of guest RAM, the memslot stage as Number arithmetic, the host stage with
 * {@link Pagemap.lookupInto} (a pread of /proc/self/pagemap, and one of /proc/kpageflags for a
 * present page). For one GVA with every stage explained, use `translateChain` (chain.ts) instead.
 *
 * Addresses are Numbers inside: GPAs and HPAs are below 2^52 and HVAs below 2^47, so all are exact.
 * The host stage dominates the cost (two system calls per translation); the rest is ~20 ns.
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import { FastWalker } from './fast-walk.js';
import type { X86Format } from './format.js';
import { applyBacking, emptyHostPageFacts, type Pagemap } from './host-pages.js';
import { ByteMemory } from './phys-memory.js';

/** One GVA followed to its host page ({@link FastChain.translate}). */
export interface FullTranslation {
  gva: bigint;
  gpa: bigint;
  hva: bigint;
  /** Host-physical address of `hva`: absent when the host page is not present or its PFN is hidden (not root). */
  hpa?: bigint;
  pfn?: bigint;
  /** Size of the guest page that maps `gva`: 4 KiB, 2 MiB or 1 GiB. */
  guestPageSize: number;
  /** Size of the host page that maps `hva` (see {@link Pagemap.lookupInto}). */
  hostPageSize: number;
  /** Whether a host page backs `hva` now (a never-touched page has none yet). */
  hostPresent: boolean;
}

/** The allocation-free out-parameter of {@link FastChain.translateParts}: plain Numbers. */
export interface ChainResult {
  gpa: number;
  hva: number;
  /** -1 when the host page is not present or its PFN is hidden. */
  hpa: number;
  /** -1 like `hpa`. */
  pfn: number;
  guestPageSize: number;
  /** Paging level of the guest leaf (1 = PT, 2 = PD, 3 = PDPT). */
  guestLevel: number;
  hostPageSize: number;
  hostPresent: boolean;
}

/** A zeroed {@link ChainResult}. */
export function emptyChainResult(): ChainResult {
  return { gpa: 0, hva: 0, hpa: -1, pfn: -1, guestPageSize: 0, guestLevel: 0, hostPageSize: 0, hostPresent: false };
}

/** The guest control registers a walk format depends on. */
export interface PagingRegs {
  cr4: bigint;
  efer: bigint;
}

/**
 * The 4- or 5-level format of a long-mode vCPU: CR4.LA57 and EFER.NXE decide it. MAXPHYADDR
 * defaults to 46 and 1 GiB pages to unsupported (this platform's CPUID lacks pdpe1gb).
 */
export function x86FormatOf(regs: PagingRegs, extra: Partial<Pick<X86Format, 'maxPhysAddr' | 'gbPages'>> = {}): X86Format {
  return {
    kind: 'x86',
    levels: (regs.cr4 & (1n << 12n)) !== 0n ? 5 : 4,
    nxe: (regs.efer & (1n << 11n)) !== 0n,
    pke: false, // protection keys only matter to access checks, which a translation does not make
    maxPhysAddr: extra.maxPhysAddr,
    gbPages: extra.gbPages ?? false,
  };
}

const TWO32 = 4294967296;

/** Translates GVAs of one address space (one CR3) of one VM's RAM down to host pages. */
export class FastChain implements PartsTranslator {
  /** The walker, for callers that want the guest stage alone. */
  readonly walker: FastWalker;
  /** Guest RAM as the walker reads it. */
  readonly reader: ByteMemory;
  readonly format: X86Format;
  private root = 0;
  private readonly host = emptyHostPageFacts();
  // Memslots as parallel Number arrays, so the GPA → HVA step allocates nothing.
  private readonly slotGpa: number[];
  private readonly slotEnd: number[];
  private readonly slotHva: number[];

  /**
   * @param memory guest RAM (its `bytes` are what the guest sees, its regions the memslots)
   * @param pagemap the host-page reader; the caller owns it and closes it
   * @param format the guest's paging format (see {@link x86FormatOf})
   * @param cr3 the page-table root; bits 11:0 and flag bits are ignored
   */
  constructor(
    readonly memory: GuestMemory,
    readonly pagemap: Pagemap,
    format: X86Format,
    cr3: bigint,
  ) {
    this.format = format;
    this.reader = new ByteMemory(memory.bytes);
    this.walker = new FastWalker(this.reader, format);
    this.slotGpa = memory.regions.map((r) => Number(r.gpa));
    this.slotEnd = memory.regions.map((r) => Number(r.gpa) + r.size);
    this.slotHva = memory.regions.map((r) => Number(r.hva));
    this.setCr3(cr3);
  }

  /** The page-table root in use, as a 4 KiB-aligned GPA. */
  get rootGpa(): number {
    return this.root;
  }

  /** Switches to another address space. */
  setCr3(cr3: bigint): void {
    this.root = Number(BigInt.asUintN(52, cr3) & ~0xfffn);
  }

  /** Translates `gva`; undefined when the guest does not map it or its GPA is outside every memslot. */
  translate(gva: bigint): FullTranslation | undefined {
    return translateGva(this, gva);
  }

  /** {@link translate} into `out` (see {@link translateParts}). */
  translateInto(gva: bigint, out: ChainResult): boolean {
    return translateGvaInto(this, gva, out);
  }

  /**
   * Translates the GVA with unsigned 32-bit halves `hi`:`lo` into `out`. False (and `out` partly
   * written) when the guest does not map it or the GPA is outside guest RAM; true otherwise, with
   * `out.hpa` = -1 when the host has no visible page there. Allocates nothing itself (the host
   * stage's Pagemap makes a few BigInts).
   */
  translateParts(hi: number, lo: number, out: ChainResult): boolean {
    const gpa = this.walker.translate(this.root, hi, lo);
    if (gpa < 0) return false;
    out.gpa = gpa;
    out.guestPageSize = this.walker.pageSize;
    out.guestLevel = this.walker.level;
    const hva = this.hvaOf(gpa);
    if (hva < 0) return false;
    out.hva = hva;
    this.hostInto(hva, out);
    return true;
  }

  /** GPA → HVA through the memslots, or -1 outside them. */
  hvaOf(gpa: number): number {
    const n = this.slotGpa.length;
    for (let i = 0; i < n; i++) {
      if (gpa >= this.slotGpa[i] && gpa < this.slotEnd[i]) return this.slotHva[i] + (gpa - this.slotGpa[i]);
    }
    return -1;
  }

  /** HVA → host page: fills the host fields of `out`. */
  hostInto(hva: number, out: ChainResult): void {
    const h = applyBacking(this.memory, this.pagemap.probe(hva, this.host));
    out.hostPresent = h.present;
    out.hostPageSize = h.pageSize;
    out.pfn = h.pfn;
    out.hpa = h.pfn < 0 ? -1 : h.pfn * 4096 + (hva % 4096);
  }
}

/** Anything that translates GVAs given as 32-bit halves: {@link FastChain}, `TranslationCache`. */
export interface PartsTranslator {
  /** See {@link FastChain.translateParts}. */
  translateParts(hi: number, lo: number, out: ChainResult): boolean;
}

/** `t.translateParts` of the bigint `gva`, into `out`. */
export function translateGvaInto(t: PartsTranslator, gva: bigint, out: ChainResult): boolean {
  const a = BigInt.asUintN(64, gva);
  return t.translateParts(Number(a >> 32n), Number(a & 0xffffffffn), out);
}

/** `t.translateParts` of the bigint `gva` as a {@link FullTranslation}; undefined when it does not translate. */
export function translateGva(t: PartsTranslator, gva: bigint): FullTranslation | undefined {
  const out = emptyChainResult();
  return translateGvaInto(t, gva, out) ? toFullTranslation(gva, out) : undefined;
}

/** The bigint form of a {@link ChainResult} for `gva`. */
export function toFullTranslation(gva: bigint, r: ChainResult): FullTranslation {
  const t: FullTranslation = {
    gva: BigInt.asUintN(64, gva), gpa: BigInt(r.gpa), hva: BigInt(r.hva), guestPageSize: r.guestPageSize, hostPageSize: r.hostPageSize, hostPresent: r.hostPresent,
  };
  if (r.pfn >= 0) {
    t.pfn = BigInt(r.pfn);
    t.hpa = BigInt(r.hpa);
  }
  return t;
}

/** Splits a GVA into unsigned 32-bit halves for the `*Parts` methods. */
export function gvaParts(gva: bigint): [hi: number, lo: number] {
  const a = BigInt.asUintN(64, gva);
  return [Number(a >> 32n), Number(a % BigInt(TWO32))];
}
