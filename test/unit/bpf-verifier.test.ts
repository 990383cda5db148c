/**
 * The static eBPF verifier: accepted programs, one rejection per reason, scalar range tracking
 * (test/helpers/bpf-range-programs.ts), a 4096-instruction timing budget, and fuzz runs checking
 * that accepted programs never fault in the interpreter.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { assemble } from '../../src/bpf/asm.js';
import { encodeProgram } from '../../src/bpf/isa.js';
import { BpfInterpreter, BpfRuntimeError, type BpfHelper, type BpfRegion } from '../../src/bpf/interpreter.js';
import { verify, type HelperSpec, type VerifyOptions } from '../../src/bpf/verifier.js';
import { RANGE_ACCEPTED, RANGE_REJECTED, arithmeticProgram } from '../helpers/bpf-range-programs.js';
import { rng } from '../helpers/rng.js';
import { verifierStressPrograms } from '../helpers/bpf-stress.js';

const HELPERS: HelperSpec[] = [
  { id: 1, name: 'map_lookup_elem', args: ['map', 'map-key'], ret: 'map-value-or-null' },
  { id: 2, name: 'get_prandom', args: [], ret: 'scalar' },
  { id: 3, name: 'ctx_op', args: ['ctx', 'scalar'], ret: 'scalar' },
  { id: 4, name: 'map_update_elem', args: ['map', 'map-key', 'map-value', 'scalar'], ret: 'scalar' },
  { id: 5, name: 'probe_read', args: ['stack-ptr', 'scalar'], ret: 'scalar' },
];
const OPTS: VerifyOptions = { contextSize: 16, helpers: HELPERS, maps: [{ index: 0, keySize: 4, valueSize: 16 }, { index: 1, keySize: 8, valueSize: 8 }] };

function ok(src: string, opts: VerifyOptions = OPTS) {
  const r = verify(assemble(src), opts);
  assert.ok(r.ok, `expected acceptance, got ${JSON.stringify(!r.ok && r.errors)}`);
  return r.stats;
}
function rejects(src: string, pc: number, reason: string, opts: VerifyOptions = OPTS) {
  const r = verify(assemble(src), opts);
  assert.ok(!r.ok, 'expected rejection');
  const e = r.errors[0]!;
  assert.equal(e.pc, pc, `pc: ${JSON.stringify(e)}`);
  assert.ok(e.reason.includes(reason), `reason ${JSON.stringify(e.reason)} lacks ${JSON.stringify(reason)}`);
  assert.ok(e.insn.length > 0);
  return e;
}

// ---------------------------------------------------------------- runtime harness
const MAP_BASE = 0x2_0000_0000n;
/** The interpreter's environment; the context is random bytes, or all `fill`. */
function runtime(contextSize: number, seed: number, fill?: number) {
  let s = seed >>> 0 || 1;
  const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0), s);
  const regions: BpfRegion[] = (OPTS.maps ?? []).map((m) => ({ base: MAP_BASE + BigInt(m.index) * 0x10000n, bytes: new Uint8Array(m.valueSize), writable: true }));
  const helpers = new Map<number, BpfHelper>([
    [1, (r1) => (rnd() & 1 ? MAP_BASE + (r1 & 0xffn) * 0x10000n : 0n)],
    [2, () => BigInt(rnd())],
    [3, () => BigInt(rnd() & 0xff)],
    [4, () => 0n],
    [5, () => 0n],
  ]);
  const memory = new Uint8Array(contextSize).map(() => fill ?? rnd() & 0xff);
  return {
    memory, regions, helpers, maxInstructions: 100_000,
    resolvePseudo: (src: number, imm: number, next: number) => (src === 2 || src === 6 ? MAP_BASE + BigInt(imm) * 0x10000n + BigInt(next) : BigInt(imm)),
  };
}
function runs(bytes: Uint8Array, seed = 1, fill?: number): bigint | 'limit' {
  try {
    return new BpfInterpreter(bytes).run(runtime(OPTS.contextSize, seed, fill)).r0;
  } catch (e) {
    if (e instanceof BpfRuntimeError && e.reason.startsWith('instruction limit')) return 'limit';
    throw e;
  }
}

