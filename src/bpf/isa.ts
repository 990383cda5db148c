/**
 * eBPF instruction encoding, decoding and classification (RFC 9669,
 * "BPF Instruction Set Architecture").
 *
 * Every instruction is an 8-byte little-endian slot:
 * `opcode:8 | dst:4 src:4 | off:16 (signed) | imm:32 (signed)`.
 * The only wide instruction, `lddw` (LD | IMM | DW), occupies two slots; its
 * second slot is all zeroes except the upper 32 bits of the immediate.
 *
 * Decoding is purely structural; {@link describe} is the validator, and it is
 * deliberately strict: fields that an encoding does not use MUST be zero
 * (RFC 9669 §3), otherwise the text syntax could not represent them and a
 * disassemble → assemble round trip would silently lose bits.
 * @module
 */

/** Instruction classes (low 3 bits of the opcode). */
export const BPF_LD = 0x00;
export const BPF_LDX = 0x01;
export const BPF_ST = 0x02;
export const BPF_STX = 0x03;
export const BPF_ALU = 0x04;
export const BPF_JMP = 0x05;
export const BPF_JMP32 = 0x06;
export const BPF_ALU64 = 0x07;

/** Source bit for ALU/JMP classes: immediate (K) or register (X). For END it selects LE (K) / BE (X). */
export const BPF_K = 0x00;
export const BPF_X = 0x08;

/** ALU operation codes (high 4 bits). */
export const BPF_ADD = 0x00;
export const BPF_SUB = 0x10;
export const BPF_MUL = 0x20;
export const BPF_DIV = 0x30;
export const BPF_OR = 0x40;
export const BPF_AND = 0x50;
export const BPF_LSH = 0x60;
export const BPF_RSH = 0x70;
export const BPF_NEG = 0x80;
export const BPF_MOD = 0x90;
export const BPF_XOR = 0xa0;
export const BPF_MOV = 0xb0;
export const BPF_ARSH = 0xc0;
export const BPF_END = 0xd0;

/** Jump operation codes (high 4 bits). */
export const BPF_JA = 0x00;
export const BPF_JEQ = 0x10;
export const BPF_JGT = 0x20;
export const BPF_JGE = 0x30;
export const BPF_JSET = 0x40;
export const BPF_JNE = 0x50;
export const BPF_JSGT = 0x60;
export const BPF_JSGE = 0x70;
export const BPF_CALL = 0x80;
export const BPF_EXIT = 0x90;
export const BPF_JLT = 0xa0;
export const BPF_JLE = 0xb0;
export const BPF_JSLT = 0xc0;
export const BPF_JSLE = 0xd0;

/** Load/store sizes (bits 3-4). */
export const BPF_W = 0x00;
export const BPF_H = 0x08;
export const BPF_B = 0x10;
export const BPF_DW = 0x18;

/** Load/store modes (high 3 bits). */
export const BPF_IMM = 0x00;
export const BPF_ABS = 0x20;
export const BPF_IND = 0x40;
export const BPF_MEM = 0x60;
export const BPF_MEMSX = 0x80;
export const BPF_ATOMIC = 0xc0;

/** Atomic operations (carried in imm of STX | ATOMIC). */
export const BPF_FETCH = 0x01;
export const BPF_XCHG = 0xe0 | BPF_FETCH;
export const BPF_CMPXCHG = 0xf0 | BPF_FETCH;

/** CALL src values. */
export const BPF_PSEUDO_CALL = 1;
export const BPF_PSEUDO_KFUNC_CALL = 2;

/** lddw src pseudo-types 0..6 as named in RFC 9669 §5.4. */
export const LDDW_PSEUDO = ['imm64', 'map_by_fd', 'map_val_by_fd', 'var_addr', 'code_addr', 'map_by_idx', 'map_val_by_idx'] as const;
/** Name of an lddw src pseudo-type. */
export type LddwKind = (typeof LDDW_PSEUDO)[number];

/** Opcode of the two-slot 64-bit immediate load. */
export const LDDW_OPCODE = BPF_LD | BPF_IMM | BPF_DW;
/** Highest valid register number (r10 is the read-only frame pointer). */
export const MAX_REG = 10;

/**
 * One decoded instruction. For `lddw` the full 64-bit immediate lives in
 * `imm64` (unsigned); `imm` then mirrors its low half as a signed int32.
 */
