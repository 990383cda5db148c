/** GVA → GPA → HVA → HPA on real KVM guests, checked against KVM_TRANSLATE, pagemap and the EPT view. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadImageFile } from '../../src/loader/image.js';
import { thpSupport, type MemoryBacking } from '../../src/memory/guest-memory.js';
import { guestPath } from '../../src/sdk/toolchain.js';
import { translateChain, type TranslationChain } from '../../src/translate/chain.js';
import { EptView } from '../../src/translate/ept-view.js';
import { gpaToHva, Pagemap } from '../../src/translate/host-pages.js';
import { renderChain } from '../../src/translate/render.js';
import { Vm } from '../../src/vmm/vm.js';
import { bootGuest, ensureGuests, requireKvm, waitFor } from '../helpers/kvm.js';

const isRoot = process.getuid?.() === 0;
const BIN = fileURLToPath(new URL('../../../bin/kvmtalk.js', import.meta.url));
const MAIN_TS = fileURLToPath(new URL('../../../src/cli/main.ts', import.meta.url));
const TRANSLATE_JS = fileURLToPath(new URL('../../src/cli/commands/translate.js', import.meta.url));
const ERRORS_JS = fileURLToPath(new URL('../../src/cli/errors.js', import.meta.url));

/** The walk's steps as [level, leaf] pairs. */
const steps = (c: TranslationChain) => (c.guest.kind === 'walk' ? c.guest.result.steps.map((s) => [s.level, s.leaf]) : []);

/** What every chain must satisfy: KVM agrees, and when an HPA is reached, pagemap and the EPT view give it too. */
function assertConsistent(c: TranslationChain, memory: Vm['memory'], pagemap: Pagemap): void {
  assert.equal(c.kvm?.agrees, true, c.kvm?.detail);
  if (c.gpa === undefined) return;
  assert.equal(c.kvm?.valid, true);
  assert.equal(c.kvm?.gpa, c.gpa);
  const hva = gpaToHva(memory, c.gpa);
  assert.equal(c.hva, hva);
  const host = pagemap.lookup(hva);
  assert.equal(host.present, true, 'these GPAs are resident');
  if (!isRoot) {
    assert.equal(c.hpa, undefined);
    assert.equal(c.failure?.reason, 'pfn-hidden');
    return;
  }
  assert.equal(c.failure, undefined, c.failure?.message);
  assert.equal(c.hpa, host.hpa, 'HPA is pagemap\'s');
  assert.ok(c.ept?.result.ok, c.ept?.detail);
  assert.equal(c.ept.result.address, host.hpa, 'the EPT view walks to the same HPA');
  assert.equal(c.ept.agreesWithHost, true);
}

/** Creates a VM with spin.elf loaded (not running); always closes it. */
async function withLoadedSpin(backing: MemoryBacking, fn: (vm: Vm) => Promise<void>): Promise<void> {
  ensureGuests();
  const vm = Vm.create({ memory: '64M', memoryBacking: backing, console: 'capture' });
  try {
    vm.load(loadImageFile(guestPath('tests', 'spin')));
    await fn(vm);
  } finally {
    vm.close();
  }
}

