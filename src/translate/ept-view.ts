/**
 * An EPT view of a VM: a MODEL, built in userspace, of the Intel extended page tables that would
 * map this VM's guest-physical addresses to the host-physical pages backing them right now.
 *
 * It is not KVM's EPT. KVM keeps its EPT (or, without EPT, its shadow page tables) in kernel
 * memory that userspace cannot read, fills it lazily on EPT violations, and zaps and rebuilds it
 * as the host moves pages. On PVM hosts (the project's development machines) KVM uses shadow
 * paging and there is no EPT at all. What this module builds is what an EPT consistent with the
 * host's page tables looks like, from the two sources userspace does have: the memslots
 * (GPA → HVA) and `/proc/self/pagemap` (HVA → PFN), laid out with {@link PageTableBuilder} in
 * the Intel EPT format and walked by the same engine as guest page tables.
 *
 * Mapping rules, chosen to mirror KVM's (arch/x86/kvm/mmu: a large SPTE only where the host maps
 * the page at least as large):
 * - 4-level EPT, entries R|W|X, leaves with memory type WB (6) and IPAT (as KVM does for RAM
 *   when no non-coherent DMA device is assigned); table entries R|W|X.
 * - a 2 MiB leaf where the host maps the block with one 2 MiB page (a PMD-mapped THP or a
 *   hugetlb page), the GPA and HVA are 2 MiB-aligned, the block lies inside one memslot, and all
 *   512 PFNs are present and contiguous from a 512-aligned PFN (so the leaf is exact);
 *   otherwise 4 KiB leaves;
 * - pages the host has not populated (never touched, swapped out) are left unmapped: a walk of
 *   their GPA ends in an EPT violation, which is where KVM would fault the page in;
 * - nothing is mapped when the PFNs are hidden (reading them needs CAP_SYS_ADMIN).
 *
 * Table addresses in the view are positions in the model's own memory, not host-physical
 * addresses. The view is a snapshot: {@link EptView.refresh} rebuilds it after the guest touches
 * more memory or the host moves pages.
 */
import { readFileSync } from 'node:fs';
import type { GuestMemory } from '../memory/guest-memory.js';
import { EPT, EPT_MEMORY_TYPE, eptMemoryType, makeEptp } from './ept.js';
import { PAGE_2M, PAGE_4K, type EptFormat } from './format.js';
import { PAGEMAP, applyBacking, emptyHostPageInfo, pagemapPfn, type HostPageInfo, type Pagemap } from './host-pages.js';
import { walk, type Access, type WalkFault, type WalkOk } from './page-walk.js';
import { PageTableBuilder } from './table-builder.js';

/** Options of {@link EptView.build}. */
export interface EptViewOptions {
  /** Called as pages are scanned (`done` of `total` 4 KiB guest pages), for progress output. */
  progress?: (done: number, total: number) => void;
  /** MAXPHYADDR of the host (default: `address sizes` in /proc/cpuinfo, else 46). */
  maxPhysAddr?: number;
}

/** Counts describing an {@link EptView}. */
export interface EptViewStats {
  /** 4 KiB EPT paging structures, the root (EPT PML4) included. */
  tables: number;
  /** 4 KiB leaves (EPT PTEs). */
  leaves4k: number;
  /** 2 MiB leaves (EPT PDEs with bit 7). */
  leaves2m: number;
  /** Guest bytes the view maps. */
  mappedBytes: number;
  /** Guest RAM pages (4 KiB) in the memslots. */
  guestPages: number;
  /** Guest pages not present on the host (never touched, or swapped out), hence unmapped. */
  notPresentPages: number;
  /** Of those, pages in swap. */
  swappedPages: number;
  /** Present pages whose PFN the kernel hid (no CAP_SYS_ADMIN), hence unmapped. */
  hiddenPages: number;
  /** When the view was built (epoch ms). */
  builtAt: number;
  /** How long building took, in ms. */
  buildMs: number;
}

/** Pages scanned per pagemap read (64 KiB of entries). */
const CHUNK_PAGES = 8192;
const PAGES_2M = PAGE_2M / PAGE_4K;
const LEAF_FLAGS = EPT.R | EPT.W | EPT.X | eptMemoryType(EPT_MEMORY_TYPE.WB) | EPT.IPAT;

let cpuinfoBits: number | undefined;

/** The host's physical address width from /proc/cpuinfo (`address sizes : 46 bits physical`), else 46. */
export function hostPhysAddrBits(): number {
  if (cpuinfoBits !== undefined) return cpuinfoBits;
  try {
    const m = /address sizes\s*:\s*(\d+) bits physical/.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    const bits = m ? Number(m[1]) : 46;
    cpuinfoBits = bits >= 32 && bits <= 52 ? bits : 46;
  } catch {
    cpuinfoBits = 46;
  }
  return cpuinfoBits;
}

/**
 * A userspace model of the EPT for one VM's RAM (see the module comment: it is not KVM's EPT,
 * which userspace cannot read, and PVM hosts have no EPT at all).
 */
