/**
 * KTBP program images (docs/bpf-runtime.md, "Program image"): what the upcall device carries to
 * the guest runtime, built from a clang object, an assembly file or an image file, and checked
 * with the host verifier against a hook before it is sent.
 * @module
 */
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { AsmError, assemble } from './asm.js';
import { loadBpfObject, type BpfObject } from './elf.js';
import { BPF_MAP_TYPE, GUEST_HELPERS, type BpfHook } from './hooks.js';
import { LDDW_OPCODE, LDDW_PSEUDO, decodeProgram, encodeProgram, slotCount, type BpfInsn } from './isa.js';
import { verify, type VerifyResult } from './verifier.js';

/** "KTBP" as a little-endian u32. */
export const IMAGE_MAGIC = 0x5042544b;
export const IMAGE_VERSION = 1;
export const IMAGE_HEADER_SIZE = 16;
export const IMAGE_MAP_SIZE = 32;
/** Limits both the host and the guest enforce. */
export const IMAGE_LIMITS = {
  maxInsns: 4096, maxMaps: 16, maxName: 15, maxHashKey: 64, maxValue: 1024, maxEntries: 65536,
} as const;

const MAP_BY_FD = LDDW_PSEUDO.indexOf('map_by_fd');
const MAP_BY_IDX = LDDW_PSEUDO.indexOf('map_by_idx');
const NAME_RE = /^[A-Za-z0-9_.]{1,15}$/;

/** A map an image declares (created by the guest, or shared with an existing map of that name). */
export interface ImageMap {
  name: string;
  /** {@link BPF_MAP_TYPE}: 1 hash, 2 array. */
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

/** A decoded image: maps, and instructions whose map loads are `lddw map_by_fd(index)`. */
export interface BpfImage {
  maps: ImageMap[];
  insns: BpfInsn[];
}

/** A malformed image, or a source that cannot become one. */
export class BpfImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BpfImageError';
  }
}

const fail = (msg: string): never => {
  throw new BpfImageError(msg);
};

function checkMap(m: ImageMap, i: number): void {
  const where = `map ${i} (${JSON.stringify(m.name)})`;
  const L = IMAGE_LIMITS;
  if (!NAME_RE.test(m.name)) fail(`${where}: name must be 1–${L.maxName} characters of [A-Za-z0-9_.]`);
  if (m.type !== BPF_MAP_TYPE.HASH && m.type !== BPF_MAP_TYPE.ARRAY) fail(`${where}: type ${m.type} is neither 1 (hash) nor 2 (array)`);
  if (m.type === BPF_MAP_TYPE.ARRAY && m.keySize !== 4) fail(`${where}: an array map's key_size must be 4, not ${m.keySize}`);
  if (!(m.keySize >= 1 && m.keySize <= L.maxHashKey)) fail(`${where}: key_size ${m.keySize} outside 1–${L.maxHashKey}`);
  if (!(m.valueSize >= 1 && m.valueSize <= L.maxValue)) fail(`${where}: value_size ${m.valueSize} outside 1–${L.maxValue}`);
  if (!(m.maxEntries >= 1 && m.maxEntries <= L.maxEntries)) fail(`${where}: max_entries ${m.maxEntries} outside 1–${L.maxEntries}`);
}

function checkMapRefs(image: BpfImage): void {
  let slot = 0;
  for (const insn of image.insns) {
    if (insn.opcode === LDDW_OPCODE && insn.src === MAP_BY_FD && (insn.imm < 0 || insn.imm >= image.maps.length)) {
      fail(`instruction ${slot}: map index ${insn.imm} but the image declares ${image.maps.length} map(s)`);
    }
    slot += slotCount(insn);
  }
}

