/**
 * eBPF assembler for the syntax emitted by {@link ./disasm.js} (LLVM pseudo-C),
 * plus labels (`loop:`; `goto loop`, `if r1 == 0 goto out`, `call func`),
 * comments (`;`, `//`, `#`) and decimal/hex/negative numbers.
 * `assemble(disassemble(p))` reproduces `p` exactly.
 * @module
 */
import {
  BPF_ALU, BPF_ALU64, BPF_ATOMIC, BPF_CALL, BPF_CMPXCHG, BPF_END, BPF_EXIT, BPF_FETCH, BPF_IND, BPF_ABS, BPF_JA,
  BPF_JMP, BPF_JMP32, BPF_K, BPF_LD, BPF_LDX, BPF_MEM, BPF_MEMSX, BPF_MOV, BPF_NEG, BPF_PSEUDO_CALL,
  BPF_PSEUDO_KFUNC_CALL, BPF_ST, BPF_STX, BPF_X, BPF_XCHG, InvalidInstructionError, LDDW_OPCODE,
  LDDW_PSEUDO, MAX_REG, SIZE_BITS, describe, slotCount, type BpfInsn,
} from './isa.js';
import { ALU_SYMBOLS, ATOMIC_SYMBOLS, JMP_SYMBOLS } from './disasm.js';

/** Assembly error; the message starts with `line N:` (1-based). */
export class AsmError extends Error {
  override name = 'AsmError';
  constructor(
    readonly line: number,
    readonly reason: string,
  ) {
    super(`line ${line}: ${reason}`);
  }
}

const invert = <T extends Record<string, string>>(o: T): Map<string, keyof T> =>
  new Map(Object.entries(o).map(([k, v]) => [v, k as keyof T]));
const ALU_CODES: Record<string, number> = {
  add: 0x00, sub: 0x10, mul: 0x20, div: 0x30, sdiv: 0x30, or: 0x40, and: 0x50, lsh: 0x60, rsh: 0x70, mod: 0x90, smod: 0x90,
  xor: 0xa0, mov: 0xb0, arsh: 0xc0,
};
const JMP_CODES: Record<string, number> = {
  jeq: 0x10, jgt: 0x20, jge: 0x30, jset: 0x40, jne: 0x50, jsgt: 0x60, jsge: 0x70, jlt: 0xa0, jle: 0xb0, jslt: 0xc0, jsle: 0xd0,
};
const ATOMIC_CODES: Record<string, number> = { add: 0x00, or: 0x40, and: 0x50, xor: 0xa0 };
const ALU_BY_SYM = invert(ALU_SYMBOLS);
const JMP_BY_SYM = invert(JMP_SYMBOLS);
const ATOMIC_BY_SYM = invert(ATOMIC_SYMBOLS);
const SIZE_BY_BITS = new Map(Object.entries(SIZE_BITS).map(([k, v]) => [v, Number(k)]));

// Building blocks for the line patterns. Alternations are ordered longest first.
const REG = '([rw]\\d+)';
const NUM = '([+-]?\\s*(?:0x[0-9a-f]+|\\d+))';
const OPERAND = '([rw]\\d+|[+-]?\\s*(?:0x[0-9a-f]+|\\d+))';
const TARGET = '([+-]\\s*(?:0x[0-9a-f]+|\\d+)|[a-z_.][\\w.]*)';
const ADDR = '(r\\d+)\\s*([+-])\\s*((?:0x[0-9a-f]+|\\d+))';
const esc = (s: string) => s.replace(/[|\\^$*+?.()[\]{}]/g, '\\$&');
const alt = (syms: Iterable<string>) => [...syms].sort((a, b) => b.length - a.length).map(esc).join('|');
const re = (s: string) => new RegExp(`^${s}$`, 'i');

