/** The host half of address translation: GPA → HVA, pagemap/kpageflags lookups, and the three RAM backings. */
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import * as sys from '../../src/kvm/sys.js';
import {
  GuestMemory, GuestMemoryError, HUGE_PAGE_SIZE, HugePagesUnavailableError, hugePagePool, thpSupport,
} from '../../src/memory/guest-memory.js';
import { emptyHostPageInfo, gpaToHva, KPF, Pagemap, translateGpa } from '../../src/translate/host-pages.js';
import { withHugePagePool, withHugePages } from '../helpers/hugepages.js';

const MIB = 2 ** 20;
const isRoot = process.getuid?.() === 0;

test('gpaToHva maps through the memslot and throws GuestMemoryError outside it', () => {
  const mem = GuestMemory.create(MIB);
  try {
    const base = mem.regions[0].hva;
    assert.equal(gpaToHva(mem, 0n), base);
    assert.equal(gpaToHva(mem, 0x12345n), base + 0x12345n);
    assert.equal(gpaToHva(mem, BigInt(MIB - 1)), base + BigInt(MIB - 1));
    for (const gpa of [BigInt(MIB), -1n, 2n ** 64n - 1n]) assert.throws(() => gpaToHva(mem, gpa), GuestMemoryError, `0x${gpa.toString(16)}`);
  } finally {
    mem.close();
  }
});

test('shmem: touched pages are present 4 KiB shared pages with real PFNs; untouched ones are not present', () => {
  const mem = GuestMemory.create(MIB);
  const pm = new Pagemap();
  try {
    assert.equal(mem.backing, 'shmem');
    assert.equal(mem.pageSize, 4096);
    assert.equal(mem.shareable, true);
    mem.writeU8(0x0000, 1);
    mem.writeU8(0x2abc, 2);
    const a = translateGpa(mem, pm, 0x2abcn).host;
    const b = pm.lookup(gpaToHva(mem, 0n));
    const untouched = pm.lookup(gpaToHva(mem, 0x5000n));
    assert.equal(a.present, true);
    assert.equal(a.file, true, 'memfd pages are shared (file) pages');
    assert.equal(a.exclusive, true, 'mapped once so far');
    assert.equal(a.pageSize, 4096);
    assert.equal(a.thp, false);
    assert.equal(a.hugetlb, false);
    assert.equal(untouched.present, false);
    assert.equal(untouched.pfn, undefined);
    assert.equal(untouched.hpa, undefined);
    if (!isRoot) {
      assert.equal(a.pfnHidden, true);
      assert.equal(a.hpa, undefined);
      return;
    }
    assert.equal(a.pfnHidden, false);
    assert.ok(a.pfn !== undefined && a.pfn !== 0n, `pfn ${a.pfn}`);
    assert.equal(a.hpa, (a.pfn << 12n) + 0xabcn);
    assert.equal(a.folioOrder, 0);
    assert.notEqual(a.pfn, b.pfn, 'two pages, two frames');
    // A second mapping of the memfd reaches the same physical page, which is then no longer exclusive.
    const fd = mem.regions[0].fd;
    const second = sys.mmap(MIB, sys.PROT_READ, sys.MAP_SHARED, fd);
    try {
      assert.equal(new Uint8Array(sys.view(second, MIB))[0x2abc], 2);
      const again = pm.lookupInto(second + 0x2abcn, emptyHostPageInfo());
      assert.equal(again.pfn, a.pfn);
      assert.equal(again.exclusive, false);
      assert.equal(pm.lookup(gpaToHva(mem, 0x2000n)).exclusive, false);
    } finally {
      sys.munmap(second, MIB);
    }
  } finally {
    pm.close();
    mem.close();
  }
});

