/**
 * The eBPF interpreter against hand-assembled programs: every ALU op at 32 and 64 bits with the
 * RFC 9669 edge cases, byte swaps, every jump condition, atomics, MEMSX, the memory model (stack
 * bounds, memory argument, read-only regions), BPF-to-BPF calls, helpers, lddw and limits.
 * Instructions are packed by the tiny local helpers below (no dependency on src/bpf/asm.ts).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BPF_STACK_SIZE, BpfInterpreter, BpfRuntimeError, runProgram, type BpfHelper, type BpfRunOptions } from '../../src/bpf/interpreter.js';

// ---------------------------------------------------------------- packing
type Insn = number[];
function ins(op: number, dst = 0, src = 0, off = 0, imm = 0): Insn {
  const b = new Uint8Array(8);
  const dv = new DataView(b.buffer);
  dv.setUint8(0, op);
  dv.setUint8(1, (src << 4) | dst);
  dv.setInt16(2, off, true);
  dv.setInt32(4, imm | 0, true);
  return [...b];
}
function lddw(dst: number, v: bigint, src = 0, hiImm?: number): Insn {
  const u = BigInt.asUintN(64, v);
  return [...ins(0x18, dst, src, 0, Number(u & 0xffffffffn)), ...ins(0, 0, 0, 0, hiImm ?? Number(u >> 32n))];
}
const movi = (d: number, imm: number) => ins(0xb7, d, 0, 0, imm);
const movr = (d: number, s: number) => ins(0xbf, d, s);
const exit = () => ins(0x95);
const ja = (off: number) => ins(0x05, 0, 0, off);
function prog(...insns: Insn[]): Uint8Array {
  return Uint8Array.from(insns.flat());
}
function r0(opts: BpfRunOptions, ...insns: Insn[]): bigint {
  return runProgram(prog(...insns), opts).r0;
}
function fault(re: RegExp, opts: BpfRunOptions, ...insns: Insn[]): BpfRuntimeError {
  try {
    runProgram(prog(...insns), opts);
  } catch (e) {
    assert.ok(e instanceof BpfRuntimeError, `expected BpfRuntimeError, got ${String(e)}`);
    assert.match(e.message, re);
    return e;
  }
  assert.fail(`expected a fault matching ${re}`);
}

const M64 = (1n << 64n) - 1n;
const I64_MIN = 1n << 63n;
const u = (v: bigint) => BigInt.asUintN(64, v);

// opcode high nibbles
const ADD = 0x00, SUB = 0x10, MUL = 0x20, DIV = 0x30, OR = 0x40, AND = 0x50, LSH = 0x60, RSH = 0x70, NEG = 0x80, MOD = 0x90, XOR = 0xa0, MOV = 0xb0, ARSH = 0xc0;

/** dst=r0 = a, src=r1 = b, then `op r0, r1` (ALU64 when wide, else ALU), exit. */
function aluReg(wide: boolean, op: number, a: bigint, b: bigint, off = 0): bigint {
  return r0({}, lddw(0, a), lddw(1, b), ins(op | 0x08 | (wide ? 7 : 4), 0, 1, off), exit());
}
function aluImm(wide: boolean, op: number, a: bigint, imm: number, off = 0): bigint {
  return r0({}, lddw(0, a), ins(op | (wide ? 7 : 4), 0, 0, off, imm), exit());
}

