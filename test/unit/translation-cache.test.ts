/**
 * FastChain and TranslationCache without KVM: page tables built with PageTableBuilder and copied
 * into real (memfd) guest RAM, real pagemap lookups, and a fake dirty-page source that reports the
 * "guest" writes the test makes, so invalidation can be checked entry by entry.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { emptyChainResult, FastChain, x86FormatOf } from '../../src/translate/fast-chain.js';
import type { X86Format } from '../../src/translate/format.js';
import { Pagemap, translateGpa } from '../../src/translate/host-pages.js';
import { walk } from '../../src/translate/page-walk.js';
import { ByteMemory } from '../../src/translate/phys-memory.js';
import { PageTableBuilder } from '../../src/translate/table-builder.js';
import { TranslationCache, VmDirtyLog, type DirtyPageSource } from '../../src/translate/translation-cache.js';
import type { DirtyLogMode } from '../../src/vmm/vm.js';

const MIB = 2 ** 20;
const FORMAT: X86Format = { kind: 'x86', levels: 4, nxe: true, pke: false };
const TABLES = 0x10000n;

// Guest-virtual pages and where they map.
const A = 0x400000n; // 4 KiB, page table T1
const B = 0x401000n; // 4 KiB, page table T1 too
const C = 0x600000n; // 4 KiB, another page table (T2), same page directory
const D = 0x40000000n; // 2 MiB, another page directory
const E = 0xffff800000001000n; // 4 KiB in the upper half: another PML4 entry
const MAP: [bigint, bigint, 4096 | 0x200000][] = [
  [A, 0x300000n, 4096], [B, 0x301000n, 4096], [C, 0x302000n, 4096], [D, 0x400000n, 0x200000], [E, 0x303000n, 4096],
];
const ELSEWHERE = 0x304000n;

/** Reports written pages the way KVM's log does for watched pages; `write` is a guest write. */
class FakeDirtyLog implements DirtyPageSource {
  readonly watched = new Set<number>();
  readonly written = new Set<number>();
  watchCalls: number[][] = [];
  /** Runs inside watch(): lets a test write "between" the cache's walk and its watch. */
  onWatch?: () => void;
  constructor(private readonly mem: GuestMemory) {}
  watch(pages: readonly number[]): void {
    this.watchCalls.push([...pages]);
    for (const p of pages) {
      this.watched.add(p);
      this.written.delete(p);
    }
    this.onWatch?.();
  }
  collect(): number[] {
    const out = [...this.written].filter((p) => this.watched.has(p));
    for (const p of out) {
      this.watched.delete(p);
      this.written.delete(p);
    }
    return out;
  }
  write(gpa: bigint, value: bigint): void {
    this.mem.writeU64(gpa, value);
    this.written.add(Number(gpa >> 12n));
  }
}

let mem: GuestMemory;
let pagemap: Pagemap;
let tables: PageTableBuilder;
let log: FakeDirtyLog;
let cache: TranslationCache;
let clock = 0;

before(() => {
  mem = GuestMemory.create(8 * MIB);
  // Every page present, so each translation reaches a host page and may be cached.
  for (let off = 0; off < mem.size; off += 4096) mem.writeU8(off, 0);
  pagemap = new Pagemap();
});

after(() => {
  pagemap.close();
  mem.close();
});

beforeEach(() => {
  tables = new PageTableBuilder(FORMAT, { base: TABLES });
  for (const [va, pa, size] of MAP) tables.map(va, pa, size);
  mem.fill(TABLES, 0x10000);
  mem.write(TABLES, tables.image());
  log = new FakeDirtyLog(mem);
  clock = 0;
  cache = new TranslationCache(new FastChain(mem, pagemap, FORMAT, tables.root), log, { maxAgeMs: 1e9, maxLookups: 1e9, now: () => clock });
});

/** The GPA of `va` by the reference walker over guest RAM as it is now. */
function refGpa(va: bigint): bigint | undefined {
  const r = walk(new ByteMemory(mem.bytes), tables.root, va, FORMAT);
  return r.ok ? r.address : undefined;
}

/** Physical address of the entry translating `va` at `level` (1 = PTE). */
function entry(va: bigint, level: number): bigint {
  const a = tables.entryAddress(va, level);
  assert.ok(a !== undefined);
  return a;
}

const gpaOf = (va: bigint) => cache.translate(va)?.gpa;