test('thp: 2 MiB-aligned memory touched once per 2 MiB is mapped by 2 MiB THPs', (t) => {
  const support = thpSupport();
  if (!support.anon && !support.shmem) {
    console.log(`SKIP (THP disabled: ${support.detail})`);
    t.skip(support.detail);
    return;
  }
  if (!isRoot) {
    console.log('SKIP (page flags need root)');
    t.skip('page flags need root');
    return;
  }
  const mem = GuestMemory.create(8 * MIB, { backing: 'thp' });
  const pm = new Pagemap();
  try {
    assert.equal(mem.backing, 'thp');
    assert.equal(mem.pageSize, HUGE_PAGE_SIZE);
    assert.equal(mem.regions[0].hva % BigInt(HUGE_PAGE_SIZE), 0n, 'mapping is 2 MiB-aligned');
    assert.equal(mem.shareable, support.shmem, `shareable only with shmem THP (${support.detail})`);
    for (let gpa = 0; gpa < mem.size; gpa += HUGE_PAGE_SIZE) mem.writeU8(gpa, 0xaa);
    for (let gpa = 0; gpa < mem.size; gpa += HUGE_PAGE_SIZE) {
      const head = pm.lookup(gpaToHva(mem, BigInt(gpa)));
      // Never written, yet present: the whole 2 MiB came in with the first touch.
      const tail = pm.lookup(gpaToHva(mem, BigInt(gpa + 0x3123)));
      const where = `block at 0x${gpa.toString(16)}`;
      assert.equal(head.present && tail.present, true, where);
      assert.equal(head.thp, true, where);
      assert.equal(head.compoundHead, true, where);
      assert.equal(head.pfn! % 512n, 0n, `${where}: head PFN is 512-aligned`);
      assert.equal(tail.compoundTail, true, where);
      assert.equal(tail.pfn, head.pfn! + 3n, where);
      assert.equal(tail.hpa, ((head.pfn! + 3n) << 12n) + 0x123n, where);
      assert.equal(tail.folioOrder, 9, where);
      assert.equal(head.pageSize, HUGE_PAGE_SIZE, where);
      assert.equal(tail.pageSize, HUGE_PAGE_SIZE, where);
    }
    // Dropping one 4 KiB page splits the PMD mapping; the rest of the folio stays, mapped by PTEs.
    const block = gpaToHva(mem, BigInt(2 * HUGE_PAGE_SIZE));
    const headPfn = pm.lookup(block).pfn!;
    sys.madvise(block + 0x10000n, 4096, sys.MADV_DONTNEED);
    const dropped = pm.lookup(block + 0x10000n);
    const pte = pm.lookup(block + 0x25000n);
    assert.equal(dropped.present, false);
    assert.deepEqual([pte.present, pte.thp, pte.compoundTail, pte.pfn, pte.folioOrder, pte.pageSize], [true, true, true, headPfn + 0x25n, 9, 4096]);
  } finally {
    pm.close();
    mem.close();
  }
});

test('hugetlb: 2 MiB pool pages, pre-faulted, with hugetlb flags and 512-aligned PFNs', async (t: TestContext) => {
  const needed = 2;
  const run = (): void => {
    const mem = GuestMemory.create(needed * HUGE_PAGE_SIZE, { backing: 'hugetlb' });
    const pm = new Pagemap();
    try {
      assert.equal(mem.backing, 'hugetlb');
      assert.equal(mem.pageSize, HUGE_PAGE_SIZE);
      assert.equal(mem.shareable, true);
      // Pre-faulted at create time: present before anything is written.
      const head = translateGpa(mem, pm, BigInt(HUGE_PAGE_SIZE)).host;
      const inner = translateGpa(mem, pm, BigInt(HUGE_PAGE_SIZE + 0x7008)).host;
      assert.equal(head.present && inner.present, true);
      assert.equal(inner.hugetlb, true);
      assert.equal(inner.thp, false);
      assert.equal(inner.pageSize, HUGE_PAGE_SIZE);
      if (isRoot) {
        assert.equal(head.pfn! % 512n, 0n, 'head PFN is 512-aligned');
        assert.equal(head.compoundHead, true);
        assert.equal(inner.pfn, head.pfn! + 7n);
        assert.equal(inner.folioOrder, 9);
        assert.equal(inner.compoundTail, true);
      }
      mem.writeU64(BigInt(HUGE_PAGE_SIZE + 0x7008), 0x1122334455667788n);
      const viaFd = readFileSync(`/proc/self/fd/${mem.regions[0].fd}`);
      assert.equal(viaFd.readBigUInt64LE(HUGE_PAGE_SIZE + 0x7008), 0x1122334455667788n, 'another opener of the memfd sees guest writes');
    } finally {
      pm.close();
      mem.close();
    }
  };
  const reason = await withHugePages(needed, run);
  if (reason) {
    console.log(`SKIP (${reason})`);
    t.skip(reason);
  }
});

test('hugetlb: an empty pool is a clear error at create time; sizes must be multiples of 2 MiB', async (t: TestContext) => {
  assert.throws(() => GuestMemory.create(3 * MIB, { backing: 'hugetlb' }), /multiple of 2 MiB/);
  if (!isRoot && hugePagePool().free > 0) {
    console.log('SKIP (emptying the hugetlb pool needs root)');
    t.skip('needs root');
    return;
  }
  const attempt = (): void => {
    assert.equal(hugePagePool().free, 0);
    assert.throws(
      () => GuestMemory.create(4 * MIB, { backing: 'hugetlb' }),
      (e: unknown) => {
        assert.ok(e instanceof HugePagesUnavailableError, String(e));
        assert.equal(e.needed, 2);
        assert.equal(e.free, 0);
        assert.match(e.message, /^hugetlb backing needs 2 free 2 MiB huge pages but only 0 are free: echo \d+ > \S*nr_hugepages \(as root\)$/);
        return true;
      },
    );
  };
  if (isRoot) await withHugePagePool(0, attempt);
  else attempt();
});

/** Writes 64-bit little-endian `entries` (index → value) into a sparse file. */
function writeEntries(path: string, entries: Map<number, bigint>): void {
  const fd = openSync(path, 'w');
  try {
    const b = Buffer.alloc(8);
    for (const [i, v] of entries) {
      b.writeBigUInt64LE(v);
      writeSync(fd, b, 0, 8, i * 8);
    }
  } finally {
    closeSync(fd);
  }
}