describe('ALU64', () => {
  const cases: [string, number, bigint, bigint, number, bigint][] = [
    ['add wraps', ADD, M64, 2n, 0, 1n],
    ['sub wraps', SUB, 0n, 1n, 0, M64],
    ['mul wraps', MUL, 1n << 32n, 1n << 32n, 0, 0n],
    ['mul negative', MUL, 3n, u(-2n), 0, u(-6n)],
    ['div', DIV, 10n, 3n, 0, 3n],
    ['div is unsigned', DIV, M64, 2n, 0, (1n << 63n) - 1n],
    ['div by zero = 0', DIV, 5n, 0n, 0, 0n],
    ['sdiv', DIV, u(-10n), 3n, 1, u(-3n)],
    ['sdiv INT64_MIN / -1', DIV, I64_MIN, M64, 1, I64_MIN],
    ['sdiv by zero = 0', DIV, 7n, 0n, 1, 0n],
    ['or', OR, 0xf0n, 0x0fn << 60n, 0, 0xf0n | (0x0fn << 60n)],
    ['and', AND, M64, 0x1234_5678_9abc_def0n, 0, 0x1234_5678_9abc_def0n],
    ['xor', XOR, M64, 1n, 0, M64 - 1n],
    ['lsh', LSH, 1n, 63n, 0, I64_MIN],
    ['lsh masked to 63', LSH, 1n, 65n, 0, 2n],
    ['rsh logical', RSH, I64_MIN, 63n, 0, 1n],
    ['rsh masked', RSH, I64_MIN, 64n + 60n, 0, 8n],
    ['arsh', ARSH, I64_MIN, 63n, 0, M64],
    ['arsh masked', ARSH, I64_MIN, 64n + 4n, 0, 0xf8n << 56n],
    ['mod', MOD, 10n, 3n, 0, 1n],
    ['mod by zero keeps dst', MOD, 0x1_0000_000an, 0n, 0, 0x1_0000_000an],
    ['smod negative dividend', MOD, u(-10n), 3n, 1, M64],
    ['smod negative divisor', MOD, 10n, u(-3n), 1, 1n],
    ['smod INT64_MIN % -1', MOD, I64_MIN, M64, 1, 0n],
    ['smod by zero keeps dst', MOD, u(-5n), 0n, 1, u(-5n)],
    ['mov', MOV, 1n, 0xdead_beef_cafe_f00dn, 0, 0xdead_beef_cafe_f00dn],
    ['movsx8', MOV, 0n, 0x80n, 8, u(-128n)],
    ['movsx8 positive', MOV, 0n, 0x17fn, 8, 0x7fn],
    ['movsx16', MOV, 0n, 0x8000n, 16, u(-0x8000n)],
    ['movsx32', MOV, 0n, 0xffff_ffff_8000_0000n, 32, 0xffff_ffff_8000_0000n],
    ['movsx32 positive', MOV, 0n, 0xffff_ffff_7000_0000n, 32, 0x7000_0000n],
  ];
  for (const [name, op, a, b, off, want] of cases) test(`${name} (reg)`, () => assert.equal(aluReg(true, op, a, b, off), want));

  test('neg', () => {
    assert.equal(aluImm(true, NEG, 5n, 0), u(-5n));
    assert.equal(aluImm(true, NEG, I64_MIN, 0), I64_MIN);
  });
  test('immediates are sign-extended to 64 bits', () => {
    assert.equal(aluImm(true, ADD, 0n, -1), M64);
    assert.equal(aluImm(true, MOV, 7n, -2), u(-2n));
    assert.equal(aluImm(true, OR, 0n, -0x10), u(-0x10n));
    assert.equal(aluImm(true, AND, M64, 0x7fffffff), 0x7fffffffn);
    // unsigned div: imm -1 becomes 2^64-1
    assert.equal(aluImm(true, DIV, M64, -1), 1n);
    assert.equal(aluImm(true, DIV, M64 - 1n, -1), 0n);
    assert.equal(aluImm(true, DIV, 100n, 0), 0n);
    assert.equal(aluImm(true, MOD, 100n, 0), 100n);
    assert.equal(aluImm(true, DIV, u(-9n), -3, 1), 3n);
    assert.equal(aluImm(true, MOD, u(-9n), 4, 1), M64);
    assert.equal(aluImm(true, LSH, 1n, 64 + 3), 8n);
    assert.equal(aluImm(true, ARSH, u(-16n), 2), u(-4n));
  });
  test('invalid offsets fault', () => {
    fault(/invalid offset/, {}, movi(0, 1), ins(0x3f, 0, 1, 2), exit());
    fault(/invalid offset/, {}, movi(0, 1), ins(0xbf, 0, 1, 4), exit());
  });
});

