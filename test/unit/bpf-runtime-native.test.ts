/**
 * The guest eBPF runtime's C core (guest/sdk/src/bpf-*.c), compiled for the host with
 * test/native/bpf-runtime-host.c and driven line by line:
 *
 * - interpreter: a generated corpus (every ALU op at both widths and sources over edge values,
 *   byte swaps, every jump condition, loads/stores incl. MEMSX, atomics, loops, helpers) gives the
 *   same r0 and context bytes as src/bpf/interpreter.ts;
 * - verifier: one rejection per class with its pc, and the same verdicts (and pcs) as
 *   src/bpf/verifier.ts on a corpus and on thousands of random programs;
 * - fuzz: random and mutated programs under ASan/UBSan; every accepted one runs without a fault;
 * - maps: array and hash semantics, reuse by name, and the bytes of the directory and storage
 *   against docs/bpf-runtime.md; the program pool and hooks;
 * - timing of 4096-instruction programs (printed).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { assemble } from '../../src/bpf/asm.js';
import { BpfInterpreter, type BpfHelper } from '../../src/bpf/interpreter.js';
import { GUEST_HELPERS } from '../../src/bpf/hooks.js';
import { encodeImage as encodeBpfImage, type ImageMap } from '../../src/bpf/image.js';
import { encodeProgram } from '../../src/bpf/isa.js';
import { verify, type MapSpec } from '../../src/bpf/verifier.js';
import { buildRuntimeHost, hex, parseVerdicts, runHost, type RuntimeHost } from '../helpers/bpf-runtime-host.js';
import { RANGE_ACCEPTED, RANGE_REJECTED, arithmeticProgram } from '../helpers/bpf-range-programs.js';
import { rng } from '../helpers/rng.js';
import { verifierStressPrograms } from '../helpers/bpf-stress.js';
import { fnv1a32 } from '../../src/bpf/guest-maps.js';

let host: RuntimeHost;
before(() => {
  host = buildRuntimeHost();
});
after(() => host.remove());

/** Runs commands through one harness process (the sanitized build unless told). */
const harness = (cmds: string[], bin = host.exe): string[] => runHost(bin, cmds);

// ---------------------------------------------------------------- images
/** An image around raw instruction bytes, which src/bpf/image.ts rightly refuses when malformed. */
function encodeImage(maps: ImageMap[], insns: Uint8Array): Uint8Array {
  const shell = encodeBpfImage({ maps, insns: assemble('r0 = 0\nexit') });
  const head = shell.length - 16;
  const out = new Uint8Array(head + insns.length);
  out.set(shell.subarray(0, head));
  new DataView(out.buffer).setUint32(8, insns.length / 8, true);
  out.set(insns, head);
  return out;
}
const unhex = (s: string): Uint8Array => (s === '-' ? new Uint8Array(0) : Uint8Array.from(Buffer.from(s, 'hex')));

/** The maps every corpus program may use: image index 0 is an array, 1 a hash (shapes as in verifier tests). */
const MAPS: ImageMap[] = [
  { name: 'arr', type: 2, keySize: 4, valueSize: 16, maxEntries: 4 },
  { name: 'hash', type: 1, keySize: 8, valueSize: 8, maxEntries: 16 },
];
const TS_MAPS: MapSpec[] = MAPS.map((m, index) => ({ index, keySize: m.keySize, valueSize: m.valueSize }));
const CTX = 16;

/** The image of assembly text (map references unchecked: the guest must refuse bad ones itself). */
const image = (src: string, maps = MAPS): Uint8Array => encodeImage(maps, encodeProgram(assemble(src)));

/** The TypeScript interpreter with the harness's stand-ins for helpers 5, 7 and 8. */
function tsRun(insns: Uint8Array, ctx: Uint8Array): { r0: bigint; ctx: Uint8Array } {
  let clock = 1000n;
  let x = 2463534242;
  const helpers = new Map<number, BpfHelper>([
    [5, () => clock++],
    [7, () => {
      x = (x ^ (x << 13)) >>> 0;
      x = (x ^ (x >>> 17)) >>> 0;
      x = (x ^ (x << 5)) >>> 0;
      return BigInt(x);
    }],
    [8, () => 0n],
  ]);
  const memory = ctx.slice();
  const r = new BpfInterpreter(insns).run({ memory, helpers });
  return { r0: r.r0, ctx: memory };
}

// ---------------------------------------------------------------- (a) interpreter corpus
const M64 = (1n << 64n) - 1n;
const u = (v: bigint) => BigInt.asUintN(64, v);
const VALS = [0n, 1n, 3n, 0x7fffffffn, 0x80000000n, 0xffffffffn, 1n << 63n, M64, u(-10n), 0xdeadbeefcafef00dn, 124n];
const IMMS = [0, 1, -1, 3, -3, 31, 63, 65, 0x7fffffff, -0x80000000];
const ALU = ['+=', '-=', '*=', '/=', 's/=', '|=', '&=', '<<=', '>>=', '%=', 's%=', '^=', '=', 's>>='];
const JMP = ['==', '!=', '>', '>=', '<', '<=', 's>', 's>=', 's<', 's<=', '&'];
const lit = (v: bigint) => `0x${v.toString(16)} ll`;

