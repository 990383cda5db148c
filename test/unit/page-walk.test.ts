import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import {
  ByteMemory,
  EPT,
  FastWalker,
  PAGE_1G,
  PAGE_2M,
  PAGE_4K,
  PageTableBuilder,
  PhysAccessError,
  X86,
  decodeFlags,
  eptMemoryType,
  formatFlags,
  makeEptp,
  pkeyBits,
  walk,
  walkFast,
} from '../../src/translate/page-walk.js';
import type { Access, EptFormat, FastWalkInfo, PageSize, PagingFormat, PhysReader, WalkFault, WalkOk, X86Format } from '../../src/translate/page-walk.js';

// GuestMemory must be usable as a reader as it is (checked at compile time only).
const guestMemoryIsAReader = (m: GuestMemory): PhysReader => m;
void guestMemoryIsAReader;

const x86 = (o: Partial<X86Format> = {}): X86Format => ({ kind: 'x86', levels: 4, nxe: true, pke: false, ...o });
const ept = (o: Partial<EptFormat> = {}): EptFormat => ({ kind: 'ept', levels: 4, ...o });

function ok(r: WalkOk | WalkFault): WalkOk {
  if (!r.ok) assert.fail(`expected a translation, got ${r.reason}: ${r.message}`);
  return r;
}
function fault(r: WalkOk | WalkFault): WalkFault {
  if (r.ok) assert.fail(`expected a fault, got 0x${r.address.toString(16)}`);
  return r;
}

/** Every translator must agree with walk(): the fast paths are checked wherever walk() is. */
function fastAgrees(reader: PhysReader, root: bigint, va: bigint, format: PagingFormat, r: WalkOk | WalkFault): void {
  const info: FastWalkInfo = { pageSize: -1, level: -1 };
  const pa = walkFast(reader, root, va, format, info);
  const viaU64 = walkFast({ readU64: (a) => reader.readU64(a) }, root, va, format);
  if (r.ok) {
    assert.equal(pa, r.address, 'walkFast address');
    assert.equal(info.pageSize, r.pageSize, 'walkFast page size');
    assert.equal(info.level, r.level, 'walkFast level');
    assert.equal(viaU64, r.address, 'walkFast via readU64 only');
  } else if (r.reason !== 'protection') {
    assert.equal(pa, -1n, `walkFast should fail (${r.reason})`);
    assert.equal(info.pageSize, 0);
    assert.equal(info.level, r.level, 'walkFast failure level');
    assert.equal(viaU64, -1n);
  }
}

function check(b: PageTableBuilder, va: bigint, format: PagingFormat = b.format, access?: Access): WalkOk | WalkFault {
  const r = walk(b, b.root, va, format, access);
  fastAgrees(b, b.root, va, format, r);
  return r;
}

const VA4 = 0x0000_7f12_4000_0000n; // 1 GiB aligned, canonical for 48 bits
const VA5 = 0x00ab_7f12_4000_0000n; // needs LA57: bits 55:48 set
const PA = 0x2_8000_0000n; // 10 GiB, 1 GiB aligned
const SIZES: [PageSize, number, string][] = [
  [PAGE_4K, 1, 'PT'],
  [PAGE_2M, 2, 'PD'],
  [PAGE_1G, 3, 'PDPT'],
];
const idx = (va: bigint, level: number): number => Number((va >> BigInt(3 + 9 * level)) & 511n);

for (const levels of [4, 5] as const) {
  for (const [size, leafLevel, leafTable] of SIZES) {
    test(`x86 ${levels}-level: ${size / 1024} KiB leaf translates, with one step per level`, () => {
      const f = x86({ levels });
      const b = new PageTableBuilder(f);
      const va = levels === 4 ? VA4 : VA5;
      b.map(va, PA, size, X86.P | X86.RW | X86.US);
      const addr = va + BigInt(size) - 8n; // the last qword, so every offset bit matters
      const r = ok(check(b, addr));
      assert.equal(r.address, PA + BigInt(size) - 8n);
      assert.equal(r.pageBase, PA);
      assert.equal(r.offset, BigInt(size) - 8n);
      assert.equal(r.pageSize, size);
      assert.equal(r.level, leafLevel);
      const names = ['PML5', 'PML4', 'PDPT', 'PD', 'PT'].slice(5 - levels, 5 - leafLevel + 1);
      assert.deepEqual(
        r.steps.map((s) => s.name),
        names,
      );
      assert.equal(r.steps.at(-1)!.name, leafTable);
      assert.equal(r.steps[0]!.tableAddr, b.root);
      for (const [i, s] of r.steps.entries()) {
        assert.equal(s.level, levels - i);
        assert.equal(s.index, idx(addr, s.level));
        assert.equal(s.entryAddr, s.tableAddr + BigInt(s.index * 8));
        assert.equal(s.entry, b.readU64(s.entryAddr));
        assert.equal(s.leaf, i === r.steps.length - 1);
        if (i > 0) assert.equal(s.tableAddr, r.steps[i - 1]!.entry & 0xffffffffff000n);
      }
      assert.deepEqual(r.perms, { read: true, write: true, execute: true, user: true, userExecute: true });
    });
  }
}

test('x86 walk: table indexes of a kernel address come from bits 47:39, 38:30, 29:21, 20:12', () => {
  const b = new PageTableBuilder(x86());
  const va = 0xffff_8000_1234_5678n;
  b.map(va & ~0xfffn, 0x7000n);
  const r = ok(check(b, va));
  assert.deepEqual(
    r.steps.map((s) => s.index),
    [256, 0, 145, 325],
  );
  assert.equal(r.address, 0x7678n);
  // A negative bigint is the same sign-extended address.
  assert.equal(ok(walk(b, b.root, va - (1n << 64n), x86())).address, 0x7678n);
  // CR3 flag bits (PCD, PWT, PCID) do not move the root.
  assert.equal(ok(walk(b, b.root | 0x18n, va, x86())).address, 0x7678n);
});

