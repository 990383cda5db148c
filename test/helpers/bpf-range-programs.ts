/**
 * eBPF programs (assembly text) for the verifiers' scalar range tracking, for a 16-byte context
 * and map 0 with 4-byte keys and 16-byte values: a corpus of safe programs that need precise
 * ranges, unsafe ones with the pc and reason each verifier must give, and random programs.
 */

/** r6 = the context, r0 = map 0's value for key 0, or null. */
export const LOOKUP = `
  r6 = r1
  *(u32 *)(r10 - 4) = 0
  r2 = r10
  r2 += -4
  r1 = map_by_fd(0) ll
  call 1
`;
/** `body` computes r1 = an offset into the map value (r0), which is then read. */
const valueAt = (body: string) => `${LOOKUP}\nif r0 == 0 goto out\n${body}\nr0 += r1\nr0 = *(u8 *)(r0 + 0)\nexit\nout:\nr0 = 0\nexit`;
/** `body` computes r1 = an offset into the context, which is then read. */
const contextAt = (body: string) => `r6 = r1\n${body}\nr2 = r6\nr2 += r1\nr0 = *(u8 *)(r2 + 0)\nexit\nout:\nr0 = 0\nexit`;
/** Counts context bytes of three classes on three branches while r5 walks `n` bytes. */
const classes = (n: number, tail: string) => `r6 = r1\nr7 = 0\nr8 = 0\nr9 = 0\nr5 = 0
l:\nr2 = r6\nr2 += r5\nr2 = *(u8 *)(r2 + 0)\nif r2 > 100 goto big\nr7 += 1\ngoto next
big:\nif r2 > 200 goto huge\nr8 += 1\ngoto next\nhuge:\nr9 += 1
next:\nr5 += 1\nif r5 < ${n} goto l\n${tail}\nexit`;

/** Safe programs that only verify with precise ranges (each names what it needs). */
export const RANGE_ACCEPTED: [string, string][] = [
  ['u32 counter zero-extended by <<32 >>32 (clang -mcpu=v1)', 'r6 = r1\nr0 = 0\nr5 = 0\nl:\nr3 = r5\nr3 <<= 32\nr3 >>= 32\nr4 = r3\nr4 &= 15\nr2 = r6\nr2 += r4\nr2 = *(u8 *)(r2 + 0)\nr0 += r2\nr5 += 1\nr3 = r5\nr3 <<= 32\nr3 >>= 32\nif r3 < 40 goto l\nexit'],
  ['JMP32 loop condition', 'w1 = 0\nl:\nw1 += 1\nif w1 < 100 goto l\nr0 = 0\nexit'],
  ['and with a mask', valueAt('r1 = *(u32 *)(r6 + 0)\nr1 &= 15')],
  ['mod by a constant', valueAt('r1 = *(u32 *)(r6 + 0)\nr1 %= 13')],
  ['rsh by a constant', valueAt('r1 = *(u8 *)(r6 + 0)\nr1 >>= 4')],
  ['div by a constant', valueAt('r1 = *(u16 *)(r6 + 0)\nr1 /= 5000')],
  ['32-bit add of a negative immediate, then a JMP32 bound', valueAt('r1 = *(u8 *)(r6 + 0)\nw1 += -48\nif w1 > 9 goto out')],
  ['movsx of a value whose sign bit is clear', valueAt('r1 = *(u8 *)(r6 + 0)\nr1 &= 15\nr1 = (s8)r1')],
  ['32-bit neg and add wrapping to a small range', valueAt('r1 = *(u8 *)(r6 + 0)\nr1 &= 7\nr1 += 1\nw1 = -w1\nw1 += 16')],
  ['le64 keeps the value', valueAt('r1 = *(u8 *)(r6 + 0)\nr1 &= 15\nr1 = le64 r1')],
  ['rsh by a register with a known range', valueAt('r1 = *(u32 *)(r6 + 0)\nr2 = *(u8 *)(r6 + 4)\nr2 &= 3\nr1 >>= r2\nr1 >>= 28')],
  ['or, xor, then a mask', valueAt('r1 = *(u32 *)(r6 + 0)\nr1 |= 3\nr1 ^= 1\nr1 &= 12')],
  ['counters on three branches that only feed r0', classes(16, 'r0 = r7\nr0 <<= 16\nr0 |= r8\nr0 <<= 16\nr0 |= r9')],
  ['a 32-bit shift by 60 is a shift by 28 (the count is taken mod 32)', valueAt('r1 = *(u32 *)(r6 + 0)\nw1 >>= 60')],
  ['pointer offsets up to ±2^29', 'r2 = r1\nr2 += 536870912\nr3 = 536870912\nr2 -= r3\nr2 -= r3\nr2 += r3\nr0 = *(u8 *)(r2 + 15)\nexit'],
  ['a branch counter used as an offset after the loop', classes(15, 'r2 = r6\nr2 += r7\nr0 = *(u8 *)(r2 + 0)\nr0 += r8')],
];