function corpus(): string[] {
  const out: string[] = [];
  const wrap = (body: string) => `r6 = r1\n${body}\n*(u64 *)(r6 + 0) = r0\nexit`;
  for (const p of ['r', 'w']) {
    for (const op of ALU) {
      for (const a of VALS) for (const b of VALS) out.push(wrap(`r0 = ${lit(a)}\nr2 = ${lit(b)}\n${p}0 ${op} ${p}2`));
      for (const a of VALS) for (const k of IMMS) out.push(wrap(`r0 = ${lit(a)}\n${p}0 ${op} ${k}`));
    }
    for (const a of VALS) {
      out.push(wrap(`r0 = ${lit(a)}\n${p}0 = -${p}0`));
      for (const s of p === 'r' ? [8, 16, 32] : [8, 16]) out.push(wrap(`r2 = ${lit(a)}\nr0 = 5\n${p}0 = (s${s})${p}2`));
      for (const b of VALS) {
        for (const c of JMP) out.push(`r0 = ${lit(a)}\nr2 = ${lit(b)}\nr3 = 0\nif ${p}0 ${c} ${p}2 goto +1\nr3 = 1\nr0 = r3\nexit`);
      }
      for (const k of IMMS) for (const c of JMP) out.push(`r0 = ${lit(a)}\nr3 = 0\nif ${p}0 ${c} ${k} goto +1\nr3 = 1\nr0 = r3\nexit`);
    }
  }
  for (const a of VALS) {
    for (const e of ['be16', 'be32', 'be64', 'le16', 'le32', 'le64', 'bswap16', 'bswap32', 'bswap64']) out.push(wrap(`r0 = ${lit(a)}\nr0 = ${e} r0`));
    // atomics on the stack and on the context
    for (const [w, p] of [[64, 'r'], [32, 'w']] as const) {
      for (const base of ['r10 - 8', 'r6 + 8']) {
        const init = `r0 = ${lit(a)}\n*(u64 *)(${base}) = r0\nr1 = 0x5a5a5a5a0f0f0f0f ll\n`;
        const fin = `\nr0 = *(u64 *)(${base})\n*(u64 *)(r6 + 0) = r1\nexit`;
        for (const op of ['+=', '|=', '&=', '^=']) out.push(`r6 = r1\n${init}lock *(u${w} *)(${base}) ${op} r1${fin}`);
        for (const op of ['add', 'or', 'and', 'xor']) out.push(`r6 = r1\n${init}${p}1 = atomic_fetch_${op}((u${w} *)(${base}), ${p}1)${fin}`);
        out.push(`r6 = r1\n${init}${p}1 = xchg${w === 64 ? '_64' : '32_32'}(${base}, ${p}1)${fin}`);
        for (const cmp of [a, a ^ 1n]) {
          out.push(`r6 = r1\n${init}r0 = ${lit(cmp)}\n${p}0 = cmpxchg${w === 64 ? '_64' : '32_32'}(${base}, ${p}0, ${p}1)\n*(u64 *)(r6 + 0) = r0\nr0 = *(u64 *)(${base})\nexit`);
        }
      }
    }
  }
  // loads and stores of every size, plain and sign-extending, stack and context
  for (const s of [8, 16, 32, 64]) {
    for (const off of [0, 1, 3, 8]) {
      if (off + s / 8 > CTX) continue;
      out.push(`r0 = *(u${s} *)(r1 + ${off})\nexit`);
      if (s < 64) out.push(`r0 = *(s${s} *)(r1 + ${off})\nexit`);
      out.push(`r2 = -2\n*(u${s} *)(r1 + ${off}) = r2\nr0 = *(u64 *)(r1 + 8)\nexit`);
      out.push(`*(u${s} *)(r1 + ${off}) = -7\nr0 = *(u64 *)(r1 + 0)\nexit`);
      out.push(`r2 = *(u64 *)(r1 + 0)\n*(u64 *)(r10 - 16) = r2\n*(u64 *)(r10 - 8) = r2\nr0 = *(${s < 64 ? 's' : 'u'}${s} *)(r10 - ${16 - off})\nexit`);
    }
  }
  out.push('r1 = 0\nr0 = 0\nloop:\nr0 += r1\nr1 += 1\nif r1 < 10 goto loop\nexit');
  out.push('r0 = 1\ngotol +1\nr0 = 2\nexit');
  out.push('r0 = 0\nr6 = 0\nl:\nr6 += 1\ncall 7\nif r6 < 5 goto l\nr7 = r0\ncall 5\nr0 += r7\nexit');
  out.push('call 8\nr6 = r0\ncall 5\ncall 5\nr0 += r6\nexit');
  out.push('r0 = *(u32 *)(r1 + 0)\nr0 &= 31\nr2 = 0\nl: r2 += 3\nif r0 == 0 goto +2\nr0 -= 1\ngoto l\nr0 = r2\nexit');
  return out;
}

describe('eBPF runtime in C: interpreter against src/bpf/interpreter.ts', () => {
  test('a generated corpus gives the same r0 and context bytes', () => {
    const progs = corpus();
    const next = rng(7);
    const ctxs = progs.map(() => Uint8Array.from({ length: CTX }, () => Math.floor(next() * 256)));
    const insns = progs.map((p) => encodeProgram(assemble(p)));
    const answers = harness(insns.map((b, i) => `run ${CTX} ${hex(encodeImage([], b))} ${hex(ctxs[i]!)}`));
    answers.forEach((line, i) => {
      const [status, r0, ctx] = line.split(' ');
      assert.equal(status, 'ok', `program ${i} refused: ${line}\n${progs[i]}`);
      const want = tsRun(insns[i]!, ctxs[i]!);
      assert.equal(BigInt(r0!), want.r0, `r0 of program ${i}:\n${progs[i]}`);
      assert.equal(ctx, hex(want.ctx), `context after program ${i}:\n${progs[i]}`);
    });
    console.log(`# ${progs.length} programs agree`);
    assert.ok(progs.length > 4000);
  });

  test('map helpers: a counter in an array map survives across runs; hash insert, lookup, delete', () => {
    const counter = image(`
      *(u32 *)(r10 - 4) = 1
      r2 = r10
      r2 += -4
      r1 = map_by_fd(0) ll
      call 1
      if r0 == 0 goto none
      r1 = 1
      lock *(u64 *)(r0 + 8) += r1
      r0 = *(u64 *)(r0 + 8)
      exit
    none:
      r0 = 99
      exit`);
    const hash = image(`
      r6 = r1
      r1 = *(u64 *)(r6 + 0)
      *(u64 *)(r10 - 8) = r1
      r1 = *(u64 *)(r6 + 8)
      *(u64 *)(r10 - 16) = r1
      r1 = map_by_fd(1) ll
      r2 = r10
      r2 += -8
      r3 = r10
      r3 += -16
      r4 = 1
      call 2
      r7 = r0
      r1 = map_by_fd(1) ll
      r2 = r10
      r2 += -8
      call 1
      if r0 == 0 goto out
      r0 = *(u64 *)(r0 + 0)
      *(u64 *)(r6 + 8) = r0
      r1 = map_by_fd(1) ll
      r2 = r10
      r2 += -8
      call 3
      r0 <<= 8
      r0 |= r7
      r0 &= 0xffff
      exit
    out:
      r0 = 77
      exit`);
    const ctx = (k: bigint, v: bigint) => {
      const b = new Uint8Array(16);
      const dv = new DataView(b.buffer);
      dv.setBigUint64(0, k, true);
      dv.setBigUint64(8, v, true);
      return hex(b);
    };
    const a = harness([
      `run ${CTX} ${hex(counter)} -`, `run ${CTX} ${hex(counter)} -`, `run ${CTX} ${hex(counter)} -`,
      `run ${CTX} ${hex(hash)} ${ctx(5n, 0x1234n)}`, `lookup hash ${hex(new Uint8Array(8).fill(0).map((_, i) => (i === 0 ? 5 : 0)))}`,
    ]);
    assert.deepEqual(a.slice(0, 3).map((l) => l.split(' ')[1]), ['1', '2', '3']);
    // update 0, then delete 0: r0 = 0; ctx[8] now holds the looked-up value
    assert.equal(a[3], `ok 0 ${ctx(5n, 0x1234n)}`);
    assert.equal(a[4], 'null');
  });
});

