/**
 * A cache of full GVA → GPA → HVA → HPA translations that stays correct while the guest edits its
 * page tables, by watching the page-table pages with KVM's dirty log.
 *
 * Consistency model:
 * - Each cached entry remembers the paging-structure entries its walk read (address and value).
 *   The guest-physical pages holding them are watched: KVM logs guest writes to them.
 * - {@link TranslationCache.sync} fetches the log. For every watched page the guest wrote, the
 *   entries whose walk read that page are re-checked: an entry whose paging entries still hold the
 *   same values (Accessed/Dirty bits aside, which do not change a translation) is kept, any other
 *   is dropped. Entries whose walks never touched a written page are not looked at.
 * - So a cached result is exactly what a fresh walk would have given at the last sync. `translate`
 *   syncs by itself once `maxAgeMs` have passed or `maxLookups` lookups were made since the last
 *   sync; call `sync()` yourself at points where the guest is known to have finished a change (a
 *   hypercall, a paused vCPU) to make results exact from there on.
 * - The vCPU's TLB is not modelled: after a PTE write and before the guest flushes, the CPU may
 *   still use the old translation while the cache (like any walk) reports the new one.
 * - Only guest writes are logged. Writes the VMM makes to guest page tables (through
 *   `GuestMemory`) are invisible to KVM's log: report them with {@link TranslationCache.invalidateRange}.
 * - A CR3 change is a new address space: {@link TranslationCache.setCr3} drops everything.
 * - The host stage (HVA → HPA) is cached too, and the host may move pages (compaction, NUMA
 *   balancing, swap) without the guest writing anything. Call {@link TranslationCache.invalidateAll}
 *   to re-read pagemap. Translations whose host page is not present yet are never cached.
 * - Failed translations (not mapped, outside RAM) are not cached.
 */
import type { DirtyLogMode, Vm } from '../vmm/vm.js';
import {
  FastChain, translateGva, translateGvaInto, x86FormatOf, type ChainResult, type FullTranslation, type PartsTranslator,
} from './fast-chain.js';
import { hiAddrMask, indexAt, physAddrBits, type X86Format } from './format.js';
import { Pagemap } from './host-pages.js';

/** Where a {@link TranslationCache} learns which guest-physical pages the guest wrote. */
export interface DirtyPageSource {
  /**
   * Starts watching these guest-physical page numbers (GPA >> 12). Once it returns, every later
   * guest write to one of them is reported by {@link collect}.
   */
  watch(pages: readonly number[]): void;
  /** Watched pages written since they were watched; reporting a page ends its watch. */
  collect(): number[];
}

/**
 * {@link DirtyPageSource} over a VM's KVM dirty log (KVM_GET_DIRTY_LOG, and KVM_CLEAR_DIRTY_LOG
 * in `'manual'` mode, where only watched pages are write-protected; see `DirtyLogMode`).
 */
export class VmDirtyLog implements DirtyPageSource {
  readonly mode: DirtyLogMode;
  private readonly watched = new Set<number>();
  private readonly slots: { slot: number; first: number; pages: number; bitmap: BigUint64Array }[];
  private readonly chunk = new BigUint64Array(1);

  constructor(
    private readonly vm: Pick<Vm, 'memory' | 'enableDirtyLog' | 'getDirtyLog' | 'clearDirtyLog'>,
    prefer: DirtyLogMode = 'manual',
  ) {
    this.mode = vm.enableDirtyLog(prefer);
    this.slots = vm.memory.regions.map((r) => ({
      slot: r.slot, first: Number(r.gpa) / 4096, pages: r.size / 4096, bitmap: new BigUint64Array(Math.ceil(r.size / 4096 / 64)),
    }));
  }

  watch(pages: readonly number[]): void {
    for (const page of pages) {
      if (this.watched.has(page)) continue;
      const s = this.slotOf(page);
      if (!s) continue; // not RAM: nothing can write it through a memslot
      this.watched.add(page);
      if (this.mode === 'manual') {
        // Clearing the page's bit write-protects it, so its next write is logged. (In 'plain' mode
        // every page is logged all the time and there is nothing to do.)
        const i = page - s.first;
        this.chunk[0] = 1n << BigInt(i % 64);
        this.vm.clearDirtyLog(s.slot, i - (i % 64), this.chunk);
      }
    }
  }

