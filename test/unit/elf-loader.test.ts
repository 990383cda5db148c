import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageError, PF_R, PF_W, PF_X, parseElf, placeImage, type ElfImage } from '../../src/loader/elf.js';
import { loadImageFile } from '../../src/loader/image.js';
import { rng } from '../helpers/rng.js';

const PT_LOAD = 1;
const PT_INTERP = 3;
const PT_NOTE = 4;
const EH = 64;
const PH = 56;

interface PhSpec {
  type?: number;
  flags?: number;
  vaddr?: bigint;
  paddr: bigint;
  data?: Uint8Array;
  memsz?: bigint;
}

/** Writes an ELF64 x86-64 ET_EXEC: header, program headers, then each header's data in order. */
function buildElf(entry: bigint, phdrs: PhSpec[]): Uint8Array {
  const dataSize = phdrs.reduce((n, p) => n + (p.data?.length ?? 0), 0);
  const bytes = new Uint8Array(EH + PH * phdrs.length + dataSize);
  const dv = new DataView(bytes.buffer);
  bytes.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0);
  dv.setUint16(16, 2, true); // ET_EXEC
  dv.setUint16(18, 62, true); // EM_X86_64
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, entry, true);
  dv.setBigUint64(32, BigInt(EH), true);
  dv.setUint16(52, EH, true);
  dv.setUint16(54, PH, true);
  dv.setUint16(56, phdrs.length, true);
  let off = EH + PH * phdrs.length;
  phdrs.forEach((p, i) => {
    const o = EH + PH * i;
    const filesz = p.data?.length ?? 0;
    dv.setUint32(o, p.type ?? PT_LOAD, true);
    dv.setUint32(o + 4, p.flags ?? PF_R, true);
    dv.setBigUint64(o + 8, BigInt(off), true);
    dv.setBigUint64(o + 16, p.vaddr ?? p.paddr, true);
    dv.setBigUint64(o + 24, p.paddr, true);
    dv.setBigUint64(o + 32, BigInt(filesz), true);
    dv.setBigUint64(o + 40, p.memsz ?? BigInt(filesz), true);
    dv.setBigUint64(o + 48, 0x1000n, true);
    if (p.data) bytes.set(p.data, off);
    off += filesz;
  });
  return bytes;
}

const CODE = Uint8Array.from([0x90, 0x90, 0x0f, 0x0b, 0xf4, 0xeb, 0xfe, 0xcc]);
const DATA = Uint8Array.from([1, 2, 3, 4, 5, 6]);

/** Text at 0x400000 (R+X, 0x1000 bytes), a PT_NOTE, data at 0x401000 with 0x2000 bytes of memory (bss). */
function validElf(): Uint8Array {
  return buildElf(0x400002n, [
    { paddr: 0x400000n, flags: PF_R | PF_X, data: CODE, memsz: 0x1000n },
    { type: PT_NOTE, paddr: 0n, data: Uint8Array.from([9, 9, 9, 9]) },
    { paddr: 0x401000n, flags: PF_R | PF_W, data: DATA, memsz: 0x2000n },
  ]);
}

const u16 = (b: Uint8Array, off: number, v: number) => new DataView(b.buffer, b.byteOffset).setUint16(off, v, true);
const u32 = (b: Uint8Array, off: number, v: number) => new DataView(b.buffer, b.byteOffset).setUint32(off, v, true);
const u64 = (b: Uint8Array, off: number, v: bigint) => new DataView(b.buffer, b.byteOffset).setBigUint64(off, v, true);
/** Offset of a field inside program header `i`. */
const ph = (i: number, field: 'type' | 'flags' | 'offset' | 'vaddr' | 'paddr' | 'filesz' | 'memsz') =>
  EH + PH * i + { type: 0, flags: 4, offset: 8, vaddr: 16, paddr: 24, filesz: 32, memsz: 40 }[field];