describe('ALU (32-bit)', () => {
  const HI = 0xdead_beef_0000_0000n; // upper garbage that must never leak into results
  const cases: [string, number, bigint, bigint, number, bigint][] = [
    ['add wraps and zero-extends', ADD, HI | 0xffff_ffffn, 2n, 0, 1n],
    ['sub', SUB, HI, 1n, 0, 0xffff_ffffn],
    ['mul', MUL, HI | 0x1_0000n, 0x1_0000n, 0, 0n],
    ['mul -1 * -1', MUL, 0xffff_ffffn, 0xffff_ffffn, 0, 1n],
    ['div unsigned', DIV, HI | 0xffff_ffffn, 2n, 0, 0x7fff_ffffn],
    ['div uses low 32 bits of src', DIV, 6n, (1n << 32n) | 3n, 0, 2n],
    ['div by zero = 0', DIV, HI | 9n, 0n, 0, 0n],
    ['div by (low 32 bits) zero = 0', DIV, 9n, 1n << 32n, 0, 0n],
    ['sdiv', DIV, 0xffff_fff6n, 3n, 1, 0xffff_fffdn],
    ['sdiv INT32_MIN / -1', DIV, 0x8000_0000n, 0xffff_ffffn, 1, 0x8000_0000n],
    ['sdiv by zero = 0', DIV, 0x8000_0000n, 0n, 1, 0n],
    ['mod', MOD, HI | 10n, 3n, 0, 1n],
    ['mod by zero truncates dst', MOD, HI | 7n, 0n, 0, 7n],
    ['smod', MOD, 0xffff_fff6n, 3n, 1, 0xffff_ffffn],
    ['smod INT32_MIN % -1', MOD, 0x8000_0000n, 0xffff_ffffn, 1, 0n],
    ['smod by zero truncates dst', MOD, 0xffff_ffff_8000_0000n, 0n, 1, 0x8000_0000n],
    ['or', OR, HI | 0xf0n, 0x0fn, 0, 0xffn],
    ['and', AND, HI | 0xff00n, 0xffff_ffff_0ff0n, 0, 0x0f00n],
    ['xor', XOR, HI | 0xffn, 0x0fn, 0, 0xf0n],
    ['lsh', LSH, HI | 1n, 31n, 0, 0x8000_0000n],
    ['lsh masked to 31', LSH, 1n, 33n, 0, 2n],
    ['rsh logical', RSH, HI | 0x8000_0000n, 31n, 0, 1n],
    ['rsh ignores upper bits of dst', RSH, 0xffff_ffff_0000_0000n, 1n, 0, 0n],
    ['arsh', ARSH, 0x8000_0000n, 31n, 0, 0xffff_ffffn],
    ['arsh of positive low word', ARSH, 0xffff_ffff_7fff_ffffn, 1n, 0, 0x3fff_ffffn],
    ['arsh masked', ARSH, 0x8000_0000n, 32n + 4n, 0, 0xf800_0000n],
    ['mov truncates', MOV, 1n, 0xffff_ffff_1234_5678n, 0, 0x1234_5678n],
    ['movsx8', MOV, 0n, 0x80n, 8, 0xffff_ff80n],
    ['movsx16', MOV, 0n, 0xffff_ffff_0000_8000n, 16, 0xffff_8000n],
  ];
  for (const [name, op, a, b, off, want] of cases) test(`${name} (reg)`, () => assert.equal(aluReg(false, op, a, b, off), want));

  test('neg zero-extends', () => {
    assert.equal(aluImm(false, NEG, HI | 1n, 0), 0xffff_ffffn);
    assert.equal(aluImm(false, NEG, 0x8000_0000n, 0), 0x8000_0000n);
  });
  test('immediates', () => {
    assert.equal(aluImm(false, MOV, M64, -1), 0xffff_ffffn);
    assert.equal(aluImm(false, ADD, HI, -1), 0xffff_ffffn);
    assert.equal(aluImm(false, DIV, 0xffff_fffen, -1), 0n); // imm is u32 0xffffffff
    assert.equal(aluImm(false, DIV, 0xffff_ffffn, -1), 1n);
    assert.equal(aluImm(false, DIV, 0xffff_fff7n, -3, 1), 3n);
    assert.equal(aluImm(false, MOD, HI | 5n, 0), 5n);
    assert.equal(aluImm(false, LSH, 1n, 35), 8n);
  });
});

describe('byte swaps', () => {
  const V = 0x0123_4567_89ab_cdefn;
  const swap = (code: number, width: number) => r0({}, lddw(0, V), ins(code, 0, 0, 0, width), exit());
  test('le', () => {
    assert.equal(swap(0xd4, 16), 0xcdefn);
    assert.equal(swap(0xd4, 32), 0x89ab_cdefn);
    assert.equal(swap(0xd4, 64), V);
  });
  test('be', () => {
    assert.equal(swap(0xdc, 16), 0xefcdn);
    assert.equal(swap(0xdc, 32), 0xefcd_ab89n);
    assert.equal(swap(0xdc, 64), 0xefcd_ab89_6745_2301n);
  });
  test('bswap (ALU64)', () => {
    assert.equal(swap(0xd7, 16), 0xefcdn);
    assert.equal(swap(0xd7, 32), 0xefcd_ab89n);
    assert.equal(swap(0xd7, 64), 0xefcd_ab89_6745_2301n);
  });
  test('bad width faults', () => {
    fault(/invalid width/, {}, ins(0xdc, 0, 0, 0, 8), exit());
  });
});