const LOOKUP = `
  r6 = r1
  *(u32 *)(r10 - 4) = 0
  r2 = r10
  r2 += -4
  r1 = map_by_idx(0) ll
  call 1
`;

describe('bpf verifier: accepted programs', () => {
  test('stack use', () => {
    ok('*(u64 *)(r10 - 8) = 42\nr1 = *(u64 *)(r10 - 8)\n*(u32 *)(r10 - 512) = r1\nr0 = *(u32 *)(r10 - 512)\nexit');
  });
  test('context reads in bounds', () => {
    ok('r0 = *(u32 *)(r1 + 12)\nr2 = *(u8 *)(r1 + 15)\nr0 += r2\nexit');
  });
  test('map lookup, null check, bounded variable-offset access', () => {
    const src = `${LOOKUP}
      if r0 == 0 goto out
      r1 = *(u8 *)(r6 + 0)
      if r1 > 8 goto out
      r0 += r1
      r0 = *(u64 *)(r0 + 0)
      exit
    out:
      r0 = 0
      exit`;
    ok(src);
    for (let seed = 1; seed < 20; seed++) assert.notEqual(runs(encodeProgram(assemble(src)), seed), 'limit');
  });
  test('null check through a copy and with !=', () => {
    ok(`${LOOKUP}
      r7 = r0
      if r0 != 0 goto have
      r0 = 0
      exit
    have:
      r0 = *(u64 *)(r7 + 8)
      exit`);
  });
  test('bounded forward branches', () => {
    ok('r2 = *(u32 *)(r1 + 0)\nif r2 > 10 goto +2\nr0 = 1\nexit\nr0 = 2\nexit');
  });
  test('bounded loop with a constant counter', () => {
    const src = 'r1 = 0\nr0 = 0\nloop:\nr0 += r1\nr1 += 1\nif r1 < 10 goto loop\nexit';
    ok(src);
    assert.equal(runs(encodeProgram(assemble(src))), 45n);
  });
  test('division by a register known to be zero is allowed', () => {
    ok('r1 = 0\nr0 = 5\nr0 /= r1\nexit');
  });
  test('helper calls with stack and map arguments', () => {
    ok(`r6 = r1
      *(u32 *)(r10 - 4) = 1
      *(u64 *)(r10 - 24) = 7
      *(u64 *)(r10 - 16) = 8
      r1 = map_by_idx(0) ll
      r2 = r10
      r2 += -4
      r3 = r10
      r3 += -24
      r4 = 0
      call 4
      r1 = r6
      r2 = 3
      call 3
      exit`);
  });
});

