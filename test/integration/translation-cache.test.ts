/**
 * TranslationCache on a real VM: the guest (test/fixtures/guests/remap-pte.c) rewrites one of its
 * own PTEs between two hypercalls, and the host's cache must give the new GPA for that page, from
 * KVM's dirty log alone, while keeping its other entries.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FastChain, x86FormatOf, type FullTranslation } from '../../src/translate/fast-chain.js';
import { Pagemap, translateGpa } from '../../src/translate/host-pages.js';
import { TranslationCache, type TranslationCacheStats } from '../../src/translate/translation-cache.js';
import type { DirtyLogMode } from '../../src/vmm/vm.js';
import { bootGuest, requireKvm } from '../helpers/kvm.js';

const X = 0x1f0000n;
const NEW = 0x1f1000n;
const Y1 = 0x1e0000n; // 4 KiB page in the same page table as X (GPA 0x7000)
const Y2 = 0x400000n; // the guest image, in a 2 MiB page (page directory at 0x8000)

interface Seen {
  before: (FullTranslation | undefined)[];
  after: (FullTranslation | undefined)[];
  statsBefore?: TranslationCacheStats;
  statsSynced?: TranslationCacheStats;
  statsAfter?: TranslationCacheStats;
  kvmAfter?: bigint;
  controlAfter?: bigint;
  expectedHpa?: bigint;
  mode?: DirtyLogMode;
}

for (const mode of ['manual', 'plain'] as const) {
  test(`translation cache (${mode} dirty log): a guest PTE rewrite reaches the cache, other entries stay`, async (t) => {
    if (!requireKvm(t)) return;
    const seen: Seen = { before: [], after: [] };
    let cache: TranslationCache | undefined;
    const pagemap = new Pagemap();
    try {
      const r = await bootGuest('fixtures', 'remap-pte', {}, {}, {
        setup: async (vm) => {
          // No automatic syncs: the handlers sync at the hypercall, where the guest's change is complete.
          cache = await TranslationCache.forVm(vm, { maxAgeMs: Infinity, maxLookups: Infinity, dirtyLog: mode });
          const c = cache;
          // A control without any dirty log: it must keep answering the old mapping.
          const { sregs } = await vm.vcpuState(0);
          const control = new TranslationCache(new FastChain(vm.memory, pagemap, x86FormatOf(sregs), sregs.cr3), { watch: () => {}, collect: () => [] });
          vm.handleHypercall(300, (call) => {
            c.sync();
            seen.before = [c.translate(call.a0), c.translate(Y1), c.translate(Y2)];
            control.translate(call.a0);
            seen.statsBefore = c.stats();
            return seen.before[0]?.gpa ?? -1n;
          });
          vm.handleHypercall(301, async (call) => {
            c.sync();
            seen.statsSynced = c.stats();
            seen.after = [c.translate(call.a0), c.translate(Y1), c.translate(Y2)];
            seen.statsAfter = c.stats();
            seen.controlAfter = control.translate(call.a0)?.gpa;
            seen.kvmAfter = (await vm.kvmTranslate(0, call.a0)).gpa;
            seen.expectedHpa = translateGpa(vm.memory, pagemap, NEW).host.hpa;
            return seen.after[0]?.gpa ?? -1n;
          });
        },
      });
      assert.match(r.console, /remap-pte: 0 failures/, r.console);
      assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });

      const [x0, y1, y2] = seen.before;
      assert.equal(x0?.gpa, X);
      assert.equal(y1?.gpa, Y1);
      assert.equal(y2?.gpa, Y2);
      assert.equal(y1?.guestPageSize, 4096);
      assert.equal(y2?.guestPageSize, 0x200000);
      assert.deepEqual([seen.statsBefore?.misses, seen.statsBefore?.entries], [3, 3]);
      assert.equal(seen.statsBefore?.watchedPages, 4, 'the PML4, PDPT, page directory and low page table');

      const [x1, y1b, y2b] = seen.after;
      assert.equal(x1?.gpa, NEW, 'the cache saw the PTE write');
      assert.equal(seen.kvmAfter, NEW, 'KVM_TRANSLATE agrees');
      assert.equal(x1?.hpa, seen.expectedHpa);
      assert.equal(seen.controlAfter, X, 'without the dirty log the old mapping would still be served');
      assert.deepEqual(y1b, y1);
      assert.deepEqual(y2b, y2);
      const synced = seen.statsSynced!;
      const before = seen.statsBefore!;
      const afterStats = seen.statsAfter!;
      assert.ok(synced.dirtyPages >= 1, 'the page table page was reported written');
      assert.equal(synced.invalidated - before.invalidated, 1, 'only X was dropped');
      assert.ok(synced.revalidated - before.revalidated >= 1, 'Y1 (same page table) was re-checked and kept');
      assert.equal(afterStats.misses - synced.misses, 1, 'only X was walked again');
      assert.equal(afterStats.hits - synced.hits, 2, 'Y1 and Y2 came from the cache');
    } finally {
      cache?.close();
      pagemap.close();
    }
  });
}
