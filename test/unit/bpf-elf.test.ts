import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BpfObjectError, loadBpfObject, R_BPF_64_32, R_BPF_64_64 } from '../../src/bpf/elf.js';
import { BPF_PSEUDO_CALL, LDDW_OPCODE, LDDW_PSEUDO, encodeProgram, type BpfInsn } from '../../src/bpf/isa.js';
import { rng } from '../helpers/rng.js';

// ELF64 constants (System V gABI).
const SHT_PROGBITS = 1;
const SHT_SYMTAB = 2;
const SHT_STRTAB = 3;
const SHT_RELA = 4;
const SHT_REL = 9;
const SHF_ALLOC = 2n;
const SHF_EXECINSTR = 4n;
const STT_OBJECT = 1;
const STT_FUNC = 2;
const STB_GLOBAL = 1;
const EH = 64; // sizeof(Elf64_Ehdr)
const SH = 64; // sizeof(Elf64_Shdr)
const SYM = 24; // sizeof(Elf64_Sym)
const REL = 16; // sizeof(Elf64_Rel)

interface SecSpec {
  name: string;
  data: Uint8Array;
  type?: number;
  flags?: bigint;
}
interface SymSpec {
  name: string;
  section: string;
  type: number;
  value: number;
  size: number;
}
interface RelSpec {
  offset: number;
  sym: string;
  type: number;
}
interface ObjSpec {
  sections: SecSpec[];
  symbols: SymSpec[];
  /** Relocations keyed by target section name; emitted as SHT_REL `.rel<name>`. */
  rels?: Record<string, RelSpec[]>;
  machine?: number;
  etype?: number;
}
interface Built {
  bytes: Uint8Array;
  shoff: number;
  /** Section name → [section index, file offset of its data]. */
  sec: Record<string, [index: number, offset: number]>;
}

/** String table builder: offset 0 is the empty string. */
function strtab(): { add(s: string): number; bytes(): Uint8Array } {
  const parts: number[] = [0];
  const seen = new Map<string, number>([['', 0]]);
  return {
    add(s) {
      const hit = seen.get(s);
      if (hit !== undefined) return hit;
      const off = parts.length;
      parts.push(...new TextEncoder().encode(s), 0);
      seen.set(s, off);
      return off;
    },
    bytes: () => Uint8Array.from(parts),
  };
}

/**
 * Writes an ELF64 LE relocatable object: Ehdr, section data (8-aligned), then the section header table.
 * Section order: NULL, user sections, `.rel*`, `.symtab`, `.strtab`, `.shstrtab`.
 */
