/**
 * The guest eBPF JIT (guest/sdk/src/bpf-jit.c) against the TypeScript reference interpreter.
 *
 * test/native/bpf-jit-host.c is built with the host's gcc into a temporary directory; it compiles
 * each program with kt_bpf_jit_compile, runs the machine code and prints r0 and the context
 * memory. The harness maps that memory at BPF_MEMORY_BASE, where the interpreter puts its memory
 * argument, so pointers into it agree and results compare bit for bit. Only the stack address
 * differs, so no program here lets r10 escape into a value.
 *
 * Corpus: every ALU op at both widths with both sources over edge values and register pairs
 * (r0/r3/r4 are rax/rdx/rcx, which div and shifts use), byte swaps, loads/stores/MEMSX, atomics,
 * every jump condition forward and backward, rel32 jumps, helpers, lddw. Each program ends by
 * storing r0-r9 into memory, so a clobbered register shows up. Then a differential fuzz over
 * random straight-line + forward-branch programs, and the timings (printed, never asserted).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { assemble } from '../../src/bpf/asm.js';
import { disassemble } from '../../src/bpf/disasm.js';
import { encodeProgram } from '../../src/bpf/isa.js';
import { BPF_MEMORY_BASE, BpfInterpreter, runProgram, type BpfHelper } from '../../src/bpf/interpreter.js';
import { rng } from '../helpers/rng.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const HARNESS = path.join(ROOT, 'test/native/bpf-jit-host.c');
const JIT = path.join(ROOT, 'guest/sdk/src/bpf-jit.c');
const INCLUDE = path.join(ROOT, 'guest/sdk/include');

const u64 = (v: bigint) => BigInt.asUintN(64, v);

// ---------------------------------------------------------------- packing
type Insn = number[];
function ins(op: number, dst = 0, src = 0, off = 0, imm = 0): Insn {
  return [op, (src << 4) | dst, off & 0xff, (off >> 8) & 0xff, imm & 0xff, (imm >>> 8) & 0xff, (imm >>> 16) & 0xff, (imm >>> 24) & 0xff];
}
function lddw(dst: number, v: bigint): Insn {
  const x = u64(v);
  return [...ins(0x18, dst, 0, 0, Number(x & 0xffffffffn)), ...ins(0, 0, 0, 0, Number(x >> 32n))];
}
const exit = () => ins(0x95);
const slots = (code: Insn[]) => code.reduce((n, i) => n + i.length / 8, 0);

// ---------------------------------------------------------------- the two sides

/** An array map of a case: r1 = handle at a lookup; values at data + i * round_up(valueSize, 8). */
interface ArrayMap {
  handle: bigint;
  data: bigint;
  valueSize: number;
  maxEntries: number;
}

const mix: BpfHelper = (a, b, c, d, e) => u64(((a ^ u64(b << 1n)) + c * 3n - (d >> 2n)) ^ u64(e + 0x1234n));

/** Helper 1 as the harness has it: an array lookup when r1 is one of maps' handles, else mix. */
function lookupOrMix(maps: ArrayMap[]): BpfHelper {
  return (a, b, c, d, e, ctx) => {
    const m = maps.find((x) => x.handle === a);
    if (!m) return mix(a, b, c, d, e, ctx);
    const key = new DataView(ctx.read(b, 4).slice().buffer).getUint32(0, true);
    return key < m.maxEntries ? u64(m.data + BigInt(key) * BigInt((m.valueSize + 7) & ~7)) : 0n;
  };
}

/** The harness's helpers (same ids, same arithmetic). */
const HELPERS = new Map<number, BpfHelper>([
  [1, mix],
  [2, () => 42n],
  [3, (a, b, _c, _d, _e, ctx) => {
    const at = ctx.writable(a, 8);
    new DataView(at.buffer, at.byteOffset, 8).setBigUint64(0, b, true);
    return u64(a - BPF_MEMORY_BASE);
  }],
]);

interface Case {
  name: string;
  program: Uint8Array;
  memory: Uint8Array;
  /** Array maps (compiled with kt_bpf_jit_compile_inline), and per slot 0 or 1 + the map to inline there. */
  maps?: ArrayMap[];
  sites?: number[];
}
interface Outcome {
  r0: bigint;
  memory: string;
}
type JitOutcome = (Outcome & { codeBytes: number; lookupCalls: number }) | { err: number };

let dir: string;
let host: string;

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'kvmtalk-jit-'));
  host = path.join(dir, 'bpf-jit-host');
  try {
    execFileSync('gcc', ['-O2', '-Wall', '-Wextra', '-Werror', '-I', INCLUDE, '-o', host, HARNESS, JIT], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    // gcc is a hard requirement of the project: a missing compiler is a failure, not a skip.
    if (err.code === 'ENOENT') throw new Error('gcc not found: kvmtalk needs gcc (apt-get install gcc)');
    throw new Error(`gcc failed on the JIT harness:\n${err.stderr?.toString() ?? err.message}`);
  }
});
after(() => rmSync(dir, { recursive: true, force: true }));

function record(c: Case): Buffer {
  const maps = c.maps ?? [];
  const hdr = Buffer.alloc(12);
  hdr.writeUInt32LE(c.program.length / 8, 0);
  hdr.writeUInt32LE(c.memory.length, 4);
  hdr.writeUInt32LE(maps.length, 8);
  const defs = maps.map((m) => {
    const b = Buffer.alloc(24);
    b.writeBigUInt64LE(m.handle, 0);
    b.writeBigUInt64LE(m.data, 8);
    b.writeUInt32LE(m.valueSize, 16);
    b.writeUInt32LE(m.maxEntries, 20);
    return b;
  });
  const sites = maps.length ? [Buffer.from(Uint8Array.from({ length: c.program.length / 8 }, (_, k) => c.sites?.[k] ?? 0))] : [];
  return Buffer.concat([hdr, c.program, c.memory, ...defs, ...sites]);
}