test('x86 decodeFlags: every flag of a PTE, and formatFlags in SDM order', () => {
  const entry = X86.P | X86.RW | X86.US | X86.PWT | X86.PCD | X86.A | X86.D | X86.PAT | X86.G | X86.NX | pkeyBits(11) | 0x1234000n;
  const flags = decodeFlags(entry, 1, x86({ pke: true }));
  assert.deepEqual(flags, { P: true, RW: true, US: true, PWT: true, PCD: true, A: true, D: true, G: true, PAT: true, NX: true, pkey: 11 });
  assert.equal(formatFlags(flags), 'P RW US PWT PCD A D G PAT NX pkey=11');
  // Without CR4.PKE the key bits are not a key.
  assert.equal('pkey' in decodeFlags(entry, 1, x86()), false);
});

test('x86 decodeFlags: each flag alone decodes as itself and nothing else', () => {
  const cases: [string, bigint, number][] = [
    ['RW', X86.RW, 1],
    ['US', X86.US, 1],
    ['PWT', X86.PWT, 1],
    ['PCD', X86.PCD, 1],
    ['A', X86.A, 1],
    ['D', X86.D, 1],
    ['PAT', X86.PAT, 1],
    ['G', X86.G, 1],
    ['NX', X86.NX, 1],
    ['PS', X86.PS, 2],
    ['PAT', X86.PS | X86.PAT_LARGE, 2],
  ];
  for (const [name, bits, level] of cases) {
    const flags = decodeFlags(X86.P | bits, level, x86({ pke: true }));
    const set = Object.entries(flags)
      .filter(([k, v]) => v === true && k !== 'P' && !(k === 'PS' && name === 'PAT'))
      .map(([k]) => k);
    assert.deepEqual(set, [name], `${name} at level ${level}`);
    assert.equal(flags.P, true);
  }
  assert.equal(decodeFlags(pkeyBits(3) | X86.P, 1, x86({ pke: true })).pkey, 3);
  assert.equal(decodeFlags(0n, 1, x86()).P, false);
});

test('x86 decodeFlags: leaf-only flags are omitted on table entries; the brief example renders exactly', () => {
  const table = decodeFlags(X86.P | X86.RW | X86.D | X86.G | pkeyBits(3), 2, x86({ pke: true }));
  assert.deepEqual(Object.keys(table), ['P', 'RW', 'US', 'PWT', 'PCD', 'A', 'PS', 'NX']);
  assert.deepEqual(Object.keys(decodeFlags(X86.P, 4, x86())), ['P', 'RW', 'US', 'PWT', 'PCD', 'A', 'PS', 'NX']);
  const large = decodeFlags(X86.P | X86.RW | X86.US | X86.A | X86.D | X86.PS | X86.NX | pkeyBits(3), 2, x86({ pke: true }));
  assert.equal(formatFlags(large), 'P RW US A D PS NX pkey=3');
});

test('x86 walk: effective rights are the AND of R/W and U/S and the OR of XD over all levels', () => {
  const b = new PageTableBuilder(x86());
  b.map(VA4, PA, PAGE_4K, X86.P | X86.RW | X86.US);
  // Clear R/W in the PDPTE: the page becomes read-only although its PTE says writable.
  const pdpte = b.entryAddress(VA4, 3)!;
  b.writeU64(pdpte, b.readU64(pdpte) & ~X86.RW);
  let r = ok(check(b, VA4));
  assert.deepEqual(r.perms, { read: true, write: false, execute: true, user: true, userExecute: true });
  // XD in the PML4E makes everything below non-executable.
  const pml4e = b.entryAddress(VA4, 4)!;
  b.writeU64(pml4e, b.readU64(pml4e) | X86.NX);
  r = ok(check(b, VA4));
  assert.equal(r.perms.execute, false);
  assert.equal(r.perms.userExecute, false);
  // Tables without U/S make the leaf supervisor-only.
  const sup = new PageTableBuilder(x86(), { tableFlags: X86.P | X86.RW });
  sup.map(VA4, PA, PAGE_4K, X86.P | X86.RW | X86.US);
  assert.equal(ok(check(sup, VA4)).perms.user, false);
});

test('x86 walk: PAT index and protection key of the leaf', () => {
  const b = new PageTableBuilder(x86({ pke: true }));
  b.map(VA4, PA, PAGE_4K, X86.P | X86.PWT | X86.PCD | X86.PAT | pkeyBits(9));
  b.map(VA4 + BigInt(PAGE_2M), PA + BigInt(PAGE_2M), PAGE_2M, X86.P | X86.PAT_LARGE);
  const r = ok(check(b, VA4));
  assert.equal(r.patIndex, 7);
  assert.equal(r.pkey, 9);
  assert.equal(ok(check(b, VA4 + BigInt(PAGE_2M))).patIndex, 4);
  assert.equal(ok(walk(b, b.root, VA4, x86())).pkey, undefined);
});

for (const levels of [4, 5] as const) {
  test(`x86 ${levels}-level: a not-present entry at each level faults at that level`, () => {
    const f = x86({ levels });
    const va = levels === 4 ? VA4 : VA5;
    for (let level = levels; level >= 1; level--) {
      const b = new PageTableBuilder(f);
      b.map(va, PA);
      const at = b.entryAddress(va, level)!;
      b.writeU64(at, b.readU64(at) & ~X86.P | 0x7ff0_0000_0000_0000n); // reserved bits do not matter when P = 0
      const r = fault(check(b, va));
      assert.equal(r.reason, 'not-present');
      assert.equal(r.level, level);
      assert.equal(r.steps.length, levels - level + 1);
      assert.equal(r.errorCode, 0);
      assert.match(r.message, /not present/);
      assert.equal(fault(walk(b, b.root, va, f, { write: true, user: true })).errorCode, 0b110);
      assert.equal(fault(walk(b, b.root, va, f, { fetch: true })).errorCode, 0b1_0000);
      // Without NXE (and SMEP) the CPU does not report instruction fetches.
      assert.equal(fault(walk(b, b.root, va, x86({ levels, nxe: false }), { fetch: true })).errorCode, 0);
    }
  });
}