export class EptView {
  private builder!: PageTableBuilder;
  private pointer!: bigint;
  /** The format walks use: 4-level Intel EPT with the host's MAXPHYADDR. */
  readonly format: EptFormat;
  private counts!: EptViewStats;
  private readonly scratch: HostPageInfo = emptyHostPageInfo();

  private constructor(
    readonly memory: GuestMemory,
    readonly pagemap: Pagemap,
    private readonly options: EptViewOptions,
  ) {
    this.format = { kind: 'ept', levels: 4, maxPhysAddr: options.maxPhysAddr ?? hostPhysAddrBits() };
  }

  /** The EPT paging structures, readable as a `PhysReader` (table addresses are the model's own, not HPAs). */
  get tables(): PageTableBuilder {
    return this.builder;
  }

  /** EPT pointer: the root table, memory type WB, 4-level walk, accessed/dirty flags off. */
  get eptp(): bigint {
    return this.pointer;
  }

  /**
   * Builds the view of `memory` from the host's current page tables (read through `pagemap`).
   * Costs one pagemap read per 8192 pages plus a few system calls per candidate 2 MiB block.
   */
  static build(memory: GuestMemory, pagemap: Pagemap, options: EptViewOptions = {}): EptView {
    const view = new EptView(memory, pagemap, options);
    view.refresh();
    return view;
  }

  /** Rebuilds the view from the host's page tables as they are now (reporting to the same `progress`). */
  refresh(): void {
    const started = performance.now();
    const tables = new PageTableBuilder(this.format, { capacity: 8 });
    const c: EptViewStats = {
      tables: 0, leaves4k: 0, leaves2m: 0, mappedBytes: 0, guestPages: 0, notPresentPages: 0, swappedPages: 0, hiddenPages: 0,
      builtAt: Date.now(), buildMs: 0,
    };
    const total = this.memory.regions.reduce((n, r) => n + Math.ceil(r.size / PAGE_4K), 0);
    let done = 0;
    for (const region of this.memory.regions) {
      const pages = Math.ceil(region.size / PAGE_4K);
      c.guestPages += pages;
      for (let first = 0; first < pages; first += CHUNK_PAGES) {
        // Chunks are multiples of 512 pages: with a 2 MiB-aligned region GPA no 2 MiB block straddles
        // two chunks (one that did would just get 4 KiB leaves).
        const count = Math.min(CHUNK_PAGES, pages - first);
        const entries = this.pagemap.lookupRange(region.hva + BigInt(first * PAGE_4K), count);
        for (let i = 0; i < count; ) {
          const page = first + i;
          const gpa = region.gpa + BigInt(page * PAGE_4K);
          if (i + PAGES_2M <= count && this.largeLeaf(entries, i, gpa, region.hva + BigInt(page * PAGE_4K))) {
            tables.map(gpa, pagemapPfn(entries[i])! << 12n, PAGE_2M, LEAF_FLAGS);
            c.leaves2m++;
            c.mappedBytes += PAGE_2M;
            i += PAGES_2M;
            continue;
          }
          const e = entries[i];
          const pfn = pagemapPfn(e);
          if (pfn === undefined) {
            c.notPresentPages++;
            if ((e & PAGEMAP.SWAPPED) !== 0n) c.swappedPages++;
          } else if (pfn === 0n) {
            c.hiddenPages++;
          } else {
            tables.map(gpa, pfn << 12n, PAGE_4K, LEAF_FLAGS);
            c.leaves4k++;
            c.mappedBytes += PAGE_4K;
          }
          i++;
        }
        done += count;
        this.options.progress?.(done, total);
      }
    }
    c.tables = tables.tableCount;
    c.buildMs = performance.now() - started;
    this.builder = tables;
    this.pointer = makeEptp(tables.root, 4, EPT_MEMORY_TYPE.WB);
    this.counts = c;
  }

  /**
   * Whether the 512 pages from `entries[i]` (GPA `gpa`, HVA `hva`) get one 2 MiB leaf: aligned GPA
   * and HVA, 512 present contiguous PFNs from a 512-aligned one, and a host mapping of 2 MiB.
   */
  private largeLeaf(entries: BigUint64Array, i: number, gpa: bigint, hva: bigint): boolean {
    if (gpa % BigInt(PAGE_2M) !== 0n || hva % BigInt(PAGE_2M) !== 0n) return false;
    const head = pagemapPfn(entries[i]);
    if (head === undefined || head === 0n || head % BigInt(PAGES_2M) !== 0n) return false;
    for (let k = 1; k < PAGES_2M; k++) {
      if (pagemapPfn(entries[i + k]) !== head + BigInt(k)) return false;
    }
    return applyBacking(this.memory, this.pagemap.lookupInto(hva, this.scratch)).pageSize >= PAGE_2M;
  }

  /** Walks the view for `gpa` (optionally checking `access`): the HPA, or the EPT violation. */
  walk(gpa: bigint, access?: Access): WalkOk | WalkFault {
    return walk(this.builder, this.pointer, gpa, this.format, access);
  }

  /** Counts of tables, leaves by size and unmapped pages, from the last build. */
  stats(): EptViewStats {
    return { ...this.counts };
  }
}