function runHost(args: string[], input: Buffer): string[] {
  const r = spawnSync(host, args, { input, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`bpf-jit-host ${args.join(' ')} exited ${r.status} (${r.signal}): ${r.stderr.toString()}`);
  return r.stdout.toString().trim().split('\n');
}

/** Compiles (into a buffer of `cap` bytes, default 1 MiB) and runs every case natively in one harness process. */
function jitAll(cases: Case[], cap?: number): JitOutcome[] {
  const lines = runHost(cap === undefined ? ['run'] : ['run', String(cap)], Buffer.concat(cases.map(record)));
  assert.equal(lines.length, cases.length, 'one result line per program');
  return lines.map((line) => {
    const [kind, a, b, mem, calls] = line.split(' ');
    if (kind === 'err') return { err: Number(a) };
    return { r0: BigInt(`0x${a}`), codeBytes: Number(b), memory: mem ?? '', lookupCalls: Number(calls) };
  });
}

function interpret(c: Case): Outcome {
  const memory = c.memory.slice();
  const helpers = c.maps ? new Map([...HELPERS, [1, lookupOrMix(c.maps)]]) : HELPERS;
  const { r0 } = runProgram(c.program, { memory, helpers });
  return { r0, memory: Buffer.from(memory).toString('hex') };
}

/** Runs all cases on both sides and fails with the first few disagreements, disassembled; returns the JIT's outcomes. */
function compare(cases: Case[]): JitOutcome[] {
  const jit = jitAll(cases);
  const bad: string[] = [];
  cases.forEach((c, i) => {
    const want = interpret(c);
    const got = jit[i]!;
    if ('err' in got || got.r0 !== want.r0 || got.memory !== want.memory) {
      if (bad.length < 5) {
        bad.push(`${c.name}: interpreter r0=0x${want.r0.toString(16)} mem=${want.memory}\n` +
          `  jit ${'err' in got ? `error ${got.err}` : `r0=0x${got.r0.toString(16)} mem=${got.memory}`}\n  ` +
          disassemble(c.program).join('\n  '));
      }
    }
  });
  assert.equal(bad.length, 0, `${bad.length} disagreement(s) out of ${cases.length}:\n${bad.join('\n')}`);
  return jit;
}

// ---------------------------------------------------------------- corpus builders

/** Distinct 64-bit values for every register, so a clobber is visible. */
const FILL = (r: number) => u64(0x0101010101010101n * BigInt(r + 1) ^ 0x8040201008040201n);
const DUMP_AT = 64; // registers r0..r9 go to memory[DUMP_AT + 8 * r]
const MEM_BYTES = DUMP_AT + 80;

/**
 * Wraps `body`: saves the context pointer at r10 - 8, fills r0-r9, runs the body, then stores
 * every register into memory and exits with r0.
 */
function harnessProgram(body: Insn[]): Insn[] {
  const pre: Insn[] = [ins(0x7b, 10, 1, -8)]; // *(u64 *)(r10 - 8) = r1
  for (let r = 0; r <= 9; r++) pre.push(lddw(r, FILL(r)));
  const post: Insn[] = [
    ins(0x7b, 10, 1, -16), // save r1
    ins(0x79, 1, 10, -8), // r1 = ctx
  ];
  for (const r of [0, 2, 3, 4, 5, 6, 7, 8, 9]) post.push(ins(0x7b, 1, r, DUMP_AT + 8 * r));
  post.push(ins(0x79, 2, 10, -16), ins(0x7b, 1, 2, DUMP_AT + 8), exit());
  return [...pre, ...body, ...post];
}

function pack(code: Insn[]): Uint8Array {
  const out = new Uint8Array(code.reduce((n, i) => n + i.length, 0));
  let at = 0;
  for (const i of code) {
    out.set(i, at);
    at += i.length;
  }
  return out;
}

function mkCase(name: string, code: Insn[], memory: Uint8Array = new Uint8Array(MEM_BYTES)): Case {
  return { name, program: pack(code), memory };
}

const VALUES: bigint[] = [
  0n, 1n, 2n, 7n, 31n, 32n, 33n, 63n, 64n, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n,
  1n << 63n, (1n << 63n) - 1n, (1n << 63n) + 1n, u64(-1n), u64(-2n), u64(-7n), 0x123456789abcdef0n, 0xfedcba9876543210n,
];
const IMMS: number[] = [0, 1, 2, 7, -7, 31, 32, 33, 63, 64, -1, -2, 0x7fffffff, -0x80000000, 0x12345678, -0x1234568];
/** dst/src pairs: rax, rdx and rcx (r0, r3, r4) on both sides, equal registers, callee-saved ones. */
const PAIRS: [number, number][] = [
  [0, 1], [1, 0], [0, 3], [3, 0], [3, 4], [4, 3], [4, 1], [1, 4], [0, 4], [4, 0], [0, 0], [3, 3], [4, 4],
  [6, 9], [9, 6], [5, 2], [2, 5], [7, 8], [8, 7], [1, 1],
];

interface AluForm { name: string; code: number; off: number; x: boolean }
function aluForms(): AluForm[] {
  const forms: AluForm[] = [];
  const ops: [string, number, number][] = [
    ['add', 0x00, 0], ['sub', 0x10, 0], ['mul', 0x20, 0], ['div', 0x30, 0], ['sdiv', 0x30, 1], ['or', 0x40, 0],
    ['and', 0x50, 0], ['lsh', 0x60, 0], ['rsh', 0x70, 0], ['mod', 0x90, 0], ['smod', 0x90, 1], ['xor', 0xa0, 0],
    ['mov', 0xb0, 0], ['arsh', 0xc0, 0],
  ];
  for (const wide of [false, true]) {
    const cls = wide ? 0x07 : 0x04;
    for (const [name, op, off] of ops) {
      for (const x of [false, true]) forms.push({ name: `${wide ? 'alu64' : 'alu32'} ${name} ${x ? 'X' : 'K'}`, code: op | cls | (x ? 0x08 : 0), off, x });
    }
    forms.push({ name: `${wide ? 'alu64' : 'alu32'} neg`, code: 0x80 | cls, off: 0, x: false });
    for (const from of wide ? [8, 16, 32] : [8, 16]) forms.push({ name: `${wide ? 'alu64' : 'alu32'} movsx${from}`, code: 0xb8 | cls, off: from, x: true });
  }
  return forms;
}

function aluCases(): Case[] {
  const cases: Case[] = [];
  let k = 0;
  for (const f of aluForms()) {
    if (f.x) {
      for (const a of VALUES) {
        for (const b of VALUES) {
          const [d, s] = PAIRS[k++ % PAIRS.length]!;
          const body = [lddw(d, a), lddw(s, b), ...(d === s ? [lddw(d, a)] : []), ins(f.code, d, s, f.off)];
          cases.push(mkCase(`${f.name} r${d}=0x${a.toString(16)} r${s}=0x${b.toString(16)}`, harnessProgram(body)));
        }
      }
    } else {
      for (const a of VALUES) {
        for (const imm of f.name.endsWith('neg') ? [0] : IMMS) {
          const d = PAIRS[k++ % PAIRS.length]![0];
          cases.push(mkCase(`${f.name} r${d}=0x${a.toString(16)} imm=${imm}`, harnessProgram([lddw(d, a), ins(f.code, d, 0, f.off, imm)])));
        }
      }
    }
  }
  return cases;
}

function endCases(): Case[] {
  const cases: Case[] = [];
  const forms: [string, number][] = [['le', 0xd4], ['be', 0xdc], ['bswap', 0xd7]];
  for (const [name, code] of forms) {
    for (const width of [16, 32, 64]) {
      for (const [i, v] of VALUES.entries()) {
        const d = [0, 1, 3, 4, 5, 6, 9, 2][i % 8]!;
        cases.push(mkCase(`${name}${width} r${d}=0x${v.toString(16)}`, harnessProgram([lddw(d, v), ins(code, d, 0, 0, width)])));
      }
    }
  }
  return cases;
}

/** A context pre-filled with a byte pattern (high bits set here and there for MEMSX). */
function patternMemory(): Uint8Array {
  const m = new Uint8Array(MEM_BYTES);
  for (let i = 0; i < DUMP_AT; i++) m[i] = (i * 37 + 0x85) & 0xff;
  return m;
}

function memCases(): Case[] {
  const cases: Case[] = [];
  const sizes: [string, number, number][] = [['w', 0x00, 4], ['h', 0x08, 2], ['b', 0x10, 1], ['dw', 0x18, 8]];
  const offs = [0, 1, 3, 8, 13, 40];
  let k = 0;
  for (const [sz, bits, bytes] of sizes) {
    for (const off of offs) {
      for (const base of [9, 0, 3, 4, 1, 6]) {
        const dst = [0, 3, 4, 6, 8, 2][k++ % 6]!;
        // base = ctx + 16, then access base + off - 16 (negative displacements too)
        const setBase = [ins(0x79, base, 10, -8), ins(0x07, base, 0, 0, 16)];
        const o = off - 16;
        cases.push(mkCase(`ldx ${sz} r${dst} = [r${base}${o}]`, harnessProgram([...setBase, ins(0x61 | bits, dst, base, o)]), patternMemory()));
        if (bytes < 8) cases.push(mkCase(`ldxsx ${sz} r${dst} = [r${base}${o}]`, harnessProgram([...setBase, ins(0x81 | bits, dst, base, o)]), patternMemory()));
        for (const imm of [0x7f, -1, -0x80000000, 0x12345678]) {
          cases.push(mkCase(`st ${sz} [r${base}${o}] = ${imm}`, harnessProgram([...setBase, ins(0x62 | bits, base, 0, o, imm)]), patternMemory()));
        }
        const src = dst === base ? 7 : dst;
        cases.push(mkCase(`stx ${sz} [r${base}${o}] = r${src}`, harnessProgram([...setBase, ins(0x63 | bits, base, src, o)]), patternMemory()));
        // through the stack: store, then load back into a register that gets dumped
        cases.push(mkCase(`stack ${sz} r${dst}`, harnessProgram([
          ins(0x7a, 10, 0, -64, 0), ins(0x7a, 10, 0, -56, 0),
          ins(0x63 | bits, 10, src, -60 + (off % 3)), ins(0x61 | bits, dst, 10, -60 + (off % 3)),
          ...(bytes < 8 ? [ins(0x81 | bits, 5, 10, -60 + (off % 3))] : []),
        ])));
      }
    }
  }
  return cases;
}

function atomicCases(): Case[] {
  const cases: Case[] = [];
  const ops: [string, number][] = [
    ['add', 0x00], ['or', 0x40], ['and', 0x50], ['xor', 0xa0], ['fetch_add', 0x01], ['fetch_or', 0x41],
    ['fetch_and', 0x51], ['fetch_xor', 0xa1], ['xchg', 0xe1], ['cmpxchg', 0xf1],
  ];
  // [dst (address), src]: src = r0 (rax) and dst = r0 exercise the cmpxchg loop's register juggling
  const regs: [number, number][] = [[1, 2], [1, 0], [0, 1], [6, 9], [3, 4], [4, 3], [5, 5]];
  const vals: [bigint, bigint][] = [[0x00ff00ff00ff00ffn, 0x0f0f0f0f0f0f0f0fn], [u64(-1n), 1n], [0x80000000n, 0x80000000n], [0x1234n, 0xffffffff00000001n]];
  let k = 0;
  for (const wide of [false, true]) {
    for (const [name, imm] of ops) {
      for (const [d, s] of regs) {
        if (d === s && name !== 'add' && name !== 'fetch_add') continue;
        if (d === 0 && name === 'cmpxchg') continue; // r0 would be both the address and the expected value
        for (const [a, b] of vals) {
          for (const equal of name === 'cmpxchg' && s !== 0 ? [true, false] : [true]) {
            const off = [0, 8, -8, 16][k++ % 4]!;
            const mem = new Uint8Array(MEM_BYTES);
            new DataView(mem.buffer).setBigUint64(32, a, true);
            // r0 is what cmpxchg expects; at 32 bits its upper half differs, which must not matter
            const expected = equal ? (wide ? a : a ^ 0xabcdef0000000000n) : a + 1n;
            const setup: Insn[] = d !== 0 && s !== 0 ? [lddw(0, expected)] : [];
            setup.push(lddw(s, b), ins(0x79, d, 10, -8), ins(0x07, d, 0, 0, 32 - off));
            const what = name === 'cmpxchg' ? (s === 0 ? ' r0 as src' : equal ? ' equal' : ' differ') : '';
            cases.push(mkCase(`atomic${wide ? 64 : 32} ${name} [r${d}${off >= 0 ? '+' : ''}${off}], r${s} a=0x${a.toString(16)} b=0x${b.toString(16)}${what}`,
              harnessProgram([...setup, ins(wide ? 0xdb : 0xc3, d, s, off, imm)]), mem));
          }
        }
      }
    }
  }
  return cases;
}

const CONDS: [string, number][] = [
  ['jeq', 0x10], ['jgt', 0x20], ['jge', 0x30], ['jset', 0x40], ['jne', 0x50], ['jsgt', 0x60], ['jsge', 0x70],
  ['jlt', 0xa0], ['jle', 0xb0], ['jslt', 0xc0], ['jsle', 0xd0],
];
const JVALUES: bigint[] = [0n, 1n, 2n, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n, 0x1ffffffffn, 1n << 63n, (1n << 63n) - 1n, u64(-1n), u64(-2n)];

function jumpCases(): Case[] {
  const cases: Case[] = [];
  let k = 0;
  for (const wide of [true, false]) {
    for (const [name, op] of CONDS) {
      for (const x of [true, false]) {
        const code = op | (wide ? 0x05 : 0x06) | (x ? 0x08 : 0);
        for (const a of JVALUES) {
          for (const b of x ? JVALUES : IMMS.map((v) => BigInt(v))) {
            const [d, s] = PAIRS[k++ % PAIRS.length]!;
            if (x && d === s) continue;
            const load = x ? [lddw(d, a), lddw(s, b)] : [lddw(d, a)];
            const imm = x ? 0 : Number(b);
            // forward: if taken skip "r7 = 1"
            const fwd = [...load, ins(code, d, s, 1, imm), ins(0xb7, 7, 0, 0, 1), ins(0xb7, 8, 0, 0, 2)];
            cases.push(mkCase(`${wide ? 'jmp' : 'jmp32'} ${name} ${x ? 'X' : 'K'} fwd 0x${a.toString(16)} 0x${b.toString(16)}`, harnessProgram(fwd)));
            // backward: ja over the target, the condition jumps back to it
            const back = [...load, ins(0x05, 0, 0, 2), ins(0xb7, 7, 0, 0, 5), ins(0x05, 0, 0, 2), ins(code, d, s, -3, imm), ins(0xb7, 8, 0, 0, 6)];
            cases.push(mkCase(`${wide ? 'jmp' : 'jmp32'} ${name} ${x ? 'X' : 'K'} back 0x${a.toString(16)} 0x${b.toString(16)}`, harnessProgram(back)));
          }
        }
      }
    }
  }
  return cases;
}

/** Assembled text programs for control flow, calls and lddw; r1 is the context on entry. */
const TEXT: [string, string][] = [
  ['gotol forward and back', `
    r0 = 1
    gotol fwd
    r0 = 99
    exit
  back:
    r0 += 100
    exit
  fwd:
    r0 += 10
    gotol back`],
  ['exit in the middle', `
    r0 = 7
    if r1 != 0 goto out
    r0 = 8
  out:
    exit
    r0 = 9
    exit`],
  ['loop with a backward conditional jump', `
    r0 = 0
    r2 = 100
  loop:
    r0 += r2
    r2 += -1
    if r2 != 0 goto loop
    exit`],
  ['helpers: r1-r5 in, r0 out, r6-r9 kept', `
    r6 = 0x1111111111111111 ll
    r7 = 0x2222222222222222 ll
    r8 = 0x3333333333333333 ll
    r9 = r1
    r1 = 0x8000000000000001 ll
    r2 = -3
    r3 = 0x7fffffff
    r4 = 0xfffffff0 ll
    r5 = 5
    call 1
    r0 ^= r6
    r0 += r7
    r0 -= r8
    r2 = r0
    call 2
    r0 += r2
    *(u64 *)(r9 + 0) = r0
    r1 = r9
    r1 += 24
    r2 = 0xdeadbeefcafef00d ll
    call 3
    r0 += r9
    r0 -= r6
    exit`],
  ['lddw edge values', `
    r0 = 0xffffffff ll
    r2 = 0xffffffff80000000 ll
    r3 = 0x100000000 ll
    r4 = 0x8000000000000000 ll
    r5 = 0 ll
    r0 ^= r2
    r0 ^= r3
    r0 ^= r4
    r0 += r5
    exit`],
  ['mov32 of a negative immediate zero-extends, mov64 sign-extends', `
    w0 = -1
    r2 = -1
    r0 <<= 4
    r0 ^= r2
    exit`],
  ['32-bit ops clear the upper half', `
    r0 = -1
    w0 += 0
    r2 = -1
    w2 <<= 0
    r0 += r2
    r3 = -1
    r4 = 0
    w3 <<= w4
    r0 += r3
    r3 = -1
    r4 = 32
    w3 >>= w4
    r0 += r3
    exit`],
];

function textCases(): Case[] {
  const memory = new Uint8Array(64);
  return TEXT.map(([name, src]) => ({ name, program: encodeProgram(assemble(src)), memory }));
}

/** Jumps across more than 127 bytes of code both ways, so rel32 forms are used. */
function longJumpCases(): Case[] {
  const cases: Case[] = [];
  for (const filler of [10, 30, 200, 1500]) {
    const pad = Array.from({ length: filler }, (_, i) => ins(0x07, 6, 0, 0, i + 1)); // r6 += i + 1
    for (const wide of [true, false]) {
      const jeq = (off: number) => ins(wide ? 0x1d : 0x1e, 7, 8, off); // if r7 == r8 (JMP or JMP32, X)
      for (const first of [ins(0x05, 0, 0, filler + 2), jeq(filler + 2)]) {
        // 2: forward over the pad to J; J: back to the pad; the pad ends with a jump over J
        const body = [
          ins(0xb7, 7, 0, 0, 3), ins(0xb7, 8, 0, 0, 3),
          first,
          ...pad,
          ins(0x07, 0, 0, 0, 1000),
          ins(0x05, 0, 0, 1),
          jeq(-(filler + 3)), // J
          ins(0x07, 9, 0, 0, 1),
        ];
        cases.push(mkCase(`long jumps ${wide ? 'jmp' : 'jmp32'} ${first[0] === 0x05 ? 'ja' : 'jeq'} filler ${filler}`, harnessProgram(body)));
      }
    }
  }
  return cases;
}

// ---------------------------------------------------------------- inlined array-map lookups

const ARRAY_AT = 256; // map storage starts here in the memory of these cases
const HANDLE = 0xfeed_0000_0000_0000n; // r1 at a lookup: HANDLE + map index

/** Per slot: 1 + mapOf(k) for the k-th `call 1` of program, or 0 (call the helper) when mapOf gives -1. */
function lookupSites(program: Uint8Array, mapOf: (k: number) => number): number[] {
  const dv = new DataView(program.buffer, program.byteOffset);
  let k = 0;
  return Array.from({ length: program.length / 8 }, (_, s) => (program[8 * s] === 0x85 && dv.getInt32(8 * s + 4, true) === 1 ? mapOf(k++) + 1 : 0));
}

/** maps placed one after another from ARRAY_AT in a memory they fit, filled with a pattern. */
function arrayMemory(shapes: [valueSize: number, maxEntries: number][]): { maps: ArrayMap[]; memory: Uint8Array } {
  let at = ARRAY_AT;
  const maps = shapes.map(([valueSize, maxEntries], i) => {
    const m = { handle: HANDLE + BigInt(i), data: BPF_MEMORY_BASE + BigInt(at), valueSize, maxEntries };
    at += maxEntries * ((valueSize + 7) & ~7);
    return m;
  });
  const memory = new Uint8Array(at);
  for (let b = 0; b < at; b++) memory[b] = (b * 29 + 3) & 0xff;
  return { maps, memory };
}

/** (harnessProgram keeps r10 - 16 .. r10 - 1 for itself) `*(u32 *)(r10 + off) = key; r2 = r10 + off; r1 = map; call 1`, then r1-r5 redefined (the inlined form leaves them). */
function lookup(map: number, key: number, off = -20, via?: number): Insn[] {
  const store = via === undefined ? [ins(0x62, 10, 0, off, key)] : [lddw(via, BigInt(key >>> 0)), ins(0x63, 10, via, off)];
  return [...store, ins(0xbf, 2, 10), ins(0x07, 2, 0, 0, off), lddw(1, HANDLE + BigInt(map)), ins(0x85, 0, 0, 0, 1),
    ...[1, 2, 3, 4, 5].map((r) => lddw(r, FILL(r)))];
}

/** Each case twice: every lookup inlined (as a lookup in maps[map]), and none (the helper). */
function bothWays(c: Case, map = 0): Case[] {
  return [{ ...c, name: `${c.name} (inlined)`, sites: lookupSites(c.program, () => map) },
    { ...c, name: `${c.name} (helper)`, sites: lookupSites(c.program, () => -1) }];
}

function arrayCases(): Case[] {
  const cases: Case[] = [];
  // value sizes around multiples of 8 (stride rounding), power-of-two and other strides
  const shapes: [number, number][] = [[8, 16], [1, 5], [4, 3], [12, 4], [13, 2], [16, 1], [24, 3], [100, 3], [7, 7], [9, 2], [64, 2]];
  for (const [valueSize, maxEntries] of shapes) {
    const { maps, memory } = arrayMemory([[valueSize, maxEntries]]);
    const keys = [...new Set([0, 1, maxEntries - 2, maxEntries - 1, maxEntries, maxEntries + 1, 0x7fffffff, 0x80000000, 0xffffffff])].filter((k) => k >= 0);
    for (const key of keys) {
      for (const [off, via] of [[-20, undefined], [-28, 6], [-36, 0]] as [number, number | undefined][]) {
        // mark the first and last byte of the value found: a wrong stride shows in memory
        const body = [...lookup(0, key, off, via), ins(0x15, 0, 0, 2, 0), ins(0x72, 0, 0, 0, 0xcd), ins(0x72, 0, 0, valueSize - 1, 0xab)];
        cases.push(...bothWays({ name: `array ${valueSize}x${maxEntries} key ${key} at r10${off}${via === undefined ? '' : ` via r${via}`}`,
          program: pack(harnessProgram(body)), memory: memory.slice(), maps }));
      }
    }
  }
  // Addresses only (never dereferenced): data that fits a sign-extended imm32 or not, strides up
  // to 2^31 - 8, max_entries in the top half of u32 and 0.
  const far: ArrayMap[] = [
    { handle: HANDLE, data: 0x2000n, valueSize: 24, maxEntries: 4 },
    { handle: HANDLE + 1n, data: 0xffffffff80001000n, valueSize: 5, maxEntries: 0xffffff80 },
    { handle: HANDLE + 2n, data: 0x7fff00001000n, valueSize: 0x7ffffff8, maxEntries: 3 },
    { handle: HANDLE + 3n, data: 0x1000n, valueSize: 8, maxEntries: 0xffffffff },
    { handle: HANDLE + 4n, data: 0x1000n, valueSize: 8, maxEntries: 0 },
  ];
  const farKeys = [[0, 3, 4], [0, 0xffffff7f, 0xffffff80, 0xffffffff], [1, 2, 3], [0xfffffffe, 0xffffffff], [0, 1]];
  far.forEach((m, i) => {
    for (const key of farKeys[i]!) {
      cases.push(...bothWays({ name: `array at 0x${m.data.toString(16)} ${m.valueSize}x${m.maxEntries} key ${key}`,
        program: pack(harnessProgram(lookup(i, key))), memory: new Uint8Array(MEM_BYTES), maps: far }, i));
    }
  });
  return cases;
}

/** array_count of the benchmark: 16 context bytes pick a counter each (low 4 bits) in a 12-entry map. */
function countingCase(): Case {
  const { maps, memory } = arrayMemory([[8, 12]]);
  for (let i = 0; i < 16; i++) memory[i] = (i * 7 + 5) & 0xff;
  const body: Insn[] = [
    ins(0xb7, 7, 0, 0, 0), // r7 = i = 0
    // loop:
    ins(0x79, 9, 10, -8), ins(0x0f, 9, 7), ins(0x71, 8, 9, 0), ins(0x57, 8, 0, 0, 15), // r8 = ctx[i] & 15
    ins(0x63, 10, 8, -20), ins(0xbf, 2, 10), ins(0x07, 2, 0, 0, -20), lddw(1, HANDLE), ins(0x85, 0, 0, 0, 1),
    ins(0x15, 0, 0, 3, 0), // if r0 == 0 goto next
    ins(0x79, 1, 0, 0), ins(0x07, 1, 0, 0, 1), ins(0x7b, 0, 1, 0), // ++*r0
    // next:
    ins(0x07, 7, 0, 0, 1), ins(0xa5, 7, 0, -15, 16), // i += 1; if i < 16 goto loop
    ...[1, 2, 3, 4, 5].map((r) => lddw(r, FILL(r))),
  ];
  return { name: 'counting loop', program: pack(harnessProgram(body)), memory, maps };
}

// ---------------------------------------------------------------- fuzz

/**
 * A random program that is safe by construction: straight-line code plus forward jumps, every
 * register defined before use (r1-r5 are redefined right after each call), memory accesses at
 * in-bounds offsets from a base register that holds the context pointer, stack accesses within
 * the first 64 bytes (zeroed in the prologue), r10 never used as a value.
 */
function randomProgram(rand: () => number): Insn[] {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const int = (n: number) => Math.floor(rand() * n);
  const value = (): bigint => {
    switch (int(4)) {
      case 0: return pick(VALUES);
      case 1: return BigInt(int(64));
      case 2: return u64(BigInt(int(0x100000000)) << 32n | BigInt(int(0x100000000)));
      default: return u64(-BigInt(int(300)));
    }
  };
  const imm = (): number => (int(3) === 0 ? pick(IMMS) : int(2) ? int(70) - 35 : (int(0x100000000) | 0));
  const base = 6 + int(4); // r6..r9: the context pointer
  const regs = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].filter((r) => r !== base);
  const out: Insn[][] = []; // one entry per instruction so jump offsets count slots
  const emit = (...xs: Insn[]) => out.push(xs);
  emit(ins(0xbf, base, 1)); // base = ctx
  for (let o = -64; o < 0; o += 8) emit(ins(0x7a, 10, 0, o, 0));
  for (const r of regs) emit(lddw(r, value()));
  const length = 10 + int(50);
  const body: (() => Insn[])[] = [];
  const memOff = (size: number) => int(DUMP_AT - size + 1);
  const stackOff = (size: number) => -64 + int(64 - size + 1);
  const sizeBits = () => pick([[0x00, 4], [0x08, 2], [0x10, 1], [0x18, 8]] as const);
  for (let i = 0; i < length; i++) {
    const d = pick(regs);
    const s = pick([...regs, base]);
    const wide = rand() < 0.6;
    const cls = wide ? 0x07 : 0x04;
    switch (int(12)) {
      case 0: case 1: case 2: { // ALU
        const f = pick(aluForms().filter((x) => (x.code & 7) === cls));
        body.push(() => [ins(f.code, d, f.x ? s : 0, f.off, f.x || f.name.endsWith('neg') ? 0 : imm())]);
        break;
      }
      case 3: body.push(() => [ins(pick([0xd4, 0xdc, 0xd7]), d, 0, 0, pick([16, 32, 64]))]); break;
      case 4: { // load
        const [bits, bytes] = sizeBits();
        const sx = bytes < 8 && rand() < 0.4 ? 0x20 : 0; // MEMSX = 0x80 vs MEM = 0x60
        if (rand() < 0.7) body.push(() => [ins(0x61 | bits | sx, d, base, memOff(bytes))]);
        else body.push(() => [ins(0x61 | bits | sx, d, 10, stackOff(bytes))]);
        break;
      }
      case 5: { // store
        const [bits, bytes] = sizeBits();
        const to = rand() < 0.7 ? base : 10;
        const off = to === 10 ? stackOff(bytes) : memOff(bytes);
        body.push(() => [rand() < 0.5 ? ins(0x62 | bits, to, 0, off, imm()) : ins(0x63 | bits, to, s === base ? d : s, off)]);
        break;
      }
      case 6: { // atomic
        const w64 = rand() < 0.5;
        const bytes = w64 ? 8 : 4;
        const op = pick([0x00, 0x40, 0x50, 0xa0, 0x01, 0x41, 0x51, 0xa1, 0xe1, 0xf1]);
        const to = rand() < 0.7 ? base : 10;
        const off = to === 10 ? -64 + bytes * int(64 / bytes) : bytes * int(DUMP_AT / bytes);
        body.push(() => [ins(w64 ? 0xdb : 0xc3, to, d, off, op)]);
        break;
      }
      case 7: case 8: { // conditional forward jump
        const [, op] = pick(CONDS);
        const x = rand() < 0.5;
        const code = op | (rand() < 0.5 ? 0x05 : 0x06) | (x ? 0x08 : 0);
        body.push(() => [ins(code, d, x ? s : 0, 0x7fff, x ? 0 : imm())]); // offset fixed up below
        break;
      }
      case 9: body.push(() => [rand() < 0.5 ? ins(0x05, 0, 0, 0x7fff) : ins(0x06, 0, 0, 0, 0x7fffffff)]); break;
      case 10: // call, then redefine r1-r5
        body.push(() => [ins(0x85, 0, 0, 0, pick([1, 2]))]);
        for (let r = 1; r <= 5; r++) if (r !== base) body.push(() => [lddw(r, value())]);
        break;
      default: body.push(() => [lddw(d, value())]); break;
    }
  }
  const start = out.length;
  for (const b of body) out.push(b());
  // Resolve the placeholder jumps to a random later instruction (or the epilogue).
  const slotOf: number[] = [];
  let slot = 0;
  for (const xs of out) {
    slotOf.push(slot);
    slot += slots(xs);
  }
  const endSlot = slot;
  for (let i = start; i < out.length; i++) {
    const insn = out[i]![0]!;
    const dv = new DataView(Uint8Array.from(insn).buffer);
    const isJa32 = insn[0] === 0x06 && dv.getInt32(4, true) === 0x7fffffff;
    if (dv.getInt16(2, true) !== 0x7fff && !isJa32) continue;
    const j = i + 1 + int(out.length - i);
    const rel = (j < out.length ? slotOf[j]! : endSlot) - (slotOf[i]! + 1);
    out[i] = [isJa32 ? ins(0x06, 0, 0, 0, rel) : ins(insn[0]!, insn[1]! & 0xf, insn[1]! >> 4, rel, dv.getInt32(4, true))];
  }
  // Epilogue: dump every register except r10.
  const tail: Insn[] = [];
  for (let r = 0; r <= 9; r++) if (r !== base) tail.push(ins(0x7b, base, r, DUMP_AT + 8 * r));
  return [...out.map((xs) => xs.flat()), ...tail, exit()];
}

