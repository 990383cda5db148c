/** Rendering of translation chains, on synthetic chains over PageTableBuilder tables and a fake pagemap (no KVM). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { MemoryRegion } from '../../src/memory/guest-memory.js';
import { guestPaging, translateChainSync, type ChainMemory, type EptSource, type GuestCpuFeatures, type TranslationChain } from '../../src/translate/chain.js';
import { emptyHostPageInfo, type HostPageInfo } from '../../src/translate/host-pages.js';
import { EPT, PAGE_1G, PAGE_2M, PAGE_4K, PageTableBuilder, X86, eptMemoryType, makeEptp, walk, type EptFormat, type PageSize, type X86Format } from '../../src/translate/page-walk.js';
import { chainJson, formatBinary, pageSizeLine, renderChain, splitAddress } from '../../src/translate/render.js';

const FEATURES: GuestCpuFeatures = { maxPhysAddr: 46, gbPages: true };
const SLOT_HVA = 0x7f00_0000_0000n;
const RAM = 2 ** 32; // one 4 GiB memslot at GPA 0
const LONG = { cr0: 0x80010033n, cr4: 0x620n, efer: 0xd00n }; // PG WP PE; PAE; LME LMA NXE
const USER = X86.P | X86.RW | X86.US;

/** Guest tables in a PageTableBuilder that also plays guest RAM (with one memslot). */
function guestMemory(levels: 4 | 5 = 4): { tables: PageTableBuilder; memory: ChainMemory } {
  const format: X86Format = { kind: 'x86', levels, nxe: true, pke: false, maxPhysAddr: 46 };
  const tables = new PageTableBuilder(format, { base: 0x10000n });
  const regions: MemoryRegion[] = [{ slot: 0, gpa: 0n, size: RAM, hva: SLOT_HVA, fd: -1 }];
  const memory: ChainMemory = { readU64: (a) => tables.readU64(a), regions, backing: 'shmem', pageSize: 4096 };
  return { tables, memory };
}

/** A pagemap whose every page is present at HPA = HVA - SLOT_HVA + 0x1_0000_0000, or hidden/absent. */
function fakePagemap(mode: 'present' | 'hidden' | 'absent' = 'present', pageSize: HostPageInfo['pageSize'] = 4096) {
  return {
    lookup(hva: bigint): HostPageInfo {
      const info = { ...emptyHostPageInfo(), hva, pageSize };
      if (mode === 'absent') return info;
      info.present = true;
      info.exclusive = true;
      info.file = true;
      if (mode === 'hidden') {
        info.pfnHidden = true;
        info.reason = 'PFNs are hidden: reading them needs CAP_SYS_ADMIN (run as root)';
        return info;
      }
      const hpa = hva - SLOT_HVA + 0x1_0000_0000n;
      info.pfn = hpa >> 12n;
      info.hpa = hpa;
      info.folioOrder = pageSize === 4096 ? 0 : 9;
      info.thp = pageSize !== 4096;
      return info;
    },
  };
}

/** An EPT view over `[gpa, size)` pairs mapped to the fake pagemap's HPAs. */
function fakeEpt(pages: [gpa: bigint, size: PageSize][]): EptSource {
  const format: EptFormat = { kind: 'ept', levels: 4, maxPhysAddr: 46 };
  const b = new PageTableBuilder(format, { base: 0x100000n });
  for (const [gpa, size] of pages) b.map(gpa, gpa + 0x1_0000_0000n, size, EPT.R | EPT.W | EPT.X | eptMemoryType(6) | EPT.IPAT);
  const eptp = makeEptp(b.root);
  return { eptp, walk: (gpa) => walk(b, eptp, gpa, format) };
}

function chainFor(gva: bigint, setup: (t: PageTableBuilder) => void, opts: Parameters<typeof translateChainSync>[3] = {}, levels: 4 | 5 = 4): TranslationChain {
  const { tables, memory } = guestMemory(levels);
  setup(tables);
  const cr4 = levels === 5 ? LONG.cr4 | (1n << 12n) : LONG.cr4;
  return translateChainSync(memory, { ...LONG, cr4, cr3: tables.root }, gva, { features: FEATURES, pagemap: fakePagemap(), ...opts });
}

/** The lines of `text` between the header starting with `start` and the next header. */
function section(text: string, start: string): string {
  const from = text.indexOf(start);
  assert.ok(from >= 0, `no section '${start}' in:\n${text}`);
  const next = text.indexOf('\n==', from + start.length);
  return text.slice(from, next < 0 ? undefined : next);
}

