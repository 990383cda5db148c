/**
 * The host half of address translation: GPA → HVA through the memslots, then HVA → PFN/HPA and the
 * page's kind through `/proc/self/pagemap` and `/proc/kpageflags`
 * (Documentation/admin-guide/mm/pagemap.rst).
 *
 * pagemap holds one 64-bit entry per 4 KiB virtual page: bit 63 present, 62 swapped, 61 file page
 * or shared anonymous, 56 exclusively mapped, 55 soft-dirty, bits 0–54 the PFN (when present).
 * kpageflags holds one 64-bit entry per PFN. Without CAP_SYS_ADMIN the kernel reports PFN 0 and
 * kpageflags cannot be opened; {@link Pagemap} reports that as `pfnHidden`, never as HPA 0.
 */
import * as sys from '../kvm/sys.js';
import { GuestMemoryError, type GuestMemory } from '../memory/guest-memory.js';

/** Host page sizes on x86-64. */
export type HostPageSize = 4096 | 2097152 | 1073741824;

/** kpageflags bit numbers (include/uapi/linux/kernel-page-flags.h) that {@link Pagemap} decodes. */
export const KPF = { COMPOUND_HEAD: 15, COMPOUND_TAIL: 16, HUGE: 17, THP: 22 } as const;

/** What the host knows about the page behind one host virtual address. */
export interface HostPageInfo {
  hva: bigint;
  /** A physical page is mapped at `hva`. */
  present: boolean;
  /** The page is in swap (then `pfn` is undefined). */
  swapped: boolean;
  /** Mapped by this process only (pagemap bit 56). */
  exclusive: boolean;
  /** A file page or shared anonymous (shmem/memfd) page (pagemap bit 61). */
  file: boolean;
  /** Page frame number, when present and visible. */
  pfn?: bigint;
  /** Host-physical address of `hva` itself: pfn * 4096 + (hva & 0xfff). */
  hpa?: bigint;
  /** Size of the host page that maps `hva` (4 KiB unless huge, see {@link Pagemap.lookupInto}). */
  pageSize: HostPageSize;
  /** Part of a transparent huge page (kpageflags THP; recent kernels set it for large folios of any order, not just 2 MiB). */
  thp: boolean;
  /** Part of a hugetlbfs page (kpageflags HUGE). */
  hugetlb: boolean;
  compoundHead: boolean;
  compoundTail: boolean;
  /** log2 of the pages in the folio (compound page) holding the PFN: 9 for 2 MiB, 0 for a small page. */
  folioOrder?: number;
  /** Present, but the kernel hid the PFN (reported as 0) because the caller lacks CAP_SYS_ADMIN. */
  pfnHidden: boolean;
  /** Why PFN or page flags are missing, when they are. */
  reason?: string;
}

/** Where {@link Pagemap} reads from; tests pass fake files. */
export interface PagemapOptions {
  /** Default `/proc/self/pagemap`. */
  pagemapPath?: string;
  /** Default `/proc/kpageflags`; unreadable (not root) means no page flags. */
  kpageflagsPath?: string;
}

/** GPA → HVA through the memslots; throws {@link GuestMemoryError} outside guest RAM. */
export function gpaToHva(memory: GuestMemory, gpa: bigint): bigint {
  for (const r of memory.regions) {
    if (gpa >= r.gpa && gpa < r.gpa + BigInt(r.size)) return r.hva + (gpa - r.gpa);
  }
  throw new GuestMemoryError(gpa, 1);
}

/** Bits of a raw pagemap entry (see {@link Pagemap.lookupRange}). */
export const PAGEMAP = {
  PRESENT: 1n << 63n,
  SWAPPED: 1n << 62n,
  /** File page or shared anonymous (shmem/memfd) page. */
  FILE: 1n << 61n,
  EXCLUSIVE: 1n << 56n,
  SOFT_DIRTY: 1n << 55n,
  /** Bits 54:0: the PFN of a present page (0 when hidden from callers without CAP_SYS_ADMIN). */
  PFN_MASK: (1n << 55n) - 1n,
} as const;

/** The PFN in a raw pagemap entry: undefined when the page is not present, 0n when the kernel hides PFNs. */
export function pagemapPfn(entry: bigint): bigint | undefined {
  return (entry & PAGEMAP.PRESENT) === 0n ? undefined : entry & PAGEMAP.PFN_MASK;
}

