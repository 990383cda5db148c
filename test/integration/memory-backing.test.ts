/** A real guest on each guest-RAM backing, with the host page size checked through pagemap. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { IMAGE_BASE } from '../../src/arch/x86/layout.js';
import { HUGE_PAGE_SIZE, thpSupport, type MemoryBacking } from '../../src/memory/guest-memory.js';
import { guestPath } from '../../src/sdk/toolchain.js';
import { Pagemap, translateGpa, type GpaTranslation } from '../../src/translate/host-pages.js';
import { withHugePages } from '../helpers/hugepages.js';
import { bootGuest, ensureGuests, requireKvm } from '../helpers/kvm.js';

const MIB = 2 ** 20;
const RAM = 16 * MIB;
const isRoot = process.getuid?.() === 0;
const BIN = fileURLToPath(new URL('../../../bin/kvmtalk.js', import.meta.url));

/** Why `backing` cannot be tested here, or undefined. */
function thpSkip(backing: MemoryBacking): string | undefined {
  if (backing !== 'thp') return undefined;
  const s = thpSupport();
  return s.anon || s.shmem ? undefined : `THP disabled (${s.detail})`;
}

async function bootOn(backing: MemoryBacking): Promise<GpaTranslation> {
  let image: GpaTranslation | undefined;
  const r = await bootGuest('examples', 'demo', { memory: RAM, memoryBacking: backing }, {}, {
    during: async (vm, run) => {
      await run;
      assert.equal(vm.memory.backing, backing);
      const pm = new Pagemap();
      try {
        image = translateGpa(vm.memory, pm, BigInt(IMAGE_BASE) + 0x123n);
      } finally {
        pm.close();
      }
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 });
  assert.match(r.console, /^Hello from the kvmtalk demo guest on cpu 0 of 1\n/);
  assert.match(r.console, /goodbye\n$/);
  assert.deepEqual(r.events.values, [{ cpu: 0, value: 4276993775n }]);
  assert.ok(image);
  return image;
}

for (const backing of ['shmem', 'thp', 'hugetlb'] as const) {
  test(`demo guest on '${backing}' RAM; pagemap shows the backing's page size for the image page`, async (t: TestContext) => {
    if (!requireKvm(t)) return;
    const skip = thpSkip(backing);
    if (skip) {
      console.log(`SKIP (${skip})`);
      t.skip(skip);
      return;
    }
    const check = async (): Promise<void> => {
      const { hva, host } = await bootOn(backing);
      const expected = backing === 'shmem' ? 4096 : HUGE_PAGE_SIZE;
      assert.equal(host.hva, hva);
      assert.equal(host.present, true, 'the loaded image page is resident');
      assert.equal(host.pageSize, expected, JSON.stringify(host, (_k, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v)));
      assert.equal(host.thp, backing === 'thp');
      assert.equal(host.hugetlb, backing === 'hugetlb');
      if (isRoot) {
        assert.equal(host.pfnHidden, false);
        assert.equal(host.hpa! & 0xfffn, 0x123n);
        if (backing !== 'shmem') {
          assert.equal(host.folioOrder, 9);
          // IMAGE_BASE is 2 MiB-aligned, so its page is the head of its 2 MiB folio.
          assert.equal(host.pfn! % 512n, 0n);
          assert.equal(host.compoundHead, true);
        }
      }
    };
    if (backing !== 'hugetlb') return check();
    const reason = await withHugePages(RAM / HUGE_PAGE_SIZE, check);
    if (reason) {
      console.log(`SKIP (${reason})`);
      t.skip(reason);
    }
  });
}

test('kvmtalk run --memory-backing: each backing runs the demo; a bad choice is a one-line error', async (t: TestContext) => {
  if (!requireKvm(t)) return;
  ensureGuests();
  const run = (backing: string) => spawnSync(process.execPath, [BIN, 'run', guestPath('examples', 'demo'), '--mem', '16M', '--memory-backing', backing], { encoding: 'utf8', timeout: 60_000 });
  for (const backing of ['shmem', 'thp'] as const) {
    if (thpSkip(backing)) continue;
    const r = run(backing);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Hello from the kvmtalk demo guest/);
  }
  const reason = await withHugePages(RAM / HUGE_PAGE_SIZE, async () => {
    const r = run('hugetlb');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /goodbye/);
  });
  if (reason) console.log(`(hugetlb CLI run skipped: ${reason})`);
  const bad = run('gigantic');
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /^kvmtalk: --memory-backing: 'gigantic' is not one of shmem, thp, hugetlb\n$/);
});