/** [what, program, pc, reason fragment]: unsafe programs and where both verifiers stop them. */
export const RANGE_REJECTED: [string, string, number, string][] = [
  ['a mask one bit too wide', valueAt('r1 = *(u32 *)(r6 + 0)\nr1 &= 31'), 11, 'offset 0..31'],
  ['a zero-extended u32 is not bounded', contextAt('r1 = *(u32 *)(r6 + 0)\nr1 <<= 32\nr1 >>= 32'), 5, 'moves by 0..4294967295'],
  ['arsh keeps the sign (rsh would give 0..15)', contextAt('r1 = *(u64 *)(r6 + 0)\nr1 s>>= 60'), 4, 'moves by 0..inf'],
  ['a JMP32 bound says nothing of the upper half', contextAt('r1 = *(u64 *)(r6 + 0)\nif w1 > 8 goto out'), 4, 'moves by 0..inf'],
  ['mod by a register that may be 0 leaves the value', contextAt('r1 = *(u32 *)(r6 + 0)\nr2 = *(u8 *)(r6 + 4)\nr1 %= r2'), 5, 'moves by 0..4294967295'],
  ['a 64-bit bound of a 32-bit wrapped value', contextAt('r1 = *(u8 *)(r6 + 0)\nw1 += -48\nif r1 > 9 goto out\nr1 += 7'), 7, 'offset 7..16'],
  ['a loop one byte too long', 'r6 = r1\nr0 = 0\nr5 = 0\nl:\nr2 = r6\nr2 += r5\nr2 = *(u8 *)(r2 + 0)\nr0 += r2\nr5 += 1\nif r5 < 17 goto l\nexit', 5, 'offset 16'],
  ['a 32-bit shift count is taken mod 32: w1 >>= 40 shifts by 8', contextAt('w1 = -1\nw1 >>= 40'), 5, 'offset 16777215'],
  ['a shift by a register known to be >= the width is not a shift to 0', contextAt('w1 = -1\nw2 = 40\nw1 >>= w2'), 5, 'moves by 1..4294967295'],
  ['le64 of the 32-bit class (0xd4, imm 64) keeps all 64 bits', contextAt('r1 = 0x1000000000000 ll\nr1 = le64 r1\nr1 >>= 32'), 7, 'offset 65536'],
  ['be64 of the 32-bit class (0xdc, imm 64) swaps all 64 bits', contextAt('r1 = *(u8 *)(r6 + 0)\nr1 = be64 r1\nr1 >>= 56'), 6, 'offset 0..255'],
  // 2^52 added 256 times, +100, subtracted 256 times: saturating or rounding offsets came back as 0
  ['pointer offsets far outside ±2^29 (the real one ends at 100)', `r2 = 0x10000000000000 ll\n${'r1 += r2\n'.repeat(256)}r1 += 100\n${'r1 -= r2\n'.repeat(256)}r0 = *(u8 *)(r1 + 0)\nexit`, 2, 'moves by 4503599627370496'],
  ['a pointer offset may not leave ±2^29 even on the way', `r2 = 0x10000000 ll\n${'r1 += r2\n'.repeat(3)}${'r1 -= r2\n'.repeat(3)}r0 = *(u8 *)(r1 + 0)\nexit`, 4, 'offset 805306368 leaves'],
  ['subtracting an unbounded scalar from a pointer', 'r2 = r1\nr3 = *(u64 *)(r1 + 0)\nr2 -= r3\nr0 = *(u8 *)(r2 + 0)\nexit', 2, 'moves by -inf..0'],
  ['a branch counter that can reach the end of the context', classes(16, 'r2 = r6\nr2 += r7\nr0 = *(u8 *)(r2 + 0)\nr0 += r8'), 19, 'offset 16'],
];