describe('jumps', () => {
  const conds: [string, number, (a: bigint, b: bigint) => boolean, boolean][] = [
    ['jeq', 0x10, (a, b) => a === b, false],
    ['jgt', 0x20, (a, b) => a > b, false],
    ['jge', 0x30, (a, b) => a >= b, false],
    ['jset', 0x40, (a, b) => (a & b) !== 0n, false],
    ['jne', 0x50, (a, b) => a !== b, false],
    ['jsgt', 0x60, (a, b) => a > b, true],
    ['jsge', 0x70, (a, b) => a >= b, true],
    ['jlt', 0xa0, (a, b) => a < b, false],
    ['jle', 0xb0, (a, b) => a <= b, false],
    ['jslt', 0xc0, (a, b) => a < b, true],
    ['jsle', 0xd0, (a, b) => a <= b, true],
  ];
  const pairs: [bigint, bigint][] = [
    [M64, 1n], [1n, M64], [0x8000_0000n, 1n], [5n, 5n], [1n << 32n, 0n], [0n, 1n << 32n],
    [I64_MIN, 0x7fff_ffff_ffff_ffffn], [0xffff_ffff_0000_0001n, 0x2n], [0x7fff_ffffn, 0xffff_ffff_8000_0000n],
  ];
  /** 1 when the jump is taken. */
  const taken = (code: number, a: bigint, b: bigint, imm?: number) =>
    r0({}, lddw(1, a), lddw(2, b), movi(0, 0),
      imm === undefined ? ins(code | 0x08, 1, 2, 1) : ins(code, 1, 0, 1, imm),
      exit(), movi(0, 1), exit());

  for (const [name, op, rel, signed] of conds) {
    test(`${name} / ${name}32, reg and imm`, () => {
      for (const [a, b] of pairs) {
        const x64 = signed ? BigInt.asIntN(64, a) : a;
        const y64 = signed ? BigInt.asIntN(64, b) : b;
        const x32 = signed ? BigInt.asIntN(32, a) : BigInt.asUintN(32, a);
        const y32 = signed ? BigInt.asIntN(32, b) : BigInt.asUintN(32, b);
        assert.equal(taken(op | 5, a, b), rel(x64, y64) ? 1n : 0n, `${name} ${a} ${b}`);
        assert.equal(taken(op | 6, a, b), rel(x32, y32) ? 1n : 0n, `${name}32 ${a} ${b}`);
        // imm forms: the imm is the low 32 bits of b, sign-extended for the 64-bit compare
        const imm = Number(BigInt.asIntN(32, b));
        const bImm = BigInt.asUintN(64, BigInt(imm));
        const yi = signed ? BigInt.asIntN(64, bImm) : bImm;
        assert.equal(taken(op | 5, a, 0n, imm), rel(x64, yi) ? 1n : 0n, `${name} imm ${a} ${imm}`);
        assert.equal(taken(op | 6, a, 0n, imm), rel(x32, y32) ? 1n : 0n, `${name}32 imm ${a} ${imm}`);
      }
    });
  }
  test('explicit signed/unsigned cases', () => {
    assert.equal(taken(0x25, M64, 1n), 1n); // jgt: 2^64-1 > 1
    assert.equal(taken(0x65, M64, 1n), 0n); // jsgt: -1 > 1 is false
    assert.equal(taken(0x15, M64, 0n, -1), 1n); // jeq imm -1 sign-extended
    assert.equal(taken(0x16, 0xffff_ffffn, 0n, -1), 1n); // jeq32 imm -1
    assert.equal(taken(0x15, 1n << 32n, 0n), 0n);
    assert.equal(taken(0x16, 1n << 32n, 0n), 1n); // only the low words compared
    assert.equal(taken(0x66, 0x8000_0000n, 1n), 0n); // jsgt32: INT32_MIN > 1 is false
    assert.equal(taken(0x65, 0x8000_0000n, 1n), 1n);
  });
  test('ja forwards and backwards: a counting loop', () => {
    // r0 = 0; r1 = 10; loop: r0 += 3; r1 -= 1; if r1 == 0 goto out; ja loop; out: exit
    assert.equal(r0({}, movi(0, 0), movi(1, 10), ins(0x07, 0, 0, 0, 3), ins(0x17, 1, 0, 0, 1), ins(0x15, 1, 0, 1, 0), ja(-4), exit()), 30n);
  });
  test('ja32 (gotol) uses imm', () => {
    assert.equal(r0({}, movi(0, 1), ins(0x06, 0, 0, 0, 1), movi(0, 2), exit()), 1n);
    assert.equal(r0({}, movi(0, 1), ins(0x06, 0, 0, 99, 0), movi(0, 2), exit()), 2n); // offset ignored
  });
  test('jumping or falling out of the program faults', () => {
    fault(/program counter out of range/, {}, movi(0, 1), ja(5), exit());
    fault(/program counter out of range/, {}, movi(0, 1));
  });
});