  collect(): number[] {
    const dirty: number[] = [];
    if (this.watched.size === 0) return dirty;
    for (const s of this.slots) {
      let any = false;
      for (const page of this.watched) if (page >= s.first && page < s.first + s.pages) any = true;
      if (!any) continue;
      this.vm.getDirtyLog(s.slot, s.bitmap);
      for (const page of this.watched) {
        const i = page - s.first;
        if (i < 0 || i >= s.pages) continue;
        if (((s.bitmap[i >> 6] >> BigInt(i & 63)) & 1n) !== 0n) {
          dirty.push(page);
          this.watched.delete(page);
        }
      }
    }
    return dirty;
  }

  private slotOf(page: number): VmDirtyLog['slots'][number] | undefined {
    return this.slots.find((s) => page >= s.first && page < s.first + s.pages);
  }
}

/** Options of {@link TranslationCache}. */
export interface TranslationCacheOptions {
  /** Sync before a lookup when this many ms have passed since the last sync (default 1; 0 = before every lookup). */
  maxAgeMs?: number;
  /** ...or when this many lookups were made since the last sync (default 10,000). */
  maxLookups?: number;
  /** Clock in ms (default `performance.now`); for tests. */
  now?: () => number;
}

/** Counters of a {@link TranslationCache} (since it was created). */
export interface TranslationCacheStats {
  /** Lookups answered from the cache. */
  hits: number;
  /** Lookups that walked (whether or not the result could be cached). */
  misses: number;
  /** Entries in the cache now. */
  entries: number;
  /** Guest-physical pages watched because some entry's walk read them. */
  watchedPages: number;
  syncs: number;
  /** Watched pages the dirty log reported written while entries depended on them. */
  dirtyPages: number;
  /** Entries re-checked after such a write and kept: the paging entries they use did not change. */
  revalidated: number;
  /** Entries dropped: their paging entries changed, or invalidateAll/setCr3 cleared them. */
  invalidated: number;
}

/** One cached translation of a 4 KiB guest-virtual page. */
interface Entry {
  /** GPA, HVA of the page's first byte; PFN or -1. */
  gpa: number;
  hva: number;
  pfn: number;
  guestPageSize: number;
  guestLevel: number;
  hostPageSize: number;
  /** The paging entries the walk read, root first: (entry GPA, low word, high word) per level. */
  path: number[];
}

/** Accessed (bit 5) and Dirty (bit 6): the CPU sets them without changing any translation. */
const AD_BITS = 0x60;
const MAX_ATTEMPTS = 4;

/** Options of {@link TranslationCache.forVm}. */
export interface VmTranslationCacheOptions extends TranslationCacheOptions {
  /** vCPU whose CR3, CR4 and EFER are used (default 0). */
  cpu?: number;
  /** Paging format (default: from the vCPU's CR4/EFER, see `x86FormatOf`). */
  format?: X86Format;
  /** Dirty-log mode to ask for (default `'manual'`). */
  dirtyLog?: DirtyLogMode;
}

/** Full translations per guest-virtual 4 KiB page, kept exact through the dirty log; see the module comment. */
export class TranslationCache implements PartsTranslator {
  private readonly entries = new Map<number, Entry>();
  /** Guest-physical page → keys of the entries whose walk read it. */
  private readonly dependents = new Map<number, Set<number>>();
  /** Pages the source watches for us and has not reported since. */
  private readonly watched = new Set<number>();
  private readonly words: Uint32Array;
  private readonly levels: number;
  private readonly addrHi: number;
  private readonly maxAgeMs: number;
  private readonly maxLookups: number;
  private readonly now: () => number;
  private lastSync: number;
  private sinceSync = 0;
  private readonly counts = { hits: 0, misses: 0, syncs: 0, dirtyPages: 0, revalidated: 0, invalidated: 0 };
  private owned?: Pagemap;

  constructor(
    readonly chain: FastChain,
    private readonly source: DirtyPageSource,
    options: TranslationCacheOptions = {},
  ) {
    const words = chain.reader.words;
    if (!words) throw new RangeError('guest RAM is not 4-byte aligned');
    this.words = words;
    this.levels = chain.format.levels;
    this.addrHi = hiAddrMask(physAddrBits(chain.format));
    this.maxAgeMs = options.maxAgeMs ?? 1;
    this.maxLookups = options.maxLookups ?? 10_000;
    this.now = options.now ?? (() => performance.now());
    this.lastSync = this.now();
  }