// ---------------------------------------------------------------- tests

describe('eBPF JIT (native) against the TS interpreter', () => {
  test('ALU and ALU64: every op, both sources, edge values, register pairs', () => { compare(aluCases()); });
  test('byte swaps: le, be, bswap at 16/32/64', () => { compare(endCases()); });
  test('loads, sign-extending loads, stores (imm and reg), stack', () => { compare(memCases()); });
  test('atomics: add/or/and/xor with and without fetch, xchg, cmpxchg, 32 and 64 bit', () => { compare(atomicCases()); });
  test('every JMP and JMP32 condition, register and immediate, forward and backward', () => { compare(jumpCases()); });
  test('control flow, helpers and lddw', () => { compare(textCases()); });
  test('jumps long enough to need rel32', () => { compare(longJumpCases()); });

  test('differential fuzz: random programs', () => {
    const seed = Number(process.env.KVMTALK_FUZZ_SEED ?? 0x6a17);
    const rand = rng(seed);
    const cases: Case[] = [];
    for (let i = 0; i < 4000; i++) {
      const mem = new Uint8Array(MEM_BYTES);
      for (let b = 0; b < DUMP_AT; b++) mem[b] = Math.floor(rand() * 256);
      cases.push(mkCase(`fuzz seed ${seed} #${i}`, randomProgram(rand), mem));
    }
    compare(cases);
  });

  test('array-map lookups inlined: NULL out of range, index max_entries - 1 and max_entries, strides of non-multiples of 8', () => {
    const cases = arrayCases();
    const jit = compare(cases);
    cases.forEach((c, i) => {
      const got = jit[i]!;
      assert.ok(!('err' in got), c.name);
      assert.equal(got.lookupCalls, c.name.endsWith('(inlined)') ? 0 : 1, `${c.name}: helper 1 calls`);
    });
  });

  test('array-map lookups inlined in a counting loop, next to a lookup that keeps the helper', () => {
    const c = countingCase();
    const [inlined, helper] = bothWays(c);
    const [a, b] = compare([inlined!, helper!]);
    assert.ok(a && b && !('err' in a) && !('err' in b));
    assert.equal(a.lookupCalls, 0);
    assert.equal(b.lookupCalls, 16);
    // two maps, the second one's lookup not inlined: 1 helper call per run
    const { maps, memory } = arrayMemory([[8, 4], [12, 3]]);
    const two = pack(harnessProgram([...lookup(0, 3), ins(0xbf, 6, 0), ...lookup(1, 2), ins(0x0f, 0, 6)]));
    const [mixed] = compare([{ name: 'two maps, one inlined', program: two, memory, maps, sites: lookupSites(two, (k) => (k === 0 ? 0 : -1)) }]);
    assert.ok(mixed && !('err' in mixed) && mixed.lookupCalls === 1);
    assert.equal(mixed.r0, maps[0]!.data + 24n + maps[1]!.data + 32n, 'r0 = &values[3] + &values[2]');
  });

  test('what it does not compile, and a buffer that is too small', () => {
    const memory = new Uint8Array(8);
    const EOPNOTSUPP = -95;
    const EINVAL = -22;
    const E2BIG = -7;
    const refused: [string, Insn[], number][] = [
      ['bpf-to-bpf call', [ins(0x85, 0, 1, 0, 1), exit(), ins(0xb7, 0, 0, 0, 1), exit()], EOPNOTSUPP],
      ['kfunc', [ins(0x85, 0, 2, 0, 1), exit()], EOPNOTSUPP],
      ['unknown helper', [ins(0x85, 0, 0, 0, 99), exit()], EOPNOTSUPP],
      ['legacy ld abs', [ins(0x20, 0, 0, 0, 0), exit()], EOPNOTSUPP],
      ['write to r10', [ins(0xb7, 10, 0, 0, 0), exit()], EINVAL],
      ['fetch into r10', [ins(0xdb, 1, 10, 0, 0x01), exit()], EINVAL],
      ['register r11', [ins(0xbf, 0, 11), exit()], EINVAL],
      ['jump past the end', [ins(0x05, 0, 0, 5), exit()], EINVAL],
      ['jump into an lddw', [ins(0x05, 0, 0, 1), lddw(0, 1n), exit()], EINVAL],
      ['truncated lddw', [ins(0x18, 0, 0, 0, 1)], EINVAL],
      ['unresolved map reference', [ins(0x18, 1, 1, 0, 0), ins(0, 0, 0, 0, 0), exit()], EINVAL],
      ['reserved opcode', [ins(0xe7, 0, 0, 0, 0), exit()], EINVAL],
      ['sdiv with offset 2', [ins(0x37, 0, 0, 2, 3), exit()], EINVAL],
    ];
    const got = jitAll(refused.map(([name, code]) => ({ name, program: pack(code), memory })));
    assert.deepEqual(got.map((g, i) => [refused[i]![0], 'err' in g ? g.err : 'compiled']), refused.map(([name, , err]) => [name, err]));

    // an array whose stride does not fit imul's signed imm32 (2^31 here) is refused, not miscompiled
    const huge = pack(lookup(0, 0).concat([exit()]));
    const wide: ArrayMap[] = [{ handle: HANDLE, data: 0x1000n, valueSize: 0x7ffffff9, maxEntries: 2 }];
    assert.deepEqual(jitAll([{ name: 'stride 2^31', program: huge, memory, maps: wide, sites: lookupSites(huge, () => 0) }]), [{ err: EINVAL }]);

    const program: Case = { name: 'small', program: pack([lddw(0, 0x1234567890n), ins(0x07, 0, 0, 0, 1), exit()]), memory };
    const [full] = jitAll([program]);
    assert.ok(full && 'codeBytes' in full && full.r0 === 0x1234567891n);
    const [exact] = jitAll([program], full.codeBytes);
    assert.ok(exact && 'r0' in exact && exact.r0 === 0x1234567891n, 'fits a buffer of exactly its size');
    assert.deepEqual(jitAll([program], full.codeBytes - 1), [{ err: E2BIG }]);
    assert.deepEqual(jitAll([program], 0), [{ err: E2BIG }]);
  });
});