// ---------------------------------------------------------------- (b) verifier
const LOOKUP = `
  r6 = r1
  *(u32 *)(r10 - 4) = 0
  r2 = r10
  r2 += -4
  r1 = map_by_fd(0) ll
  call 1
`;
const ACCEPTED = [
  '*(u64 *)(r10 - 8) = 42\nr1 = *(u64 *)(r10 - 8)\n*(u32 *)(r10 - 512) = r1\nr0 = *(u32 *)(r10 - 512)\nexit',
  'r0 = *(u32 *)(r1 + 12)\nr2 = *(u8 *)(r1 + 15)\nr0 += r2\nexit',
  `${LOOKUP}\nif r0 == 0 goto out\nr1 = *(u8 *)(r6 + 0)\nif r1 > 8 goto out\nr0 += r1\nr0 = *(u64 *)(r0 + 0)\nexit\nout:\nr0 = 0\nexit`,
  `${LOOKUP}\nr7 = r0\nif r0 != 0 goto have\nr0 = 0\nexit\nhave:\nr0 = *(u64 *)(r7 + 8)\nexit`,
  'r2 = *(u32 *)(r1 + 0)\nif r2 > 10 goto +2\nr0 = 1\nexit\nr0 = 2\nexit',
  'r1 = 0\nr0 = 0\nloop:\nr0 += r1\nr1 += 1\nif r1 < 10 goto loop\nexit',
  'r1 = 0\nr0 = 5\nr0 /= r1\nexit',
  `*(u32 *)(r10 - 4) = 1\n*(u64 *)(r10 - 24) = 7\n*(u64 *)(r10 - 16) = 8\nr1 = map_by_fd(0) ll\nr2 = r10\nr2 += -4\nr3 = r10\nr3 += -24\nr4 = 0\ncall 2\nexit`,
  'call 5\nr6 = r0\ncall 7\nr0 += r6\ncall 8\nexit',
  `*(u64 *)(r10 - 8) = 3\nr1 = map_by_fd(1) ll\nr2 = r10\nr2 += -8\ncall 3\nexit`,
  'r2 = 1\nlock *(u32 *)(r1 + 4) += r2\nlock *(u64 *)(r1 + 8) += r2\n*(u64 *)(r10 - 16) = 0\nlock *(u64 *)(r10 - 16) += r2\nr0 = 0\nexit',
  `${LOOKUP}\nif r0 == 0 goto out\nr1 = 1\nlock *(u64 *)(r0 + 8) += r1\nout:\nr0 = 0\nexit`,
];
/** [program, pc, reason fragment]: one per class of unsafe program. */
const REJECTED: [string, number, string][] = [
  ['*(u64 *)(r10 + 0) = 1\nr0 = 0\nexit', 0, 'outside [-512, 0)'],
  ['r0 = 0\nr0 = *(u64 *)(r10 - 520)\nexit', 1, 'stack access out of bounds'],
  ['*(u32 *)(r10 - 8) = 1\nr0 = *(u64 *)(r10 - 8)\nexit', 1, 'uninitialized stack'],
  ['r0 = *(u64 *)(r1 + 12)\nexit', 0, 'context access out of bounds'],
  ['r0 = *(u8 *)(r1 - 1)\nexit', 0, 'context access out of bounds'],
  [`${LOOKUP}\nif r0 == 0 goto +1\nr0 = *(u64 *)(r0 + 9)\nr0 = 0\nexit`, 8, 'value access out of bounds'],
  [`${LOOKUP}\nif r0 == 0 goto +4\nr1 = *(u8 *)(r6 + 0)\nr0 += r1\nr0 = *(u8 *)(r0 + 0)\nexit\nr0 = 0\nexit`, 10, 'offset 0..255'],
  [`${LOOKUP}\nr0 = *(u64 *)(r0 + 0)\nexit`, 7, 'null check'],
  [`${LOOKUP}\nr0 += 8\nexit`, 7, 'null'],
  ['r0 = r3\nexit', 0, 'r3 is read before it is initialized'],
  ['call 7\nr0 = r1\nexit', 1, 'clobbered by calls'],
  ['r1 = 1\nexit', 1, 'r0 is read before it is initialized'],
  ['r0 = 0\nloop:\ngoto loop', 1, 'unbounded loop'],
  ['r1 = *(u32 *)(r1 + 0)\nr0 = 0\nloop:\nr1 -= 1\nif r1 != 0 goto loop\nexit', 3, 'unbounded loop'],
  ['r1 = 0\nr0 = 0\nloop:\nr1 += 1\nif r1 < 1000000 goto loop\nexit', 3, 'loop not provably bounded'],
  ['call 99\nexit', 0, 'unknown helper 99'],
  ['call 4\nexit', 0, 'unknown helper 4'],
  ['r1 = 0\nr2 = r10\ncall 1\nexit', 2, 'arg1 (r1): expected map pointer'],
  ['r1 = map_by_fd(0) ll\nr2 = r10\nr2 += -4\ncall 1\nexit', 4, 'uninitialized stack'],
  ['r1 = map_by_fd(0) ll\nr2 = 4\ncall 1\nexit', 3, 'arg2 (r2): expected stack pointer to the key'],
  ['*(u64 *)(r10 - 8) = 0\nr1 = map_by_fd(0) ll\nr2 = r10\nr2 += -8\nr3 = r10\nr3 += -8\nr4 = 0\ncall 2\nexit', 8, 'map-value'],
  ['*(u64 *)(r10 - 8) = 0\nr1 = map_by_fd(1) ll\nr2 = r10\nr2 += -8\nr3 = r10\nr3 += -8\ncall 2\nexit', 7, 'arg4 (r4)'],
  ['r1 = map_by_fd(5) ll\nr0 = 0\nexit', 0, 'unknown map 5'],
  // loading resolves every map reference, reachable or not (this one crashed the loader)
  ['r0 = 0\nexit\nr1 = map_by_fd(2147483647) ll\nexit', 2, 'unknown map 2147483647'],
  ['r1 = 0\n*(u64 *)(r10 - 16) = r1\n*(u64 *)(r10 - 8) = r1\nr2 = 1\nlock *(u64 *)(r10 - 12) += r2\nr0 = 0\nexit', 4, 'misaligned atomic access: offset -12'],
  ['r2 = 1\nw2 = atomic_fetch_add((u32 *)(r1 + 2), w2)\nr0 = 0\nexit', 1, 'not 4-byte aligned'],
  [`${LOOKUP}\nif r0 == 0 goto out\nr1 = *(u8 *)(r6 + 0)\nr1 &= 8\nr0 += r1\nr1 = 1\nlock *(u64 *)(r0 + 0) += r1\nout:\nr0 = 0\nexit`, 12, 'offset 0..8 is not 8-byte aligned'],
  ['r0 = 0\ngoto +5\nexit', 1, 'jump out of range'],
  ['goto +1\nr1 = 0x123456789 ll\nr0 = 0\nexit', 0, 'middle of lddw'],
  ['r0 = 0', 0, 'falls off the end'],
  ['r0 = *(u32 *)(r1 + 0)\nif r0 > 1 goto +1\nexit\nr0 = 1', 3, 'falls off the end'],
  ['r10 = 0\nr0 = 0\nexit', 0, 'read-only'],
  ['r10 += 8\nr0 = 0\nexit', 0, 'read-only'],
  ['r0 = 0\ncall pc+1\nexit\nr0 = 1\nexit', 1, 'BPF-to-BPF calls'],
  ['r1 = map_by_fd(0) ll\nr0 = *(u64 *)(r1 + 0)\nexit', 2, 'cannot dereference a map pointer'],
  ['r1 = r10\nr1 += r1\nr0 = *(u8 *)(r1 + 0)\nexit', 2, 'scalar, not a pointer'],
];