describe('memory argument, loads and stores', () => {
  test('r1 points at the memory and r2 holds its length', () => {
    const mem = Uint8Array.from([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99]);
    assert.equal(r0({ memory: mem }, movr(0, 2), exit()), 9n);
    assert.equal(r0({ memory: mem }, ins(0x71, 0, 1, 8), exit()), 0x99n); // ldxb
    assert.equal(r0({ memory: mem }, ins(0x69, 0, 1, 1), exit()), 0x3322n); // ldxh, unaligned
    assert.equal(r0({ memory: mem }, ins(0x61, 0, 1, 0), exit()), 0x4433_2211n); // ldxw
    assert.equal(r0({ memory: mem }, ins(0x79, 0, 1, 1), exit()), 0x9988_7766_5544_3322n); // ldxdw
    assert.equal(r0({}, movr(0, 1), ins(0x0f, 0, 2), exit()), 0n); // no memory: r1 = r2 = 0
  });
  test('out-of-bounds memory accesses fault with the instruction index', () => {
    const mem = new Uint8Array(8);
    const e = fault(/out-of-bounds read of 8 bytes/, { memory: mem }, movi(0, 0), ins(0x79, 0, 1, 1), exit());
    assert.equal(e.pc, 1);
    fault(/out-of-bounds read of 1 bytes/, { memory: mem }, ins(0x71, 0, 1, -1), exit());
    fault(/out-of-bounds write/, { memory: mem }, ins(0x62, 1, 0, 6, 0), exit()); // stw at 6..10
    fault(/out-of-bounds read/, {}, movi(1, 0), ins(0x71, 0, 1, 0), exit()); // null
    fault(/out-of-bounds read/, {}, lddw(1, M64), ins(0x71, 0, 1, 0), exit());
  });
  test('stores of every size land in the caller\'s buffer', () => {
    const mem = new Uint8Array(24);
    r0({ memory: mem },
      ins(0x72, 1, 0, 0, 0x1ab), // stb (truncated)
      ins(0x6a, 1, 0, 2, -2), // sth
      ins(0x62, 1, 0, 4, -1), // stw
      ins(0x7a, 1, 0, 8, -2), // stdw: imm sign-extended
      lddw(3, 0x0102_0304_0506_0708n), ins(0x7b, 1, 3, 16), // stxdw
      ins(0x73, 1, 3, 1), // stxb
      exit());
    assert.deepEqual([...mem], [0xab, 0x08, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 8, 7, 6, 5, 4, 3, 2, 1]);
    const m2 = new Uint8Array(8);
    r0({ memory: m2 }, lddw(3, 0xaabb_ccddn), ins(0x63, 1, 3, 0), ins(0x6b, 1, 3, 4), exit()); // stxw, stxh
    assert.deepEqual([...m2], [0xdd, 0xcc, 0xbb, 0xaa, 0xdd, 0xcc, 0, 0]);
  });
  test('read-only memory', () => {
    const mem = Uint8Array.from([1, 2, 3, 4]);
    assert.equal(r0({ memory: mem, memoryWritable: false }, ins(0x71, 0, 1, 3), exit()), 4n);
    fault(/read-only/, { memory: mem, memoryWritable: false }, ins(0x72, 1, 0, 0, 9), exit());
    assert.deepEqual([...mem], [1, 2, 3, 4]);
  });
  test('MEMSX loads sign-extend', () => {
    const mem = Uint8Array.from([0x80, 0x00, 0x80, 0xff, 0xff, 0x7f, 0x00, 0x00, 0x00, 0x80]);
    assert.equal(r0({ memory: mem }, ins(0x91, 0, 1, 0), exit()), u(-128n)); // ldxsb
    assert.equal(r0({ memory: mem }, ins(0x91, 0, 1, 5), exit()), 0x7fn);
    assert.equal(r0({ memory: mem }, ins(0x89, 0, 1, 1), exit()), u(-0x8000n)); // ldxsh
    assert.equal(r0({ memory: mem }, ins(0x81, 0, 1, 0), exit()), u(-0x7fff80n)); // ldxsw 0xff800080
    assert.equal(r0({ memory: mem }, ins(0x81, 0, 1, 6), exit()), u(-0x8000_0000n));
    assert.equal(r0({ memory: mem }, ins(0x81, 0, 1, 2), exit()), 0x7fff_ff80n);
  });
  test('extra regions', () => {
    const bytes = Uint8Array.from([5, 6, 7, 8]);
    assert.equal(r0({ regions: [{ base: 0x5000n, bytes, writable: false }] }, lddw(1, 0x5000n), ins(0x61, 0, 1, 0), exit()), 0x0807_0605n);
  });
});