test('x86 reserved bits: physical-address bits at or above MAXPHYADDR', () => {
  const b = new PageTableBuilder(x86());
  b.map(VA4, PA, PAGE_4K, X86.P | X86.RW | (1n << 46n));
  let r = fault(check(b, VA4));
  assert.equal(r.reason, 'reserved-bit');
  assert.equal(r.level, 1);
  assert.equal(r.errorCode, 0b1001);
  assert.match(r.message, /bits 51:46/);
  assert.equal(fault(walk(b, b.root, VA4, x86(), { write: true, user: true })).errorCode, 0b1111);
  // With a 52-bit MAXPHYADDR the same bit is an address bit.
  assert.equal(ok(check(b, VA4, x86({ maxPhysAddr: 52 }))).address, PA | (1n << 46n));
  assert.throws(() => walk(b, b.root, VA4, x86({ maxPhysAddr: 53 })), /maxPhysAddr must be an integer in 32..52/);
  // In a table entry, at its own level.
  const t = new PageTableBuilder(x86());
  t.map(VA4, PA);
  const pml4e = t.entryAddress(VA4, 4)!;
  t.writeU64(pml4e, t.readU64(pml4e) | (1n << 51n));
  r = fault(check(t, VA4));
  assert.equal(r.reason, 'reserved-bit');
  assert.equal(r.level, 4);
  assert.equal(r.steps.length, 1);
});

test('x86 reserved bits: PS in a PML4E and in a PML5E', () => {
  for (const levels of [4, 5] as const) {
    const b = new PageTableBuilder(x86({ levels }));
    const va = levels === 4 ? VA4 : VA5;
    b.map(va, PA);
    const top = b.entryAddress(va, levels)!;
    b.writeU64(top, b.readU64(top) | X86.PS);
    const r = fault(check(b, va));
    assert.equal(r.reason, 'reserved-bit');
    assert.equal(r.level, levels);
    assert.equal(r.errorCode, 0b1001);
    assert.match(r.message, new RegExp(`PS set in a PML${levels}E`));
    assert.equal(r.steps[0]!.flags.PS, true);
  }
});

test('x86 reserved bits: NX without EFER.NXE, in a leaf and in a table entry', () => {
  const b = new PageTableBuilder(x86({ nxe: false }));
  b.map(VA4, PA, PAGE_4K, X86.P | X86.NX);
  let r = fault(check(b, VA4));
  assert.equal(r.reason, 'reserved-bit');
  assert.equal(r.level, 1);
  assert.match(r.message, /NXE = 0/);
  // The same entry is fine with NXE: then it only forbids fetches.
  assert.equal(ok(check(b, VA4, x86())).perms.execute, false);
  const t = new PageTableBuilder(x86({ nxe: false }));
  t.map(VA4, PA);
  const pde = t.entryAddress(VA4, 2)!;
  t.writeU64(pde, t.readU64(pde) | X86.NX);
  r = fault(check(t, VA4));
  assert.equal(r.reason, 'reserved-bit');
  assert.equal(r.level, 2);
});

test('x86 reserved bits: 1 GiB pages without support, and misaligned large-page frames', () => {
  const b = new PageTableBuilder(x86());
  b.map(VA4, PA, PAGE_1G);
  assert.equal(ok(check(b, VA4)).pageSize, PAGE_1G);
  const r = fault(check(b, VA4, x86({ gbPages: false })));
  assert.equal(r.reason, 'reserved-bit');
  assert.equal(r.level, 3);
  assert.match(r.message, /1 GiB pages are unsupported/);
  // Bits 20:13 of a 2 MiB leaf and 29:13 of a 1 GiB leaf are reserved; bit 12 is PAT.
  for (const [size, level, top] of [[PAGE_2M, 2, 20], [PAGE_1G, 3, 29]] as const) {
    for (let bit = 13; bit <= top; bit++) {
      const m = new PageTableBuilder(x86());
      m.map(VA4, PA, size, X86.P | (1n << BigInt(bit)));
      const r = fault(check(m, VA4));
      assert.equal(r.reason, 'reserved-bit', `bit ${bit} of a ${size}-byte leaf`);
      assert.equal(r.level, level);
    }
    const m = new PageTableBuilder(x86());
    m.map(VA4, PA, size, X86.P | X86.PAT_LARGE);
    assert.equal(ok(check(m, VA4 + 0x1234n)).address, PA + 0x1234n);
  }
});

test('x86 non-canonical addresses: 48-bit and 57-bit rules', () => {
  const b4 = new PageTableBuilder(x86());
  b4.map(0x0000_7fff_ffff_f000n, PA);
  b4.map(0xffff_8000_0000_0000n, PA);
  for (const va of [0x0000_8000_0000_0000n, 0xffff_7fff_ffff_f000n, 0x8000_0000_0000_0000n]) {
    const r = fault(check(b4, va));
    assert.equal(r.reason, 'non-canonical', `0x${va.toString(16)}`);
    assert.equal(r.level, 4);
    assert.equal(r.errorCode, 0);
    assert.equal(r.steps.length, 0);
    assert.match(r.message, /48-bit/);
  }
  assert.equal(ok(check(b4, 0x0000_7fff_ffff_f123n)).address, PA + 0x123n);
  assert.equal(ok(check(b4, 0xffff_8000_0000_0456n)).address, PA + 0x456n);

  const b5 = new PageTableBuilder(x86({ levels: 5 }));
  b5.map(0x0000_8000_0000_0000n, PA); // non-canonical with 4 levels, fine with 5
  b5.map(0xff00_0000_0000_0000n, PA);
  for (const va of [0x0100_0000_0000_0000n, 0xfe00_0000_0000_0000n]) {
    const r = fault(check(b5, va));
    assert.equal(r.reason, 'non-canonical');
    assert.equal(r.level, 5);
    assert.match(r.message, /57-bit/);
  }
  assert.equal(ok(check(b5, 0x0000_8000_0000_0010n)).address, PA + 0x10n);
  assert.equal(ok(check(b5, 0xff00_0000_0000_0020n)).address, PA + 0x20n);
  assert.throws(() => b4.map(0x0000_8000_0000_0000n, PA), RangeError);
});