test('splitAddress: 4 KiB split matches the seed line; 2 MiB and 1 GiB widen the offset', () => {
  const gva = 0x401234n;
  assert.deepEqual(splitAddress(gva, 'guest', 4).map((f) => [f.name, f.value]), [['PGD', 0n], ['PUD', 0n], ['PMD', 2n], ['PTE', 1n], ['Offset', 0x234n]]);
  assert.deepEqual(splitAddress(gva, 'guest', 4, 2).map((f) => [f.name, f.value]), [['PGD', 0n], ['PUD', 0n], ['PMD', 2n], ['Offset', 0x1234n]]);
  assert.deepEqual(splitAddress(0x7f12_4567_89abn, 'guest', 4, 3).at(-1), { name: 'Offset', level: 0, value: 0x0567_89abn, hi: 29, lo: 0 });
  assert.deepEqual(splitAddress(gva, 'guest', 5).map((f) => f.name), ['PGD', 'P4D', 'PUD', 'PMD', 'PTE', 'Offset']);
  assert.deepEqual(splitAddress(gva, 'ept', 4).map((f) => f.name), ['PML4', 'PDPT', 'PD', 'PT', 'Offset']);
  const bin = formatBinary(gva, splitAddress(gva, 'guest', 4), 'sign-ext');
  assert.equal(bin[1], '  binary 0000000000000000 000000000 000000000 000000010 000000001 001000110100');
  assert.match(bin[0], /^ {2}bits {3}63:48 +47:39 +38:30 +29:21 +20:12 +11:0$/);
  assert.match(bin[2], /sign-ext +PGD +PUD +PMD +PTE +Offset$/);
  assert.equal(pageSizeLine(1), 'Normal Page (4k) at level 1 detected!');
  assert.equal(pageSizeLine(2), 'Huge Page (2M) at level 2 detected!');
  assert.equal(pageSizeLine(3), 'Huge Page (1G) at level 3 detected!');
});