describe('bpf verifier: rejections', () => {
  test('stack access out of bounds', () => {
    rejects('*(u64 *)(r10 + 0) = 1\nr0 = 0\nexit', 0, 'outside [-512, 0)');
    rejects('r0 = 0\nr0 = *(u64 *)(r10 - 520)\nexit', 1, 'stack access out of bounds');
  });
  test('read of a stack slot never written', () => {
    const e = rejects('*(u32 *)(r10 - 8) = 1\nr0 = *(u64 *)(r10 - 8)\nexit', 1, 'uninitialized stack');
    assert.equal(e.insn, 'r0 = *(u64 *)(r10 - 8)');
  });
  test('context access out of bounds', () => {
    rejects('r0 = *(u64 *)(r1 + 12)\nexit', 0, 'context access out of bounds');
    rejects('r0 = *(u8 *)(r1 - 1)\nexit', 0, 'context access out of bounds');
  });
  test('map value access out of bounds', () => {
    rejects(`${LOOKUP}\nif r0 == 0 goto +1\nr0 = *(u64 *)(r0 + 9)\nr0 = 0\nexit`, 8, 'value access out of bounds');
    // variable offset too wide
    rejects(`${LOOKUP}\nif r0 == 0 goto +4\nr1 = *(u8 *)(r6 + 0)\nr0 += r1\nr0 = *(u8 *)(r0 + 0)\nexit\nr0 = 0\nexit`, 10, 'offset 0..255');
  });
  test('dereference without a null check', () => {
    rejects(`${LOOKUP}\nr0 = *(u64 *)(r0 + 0)\nexit`, 7, 'null check');
    rejects(`${LOOKUP}\nr0 += 8\nexit`, 7, 'null');
  });
  test('uninitialized register reads', () => {
    rejects('r0 = r3\nexit', 0, 'r3 is read before it is initialized');
    rejects('call 2\nr0 = r1\nexit', 1, 'clobbered by calls');
    rejects('r1 = 1\nexit', 1, 'r0 is read before it is initialized');
  });
  test('unbounded loops', () => {
    rejects('r0 = 0\nloop:\ngoto loop', 1, 'unbounded loop');
    rejects('r1 = *(u32 *)(r1 + 0)\nr0 = 0\nloop:\nr1 -= 1\nif r1 != 0 goto loop\nexit', 3, 'unbounded loop');
    rejects('r1 = 0\nr0 = 0\nloop:\nr1 += 1\nif r1 < 1000000 goto loop\nexit', 3, 'loop not provably bounded', { ...OPTS, maxStates: 5000 });
  });
  test('invalid helpers and arguments', () => {
    rejects('call 99\nexit', 0, 'unknown helper 99');
    rejects('r1 = 0\nr2 = r10\ncall 1\nexit', 2, 'arg1 (r1): expected map pointer');
    rejects('r1 = map_by_idx(0) ll\nr2 = r10\nr2 += -4\ncall 1\nexit', 4, 'uninitialized stack');
    rejects('r1 = 0\nr2 = 1\ncall 3\nr0 = 0\nexit', 2, 'expected context pointer');
    rejects('r1 = r10\nr1 += -600\nr2 = 0\ncall 5\nexit', 3, 'outside [-512, 0)');
  });
  test('map references are checked in unreachable code too (the loader resolves them all)', () => {
    rejects('r0 = 0\nexit\nr1 = map_by_idx(2) ll\nexit', 2, 'unknown map 2');
    rejects('r0 = 0\nexit\nr1 = map_val_by_idx(9) ll\nexit', 2, 'unknown map 9');
    rejects('r0 = 0\nexit\nr1 = map_by_idx(0) ll\nexit', 2, 'unknown map 0', { ...OPTS, maps: undefined });
    ok('r0 = 0\nexit\nr1 = map_by_idx(1) ll\nexit');
  });
  test('misaligned atomics', () => {
    rejects('r1 = 0\n*(u64 *)(r10 - 16) = r1\n*(u64 *)(r10 - 8) = r1\nr2 = 1\nlock *(u64 *)(r10 - 12) += r2\nr0 = 0\nexit', 4, 'offset -12 is not 8-byte aligned');
    rejects('r2 = 1\nlock *(u32 *)(r1 + 6) += r2\nr0 = 0\nexit', 1, 'offset 6 is not 4-byte aligned');
    rejects(`${LOOKUP}\nif r0 == 0 goto +5\nr1 = *(u8 *)(r6 + 0)\nr1 &= 8\nr0 += r1\nr1 = 1\nlock *(u64 *)(r0 + 0) += r1\nr0 = 0\nexit`, 12, 'offset 0..8 is not 8-byte aligned');
    ok('r2 = 1\nlock *(u32 *)(r1 + 4) += r2\nlock *(u64 *)(r1 + 8) += r2\nr0 = 0\nexit');
  });
  test('pointer offsets stay within ±2^29', () => {
    rejects('r1 += 536870913\nr0 = 0\nexit', 0, 'moves by 536870913');
    rejects('r1 += -536870912\nr1 += -1\nr0 = 0\nexit', 1, 'offset -536870913 leaves');
    rejects('r2 = *(u32 *)(r1 + 0)\nr2 += r1\nr0 = 0\nexit', 1, 'moves by 0..4294967295');
    ok('r1 += -536870912\nr1 += 536870912\nr0 = *(u8 *)(r1 + 0)\nexit');
  });
  test('bad jumps', () => {
    rejects('r0 = 0\ngoto +5\nexit', 1, 'jump out of range');
    rejects('goto +1\nr1 = 0x123456789 ll\nr0 = 0\nexit', 0, 'middle of lddw');
  });
  test('falling off the end', () => {
    rejects('r0 = 0', 0, 'falls off the end');
    rejects('r0 = *(u32 *)(r1 + 0)\nif r0 > 1 goto +1\nexit\nr0 = 1', 3, 'falls off the end');
  });
  test('writes to r10', () => {
    rejects('r10 = 0\nr0 = 0\nexit', 0, 'read-only');
    rejects('r10 += 8\nr0 = 0\nexit', 0, 'read-only');
  });
  test('undecodable programs are errors, not exceptions', () => {
    const r = verify(new Uint8Array(12), OPTS);
    assert.ok(!r.ok);
    const bad = verify(Uint8Array.from([0xff, 0, 0, 0, 0, 0, 0, 0]), OPTS);
    assert.ok(!bad.ok && bad.errors[0]!.pc === 0 && bad.errors[0]!.reason.includes('invalid instruction'));
  });
});