test('FastChain: GVA → GPA → HVA → HPA agrees with the reference walk and pagemap, for 4 KiB and 2 MiB pages', () => {
  const chain = new FastChain(mem, pagemap, FORMAT, tables.root);
  for (const [va, pa, size] of MAP) {
    for (const off of [0n, 0x123n, BigInt(size) - 8n]) {
      const t = chain.translate(va + off);
      assert.ok(t, `0x${(va + off).toString(16)}`);
      assert.equal(t.gpa, pa + off);
      assert.equal(refGpa(va + off), pa + off);
      assert.equal(t.guestPageSize, size);
      const ref = translateGpa(mem, pagemap, pa + off);
      assert.equal(t.hva, ref.hva);
      assert.equal(t.hva, mem.regions[0].hva + pa + off);
      assert.equal(t.hostPresent, true);
      assert.equal(t.hostPageSize, ref.host.pageSize);
      assert.equal(t.pfn, ref.host.pfn);
      assert.equal(t.hpa, ref.host.hpa);
    }
  }
  assert.equal(chain.translate(0x800000n), undefined, 'unmapped');
  assert.equal(chain.translate(0x0000800000000000n), undefined, 'non-canonical');
  // A mapping to a GPA outside RAM translates in the guest but has no memslot.
  tables.map(0x402000n, 0x10000000n);
  mem.write(TABLES, tables.image());
  assert.equal(chain.translate(0x402000n), undefined, 'GPA outside RAM');
  const out = emptyChainResult();
  assert.equal(chain.translateParts(0, 0x400abc, out), true);
  assert.equal(out.gpa, 0x300abc);
  assert.equal(out.guestLevel, 1);
});

test('x86FormatOf reads LA57 and NXE', () => {
  assert.deepEqual(x86FormatOf({ cr4: 0x620n, efer: 0x500n }), { kind: 'x86', levels: 4, nxe: false, pke: false, maxPhysAddr: undefined, gbPages: false });
  const f = x86FormatOf({ cr4: 0x620n | (1n << 12n), efer: 0xd00n }, { maxPhysAddr: 48, gbPages: true });
  assert.equal(f.levels, 5);
  assert.equal(f.nxe, true);
  assert.equal(f.maxPhysAddr, 48);
  assert.equal(f.gbPages, true);
});

test('the second lookup of a page is a hit, with the offset applied; every table page the walk read is watched', () => {
  assert.equal(gpaOf(A + 0x10n), 0x300010n);
  assert.equal(gpaOf(A + 0xff8n), 0x300ff8n);
  const t = cache.translate(A + 0x20n)!;
  assert.equal(t.hpa, translateGpa(mem, pagemap, 0x300020n).host.hpa);
  const s = cache.stats();
  assert.equal(s.misses, 1);
  assert.equal(s.hits, 2);
  assert.equal(s.entries, 1);
  const pages = [entry(A, 4), entry(A, 3), entry(A, 2), entry(A, 1)].map((a) => Number(a >> 12n));
  assert.deepEqual([...log.watched].sort(), [...pages].sort());
  assert.equal(s.watchedPages, 4);
  // A 2 MiB page: one entry per 4 KiB piece, walks of three levels.
  assert.equal(gpaOf(D + 0x1234n), 0x401234n);
  assert.equal(gpaOf(D + 0x1ff000n), 0x5ff000n);
  assert.equal(cache.stats().entries, 3);
  assert.equal(cache.translate(D + 0x1ff008n)!.guestPageSize, 0x200000);
  // Upper-half addresses have their own keys.
  assert.equal(gpaOf(E + 8n), 0x303008n);
  assert.equal(gpaOf(E + 8n), 0x303008n);
  assert.equal(cache.stats().hits, 4);
  assert.equal(cache.stats().entries, 4);
});

test('a PTE write drops exactly that entry; siblings in the same table are re-checked and kept, others are not touched', () => {
  for (const va of [A, B, C, D, E]) gpaOf(va);
  assert.equal(cache.stats().entries, 5);
  log.write(entry(A, 1), ELSEWHERE | 3n);
  assert.equal(gpaOf(A + 4n), 0x300004n, 'stale until the next sync: results are exact as of the last sync');
  cache.sync();
  const s = cache.stats();
  assert.equal(s.dirtyPages, 1);
  assert.equal(s.invalidated, 1, 'A');
  assert.equal(s.revalidated, 1, 'B shares the page table and is checked, C/D/E are not');
  assert.equal(s.entries, 4);
  const misses = s.misses;
  assert.equal(gpaOf(A + 4n), ELSEWHERE + 4n);
  assert.equal(refGpa(A + 4n), ELSEWHERE + 4n);
  for (const [va, pa] of MAP.slice(1)) assert.equal(gpaOf(va), pa);
  assert.equal(cache.stats().misses, misses + 1, 'only A was walked again');
});