const cVerify = (images: Uint8Array[]) => parseVerdicts(harness(images.map((b) => `verify ${CTX} ${hex(b)}`)));

describe('eBPF runtime in C: verifier', () => {
  test('accepts the safe programs', () => {
    cVerify(ACCEPTED.map((s) => image(s))).forEach((v, i) => assert.ok(v.ok, `program ${i} refused: ${v.reason}\n${ACCEPTED[i]}`));
  });

  test('rejects each class of unsafe program at the right instruction', () => {
    const got = cVerify(REJECTED.map(([s]) => image(s)));
    got.forEach((v, i) => {
      const [src, pc, reason] = REJECTED[i]!;
      assert.ok(!v.ok, `accepted:\n${src}`);
      assert.equal(v.pc, pc, `pc for ${JSON.stringify(src)}: ${v.reason}`);
      assert.ok(v.reason.includes(reason), `reason ${JSON.stringify(v.reason)} lacks ${JSON.stringify(reason)}`);
      assert.equal(v.ret, v.reason.includes('too complex') ? -7 : -22);
    });
  });

  test('scalar ranges: accepts the range corpus, rejects its unsafe programs at the right instruction', () => {
    cVerify(RANGE_ACCEPTED.map(([, s]) => image(s))).forEach((v, i) => assert.ok(v.ok, `${RANGE_ACCEPTED[i]![0]} refused: ${v.pc} ${v.reason}`));
    cVerify(RANGE_REJECTED.map(([, s]) => image(s))).forEach((v, i) => {
      const [what, , pc, reason] = RANGE_REJECTED[i]!;
      assert.ok(!v.ok, `accepted: ${what}`);
      assert.equal(v.pc, pc, `pc for ${what}: ${v.reason}`);
      assert.ok(v.reason.includes(reason), `reason ${JSON.stringify(v.reason)} lacks ${JSON.stringify(reason)}`);
    });
  });

  test('verdicts and error pcs agree with src/bpf/verifier.ts', () => {
    // (the million-iteration loop is left out: the TypeScript verifier takes seconds on it)
    const progs = [
      ...ACCEPTED, ...REJECTED.filter(([, , r]) => !r.includes('bounded')).map(([s]) => s),
      ...RANGE_ACCEPTED.map(([, s]) => s), ...RANGE_REJECTED.map(([, s]) => s),
    ];
    const got = cVerify(progs.map((s) => image(s)));
    progs.forEach((s, i) => {
      const ts = verify(assemble(s), { contextSize: CTX, helpers: [...GUEST_HELPERS], maps: TS_MAPS });
      assert.equal(got[i]!.ok, ts.ok, `verdicts differ on\n${s}\nC: ${got[i]!.reason}\nTS: ${JSON.stringify(!ts.ok && ts.errors[0])}`);
      if (!ts.ok) assert.equal(got[i]!.pc, ts.errors[0]!.pc, `pcs differ on\n${s}`);
    });
  });

  test('bad images are refused with a reason', () => {
    const good = image('r0 = 0\nexit', [MAPS[0]!]);
    const patch = (off: number, v: number, width = 4) => {
      const b = good.slice();
      const dv = new DataView(b.buffer);
      if (width === 4) dv.setUint32(off, v, true);
      else if (width === 2) dv.setUint16(off, v, true);
      else b[off] = v;
      return b;
    };
    // the map definition starts at 16: name, then type, key_size, value_size, max_entries
    const cases: [Uint8Array, number, RegExp][] = [
      [good.subarray(0, 10), -22, /too short/],
      [patch(0, 0x12345678), -22, /magic/],
      [patch(4, 2, 2), -22, /version/],
      [patch(6, 1, 2), -22, /flags/],
      [patch(8, 0), -22, /empty/],
      [patch(8, 4097), -7, /too long/],
      [patch(12, 17), -22, /too many maps/],
      [good.subarray(0, good.length - 1), -22, /bytes/],
      [patch(18, 0x2d, 1), -22, /name/],
      [patch(31, 0x41, 1), -22, /name/],
      [patch(16 + 20, 8), -22, /key_size/],
      [patch(16 + 24, 1025), -22, /value_size/],
      [patch(16 + 28, 0), -22, /max_entries/],
      [patch(16 + 16, 3), -22, /type/],
    ];
    cVerify(cases.map(([b]) => b)).forEach((v, i) => {
      assert.equal(v.ret, cases[i]![1], v.reason);
      assert.match(v.reason, cases[i]![2]);
      assert.equal(v.pc, -1);
    });
  });
});