/** {@link HostPageInfo} with Number fields for hot paths: `pfn` is -1 when absent or hidden. */
export type HostPageFacts = Omit<HostPageInfo, 'hva' | 'pfn' | 'hpa'> & { pfn: number };

/** A fresh, not-present {@link HostPageFacts} for {@link Pagemap.probe}. */
export function emptyHostPageFacts(): HostPageFacts {
  return {
    present: false, swapped: false, exclusive: false, file: false, pfn: -1, pageSize: 4096, thp: false, hugetlb: false,
    compoundHead: false, compoundTail: false, folioOrder: undefined, pfnHidden: false, reason: undefined,
  };
}

/** A fresh, not-present {@link HostPageInfo} for {@link Pagemap.lookupInto}. */
export function emptyHostPageInfo(): HostPageInfo {
  return {
    hva: 0n, present: false, swapped: false, exclusive: false, file: false, pfn: undefined, hpa: undefined, pageSize: 4096,
    thp: false, hugetlb: false, compoundHead: false, compoundTail: false, folioOrder: undefined, pfnHidden: false, reason: undefined,
  };
}

const HIDDEN_REASON = 'PFNs are hidden: reading them needs CAP_SYS_ADMIN (run as root)';
const NO_FLAGS_REASON = 'page flags unavailable: /proc/kpageflags cannot be read (needs root)';
const PAGE_SIZES: Record<number, HostPageSize> = { 0: 4096, 9: 2097152, 18: 1073741824 };
const TWO32 = 4294967296;
const HEAD = 1 << KPF.COMPOUND_HEAD;
const TAIL = 1 << KPF.COMPOUND_TAIL;
const HUGE = 1 << KPF.HUGE;
const THP = 1 << KPF.THP;
/** Largest folio order searched for (1 GiB pages are order 18). */
const MAX_ORDER = 20;
/** PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg) (Linux 6.7+), and its PAGE_IS_HUGE category. */
const PAGEMAP_SCAN = 0xc0606610;
const PM_SCAN_ARG_SIZE = 96;
const PAGE_IS_HUGE = 1n << 6n;

/**
 * Reads pagemap and kpageflags entries with pread on fds opened once, into one reused buffer: a
 * lookup costs 1 system call for a missing page, 2 for a small page, 3 for a PMD-mapped THP
 * (the third is PAGEMAP_SCAN) and 3–4 for a hugetlb page; other large folios need a few more.
 */
export class Pagemap {
  private readonly pagemapFd: number;
  private readonly kpageflagsFd: number;
  private readonly buf = new Uint8Array(8);
  private readonly facts = emptyHostPageFacts();
  private readonly dv = new DataView(this.buf.buffer);
  /** struct pm_scan_arg, and a one-entry page_region vector at a fixed address, for PAGEMAP_SCAN. */
  private readonly scanArg = new BigUint64Array(PM_SCAN_ARG_SIZE / 8);
  private scanVecAddr = 0n;
  private scanVec?: BigUint64Array;
  private scanSupported = true;
  /** Why kpageflags is unavailable (undefined when it is readable). */
  readonly flagsUnavailable?: string;

  constructor(options: PagemapOptions = {}) {
    this.pagemapFd = sys.open(options.pagemapPath ?? '/proc/self/pagemap', sys.O_RDONLY);
    let kfd = -1;
    try {
      kfd = sys.open(options.kpageflagsPath ?? '/proc/kpageflags', sys.O_RDONLY);
    } catch (e) {
      if (!(e instanceof sys.SysError)) throw e;
      this.flagsUnavailable = `${NO_FLAGS_REASON}: ${e.code}`;
    }
    this.kpageflagsFd = kfd;
  }

  /** What the host knows about the page at `hva`. */
  lookup(hva: bigint): HostPageInfo {
    return this.lookupInto(hva, emptyHostPageInfo());
  }

  /** Like {@link lookup}, filling `out` (every field is overwritten). See {@link probe} for the rules. */
  lookupInto(hva: bigint, out: HostPageInfo): HostPageInfo {
    const f = this.probe(Number(hva), this.facts);
    Object.assign(out, f);
    out.hva = hva;
    out.pfn = f.pfn >= 0 ? BigInt(f.pfn) : undefined;
    out.hpa = f.pfn >= 0 ? (BigInt(f.pfn) << 12n) | (hva & 0xfffn) : undefined;
    return out;
  }