test('a page-directory write drops every entry below it and nothing else', () => {
  for (const va of [A, B, C, D, E]) gpaOf(va);
  // Point A's PDE at C's page table: A and B now translate through T2 (to C's frame for index 0 and nothing for 1).
  const pde = entry(A, 2);
  const t2 = mem.readU64(entry(C, 2));
  log.write(pde, t2);
  cache.sync();
  const s = cache.stats();
  assert.equal(s.invalidated, 2, 'A and B');
  assert.equal(s.revalidated, 1, 'C shares the page directory and is unchanged');
  assert.equal(gpaOf(A), 0x302000n);
  assert.equal(gpaOf(B), undefined);
  assert.equal(gpaOf(C), 0x302000n);
  assert.equal(gpaOf(D), 0x400000n);
  assert.equal(gpaOf(E), 0x303000n);
});

test('Accessed/Dirty bit updates do not drop entries; a later real change does', () => {
  for (const va of [A, B]) gpaOf(va);
  const pte = entry(A, 1);
  log.write(pte, mem.readU64(pte) | 0x60n);
  log.write(entry(A, 4), mem.readU64(entry(A, 4)) | 0x20n);
  cache.sync();
  let s = cache.stats();
  assert.equal(s.invalidated, 0);
  assert.equal(s.revalidated, 4, 'A and B, each checked once per written page');
  assert.equal(s.entries, 2);
  // Both pages were watched again before the re-check, so the next write is seen.
  log.write(pte, ELSEWHERE | 0x63n);
  cache.sync();
  s = cache.stats();
  assert.equal(s.invalidated, 1);
  assert.equal(gpaOf(A), ELSEWHERE);
});

test('writes to pages no cached walk read change nothing', () => {
  gpaOf(A);
  log.write(0x200000n, 1n);
  log.write(entry(D, 2), 0n); // a table page nothing cached depends on (D was never looked up)
  cache.sync();
  const s = cache.stats();
  assert.equal(s.dirtyPages, 0);
  assert.equal(s.invalidated + s.revalidated, 0);
  assert.equal(gpaOf(A), 0x300000n);
  assert.equal(cache.stats().hits, 1);
});

test('a write between the walk and the watch is not lost: the walk is checked again once the pages are watched', () => {
  const pte = entry(A, 1);
  log.onWatch = () => {
    log.onWatch = undefined;
    mem.writeU64(pte, ELSEWHERE | 3n); // lands before the watch starts: the log will never report it
  };
  assert.equal(gpaOf(A), ELSEWHERE, 'the first answer already reflects the write');
  assert.equal(gpaOf(A), ELSEWHERE);
  cache.sync();
  assert.equal(gpaOf(A), ELSEWHERE);
});

test('translate() syncs by itself after maxAgeMs or maxLookups', () => {
  const c = new TranslationCache(new FastChain(mem, pagemap, FORMAT, tables.root), log, { maxAgeMs: 10, maxLookups: 5, now: () => clock });
  const gpa = (va: bigint) => c.translate(va)?.gpa;
  assert.equal(gpa(A), 0x300000n);
  log.write(entry(A, 1), ELSEWHERE | 3n);
  clock = 9;
  assert.equal(gpa(A), 0x300000n, 'younger than maxAgeMs');
  clock = 10;
  assert.equal(gpa(A), ELSEWHERE, 'synced: 10 ms passed');
  const syncs = c.stats().syncs;
  log.write(entry(A, 1), 0x300000n | 3n);
  assert.equal(gpa(A), ELSEWHERE);
  assert.equal(gpa(A), ELSEWHERE);
  assert.equal(gpa(A), ELSEWHERE);
  assert.equal(gpa(A), ELSEWHERE);
  assert.equal(gpa(A), 0x300000n, 'the fifth lookup since the last sync syncs');
  assert.equal(c.stats().syncs, syncs + 1);
  const every = new TranslationCache(new FastChain(mem, pagemap, FORMAT, tables.root), log, { maxAgeMs: 0, now: () => clock });
  assert.equal(every.translate(B)?.gpa, 0x301000n);
  log.write(entry(B, 1), ELSEWHERE | 3n);
  assert.equal(every.translate(B)?.gpa, ELSEWHERE, 'maxAgeMs 0: every lookup syncs');
});