/** Runs an accepted program on random contexts and on all-0x00, all-0x80 and all-0xff ones. */
function runsClean(bytes: Uint8Array, what: string): void {
  for (const [seed, fill] of [[1], [2], [3], [4, 0], [5, 0x80], [6, 0xff]] as const) {
    try {
      runs(bytes, seed, fill);
    } catch (e) {
      assert.fail(`accepted program faulted (seed ${seed}, fill ${fill}): ${String(e)}\n${what}`);
    }
  }
}

describe('bpf verifier: scalar ranges', () => {
  for (const [what, src] of RANGE_ACCEPTED) {
    test(`accepts: ${what}; runs without faults`, () => {
      ok(src);
      runsClean(encodeProgram(assemble(src)), src);
    });
  }
  for (const [what, src, pc, reason] of RANGE_REJECTED) {
    test(`rejects: ${what}`, () => {
      rejects(src, pc, reason);
    });
  }
  test('exact results: zero extension, 32-bit wrap, counters widened only where they do not matter', () => {
    // the loop sums ctx[i & 15] for 40 iterations
    const sum = RANGE_ACCEPTED[0]![1];
    const r = new BpfInterpreter(encodeProgram(assemble(sum))).run({ ...runtime(16, 1, 3), memory: new Uint8Array(16).fill(3) });
    assert.equal(r.r0, 120n);
    // three counters on branches: 16 bytes of 50 (r7), so r0 = 16 << 32
    const classes = RANGE_ACCEPTED.find(([w]) => w.startsWith('counters'))![1];
    const c = new BpfInterpreter(encodeProgram(assemble(classes))).run({ ...runtime(16, 1), memory: new Uint8Array(16).fill(50) });
    assert.equal(c.r0, 16n << 32n);
    // widening keeps the state count linear: a path-exact verifier would see 3^16 count combinations
    assert.ok(ok(classes).processed < 2000);
  });
});

describe('bpf verifier: performance', () => {
  test('4096-instruction straight-line and branchy programs verify in < 100 ms', () => {
    const { straight, branchy } = verifierStressPrograms();
    for (const [name, lines] of [['straight', straight], ['branchy', branchy]] as const) {
      const insns = assemble(lines);
      assert.equal(insns.length, 4096);
      verify(insns, OPTS); // warm up
      const t0 = performance.now();
      const r = verify(insns, OPTS);
      const ms = performance.now() - t0;
      assert.ok(r.ok, JSON.stringify(!r.ok && r.errors));
      console.log(`# verifier ${name} 4096 insns: ${ms.toFixed(1)} ms, ${JSON.stringify(r.stats)}`);
      assert.ok(ms < 100, `${name}: ${ms.toFixed(1)} ms`);
    }
  });
});