test('x86 protection: writes to read-only pages, with and without CR0.WP', () => {
  const b = new PageTableBuilder(x86());
  b.map(VA4, PA, PAGE_4K, X86.P | X86.US);
  let r = fault(check(b, VA4, x86(), { write: true }));
  assert.equal(r.reason, 'protection');
  assert.equal(r.level, 1);
  assert.equal(r.errorCode, 0b011);
  assert.match(r.message, /supervisor write/);
  assert.equal(ok(walk(b, b.root, VA4, x86({ wp: false }), { write: true })).address, PA);
  r = fault(walk(b, b.root, VA4, x86({ wp: false }), { write: true, user: true }));
  assert.equal(r.errorCode, 0b111);
  assert.equal(ok(walk(b, b.root, VA4, x86(), { user: true })).address, PA);
  // A 2 MiB page reports its own level.
  b.map(VA4 + BigInt(PAGE_1G), PA, PAGE_2M, X86.P);
  assert.equal(fault(walk(b, b.root, VA4 + BigInt(PAGE_1G), x86(), { write: true })).level, 2);
});

test('x86 protection: user access to supervisor pages, and NX fetches', () => {
  const b = new PageTableBuilder(x86());
  b.map(VA4, PA, PAGE_4K, X86.P | X86.RW);
  assert.equal(fault(walk(b, b.root, VA4, x86(), { user: true })).errorCode, 0b101);
  assert.equal(fault(walk(b, b.root, VA4, x86(), { user: true, write: true })).errorCode, 0b111);
  assert.equal(ok(walk(b, b.root, VA4, x86(), { write: true })).address, PA);

  const nx = new PageTableBuilder(x86());
  nx.map(VA4, PA, PAGE_4K, X86.P | X86.RW | X86.US | X86.NX);
  const r = fault(walk(nx, nx.root, VA4, x86(), { fetch: true }));
  assert.equal(r.reason, 'protection');
  assert.equal(r.errorCode, 0b1_0001);
  assert.match(r.message, /supervisor fetch/);
  assert.equal(fault(walk(nx, nx.root, VA4, x86(), { fetch: true, user: true })).errorCode, 0b1_0101);
  // Fetch takes precedence over write: no W bit.
  assert.equal(fault(walk(nx, nx.root, VA4, x86(), { fetch: true, write: true })).errorCode, 0b1_0001);
  assert.equal(ok(walk(nx, nx.root, VA4, x86(), { write: true, user: true })).address, PA);
});

test('x86 protection: SMEP and SMAP keep the supervisor off user pages', () => {
  const b = new PageTableBuilder(x86());
  b.map(VA4, PA, PAGE_4K, X86.P | X86.RW | X86.US);
  assert.equal(ok(walk(b, b.root, VA4, x86(), { fetch: true })).address, PA);
  assert.equal(fault(walk(b, b.root, VA4, x86({ smep: true }), { fetch: true })).errorCode, 0b1_0001);
  // SMEP makes the CPU report I/D even without NXE.
  assert.equal(fault(walk(b, b.root, VA4, x86({ smep: true, nxe: false }), { fetch: true })).errorCode, 0b1_0001);
  assert.equal(ok(walk(b, b.root, VA4, x86({ smap: true }))).address, PA); // no access given: no check
  assert.equal(fault(walk(b, b.root, VA4, x86({ smap: true }), {})).errorCode, 0b001);
  assert.equal(fault(walk(b, b.root, VA4, x86({ smap: true }), { write: true })).errorCode, 0b011);
  assert.equal(ok(walk(b, b.root, VA4, x86({ smap: true }), { ac: true })).address, PA);
  assert.equal(ok(walk(b, b.root, VA4, x86({ smap: true }), { fetch: true })).address, PA);
  assert.equal(ok(walk(b, b.root, VA4, x86({ smap: true, smep: true }), { user: true, write: true })).address, PA);
});

test('x86 protection keys: PKRU AD/WD for user pages, PK bit in the error code', () => {
  const f = x86({ pke: true });
  const b = new PageTableBuilder(f);
  b.map(VA4, PA, PAGE_4K, X86.P | X86.RW | X86.US | pkeyBits(5));
  b.map(VA4 + 0x1000n, PA, PAGE_4K, X86.P | X86.RW | pkeyBits(5)); // supervisor page: keys do not apply
  b.map(VA4 + 0x2000n, PA, PAGE_4K, X86.P | X86.US | pkeyBits(5)); // read-only user page
  const AD5 = 1 << 10;
  const WD5 = 1 << 11;
  let r = fault(walk(b, b.root, VA4, f, { user: true, pkru: AD5 }));
  assert.equal(r.reason, 'protection');
  assert.equal(r.errorCode, 0b10_0101);
  assert.match(r.message, /pkey 5/);
  assert.equal(fault(walk(b, b.root, VA4, f, { user: true, write: true, pkru: WD5 })).errorCode, 0b10_0111);
  assert.equal(ok(walk(b, b.root, VA4, f, { user: true, pkru: WD5 })).pkey, 5);
  // Supervisors obey WD only with CR0.WP, and AD always.
  assert.equal(fault(walk(b, b.root, VA4, f, { write: true, pkru: WD5 })).errorCode, 0b10_0011);
  assert.equal(ok(walk(b, b.root, VA4, x86({ pke: true, wp: false }), { write: true, pkru: WD5 })).address, PA);
  assert.equal(fault(walk(b, b.root, VA4, f, { pkru: AD5 })).errorCode, 0b10_0001);
  // Other keys, fetches and supervisor pages are unaffected.
  assert.equal(ok(walk(b, b.root, VA4, f, { user: true, pkru: 0b11 })).address, PA);
  assert.equal(ok(walk(b, b.root, VA4, f, { user: true, fetch: true, pkru: AD5 })).address, PA);
  assert.equal(ok(walk(b, b.root, VA4 + 0x1000n, f, { pkru: AD5 | WD5, write: true })).address, PA);
  // Without CR4.PKE, PKRU is not consulted.
  assert.equal(ok(walk(b, b.root, VA4, x86(), { user: true, pkru: AD5 })).address, PA);
  // A key violation on top of a read-only page: both P and PK.
  assert.equal(fault(walk(b, b.root, VA4 + 0x2000n, f, { user: true, write: true, pkru: WD5 })).errorCode, 0b10_0111);
});