function rejects(bytes: Uint8Array, substring: string): void {
  assert.throws(
    () => parseElf(bytes),
    (err: unknown) => {
      assert.ok(err instanceof ImageError, `expected ImageError, got ${String(err)}`);
      assert.ok(err.message.includes(substring), `message ${JSON.stringify(err.message)} lacks ${JSON.stringify(substring)}`);
      assert.ok(!err.message.includes('\n'), 'message must be one line');
      return true;
    },
  );
}

function mutated(edit: (b: Uint8Array) => void): Uint8Array {
  const b = validElf();
  edit(b);
  return b;
}

test('valid two-segment image with bss', () => {
  const bytes = validElf();
  const img = parseElf(bytes);
  assert.equal(img.entry, 0x400002n);
  assert.equal(img.segments.length, 2);
  const [text, data] = img.segments;
  assert.equal(text!.gpa, 0x400000n);
  assert.equal(text!.memSize, 0x1000n);
  assert.equal(text!.flags, PF_R | PF_X);
  assert.deepEqual([...text!.data], [...CODE]);
  assert.equal(data!.gpa, 0x401000n);
  assert.equal(data!.memSize, 0x2000n);
  assert.equal(data!.flags, PF_R | PF_W);
  assert.deepEqual([...data!.data], [...DATA]);
  // views into the input, not copies
  assert.equal(text!.data.buffer, bytes.buffer);
  assert.equal(text!.data.byteOffset, EH + PH * 3);
  assert.equal(data!.data.byteOffset, EH + PH * 3 + CODE.length + 4);
});

test('accepts ET_DYN, masks unknown p_flags bits, skips zero-size PT_LOAD', () => {
  const b = mutated((x) => {
    u16(x, 16, 3);
    u32(x, ph(0, 'flags'), 0x0ff00000 | PF_R | PF_X);
    u32(x, ph(1, 'type'), PT_LOAD); // the note becomes a PT_LOAD with memsz 4 at paddr 0: still valid
    u64(x, ph(1, 'memsz'), 0n);
    u64(x, ph(1, 'filesz'), 0n);
  });
  const img = parseElf(b);
  assert.equal(img.segments.length, 2);
  assert.equal(img.segments[0]!.flags, PF_R | PF_X);
});

test('p_paddr 0 falls back to p_vaddr; nonzero p_paddr wins', () => {
  const b = buildElf(0x7000n, [{ paddr: 0n, vaddr: 0x7000n, flags: PF_R | PF_X, data: CODE }]);
  assert.equal(parseElf(b).segments[0]!.gpa, 0x7000n);
  const c = buildElf(0x200000n, [{ paddr: 0x200000n, vaddr: 0x9000n, flags: PF_R | PF_X, data: CODE }]);
  assert.equal(parseElf(c).segments[0]!.gpa, 0x200000n);
});

test('virtual entry point of a segment with distinct paddr is translated to physical', () => {
  const b = buildElf(0xffffffff81000010n, [
    { paddr: 0x1000000n, vaddr: 0xffffffff81000000n, flags: PF_R | PF_X, data: CODE, memsz: 0x100n },
  ]);
  assert.equal(parseElf(b).entry, 0x1000010n);
});

test('entry override replaces e_entry and is validated', () => {
  const b = mutated((x) => u64(x, 24, 0xdeadn)); // bad e_entry is irrelevant when overridden
  assert.equal(parseElf(b, { entry: 0x400007n }).entry, 0x400007n);
  assert.throws(() => parseElf(b, { entry: 0x401000n }), /entry point override 0x401000 is not inside any executable/);
});

test('rejects bad magic and truncated headers', () => {
  rejects(mutated((x) => (x[0] = 0)), 'bad magic');
  rejects(Uint8Array.from([0x7f, 0x45]), 'bad magic');
  rejects(new Uint8Array(0), 'bad magic');
  rejects(validElf().subarray(0, 40), 'ELF header truncated: file is 0x28 bytes');
});