  /**
   * The host page at `hva` (a Number: user addresses are below 2^47), with Number fields only:
   * the fast path for bulk translation, where BigInt conversions cost as much as a system call.
   *
   * Page size is the size of the host mapping: a hugetlb page's size follows from its folio order
   * (2 MiB or 1 GiB); a THP counts as 2 MiB when it is PMD-mapped, which PAGEMAP_SCAN's
   * PAGE_IS_HUGE reports (then the folio is order 9 and its head is 512-aligned). Where PAGEMAP_SCAN
   * is missing (before Linux 6.7, or fake files), an order-9 THP whose PFN offset from its head
   * equals the HVA's 4 KiB index in its 2 MiB block counts as 2 MiB. Everything else is 4 KiB.
   *
   * The folio order of other compound pages (a PTE-mapped THP, an mTHP) comes from the head/tail
   * flags: folios are naturally aligned, so the head is the first aligned-down PFN flagged
   * COMPOUND_HEAD and the order is the first j for which head + 2^j is not a tail (hugetlb folios
   * are at least order 9 on x86-64, so their search starts there). Flags are read without locking:
   * a folio split between reads can give a stale answer.
   */
  probe(hva: number, out: HostPageFacts): HostPageFacts {
    out.pfn = -1;
    out.pageSize = 4096;
    out.thp = out.hugetlb = out.compoundHead = out.compoundTail = out.pfnHidden = false;
    out.folioOrder = undefined;
    out.reason = undefined;
    const vpn = Math.floor(hva / 4096);
    const n = sys.pread(this.pagemapFd, this.buf, vpn * 8);
    const lo = n === 8 ? this.dv.getUint32(0, true) : 0;
    const hi = n === 8 ? this.dv.getUint32(4, true) : 0;
    out.present = (hi & 0x80000000) !== 0;
    out.swapped = (hi & 0x40000000) !== 0;
    out.file = (hi & 0x20000000) !== 0;
    out.exclusive = (hi & 0x01000000) !== 0;
    if (!out.present) return out;
    const pfnHi = hi & 0x7fffff;
    if (pfnHi === 0 && lo === 0) {
      out.pfnHidden = true;
      out.reason = HIDDEN_REASON;
      return out;
    }
    const pfn = pfnHi * TWO32 + lo; // exact: real PFNs are far below 2^53
    out.pfn = pfn;
    if (this.kpageflagsFd < 0) {
      out.reason = this.flagsUnavailable;
      return out;
    }
    const flags = this.flags(pfn);
    out.compoundHead = (flags & HEAD) !== 0;
    out.compoundTail = (flags & TAIL) !== 0;
    out.thp = (flags & THP) !== 0;
    out.hugetlb = (flags & HUGE) !== 0;
    if (!out.compoundHead && !out.compoundTail) {
      out.folioOrder = 0;
      return out;
    }
    // A PMD maps a 2 MiB-aligned physical block at a 2 MiB-aligned HVA, so misaligned pages need no scan.
    const pmdMapped = !out.thp ? undefined : vpn % 512 !== pfn % 512 ? false : this.pmdMapped(BigInt(hva));
    let head = pfn - (vpn % 512);
    let order = 9;
    if (pmdMapped !== true || head % 512 !== 0) {
      const minOrder = out.hugetlb ? 9 : 1;
      head = this.folioHead(pfn, out.compoundHead, minOrder);
      order = head < 0 ? -1 : this.folioOrder(head, pfn, minOrder);
      if (order < 0) return out;
    }
    out.folioOrder = order;
    if (out.hugetlb) out.pageSize = PAGE_SIZES[order] ?? 4096;
    else if (pmdMapped === true || (pmdMapped === undefined && out.thp && order === 9 && vpn % 512 === pfn - head)) out.pageSize = 2097152;
    return out;
  }

  /**
   * The raw pagemap entries of `pages` consecutive 4 KiB pages from `hva` (aligned down to 4 KiB),
   * read with as few preads as the kernel allows (normally one): for bulk scans, where a
   * {@link lookup} per page would cost a system call each. Decode them with {@link PAGEMAP} and
   * {@link pagemapPfn}; page flags and page sizes need {@link lookup} on the pages of interest.
   */
  lookupRange(hva: bigint, pages: number): BigUint64Array {
    if (!Number.isSafeInteger(pages) || pages < 0) throw new RangeError(`page count must be a non-negative integer, got ${pages}`);
    const out = new BigUint64Array(pages);
    const bytes = new Uint8Array(out.buffer);
    const start = Number(hva >> 12n) * 8;
    for (let done = 0; done < bytes.length; ) {
      const n = sys.pread(this.pagemapFd, bytes.subarray(done), start + done);
      if (n <= 0) break; // past the end of the address space: the rest stays 0 (not present)
      done += n;
    }
    return out;
  }