describe('stack', () => {
  test('r10-512 .. r10-1 is usable', () => {
    assert.equal(r0({}, ins(0x7a, 10, 0, -BPF_STACK_SIZE, 42), ins(0x79, 0, 10, -512), exit()), 42n);
    assert.equal(r0({}, ins(0x72, 10, 0, -1, 7), ins(0x71, 0, 10, -1), exit()), 7n);
  });
  test('r10-513 and r10+0 fault', () => {
    fault(/out-of-bounds write of 1 bytes/, {}, ins(0x72, 10, 0, -513, 1), exit());
    fault(/out-of-bounds read of 1 bytes/, {}, ins(0x71, 0, 10, 0), exit());
    fault(/out-of-bounds write of 8 bytes/, {}, ins(0x7a, 10, 0, -4, 1), exit());
  });
  test('the stack starts zeroed', () => {
    assert.equal(r0({}, ins(0x79, 0, 10, -8), exit()), 0n);
  });
});

describe('atomics', () => {
  const mem8 = (v: bigint) => {
    const m = new Uint8Array(16);
    new DataView(m.buffer).setBigUint64(0, v, true);
    return m;
  };
  const at = (m: Uint8Array, off = 0) => new DataView(m.buffer).getBigUint64(off, true);
  const ATOMIC64 = 0xdb, ATOMIC32 = 0xc3;
  /** r2 = operand; atomic op [r1+0], r2; r0 = r2 (the fetched value, if any) */
  const atomic = (m: Uint8Array, code: number, aop: number, operand: bigint, r0Init = 0n) =>
    r0({ memory: m }, lddw(2, operand), lddw(0, r0Init), ins(code, 1, 2, 0, aop), ...(aop >= 0xf0 ? [] : [movr(0, 2)]), exit());

  test('add / or / and / xor without fetch leave src alone', () => {
    let m = mem8(10n);
    assert.equal(atomic(m, ATOMIC64, 0x00, 5n), 5n);
    assert.equal(at(m), 15n);
    m = mem8(0xf0n);
    atomic(m, ATOMIC64, 0x40, 0x0fn);
    assert.equal(at(m), 0xffn);
    atomic(m, ATOMIC64, 0x50, 0x3cn);
    assert.equal(at(m), 0x3cn);
    atomic(m, ATOMIC64, 0xa0, 0xffn);
    assert.equal(at(m), 0xc3n);
  });
  test('fetch variants return the old value', () => {
    const m = mem8(M64);
    assert.equal(atomic(m, ATOMIC64, 0x01, 2n), M64);
    assert.equal(at(m), 1n);
    assert.equal(atomic(m, ATOMIC64, 0x41, 6n), 1n);
    assert.equal(at(m), 7n);
    assert.equal(atomic(m, ATOMIC64, 0x51, 5n), 7n);
    assert.equal(at(m), 5n);
    assert.equal(atomic(m, ATOMIC64, 0xa1, 1n), 5n);
    assert.equal(at(m), 4n);
  });
  test('32-bit atomics touch 4 bytes and zero-extend fetched values', () => {
    const m = mem8(0x1111_1111_ffff_ffffn);
    assert.equal(atomic(m, ATOMIC32, 0x01, 0xdead_0000_0000_0002n), 0xffff_ffffn);
    assert.equal(at(m), 0x1111_1111_0000_0001n);
    assert.equal(atomic(m, ATOMIC32, 0xa1, 3n), 1n);
    assert.equal(at(m), 0x1111_1111_0000_0002n);
    assert.equal(atomic(m, ATOMIC32, 0x41, 0x8000_0000n), 2n);
    assert.equal(atomic(m, ATOMIC32, 0x51, 0xffn), 0x8000_0002n);
    assert.equal(at(m), 0x1111_1111_0000_0002n);
  });
  test('xchg', () => {
    const m = mem8(0x1234n);
    assert.equal(atomic(m, ATOMIC64, 0xe1, 0x5678n), 0x1234n);
    assert.equal(at(m), 0x5678n);
    const m32 = mem8(0xaaaa_aaaa_0000_0001n);
    assert.equal(atomic(m32, ATOMIC32, 0xe1, M64), 1n);
    assert.equal(at(m32), 0xaaaa_aaaa_ffff_ffffn);
  });
  test('cmpxchg', () => {
    const m = mem8(100n);
    assert.equal(atomic(m, ATOMIC64, 0xf1, 7n, 99n), 100n); // mismatch: r0 = old, no store
    assert.equal(at(m), 100n);
    assert.equal(atomic(m, ATOMIC64, 0xf1, 7n, 100n), 100n); // match: store
    assert.equal(at(m), 7n);
    const m32 = mem8(0x5555_5555_0000_0009n);
    // only the low 32 bits of r0 are compared
    assert.equal(atomic(m32, ATOMIC32, 0xf1, 0xffff_ffff_0000_0003n, 0xffff_0000_0000_0009n), 9n);
    assert.equal(at(m32), 0x5555_5555_0000_0003n);
    assert.equal(atomic(m32, ATOMIC32, 0xf1, 1n, 4n), 3n);
    assert.equal(at(m32), 0x5555_5555_0000_0003n);
  });
  test('atomics are bounds- and permission-checked; bad ops fault', () => {
    fault(/out-of-bounds write of 8 bytes/, { memory: new Uint8Array(12) }, ins(0xdb, 1, 2, 8, 0), exit());
    fault(/read-only/, { memory: new Uint8Array(8), memoryWritable: false }, ins(0xc3, 1, 2, 0, 1), exit());
    fault(/atomic op/, { memory: new Uint8Array(8) }, ins(0xdb, 1, 2, 0, 0x10), exit());
    fault(/without FETCH/, { memory: new Uint8Array(8) }, ins(0xdb, 1, 2, 0, 0xe0), exit());
  });
  test('atomics on the stack', () => {
    assert.equal(r0({}, ins(0x7a, 10, 0, -8, 40), movi(1, 2), ins(0xdb, 10, 1, -8, 0), ins(0x79, 0, 10, -8), exit()), 42n);
  });
});

