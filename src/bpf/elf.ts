/**
 * Loader for eBPF relocatable objects as produced by `clang -target bpf -c`
 * (ELF64, little-endian, `e_machine` EM_BPF, `e_type` ET_REL).
 *
 * Objects come from users and may be hostile or corrupt: every header, section, symbol, string and
 * relocation is bounds-checked (bigint arithmetic for 64-bit file fields) before use, and every
 * failure is a {@link BpfObjectError} with a one-line message.
 *
 * What is understood:
 * - programs: every executable SHT_PROGBITS section except `.text` is split into one program per
 *   STT_FUNC symbol. Functions in `.text` (and any other function) are subprograms: a program that
 *   calls one gets a copy appended after its own body (libbpf style), transitively, and the call's
 *   imm is rewritten to the slot-relative offset of that copy (`src = BPF_PSEUDO_CALL`).
 * - maps: the legacy `maps` section, one `struct bpf_map_def` (5 × u32) per symbol at its offset;
 *   map indexes follow section-offset order. BTF-defined `.maps` are rejected.
 * - relocations (SHT_REL `.rel<section>` for program sections): R_BPF_64_64 on an `lddw` against a
 *   map symbol becomes `lddw map_by_idx(index)`; R_BPF_64_32 on a `call` against a function symbol
 *   becomes a pseudo call. Relocations of non-program sections (debug info, BTF) are ignored.
 * @module
 */

import { BPF_CALL, BPF_JMP, BPF_PSEUDO_CALL, InvalidInstructionError, LDDW_OPCODE, LDDW_PSEUDO, decodeProgram, slotCount, type BpfInsn } from './isa.js';

/** A malformed or unsupported BPF object; the message is one line, fit for a user. */
export class BpfObjectError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BpfObjectError';
  }
}

/** One loadable program: its function symbol, the section it came from, and linked instructions. */
export interface BpfProgram {
  name: string;
  section: string;
  insns: BpfInsn[];
}