const EPT_RWX_WB = EPT.R | EPT.W | EPT.X | eptMemoryType(6);

for (const levels of [4, 5] as const) {
  for (const [size, leafLevel] of SIZES) {
    test(`EPT ${levels}-level: ${size / 1024} KiB leaf translates`, () => {
      const f = ept({ levels });
      const b = new PageTableBuilder(f);
      const gpa = levels === 4 ? 0x0000_8012_4000_0000n : 0x00ab_7f12_4000_0000n; // bit 47 is a plain GPA bit
      b.map(gpa, PA, size, EPT_RWX_WB | EPT.IPAT);
      const r = ok(check(b, gpa + BigInt(size) - 1n));
      assert.equal(r.address, PA + BigInt(size) - 1n);
      assert.equal(r.pageSize, size);
      assert.equal(r.level, leafLevel);
      assert.equal(r.steps.length, levels - leafLevel + 1);
      assert.equal(r.steps[0]!.name, levels === 5 ? 'EPT PML5' : 'EPT PML4');
      assert.equal(r.memoryType, 6);
      assert.equal(r.ignorePat, true);
      assert.deepEqual(r.perms, { read: true, write: true, execute: true, user: true, userExecute: true });
      assert.equal(r.steps.at(-1)!.flags.large, leafLevel > 1 ? true : undefined);
    });
  }
}

test('EPT decodeFlags: R W X, memory type, ignore-PAT, large page, accessed/dirty, user-execute', () => {
  const leaf = EPT.R | EPT.W | EPT.X | eptMemoryType(6) | EPT.IPAT | EPT.A | EPT.D | EPT.XU;
  const flags = decodeFlags(leaf, 1, ept());
  assert.deepEqual(flags, { R: true, W: true, X: true, memType: 6, IPAT: true, A: true, D: true });
  assert.equal(formatFlags(flags), 'R W X memType=6 IPAT A D');
  assert.equal(formatFlags(decodeFlags(leaf | EPT.LARGE, 2, ept({ mbec: true }))), 'R W X XU memType=6 IPAT large A D');
  // A table entry has no memory type, ignore-PAT or dirty flag.
  assert.deepEqual(decodeFlags(EPT.R | EPT.A | EPT.D, 3, ept()), { R: true, W: false, X: false, large: false, A: true });
  assert.deepEqual(decodeFlags(EPT.X | eptMemoryType(4), 1, ept()), { R: false, W: false, X: true, memType: 4, IPAT: false, A: false, D: false });
  // A 4 KiB leaf has no large-page bit.
  assert.equal('large' in decodeFlags(leaf, 1, ept()), false);
});

test('EPT walk: rights are the AND over all levels; violations give the exit qualification', () => {
  const b = new PageTableBuilder(ept());
  b.map(0x1000_0000n, PA, PAGE_4K, EPT.R | EPT.X | eptMemoryType(6));
  const r = ok(check(b, 0x1000_0123n));
  assert.deepEqual(r.perms, { read: true, write: false, execute: true, user: true, userExecute: true });
  let v = fault(walk(b, b.root, 0x1000_0123n, ept(), { write: true }));
  assert.equal(v.reason, 'protection');
  assert.equal(v.level, 1);
  assert.equal(v.errorCode, 0b10_1010); // write; readable, executable
  assert.match(v.message, /EPT violation/);
  // Clear X in the EPT PDE: the page stops being executable.
  const pde = b.entryAddress(0x1000_0000n, 2)!;
  b.writeU64(pde, b.readU64(pde) & ~EPT.X);
  assert.equal(ok(check(b, 0x1000_0000n)).perms.execute, false);
  v = fault(walk(b, b.root, 0x1000_0000n, ept(), { fetch: true }));
  assert.equal(v.errorCode, 0b00_1100); // fetch; readable only
});

test('EPT not present at each level: the qualification says nothing is permitted', () => {
  for (let level = 4; level >= 1; level--) {
    const b = new PageTableBuilder(ept());
    b.map(0x1000_0000n, PA);
    const at = b.entryAddress(0x1000_0000n, level)!;
    b.writeU64(at, b.readU64(at) & ~7n);
    const r = fault(check(b, 0x1000_0000n));
    assert.equal(r.reason, 'not-present');
    assert.equal(r.level, level);
    assert.equal(r.errorCode, 0b001);
    assert.equal(fault(walk(b, b.root, 0x1000_0000n, ept(), { write: true })).errorCode, 0b010);
    assert.equal(fault(walk(b, b.root, 0x1000_0000n, ept(), { fetch: true })).errorCode, 0b100);
  }
});