test('setCr3 to another root empties the cache; the same root keeps it', () => {
  gpaOf(A);
  cache.setCr3(tables.root | 0x18n); // flag bits only
  assert.equal(cache.stats().entries, 1);
  const other = new PageTableBuilder(FORMAT, { base: 0x20000n });
  other.map(A, ELSEWHERE);
  mem.write(0x20000n, other.image());
  cache.setCr3(other.root);
  assert.equal(cache.stats().entries, 0);
  assert.equal(cache.stats().invalidated, 1);
  assert.equal(gpaOf(A), ELSEWHERE);
  cache.setCr3(tables.root);
  assert.equal(gpaOf(A), 0x300000n);
});

test('invalidateRange re-checks entries after the VMM writes guest tables; invalidateAll drops everything', () => {
  gpaOf(A);
  gpaOf(C);
  mem.writeU64(entry(A, 1), ELSEWHERE | 3n); // a host-side write: KVM would not log it
  cache.sync();
  assert.equal(gpaOf(A), 0x300000n, 'the dirty log did not see it');
  cache.invalidateRange(entry(A, 1), 8);
  assert.equal(gpaOf(A), ELSEWHERE);
  assert.equal(cache.stats().invalidated, 1);
  cache.invalidateAll();
  assert.equal(cache.stats().entries, 0);
  assert.equal(gpaOf(C), 0x302000n);
});

test('failed translations and pages the host has not populated are not cached', () => {
  assert.equal(gpaOf(0x800000n), undefined);
  assert.equal(gpaOf(0x800000n), undefined);
  assert.equal(cache.stats().misses, 2);
  assert.equal(cache.stats().entries, 0);
  const fresh = GuestMemory.create(4 * MIB);
  try {
    fresh.write(TABLES, tables.image()); // only the table pages are present
    const c = new TranslationCache(new FastChain(fresh, pagemap, FORMAT, tables.root), new FakeDirtyLog(fresh), { now: () => 0 });
    const t = c.translate(A);
    assert.equal(t?.gpa, 0x300000n);
    assert.equal(t?.hostPresent, false);
    assert.equal(t?.hpa, undefined);
    fresh.writeU8(0x300000, 1);
    assert.equal(c.translate(A)?.hostPresent, true, 'asked again, not served from the cache');
    assert.equal(c.translate(A)?.hostPresent, true);
    assert.deepEqual([c.stats().misses, c.stats().hits], [2, 1]);
  } finally {
    fresh.close();
  }
});

/** A stand-in for the Vm's dirty-log methods, recording what VmDirtyLog asks of KVM. */
function fakeVm(mode: DirtyLogMode) {
  const calls: string[] = [];
  const bitmap = new BigUint64Array(Math.ceil(mem.size / 4096 / 64));
  return {
    calls,
    bitmap,
    vm: {
      memory: mem,
      enableDirtyLog: () => mode,
      getDirtyLog: (slot: number, out: BigUint64Array) => {
        calls.push(`get ${slot}`);
        out.set(bitmap);
      },
      clearDirtyLog: (slot: number, first: number, bits: BigUint64Array) => {
        calls.push(`clear ${slot} ${first} 0x${bits[0].toString(16)}`);
      },
    },
  };
}

test('VmDirtyLog (manual mode) write-protects exactly the watched pages and reports only them', () => {
  const f = fakeVm('manual');
  const d = new VmDirtyLog(f.vm);
  assert.deepEqual(d.collect(), [], 'nothing watched: no ioctl');
  assert.equal(f.calls.length, 0);
  d.watch([5, 70, 70]);
  d.watch([5]);
  assert.deepEqual(f.calls, ['clear 0 0 0x20', 'clear 0 64 0x40']);
  f.bitmap.fill(~0n); // INITIALLY_SET: unwatched pages read as dirty and must be ignored
  f.bitmap[0] = 0n;
  f.bitmap[1] = 0x40n;
  assert.deepEqual(d.collect(), [70]);
  assert.deepEqual(d.collect(), [], 'a reported page is no longer watched');
  d.watch([70]);
  assert.equal(f.calls.at(-1), 'clear 0 64 0x40');
  d.watch([mem.size / 4096 + 3]); // outside RAM: ignored
  assert.equal(f.calls.filter((c) => c.startsWith('clear')).length, 3);
});

test('VmDirtyLog (plain mode) needs no clearing', () => {
  const f = fakeVm('plain');
  const d = new VmDirtyLog(f.vm, 'plain');
  assert.equal(d.mode, 'plain');
  d.watch([1, 2]);
  f.bitmap[0] = 0b100n;
  assert.deepEqual(d.collect(), [2]);
  assert.deepEqual(f.calls, ['get 0']);
});