test('rejects wrong class, byte order, version, machine, type', () => {
  rejects(mutated((x) => (x[4] = 1)), 'not ELF64');
  rejects(mutated((x) => (x[5] = 2)), 'not little-endian');
  rejects(mutated((x) => (x[6] = 0)), 'EI_VERSION is 0');
  rejects(mutated((x) => u32(x, 20, 2)), 'e_version is 2');
  rejects(mutated((x) => u16(x, 18, 3)), 'e_machine is 3');
  rejects(mutated((x) => u16(x, 18, 0xb7)), 'e_machine is 183');
  rejects(mutated((x) => u16(x, 16, 1)), 'e_type is 1');
  rejects(mutated((x) => u16(x, 16, 4)), 'e_type is 4');
});

test('rejects program header table problems', () => {
  rejects(mutated((x) => u16(x, 54, 0x20)), 'bad e_phentsize 0x20 (expected 0x38)');
  const len = validElf().length;
  rejects(mutated((x) => u64(x, 32, BigInt(len))), `lies outside the file (0x${len.toString(16)} bytes)`);
  rejects(mutated((x) => u64(x, 32, 0xffffffffffffffffn)), 'program header table [0xffffffffffffffff, ');
  rejects(mutated((x) => u16(x, 56, 0x4000)), 'program header table [0x40, 0xe0040)');
  rejects(mutated((x) => u16(x, 56, 0xffff)), 'PN_XNUM');
  rejects(mutated((x) => u16(x, 56, 0)), 'no PT_LOAD segment');
  rejects(validElf().subarray(0, EH + PH * 2), 'program header table [0x40, 0xe8) lies outside the file (0xb0 bytes)');
});

test('rejects segment file range beyond the file', () => {
  const len = validElf().length;
  rejects(
    mutated((x) => u64(x, ph(2, 'filesz'), 0x100n)),
    `program header 2 (PT_LOAD): file range [0x${(EH + PH * 3 + 12).toString(16)}, `,
  );
  rejects(mutated((x) => u64(x, ph(2, 'filesz'), 0x100n)), `extends beyond end of file (0x${len.toString(16)} bytes)`);
  rejects(mutated((x) => u64(x, ph(0, 'offset'), 0xfffffffffffffffcn)), 'program header 0 (PT_LOAD): file range [0xfffffffffffffffc, 0x10000000000000004)');
  rejects(validElf().subarray(0, len - 1), 'program header 2 (PT_LOAD): file range');
});

test('rejects p_filesz > p_memsz', () => {
  rejects(mutated((x) => u64(x, ph(0, 'memsz'), 4n)), 'program header 0 (PT_LOAD): p_filesz 0x8 > p_memsz 0x4');
});

test('rejects overlapping segments, naming both', () => {
  rejects(mutated((x) => u64(x, ph(2, 'paddr'), 0x400ff8n)), 'program headers 0 and 2 overlap: [0x400000, 0x401000) and [0x400ff8, 0x402ff8)');
  rejects(mutated((x) => u64(x, ph(2, 'paddr'), 0x3ff000n)), 'program headers 0 and 2 overlap');
  // identical start, and touching ranges are fine
  rejects(mutated((x) => u64(x, ph(2, 'paddr'), 0x400000n)), 'program headers 0 and 2 overlap');
  assert.equal(parseElf(mutated((x) => u64(x, ph(2, 'paddr'), 0x3fe000n))).segments[1]!.gpa, 0x3fe000n);
});

test('overlap detection is not fooled by a big segment swallowing later ones', () => {
  const b = buildElf(0x10000n, [
    { paddr: 0x10000n, flags: PF_R | PF_X, data: CODE, memsz: 0x100000n },
    { paddr: 0x20000n, data: DATA },
    { paddr: 0x30000n, data: DATA },
  ]);
  rejects(b, 'program headers 0 and 1 overlap');
});