export interface BpfInsn {
  opcode: number;
  dst: number;
  src: number;
  off: number;
  imm: number;
  imm64?: bigint;
}

/** A structurally or semantically invalid instruction; `index` is its slot number (pc). */
export class InvalidInstructionError extends Error {
  override name = 'InvalidInstructionError';
  constructor(
    readonly index: number,
    readonly reason: string,
    opcode?: number,
  ) {
    super(`instruction ${index}${opcode === undefined ? '' : ` (opcode 0x${hex2(opcode)})`}: ${reason}`);
  }
}

function hex2(n: number): string {
  return (n & 0xff).toString(16).padStart(2, '0');
}

/** Number of 8-byte slots an instruction occupies. */
export function slotCount(insn: BpfInsn): 1 | 2 {
  return insn.opcode === LDDW_OPCODE ? 2 : 1;
}

/** Low and high signed 32-bit halves of an lddw immediate (imm64 wins over imm when present). */
export function lddwHalves(insn: BpfInsn): [lo: number, hi: number] {
  if (insn.imm64 === undefined) return [insn.imm | 0, 0];
  const v = BigInt.asUintN(64, insn.imm64);
  return [Number(BigInt.asIntN(32, v)), Number(BigInt.asIntN(32, v >> 32n))];
}

/**
 * Decode a little-endian program. `lddw` consumes two slots and yields one
 * {@link BpfInsn}. Throws {@link InvalidInstructionError} for a length that is
 * not a multiple of 8, a truncated `lddw`, or a malformed second slot.
 */