/** One legacy map definition (`struct bpf_map_def`). */
export interface BpfMapDef {
  name: string;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

/** A parsed object file. */
export interface BpfObject {
  programs: BpfProgram[];
  maps: BpfMapDef[];
}

export const EM_BPF = 247;
export const ET_REL = 1;
export const SHT_PROGBITS = 1;
export const SHT_SYMTAB = 2;
export const SHT_STRTAB = 3;
export const SHT_RELA = 4;
export const SHT_NOBITS = 8;
export const SHT_REL = 9;
export const SHF_EXECINSTR = 0x4;
export const STT_OBJECT = 1;
export const STT_FUNC = 2;
export const STT_SECTION = 3;
/** Relocation types from LLVM's BPF ELF ABI. */
export const R_BPF_64_64 = 1;
export const R_BPF_64_32 = 10;
/** Size of a legacy `struct bpf_map_def`. */
export const MAP_DEF_SIZE = 20;

const EHDR_SIZE = 64;
const SHDR_SIZE = 64;
const SYM_SIZE = 24;
const REL_SIZE = 16;
const SHN_LORESERVE = 0xff00;
const SHN_XINDEX = 0xffff;
const CALL_OPCODE = BPF_JMP | BPF_CALL;
const MAP_BY_IDX = LDDW_PSEUDO.indexOf('map_by_idx');
/** Upper bound on linked program length (slots), so hostile call graphs cannot blow up memory. */
const MAX_PROGRAM_SLOTS = 1 << 20;
/** Upper bound on all linked programs together (subprograms are copied into every caller). */
const MAX_TOTAL_SLOTS = 1 << 22;

const hex = (n: bigint | number): string => `0x${n.toString(16)}`;
const fail = (msg: string): never => {
  throw new BpfObjectError(msg);
};

interface Section {
  index: number;
  name: string;
  type: number;
  flags: bigint;
  offset: number;
  size: number;
  link: number;
  info: number;
  entsize: bigint;
  data: Uint8Array;
}

interface Sym {
  index: number;
  name: string;
  type: number;
  shndx: number;
  value: bigint;
  size: bigint;
}

interface Func {
  sym: Sym;
  section: Section;
  /** Start slot within the section. */
  start: number;
  /** Length in slots. */
  slots: number;
  insns: BpfInsn[];
  /** Slot (relative to function start) → index into `insns`; -1 for an lddw's second slot. */
  slotToInsn: Int32Array;
  /** insn index → target function for local calls. */
  calls: Map<number, Func>;
}

/**
 * Parses a `clang -target bpf -c` object.
 * @throws BpfObjectError for anything malformed, unsupported or out of bounds.
 */
export function loadBpfObject(bytes: Uint8Array): BpfObject {
  const sections = readSections(bytes);
  if (sections.some((s) => s.name === '.maps')) fail('BTF-defined .maps not supported yet; use the legacy maps section');
  const symtabs = sections.filter((s) => s.type === SHT_SYMTAB);
  if (symtabs.length !== 1) fail(`expected exactly one SHT_SYMTAB section, found ${symtabs.length}`);
  const symtab = symtabs[0]!;
  const syms = readSymbols(symtab, sections);
  const maps = readMaps(sections, syms);
  const funcs = readFunctions(sections, syms);
  const byStart = new Map<string, Func>();
  for (const f of funcs) byStart.set(`${f.section.index}:${f.start}`, f);
  applyRelocations(sections, symtab, syms, maps, funcs, byStart);
  resolveLocalCalls(funcs, byStart);
  let budget = MAX_TOTAL_SLOTS;
  const programs = funcs
    .filter((f) => f.section.name !== '.text')
    .map((f) => {
      const insns = link(f);
      budget -= insns.length;
      if (budget < 0) fail(`linked programs exceed ${MAX_TOTAL_SLOTS} instructions in total`);
      return { name: f.sym.name, section: f.section.name, insns };
    });
  return { programs, maps: maps.map((m) => m.def) };
}

function readSections(bytes: Uint8Array): Section[] {
  if (bytes.length < 4 || bytes[0] !== 0x7f || bytes[1] !== 0x45 || bytes[2] !== 0x4c || bytes[3] !== 0x46) {
    fail('not an ELF file: bad magic (expected 7f 45 4c 46)');
  }
  if (bytes.length < EHDR_SIZE) fail(`ELF header truncated: file is ${hex(bytes.length)} bytes, header needs ${hex(EHDR_SIZE)}`);
  if (bytes[4] !== 2) fail(`not ELF64: EI_CLASS is ${bytes[4]} (expected 2)`);
  if (bytes[5] !== 1) fail(`not little-endian: EI_DATA is ${bytes[5]} (expected 1)`);
  if (bytes[6] !== 1) fail(`unsupported ELF version: EI_VERSION is ${bytes[6]}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const eType = dv.getUint16(16, true);
  const eMachine = dv.getUint16(18, true);
  if (eMachine !== EM_BPF) fail(`unsupported machine: e_machine is ${eMachine} (expected ${EM_BPF}, EM_BPF)`);
  if (eType !== ET_REL) fail(`unsupported ELF type: e_type is ${eType} (expected ${ET_REL} ET_REL, a clang -c object)`);
  if (dv.getUint32(20, true) !== 1) fail(`unsupported ELF version: e_version is ${dv.getUint32(20, true)}`);
  const shoff = dv.getBigUint64(40, true);
  const shentsize = dv.getUint16(58, true);
  const shnum = dv.getUint16(60, true);
  const shstrndx = dv.getUint16(62, true);
  if (shnum === 0) fail('no section header table: e_shnum is 0 (extended section numbering is not supported)');
  if (shentsize !== SHDR_SIZE) fail(`bad e_shentsize ${hex(shentsize)} (expected ${hex(SHDR_SIZE)})`);
  const fileSize = BigInt(bytes.length);
  const shEnd = shoff + BigInt(shnum * SHDR_SIZE);
  if (shEnd > fileSize) fail(`section header table [${hex(shoff)}, ${hex(shEnd)}) lies outside the file (${hex(fileSize)} bytes)`);
  if (shstrndx === SHN_XINDEX || shstrndx >= shnum) fail(`e_shstrndx ${shstrndx} out of range (${shnum} sections)`);

  const raw: Section[] = [];
  const nameOffs: number[] = [];
  for (let i = 0; i < shnum; i++) {
    const o = Number(shoff) + i * SHDR_SIZE;
    const type = dv.getUint32(o + 4, true);
    const offset = dv.getBigUint64(o + 24, true);
    const size = dv.getBigUint64(o + 32, true);
    const hasData = type !== SHT_NOBITS && i !== 0;
    if (hasData && offset + size > fileSize) {
      fail(`section ${i}: file range [${hex(offset)}, ${hex(offset + size)}) extends beyond end of file (${hex(fileSize)} bytes)`);
    }
    raw.push({
      index: i,
      name: '',
      type,
      flags: dv.getBigUint64(o + 8, true),
      offset: hasData ? Number(offset) : 0,
      size: hasData ? Number(size) : 0,
      link: dv.getUint32(o + 40, true),
      info: dv.getUint32(o + 44, true),
      entsize: dv.getBigUint64(o + 56, true),
      data: hasData ? bytes.subarray(Number(offset), Number(offset + size)) : new Uint8Array(0),
    });
    nameOffs.push(dv.getUint32(o, true));
  }
  const shstr = raw[shstrndx]!;
  if (shstr.type !== SHT_STRTAB) fail(`section ${shstrndx} (e_shstrndx) is not SHT_STRTAB (type ${shstr.type})`);
  for (const s of raw) s.name = cstring(shstr, nameOffs[s.index]!, `section ${s.index} name`);
  return raw;
}

/** A NUL-terminated string at `off` inside string table `tab`. */
function cstring(tab: Section, off: number, what: string): string {
  if (off >= tab.data.length) fail(`${what}: string offset ${hex(off)} outside string table '${tab.name || tab.index}' (${hex(tab.data.length)} bytes)`);
  const end = tab.data.indexOf(0, off);
  if (end < 0) fail(`${what}: string at ${hex(off)} in '${tab.name || tab.index}' is not NUL-terminated`);
  return new TextDecoder().decode(tab.data.subarray(off, end));
}

function readSymbols(symtab: Section, sections: readonly Section[]): Sym[] {
  if (symtab.entsize !== BigInt(SYM_SIZE)) fail(`symbol table '${symtab.name}': bad sh_entsize ${hex(symtab.entsize)} (expected ${hex(SYM_SIZE)})`);
  if (symtab.size % SYM_SIZE !== 0) fail(`symbol table '${symtab.name}': size ${hex(symtab.size)} is not a multiple of ${SYM_SIZE}`);
  const strtab = sections[symtab.link];
  if (strtab === undefined || strtab.type !== SHT_STRTAB) fail(`symbol table '${symtab.name}': sh_link ${symtab.link} is not a string table`);
  const dv = new DataView(symtab.data.buffer, symtab.data.byteOffset, symtab.data.byteLength);
  const out: Sym[] = [];
  for (let i = 0; i < symtab.size / SYM_SIZE; i++) {
    const o = i * SYM_SIZE;
    const info = dv.getUint8(o + 4);
    const shndx = dv.getUint16(o + 6, true);
    if (shndx === SHN_XINDEX) fail(`symbol ${i}: SHN_XINDEX section indexes are not supported`);
    if (shndx !== 0 && shndx < SHN_LORESERVE && shndx >= sections.length) fail(`symbol ${i}: section index ${shndx} out of range (${sections.length} sections)`);
    const type = info & 0xf;
    out.push({
      index: i,
      name: type === STT_SECTION ? (sections[shndx]?.name ?? '') : cstring(strtab!, dv.getUint32(o, true), `symbol ${i} name`),
      type,
      shndx,
      value: dv.getBigUint64(o + 8, true),
      size: dv.getBigUint64(o + 16, true),
    });
  }
  return out;
}

interface MapEntry {
  def: BpfMapDef;
  section: number;
  offset: bigint;
}

function readMaps(sections: readonly Section[], syms: readonly Sym[]): MapEntry[] {
  const mapsSecs = sections.filter((s) => s.name === 'maps');
  if (mapsSecs.length === 0) return [];
  if (mapsSecs.length > 1) fail(`${mapsSecs.length} sections named 'maps'`);
  const sec = mapsSecs[0]!;
  if (sec.type !== SHT_PROGBITS) fail(`section 'maps' has type ${sec.type} (expected SHT_PROGBITS)`);
  const dv = new DataView(sec.data.buffer, sec.data.byteOffset, sec.data.byteLength);
  const mapSyms = syms.filter((s) => s.shndx === sec.index && s.type !== STT_SECTION && s.index !== 0);
  mapSyms.sort((a, b) => (a.value < b.value ? -1 : a.value > b.value ? 1 : 0));
  const out: MapEntry[] = [];
  for (const s of mapSyms) {
    const where = `map '${s.name}'`;
    if (s.name === '') fail(`map symbol ${s.index} in 'maps' has no name`);
    if (s.value % 4n !== 0n) fail(`${where}: offset ${hex(s.value)} is not 4-byte aligned`);
    if (s.value + BigInt(MAP_DEF_SIZE) > BigInt(sec.size)) {
      fail(`${where}: definition [${hex(s.value)}, ${hex(s.value + BigInt(MAP_DEF_SIZE))}) lies outside section 'maps' (${hex(sec.size)} bytes)`);
    }
    const prev = out[out.length - 1];
    if (prev && s.value < prev.offset + BigInt(MAP_DEF_SIZE)) fail(`${where} overlaps map '${prev.def.name}' at ${hex(prev.offset)}`);
    if (out.some((m) => m.def.name === s.name)) fail(`duplicate map name '${s.name}'`);
    const o = Number(s.value);
    out.push({
      section: sec.index,
      offset: s.value,
      def: {
        name: s.name,
        type: dv.getUint32(o, true),
        keySize: dv.getUint32(o + 4, true),
        valueSize: dv.getUint32(o + 8, true),
        maxEntries: dv.getUint32(o + 12, true),
        flags: dv.getUint32(o + 16, true),
      },
    });
  }
  return out;
}

function isProgramSection(s: Section): boolean {
  return s.type === SHT_PROGBITS && (s.flags & BigInt(SHF_EXECINSTR)) !== 0n;
}

function readFunctions(sections: readonly Section[], syms: readonly Sym[]): Func[] {
  const out: Func[] = [];
  const bySection = new Map<number, Sym[]>();
  for (const s of syms) {
    if (s.type !== STT_FUNC) continue;
    const list = bySection.get(s.shndx);
    if (list) list.push(s);
    else bySection.set(s.shndx, [s]);
  }
  for (const sec of sections) {
    if (!isProgramSection(sec)) continue;
    if (sec.size % 8 !== 0) fail(`section '${sec.name}': size ${hex(sec.size)} is not a multiple of 8`);
    const fsyms = bySection.get(sec.index) ?? [];
    if (fsyms.length === 0) {
      if (sec.size === 0) continue;
      fail(`section '${sec.name}': executable section has no function symbols`);
    }
    fsyms.sort((a, b) => (a.value < b.value ? -1 : a.value > b.value ? 1 : 0));
    let end = 0n;
    for (const s of fsyms) {
      const where = `function '${s.name}' in '${sec.name}'`;
      if (s.name === '') fail(`function symbol ${s.index} in '${sec.name}' has no name`);
      if (s.value % 8n !== 0n || s.size % 8n !== 0n) fail(`${where}: offset ${hex(s.value)} / size ${hex(s.size)} not 8-byte aligned`);
      if (s.size === 0n) fail(`${where}: size is 0`);
      if (s.value + s.size > BigInt(sec.size)) fail(`${where}: [${hex(s.value)}, ${hex(s.value + s.size)}) lies outside the section (${hex(sec.size)} bytes)`);
      if (s.value < end) fail(`${where} overlaps the previous function`);
      end = s.value + s.size;
      const start = Number(s.value);
      let insns: BpfInsn[];
      try {
        insns = decodeProgram(sec.data.subarray(start, start + Number(s.size)));
      } catch (e) {
        if (e instanceof InvalidInstructionError) fail(`${where}: ${e.message}`);
        throw e;
      }
      const slots = Number(s.size) / 8;
      const slotToInsn = new Int32Array(slots);
      let slot = 0;
      insns!.forEach((insn, i) => {
        slotToInsn[slot] = i;
        if (slotCount(insn) === 2) slotToInsn[slot + 1] = -1;
        slot += slotCount(insn);
      });
      out.push({ sym: s, section: sec, start: start / 8, slots, insns: insns!, slotToInsn, calls: new Map() });
    }
  }
  const names = new Set<string>();
  for (const f of out) {
    if (names.has(f.sym.name)) fail(`duplicate function name '${f.sym.name}'`);
    names.add(f.sym.name);
  }
  return out;
}

/** The function containing section slot `slot`, and the insn index at it (throws if mid-lddw or outside any function). */
function locate(owners: ReadonlyMap<Section, { funcs: Func[]; owner: Int32Array }>, sec: Section, slot: number, what: string): [Func, number] {
  const entry = owners.get(sec);
  const k = entry ? entry.owner[slot]! : -1;
  if (!entry || k < 0) return fail(`${what}: offset ${hex(slot * 8)} is not inside any function of '${sec.name}'`);
  const f = entry.funcs[k]!;
  const i = f.slotToInsn[slot - f.start]!;
  if (i < 0) fail(`${what}: offset ${hex(slot * 8)} is the second slot of an lddw`);
  return [f, i];
}

/** Per program section: slot → index of the owning function (-1 in gaps). */
function ownerTable(funcs: readonly Func[]): Map<Section, { funcs: Func[]; owner: Int32Array }> {
  const out = new Map<Section, { funcs: Func[]; owner: Int32Array }>();
  for (const f of funcs) {
    let e = out.get(f.section);
    if (!e) {
      e = { funcs: [], owner: new Int32Array(f.section.size / 8).fill(-1) };
      out.set(f.section, e);
    }
    e.owner.fill(e.funcs.length, f.start, f.start + f.slots);
    e.funcs.push(f);
  }
  return out;
}

function applyRelocations(
  sections: readonly Section[],
  symtab: Section,
  syms: readonly Sym[],
  maps: readonly MapEntry[],
  funcs: readonly Func[],
  byStart: ReadonlyMap<string, Func>,
): void {
  let owners: Map<Section, { funcs: Func[]; owner: Int32Array }> | undefined;
  for (const rel of sections) {
    if (rel.type === SHT_RELA) fail(`section '${rel.name}': SHT_RELA relocations are not supported (BPF objects use SHT_REL)`);
    if (rel.type !== SHT_REL) continue;
    const target = sections[rel.info];
    if (target === undefined || rel.info === 0) fail(`relocation section '${rel.name}': sh_info ${rel.info} out of range (${sections.length} sections)`);
    if (!isProgramSection(target!)) continue; // debug info / BTF relocations are not ours to apply
    if (rel.link !== symtab.index) fail(`relocation section '${rel.name}': sh_link ${rel.link} is not the symbol table (${symtab.index})`);
    if (rel.entsize !== BigInt(REL_SIZE)) fail(`relocation section '${rel.name}': bad sh_entsize ${hex(rel.entsize)} (expected ${hex(REL_SIZE)})`);
    if (rel.size % REL_SIZE !== 0) fail(`relocation section '${rel.name}': size ${hex(rel.size)} is not a multiple of ${REL_SIZE}`);
    const sec = target!;
    owners ??= ownerTable(funcs);
    const dv = new DataView(rel.data.buffer, rel.data.byteOffset, rel.data.byteLength);
    for (let k = 0; k < rel.size / REL_SIZE; k++) {
      const offset = dv.getBigUint64(k * REL_SIZE, true);
      const info = dv.getBigUint64(k * REL_SIZE + 8, true);
      const symIdx = info >> 32n;
      const type = Number(info & 0xffffffffn);
      const what = `relocation ${k} in '${rel.name}'`;
      if (offset % 8n !== 0n || offset >= BigInt(sec.size)) fail(`${what}: offset ${hex(offset)} is not an instruction of '${sec.name}' (${hex(sec.size)} bytes)`);
      if (symIdx === 0n || symIdx >= BigInt(syms.length)) fail(`${what}: symbol index ${symIdx} out of range (1..${syms.length - 1})`);
      const sym = syms[Number(symIdx)]!;
      const [f, i] = locate(owners, sec, Number(offset) / 8, what);
      const insn = f.insns[i]!;
      if (type === R_BPF_64_64) {
        if (insn.opcode !== LDDW_OPCODE) fail(`${what}: R_BPF_64_64 at ${hex(offset)} is not on an lddw (opcode ${hex(insn.opcode)})`);
        const map = maps.find((m) => m.section === sym.shndx && m.offset === sym.value && sym.type !== STT_SECTION);
        if (!map) fail(`${what}: R_BPF_64_64 against '${sym.name}', which is not a map in the legacy 'maps' section (global data is not supported)`);
        if (insn.src !== 0 || insn.imm64 !== 0n) fail(`${what}: lddw at ${hex(offset)} must be 'lddw rX, 0' before map relocation`);
        insn.src = MAP_BY_IDX;
        insn.imm = maps.indexOf(map!);
        insn.imm64 = BigInt(insn.imm);
      } else if (type === R_BPF_64_32) {
        if (insn.opcode !== CALL_OPCODE) fail(`${what}: R_BPF_64_32 at ${hex(offset)} is not on a call (opcode ${hex(insn.opcode)})`);
        if (sym.type !== STT_FUNC && sym.type !== STT_SECTION) fail(`${what}: call target '${sym.name}' is not a function or section symbol`);
        if (sym.shndx === 0 || sym.shndx >= sections.length) fail(`${what}: call target '${sym.name}' is undefined (extern/kfunc calls are not supported)`);
        if (insn.src !== 0 && insn.src !== BPF_PSEUDO_CALL) fail(`${what}: call at ${hex(offset)} has src ${insn.src}`);
        if (sym.value % 8n !== 0n) fail(`${what}: call target '${sym.name}' value ${hex(sym.value)} not 8-byte aligned`);
        // libbpf: target slot = sym.st_value / 8 + imm + 1 within the symbol's section.
        const targetSlot = sym.value / 8n + BigInt(insn.imm) + 1n;
        const callee = byStart.get(`${sym.shndx}:${targetSlot}`);
        if (!callee) fail(`${what}: call target '${sym.name}'${insn.imm === -1 ? '' : ` ${insn.imm + 1 < 0 ? '-' : '+'} ${Math.abs(insn.imm + 1)} insns`} is not the start of a function`);
        insn.src = BPF_PSEUDO_CALL;
        f.calls.set(i, callee!);
      } else {
        fail(`${what}: unsupported relocation type ${type} (only R_BPF_64_64 = 1 and R_BPF_64_32 = 10)`);
      }
    }
  }
}

/** Pseudo calls the compiler already resolved (no relocation) are relative to the call's own section. */
function resolveLocalCalls(funcs: readonly Func[], byStart: ReadonlyMap<string, Func>): void {
  for (const f of funcs) {
    let slot = f.start;
    f.insns.forEach((insn, i) => {
      if (insn.opcode === CALL_OPCODE && insn.src === BPF_PSEUDO_CALL && !f.calls.has(i)) {
        const target = slot + insn.imm + 1;
        const callee = byStart.get(`${f.section.index}:${target}`);
        if (!callee) fail(`function '${f.sym.name}': pseudo call at ${hex(slot * 8)} targets ${hex(target * 8)}, not the start of a function in '${f.section.name}'`);
        f.calls.set(i, callee!);
      }
      slot += slotCount(insn);
    });
  }
}

/** The program body followed by every (transitively) called subprogram, calls rewritten to slot offsets. */
function link(main: Func): BpfInsn[] {
  const order: Func[] = [main];
  const startOf = new Map<Func, number>([[main, 0]]);
  let total = main.slots;
  for (let k = 0; k < order.length; k++) {
    for (const callee of order[k]!.calls.values()) {
      if (startOf.has(callee)) continue;
      startOf.set(callee, total);
      total += callee.slots;
      if (total > MAX_PROGRAM_SLOTS) fail(`program '${main.sym.name}': linked size exceeds ${MAX_PROGRAM_SLOTS} instructions`);
      order.push(callee);
    }
  }
  const out: BpfInsn[] = [];
  for (const f of order) {
    let slot = startOf.get(f)!;
    f.insns.forEach((insn, i) => {
      const copy = { ...insn };
      const callee = f.calls.get(i);
      if (callee) copy.imm = startOf.get(callee)! - (slot + 1);
      out.push(copy);
      slot += slotCount(insn);
    });
  }
  return out;
}