test('rejects address + memsz overflowing 64 bits', () => {
  rejects(
    mutated((x) => u64(x, ph(2, 'paddr'), 0xfffffffffffff000n)),
    'program header 2 (PT_LOAD): address 0xfffffffffffff000 + p_memsz 0x2000 overflows 64 bits',
  );
  // ending exactly at 2^64 is representable
  const edge = mutated((x) => u64(x, ph(2, 'paddr'), 0xffffffffffffe000n));
  assert.equal(parseElf(edge).segments[1]!.gpa, 0xffffffffffffe000n);
});

test('rejects images with no PT_LOAD segment', () => {
  rejects(
    mutated((x) => {
      u32(x, ph(0, 'type'), PT_NOTE);
      u32(x, ph(2, 'type'), PT_NOTE);
    }),
    'no PT_LOAD segment among 3 program headers',
  );
  rejects(
    mutated((x) => {
      u64(x, ph(0, 'filesz'), 0n);
      u64(x, ph(0, 'memsz'), 0n);
      u64(x, ph(2, 'filesz'), 0n);
      u64(x, ph(2, 'memsz'), 0n);
    }),
    'no PT_LOAD segment with nonzero p_memsz',
  );
});

test('rejects an entry point outside executable segments', () => {
  rejects(mutated((x) => u64(x, 24, 0x401000n)), 'entry point 0x401000 is not inside any executable PT_LOAD segment');
  rejects(mutated((x) => u64(x, 24, 0x401000n)), '0 [0x400000, 0x401000)');
  rejects(mutated((x) => u64(x, 24, 0x3fffffn)), 'entry point 0x3fffff');
  rejects(mutated((x) => u32(x, ph(0, 'flags'), PF_R)), 'no PT_LOAD segment has PF_X');
});

test('rejects dynamically linked executables', () => {
  rejects(mutated((x) => u32(x, ph(1, 'type'), PT_INTERP)), 'program header 1: PT_INTERP');
});

test('placeImage checks RAM bounds and reserved ranges', () => {
  const img = parseElf(validElf());
  const reserved = [
    { start: 0n, end: 0x1000n, name: 'zero page' },
    { start: 0x9000n, end: 0xa000n, name: 'page tables' },
  ];
  assert.doesNotThrow(() => placeImage(img, 0x403000n, reserved)); // ends exactly at RAM end
  assert.throws(() => placeImage(img, 0x402fffn, reserved), (e: unknown) => {
    assert.ok(e instanceof ImageError);
    assert.equal(e.message, 'load segment 1 [0x401000, 0x403000) lies outside guest RAM [0x0, 0x402fff)');
    return true;
  });
  const clash = [...reserved, { start: 0x402fffn, end: 0x404000n, name: 'boot params' }];
  assert.throws(() => placeImage(img, 1n << 30n, clash), (e: unknown) => {
    assert.ok(e instanceof ImageError);
    assert.equal(e.message, "load segment 1 [0x401000, 0x403000) overlaps reserved range 'boot params' [0x402fff, 0x404000)");
    return true;
  });
  assert.doesNotThrow(() => placeImage(img, 1n << 30n, [{ start: 0x403000n, end: 0x404000n, name: 'adjacent' }]));
});