/** Encodes an image; throws {@link BpfImageError} for anything the guest would refuse to parse. */
export function encodeImage(image: BpfImage): Uint8Array {
  if (image.maps.length > IMAGE_LIMITS.maxMaps) fail(`${image.maps.length} maps, at most ${IMAGE_LIMITS.maxMaps}`);
  image.maps.forEach(checkMap);
  checkMapRefs(image);
  const code = encodeProgram(image.insns);
  const slots = code.length / 8;
  if (slots < 1 || slots > IMAGE_LIMITS.maxInsns) fail(`${slots} instruction slots, expected 1–${IMAGE_LIMITS.maxInsns}`);
  const mapsEnd = IMAGE_HEADER_SIZE + IMAGE_MAP_SIZE * image.maps.length;
  const out = new Uint8Array(mapsEnd + code.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, IMAGE_MAGIC, true);
  dv.setUint16(4, IMAGE_VERSION, true);
  dv.setUint32(8, slots, true);
  dv.setUint32(12, image.maps.length, true);
  image.maps.forEach((m, i) => {
    const at = IMAGE_HEADER_SIZE + IMAGE_MAP_SIZE * i;
    out.set(new TextEncoder().encode(m.name), at);
    dv.setUint32(at + 16, m.type, true);
    dv.setUint32(at + 20, m.keySize, true);
    dv.setUint32(at + 24, m.valueSize, true);
    dv.setUint32(at + 28, m.maxEntries, true);
  });
  out.set(code, mapsEnd);
  return out;
}

/** Decodes and validates an image as strictly as the guest does. */
export function decodeImage(bytes: Uint8Array): BpfImage {
  if (bytes.length < IMAGE_HEADER_SIZE) fail(`image is ${bytes.length} bytes, shorter than its ${IMAGE_HEADER_SIZE}-byte header`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dv.getUint32(0, true) !== IMAGE_MAGIC) fail(`bad magic 0x${dv.getUint32(0, true).toString(16)} (expected "KTBP")`);
  if (dv.getUint16(4, true) !== IMAGE_VERSION) fail(`unsupported image version ${dv.getUint16(4, true)}`);
  if (dv.getUint16(6, true) !== 0) fail(`unknown image flags 0x${dv.getUint16(6, true).toString(16)}`);
  const slots = dv.getUint32(8, true);
  const nmaps = dv.getUint32(12, true);
  if (slots < 1 || slots > IMAGE_LIMITS.maxInsns) fail(`insn_count ${slots} outside 1–${IMAGE_LIMITS.maxInsns}`);
  if (nmaps > IMAGE_LIMITS.maxMaps) fail(`map_count ${nmaps} over ${IMAGE_LIMITS.maxMaps}`);
  const mapsEnd = IMAGE_HEADER_SIZE + IMAGE_MAP_SIZE * nmaps;
  const want = mapsEnd + 8 * slots;
  if (bytes.length !== want) fail(`image is ${bytes.length} bytes; its header says ${want}`);
  const maps: ImageMap[] = [];
  for (let i = 0; i < nmaps; i++) {
    const at = IMAGE_HEADER_SIZE + IMAGE_MAP_SIZE * i;
    const raw = bytes.subarray(at, at + 16);
    const nul = raw.indexOf(0);
    if (nul < 0 || raw.subarray(nul).some((b) => b !== 0)) fail(`map ${i}: name is not NUL terminated and NUL padded`);
    maps.push({
      name: new TextDecoder().decode(raw.subarray(0, nul)),
      type: dv.getUint32(at + 16, true), keySize: dv.getUint32(at + 20, true),
      valueSize: dv.getUint32(at + 24, true), maxEntries: dv.getUint32(at + 28, true),
    });
    checkMap(maps[i]!, i);
  }
  let insns: BpfInsn[];
  try {
    insns = decodeProgram(bytes.subarray(mapsEnd));
  } catch (e) {
    return fail(`instructions: ${(e as Error).message}`);
  }
  const image = { maps, insns };
  checkMapRefs(image);
  return image;
}

/**
 * The image of one program of a clang object: its legacy maps, with `map_by_idx` loads turned
 * into the image's `map_by_fd(index)`. `program` picks a function or section name; it may be
 * omitted when the object has exactly one program.
 */