const P = {
  exit: re('exit'),
  callPc: re(`call\\s+pc\\s*${NUM}`),
  callKfunc: re(`call\\s+kfunc\\s+${NUM}`),
  call: re(`call\\s+${NUM}`),
  callLabel: re('call\\s+([a-z_.][\\w.]*)'),
  jump: re(`(gotol|goto)\\s+${TARGET}`),
  cond: re(`if\\s+${REG}\\s*(${alt(JMP_BY_SYM.keys())})\\s*${OPERAND}\\s+goto\\s+${TARGET}`),
  lock: re(`lock\\s+\\*\\(u(32|64)\\s*\\*\\)\\s*\\(${ADDR}\\)\\s*(${alt(ATOMIC_BY_SYM.keys())})\\s*${REG}`),
  store: re(`\\*\\(u(8|16|32|64)\\s*\\*\\)\\s*\\(${ADDR}\\)\\s*=\\s*${OPERAND}`),
  fetch: re(`${REG}\\s*=\\s*atomic_fetch_(add|or|and|xor)\\(\\s*\\(u(32|64)\\s*\\*\\)\\s*\\(${ADDR}\\)\\s*,\\s*${REG}\\s*\\)`),
  xchg: re(`${REG}\\s*=\\s*xchg(_64|32_32)\\(\\s*${ADDR}\\s*,\\s*${REG}\\s*\\)`),
  cmpxchg: re(`${REG}\\s*=\\s*cmpxchg(_64|32_32)\\(\\s*${ADDR}\\s*,\\s*${REG}\\s*,\\s*${REG}\\s*\\)`),
  skbAbs: re(`r0\\s*=\\s*\\*\\(u(8|16|32)\\s*\\*\\)\\s*skb\\[\\s*${NUM}\\s*\\]`),
  skbInd: re(`r0\\s*=\\s*\\*\\(u(8|16|32)\\s*\\*\\)\\s*skb\\[\\s*${ADDR}\\s*\\]`),
  load: re(`${REG}\\s*=\\s*\\*\\(([us])(8|16|32|64)\\s*\\*\\)\\s*\\(${ADDR}\\)`),
  end: re(`${REG}\\s*=\\s*(be|le|bswap)(16|32|64)\\s+${REG}`),
  movsx: re(`${REG}\\s*=\\s*\\(s(8|16|32)\\)\\s*${REG}`),
  neg: re(`${REG}\\s*=\\s*-\\s*${REG}`),
  pseudo: re(`${REG}\\s*=\\s*(${LDDW_PSEUDO.slice(1).join('|')})\\(\\s*${NUM}\\s*\\)(?:\\s*([+-])\\s*((?:0x[0-9a-f]+|\\d+)))?\\s+ll`),
  lddw: re(`${REG}\\s*=\\s*${NUM}\\s+ll`),
  alu: re(`${REG}\\s*(${alt(ALU_BY_SYM.keys())})\\s*${OPERAND}`),
};

interface Pending {
  insn: BpfInsn;
  line: number;
  slot: number;
  /** Label to resolve into off (`'off'`) or imm (`'imm'`). */
  label?: { name: string; field: 'off' | 'imm' };
}

/** Parse a number (decimal/hex, optional sign) as a bigint. */
function big(text: string): bigint {
  const t = text.replace(/\s+/g, '').toLowerCase();
  const neg = t.startsWith('-');
  const body = t.replace(/^[+-]/, '');
  const v = BigInt(body);
  return neg ? -v : v;
}

/**
 * Assemble source text into instructions. Throws {@link AsmError} with a
 * 1-based line number for syntax errors, bad registers, out-of-range
 * numbers, undefined/duplicate labels and encodings {@link describe} rejects.
 */
export function assemble(text: string): BpfInsn[] {
  const labels = new Map<string, number>();
  const pending: Pending[] = [];
  let slot = 0;
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = i + 1;
    let body = raw.replace(/(;|\/\/|#).*$/, '').trim();
    // Leading `name:` definitions; several may share a line with an instruction.
    for (let m = /^([a-z_.][\w.]*)\s*:\s*/i.exec(body); m; m = /^([a-z_.][\w.]*)\s*:\s*/i.exec(body)) {
      if (labels.has(m[1]!)) throw new AsmError(line, `duplicate label ${m[1]}`);
      labels.set(m[1]!, slot);
      body = body.slice(m[0].length);
    }
    if (body === '') return;
    const p = parseLine(body, line);
    pending.push({ ...p, line, slot });
    slot += slotCount(p.insn);
  });
  return pending.map(({ insn, line, slot: at, label }) => {
    if (label) {
      const target = labels.get(label.name);
      if (target === undefined) throw new AsmError(line, `undefined label ${label.name}`);
      const delta = target - (at + 1); // relative to the next slot
      if (label.field === 'off') {
        if (delta < -0x8000 || delta > 0x7fff) throw new AsmError(line, `label ${label.name} out of 16-bit jump range (use gotol)`);
        insn.off = delta;
      } else insn.imm = delta;
    }
    try {
      describe(insn, at);
    } catch (e) {
      if (e instanceof InvalidInstructionError) throw new AsmError(line, e.reason);
      throw e;
    }
    return insn;
  });
}