function buildObject(spec: ObjSpec): Built {
  interface Out {
    name: string;
    type: number;
    flags: bigint;
    data: Uint8Array;
    link: number;
    info: number;
    entsize: number;
  }
  const secs: Out[] = [{ name: '', type: 0, flags: 0n, data: new Uint8Array(0), link: 0, info: 0, entsize: 0 }];
  for (const s of spec.sections) {
    const exec = s.name !== 'maps' && s.name !== '.maps' && s.type === undefined;
    secs.push({ name: s.name, type: s.type ?? SHT_PROGBITS, flags: s.flags ?? (exec ? SHF_ALLOC | SHF_EXECINSTR : SHF_ALLOC), data: s.data, link: 0, info: 0, entsize: 0 });
  }
  const idx = (name: string) => {
    const i = secs.findIndex((s) => s.name === name);
    if (i < 0) throw new Error(`no section ${name}`);
    return i;
  };
  const strs = strtab();
  const symBytes = new Uint8Array(SYM * (spec.symbols.length + 1));
  const sdv = new DataView(symBytes.buffer);
  spec.symbols.forEach((s, k) => {
    const o = SYM * (k + 1);
    sdv.setUint32(o, strs.add(s.name), true); // st_name
    sdv.setUint8(o + 4, (STB_GLOBAL << 4) | s.type); // st_info
    sdv.setUint8(o + 5, 0); // st_other
    sdv.setUint16(o + 6, idx(s.section), true); // st_shndx
    sdv.setBigUint64(o + 8, BigInt(s.value), true); // st_value
    sdv.setBigUint64(o + 16, BigInt(s.size), true); // st_size
  });
  const symtabIndex = secs.length + Object.keys(spec.rels ?? {}).length;
  for (const [target, rels] of Object.entries(spec.rels ?? {})) {
    const data = new Uint8Array(REL * rels.length);
    const dv = new DataView(data.buffer);
    rels.forEach((r, k) => {
      const symIdx = spec.symbols.findIndex((s) => s.name === r.sym) + 1;
      if (symIdx === 0) throw new Error(`no symbol ${r.sym}`);
      dv.setBigUint64(k * REL, BigInt(r.offset), true); // r_offset
      dv.setBigUint64(k * REL + 8, (BigInt(symIdx) << 32n) | BigInt(r.type), true); // r_info = ELF64_R_INFO(sym, type)
    });
    secs.push({ name: `.rel${target}`, type: SHT_REL, flags: 0n, data, link: symtabIndex, info: idx(target), entsize: REL });
  }
  secs.push({ name: '.symtab', type: SHT_SYMTAB, flags: 0n, data: symBytes, link: symtabIndex + 1, info: 1, entsize: SYM });
  secs.push({ name: '.strtab', type: SHT_STRTAB, flags: 0n, data: strs.bytes(), link: 0, info: 0, entsize: 0 });
  const shstr = strtab();
  const nameOffs = secs.map((s) => shstr.add(s.name));
  secs.push({ name: '.shstrtab', type: SHT_STRTAB, flags: 0n, data: new Uint8Array(0), link: 0, info: 0, entsize: 0 });
  nameOffs.push(shstr.add('.shstrtab'));
  secs[secs.length - 1]!.data = shstr.bytes();

  const align8 = (n: number) => (n + 7) & ~7;
  let off = EH;
  const offsets = secs.map((s, i) => {
    if (i === 0) return 0;
    off = align8(off);
    const o = off;
    off += s.data.length;
    return o;
  });
  const shoff = align8(off);
  const bytes = new Uint8Array(shoff + SH * secs.length);
  const dv = new DataView(bytes.buffer);
  bytes.set([0x7f, 0x45, 0x4c, 0x46, 2 /* ELFCLASS64 */, 1 /* ELFDATA2LSB */, 1 /* EV_CURRENT */], 0);
  dv.setUint16(16, spec.etype ?? 1, true); // e_type = ET_REL
  dv.setUint16(18, spec.machine ?? 247, true); // e_machine = EM_BPF
  dv.setUint32(20, 1, true); // e_version
  dv.setBigUint64(24, 0n, true); // e_entry
  dv.setBigUint64(32, 0n, true); // e_phoff
  dv.setBigUint64(40, BigInt(shoff), true); // e_shoff
  dv.setUint32(48, 0, true); // e_flags
  dv.setUint16(52, EH, true); // e_ehsize
  dv.setUint16(54, 0, true); // e_phentsize
  dv.setUint16(56, 0, true); // e_phnum
  dv.setUint16(58, SH, true); // e_shentsize
  dv.setUint16(60, secs.length, true); // e_shnum
  dv.setUint16(62, secs.length - 1, true); // e_shstrndx
  const sec: Built['sec'] = {};
  secs.forEach((s, i) => {
    bytes.set(s.data, offsets[i]!);
    const o = shoff + SH * i;
    dv.setUint32(o, nameOffs[i]!, true); // sh_name
    dv.setUint32(o + 4, s.type, true); // sh_type
    dv.setBigUint64(o + 8, s.flags, true); // sh_flags
    dv.setBigUint64(o + 16, 0n, true); // sh_addr
    dv.setBigUint64(o + 24, BigInt(offsets[i]!), true); // sh_offset
    dv.setBigUint64(o + 32, BigInt(s.data.length), true); // sh_size
    dv.setUint32(o + 40, s.link, true); // sh_link
    dv.setUint32(o + 44, s.info, true); // sh_info
    dv.setBigUint64(o + 48, 8n, true); // sh_addralign
    dv.setBigUint64(o + 56, BigInt(s.entsize), true); // sh_entsize
    if (i > 0) sec[s.name] = [i, offsets[i]!];
  });
  return { bytes, shoff, sec };
}