  /** Releases the fds. */
  close(): void {
    sys.close(this.pagemapFd);
    if (this.kpageflagsFd >= 0) sys.close(this.kpageflagsFd);
    if (this.scanVec) sys.munmap(this.scanVecAddr, 4096);
    this.scanVec = undefined;
  }

  /** Whether a PMD maps the page at `hva` (PAGEMAP_SCAN's PAGE_IS_HUGE), or undefined when the kernel cannot say. */
  private pmdMapped(hva: bigint): boolean | undefined {
    if (!this.scanSupported) return undefined;
    if (!this.scanVec) {
      this.scanVecAddr = sys.mmap(4096, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1);
      this.scanVec = new BigUint64Array(sys.view(this.scanVecAddr, 4096));
    }
    const a = this.scanArg;
    const start = hva & ~0xfffn;
    a.fill(0n);
    a[0] = BigInt(PM_SCAN_ARG_SIZE); // size
    a[2] = start; // start
    a[3] = start + 4096n; // end
    a[5] = this.scanVecAddr; // vec
    a[6] = 1n; // vec_len
    a[11] = PAGE_IS_HUGE; // return_mask
    try {
      const regions = sys.ioctlBuf(this.pagemapFd, 'PAGEMAP_SCAN', PAGEMAP_SCAN, a.buffer);
      return regions > 0 && (this.scanVec[2] & PAGE_IS_HUGE) !== 0n;
    } catch (e) {
      if (!(e instanceof sys.SysError)) throw e;
      this.scanSupported = false;
      return undefined;
    }
  }

  /** The low 32 bits of the kpageflags entry of `pfn` (all decoded flags live there); 0 past the end. */
  private flags(pfn: number): number {
    return sys.pread(this.kpageflagsFd, this.buf, pfn * 8) === 8 ? this.dv.getUint32(0, true) : 0;
  }

  /** The head PFN of the compound page holding `pfn`, or -1 if the flags do not show one. */
  private folioHead(pfn: number, isHead: boolean, minOrder: number): number {
    if (isHead) return pfn;
    let last = pfn;
    for (let k = minOrder; k <= MAX_ORDER; k++) {
      const c = pfn - (pfn % 2 ** k);
      if (c === last) continue;
      last = c;
      const f = this.flags(c);
      if (f & HEAD) return c;
      if (!(f & TAIL)) return -1;
    }
    return -1;
  }

  /** The folio order: the first j (from what `pfn`'s offset and `minOrder` imply) with head + 2^j not a tail. */
  private folioOrder(head: number, pfn: number, minOrder: number): number {
    let j = Math.max(32 - Math.clz32(pfn - head), minOrder, 1); // pfn - head < 2^order
    for (; j <= MAX_ORDER; j++) {
      if (!(this.flags(head + 2 ** j) & TAIL)) return j;
    }
    return -1;
  }
}

/** One GPA followed down to the host page. */
export interface GpaTranslation {
  gpa: bigint;
  hva: bigint;
  host: HostPageInfo;
}

/**
 * Adds what `memory`'s backing implies when page flags were unreadable (not root): a present page
 * of `'hugetlb'` memory is a hugetlb page of the backing's size, since every page of it is.
 */
export function applyBacking<T extends Pick<HostPageFacts, 'present' | 'folioOrder' | 'hugetlb' | 'pageSize'>>(memory: Pick<GuestMemory, 'backing' | 'pageSize'>, info: T): T {
  if (info.present && memory.backing === 'hugetlb' && info.folioOrder === undefined) {
    info.hugetlb = true;
    info.pageSize = memory.pageSize as HostPageSize;
  }
  return info;
}

/** GPA → HVA → host page, with {@link applyBacking}. */
export function translateGpa(memory: GuestMemory, pagemap: Pagemap, gpa: bigint): GpaTranslation {
  const hva = gpaToHva(memory, gpa);
  return { gpa, hva, host: applyBacking(memory, pagemap.lookup(hva)) };
}