describe('bpf verifier: fuzz', () => {
  test('2000 random/mutated programs: verify never throws; accepted ones run without faults', () => {
    let s = 12345;
    const rnd = (n: number) => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0), s % n);
    const pick = <T>(a: readonly T[]): T => a[rnd(a.length)]!;
    const reg = () => `r${rnd(10)}`;
    const base = () => pick(['r10', 'r10', 'r6', 'r0', 'r7', reg()]);
    const size = () => pick([8, 16, 32, 64]);
    const off = () => pick([-8, -16, -4, -512, -520, 0, 4, 8, 12, 15, 16, -1]) ;
    const gen = (): string[] => {
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
          case 6: out.push('*(u32 *)(r10 - 4) = 0', 'r2 = r10', 'r2 += -4', `r1 = map_by_idx(${rnd(3) ? 0 : 1}) ll`, 'call 1', ...(rnd(4) ? [`if r0 ${pick(['==', '!='])} 0 goto +${1 + rnd(2)}`] : []), `r7 = r0`); break;
          case 7: out.push(`r7 = map_val_by_idx(${rnd(2)}) + ${rnd(10)} ll`); break;
          case 8: out.push(`call ${pick([2, 3, 5])}`); break;
          case 9: out.push(`${reg()} += ${base()}`); break;
          case 10: out.push('r1 = 0', 'loop: r1 += 1', `if r1 < ${rnd(30)} goto loop`.replace('loop', `l${i}`).replace('loop', `l${i}`)); out[out.length - 2] = `l${i}: r1 += 1`; break;
          case 11: out.push(`lock *(u${pick([32, 64])} *)(${base()} - ${pick([8, 16])}) += ${reg()}`); break;
          default: out.push(`r0 = ${reg()}`);
        }
      }
      if (rnd(8)) out.push('r0 = 0', 'exit');
      return out;
    };
    let accepted = 0;
    let limited = 0;
    const reasons = new Map<string, number>();
    for (let i = 0; i < 2000; i++) {
      let insns;
      try {
        insns = assemble(gen().join('\n'));
      } catch {
        continue; // the generator can produce text the assembler refuses (e.g. w10)
      }
      let bytes = encodeProgram(insns);
      if (i % 3 === 0) {
        bytes = bytes.slice();
        for (let k = 1 + rnd(3); k > 0; k--) bytes[rnd(bytes.length)] = rnd(256);
      }
      const r = verify(bytes, { ...OPTS, maxStates: 20_000 });
      if (!r.ok) {
        assert.ok(r.errors.length > 0);
        const key = r.errors[0]!.reason.replace(/[-\d].*$/, '');
        reasons.set(key, (reasons.get(key) ?? 0) + 1);
        continue;
      }
      accepted++;
      for (let seed = 1; seed <= 3; seed++) {
        try {
          if (runs(bytes, seed + i) === 'limit') limited++;
        } catch (e) {
          assert.fail(`accepted program faulted (seed ${seed + i}): ${String(e)}\n${insns ? '' : ''}${Buffer.from(bytes).toString('hex')}`);
        }
      }
    }
    console.log(`# fuzz: ${accepted} accepted of 2000, ${limited} runs hit the instruction limit`);
    assert.ok(accepted >= 25, `only ${accepted} accepted`);
  });

  test('3000 random programs computing offsets with 64/32-bit arithmetic: accepted ones never fault', () => {
    const next = rng(2024);
    let accepted = 0;
    for (let i = 0; i < 3000; i++) {
      const src = arithmeticProgram(next);
      const bytes = encodeProgram(assemble(src));
      if (!verify(bytes, { ...OPTS, maxStates: 20_000 }).ok) continue;
      accepted++;
      runsClean(bytes, src);
    }
    console.log(`# arithmetic fuzz: ${accepted} accepted of 3000, all ran cleanly`);
    assert.ok(accepted >= 300, `only ${accepted} accepted`);
  });
});