// Instruction helpers.
const mov0 = (imm: number): BpfInsn => ({ opcode: 0xb7, dst: 0, src: 0, off: 0, imm });
const exit: BpfInsn = { opcode: 0x95, dst: 0, src: 0, off: 0, imm: 0 };
const lddw = (dst: number, v = 0n): BpfInsn => ({ opcode: LDDW_OPCODE, dst, src: 0, off: 0, imm: Number(BigInt.asIntN(32, v)), imm64: v });
const call = (imm: number, src = 0): BpfInsn => ({ opcode: 0x85, dst: 0, src, off: 0, imm });
const code = (...insns: BpfInsn[]) => encodeProgram(insns);

function mapDefs(...defs: number[][]): Uint8Array {
  const out = new Uint8Array(20 * defs.length);
  const dv = new DataView(out.buffer);
  defs.forEach((d, k) => d.forEach((v, j) => dv.setUint32(20 * k + 4 * j, v, true)));
  return out;
}

/** A valid object with one map-using program, a caller of a .text subprogram, and two funcs in one section. */
function richSpec(): ObjSpec {
  const prog = code(lddw(1), call(1), mov0(0), exit); // 5 slots = 40 bytes
  const text = code(mov0(7), exit); // helper subprogram
  const caller = code(call(-1, BPF_PSEUDO_CALL), exit);
  const two = code(mov0(1), exit, mov0(2), exit);
  return {
    sections: [
      { name: 'xdp', data: prog },
      { name: '.text', data: text },
      { name: 'tc', data: caller },
      { name: 'kprobe/multi', data: two },
      { name: 'maps', data: mapDefs([1, 4, 8, 16, 0], [2, 4, 4, 1, 1]) },
    ],
    symbols: [
      { name: 'xdp_prog', section: 'xdp', type: STT_FUNC, value: 0, size: prog.length },
      { name: 'helper', section: '.text', type: STT_FUNC, value: 0, size: text.length },
      { name: 'tc_prog', section: 'tc', type: STT_FUNC, value: 0, size: caller.length },
      { name: 'first', section: 'kprobe/multi', type: STT_FUNC, value: 0, size: 16 },
      { name: 'second', section: 'kprobe/multi', type: STT_FUNC, value: 16, size: 16 },
      { name: 'counts', section: 'maps', type: STT_OBJECT, value: 0, size: 20 },
      { name: 'arr', section: 'maps', type: STT_OBJECT, value: 20, size: 20 },
    ],
    rels: {
      xdp: [{ offset: 0, sym: 'arr', type: R_BPF_64_64 }],
      tc: [{ offset: 0, sym: 'helper', type: R_BPF_64_32 }],
    },
  };
}

function rejects(bytes: Uint8Array, re: RegExp): void {
  assert.throws(() => loadBpfObject(bytes), (e: unknown) => {
    assert.ok(e instanceof BpfObjectError, `expected BpfObjectError, got ${String(e)}`);
    assert.match(e.message, re);
    assert.ok(!e.message.includes('\n'), 'message must be one line');
    return true;
  });
}

test('one program', () => {
  const prog = code(mov0(42), exit);
  const { bytes } = buildObject({ sections: [{ name: 'socket', data: prog }], symbols: [{ name: 'p', section: 'socket', type: STT_FUNC, value: 0, size: 16 }] });
  const obj = loadBpfObject(bytes);
  assert.deepEqual(obj.maps, []);
  assert.deepEqual(obj.programs, [{ name: 'p', section: 'socket', insns: [mov0(42), exit] }]);
});