describe('lddw', () => {
  test('64-bit immediate', () => {
    assert.equal(r0({}, lddw(0, 0x8765_4321_dead_beefn), exit()), 0x8765_4321_dead_beefn);
    assert.equal(runProgram(prog(lddw(0, 1n), exit())).instructions, 2);
  });
  test('pseudo sources go through the resolver', () => {
    const seen: number[][] = [];
    const resolvePseudo = (src: number, imm: number, next: number) => {
      seen.push([src, imm, next]);
      return 0x1000n * BigInt(src) + BigInt(imm) + BigInt(next);
    };
    assert.equal(r0({ resolvePseudo }, ins(0x18, 0, 1, 0, 5), ins(0, 0, 0, 0, 0), exit()), 0x1005n);
    assert.equal(r0({ resolvePseudo }, ins(0x18, 0, 2, 0, 5), ins(0, 0, 0, 0, 16), exit()), 0x2015n);
    assert.equal(r0({ resolvePseudo }, ins(0x18, 0, 6, 0, 1), ins(0, 0, 0, 0, 2), exit()), 0x6003n);
    assert.deepEqual(seen, [[1, 5, 0], [2, 5, 16], [6, 1, 2]]);
    fault(/no resolver/, {}, ins(0x18, 0, 1, 0, 5), ins(0, 0, 0, 0, 0), exit());
    fault(/invalid src/, { resolvePseudo }, ins(0x18, 0, 7, 0, 5), ins(0, 0, 0, 0, 0), exit());
  });
  test('truncated lddw faults', () => {
    fault(/lddw without/, {}, ins(0x18, 0, 0, 0, 1));
  });
});