  /**
   * A cache for `vm`'s vCPU `opts.cpu` (CR3 and format read now): turns on the VM's dirty log and
   * opens its own {@link Pagemap} (released by {@link close}).
   */
  static async forVm(vm: Vm, opts: VmTranslationCacheOptions = {}): Promise<TranslationCache> {
    const { sregs } = await vm.vcpuState(opts.cpu ?? 0);
    const source = new VmDirtyLog(vm, opts.dirtyLog);
    const pagemap = new Pagemap();
    const cache = new TranslationCache(new FastChain(vm.memory, pagemap, opts.format ?? x86FormatOf(sregs), sregs.cr3), source, opts);
    cache.owned = pagemap;
    return cache;
  }

  /** Translates `gva` (see the module comment for how current the answer is); undefined when it does not translate. */
  translate(gva: bigint): FullTranslation | undefined {
    return translateGva(this, gva);
  }

  /** {@link translate} into `out`: false when `gva` does not translate. */
  translateInto(gva: bigint, out: ChainResult): boolean {
    return translateGvaInto(this, gva, out);
  }

  /** {@link translate} of the GVA with unsigned 32-bit halves `hi`:`lo`, into `out`, allocating nothing on a hit. */
  translateParts(hi: number, lo: number, out: ChainResult): boolean {
    // The clock is read on every lookup (~45 ns): counting alone could leave a result stale
    // indefinitely after an idle spell.
    if (++this.sinceSync >= this.maxLookups || this.now() - this.lastSync >= this.maxAgeMs) this.sync();
    const e = this.entries.get(hi * 1048576 + (lo >>> 12));
    if (e === undefined) return this.miss(hi, lo, out);
    this.counts.hits++;
    const off = lo & 0xfff;
    out.gpa = e.gpa + off;
    out.hva = e.hva + off;
    out.pfn = e.pfn;
    out.hpa = e.pfn < 0 ? -1 : e.pfn * 4096 + off;
    out.guestPageSize = e.guestPageSize;
    out.guestLevel = e.guestLevel;
    out.hostPageSize = e.hostPageSize;
    out.hostPresent = true;
    return true;
  }

  /**
   * Fetches the dirty log and re-checks the entries that depend on written pages (see the module
   * comment). Pages are watched again before they are re-read, so no write can fall between.
   */
  sync(): void {
    this.counts.syncs++;
    this.sinceSync = 0;
    this.lastSync = this.now();
    const dirty = this.source.collect();
    for (const page of dirty) this.watched.delete(page);
    this.recheck(dirty.filter((p) => this.dependents.has(p)));
  }

  /**
   * The VMM itself wrote guest memory in [gpa, gpa + length) (KVM does not log such writes):
   * entries whose walk read paging entries there are re-checked now.
   */
  invalidateRange(gpa: bigint, length: number): void {
    const first = Number(gpa >> 12n);
    const last = Number((gpa + BigInt(Math.max(length, 1)) - 1n) >> 12n);
    const pages: number[] = [];
    for (let p = first; p <= last; p++) if (this.dependents.has(p)) pages.push(p);
    this.recheck(pages);
  }

  /** Switches to another address space; a changed CR3 empties the cache. */
  setCr3(cr3: bigint): void {
    const before = this.chain.rootGpa;
    this.chain.setCr3(cr3);
    if (this.chain.rootGpa !== before) this.invalidateAll();
  }

  /** Drops every entry, e.g. to re-read host pages that may have moved. Watched pages stay watched. */
  invalidateAll(): void {
    this.counts.invalidated += this.entries.size;
    this.entries.clear();
    this.dependents.clear();
  }

  /** A snapshot of the counters. */
  stats(): TranslationCacheStats {
    return { ...this.counts, entries: this.entries.size, watchedPages: this.watched.size };
  }

  /** Releases the Pagemap {@link forVm} opened (a cache built with the constructor owns nothing). */
  close(): void {
    this.owned?.close();
    this.owned = undefined;
  }