test('two programs in two sections, two functions in one section, .text excluded', () => {
  const obj = loadBpfObject(buildObject(richSpec()).bytes);
  assert.deepEqual(
    obj.programs.map((p) => [p.name, p.section]),
    [['xdp_prog', 'xdp'], ['tc_prog', 'tc'], ['first', 'kprobe/multi'], ['second', 'kprobe/multi']],
  );
  assert.deepEqual(obj.programs[2]!.insns, [mov0(1), exit]);
  assert.deepEqual(obj.programs[3]!.insns, [mov0(2), exit]);
});

test('legacy maps are parsed in offset order', () => {
  const obj = loadBpfObject(buildObject(richSpec()).bytes);
  assert.deepEqual(obj.maps, [
    { name: 'counts', type: 1, keySize: 4, valueSize: 8, maxEntries: 16, flags: 0 },
    { name: 'arr', type: 2, keySize: 4, valueSize: 4, maxEntries: 1, flags: 1 },
  ]);
});

test('map relocation rewrites lddw src/imm to map_by_idx', () => {
  const obj = loadBpfObject(buildObject(richSpec()).bytes);
  const ld = obj.programs[0]!.insns[0]!;
  assert.equal(ld.opcode, LDDW_OPCODE);
  assert.equal(LDDW_PSEUDO[ld.src], 'map_by_idx');
  assert.equal(ld.imm, 1);
  assert.equal(ld.imm64, 1n);
  assert.equal(ld.dst, 1);
  // The helper call (src 0, no relocation) is untouched.
  assert.deepEqual(obj.programs[0]!.insns[1], call(1));
});

test('call relocation links the .text subprogram and rewrites the pseudo-call offset', () => {
  const obj = loadBpfObject(buildObject(richSpec()).bytes);
  const tc = obj.programs[1]!;
  // caller body (call, exit) then helper (mov r0 7, exit) appended at slot 2: imm = 2 - (0 + 1) = 1.
  assert.deepEqual(tc.insns, [call(1, BPF_PSEUDO_CALL), exit, mov0(7), exit]);
});

test('call relocation against a helper in the same section and an lddw before the call', () => {
  const body = code(lddw(2, 5n), call(-1, BPF_PSEUDO_CALL), exit, mov0(3), exit);
  const { bytes } = buildObject({
    sections: [{ name: 'xdp', data: body }],
    symbols: [
      { name: 'main', section: 'xdp', type: STT_FUNC, value: 0, size: 32 },
      { name: 'sub', section: 'xdp', type: STT_FUNC, value: 32, size: 16 },
    ],
    rels: { xdp: [{ offset: 16, sym: 'sub', type: R_BPF_64_32 }] },
  });
  const obj = loadBpfObject(bytes);
  // main = lddw (2 slots), call (slot 2), exit (slot 3); sub appended at slot 4: imm = 4 - 3 = 1.
  assert.deepEqual(obj.programs[0]!.insns, [lddw(2, 5n), call(1, BPF_PSEUDO_CALL), exit, mov0(3), exit]);
  assert.deepEqual(obj.programs[1]!.insns, [mov0(3), exit]);
});

test('call relocation against a section symbol (imm = slot offset - 1) and a compiler-resolved pseudo call', () => {
  const STT_SECTION = 3;
  const text = code(mov0(1), exit, mov0(2), exit);
  // Section-symbol form: target slot = st_value / 8 + imm + 1 = 0 + 1 + 1 = 2 → helper2.
  const caller = code(call(1, BPF_PSEUDO_CALL), exit);
  // Already resolved by the compiler (no relocation): slot 0 + imm 1 + 1 = slot 2 of the same section.
  const local = code(call(1, BPF_PSEUDO_CALL), exit, mov0(9), exit);
  const { bytes } = buildObject({
    sections: [
      { name: '.text', data: text },
      { name: 'tc', data: caller },
      { name: 'xdp', data: local },
    ],
    symbols: [
      { name: '', section: '.text', type: STT_SECTION, value: 0, size: 0 },
      { name: 'helper1', section: '.text', type: STT_FUNC, value: 0, size: 16 },
      { name: 'helper2', section: '.text', type: STT_FUNC, value: 16, size: 16 },
      { name: 'tc_prog', section: 'tc', type: STT_FUNC, value: 0, size: 16 },
      { name: 'xdp_prog', section: 'xdp', type: STT_FUNC, value: 0, size: 16 },
      { name: 'xdp_sub', section: 'xdp', type: STT_FUNC, value: 16, size: 16 },
    ],
    rels: { tc: [{ offset: 0, sym: '', type: R_BPF_64_32 }] },
  });
  const obj = loadBpfObject(bytes);
  assert.deepEqual(obj.programs.map((p) => p.name), ['tc_prog', 'xdp_prog', 'xdp_sub']);
  assert.deepEqual(obj.programs[0]!.insns, [call(1, BPF_PSEUDO_CALL), exit, mov0(2), exit]);
  assert.deepEqual(obj.programs[1]!.insns, [call(1, BPF_PSEUDO_CALL), exit, mov0(9), exit]);
});