test('just-loaded guest: 2 MiB image page, 4 KiB page, not-present at level 1 and at level 4', async (t: TestContext) => {
  if (!requireKvm(t)) return;
  await withLoadedSpin('shmem', async (vm) => {
    const pagemap = new Pagemap();
    try {
      const ept = EptView.build(vm.memory, pagemap);
      const tr = (gva: bigint) => translateChain(vm, gva, { pagemap, ept });

      const image = await tr(0x401000n);
      assert.equal(image.paging.mode, '4-level');
      assert.equal(image.gpa, 0x401000n, 'identity-mapped');
      assert.deepEqual(steps(image), [[4, false], [3, false], [2, true]]);
      assert.equal(image.guest.kind === 'walk' && image.guest.result.ok && image.guest.result.pageSize, 0x200000);
      assertConsistent(image, vm.memory, pagemap);
      assert.equal(image.host?.info.pageSize, 4096, 'shmem is 4 KiB on the host');
      assert.equal(image.ept?.result.ok && image.ept.result.level, 1, 'so the EPT view has a 4 KiB leaf');
      const text = renderChain(image);
      assert.match(text, /GVA 0x401000 = \[PGD 0x0\] \[PUD 0x0\] \[PMD 0x2\] \[Offset 0x1000\]/);
      assert.match(text, /Huge Page \(2M\) at level 2 detected!/);
      assert.match(text, /GPA 0x401000 = \[PML4 0x0\] \[PDPT 0x0\] \[PD 0x2\] \[PT 0x1\] \[Offset 0x0\][\s\S]*Normal Page \(4k\) at level 1 detected!/);

      const small = await tr(0x1234n);
      assert.equal(small.gpa, 0x1234n);
      assert.deepEqual(steps(small), [[4, false], [3, false], [2, false], [1, true]]);
      assertConsistent(small, vm.memory, pagemap);
      assert.match(renderChain(small), /\[PGD 0x0\] \[PUD 0x0\] \[PMD 0x0\] \[PTE 0x1\] \[Offset 0x234\][\s\S]*Normal Page \(4k\) at level 1 detected!/);

      const nul = await tr(0n);
      assert.deepEqual({ ...nul.failure, message: undefined }, { stage: 'guest', reason: 'not-present', level: 1, errorCode: 0, message: undefined });
      assert.equal(nul.kvm?.valid, false);
      assert.equal(nul.kvm?.agrees, true);
      assert.match(renderChain(nul), /FAULT: #PF, not-present at level 1: PTE\[0\] at 0x7000 is not present; error code 0x0/);

      const high = await tr(0x7fffffff0000n);
      assert.equal(high.failure?.reason, 'not-present');
      assert.equal(high.failure?.level, 4);
      assert.equal(high.kvm?.agrees, true);
      assert.match(high.failure?.message ?? '', /PML4E\[255\]/);
    } finally {
      pagemap.close();
    }
  });
});

test('running guest: translations while it spins match KVM_TRANSLATE, pagemap and the EPT view', async (t: TestContext) => {
  if (!requireKvm(t)) return;
  const chains: TranslationChain[] = [];
  let stackTop = 0n;
  const r = await bootGuest('tests', 'spin', { memory: '64M' }, {}, {
    during: async (vm, _run, text) => {
      await waitFor(() => text().includes('spinning'), 30_000, 'the guest to print "spinning"');
      const { regs } = await vm.vcpuState(0);
      stackTop = regs.rsp & ~0xfffn;
      const pagemap = new Pagemap();
      try {
        for (const gva of [0x401000n, 0x1234n, stackTop, 0n]) chains.push(await translateChain(vm, gva, { pagemap }));
        for (const c of chains.slice(0, 3)) assertConsistent(c, vm.memory, pagemap);
      } finally {
        pagemap.close();
        vm.stop();
      }
    },
  });
  assert.equal(r.result.kind, 'stopped');
  assert.equal(chains.length, 4);
  assert.equal(chains[2].gpa, stackTop, 'the stack is identity-mapped and resident once used');
  assert.equal(chains[3].failure?.level, 1);
  // The guest ran at CPL3 through these entries, so the CPU (or KVM's shadow MMU) set their accessed bits.
  const walk = chains[0].guest.kind === 'walk' ? chains[0].guest.result : undefined;
  assert.ok(walk?.steps.every((s) => s.flags.A === true), 'accessed bits set by running code');
});

test('THP-backed RAM: the EPT view uses 2 MiB leaves for the touched huge pages', async (t: TestContext) => {
  if (!requireKvm(t)) return;
  const thp = thpSupport();
  if (!thp.anon && !thp.shmem) {
    console.log(`SKIP (THP disabled: ${thp.detail})`);
    return t.skip('THP disabled');
  }
  if (!isRoot) {
    console.log('SKIP (PFNs are hidden without root, so the EPT view maps nothing)');
    return t.skip('not root');
  }
  await withLoadedSpin('thp', async (vm) => {
    const pagemap = new Pagemap();
    try {
      const host = pagemap.lookup(gpaToHva(vm.memory, 0x400000n));
      if (host.pageSize !== 0x200000) {
        console.log(`SKIP (the kernel backed the image block with ${host.pageSize}-byte pages: no free huge page)`);
        return t.skip('no THP for the image block');
      }
      const ept = EptView.build(vm.memory, pagemap);
      const s = ept.stats();
      assert.ok(s.leaves2m >= 1, JSON.stringify(s));
      assert.equal(s.mappedBytes, s.leaves2m * 0x200000 + s.leaves4k * 4096);
      assert.ok(s.tables >= 3);
      const c = await translateChain(vm, 0x401234n, { pagemap, ept });
      assertConsistent(c, vm.memory, pagemap);
      assert.equal(c.host?.info.thp, true);
      assert.equal(c.host?.info.pageSize, 0x200000);
      assert.equal(c.ept?.result.ok && c.ept.result.level, 2, 'a 2 MiB EPT leaf');
      assert.equal(c.ept?.result.ok && c.ept.result.pageBase, host.hpa! & ~0x1fffffn);
      const text = renderChain(c);
      const eptPart = text.slice(text.indexOf("== Stage 2'"), text.indexOf('== KVM_TRANSLATE'));
      assert.match(eptPart, /GPA 0x401234 = \[PML4 0x0\] \[PDPT 0x0\] \[PD 0x2\] \[Offset 0x1234\]/);
      assert.match(eptPart, /Huge Page \(2M\) at level 2 detected!/);
      assert.match(eptPart, /memType=6 IPAT large {2}<- leaf/);
      // Untouched 2 MiB blocks are not on the host, hence EPT violations in the view.
      const untouched = ept.walk(0x2000000n);
      assert.equal(untouched.ok, false);
      // refresh() picks up pages touched since.
      vm.memory.writeU8(0x2000000, 1);
      assert.equal(ept.walk(0x2000000n).ok, false, 'a snapshot until refreshed');
      ept.refresh();
      assert.equal(ept.walk(0x2000000n).ok, true);
    } finally {
      pagemap.close();
    }
  });
});

let entryPoint: string | undefined;
/** bin/kvmtalk.js, or a scratch entry point registering only `translate` while main.ts does not register it yet. */
function cliEntry(): string {
  if (entryPoint) return entryPoint;
  if (readFileSync(MAIN_TS, 'utf8').includes('registerTranslate')) return (entryPoint = BIN);
  console.log('(main.ts does not register translate yet: using a scratch entry point)');
  const dir = mkdtempSync(join(tmpdir(), 'kvmtalk-translate-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const commander = fileURLToPath(new URL('../../../node_modules/commander/esm.mjs', import.meta.url));
  writeFileSync(join(dir, 'cli.mjs'), [
    `import { Command, CommanderError } from ${JSON.stringify(commander)};`,
    `import { registerTranslate } from ${JSON.stringify(TRANSLATE_JS)};`,
    `import { reportError } from ${JSON.stringify(ERRORS_JS)};`,
    `const program = new Command('kvmtalk').exitOverride();`,
    'registerTranslate(program);',
    'try { await program.parseAsync(process.argv); } catch (e) { if (e instanceof CommanderError) process.exit(e.exitCode); reportError(e); }',
  ].join('\n'));
  return (entryPoint = join(dir, 'cli.mjs'));
}

/** Runs `kvmtalk translate …`. */
function kvmtalkTranslate(args: string[]) {
  const r = spawnSync(process.execPath, [cliEntry(), 'translate', ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('kvmtalk translate --json: parseable output with every stage; bad GVAs are one-line errors', (t: TestContext) => {
  if (!requireKvm(t)) return;
  ensureGuests();
  const spin = guestPath('tests', 'spin');
  const r = kvmtalkTranslate([spin, '0x401000', '0', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { state: string; backing: string; translations: Record<string, any>[] };
  assert.equal(out.state, 'loaded');
  assert.equal(out.backing, 'shmem');
  assert.equal(out.translations.length, 2);
  const [img, nul] = out.translations;
  assert.equal(img.gva, '0x401000');
  assert.equal(img.gpa, '0x401000');
  assert.match(img.hva, /^0x[0-9a-f]+$/);
  assert.equal(img.memslot.slot, 0);
  assert.equal(img.paging.mode, '4-level');
  assert.equal(img.guest.result.level, 2);
  assert.equal(img.guest.result.steps.length, 3);
  assert.equal(img.kvm.agrees, true);
  assert.deepEqual(img.stage1Fields.map((f: { name: string }) => f.name), ['PGD', 'PUD', 'PMD', 'Offset']);
  if (isRoot) {
    assert.equal(img.complete, true);
    assert.match(img.hpa, /^0x[0-9a-f]+000$/);
    assert.equal(img.host.info.hpa, img.hpa);
    assert.equal(img.ept.result.address, img.hpa);
    assert.equal(img.ept.agreesWithHost, true);
  } else {
    assert.equal(img.failure.reason, 'pfn-hidden');
  }
  assert.equal(nul.failure.stage, 'guest');
  assert.equal(nul.failure.level, 1);
  assert.equal(nul.failure.errorCode, 0);
  assert.equal(nul.gpa, undefined);

  const text = kvmtalkTranslate([spin, '0x401000', '--no-ept', '--run-ms', '200']);
  assert.equal(text.status, 0, text.stderr);
  assert.match(text.stdout, /Huge Page \(2M\) at level 2 detected!/);
  assert.doesNotMatch(text.stdout, /Stage 2'/);
  assert.match(text.stdout, /note: translated while the guest was running/);
  assert.match(text.stderr, /spinning/);
  assert.match(text.stderr, /\[kvmtalk\] translated while the guest ran, then stopped it: VM stopped by the host/);

  const bad = kvmtalkTranslate([spin, '0x40zz']);
  assert.equal(bad.status, 1);
  assert.equal(bad.stderr, "kvmtalk: GVA '0x40zz' is not a 64-bit address (use decimal or 0x hex, e.g. 0x401000)\n");
  const cpu = kvmtalkTranslate([spin, '0x1000', '--cpu', '1']);
  assert.equal(cpu.status, 1);
  assert.match(cpu.stderr, /^kvmtalk: --cpu: '1' is not a whole number from 0 to 0\n$/);
});