function parseLine(s: string, line: number): { insn: BpfInsn; label?: Pending['label'] } {
  const err = (why: string): never => {
    throw new AsmError(line, why);
  };
  const num = (t: string, lo: bigint, hi: bigint, what: string): number => {
    const v = big(t);
    if (v < lo || v > hi) err(`${what} ${t.replace(/\s+/g, '')} out of range`);
    return Number(v);
  };
  // imm accepts signed or unsigned 32-bit spellings (0xffffffff == -1).
  const imm32 = (t: string): number => num(t, -0x80000000n, 0xffffffffn, 'immediate') | 0;
  const off16 = (t: string): number => num(t, -0x8000n, 0x7fffn, 'offset');
  const regNo = (t: string, want?: 'r' | 'w'): number => {
    const n = Number(t.slice(1));
    if (n > MAX_REG) err(`unknown register ${t}`);
    if (want && t[0]!.toLowerCase() !== want) err(`expected ${want}${n}, got ${t} (mixed 32/64-bit registers)`);
    return n;
  };
  const isReg = (t: string) => /^[rw]\d+$/i.test(t);
  const width = (t: string): 'r' | 'w' => (t[0]!.toLowerCase() === 'w' ? 'w' : 'r');
  const mem = (r: string, sign: string, n: string) => ({ reg: regNo(r, 'r'), off: off16(sign + n) });
  const mk = (opcode: number, dst = 0, src = 0, off = 0, imm = 0): BpfInsn => ({ opcode, dst, src, off, imm });
  const target = (t: string, field: 'off' | 'imm', insn: BpfInsn) => {
    if (/^[+-]/.test(t)) {
      if (field === 'off') insn.off = off16(t);
      else insn.imm = imm32(t);
      return { insn };
    }
    return { insn, label: { name: t, field } };
  };
  let m: RegExpExecArray | null;
  const g = (k: number) => m![k]!;

  if (P.exit.test(s)) return { insn: mk(BPF_JMP | BPF_EXIT) };
  if ((m = P.callPc.exec(s))) return { insn: mk(BPF_JMP | BPF_CALL, 0, BPF_PSEUDO_CALL, 0, imm32(g(1))) };
  if ((m = P.callKfunc.exec(s))) return { insn: mk(BPF_JMP | BPF_CALL, 0, BPF_PSEUDO_KFUNC_CALL, 0, imm32(g(1))) };
  if ((m = P.call.exec(s))) return { insn: mk(BPF_JMP | BPF_CALL, 0, 0, 0, imm32(g(1))) };
  if ((m = P.callLabel.exec(s))) return target(g(1), 'imm', mk(BPF_JMP | BPF_CALL, 0, BPF_PSEUDO_CALL));
  if ((m = P.jump.exec(s))) {
    const long = g(1).toLowerCase() === 'gotol';
    return target(g(2), long ? 'imm' : 'off', mk((long ? BPF_JMP32 : BPF_JMP) | BPF_JA));
  }
  if ((m = P.cond.exec(s))) {
    const w = width(g(1));
    const cls = w === 'w' ? BPF_JMP32 : BPF_JMP;
    const code = JMP_CODES[JMP_BY_SYM.get(g(2).toLowerCase())!]!;
    const insn = isReg(g(3))
      ? mk(cls | code | BPF_X, regNo(g(1)), regNo(g(3), w))
      : mk(cls | code | BPF_K, regNo(g(1)), 0, 0, imm32(g(3)));
    return target(g(4), 'off', insn);
  }
  if ((m = P.lock.exec(s))) {
    const a = mem(g(2), g(3), g(4));
    const size = SIZE_BY_BITS.get(Number(g(1)) as 32 | 64)!;
    return { insn: mk(BPF_STX | BPF_ATOMIC | size, a.reg, regNo(g(6)), a.off, ATOMIC_CODES[ATOMIC_BY_SYM.get(g(5))!]!) };
  }
  if ((m = P.store.exec(s))) {
    const a = mem(g(2), g(3), g(4));
    const size = SIZE_BY_BITS.get(Number(g(1)) as 8)!;
    if (isReg(g(5))) return { insn: mk(BPF_STX | BPF_MEM | size, a.reg, regNo(g(5), 'r'), a.off) };
    return { insn: mk(BPF_ST | BPF_MEM | size, a.reg, 0, a.off, imm32(g(5))) };
  }
  if ((m = P.fetch.exec(s))) {
    const bits = Number(g(3));
    const w = bits === 64 ? 'r' : 'w';
    const a = mem(g(4), g(5), g(6));
    const r = regNo(g(1), w);
    if (regNo(g(7), w) !== r) err('atomic_fetch result register must equal the source register');
    return { insn: mk(BPF_STX | BPF_ATOMIC | SIZE_BY_BITS.get(bits as 32)!, a.reg, r, a.off, ATOMIC_CODES[g(2).toLowerCase()]! | BPF_FETCH) };
  }
  if ((m = P.xchg.exec(s))) {
    const bits = g(2) === '_64' ? 64 : 32;
    const w = bits === 64 ? 'r' : 'w';
    const a = mem(g(3), g(4), g(5));
    const r = regNo(g(1), w);
    if (regNo(g(6), w) !== r) err('xchg result register must equal the source register');
    return { insn: mk(BPF_STX | BPF_ATOMIC | SIZE_BY_BITS.get(bits)!, a.reg, r, a.off, BPF_XCHG) };
  }
  if ((m = P.cmpxchg.exec(s))) {
    const bits = g(2) === '_64' ? 64 : 32;
    const w = bits === 64 ? 'r' : 'w';
    const a = mem(g(3), g(4), g(5));
    // CMPXCHG implicitly compares with and writes to r0.
    if (regNo(g(1), w) !== 0 || regNo(g(6), w) !== 0) err('cmpxchg must use r0/w0 as result and comparand');
    return { insn: mk(BPF_STX | BPF_ATOMIC | SIZE_BY_BITS.get(bits)!, a.reg, regNo(g(7), w), a.off, BPF_CMPXCHG) };
  }
  if ((m = P.skbAbs.exec(s))) return { insn: mk(BPF_LD | BPF_ABS | SIZE_BY_BITS.get(Number(g(1)) as 8)!, 0, 0, 0, imm32(g(2))) };
  if ((m = P.skbInd.exec(s))) {
    const r = regNo(g(2), 'r');
    return { insn: mk(BPF_LD | BPF_IND | SIZE_BY_BITS.get(Number(g(1)) as 8)!, 0, r, 0, imm32(g(3) + g(4))) };
  }
  if ((m = P.load.exec(s))) {
    const a = mem(g(4), g(5), g(6));
    const signed = g(2).toLowerCase() === 's';
    const size = SIZE_BY_BITS.get(Number(g(3)) as 8)!;
    return { insn: mk(BPF_LDX | (signed ? BPF_MEMSX : BPF_MEM) | size, regNo(g(1), 'r'), a.reg, a.off) };
  }
  if ((m = P.end.exec(s))) {
    const d = regNo(g(1), 'r');
    if (regNo(g(4), 'r') !== d) err('byte swap must use the same register on both sides');
    const kind = g(2).toLowerCase();
    const opcode = kind === 'bswap' ? BPF_ALU64 | BPF_END : BPF_ALU | BPF_END | (kind === 'be' ? BPF_X : BPF_K);
    return { insn: mk(opcode, d, 0, 0, Number(g(3))) };
  }
  if ((m = P.movsx.exec(s))) {
    const w = width(g(1));
    return { insn: mk((w === 'w' ? BPF_ALU : BPF_ALU64) | BPF_MOV | BPF_X, regNo(g(1)), regNo(g(3), w), Number(g(2))) };
  }
  if ((m = P.neg.exec(s))) {
    const w = width(g(1));
    const d = regNo(g(1));
    if (regNo(g(2), w) !== d) err('negation must use the same register on both sides');
    return { insn: mk((w === 'w' ? BPF_ALU : BPF_ALU64) | BPF_NEG, d) };
  }
  if ((m = P.pseudo.exec(s))) {
    const src = LDDW_PSEUDO.indexOf(g(2).toLowerCase() as (typeof LDDW_PSEUDO)[number]);
    const hi = m[4] === undefined ? 0 : imm32(m[4] + m[5]!);
    const lo = imm32(g(3));
    return { insn: { ...mk(LDDW_OPCODE, regNo(g(1), 'r'), src, 0, lo), imm64: (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0) } };
  }
  if ((m = P.lddw.exec(s))) {
    const v = big(g(2));
    if (v < -(1n << 63n) || v >= 1n << 64n) err(`64-bit immediate ${g(2)} out of range`);
    const imm64 = BigInt.asUintN(64, v);
    return { insn: { ...mk(LDDW_OPCODE, regNo(g(1), 'r'), 0, 0, Number(BigInt.asIntN(32, imm64))), imm64 } };
  }
  if ((m = P.alu.exec(s))) {
    const w = width(g(1));
    const op = ALU_BY_SYM.get(g(2).toLowerCase())!;
    const cls = w === 'w' ? BPF_ALU : BPF_ALU64;
    // Signed division/modulo share DIV/MOD's opcode and are selected by off=1.
    const off = op === 'sdiv' || op === 'smod' ? 1 : 0;
    const code = ALU_CODES[op]!;
    if (isReg(g(3))) return { insn: mk(cls | code | BPF_X, regNo(g(1)), regNo(g(3), w), off) };
    return { insn: mk(cls | code | BPF_K, regNo(g(1)), 0, off, imm32(g(3))) };
  }
  const reg = /\b[rw](\d+)\b/i.exec(s);
  if (reg && Number(reg[1]) > MAX_REG) err(`unknown register ${reg[0]}`);
  return err(`cannot parse '${s}'`);
}