test('loadImageFile auto-detects ELF, ignores loadAddr for it, and applies an entry override', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvmtalk-elf-'));
  try {
    const file = join(dir, 'guest.elf');
    writeFileSync(file, validElf());
    const auto = loadImageFile(file, { loadAddr: 0x1000n });
    assert.equal(auto.format, 'elf');
    assert.equal(auto.entry, 0x400002n);
    assert.equal(auto.segments.length, 2);
    assert.equal(loadImageFile(file, { entry: 0x400005n }).entry, 0x400005n);
    const forcedRaw = loadImageFile(file, { format: 'raw', loadAddr: 0x1000n });
    assert.equal(forcedRaw.format, 'raw');
    assert.equal(forcedRaw.segments[0]!.data.length, validElf().length);

    const broken = join(dir, 'broken.elf');
    writeFileSync(broken, mutated((x) => u16(x, 18, 40)));
    assert.throws(() => loadImageFile(broken, {}), (e: unknown) => e instanceof ImageError && e.message === `${broken}: unsupported machine: e_machine is 40 (expected 62, x86-64)`);
    const notElf = join(dir, 'blob.bin');
    writeFileSync(notElf, CODE);
    assert.throws(() => loadImageFile(notElf, { format: 'elf' }), /blob\.bin: not an ELF file: bad magic/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

function checkInvariants(bytes: Uint8Array, img: ElfImage): void {
  assert.ok(img.segments.length > 0);
  for (const s of img.segments) {
    assert.equal(s.data.buffer, bytes.buffer);
    assert.ok(s.data.byteOffset + s.data.length <= bytes.byteOffset + bytes.length);
    assert.ok(BigInt(s.data.length) <= s.memSize);
    assert.ok(s.gpa + s.memSize <= 1n << 64n);
    assert.equal(s.flags & ~7, 0);
  }
  assert.ok(img.segments.some((s) => (s.flags & PF_X) !== 0 && img.entry >= s.gpa && img.entry < s.gpa + s.memSize));
}

test('fuzz: 2000 mutations either parse or throw ImageError', () => {
  const seed = 0x6b766d;
  const rand = rng(seed);
  const int = (n: number) => Math.floor(rand() * n);
  const interesting = [0n, 1n, 0x38n, 0x40n, 0x7fffffffn, 0xffffffffn, 1n << 63n, (1n << 64n) - 1n, (1n << 64n) - 0x1000n];
  const base = validElf();
  let parsed = 0;
  let rejected = 0;
  for (let iter = 0; iter < 2000; iter++) {
    let b: Uint8Array = base.slice();
    const rounds = 1 + int(4);
    for (let r = 0; r < rounds; r++) {
      switch (int(5)) {
        case 0: // flip bits in the headers, where they matter most
          b[int(Math.min(b.length, EH + PH * 3))] ^= 1 << int(8);
          break;
        case 1: // random byte anywhere
          if (b.length) b[int(b.length)] = int(256);
          break;
        case 2: // boundary value into an 8-byte-aligned header field
          if (b.length >= EH + PH * 3) u64(b, 8 * int((EH + PH * 3) / 8), interesting[int(interesting.length)]!);
          break;
        case 3: // small u16 into e_phnum / e_phentsize / e_type / e_machine
          if (b.length >= EH) u16(b, [16, 18, 54, 56][int(4)]!, [0, 1, 2, 3, 0x38, 0xffff, int(0x10000)][int(7)]!);
          break;
        default: // truncate, sometimes into a fresh unaligned buffer
          b = int(2) ? b.subarray(0, int(b.length + 1)) : b.slice(0, int(b.length + 1));
      }
    }
    try {
      const img = parseElf(b);
      checkInvariants(b, img);
      try {
        placeImage(img, 1n << 32n, [{ start: 0n, end: 0x1000n, name: 'zero page' }]);
      } catch (err) {
        if (!(err instanceof ImageError)) throw new Error(`seed ${seed} iter ${iter}: placeImage threw ${String(err)}`);
      }
      parsed++;
    } catch (err) {
      if (!(err instanceof ImageError)) throw new Error(`seed ${seed} iter ${iter}: non-ImageError ${String(err)}`);
      assert.ok(err.message.length > 0 && !err.message.includes('\n'));
      rejected++;
    }
  }
  assert.equal(parsed + rejected, 2000);
  // the mutations must exercise both outcomes to mean anything
  assert.ok(parsed > 50, `only ${parsed} mutants parsed`);
  assert.ok(rejected > 500, `only ${rejected} mutants rejected`);
});
