/**
 * GVA → GPA → HPA from the guest's side: guest/tests/translate.c maps pages of both sizes, walks
 * its own page tables and reports each probe with two main-thread hypercalls. While it waits in
 * them its state is stable, so the handlers compare its walk with KVM_TRANSLATE and with the
 * TypeScript walker over guest RAM (CR3 from the vCPU's sregs), and its host-page report with
 * pagemap.
 *
 * Vm.query answers a vCPU that waits in a main-thread hypercall on the main thread, directly on the
 * vCPU fd (the vCPU is outside KVM_RUN), so vcpuState/kvmTranslate inside a handler do not
 * deadlock; the timeout below turns a regression into a failure instead of a hang.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { GPA_TO_HPA_FLAGS, HC_USER_BASE } from '../../src/hypercall/abi.js';
import type { Translation } from '../../src/kvm/vcpu-fd.js';
import { HUGE_PAGE_SIZE, thpSupport, type MemoryBacking } from '../../src/memory/guest-memory.js';
import { gpaToHva, Pagemap, type HostPageInfo } from '../../src/translate/host-pages.js';
import { walk, type WalkFault, type WalkOk, type X86Format } from '../../src/translate/page-walk.js';
import { withHugePages } from '../helpers/hugepages.js';
import type { BootResult } from '../helpers/kvm.js';
import { bootGuest, requireKvm } from '../helpers/kvm.js';

const PROBE_GPA = HC_USER_BASE + 1;
const PROBE_HPA = HC_USER_BASE + 2;
const RAM = 64 * 2 ** 20;
const KIB4 = 4096n;
const MIB2 = 0x200000n;
/** The VMM's entry state: 4-level paging, EFER.NXE and CR4.PKE clear. */
const FORMAT: X86Format = { kind: 'x86', levels: 4, nxe: false, pke: false };
const QUERY_TIMEOUT_MS = 5000;
const isRoot = process.getuid?.() === 0;

/** The GVAs translate.c probes, in order (the image address is found from the page size). */
const GVA_4K = 0x40000000n;
const GVA_2M = 0x40200000n;
const GVA_FAR = 0x10000000000n;

interface GpaProbe {
  gva: bigint;
  gpa: bigint;
  pageSize: bigint;
  cr3?: bigint;
  kvm?: Translation;
  ts?: WalkOk | WalkFault;
  error?: string;
  queryMs?: number;
}

interface HpaProbe {
  gva: bigint;
  gpa: bigint;
  hpa: bigint;
  pfn: bigint;
  flags: bigint;
  host: HostPageInfo;
}