// ---------------------------------------------------------------- (c) fuzz
function generator(seed: number): () => string[] {
  const next = rng(seed);
  const rnd = (n: number) => Math.floor(next() * n);
  const pick = <T>(a: readonly T[]): T => a[rnd(a.length)]!;
  const reg = () => `r${rnd(10)}`;
  const base = () => pick(['r10', 'r10', 'r6', 'r0', 'r7', reg()]);
  const size = () => pick([8, 16, 32, 64]);
  const off = () => pick([-8, -16, -4, -512, -520, 0, 4, 8, 12, 15, 16, -1]);
  return () => {
    const out = ['r6 = r1', 'r0 = 0', 'r2 = 0', 'r3 = 1', 'r4 = 2', 'r5 = 3', 'r7 = 4', 'r8 = 5', 'r9 = 6'];
    if (rnd(2)) out.push('*(u64 *)(r10 - 8) = 0');
    const len = 3 + rnd(20);
    for (let i = 0; i < len; i++) {
      switch (rnd(13)) {
        case 0: out.push(`${reg()} = ${rnd(40) - 8}`); break;
        case 1: out.push(`${reg()} ${pick(['+=', '-=', '*=', '/=', '%=', '&=', '|=', '^=', '<<=', '>>=', 's>>='])} ${rnd(2) ? reg() : rnd(20) - 4}`); break;
        case 2: out.push(`w${rnd(10)} ${pick(['=', '+=', '&=', '-='])} ${rnd(2) ? `w${rnd(10)}` : rnd(20)}`); break;
        case 3: out.push(`${reg()} = *(u${size()} *)(${base()} ${pick(['+', '-'])} ${Math.abs(off())})`); break;
        case 4: out.push(`*(u${size()} *)(${base()} ${pick(['+', '-'])} ${Math.abs(off())}) = ${rnd(2) ? reg() : rnd(100)}`); break;
        case 5: out.push(`if ${reg()} ${pick(['==', '!=', '>', '<', '>=', '<=', 's>', 's<'])} ${rnd(2) ? reg() : rnd(12)} goto ${rnd(5) ? '+' : '-'}${rnd(4)}`); break;
        case 6: out.push('*(u32 *)(r10 - 4) = 0', 'r2 = r10', 'r2 += -4', `r1 = map_by_fd(${rnd(3) ? 0 : 1}) ll`, 'call 1', ...(rnd(4) ? [`if r0 ${pick(['==', '!='])} 0 goto +${1 + rnd(2)}`] : []), 'r7 = r0'); break;
        case 7: out.push('*(u64 *)(r10 - 16) = 9', '*(u64 *)(r10 - 32) = 1', 'r1 = map_by_fd(1) ll', 'r2 = r10', 'r2 += -16', 'r3 = r10', 'r3 += -32', `r4 = ${rnd(3)}`, `call ${pick([2, 3])}`); break;
        case 8: out.push(`call ${pick([5, 7, 8])}`); break;
        case 9: out.push(`${reg()} += ${base()}`); break;
        case 10: out.push('r1 = 0', `l${i}: r1 += 1`, `if r1 < ${rnd(30)} goto l${i}`); break;
        case 11: out.push(`lock *(u${pick([32, 64])} *)(${base()} - ${pick([8, 16])}) += ${reg()}`); break;
        default: out.push(`r0 = ${reg()}`);
      }
    }
    if (rnd(8)) out.push('r0 = 0', 'exit');
    return out;
  };
}