/**
 * A random program: a value read from the context goes through random 64- and 32-bit
 * arithmetic, maybe bounds checks, and is used as an offset into the context or the map value.
 * A verifier that accepts one must be right about the range, or the access faults when it runs.
 */

const ALU = ['+=', '-=', '*=', '/=', '%=', '&=', '|=', '^=', '<<=', '>>=', 's>>=', 's/=', 's%='];
const CONDS = ['>', '>=', '<', '<=', '==', '!=', 's>', 's>=', 's<', 's<=', '&'];
const IMMS = [0, 1, 2, 3, 7, 8, 12, 15, 16, 31, 32, 48, 63, 64, 255, 0x7fffffff, -1, -2, -16, -48, -0x80000000];
const SWAPS = ['le16', 'le32', 'le64', 'be16', 'be32', 'be64', 'bswap16', 'bswap32', 'bswap64'];

export function arithmeticProgram(next: () => number): string {
  const rnd = (n: number) => Math.floor(next() * n);
  const pick = <T>(a: readonly T[]): T => a[rnd(a.length)]!;
  const imm = () => (rnd(2) ? pick(IMMS) : rnd(40) - 8);
  const op = (): string => {
    const w = rnd(3) === 0 ? 'w' : 'r';
    switch (rnd(9)) {
      case 0: case 1: case 2: return `${w}1 ${pick(ALU)} ${imm()}`;
      case 3: case 4: return `${w}1 ${pick(ALU)} ${w}2`;
      case 5: return w === 'w' ? `w1 = (s${pick([8, 16])})w1` : `r1 = (s${pick([8, 16, 32])})r1`;
      case 6: return `${w}1 = -${w}1`;
      case 7: return `r1 = ${pick(SWAPS)} r1`;
      default: return pick(['r1 <<= 32\nr1 >>= 32', 'w1 = w1', 'r2 &= 3', 'r2 = 5', `r1 = r2`]);
    }
  };
  const width = pick([8, 16, 32, 64]);
  const out = [
    LOOKUP,
    'if r0 == 0 goto out',
    'r7 = r0',
    `r1 = *(u${width} *)(r6 + ${rnd(16 - width / 8 + 1)})`,
    `r2 = *(u8 *)(r6 + ${rnd(16)})`,
  ];
  if (rnd(4) === 0) {
    // a u32 counter as clang -mcpu=v1 writes it: zero-extended by shifts before every use
    out.push('r5 = 0', 'loop:', 'r3 = r5', 'r3 <<= 32', 'r3 >>= 32', 'r1 += r3', op(), 'w5 += 1', 'r3 = r5', 'r3 <<= 32', 'r3 >>= 32', `if r3 < ${1 + rnd(20)} goto loop`);
  }
  for (let k = 1 + rnd(4); k > 0; k--) out.push(op());
  for (let k = rnd(3); k > 0; k--) out.push(`if ${rnd(3) === 0 ? 'w' : 'r'}1 ${pick(CONDS)} ${rnd(3) ? rnd(20) : imm()} goto out`);
  out.push(`r3 = ${rnd(2) ? 'r6' : 'r7'}`, 'r3 += r1', `r0 = *(u${pick([8, 16])} *)(r3 + ${rnd(3)})`, 'exit', 'out:', 'r0 = 0', 'exit');
  return out.join('\n');
}