export function imageFromObject(obj: BpfObject, program?: string): BpfImage {
  const names = obj.programs.map((p) => `${p.name} (section ${p.section})`).join(', ') || 'none';
  const matches = program === undefined ? obj.programs : obj.programs.filter((p) => p.name === program || p.section === program);
  if (matches.length !== 1) {
    fail(program === undefined
      ? `the object has ${obj.programs.length} programs (${names}): choose one`
      : `${matches.length === 0 ? 'no' : 'more than one'} program named ${JSON.stringify(program)}; the object has ${names}`);
  }
  const maps = obj.maps.map(({ name, type, keySize, valueSize, maxEntries }) => ({ name, type, keySize, valueSize, maxEntries }));
  const insns = matches[0]!.insns.map((i) => (i.opcode === LDDW_OPCODE && i.src === MAP_BY_IDX ? { ...i, src: MAP_BY_FD } : { ...i }));
  return { maps, insns };
}

const MAP_DIRECTIVE = /^\s*\.map\s+(\S+)\s+(hash|array)\s+(\d+)\s+(\d+)\s+(\d+)\s*(?:(?:;|\/\/|#).*)?$/i;
const MAP_REF = /\bmap\(\s*([A-Za-z0-9_.]+)\s*\)/g;

/**
 * The image of an assembly source: the assembler's syntax plus `.map NAME hash|array KEY VALUE
 * MAX` lines declaring maps in order, and `map(NAME)` standing for `map_by_fd(index)` in
 * `rN = map(NAME) ll`. Errors name the line.
 */
export function imageFromAssembly(text: string): BpfImage {
  const maps: ImageMap[] = [];
  const lines = text.split(/\r?\n/).map((line, i) => {
    const m = MAP_DIRECTIVE.exec(line);
    if (!m) {
      if (/^\s*\.map\b/i.test(line)) fail(`line ${i + 1}: expected ".map NAME hash|array KEY_SIZE VALUE_SIZE MAX_ENTRIES"`);
      return line.replace(MAP_REF, (_all, name: string) => {
        const index = maps.findIndex((d) => d.name === name);
        if (index < 0) fail(`line ${i + 1}: map ${name} is not declared by a .map line above`);
        return `map_by_fd(${index})`;
      });
    }
    if (maps.some((d) => d.name === m[1])) fail(`line ${i + 1}: map ${m[1]} declared twice`);
    const map = {
      name: m[1]!, type: m[2]!.toLowerCase() === 'hash' ? BPF_MAP_TYPE.HASH : BPF_MAP_TYPE.ARRAY,
      keySize: Number(m[3]), valueSize: Number(m[4]), maxEntries: Number(m[5]),
    };
    try {
      checkMap(map, maps.length);
    } catch (e) {
      fail(`line ${i + 1}: ${(e as Error).message}`);
    }
    maps.push(map);
    return '';
  });
  try {
    const image = { maps, insns: assemble(lines.join('\n')) };
    checkMapRefs(image);
    return image;
  } catch (e) {
    if (e instanceof AsmError) return fail(e.message);
    throw e;
  }
}

/**
 * Reads a program file by its extension: `.o` (clang object; `program` picks one), `.s`/`.asm`
 * (assembly) or `.ktbp` (an image).
 */
export function imageFromFile(path: string, program?: string): BpfImage {
  const ext = extname(path).toLowerCase();
  const bytes = readFileSync(path);
  switch (ext) {
    case '.o': return imageFromObject(loadBpfObject(bytes), program);
    case '.s': case '.asm': return imageFromAssembly(bytes.toString('utf8'));
    case '.ktbp': return decodeImage(bytes);
    default: return fail(`${path}: unknown program file type ${JSON.stringify(ext)} (expected .o, .s, .asm or .ktbp)`);
  }
}

/** Runs the host verifier on an image for a hook's context and the guest runtime's helpers. */
export function verifyImage(image: BpfImage, hook: BpfHook): VerifyResult {
  return verify(image.insns, {
    contextSize: hook.contextSize,
    helpers: [...GUEST_HELPERS],
    maps: image.maps.map((m, index) => ({ index, keySize: m.keySize, valueSize: m.valueSize })),
  });
}