describe('eBPF runtime in C: what the JIT is told to inline', () => {
  /** Slots of the `call 1` instructions of src, in order. */
  const lookupSlots = (src: string): number[] => {
    const b = encodeProgram(assemble(src));
    const out: number[] = [];
    for (let k = 0; k < b.length / 8; k++) if (b[8 * k] === 0x85 && new DataView(b.buffer, b.byteOffset).getInt32(8 * k + 4, true) === 1) out.push(k);
    return out;
  };

  test('lookups the verifier pins to one array map, and no others: hash maps, mixed call sites and updates keep the call', () => {
    const maps: ImageMap[] = [
      { name: 'jit_a', type: 2, keySize: 4, valueSize: 12, maxEntries: 5 },
      { name: 'jit_b', type: 2, keySize: 4, valueSize: 8, maxEntries: 3 },
      { name: 'jit_h', type: 1, keySize: 4, valueSize: 8, maxEntries: 4 },
    ];
    const src = `
      r6 = r1
      r7 = *(u32 *)(r6 + 0)
      *(u32 *)(r10 - 4) = 1
      r2 = r10
      r2 += -4
      r1 = map_by_fd(0) ll
      call 1
      r2 = r10
      r2 += -4
      r1 = map_by_fd(2) ll
      call 1
      r1 = map_by_fd(1) ll
      if r7 == 0 goto same
      r1 = map_by_fd(1) ll
    same:
      r2 = r10
      r2 += -4
      call 1
      r1 = map_by_fd(0) ll
      if r7 == 0 goto mixed
      r1 = map_by_fd(1) ll
    mixed:
      r2 = r10
      r2 += -4
      call 1
      r1 = map_by_fd(1) ll
      *(u64 *)(r10 - 16) = r1
      r2 = r10
      r2 += -4
      r1 = *(u64 *)(r10 - 16)
      call 1
      r1 = map_by_fd(0) ll
      r2 = r10
      r2 += -4
      *(u64 *)(r10 - 32) = 0
      *(u64 *)(r10 - 24) = 0
      r3 = r10
      r3 += -32
      r4 = 0
      call 2
      r0 = 0
      exit`;
    const [a, h, same, mixed, spilled] = lookupSlots(src);
    const lines = harness([`run ${CTX} ${hex(image(src, maps))} ${'00'.repeat(CTX)}`, 'sites']);
    assert.match(lines[0]!, /^ok 0 /, 'the program loads and runs (interpreted here)');
    assert.equal(lines[1], `sites ${a}=jit_a:12:5 ${same}=jit_b:8:3 ${spilled}=jit_b:8:3`,
      `inlined: the array lookups at ${a}, ${same} and ${spilled}; not the hash at ${h} nor the mixed site ${mixed}`);
    const none = harness([`run ${CTX} ${hex(image('r0 = 0\nexit', []))} ${'00'.repeat(CTX)}`, 'sites']);
    assert.deepEqual(none, [`ok 0 ${'00'.repeat(CTX)}`, 'sites -']);
  });
});

describe('eBPF runtime in C: fuzz', () => {
  test('random and mutated programs: no crash, accepted ones run cleanly, verdicts match the TypeScript verifier', (t) => {
    if (!host.sanitized) t.diagnostic('gcc could not link -fsanitize=address,undefined: fuzzing the plain build');
    const gen = generator(12345);
    const next = rng(99);
    const rnd = (n: number) => Math.floor(next() * n);
    const programs: Uint8Array[] = [];
    while (programs.length < 4000) {
      let bytes: Uint8Array;
      try {
        bytes = encodeProgram(assemble(gen().join('\n')));
      } catch {
        continue; // the generator can write text the assembler refuses (e.g. w10)
      }
      if (programs.length % 3 === 0) {
        bytes = bytes.slice();
        for (let k = 1 + rnd(3); k > 0; k--) bytes[rnd(bytes.length)] = rnd(256);
      }
      programs.push(bytes);
    }
    // mutated whole images too: the parser must refuse garbage cleanly
    const images = programs.map((b, i) => {
      const img = encodeImage(MAPS, b);
      if (i % 10 === 5) img[rnd(16 + 64)] = rnd(256);
      return img;
    });
    const ctx = hex(Uint8Array.from({ length: CTX }, (_, i) => i * 17));
    const budget = 20_000; // both verifiers: random loops would otherwise run to a million steps
    const answers = harness([`budget ${budget}`, ...images.map((img) => `run ${CTX} ${hex(img)} ${ctx}`)]).slice(1);
    let accepted = 0;
    let compared = 0;
    const disagreements: string[] = [];
    answers.forEach((line, i) => {
      assert.match(line, /^(ok \d+ [0-9a-f]+|err -\d+ -?\d+ .+)$/);
      const ok = line.startsWith('ok');
      if (ok) accepted++;
      if (i % 10 === 5) return; // image mutated: no TypeScript counterpart
      compared++;
      const ts = verify(programs[i]!, { contextSize: CTX, helpers: [...GUEST_HELPERS], maps: TS_MAPS, maxStates: budget });
      const pc = ok ? -1 : Number(line.split(' ')[2]);
      if (ts.ok !== ok || (!ts.ok && ts.errors[0]!.pc !== pc)) {
        disagreements.push(`${Buffer.from(programs[i]!).toString('hex')}\n  C: ${line.slice(0, 200)}\n  TS: ${JSON.stringify(!ts.ok && ts.errors[0])}`);
      }
    });
    console.log(`# fuzz: ${accepted} of ${programs.length} accepted and run; ${compared - disagreements.length}/${compared} verdicts match TypeScript`);
    assert.ok(accepted >= 50, `only ${accepted} accepted`);
    assert.deepEqual(disagreements.slice(0, 5), []);
  });

  test('random 64/32-bit offset arithmetic: same verdicts and pcs as TypeScript; accepted ones run cleanly on edge contexts', () => {
    const next = rng(4242);
    const programs = Array.from({ length: 3000 }, () => encodeProgram(assemble(arithmeticProgram(next))));
    const ctxs = ['00', '80', 'ff', '7f'].map((b) => b.repeat(CTX));
    const answers = harness(programs.flatMap((b) => ctxs.map((c) => `run ${CTX} ${hex(encodeImage(MAPS, b))} ${c}`)));
    let accepted = 0;
    const disagreements: string[] = [];
    programs.forEach((bytes, i) => {
      const lines = answers.slice(i * ctxs.length, (i + 1) * ctxs.length);
      for (const l of lines) assert.match(l, /^(ok \d+ [0-9a-f]+|err -\d+ -?\d+ .+)$/);
      const ok = lines[0]!.startsWith('ok');
      if (ok) accepted++;
      const ts = verify(bytes, { contextSize: CTX, helpers: [...GUEST_HELPERS], maps: TS_MAPS });
      const pc = ok ? -1 : Number(lines[0]!.split(' ')[2]);
      if (ts.ok !== ok || (!ts.ok && ts.errors[0]!.pc !== pc)) {
        disagreements.push(`${Buffer.from(bytes).toString('hex')}\n  C: ${lines[0]!.slice(0, 200)}\n  TS: ${JSON.stringify(!ts.ok && ts.errors[0])}`);
      }
    });
    console.log(`# arithmetic fuzz: ${accepted} of ${programs.length} accepted and run on 4 contexts`);
    assert.ok(accepted >= 300, `only ${accepted} accepted`);
    assert.deepEqual(disagreements.slice(0, 5), []);
  });
});