test('EPT misconfigurations: W without R, reserved memory types, large page at level 4, reserved bits', () => {
  const cases: [string, number, (b: PageTableBuilder, at: bigint) => void, RegExp][] = [
    ['write-only leaf', 1, (b, at) => b.writeU64(at, (b.readU64(at) & ~7n) | EPT.W), /write permitted without read/],
    ['write+execute table', 4, (b, at) => b.writeU64(at, (b.readU64(at) & ~7n) | EPT.W | EPT.X), /write permitted without read/],
    ['memory type 2', 1, (b, at) => b.writeU64(at, (b.readU64(at) & ~0x38n) | eptMemoryType(2)), /memory type 2/],
    ['memory type 3', 1, (b, at) => b.writeU64(at, (b.readU64(at) & ~0x38n) | eptMemoryType(3)), /memory type 3/],
    ['memory type 7', 1, (b, at) => b.writeU64(at, (b.readU64(at) & ~0x38n) | eptMemoryType(7)), /memory type 7/],
    ['large page at level 4', 4, (b, at) => b.writeU64(at, b.readU64(at) | EPT.LARGE), /large page in an EPT PML4E/],
    ['address bit above MAXPHYADDR', 2, (b, at) => b.writeU64(at, b.readU64(at) | (1n << 50n)), /bits 51:46/],
    ['bits 6:3 of a table entry', 2, (b, at) => b.writeU64(at, b.readU64(at) | 0x8n), /reserved bits 6:3/],
  ];
  for (const [what, level, spoil, why] of cases) {
    const b = new PageTableBuilder(ept());
    b.map(0x1000_0000n, PA);
    spoil(b, b.entryAddress(0x1000_0000n, level)!);
    const r = fault(check(b, 0x1000_0000n));
    assert.equal(r.reason, 'ept-misconfig', what);
    assert.equal(r.level, level, what);
    assert.equal(r.errorCode, 0, what);
    assert.match(r.message, why, what);
  }
  // Memory types 0, 1, 4, 5, 6 are all valid.
  for (const type of [0, 1, 4, 5, 6]) {
    const b = new PageTableBuilder(ept());
    b.map(0x1000_0000n, PA, PAGE_4K, EPT.R | eptMemoryType(type));
    assert.equal(ok(check(b, 0x1000_0000n)).memoryType, type);
  }
});

test('EPT: 1 GiB pages without support, misaligned large frames, and execute-only entries', () => {
  const b = new PageTableBuilder(ept());
  b.map(0x4000_0000n, PA, PAGE_1G);
  b.map(0x8000_0000n, PA, PAGE_2M, EPT_RWX_WB | (1n << 12n));
  b.map(0xc000_0000n, PA, PAGE_4K, EPT.X | eptMemoryType(6));
  assert.equal(ok(check(b, 0x4000_0000n)).pageSize, PAGE_1G);
  let r = fault(check(b, 0x4000_0000n, ept({ gbPages: false })));
  assert.equal(r.reason, 'ept-misconfig');
  assert.equal(r.level, 3);
  assert.match(fault(check(b, 0x8000_0000n)).message, /bits 20:12/);
  // EPT large leaves have no PAT bit: bits 20:12 (2 MiB) and 29:12 (1 GiB) are all reserved.
  for (const [size, level, top] of [[PAGE_2M, 2, 20], [PAGE_1G, 3, 29]] as const) {
    for (let bit = 12; bit <= top; bit++) {
      const m = new PageTableBuilder(ept());
      m.map(0n, PA, size, EPT_RWX_WB | (1n << BigInt(bit)));
      const v = fault(check(m, 0n));
      assert.equal(v.reason, 'ept-misconfig', `bit ${bit} of a ${size}-byte EPT leaf`);
      assert.equal(v.level, level);
    }
  }
  // Execute-only: a translation when supported (fetches only), a misconfiguration when not.
  r = fault(walk(b, b.root, 0xc000_0000n, ept(), { write: false }));
  assert.equal(r.reason, 'protection');
  assert.equal(r.errorCode, 0b10_0001);
  assert.equal(ok(walk(b, b.root, 0xc000_0000n, ept(), { fetch: true })).perms.read, false);
  assert.equal(ok(check(b, 0xc000_0000n)).address, PA);
  r = fault(check(b, 0xc000_0000n, ept({ executeOnly: false })));
  assert.equal(r.reason, 'ept-misconfig');
  assert.match(r.message, /execute-only/);
});

test('EPT mode-based execute control: XU governs fetches from user-mode linear addresses', () => {
  const f = ept({ mbec: true });
  const b = new PageTableBuilder(f);
  b.map(0x1000n, PA, PAGE_4K, EPT.R | EPT.X | eptMemoryType(6));
  b.map(0x2000n, PA, PAGE_4K, EPT.R | EPT.XU | eptMemoryType(6));
  b.map(0x3000n, PA, PAGE_4K, EPT.XU | eptMemoryType(6)); // present through XU alone
  assert.equal(ok(walk(b, b.root, 0x1000n, f, { fetch: true })).address, PA);
  let r = fault(walk(b, b.root, 0x1000n, f, { fetch: true, user: true }));
  assert.equal(r.reason, 'protection');
  assert.equal(r.errorCode, 0b010_1100); // fetch; readable, executable (supervisor), not user-executable
  r = fault(walk(b, b.root, 0x2000n, f, { fetch: true }));
  assert.equal(r.errorCode, 0b100_1100);
  assert.deepEqual(ok(walk(b, b.root, 0x2000n, f, { fetch: true, user: true })).perms, { read: true, write: false, execute: false, user: true, userExecute: true });
  assert.equal(ok(check(b, 0x3000n, f)).perms.userExecute, true);
  // Without MBEC, XU is ignored and the same entry is not present.
  assert.equal(fault(check(b, 0x3000n, ept())).reason, 'not-present');
});

test('EPT: EPTP as root, and guest-physical addresses wider than the walk', () => {
  const b = new PageTableBuilder(ept());
  b.map(0x1000n, PA);
  const eptp = makeEptp(b.root);
  assert.equal(eptp, b.root | 0x1en);
  assert.equal(makeEptp(0x5000n, 5, 0, true), 0x5060n);
  assert.throws(() => makeEptp(0x5008n), RangeError);
  assert.equal(ok(walk(b, eptp, 0x1abcn, ept())).address, PA + 0xabcn);
  assert.equal(walkFast(b, eptp, 0x1abcn, ept()), PA + 0xabcn);
  const r = fault(check(b, 1n << 48n));
  assert.equal(r.reason, 'non-canonical');
  assert.match(r.message, /wider than 48 bits/);
  assert.equal(fault(check(b, 0xffff_ffff_ffff_f000n)).reason, 'non-canonical');
  // 5-level EPT takes 57-bit addresses.
  const b5 = new PageTableBuilder(ept({ levels: 5 }));
  b5.map(1n << 56n, PA);
  assert.equal(ok(check(b5, (1n << 56n) + 5n)).address, PA + 5n);
  assert.equal(fault(check(b5, 1n << 57n)).reason, 'non-canonical');
});