describe('calls', () => {
  test('helpers get r1..r5 and a context; r0 is the result', () => {
    const helpers = new Map<number, BpfHelper>([
      [1, (a, b, c, d, e) => a + b * 10n + c * 100n + d * 1000n + e * 10000n],
      [2, (a, b, _c, _d, _e, ctx) => {
        const v = ctx.writable(a, Number(b));
        v.reverse();
        return BigInt(ctx.pc);
      }],
    ]);
    assert.equal(r0({ helpers }, movi(1, 1), movi(2, 2), movi(3, 3), movi(4, 4), movi(5, 5), ins(0x85, 0, 0, 0, 1), exit()), 54321n);
    const mem = Uint8Array.from([1, 2, 3]);
    assert.equal(r0({ helpers, memory: mem }, movi(0, 0), ins(0x85, 0, 0, 0, 2), exit()), 1n);
    assert.deepEqual([...mem], [3, 2, 1]);
  });
  test('unknown helpers, helper faults and helper exits', () => {
    fault(/unknown helper 9/, {}, ins(0x85, 0, 0, 0, 9), exit());
    const helpers = new Map<number, BpfHelper>([
      [1, () => { throw new Error('boom'); }],
      [2, (a, _b, _c, _d, _e, ctx) => ctx.read(a, 4)[0]! === 0 ? 0n : 1n],
      [3, (a, _b, _c, _d, _e, ctx) => { ctx.exit(); return a; }],
    ]);
    fault(/helper 1 failed: boom/, { helpers }, ins(0x85, 0, 0, 0, 1), exit());
    fault(/out-of-bounds read of 4 bytes/, { helpers }, movi(1, 16), ins(0x85, 0, 0, 0, 2), exit());
    assert.equal(r0({ helpers }, movi(1, 77), ins(0x85, 0, 0, 0, 3), movi(0, 1), exit()), 77n);
  });
  test('local calls: new frame, r6-r9 and the caller\'s stack preserved', () => {
    const p = [
      /* 0 */ movi(6, 11), movi(7, 12), movi(8, 13), movi(9, 14),
      /* 4 */ ins(0x7a, 10, 0, -8, 0x55),
      /* 5 */ movr(1, 10), ins(0x07, 1, 0, 0, -8), // r1 = &caller stack slot
      /* 7 */ movr(5, 10),
      /* 8 */ ins(0x85, 0, 1, 0, 10), // call 19
      /* 9 */ ins(0x79, 2, 10, -8), // caller's slot: must be 0x55 + 1 (incremented through the pointer)
      /* 10 */ ins(0x0f, 0, 2),
      /* 11 */ ins(0x0f, 0, 6), ins(0x0f, 0, 7), ins(0x0f, 0, 8), ins(0x0f, 0, 9),
      /* 15 */ ins(0x1f, 5, 10), ins(0x0f, 0, 5), // + (old r10 - r10) == 0
      /* 17 */ exit(), exit(),
      // callee at 19
      /* 19 */ movi(6, 0), movi(7, 0), movi(8, 0), movi(9, 0),
      /* 23 */ ins(0x7a, 10, 0, -8, 1000), // own frame's slot
      /* 24 */ ins(0x79, 3, 1, 0), ins(0x07, 3, 0, 0, 1), ins(0x7b, 1, 3, 0), // ++*r1
      /* 27 */ ins(0x79, 0, 10, -8),
      /* 28 */ exit(),
    ];
    assert.equal(r0({}, ...p), 1000n + 0x56n + 11n + 12n + 13n + 14n);
  });
  /** f(r1) = r1 == 0 ? 0 : f(r1 - 1) + 1, called from main: main + (n + 1) frames of f. */
  const recurse = (n: number) => [
    movi(1, n), ins(0x85, 0, 1, 0, 1), exit(),
    /* f: 3 */ movi(0, 0), ins(0x15, 1, 0, 3, 0), ins(0x17, 1, 0, 0, 1), ins(0x85, 0, 1, 0, -4), ins(0x07, 0, 0, 0, 1), exit(),
  ];
  test('call depth: 8 frames allowed, 9 fault', () => {
    assert.equal(r0({}, ...recurse(6)), 6n);
    const e = fault(/call depth limit exceeded/, {}, ...recurse(7));
    assert.equal(e.pc, 6);
  });
  test('each frame gets its own stack with the same bounds', () => {
    fault(/out-of-bounds write/, {}, ins(0x85, 0, 1, 0, 1), exit(), ins(0x72, 10, 0, -513, 1), exit());
    assert.equal(r0({}, ins(0x85, 0, 1, 0, 1), exit(), ins(0x7a, 10, 0, -512, 3), ins(0x79, 0, 10, -512), exit()), 3n);
  });
});

describe('limits and bad programs', () => {
  test('instruction counting and maxInstructions', () => {
    assert.equal(runProgram(prog(movi(0, 1), movi(0, 2), exit())).instructions, 3);
    const e = fault(/instruction limit exceeded \(100\)/, { maxInstructions: 100 }, ja(-1));
    assert.equal(e.pc, 0);
    fault(/instruction limit exceeded/, {}, ja(-1));
    assert.equal(r0({ maxInstructions: 3 }, movi(0, 1), movi(0, 2), exit()), 2n);
  });
  test('invalid opcodes and registers fault at run time only when reached', () => {
    fault(/invalid opcode for opcode 0xff/, {}, ins(0xff), exit());
    fault(/invalid register/, {}, ins(0xb7, 11, 0, 0, 1), exit());
    fault(/invalid opcode/, {}, ins(0x20, 0, 0, 0, 0), exit()); // legacy ABS loads are not supported
    assert.equal(r0({}, movi(0, 4), exit(), ins(0xff)), 4n);
  });
  test('program shape is checked up front', () => {
    assert.throws(() => new BpfInterpreter(new Uint8Array(0)), /empty program/);
    assert.throws(() => new BpfInterpreter(new Uint8Array(12)), /not a multiple of 8/);
  });
  test('an interpreter runs many times with fresh state', () => {
    const vm = new BpfInterpreter(prog(ins(0x79, 0, 10, -8), ins(0x07, 0, 0, 0, 1), ins(0x7b, 10, 0, -8), exit()));
    assert.equal(vm.run().r0, 1n);
    assert.equal(vm.run().r0, 1n);
    assert.equal(vm.run({ args: [5n] }).r0, 1n);
  });
});
