import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EXCEPTION_STUBS, GDT, IDT, PERCPU, PERCPU_SIZE, PML4, SEL, TSS_BASE, TSS_STRIDE } from '../../src/arch/x86/layout.js';
import { buildLongModeSystem, longModeRegs, TSS_LIMIT } from '../../src/arch/x86/long-mode.js';
import { codeSegment, dataSegment, encodeDescriptor } from '../../src/arch/x86/segments.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';

const MIB = 2 ** 20;

/** Translates `va` through the guest's 4-level tables by hand; undefined when not present. */
function translate(mem: GuestMemory, cr3: bigint, va: bigint): { pa: bigint; size: number; user: boolean } | undefined {
  let table = cr3;
  let user = true;
  for (const [shift, size] of [[39n, 0], [30n, 2 ** 30], [21n, 2 * MIB], [12n, 4096]] as const) {
    const entry = mem.readU64(table + ((va >> shift) & 511n) * 8n);
    if (!(entry & 1n)) return undefined;
    user &&= (entry & 4n) !== 0n;
    const addr = entry & 0x000ffffffffff000n;
    if (size && (entry & 0x80n || shift === 12n)) return { pa: addr + (va & (BigInt(size) - 1n)), size, user };
    table = addr;
  }
  return undefined;
}

test('the GDT holds the recipe descriptors and one TSS per vCPU', () => {
  const mem = GuestMemory.create(16 * MIB);
  try {
    buildLongModeSystem(mem, 3);
    assert.equal(mem.readU64(GDT + SEL.code0), 0x00af9b000000ffffn);
    assert.equal(mem.readU64(GDT + SEL.data0), 0x00cf93000000ffffn);
    assert.equal(mem.readU64(GDT + (SEL.code3 & ~3)), 0x00affb000000ffffn);
    assert.equal(mem.readU64(GDT + (SEL.data3 & ~3)), 0x00cff3000000ffffn);
    for (let cpu = 0; cpu < 3; cpu++) {
      const lo = mem.readU64(GDT + SEL.tss(cpu));
      const base = BigInt(TSS_BASE + cpu * TSS_STRIDE);
      assert.equal(lo & 0xffffn, BigInt(TSS_LIMIT & 0xffff), 'limit');
      assert.equal((lo >> 16n) & 0xffffffn, base & 0xffffffn, 'base 23:0');
      assert.equal((lo >> 40n) & 0xffn, 0x89n, 'present, available 64-bit TSS');
      assert.equal(mem.readU64(GDT + SEL.tss(cpu) + 8), base >> 32n);
      const tss = TSS_BASE + cpu * TSS_STRIDE;
      assert.notEqual(mem.readU64(tss + 4), 0n, 'RSP0');
      assert.equal(mem.readU64(tss + 36), mem.readU64(tss + 4), 'IST1 = RSP0 stack');
      assert.equal(mem.readU16(tss + 102), 104, 'I/O bitmap offset');
      assert.equal(mem.readU8(tss + 104 + 0xe0 / 8), 0, 'port 0xe0 allowed');
      assert.equal(mem.readU8(tss + 104 + 8192), 0xff, 'bitmap terminator');
      assert.equal(mem.readU64(PERCPU + cpu * PERCPU_SIZE), BigInt(cpu));
      assert.equal(mem.readU64(PERCPU + cpu * PERCPU_SIZE + 8), 3n);
    }
  } finally {
    mem.close();
  }
});

test('every IDT gate is a CPL0 interrupt gate on IST1 pointing at its stub', () => {
  const mem = GuestMemory.create(16 * MIB);
  try {
    buildLongModeSystem(mem, 1);
    for (const v of [0, 6, 13, 14, 255]) {
      const lo = mem.readU64(IDT + 16 * v);
      const target = (lo & 0xffffn) | (((lo >> 48n) & 0xffffn) << 16n);
      assert.equal(target, BigInt(EXCEPTION_STUBS + 8 * v));
      assert.equal((lo >> 16n) & 0xffffn, BigInt(SEL.code0));
      assert.equal((lo >> 32n) & 7n, 1n, 'IST1');
      assert.equal((lo >> 40n) & 0xffn, 0x8en, 'present DPL0 interrupt gate');
      assert.deepEqual(Array.from(mem.read(EXCEPTION_STUBS + 8 * v, 4)), [0xe6, 0xe1, 0xeb, 0xfe]);
    }
  } finally {
    mem.close();
  }
});

test('identity map: page 0 unmapped, 4 KiB pages below 2 MiB, 2 MiB pages to 4 GiB, user-accessible', () => {
  const mem = GuestMemory.create(16 * MIB);
  try {
    const cr3 = buildLongModeSystem(mem, 1);
    assert.equal(cr3, BigInt(PML4));
    assert.equal(translate(mem, cr3, 0n), undefined);
    assert.equal(translate(mem, cr3, 0xfffn), undefined);
    assert.deepEqual(translate(mem, cr3, 0x1234n), { pa: 0x1234n, size: 4096, user: true });
    assert.deepEqual(translate(mem, cr3, 0x401000n), { pa: 0x401000n, size: 2 * MIB, user: true });
    assert.deepEqual(translate(mem, cr3, 0xc0000008n), { pa: 0xc0000008n, size: 2 * MIB, user: true });
    assert.deepEqual(translate(mem, cr3, 0xfffff000n), { pa: 0xfffff000n, size: 2 * MIB, user: true });
    assert.equal(translate(mem, cr3, 0x100000000n), undefined, 'nothing above 4 GiB for a 16 MiB guest');
  } finally {
    mem.close();
  }
});

test('descriptor encoding round-trips the flat segments', () => {
  assert.equal(encodeDescriptor(codeSegment(0x08, 0)), 0x00af9b000000ffffn);
  assert.equal(encodeDescriptor(dataSegment(0x23, 3)), 0x00cff3000000ffffn);
});

test('each vCPU gets its own aligned stack below the top of RAM and its index in RDI', () => {
  const opts = { vcpus: 4, cpl: 3 as const, entry: 0x400000n, stackSize: 256 * 1024 };
  const r0 = longModeRegs(0, opts, 64 * MIB);
  const r3 = longModeRegs(3, opts, 64 * MIB);
  assert.equal(r0.rsp, BigInt(64 * MIB));
  assert.equal(r3.rsp, BigInt(64 * MIB - 3 * 256 * 1024));
  assert.equal(r3.rdi, 3n);
  assert.equal(r3.rsi, 4n);
  assert.equal(r3.rip, 0x400000n);
  assert.equal(r3.rflags, 2n);
});