interface TranslateRun {
  boot: BootResult;
  gpa: GpaProbe[];
  hpa: HpaProbe[];
  /** KVM_TRANSLATE of every probed GVA after the run, when the vCPU fd answers directly. */
  after: Map<bigint, Translation>;
}

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${QUERY_TIMEOUT_MS} ms (deadlock?)`)), QUERY_TIMEOUT_MS);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;
const show = (v: unknown): string => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? hex(x) : x));

async function runTranslate(backing: MemoryBacking): Promise<TranslateRun> {
  const gpa: GpaProbe[] = [];
  const hpa: HpaProbe[] = [];
  const after = new Map<bigint, Translation>();
  const pagemap = new Pagemap();
  try {
    const boot = await bootGuest('tests', 'translate', { memory: RAM, memoryBacking: backing }, {}, {
      setup: (vm) => {
        vm.handleHypercall(PROBE_GPA, async (call) => {
          const probe: GpaProbe = { gva: call.a0, gpa: call.a1, pageSize: call.a2 };
          gpa.push(probe);
          // Assertions would only reach the guest as -EINVAL: record, and assert after the run.
          try {
            const t0 = performance.now();
            const state = await withTimeout(vm.vcpuState(call.cpu), 'vcpuState inside a handler');
            probe.cr3 = state.sregs.cr3;
            probe.ts = walk(vm.memory, probe.cr3, probe.gva, FORMAT);
            probe.kvm = await withTimeout(vm.kvmTranslate(call.cpu, probe.gva), 'kvmTranslate inside a handler');
            probe.queryMs = performance.now() - t0;
          } catch (e) {
            probe.error = (e as Error).message;
          }
        });
        vm.handleHypercall(PROBE_HPA, (call) => {
          // The guest reports 258 right after the 257 of the same GVA, which gave its GPA.
          const last = gpa[gpa.length - 1];
          assert.ok(last && last.gva === call.a0, `258 for ${hex(call.a0)} without a 257 before it`);
          hpa.push({
            gva: call.a0, gpa: last.gpa, hpa: call.a1, pfn: call.a2, flags: call.a3,
            host: pagemap.lookup(gpaToHva(vm.memory, last.gpa)),
          });
        });
      },
      during: async (vm, run) => {
        await run;
        for (const p of gpa) after.set(p.gva, await withTimeout(vm.kvmTranslate(0, p.gva), 'kvmTranslate after the run'));
      },
    });
    return { boot, gpa, hpa, after };
  } finally {
    pagemap.close();
  }
}

/** The guest's own checks all passed and its walks printed in the seed's style. */
function assertGuestOutput(boot: BootResult): void {
  assert.deepEqual(boot.result, { kind: 'exit', status: 0, cpu: 0 }, boot.console);
  assert.doesNotMatch(boot.console, /^FAIL/m);
  assert.match(boot.console, /^translate: 0 failures$/m);
  for (const line of [
    'GVA 0x0000000000001234 = [PGD 0] [PUD 0] [PMD 0] [PTE 1] [Offset 0x234]',
    'GVA [PGD IDX] [PUD IDX] [PMD IDX] [PTE IDX] [  Offset  ]',
    'GVA 000000000 000000000 000000000 000000001 001000110100',
    'level 4 (PGD) table 0x5000 index 0 entry 0x6027 flags P RW US A',
    '0: PGD 000000000000 0000000000000000000000000000000000000110 000000100111',
    'Normal Page (4k) at level 1 detected!',
    'Huge Page (2M) at level 2 detected!',
    'GPA 0x0000000001212345',
    'after the remap the GVA reads page B',
  ]) {
    assert.ok(boot.console.includes(`${line}\n`), `missing "${line}" in:\n${boot.console}`);
  }
}

/** Every probe: the guest's walk = KVM_TRANSLATE = the TS walker; page sizes as mapped. */
function assertGpaProbes(gpa: GpaProbe[], after: Map<bigint, Translation>): void {
  assert.equal(gpa.length, 7, show(gpa));
  for (const p of gpa) {
    assert.equal(p.error, undefined, `${hex(p.gva)}: ${p.error}`);
    assert.equal(p.cr3, 0x5000n);
    assert.ok(p.ts?.ok, `TS walk of ${hex(p.gva)} failed: ${show(p.ts)}`);
    assert.equal(p.ts.address, p.gpa, `TS walker vs guest for ${hex(p.gva)}`);
    assert.equal(BigInt(p.ts.pageSize), p.pageSize, `page size of ${hex(p.gva)}`);
    assert.deepEqual(p.kvm, { gva: p.gva, gpa: p.gpa, valid: true }, `KVM_TRANSLATE vs guest for ${hex(p.gva)}`);
  }
  const [low, image, mapped4k, neighbour, mapped2m, far, remapped] = gpa;
  assert.deepEqual([low.gva, low.gpa, low.pageSize], [0x1234n, 0x1234n, KIB4]);
  assert.ok(image.gva >= 0x400000n && image.gva < 0x600000n && image.gpa === image.gva && image.pageSize === MIB2, show(image));
  assert.deepEqual([mapped4k.gva, mapped4k.pageSize], [GVA_4K + 0x123n, KIB4]);
  assert.ok(mapped4k.gpa >= 0x400000n && mapped4k.gpa < 0x600000n, `page A comes from the pool in the image: ${show(mapped4k)}`);
  assert.deepEqual([neighbour.gva, neighbour.gpa, neighbour.pageSize], [GVA_4K + 0x1000n, GVA_4K + 0x1000n, KIB4]);
  assert.deepEqual([mapped2m.gva, mapped2m.gpa, mapped2m.pageSize], [GVA_2M + 0x12345n, 0x1212345n, MIB2]);
  assert.deepEqual([far.gva, far.pageSize], [GVA_FAR + 0x678n, KIB4]);
  assert.deepEqual([remapped.gva, remapped.pageSize], [GVA_4K + 0x123n, KIB4]);
  assert.notEqual(remapped.gpa, mapped4k.gpa, 'the remap changed the GPA');
  assert.equal(remapped.gpa & 0xfffn, 0x123n);
  // After the run only the final tables exist: the remapped page, and nothing at 1 TiB (unmapped).
  assert.deepEqual(after.get(GVA_4K + 0x123n), { gva: GVA_4K + 0x123n, gpa: remapped.gpa, valid: true });
  assert.equal(after.get(GVA_FAR + 0x678n)?.valid, false);
  assert.deepEqual(after.get(GVA_2M + 0x12345n), { gva: GVA_2M + 0x12345n, gpa: 0x1212345n, valid: true });
}

/** The guest's KT_HC_GPA_TO_HPA answers agree with pagemap, probe by probe. */
function assertHpaProbes(hpa: HpaProbe[]): void {
  if (!isRoot) {
    assert.equal(hpa.length, 0, 'without root the VMM cannot read PFNs, so the guest reports none');
    return;
  }
  // Every probe but the one above RAM.
  assert.deepEqual(hpa.map((h) => h.gva), [0x1234n, hpa[1]?.gva, GVA_4K + 0x123n, GVA_2M + 0x12345n, GVA_FAR + 0x678n, GVA_4K + 0x123n]);
  for (const h of hpa) {
    const what = `${hex(h.gva)} (GPA ${hex(h.gpa)}): guest ${show({ hpa: h.hpa, pfn: h.pfn, flags: h.flags })} host ${show(h.host)}`;
    assert.ok(h.host.present && h.host.pfn !== undefined, what);
    assert.equal(h.flags & BigInt(GPA_TO_HPA_FLAGS.MAPPED), BigInt(GPA_TO_HPA_FLAGS.MAPPED), what);
    assert.equal(h.pfn, h.host.pfn, what);
    assert.equal(h.hpa, h.host.hpa, what);
    assert.equal(h.hpa & 0xfffn, h.gpa & 0xfffn, what);
    const huge = h.host.pageSize > 4096 || h.host.compoundHead || h.host.compoundTail;
    assert.equal((h.flags & BigInt(GPA_TO_HPA_FLAGS.HUGE)) !== 0n, huge, what);
    assert.equal((h.flags >> BigInt(GPA_TO_HPA_FLAGS.ORDER_SHIFT)) & 0x1fn, BigInt(h.host.folioOrder ?? 0), what);
  }
}

test('translate guest: its walks agree with KVM_TRANSLATE and the TS walker, its HPAs with pagemap', async (t: TestContext) => {
  if (!requireKvm(t)) return;
  const { boot, gpa, hpa, after } = await runTranslate('shmem');
  assertGuestOutput(boot);
  assertGpaProbes(gpa, after);
  assertHpaProbes(hpa);
  console.log(`queries inside the handler took ${gpa.map((p) => p.queryMs?.toFixed(2)).join(', ')} ms`);
});

for (const backing of ['thp', 'hugetlb'] as const) {
  test(`translate guest on '${backing}' RAM: KT_HC_GPA_TO_HPA reports huge host pages`, async (t: TestContext) => {
    if (!requireKvm(t)) return;
    const skip = (why: string) => {
      console.log(`SKIP (${why})`);
      t.skip(why);
    };
    const thp = thpSupport();
    if (backing === 'thp' && !thp.anon && !thp.shmem) return skip(`THP disabled (${thp.detail})`);
    if (!isRoot) return skip('PFNs and page flags need root');
    const check = async (): Promise<void> => {
      const { boot, gpa, hpa, after } = await runTranslate(backing);
      assertGuestOutput(boot);
      assertGpaProbes(gpa, after);
      assertHpaProbes(hpa);
      const isHuge = (h: HpaProbe) => (h.flags & BigInt(GPA_TO_HPA_FLAGS.HUGE)) !== 0n;
      // The image sits in a 2 MiB-aligned, 2 MiB-backed region (as in memory-backing.test.ts).
      const image = hpa[1];
      assert.ok(isHuge(image), `image page not huge: ${show(image)}`);
      assert.equal(image.host.pageSize, HUGE_PAGE_SIZE);
      assert.equal((image.flags >> 2n) & 0x1fn, 9n, 'folio order 9 (2 MiB)');
      assert.equal(image.pfn % 512n, (image.gpa >> 12n) % 512n, 'GPA and PFN agree on the 4 KiB page inside the 2 MiB page');
      if (backing === 'hugetlb') assert.ok(hpa.every(isHuge), `every hugetlb page is huge: ${show(hpa)}`);
    };
    if (backing !== 'hugetlb') return check();
    const reason = await withHugePages(RAM / HUGE_PAGE_SIZE, check);
    if (reason) skip(reason);
  });
}