  /** Walks, and caches the result when it can be kept exact. */
  private miss(hi: number, lo: number, out: ChainResult): boolean {
    this.counts.misses++;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      if (!this.chain.translateParts(hi, lo, out)) return false;
      // A page the host has not populated gets one later without any guest write: ask again then.
      if (!out.hostPresent) return true;
      const path = this.pathOf(hi, lo, out);
      if (path === undefined) continue; // the tables changed under the walk
      const fresh: number[] = [];
      for (let i = 0; i < path.length; i += 3) {
        const page = Math.floor(path[i] / 4096);
        if (!this.watched.has(page)) fresh.push(page);
      }
      if (fresh.length > 0) {
        this.source.watch(fresh);
        for (const page of fresh) this.watched.add(page);
        // The walk read these pages before they were watched: a write in between would be lost.
        if (!this.pathHolds(path)) continue;
      }
      this.insert(hi * 1048576 + (lo >>> 12), out, lo, path);
      return true;
    }
    return true; // the tables keep changing: answer without caching
  }

  /**
   * The paging entries the walk that produced `out` read, re-read from guest RAM; undefined if
   * they no longer lead to `out.gpa` (the guest changed them in between) or lie outside RAM.
   */
  private pathOf(hi: number, lo: number, out: ChainResult): number[] | undefined {
    const w = this.words;
    const path: number[] = [];
    let table = this.chain.rootGpa;
    for (let level = this.levels; ; level--) {
      const addr = table + indexAt(hi, lo, level) * 8;
      const i = addr / 4;
      if (i + 1 >= w.length) return undefined;
      const elo = w[i];
      const ehi = w[i + 1];
      path.push(addr, elo, ehi);
      const size = level === 1 ? 4096 : level === 2 ? 0x200000 : 0x40000000;
      const frame = (ehi & this.addrHi) * 4294967296 + ((elo & 0xfffff000) >>> 0);
      if (level <= out.guestLevel) return frame - (frame % size) + (lo & (size - 1)) === out.gpa ? path : undefined;
      table = frame;
    }
  }

  /** Whether guest RAM still holds the entries of `path`, A/D bits aside. */
  private pathHolds(path: number[]): boolean {
    const w = this.words;
    for (let k = 0; k < path.length; k += 3) {
      const i = path[k] / 4;
      if (((w[i] ^ path[k + 1]) & ~AD_BITS) !== 0 || w[i + 1] !== path[k + 2]) return false;
    }
    return true;
  }

  private insert(key: number, out: ChainResult, lo: number, path: number[]): void {
    const off = lo & 0xfff;
    this.drop(key); // a re-walk replaces the old entry and its dependencies
    this.entries.set(key, {
      gpa: out.gpa - off, hva: out.hva - off, pfn: out.pfn, guestPageSize: out.guestPageSize, guestLevel: out.guestLevel,
      hostPageSize: out.hostPageSize, path,
    });
    for (let i = 0; i < path.length; i += 3) {
      const page = Math.floor(path[i] / 4096);
      let keys = this.dependents.get(page);
      if (keys === undefined) this.dependents.set(page, (keys = new Set()));
      keys.add(key);
    }
  }

  private drop(key: number): boolean {
    const e = this.entries.get(key);
    if (e === undefined) return false;
    this.entries.delete(key);
    for (let i = 0; i < e.path.length; i += 3) {
      const page = Math.floor(e.path[i] / 4096);
      const keys = this.dependents.get(page);
      keys?.delete(key);
      if (keys?.size === 0) this.dependents.delete(page);
    }
    return true;
  }

  /** Re-checks the entries depending on `pages` (written): keeps the unchanged, drops the rest. */
  private recheck(pages: number[]): void {
    if (pages.length === 0) return;
    this.counts.dirtyPages += pages.length;
    // Watch again first, then read: a write after this point shows up in the next sync.
    const rewatch = pages.filter((p) => !this.watched.has(p));
    if (rewatch.length > 0) {
      this.source.watch(rewatch);
      for (const p of rewatch) this.watched.add(p);
    }
    for (const page of pages) {
      const keys = this.dependents.get(page);
      if (keys === undefined) continue;
      for (const key of [...keys]) {
        const e = this.entries.get(key);
        if (e !== undefined && this.pathHolds(e.path)) this.counts.revalidated++;
        else if (this.drop(key)) this.counts.invalidated++;
      }
    }
  }
}