test('fake pagemap/kpageflags: hidden PFNs, swap, folio order and page size from head/tail flags', () => {
  const dir = mkdtempSync(join(os.tmpdir(), 'kvmtalk-pagemap-'));
  try {
    const PRESENT = 1n << 63n, SWAPPED = 1n << 62n, FILE = 1n << 61n, EXCL = 1n << 56n;
    const f = (...bits: number[]) => bits.reduce((a, b) => a | (1n << BigInt(b)), 0n);
    const pagemap = new Map<number, bigint>([
      [1, PRESENT | EXCL], // present, PFN 0: what a non-root reader sees
      [2, SWAPPED | 0x123n], // swapped out
      [3, PRESENT | FILE | 0x1234n], // small page
      [517, PRESENT | EXCL | 0x2005n], // THP tail, HVA lined up with the folio (517 % 512 = 5)
      [1030, PRESENT | 0x2005n], // same THP frame, but at a misaligned HVA: mapped by a PTE
      [10, PRESENT | 0x3007n], // order-4 large folio (not THP)
      [2000, PRESENT | FILE | (0x40000n + 0x12345n)], // 1 GiB hugetlb page
    ]);
    const kflags = new BigUint64Array(0x80001);
    kflags[0x2000] = f(KPF.COMPOUND_HEAD, KPF.THP);
    kflags.fill(f(KPF.COMPOUND_TAIL, KPF.THP), 0x2001, 0x2200);
    kflags[0x3000] = f(KPF.COMPOUND_HEAD);
    kflags.fill(f(KPF.COMPOUND_TAIL), 0x3001, 0x3010);
    kflags[0x40000] = f(KPF.COMPOUND_HEAD, KPF.HUGE);
    kflags.fill(f(KPF.COMPOUND_TAIL, KPF.HUGE), 0x40001, 0x80000);
    kflags[0x80000] = f(KPF.COMPOUND_HEAD, KPF.HUGE); // the next folio starts right after
    writeEntries(join(dir, 'pagemap'), pagemap);
    writeFileSync(join(dir, 'kpageflags'), new Uint8Array(kflags.buffer));
    const pm = new Pagemap({ pagemapPath: join(dir, 'pagemap'), kpageflagsPath: join(dir, 'kpageflags') });
    try {
      const hidden = pm.lookup(0x1abcn);
      assert.equal(hidden.present, true);
      assert.equal(hidden.pfnHidden, true);
      assert.equal(hidden.pfn, undefined);
      assert.equal(hidden.hpa, undefined, 'a hidden PFN never becomes HPA 0');
      assert.match(hidden.reason ?? '', /CAP_SYS_ADMIN/);

      const swapped = pm.lookup(0x2000n);
      assert.deepEqual([swapped.present, swapped.swapped, swapped.pfn, swapped.pfnHidden], [false, true, undefined, false]);

      const small = pm.lookup(0x3fffn);
      assert.deepEqual([small.pfn, small.hpa, small.file, small.exclusive, small.pageSize, small.folioOrder], [0x1234n, 0x1234fffn, true, false, 4096, 0]);

      const thp = pm.lookup(517n * 4096n + 0x10n);
      assert.deepEqual([thp.thp, thp.compoundTail, thp.folioOrder, thp.pageSize, thp.hpa], [true, true, 9, 2 * MIB, 0x2005010n]);
      const pteMapped = pm.lookup(1030n * 4096n);
      assert.deepEqual([pteMapped.thp, pteMapped.folioOrder, pteMapped.pageSize], [true, 9, 4096]);

      const mthp = pm.lookup(10n * 4096n);
      assert.deepEqual([mthp.thp, mthp.compoundTail, mthp.folioOrder, mthp.pageSize], [false, true, 4, 4096]);

      const gig = pm.lookup(2000n * 4096n);
      assert.deepEqual([gig.hugetlb, gig.folioOrder, gig.pageSize], [true, 18, 2 ** 30]);

      // lookupInto overwrites every field of a reused result.
      const out = pm.lookupInto(517n * 4096n, emptyHostPageInfo());
      pm.lookupInto(0x1000n, out);
      assert.deepEqual([out.pfnHidden, out.thp, out.folioOrder, out.pageSize, out.hpa], [true, false, undefined, 4096, undefined]);
    } finally {
      pm.close();
    }

    const noFlags = new Pagemap({ pagemapPath: join(dir, 'pagemap'), kpageflagsPath: join(dir, 'missing') });
    try {
      const r = noFlags.lookup(517n * 4096n);
      assert.equal(r.pfn, 0x2005n);
      assert.equal(r.folioOrder, undefined);
      assert.equal(r.thp, false);
      assert.match(r.reason ?? '', /kpageflags/);
      assert.match(noFlags.flagsUnavailable ?? '', /ENOENT/);
    } finally {
      noFlags.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