// ---------------------------------------------------------------- timing (printed, not asserted)

const BENCH: [name: string, src: string][] = [
  ['sum', `
    r0 = 0
    r2 = 0
  loop:
    r3 = r1
    r3 += r2
    r4 = *(u64 *)(r3 + 0)
    r0 += r4
    r2 += 8
    if r2 != 512 goto loop
    exit`],
  ['fnv', `
    w0 = -2128831035
    r2 = r1
    r3 = r1
    r3 += 256
  loop:
    r4 = *(u8 *)(r2 + 0)
    w0 ^= w4
    w0 *= 16777619
    r2 += 1
    if r2 != r3 goto loop
    exit`],
  ['affinity', `
    r2 = *(u32 *)(r1 + 8)
    r0 = *(u32 *)(r1 + 4)
    if r2 == 0 goto out
    if r0 < r2 goto out
    r0 = *(u32 *)(r1 + 0)
    w0 *= 7
    w0 += 3
    w0 %= w2
  out:
    exit`],
];

test('timing: compile a 4096-slot program; run small programs vs gcc -O2 C', () => {
  const MEM = 65536;
  const memory = new Uint8Array(MEM);
  const dv = new DataView(memory.buffer);
  for (let i = 0; i < 512; i++) memory[i] = (i * 131 + 7) & 0xff;
  dv.setUint32(0, 5, true);
  dv.setUint32(4, 9, true);
  dv.setUint32(8, 4, true);

  // A 4096-slot program: random fuzz bodies glued together until the limit.
  const rand = rng(4096);
  const big: Insn[] = [ins(0x7b, 10, 1, -72)]; // the pieces use r10 - 64 .. r10 - 1
  while (slots(big) < 4000) big.push(ins(0x79, 1, 10, -72), ...randomProgram(rand).slice(0, -1));
  while (slots(big) < 4095) big.push(ins(0x07, 0, 0, 0, 1));
  big.push(exit());
  const bigProgram = pack(big);
  assert.equal(bigProgram.length / 8, 4096);

  const programs: Case[] = [{ name: '4096 slots', program: bigProgram, memory },
    ...BENCH.map(([name, src]) => ({ name, program: encodeProgram(assemble(src)), memory }))];
  const iters = 200000;
  const lines = runHost(['bench', String(iters)], Buffer.concat(programs.map(record)));
  assert.equal(lines.length, programs.length);
  for (const [i, line] of lines.entries()) {
    const [kind, compileNs, runNs, r0] = line.split(' ');
    assert.equal(kind, 'bench', line);
    const c = programs[i]!;
    const interp = new BpfInterpreter(c.program);
    const want = interp.run({ memory: memory.slice(), helpers: HELPERS }).r0;
    assert.equal(BigInt(`0x${r0}`), want, `${c.name}: JIT and interpreter agree`);
    let note = '';
    if (i > 0) {
      const [nkind, nativeNs, nr0] = runHost(['native', c.name, String(iters)], Buffer.from(memory))[0]!.split(' ');
      assert.equal(nkind, 'native');
      assert.equal(BigInt(`0x${nr0}`), want, `${c.name}: the C version computes the same`);
      const t0 = process.hrtime.bigint();
      const n = 2000;
      for (let k = 0; k < n; k++) interp.run({ memory, helpers: HELPERS });
      const interpNs = Number(process.hrtime.bigint() - t0) / n;
      note = `; gcc -O2 C ${nativeNs} ns; TS interpreter ${(interpNs / 1000).toFixed(1)} µs`;
    }
    console.log(`JIT ${c.name}: compile ${(Number(compileNs) / 1000).toFixed(1)} µs, run ${runNs} ns/call${note}`);
  }
});