export function decodeProgram(bytes: Uint8Array): BpfInsn[] {
  if (bytes.length % 8 !== 0) {
    throw new InvalidInstructionError(Math.floor(bytes.length / 8), `program length ${bytes.length} is not a multiple of 8 bytes`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const slots = bytes.length / 8;
  const out: BpfInsn[] = [];
  for (let i = 0; i < slots; i++) {
    const p = i * 8;
    const opcode = view.getUint8(p);
    const regs = view.getUint8(p + 1);
    const insn: BpfInsn = { opcode, dst: regs & 0xf, src: regs >> 4, off: view.getInt16(p + 2, true), imm: view.getInt32(p + 4, true) };
    if (opcode === LDDW_OPCODE) {
      if (i + 1 >= slots) throw new InvalidInstructionError(i, 'truncated lddw: second slot missing', opcode);
      const q = p + 8;
      if (view.getUint8(q) !== 0 || view.getUint8(q + 1) !== 0 || view.getInt16(q + 2, true) !== 0) {
        throw new InvalidInstructionError(i + 1, 'bad lddw second slot: opcode, registers and offset must be zero', view.getUint8(q));
      }
      insn.imm64 = (BigInt(view.getUint32(q + 4, true)) << 32n) | BigInt(view.getUint32(p + 4, true));
      i++;
    }
    out.push(insn);
  }
  return out;
}

function checkFields(insn: BpfInsn, index: number): void {
  const bad = (why: string): never => {
    throw new InvalidInstructionError(index, why, insn.opcode);
  };
  const intIn = (v: number, lo: number, hi: number) => Number.isInteger(v) && v >= lo && v <= hi;
  if (!intIn(insn.opcode, 0, 0xff)) bad(`opcode ${insn.opcode} out of range`);
  if (!intIn(insn.dst, 0, 15)) bad(`dst ${insn.dst} does not fit in 4 bits`);
  if (!intIn(insn.src, 0, 15)) bad(`src ${insn.src} does not fit in 4 bits`);
  if (!intIn(insn.off, -0x8000, 0x7fff)) bad(`offset ${insn.off} is not a signed 16-bit value`);
  if (!intIn(insn.imm, -0x80000000, 0x7fffffff)) bad(`imm ${insn.imm} is not a signed 32-bit value`);
}

/**
 * Encode instructions into little-endian bytes (the inverse of
 * {@link decodeProgram}). Only field ranges are checked; use
 * {@link describe} to reject reserved encodings.
 */
export function encodeProgram(insns: readonly BpfInsn[]): Uint8Array {
  const total = insns.reduce((n, i) => n + slotCount(i), 0);
  const bytes = new Uint8Array(total * 8);
  const view = new DataView(bytes.buffer);
  let slot = 0;
  for (const insn of insns) {
    checkFields(insn, slot);
    const p = slot * 8;
    view.setUint8(p, insn.opcode);
    view.setUint8(p + 1, (insn.src << 4) | insn.dst);
    view.setInt16(p + 2, insn.off, true);
    if (insn.opcode === LDDW_OPCODE) {
      const [lo, hi] = lddwHalves(insn);
      view.setInt32(p + 4, lo, true);
      view.setInt32(p + 12, hi, true);
      slot += 2;
    } else {
      view.setInt32(p + 4, insn.imm, true);
      slot += 1;
    }
  }
  return bytes;
}

/** ALU operation names; `sdiv`/`smod` are DIV/MOD with off=1, `movsx` is MOV with off 8/16/32. */
export type AluOp = 'add' | 'sub' | 'mul' | 'div' | 'sdiv' | 'or' | 'and' | 'lsh' | 'rsh' | 'neg' | 'mod' | 'smod' | 'xor' | 'mov' | 'movsx' | 'arsh';
/** Conditional jump names. */
export type JmpCond = 'jeq' | 'jgt' | 'jge' | 'jset' | 'jne' | 'jsgt' | 'jsge' | 'jlt' | 'jle' | 'jslt' | 'jsle';
/** Atomic operation names (see `fetch` for the FETCH flag). */
export type AtomicOp = 'add' | 'or' | 'and' | 'xor' | 'xchg' | 'cmpxchg';

/** Classification of a valid instruction, as returned by {@link describe}. */
export type InsnInfo =
  | { kind: 'alu'; op: AluOp; width: 32 | 64; source: 'imm' | 'reg'; from?: 8 | 16 | 32 }
  | { kind: 'end'; op: 'le' | 'be' | 'bswap'; width: 16 | 32 | 64 }
  | { kind: 'jmp'; op: JmpCond; width: 32 | 64; source: 'imm' | 'reg' }
  | { kind: 'ja'; op: 'ja'; width: 32 | 64 } // width 32 = JMP32 `gotol` (target in imm)
  | { kind: 'call'; op: 'helper' | 'local' | 'kfunc'; width: 64 }
  | { kind: 'exit'; op: 'exit'; width: 64 }
  | { kind: 'lddw'; op: LddwKind; width: 64 }
  | { kind: 'ld'; op: 'abs' | 'ind'; width: 8 | 16 | 32 }
  | { kind: 'ldx'; op: 'mem' | 'memsx'; width: 8 | 16 | 32 | 64 }
  | { kind: 'st'; op: 'mem'; width: 8 | 16 | 32 | 64 }
  | { kind: 'stx'; op: 'mem'; width: 8 | 16 | 32 | 64 }
  | { kind: 'atomic'; op: AtomicOp; fetch: boolean; width: 32 | 64 };

const ALU_OPS: Record<number, AluOp> = {
  [BPF_ADD]: 'add', [BPF_SUB]: 'sub', [BPF_MUL]: 'mul', [BPF_DIV]: 'div', [BPF_OR]: 'or', [BPF_AND]: 'and',
  [BPF_LSH]: 'lsh', [BPF_RSH]: 'rsh', [BPF_MOD]: 'mod', [BPF_XOR]: 'xor', [BPF_MOV]: 'mov', [BPF_ARSH]: 'arsh',
};
const JMP_CONDS: Record<number, JmpCond> = {
  [BPF_JEQ]: 'jeq', [BPF_JGT]: 'jgt', [BPF_JGE]: 'jge', [BPF_JSET]: 'jset', [BPF_JNE]: 'jne', [BPF_JSGT]: 'jsgt',
  [BPF_JSGE]: 'jsge', [BPF_JLT]: 'jlt', [BPF_JLE]: 'jle', [BPF_JSLT]: 'jslt', [BPF_JSLE]: 'jsle',
};
const ATOMIC_OPS: Record<number, AtomicOp> = {
  [BPF_ADD]: 'add', [BPF_OR]: 'or', [BPF_AND]: 'and', [BPF_XOR]: 'xor', [BPF_XCHG & ~BPF_FETCH]: 'xchg', [BPF_CMPXCHG & ~BPF_FETCH]: 'cmpxchg',
};
/** Access width in bits for each size encoding. */
export const SIZE_BITS: Record<number, 8 | 16 | 32 | 64> = { [BPF_W]: 32, [BPF_H]: 16, [BPF_B]: 8, [BPF_DW]: 64 };

type Fail = (why: string) => never;

/**
 * Classify an instruction, throwing {@link InvalidInstructionError} (tagged
 * with `index`, the slot number) for reserved or malformed encodings:
 * unknown opcodes, registers above r10, non-zero unused fields, bad
 * MOVSX/SDIV offsets, bad byte-swap widths, unknown atomic or pseudo types.
 */
export function describe(insn: BpfInsn, index = 0): InsnInfo {
  checkFields(insn, index);
  const fail: Fail = (why) => {
    throw new InvalidInstructionError(index, why, insn.opcode);
  };
  switch (insn.opcode & 7) {
    case BPF_ALU:
    case BPF_ALU64:
      return describeAlu(insn, fail);
    case BPF_JMP:
    case BPF_JMP32:
      return describeJmp(insn, fail);
    default:
      return describeLoadStore(insn, fail);
  }
}

function reg(n: number, what: string, fail: Fail): void {
  if (n > MAX_REG) fail(`bad ${what} register r${n} (valid: r0..r${MAX_REG})`);
}
function zero(v: number, what: string, fail: Fail): void {
  if (v !== 0) fail(`unused ${what} field must be 0 (is ${v})`);
}

function describeAlu(insn: BpfInsn, fail: Fail): InsnInfo {
  const { opcode, dst, src, off, imm } = insn;
  const width = (opcode & 7) === BPF_ALU64 ? 64 : 32;
  const code = opcode & 0xf0;
  const x = (opcode & BPF_X) !== 0;
  reg(dst, 'dst', fail);
  if (code === BPF_END) {
    zero(src, 'src', fail);
    zero(off, 'offset', fail);
    if (imm !== 16 && imm !== 32 && imm !== 64) fail(`byte swap width must be 16, 32 or 64 (is ${imm})`);
    // In ALU64 the source bit has no LE/BE meaning: K is the unconditional BSWAP, X is reserved.
    if (width === 64 && x) fail('reserved: END with source X in ALU64 class');
    return { kind: 'end', op: width === 64 ? 'bswap' : x ? 'be' : 'le', width: imm as 16 | 32 | 64 };
  }
  if (code === BPF_NEG) {
    if (x) fail('reserved: NEG with source X');
    zero(src, 'src', fail);
    zero(off, 'offset', fail);
    zero(imm, 'imm', fail);
    return { kind: 'alu', op: 'neg', width, source: 'imm' };
  }
  let op = ALU_OPS[code];
  if (op === undefined) return fail(`reserved ALU operation 0x${hex2(code)}`);
  if (x) {
    reg(src, 'src', fail);
    zero(imm, 'imm', fail);
  } else zero(src, 'src', fail);
  const source = x ? 'reg' : 'imm';
  if ((code === BPF_DIV || code === BPF_MOD) && off === 1) op = code === BPF_DIV ? 'sdiv' : 'smod';
  else if (code === BPF_MOV && x && off !== 0) {
    // 32-bit MOVSX can only widen 8/16-bit values; a 32→32 "extension" is reserved.
    if (off !== 8 && off !== 16 && (off !== 32 || width === 32)) fail(`bad MOVSX offset ${off} for ${width}-bit move`);
    return { kind: 'alu', op: 'movsx', width, source, from: off as 8 | 16 | 32 };
  } else if (off !== 0) fail(`bad offset ${off} for ${op}`);
  return { kind: 'alu', op, width, source };
}

function describeJmp(insn: BpfInsn, fail: Fail): InsnInfo {
  const { opcode, dst, src, off, imm } = insn;
  const jmp32 = (opcode & 7) === BPF_JMP32;
  const code = opcode & 0xf0;
  const x = (opcode & BPF_X) !== 0;
  const cls = jmp32 ? 'JMP32' : 'JMP';
  if (code === BPF_JA || code === BPF_CALL || code === BPF_EXIT) {
    if (x) fail(`reserved: ${code === BPF_JA ? 'JA' : code === BPF_CALL ? 'CALL' : 'EXIT'} with source X`);
    zero(dst, 'dst', fail);
  }
  if (code === BPF_JA) {
    zero(src, 'src', fail);
    // JMP uses the 16-bit offset; JMP32 (gotol) uses the 32-bit imm instead.
    if (jmp32) zero(off, 'offset', fail);
    else zero(imm, 'imm', fail);
    return { kind: 'ja', op: 'ja', width: jmp32 ? 32 : 64 };
  }
  if (code === BPF_CALL) {
    if (jmp32) fail('reserved: CALL in JMP32 class');
    zero(off, 'offset', fail);
    if (src > BPF_PSEUDO_KFUNC_CALL) fail(`unknown call type src=${src}`);
    return { kind: 'call', op: src === 0 ? 'helper' : src === BPF_PSEUDO_CALL ? 'local' : 'kfunc', width: 64 };
  }
  if (code === BPF_EXIT) {
    if (jmp32) fail('reserved: EXIT in JMP32 class');
    zero(src, 'src', fail);
    zero(off, 'offset', fail);
    zero(imm, 'imm', fail);
    return { kind: 'exit', op: 'exit', width: 64 };
  }
  const op = JMP_CONDS[code];
  if (op === undefined) return fail(`reserved ${cls} operation 0x${hex2(code)}`);
  reg(dst, 'dst', fail);
  if (x) {
    reg(src, 'src', fail);
    zero(imm, 'imm', fail);
  } else zero(src, 'src', fail);
  return { kind: 'jmp', op, width: jmp32 ? 32 : 64, source: x ? 'reg' : 'imm' };
}

function describeLoadStore(insn: BpfInsn, fail: Fail): InsnInfo {
  const { opcode, dst, src, off, imm } = insn;
  const cls = opcode & 7;
  const mode = opcode & 0xe0;
  const size = opcode & 0x18;
  const width = SIZE_BITS[size]!;
  const modeName = `mode 0x${hex2(mode)}`;
  if (cls === BPF_LD) {
    if (mode === BPF_IMM) {
      if (size !== BPF_DW) fail('reserved: LD IMM requires size DW');
      reg(dst, 'dst', fail);
      zero(off, 'offset', fail);
      const kind = LDDW_PSEUDO[src];
      if (kind === undefined) return fail(`unknown lddw pseudo source ${src}`);
      // Only the map_val_* forms use next_imm (as a value offset); elsewhere it must be clear.
      if (src !== 0 && kind !== 'map_val_by_fd' && kind !== 'map_val_by_idx' && lddwHalves(insn)[1] !== 0) {
        fail(`upper immediate must be 0 for lddw ${kind}`);
      }
      return { kind: 'lddw', op: kind, width: 64 };
    }
    if (mode === BPF_ABS || mode === BPF_IND) {
      if (size === BPF_DW) fail('reserved: legacy packet load with size DW');
      zero(dst, 'dst', fail); // result always goes to r0
      zero(off, 'offset', fail);
      if (mode === BPF_ABS) zero(src, 'src', fail);
      else reg(src, 'src', fail);
      return { kind: 'ld', op: mode === BPF_ABS ? 'abs' : 'ind', width: width as 8 | 16 | 32 };
    }
    return fail(`reserved ${modeName} for LD class`);
  }
  reg(dst, 'dst', fail);
  if (cls === BPF_LDX) {
    if (mode !== BPF_MEM && mode !== BPF_MEMSX) fail(`reserved ${modeName} for LDX class`);
    if (mode === BPF_MEMSX && size === BPF_DW) fail('reserved: sign-extending load of size DW');
    reg(src, 'src', fail);
    zero(imm, 'imm', fail);
    return { kind: 'ldx', op: mode === BPF_MEM ? 'mem' : 'memsx', width };
  }
  if (cls === BPF_ST) {
    if (mode !== BPF_MEM) fail(`reserved ${modeName} for ST class`);
    zero(src, 'src', fail);
    return { kind: 'st', op: 'mem', width };
  }
  // STX
  reg(src, 'src', fail);
  if (mode === BPF_MEM) {
    zero(imm, 'imm', fail);
    return { kind: 'stx', op: 'mem', width };
  }
  if (mode !== BPF_ATOMIC) fail(`reserved ${modeName} for STX class`);
  if (size !== BPF_W && size !== BPF_DW) fail('reserved: atomic operation must be size W or DW');
  const fetch = (imm & BPF_FETCH) !== 0;
  const op = imm >= 0 && imm <= 0xff ? ATOMIC_OPS[imm & ~BPF_FETCH] : undefined;
  // XCHG and CMPXCHG only exist with the FETCH bit set.
  if (op === undefined || ((op === 'xchg' || op === 'cmpxchg') && !fetch)) return fail(`unknown atomic operation imm=0x${(imm >>> 0).toString(16)}`);
  return { kind: 'atomic', op, fetch, width: width as 32 | 64 };
}