test('read errors: a table outside the reader, and a root outside it', () => {
  const b = new PageTableBuilder(x86());
  b.map(VA4, PA);
  const pdpte = b.entryAddress(VA4, 3)!;
  b.writeU64(pdpte, 0x7000_0000n | X86.P | X86.RW);
  let r = fault(check(b, VA4));
  assert.equal(r.reason, 'read-error');
  assert.equal(r.level, 2);
  assert.equal(r.steps.length, 2);
  assert.equal(r.errorCode, 0);
  assert.match(r.message, /cannot read PDE at 0x70000000: physical access 0x70000000\+8 is outside the memory/);
  // A table above 4 GiB (beyond the direct window) is a read error for every path too.
  b.writeU64(pdpte, 0x1_2345_6000n | X86.P);
  assert.equal(fault(check(b, VA4)).level, 2);
  r = fault(walk(b, 0x9000_0000n, VA4, x86()));
  assert.equal(r.reason, 'read-error');
  assert.equal(r.level, 4);
  assert.equal(r.steps.length, 0);
  fastAgrees(b, 0x9000_0000n, VA4, x86(), r);
  // Whatever the reader throws is reported, not propagated.
  const thrower: PhysReader = {
    readU64: () => {
      throw new Error('guest-physical access 0x5000+8 is outside guest RAM');
    },
  };
  r = fault(walk(thrower, 0x5000n, 0n, x86()));
  assert.equal(r.reason, 'read-error');
  assert.match(r.message, /outside guest RAM/);
  assert.equal(walkFast(thrower, 0x5000n, 0n, x86()), -1n);
});

test('fast paths agree with walk() on randomly corrupted tables (both formats, all options)', () => {
  let seed = 0x2545f491;
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    return seed % n;
  };
  const bits = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 13, 20, 21, 29, 30, 31, 33, 40, 45, 46, 50, 52, 59, 62, 63];
  const formats: PagingFormat[] = [
    x86(),
    x86({ levels: 5 }),
    x86({ nxe: false }),
    x86({ gbPages: false, maxPhysAddr: 40 }),
    x86({ maxPhysAddr: 52 }),
    ept(),
    ept({ levels: 5 }),
    ept({ mbec: true, executeOnly: false }),
    ept({ gbPages: false }),
  ];
  let translated = 0;
  let failed = 0;
  for (const f of formats) {
    for (const base of [0x10_0000n, 0xffff_0000n, 0x1_0000_0000n]) {
      const b = new PageTableBuilder(f, { base, capacity: 1 });
      const va0 = f.levels === 5 ? 0x00ab_0000_0000_0000n : 0x0000_7f00_0000_0000n;
      b.map(va0, 0x4000_0000n, PAGE_1G);
      b.mapRange(va0 + 0x4000_0000n, 0x8000_0000n, 4 * PAGE_2M, PAGE_2M);
      b.mapRange(va0 + 0x8000_0000n, 0xc000_0000n, 16 * PAGE_4K, PAGE_4K);
      let copy = new ByteMemory(b.image(), b.base);
      const walker = new FastWalker(b, f);
      const entries = [...b.tables()].flatMap((t) => [...t.entries.keys()].filter((i) => t.entries[i] !== 0n).map((i) => t.addr + BigInt(i * 8)));
      for (let round = 0; round < 40; round++) {
        const at = entries[rand(entries.length)]!;
        b.writeU64(at, b.readU64(at) ^ (1n << BigInt(bits[rand(bits.length)]!)));
        if (round % 8 === 0) copy = new ByteMemory(b.image().slice(), b.base); // a snapshot after this change
        for (let k = 0; k < 12; k++) {
          const region = rand(4);
          const va =
            region === 3
              ? BigInt.asUintN(64, (BigInt(rand(65536)) << 48n) | BigInt(rand(2 ** 30)))
              : va0 + BigInt(region) * 0x4000_0000n + BigInt(region === 2 ? rand(16 * PAGE_4K + 8192) : rand(PAGE_1G));
          const r = walk(b, b.root, va, f);
          fastAgrees(b, b.root, va, f, r);
          const pa = walker.translateAddress(b.root, va);
          assert.equal(pa, r.ok ? r.address : -1n, 'FastWalker');
          assert.equal(walker.level, r.level, 'FastWalker level');
          if (round % 8 === 0) assert.equal(walkFast(copy, copy.base + (b.root - b.base), va, f), r.ok ? r.address : -1n, 'ByteMemory');
          if (r.ok) translated++;
          else failed++;
        }
      }
    }
  }
  // The corpus must exercise both outcomes, or the comparison proves little.
  assert.ok(translated > 300 && failed > 300, `translated ${translated}, failed ${failed}`);
});