// ---------------------------------------------------------------- (d) maps, pool, hooks
const le32 = (b: Uint8Array, o: number) => new DataView(b.buffer, b.byteOffset).getUint32(o, true);
const le64 = (b: Uint8Array, o: number) => new DataView(b.buffer, b.byteOffset).getBigUint64(o, true);
const key = (...b: number[]) => Uint8Array.from(b);
const val = (n: number, len: number) => Uint8Array.from({ length: len }, (_, i) => (n + i) & 0xff);

describe('eBPF runtime in C: maps', () => {
  const A: ImageMap = { name: 'counts', type: 2, keySize: 4, valueSize: 12, maxEntries: 3 };
  const H: ImageMap = { name: 'flows.v1', type: 1, keySize: 6, valueSize: 10, maxEntries: 4 };
  const prog = (maps: ImageMap[]) => encodeImage(maps, encodeProgram(assemble('r0 = 0\nexit')));

  test('array and hash semantics, reuse by name, and the layout of docs/bpf-runtime.md byte for byte', () => {
    const k = (i: number) => hex(key(i, 0, 0, 0));
    const hk = (i: number) => hex(key(i, 1, 2, 3, 4, 5));
    const a = harness([
      `verify ${CTX} ${hex(prog([A, H]))}`, // 0: creates both
      `update counts ${k(1)} ${hex(val(10, 12))} 0`, `update counts ${k(2)} ${hex(val(20, 12))} 2`,
      `update counts ${k(0)} ${hex(val(1, 12))} 1`, `update counts ${k(3)} ${hex(val(1, 12))} 0`,
      `update counts ${k(0)} ${hex(val(1, 12))} 3`, `delete counts ${k(0)}`, `lookup counts ${k(3)}`, `lookup counts ${k(1)}`, // 1-8
      `update flows.v1 ${hk(1)} ${hex(val(100, 10))} 2`, `update flows.v1 ${hk(1)} ${hex(val(100, 10))} 1`, // 9, 10
      `update flows.v1 ${hk(1)} ${hex(val(110, 10))} 1`, `update flows.v1 ${hk(1)} ${hex(val(120, 10))} 2`, // 11, 12
      `update flows.v1 ${hk(2)} ${hex(val(130, 10))} 0`, `update flows.v1 ${hk(3)} ${hex(val(140, 10))} 0`, // 13, 14
      `update flows.v1 ${hk(4)} ${hex(val(150, 10))} 0`, `update flows.v1 ${hk(5)} ${hex(val(160, 10))} 0`, // 15, 16: full
      `delete flows.v1 ${hk(9)}`, `delete flows.v1 ${hk(3)}`, `lookup flows.v1 ${hk(3)}`, // 17-19
      `update flows.v1 ${hk(5)} ${hex(val(160, 10))} 0`, `lookup flows.v1 ${hk(1)}`, // 20, 21
      `verify ${CTX} ${hex(prog([A]))}`, `verify ${CTX} ${hex(prog([{ ...A, maxEntries: 4 }]))}`, // 22, 23
      'dir', 'storage counts', 'storage flows.v1',
    ]);
    assert.equal(a[0], 'ok');
    assert.deepEqual(a.slice(1, 7), ['ret 0', 'ret 0', 'ret -17', 'ret -7', 'ret -22', 'ret -22']);
    assert.equal(a[7], 'null');
    assert.equal(a[8], `val ${hex(val(10, 12))}`);
    assert.deepEqual(a.slice(9, 19), ['ret -2', 'ret 0', 'ret -17', 'ret 0', 'ret 0', 'ret 0', 'ret 0', 'ret -7', 'ret -2', 'ret 0']);
    assert.equal(a[19], 'null');
    assert.equal(a[20], 'ret 0');
    assert.equal(a[21], `val ${hex(val(120, 10))}`);
    assert.equal(a[22], 'ok');
    assert.match(a[23]!, /^err -22 -1 map counts exists with a different definition/);

    // directory: header then two entries (reuse added none)
    const [, addr, bytes] = a[24]!.split(' ');
    const d = unhex(bytes!);
    assert.equal(d.length, 64 + 2 * 64);
    assert.deepEqual([le32(d, 0), le32(d, 4), le32(d, 8), le32(d, 12)], [0x4d42544b, 1, 64, 2]);
    assert.ok(d.subarray(16, 64).every((b) => b === 0));
    assert.equal(BigInt(addr!) % 64n, 0n);
    const entry = (i: number) => d.subarray(64 + 64 * i, 128 + 64 * i);
    const ea = entry(0);
    const eh = entry(1);
    assert.equal(Buffer.from(ea.subarray(0, 16)).toString('latin1'), 'counts'.padEnd(16, '\0'));
    assert.equal(Buffer.from(eh.subarray(0, 16)).toString('latin1'), 'flows.v1'.padEnd(16, '\0'));
    assert.deepEqual([le32(ea, 16), le32(ea, 20), le32(ea, 24), le32(ea, 28)], [2, 4, 12, 3]);
    assert.deepEqual([le32(eh, 16), le32(eh, 20), le32(eh, 24), le32(eh, 28)], [1, 6, 10, 4]);
    assert.equal(le64(ea, 40), 3n * 16n); // stride round_up(12, 8)
    const slot = 8 + 8 + 16;
    assert.equal(le32(eh, 56), 8); // buckets: power of two >= 2 * 4
    assert.equal(le64(eh, 40), BigInt(8 * slot));
    assert.deepEqual([le32(ea, 48), le32(ea, 52), le32(ea, 56), le32(ea, 60)], [0, 0, 0, 0]);
    assert.deepEqual([le32(eh, 48), le32(eh, 52), le32(eh, 60)], [0, 4, 0]); // unlocked, 4 live

    assert.equal(le64(ea, 32) % 8n, 0n);
    assert.equal(le64(eh, 32) % 8n, 0n);
    const arr = unhex(a[25]!.split(' ')[1]!);
    assert.equal(arr.length, 48);
    assert.deepEqual(arr.subarray(16, 28), val(10, 12));
    assert.ok(arr.subarray(28, 32).every((b) => b === 0), 'stride padding stays zero');
    assert.deepEqual(arr.subarray(32, 44), val(20, 12));
    // hash: every live key sits on its FNV-1a probe path, with state 1 and its hash
    const hb = unhex(a[26]!.split(' ')[1]!);
    const live = new Map<number, Uint8Array>([[1, val(120, 10)], [2, val(130, 10)], [4, val(150, 10)], [5, val(160, 10)]]);
    for (const [id, value] of live) {
      const k6 = key(id, 1, 2, 3, 4, 5);
      const h = fnv1a32(k6);
      let i = h & 7;
      while (le32(hb, i * slot) !== 0 && !(le32(hb, i * slot) === 1 && Buffer.from(hb.subarray(i * slot + 8, i * slot + 14)).equals(Buffer.from(k6)))) i = (i + 1) & 7;
      const s = hb.subarray(i * slot, (i + 1) * slot);
      assert.equal(le32(s, 0), 1, `key ${id} not found on its probe path`);
      assert.equal(le32(s, 4), h);
      assert.deepEqual(s.subarray(16, 26), value);
    }
    const states = Array.from({ length: 8 }, (_, i) => le32(hb, i * slot));
    assert.equal(states.filter((s) => s === 1).length, 4);
    assert.equal(states.filter((s) => s === 2).length, 1, 'the deleted slot was reused or kept as a tombstone');
  });

  test('program pool: 16 loaded programs fill it, freeing gives the slot back', () => {
    const img = hex(image('r0 = 0\nexit', []));
    const a = harness([...Array.from({ length: 17 }, () => `load ${CTX} ${img}`), 'free 3', `load ${CTX} ${img}`]);
    a.slice(0, 16).forEach((l, i) => assert.equal(l, `ok ${i}`));
    assert.match(a[16]!, /^err -12 -1 no free program slot/);
    assert.equal(a[18], 'ok 3');
  });

  test('hooks: context sizes, attach, replace, run, detach', () => {
    const ret = (n: number) => hex(image(`r0 = *(u32 *)(r1 + 4)\nr0 += ${n}\n*(u32 *)(r1 + 12) = r0\nexit`, []));
    const ctx = hex(Uint8Array.from([1, 0, 0, 0, 7, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]));
    const a = harness([
      'hooksize 1', 'hooksize 2', 'hooksize 3', 'hooksize 0', 'hooksize 4',
      `hookrun 1 ${ctx}`, `hook 1 ${ret(10)}`, `hookrun 1 ${ctx}`, `hook 1 ${ret(20)}`, `hookrun 1 ${ctx}`,
      `hook 9 ${ret(1)}`, `hook 2 ${hex(image('r0 = *(u64 *)(r1 + 272)\nexit', []))}`,
      'unhook 1', 'unhook 1', `hookrun 1 ${ctx}`,
    ]);
    assert.deepEqual(a.slice(0, 5), ['size 16', 'size 272', 'size 16', 'size 0', 'size 0']);
    assert.equal(a[5], `ran 0 0 ${ctx}`);
    assert.equal(a[6], 'ret 0');
    assert.equal(a[7], `ran 1 17 ${ctx.slice(0, 24)}11000000`);
    assert.equal(a[8], 'ret 0');
    assert.equal(a[9], `ran 1 27 ${ctx.slice(0, 24)}1b000000`);
    assert.match(a[10]!, /^ret -22 -1 unknown hook 9/);
    assert.match(a[11]!, /^ret -22 0 .*context access out of bounds/);
    assert.deepEqual(a.slice(12, 14), ['ret 0', 'ret -2']);
    assert.equal(a[14], `ran 0 0 ${ctx}`);
  });
});

// ---------------------------------------------------------------- (e) timing
describe('eBPF runtime in C: verification time', () => {
  test('4096-instruction straight-line and branchy programs (printed, not asserted)', () => {
    const { straight, branchy } = verifierStressPrograms();
    const imgs = [straight, branchy].map((l) => image(l, []));
    for (const img of imgs) assert.equal(img.length, 16 + 4096 * 8);
    const a = harness(imgs.map((b) => `time ${CTX} ${hex(b)} 5`), host.plain);
    a.forEach((l, i) => {
      assert.match(l, /^ok [\d.]+$/);
      console.log(`# C verifier (+ load) ${i ? 'branchy' : 'straight'} 4096 insns: ${(Number(l.split(' ')[1]) / 1000).toFixed(2)} ms`);
    });
  });
});