test('a 4 KiB guest page: every stage, the seed lines, and an EPT view that agrees with pagemap', () => {
  const gva = 0x7f00_0040_1234n;
  const c = chainFor(gva, (t) => t.map(0x7f00_0040_1000n, 0x20_3000n, PAGE_4K, USER), { ept: fakeEpt([[0x20_3000n, PAGE_4K]]) });
  assert.equal(c.failure, undefined);
  assert.equal(c.gpa, 0x20_3234n);
  assert.equal(c.hva, SLOT_HVA + 0x20_3234n);
  assert.equal(c.hpa, 0x1_0020_3234n);
  assert.equal(c.memslot?.slot, 0);
  assert.equal(c.ept?.agreesWithHost, true);
  const text = renderChain(c);
  const s1 = section(text, '== Stage 1');
  assert.match(s1, /GVA 0x7f0000401234 = \[PGD 0xfe\] \[PUD 0x0\] \[PMD 0x2\] \[PTE 0x1\] \[Offset 0x234\]/);
  assert.match(s1, /L4 PGD +table 0x10000 index 0xfe/);
  assert.match(s1, /L1 PTE +table 0x[0-9a-f]+ index 0x1 .*entry@0x[0-9a-f]+ = 0x0000000000203007 {2}P RW US {2}<- leaf/);
  assert.match(s1, /Normal Page \(4k\) at level 1 detected!\n {2}GPA 0x203234 = page 0x203000 \+ offset 0x234/);
  assert.match(section(text, '== Stage 2:'), /GPA 0x203234 → HVA 0x7f0000203234 \(memslot 0 \+ 0x203234\)/);
  assert.match(section(text, '== Stage 3'), /PFN 0x100203\n {2}host page 4 KiB \(not THP, not hugetlb; folio order 0\)\n {2}HPA 0x100203234/);
  const ept = section(text, "== Stage 2'");
  assert.match(ept, /GPA 0x203234 = \[PML4 0x0\] \[PDPT 0x0\] \[PD 0x1\] \[PT 0x3\] \[Offset 0x234\]/);
  assert.match(ept, /L1 PT +table .* R W X memType=6 IPAT {2}<- leaf/);
  assert.match(ept, /Normal Page \(4k\) at level 1 detected!/);
  assert.match(ept, /HPA 0x100203234, the same as pagemap's/);
  assert.match(text, /Result: GVA 0x7f0000401234 → GPA 0x203234 → HVA 0x7f0000203234 → HPA 0x100203234\n$/);
});

test('a 2 MiB guest page and a 2 MiB EPT leaf print "Huge Page (2M) at level 2 detected!" in both walks', () => {
  const c = chainFor(0x40_1234n, (t) => t.map(0x40_0000n, 0x60_0000n, PAGE_2M, USER), {
    ept: fakeEpt([[0x60_0000n, PAGE_2M]]), pagemap: fakePagemap('present', PAGE_2M),
  });
  assert.equal(c.gpa, 0x60_1234n);
  assert.equal(c.guest.kind === 'walk' && c.guest.result.ok && c.guest.result.pageSize, PAGE_2M);
  const text = renderChain(c);
  assert.match(section(text, '== Stage 1'), /GVA 0x401234 = \[PGD 0x0\] \[PUD 0x0\] \[PMD 0x2\] \[Offset 0x1234\]\n[\s\S]*Huge Page \(2M\) at level 2 detected!/);
  assert.match(section(text, '== Stage 3'), /host page 2 MiB \(THP; folio order 9\)/);
  const ept = section(text, "== Stage 2'");
  assert.match(ept, /GPA 0x601234 = \[PML4 0x0\] \[PDPT 0x0\] \[PD 0x3\] \[Offset 0x1234\]/);
  assert.match(ept, /Huge Page \(2M\) at level 2 detected!\n {2}HPA 0x100601234/);
  assert.equal(c.ept?.result.ok && c.ept.result.level, 2);
});

test('a 1 GiB guest page (where CPUID has 1 GiB pages), and its reserved-bit fault where it has not', () => {
  const setup = (t: PageTableBuilder) => t.map(0x8000_0000n, 0x4000_0000n, PAGE_1G, USER);
  const c = chainFor(0x8123_4567n, setup);
  assert.equal(c.gpa, 0x4123_4567n);
  const text = renderChain(c);
  assert.match(text, /GVA 0x81234567 = \[PGD 0x0\] \[PUD 0x2\] \[Offset 0x1234567\]/);
  assert.match(text, /Huge Page \(1G\) at level 3 detected!/);
  assert.match(text, /bits {3}63:48 +47:39 +38:30 +29:0\n/);
  const no1g = chainFor(0x8123_4567n, setup, { features: { maxPhysAddr: 46, gbPages: false } });
  assert.equal(no1g.failure?.reason, 'reserved-bit');
  assert.equal(no1g.failure?.level, 3);
  assert.equal(no1g.failure?.errorCode, 0x9); // P | RSVD
  assert.match(renderChain(no1g), /FAULT: #PF, reserved-bit at level 3: .*error code 0x9 \(protection, read, supervisor, reserved-bit\)/);
});

test('a not-present PTE is a #PF at level 1 with the error code of the access checked', () => {
  const gva = 0x40_5000n;
  const c = chainFor(gva, (t) => t.map(0x40_4000n, 0x4000n, PAGE_4K, USER), {
    access: { user: true, write: true }, kvm: { gva, gpa: 0xffff_ffff_ffff_ffffn, valid: false },
  });
  assert.deepEqual({ ...c.failure, message: undefined }, { stage: 'guest', reason: 'not-present', level: 1, errorCode: 0x6, message: undefined });
  assert.equal(c.gpa, undefined);
  assert.equal(c.memslot, undefined);
  assert.equal(c.kvm?.agrees, true);
  const text = renderChain(c);
  assert.match(text, /L1 PTE .* = 0x0000000000000000 {2}\(empty\)\n {2}FAULT: #PF, not-present at level 1: PTE\[5\] at 0x[0-9a-f]+ is not present; error code 0x6 \(not-present, write, user\)/);
  assert.match(text, /KVM_TRANSLATE: no translation \(valid = 0\); agrees: both fault/);
  assert.doesNotMatch(text, /== Stage 2/);
  assert.match(text, /Result: GVA 0x405000; stopped at the guest stage: #PF at level 1/);
  // A missing PML4 entry stops at level 4.
  const top = chainFor(0x7fff_ffff_0000n, (t) => t.map(0x40_4000n, 0x4000n));
  assert.equal(top.failure?.level, 4);
  assert.equal(top.guest.kind === 'walk' && top.guest.result.steps.length, 1);
});

test('5-level paging adds [P4D]', () => {
  const gva = 0x01_7f00_0040_1234n;
  const c = chainFor(gva, (t) => t.map(gva & ~0xfffn, 0x5000n, PAGE_4K, USER), {}, 5);
  assert.equal(c.paging.mode, '5-level');
  assert.equal(c.gpa, 0x5234n);
  assert.match(renderChain(c), /GVA 0x17f0000401234 = \[PGD 0x1\] \[P4D 0xfe\] \[PUD 0x0\] \[PMD 0x2\] \[PTE 0x1\] \[Offset 0x234\]/);
});

test('hidden PFNs are said plainly, never printed as HPA 0; the EPT view explains its gap', () => {
  const c = chainFor(0x40_1000n, (t) => t.map(0x40_1000n, 0x9000n), { pagemap: fakePagemap('hidden'), ept: fakeEpt([]) });
  assert.equal(c.hpa, undefined);
  assert.equal(c.failure?.stage, 'host');
  assert.equal(c.failure?.reason, 'pfn-hidden');
  const text = renderChain(c);
  assert.match(text, /PFN hidden by the kernel \(PFNs are hidden: reading them needs CAP_SYS_ADMIN \(run as root\)\): the HPA is unknown, not 0/);
  assert.doesNotMatch(text, /HPA 0x0\b|PFN 0x0\b/);
  assert.match(text, /\(the view maps nothing while PFNs are hidden\)/);
  assert.equal((chainJson(c).host as { info: { pfnHidden: boolean } }).info.pfnHidden, true);
});

test('pages the host has not populated, GPAs outside the memslots, and a stale EPT view', () => {
  const absent = chainFor(0x40_1000n, (t) => t.map(0x40_1000n, 0x9000n), { pagemap: fakePagemap('absent'), ept: fakeEpt([]) });
  assert.equal(absent.failure?.reason, 'host-not-present');
  assert.match(renderChain(absent), /not present: the host has not populated this page[\s\S]*KVM would take this EPT violation and fault one in/);

  const mmio = chainFor(0x40_1000n, (t) => t.map(0x40_1000n, 0x1_0000_1000n), { ept: fakeEpt([]) });
  assert.equal(mmio.failure?.stage, 'memslot');
  assert.equal(mmio.hva, undefined);
  assert.match(renderChain(mmio), /FAULT: GPA 0x100001000 is outside every memslot: a guest access would exit to the VMM as MMIO/);

  const stale = chainFor(0x40_1000n, (t) => t.map(0x40_1000n, 0x9000n), { ept: fakeEpt([]) });
  assert.equal(stale.ept?.agreesWithHost, false);
  assert.match(renderChain(stale), /\(the host page is present now: the view predates it \(refresh it\)\)/);
});

test('KVM_TRANSLATE disagreement and paging off are reported, not thrown', () => {
  const c = chainFor(0x40_1000n, (t) => t.map(0x40_1000n, 0x9000n), { kvm: { gva: 0x40_1000n, gpa: 0xa000n, valid: true } });
  assert.equal(c.kvm?.agrees, false);
  assert.match(renderChain(c), /KVM_TRANSLATE: GPA 0xa000; DISAGREES: the walk gives GPA 0x9000/);

  const { memory } = guestMemory();
  const real = translateChainSync(memory, { cr0: 0x60000010n, cr3: 0n, cr4: 0n, efer: 0n }, 0x7c00n, { features: FEATURES, pagemap: fakePagemap() });
  assert.equal(real.guest.kind, 'identity');
  assert.equal(real.gpa, 0x7c00n);
  assert.equal(real.hpa, 0x1_0000_7c00n);
  assert.match(renderChain(real), /paging is off \(real mode, CR0\.PE = 0\): the address is used as a linear address and GVA = GPA/);
  assert.equal(guestPaging({ cr0: 0x80000011n, cr3: 0n, cr4: 0x20n, efer: 0n }, FEATURES).mode, 'legacy');
  const legacy = translateChainSync(memory, { cr0: 0x80000011n, cr3: 0n, cr4: 0x20n, efer: 0n }, 0x1000n, { features: FEATURES, pagemap: fakePagemap() });
  assert.equal(legacy.failure?.reason, 'unsupported-mode');
  assert.match(renderChain(legacy), /PAE paging without long mode \(EFER\.LMA = 0\) is not walked here/);
});

test('chainJson is JSON-safe: BigInts as 0x-hex strings, the splits included', () => {
  const c = chainFor(0x40_1234n, (t) => t.map(0x40_0000n, 0x60_0000n, PAGE_2M, USER), { ept: fakeEpt([[0x60_1000n, PAGE_4K]]) });
  const j = JSON.parse(JSON.stringify(chainJson(c))) as Record<string, any>;
  assert.equal(j.gva, '0x401234');
  assert.equal(j.gpa, '0x601234');
  assert.equal(j.hva, '0x7f0000601234');
  assert.equal(j.hpa, '0x100601234');
  assert.equal(j.complete, true);
  assert.equal(j.pageSize, PAGE_2M);
  assert.equal(j.paging.mode, '4-level');
  assert.equal(j.paging.cr3, '0x10000');
  assert.equal(j.guest.format, undefined, 'the format lives in paging.format');
  assert.equal(j.guest.result.steps[2].entry, '0x600087'); // 0x600000 | P RW US PS
  assert.deepEqual(j.stage1Fields.map((f: { name: string; value: string }) => `${f.name}=${f.value}`), ['PGD=0x0', 'PUD=0x0', 'PMD=0x2', 'Offset=0x1234']);
  assert.deepEqual(j.eptFields.map((f: { name: string }) => f.name), ['PML4', 'PDPT', 'PD', 'PT', 'Offset']);
  assert.equal(j.ept.result.address, '0x100601234');
  assert.equal(j.ept.agreesWithHost, true);
  assert.equal(j.host.info.hpa, '0x100601234');
  assert.equal(j.failure, undefined);
});