test('FastWalker: Number interface, reuse across growth and retargeting', () => {
  const f = x86();
  const b = new PageTableBuilder(f, { capacity: 1 });
  b.map(VA4, PA, PAGE_2M);
  const w = new FastWalker(b, f);
  const hi = Number(VA4 >> 32n);
  const lo = Number(VA4 & 0xffffffffn);
  assert.equal(w.translate(Number(b.root), hi, lo + 0x1234), Number(PA) + 0x1234);
  assert.equal(w.pageSize, PAGE_2M);
  assert.equal(w.level, 2);
  // New tables move the builder's memory; the walker must notice.
  b.mapRange(VA4 + BigInt(PAGE_1G), PA, 64 * PAGE_4K);
  assert.ok(b.tableCount >= 5);
  assert.equal(w.translate(Number(b.root), hi, lo + PAGE_1G + 0x5008), Number(PA) + 0x5008);
  assert.equal(w.pageSize, PAGE_4K);
  assert.equal(w.translate(Number(b.root), hi, lo + PAGE_1G + 64 * PAGE_4K), -1);
  assert.equal(w.pageSize, 0);
  assert.equal(w.level, 1);
  const e = new PageTableBuilder(ept());
  e.map(0x3000n, 0x9000n);
  w.retarget(e, ept());
  assert.equal(w.translate(Number(e.root), 0, 0x3010), 0x9010);
});

test('PageTableBuilder: tables on demand, export, bounds, and conflicting mappings', () => {
  const b = new PageTableBuilder(x86(), { base: 0x20_0000n, capacity: 1 });
  assert.equal(b.root, 0x20_0000n);
  assert.equal(b.tableCount, 1);
  b.map(VA4, PA, PAGE_4K, X86.P);
  assert.equal(b.tableCount, 4);
  b.map(VA4 + 0x1000n, PA + 0x1000n, PAGE_4K, X86.P); // same tables
  assert.equal(b.tableCount, 4);
  const tables = [...b.tables()];
  assert.deepEqual(
    tables.map((t) => t.addr),
    [0x20_0000n, 0x20_1000n, 0x20_2000n, 0x20_3000n],
  );
  assert.equal(tables[0]!.entries[idx(VA4, 4)], 0x20_1000n | 0x7n); // table entries get P|RW|US
  assert.equal(tables[3]!.entries[idx(VA4, 1) + 1], (PA + 0x1000n) | 1n);
  assert.equal(tables.reduce((n, t) => n + t.entries.filter((v) => v !== 0n).length, 0), 5);
  const image = b.image();
  assert.equal(image.length, 4 * 4096);
  assert.equal(new DataView(image.buffer, image.byteOffset).getBigUint64(3 * 4096 + 8 * (idx(VA4, 1) + 1), true), (PA + 0x1000n) | 1n);
  assert.equal(b.readU32(0x20_0000 + 8 * idx(VA4, 4)), 0x20_1007);
  assert.equal(b.entryAddress(VA4, 1), 0x20_3000n + BigInt(8 * idx(VA4, 1)));
  assert.equal(b.entryAddress(VA4 + BigInt(PAGE_1G), 1), undefined);
  for (const bad of [() => b.readU64(0x1f_fff8n), () => b.readU64(0x20_4000n), () => b.readU32(0x20_3ffe), () => b.writeU64(0x20_4000n, 0n)]) {
    assert.throws(bad, PhysAccessError);
  }
  // Conflicts and bad arguments.
  assert.throws(() => b.map(VA4, PA, PAGE_2M), /already mapped with smaller pages/);
  b.map(VA4 + BigInt(PAGE_1G), PA, PAGE_2M);
  assert.throws(() => b.map(VA4 + BigInt(PAGE_1G) + 0x1000n, PA), /inside a larger page/);
  assert.throws(() => b.map(VA4 + 0x800n, PA), /not aligned/);
  assert.throws(() => b.map(VA4, PA + 0x800n), /aligned/);
  assert.throws(() => b.map(VA4, 1n << 46n), /below 2\^46/);
  assert.throws(() => b.map(VA4, PA, 8192 as PageSize), /page size/);
  assert.throws(() => new PageTableBuilder(x86(), { base: 0x1234n }), /aligned/);
  // Remapping a page of the same size replaces it.
  b.map(VA4, PA + 0x5000n, PAGE_4K, X86.P | X86.RW);
  assert.equal(ok(check(b, VA4)).address, PA + 0x5000n);
  assert.equal(ok(check(b, VA4)).perms.write, true);
});

test('PageTableBuilder for EPT: default leaves are RWX write-back, tables RWX (plus XU with MBEC)', () => {
  const b = new PageTableBuilder(ept());
  b.mapRange(0x10_0000n, 0x80_0000n, 3 * PAGE_4K);
  const r = ok(check(b, 0x10_2000n));
  assert.equal(r.address, 0x80_2000n);
  assert.equal(r.memoryType, 6);
  assert.equal(r.steps[0]!.entry & 0xfffn, 0x7n);
  const m = new PageTableBuilder(ept({ mbec: true }));
  m.map(0n, 0n);
  assert.equal(m.readU64(m.root) & 0xfffn, 0x407n);
  assert.throws(() => b.mapRange(0n, 0n, 100), /multiple/);
});

test('ByteMemory: plain bytes as a reader, with and without a direct window', () => {
  const b = new PageTableBuilder(x86(), { base: 0x3000n });
  b.map(VA4, PA);
  const aligned = new ByteMemory(b.image().slice(), 0x3000n);
  assert.ok(aligned.words !== undefined);
  const buf = new Uint8Array(b.image().length + 1);
  buf.set(b.image(), 1);
  const unaligned = new ByteMemory(buf.subarray(1), 0x3000n);
  assert.equal(unaligned.words, undefined);
  for (const m of [aligned, unaligned]) {
    const r = ok(walk(m, 0x3000n, VA4 + 0x10n, x86()));
    assert.equal(r.address, PA + 0x10n);
    fastAgrees(m, 0x3000n, VA4 + 0x10n, x86(), r);
    assert.equal(new FastWalker(m, x86()).translateAddress(0x3000n, VA4 + 0x20n), PA + 0x20n);
  }
  assert.throws(() => aligned.readU64(0x2ff8n), PhysAccessError);
  assert.throws(() => unaligned.readU32(0x3000 + b.image().length - 2), PhysAccessError);
  aligned.writeU64(0x3000n + BigInt(8 * idx(VA4, 4)), 0n);
  assert.equal(fault(walk(aligned, 0x3000n, VA4, x86())).reason, 'not-present');
});