test('rejects calls that do not land on a function start', () => {
  const { bytes } = buildObject({
    sections: [{ name: 'xdp', data: code(call(5, BPF_PSEUDO_CALL), exit) }],
    symbols: [{ name: 'p', section: 'xdp', type: STT_FUNC, value: 0, size: 16 }],
  });
  rejects(bytes, /pseudo call at 0x0 targets 0x30, not the start of a function in 'xdp'/);
});

test('rejects bad magic, wrong machine, ET_EXEC', () => {
  const good = buildObject(richSpec()).bytes;
  const bad = good.slice();
  bad[1] = 0x46;
  rejects(bad, /bad magic/);
  rejects(good.subarray(0, 20), /header truncated/);
  rejects(buildObject({ ...richSpec(), machine: 62 }).bytes, /e_machine is 62 \(expected 247/);
  rejects(buildObject({ ...richSpec(), etype: 2 }).bytes, /e_type is 2 \(expected 1 ET_REL/);
});

test('rejects a truncated section header table', () => {
  const { bytes } = buildObject(richSpec());
  rejects(bytes.subarray(0, bytes.length - 1), /section header table .* lies outside the file/);
  const big = bytes.slice();
  new DataView(big.buffer).setBigUint64(40, 0xffffffffffffff00n, true);
  rejects(big, /section header table .* lies outside the file/);
});

test('rejects a section whose data runs past the end of the file', () => {
  const b = buildObject(richSpec());
  const bytes = b.bytes.slice();
  new DataView(bytes.buffer).setBigUint64(b.shoff + SH * b.sec['xdp']![0] + 32, 0xfffffffffffn, true);
  rejects(bytes, /section \d+: file range .* extends beyond end of file/);
});

test('rejects bad string offsets (section name, symbol name, unterminated)', () => {
  const b = buildObject(richSpec());
  const a = b.bytes.slice();
  new DataView(a.buffer).setUint32(b.shoff + SH * b.sec['xdp']![0], 0xffff, true);
  rejects(a, /section \d+ name: string offset 0xffff outside string table/);
  const c = b.bytes.slice();
  new DataView(c.buffer).setUint32(b.sec['.symtab']![1] + SYM * 1, 0x12345, true);
  rejects(c, /symbol 1 name: string offset 0x12345 outside string table/);
  // Unterminated: clobber the last NUL of .strtab.
  const d = b.bytes.slice();
  const [si, so] = b.sec['.strtab']!;
  const size = Number(new DataView(d.buffer).getBigUint64(b.shoff + SH * si + 32, true));
  d[so + size - 1] = 0x41;
  rejects(d, /not NUL-terminated/);
});

test('rejects relocations out of range, not on an lddw/call, bad symbol, unknown type', () => {
  const withRel = (rels: ObjSpec['rels']) => buildObject({ ...richSpec(), rels }).bytes;
  rejects(withRel({ xdp: [{ offset: 40, sym: 'arr', type: R_BPF_64_64 }] }), /offset 0x28 is not an instruction of 'xdp'/);
  rejects(withRel({ xdp: [{ offset: 4, sym: 'arr', type: R_BPF_64_64 }] }), /offset 0x4 is not an instruction/);
  rejects(withRel({ xdp: [{ offset: 16, sym: 'arr', type: R_BPF_64_64 }] }), /R_BPF_64_64 at 0x10 is not on an lddw/);
  rejects(withRel({ xdp: [{ offset: 8, sym: 'arr', type: R_BPF_64_64 }] }), /second slot of an lddw/);
  rejects(withRel({ xdp: [{ offset: 0, sym: 'helper', type: R_BPF_64_64 }] }), /'helper', which is not a map/);
  rejects(withRel({ xdp: [{ offset: 0, sym: 'arr', type: 3 }] }), /unsupported relocation type 3/);
  rejects(withRel({ tc: [{ offset: 8, sym: 'helper', type: R_BPF_64_32 }] }), /R_BPF_64_32 at 0x8 is not on a call/);
  rejects(withRel({ tc: [{ offset: 0, sym: 'counts', type: R_BPF_64_32 }] }), /not a function or section symbol/);
  // Symbol index out of range: patch r_info of a valid relocation.
  const b = buildObject(richSpec());
  const bytes = b.bytes.slice();
  new DataView(bytes.buffer).setBigUint64(b.sec['.relxdp']![1] + 8, (999n << 32n) | 1n, true);
  rejects(bytes, /symbol index 999 out of range/);
});

test('rejects BTF-defined .maps and SHT_RELA', () => {
  const spec = richSpec();
  rejects(buildObject({ ...spec, sections: [...spec.sections, { name: '.maps', data: new Uint8Array(32) }] }).bytes, /BTF-defined \.maps not supported yet; use the legacy maps section/);
  rejects(buildObject({ ...spec, sections: [...spec.sections, { name: '.rela.foo', type: SHT_RELA, flags: 0n, data: new Uint8Array(0) }] }).bytes, /SHT_RELA/);
});

test('rejects malformed functions and maps', () => {
  const spec = richSpec();
  const syms = (f: (s: SymSpec) => SymSpec) => buildObject({ ...spec, symbols: spec.symbols.map(f) }).bytes;
  rejects(syms((s) => (s.name === 'second' ? { ...s, size: 24 } : s)), /function 'second' in 'kprobe\/multi': .* lies outside the section/);
  rejects(syms((s) => (s.name === 'second' ? { ...s, value: 8, size: 8 } : s)), /overlaps the previous function/);
  rejects(syms((s) => (s.name === 'arr' ? { ...s, value: 30 } : s)), /map 'arr': offset 0x1e is not 4-byte aligned/);
  rejects(syms((s) => (s.name === 'arr' ? { ...s, value: 24 } : s)), /map 'arr': definition .* lies outside section 'maps'/);
  rejects(syms((s) => (s.name === 'xdp_prog' ? { ...s, size: 8 } : s)), /truncated lddw/);
});

test('mutation fuzz: 1,000 mutants either load or throw BpfObjectError', () => {
  const good = buildObject(richSpec()).bytes;
  const rand = rng(0xb9f);
  let loaded = 0;
  for (let n = 0; n < 1000; n++) {
    let m = good.slice();
    const kind = Math.floor(rand() * 4);
    if (kind === 3) {
      m = m.subarray(0, Math.floor(rand() * m.length));
    } else {
      const count = 1 + Math.floor(rand() * 8);
      for (let k = 0; k < count; k++) {
        const pos = Math.floor(rand() * m.length);
        if (kind === 0) m[pos] = Math.floor(rand() * 256);
        else if (kind === 1) m[pos]! ^= 1 << Math.floor(rand() * 8);
        else m[pos] = [0, 0xff, 0x7f, 0x80][Math.floor(rand() * 4)]!;
      }
    }
    try {
      loadBpfObject(m);
      loaded++;
    } catch (e) {
      if (!(e instanceof BpfObjectError)) assert.fail(`mutant ${n} threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
      assert.ok(!e.message.includes('\n'));
    }
  }
  assert.ok(loaded > 0, 'some mutants should still load');
});
