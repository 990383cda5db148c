import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  InvalidInstructionError, LDDW_OPCODE, decodeProgram, describe, encodeProgram, type BpfInsn,
} from '../../src/bpf/isa.js';
import { disassemble, formatInsn } from '../../src/bpf/disasm.js';
import { AsmError, assemble } from '../../src/bpf/asm.js';

const hex = (s: string) => Uint8Array.from(s.trim().split(/\s+/).map((b) => parseInt(b, 16)));
const toHex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(' ');
const ins = (opcode: number, dst = 0, src = 0, off = 0, imm = 0): BpfInsn => ({ opcode, dst, src, off, imm });

/** Every syntactically possible instruction over a spread of field values; keeps the ones describe accepts. */
function generateValid(): BpfInsn[] {
  const out: BpfInsn[] = [];
  const imms = [0, 1, 16, 32, 64, -7, 0x40, 0x41, 0x50, 0x51, 0xa0, 0xa1, 0xe1, 0xf1, 0x7fffffff, -0x80000000];
  for (let opcode = 0; opcode < 256; opcode++) {
    for (const dst of [0, 10]) {
      for (const src of [0, 1, 2, 6, 10]) {
        for (const off of [0, 1, 8, 16, 32, -5]) {
          for (const imm of imms) {
            const insn = ins(opcode, dst, src, off, imm);
            if (opcode === LDDW_OPCODE) insn.imm64 = (BigInt(src === 2 || src === 6 || src === 0 ? 0x1234 : 0) << 32n) | BigInt(imm >>> 0);
            try {
              describe(insn);
              out.push(insn);
            } catch (e) {
              assert.ok(e instanceof InvalidInstructionError, String(e));
            }
          }
        }
      }
    }
  }
  return out;
}

test('known encodings from the RFC 9669 layout (hand-written bytes)', () => {
  const cases: [string, string][] = [
    ['07 01 00 00 44 33 22 11', 'r1 += 287454020'], // RFC §3 example: {ADD, K, ALU64}, dst r1, imm 0x11223344
    ['18 01 00 00 44 33 22 11 00 00 00 00 88 77 66 55', 'r1 = 0x5566778811223344 ll'],
    ['dc 01 00 00 10 00 00 00', 'r1 = be16 r1'], // {END, TO_BE, ALU} imm 16
    ['d4 01 00 00 20 00 00 00', 'r1 = le32 r1'],
    ['d7 01 00 00 40 00 00 00', 'r1 = bswap64 r1'], // {END, TO_LE, ALU64} is the unconditional swap
    ['b7 00 00 00 01 00 00 00', 'r0 = 1'],
    ['bc 21 00 00 00 00 00 00', 'w1 = w2'],
    ['bf 21 08 00 00 00 00 00', 'r1 = (s8)r2'], // MOVSX: offset 8
    ['3f 21 01 00 00 00 00 00', 'r1 s/= r2'], // SDIV: offset 1
    ['97 01 01 00 03 00 00 00', 'r1 s%= 3'],
    ['87 01 00 00 00 00 00 00', 'r1 = -r1'],
    ['61 a1 fc ff 00 00 00 00', 'r1 = *(u32 *)(r10 - 4)'],
    ['81 a1 fc ff 00 00 00 00', 'r1 = *(s32 *)(r10 - 4)'],
    ['7b 1a f8 ff 00 00 00 00', '*(u64 *)(r10 - 8) = r1'],
    ['62 0a fc ff 05 00 00 00', '*(u32 *)(r10 - 4) = 5'],
    ['c3 21 00 00 00 00 00 00', 'lock *(u32 *)(r1 + 0) += r2'],
    ['db 01 00 00 01 00 00 00', 'r0 = atomic_fetch_add((u64 *)(r1 + 0), r0)'],
    ['db 21 00 00 f1 00 00 00', 'r0 = cmpxchg_64(r1 + 0, r0, r2)'],
    ['c3 21 00 00 e1 00 00 00', 'w2 = xchg32_32(r1 + 0, w2)'],
    ['2d 21 03 00 00 00 00 00', 'if r1 > r2 goto +3'],
    ['c6 01 fe ff 05 00 00 00', 'if w1 s< 5 goto -2'],
    ['05 00 01 00 00 00 00 00', 'goto +1'],
    ['06 00 00 00 64 00 00 00', 'gotol +100'],
    ['85 00 00 00 01 00 00 00', 'call 1'],
    ['85 10 00 00 03 00 00 00', 'call pc+3'],
    ['85 20 00 00 2a 00 00 00', 'call kfunc 42'],
    ['95 00 00 00 00 00 00 00', 'exit'],
    ['18 11 00 00 03 00 00 00 00 00 00 00 00 00 00 00', 'r1 = map_by_fd(3) ll'],
    ['18 61 00 00 02 00 00 00 00 00 00 00 10 00 00 00', 'r1 = map_val_by_idx(2) + 16 ll'],
    ['28 00 00 00 0c 00 00 00', 'r0 = *(u16 *)skb[12]'],
    ['50 10 00 00 0e 00 00 00', 'r0 = *(u8 *)skb[r1 + 14]'],
  ];
  for (const [bytes, text] of cases) {
    assert.deepEqual(disassemble(hex(bytes)), [text], bytes);
    assert.equal(toHex(encodeProgram(assemble(text))), bytes, text);
  }
});

test('decode/encode fields and lddw halves', () => {
  const [a, b] = decodeProgram(hex('18 0a 00 00 78 56 34 12 00 00 00 00 ef cd ab 89 95 00 00 00 00 00 00 00'));
  assert.deepEqual(a, { opcode: 0x18, dst: 10, src: 0, off: 0, imm: 0x12345678, imm64: 0x89abcdef12345678n });
  assert.deepEqual(b, ins(0x95));
  const neg = decodeProgram(hex('b7 01 00 80 ff ff ff ff'))[0]!;
  assert.equal(neg.off, -32768);
  assert.equal(neg.imm, -1);
  assert.deepEqual(describe(ins(0xbf, 1, 2, 16)), { kind: 'alu', op: 'movsx', width: 64, source: 'reg', from: 16 });
  assert.deepEqual(describe(ins(0xdb, 1, 2, 0, 0xa1)), { kind: 'atomic', op: 'xor', fetch: true, width: 64 });
  assert.deepEqual(describe(ins(0x06, 0, 0, 0, 7)), { kind: 'ja', op: 'ja', width: 32 });
  // lddw without imm64 zero-extends imm.
  assert.equal(toHex(encodeProgram([ins(0x18, 1, 0, 0, -1)])), '18 01 00 00 ff ff ff ff 00 00 00 00 00 00 00 00');
  assert.throws(() => encodeProgram([ins(0xb7, 16)]), /dst 16 does not fit/);
  assert.throws(() => encodeProgram([ins(0xb7, 0, 0, 0, 2 ** 31)]), /imm 2147483648/);
});

test('every valid opcode/size/mode combination round-trips bytes → insns → text → insns → bytes', () => {
  const valid = generateValid();
  const opcodes = new Set(valid.map((i) => i.opcode));
  // ALU 27 + ALU64 26 + JMP 25 + JMP32 23 + LD 7 + LDX 7 + ST 4 + STX 6, counted from the RFC tables.
  assert.equal(opcodes.size, 125);
  const bytes = encodeProgram(valid);
  const decoded = decodeProgram(bytes);
  assert.equal(decoded.length, valid.length);
  const text = disassemble(decoded);
  const reassembled = assemble(text.join('\n'));
  assert.deepEqual(disassemble(reassembled), text);
  assert.equal(Buffer.compare(Buffer.from(encodeProgram(reassembled)), Buffer.from(bytes)), 0);
  // Text is canonical: each instruction's text assembles back to exactly its own bytes.
  for (const insn of valid.slice(0, 2000)) {
    assert.equal(toHex(encodeProgram(assemble(formatInsn(insn)))), toHex(encodeProgram([insn])), formatInsn(insn));
  }
  assert.ok(valid.length > 5000, `only ${valid.length} instructions generated`);
});

test('invalid encodings are rejected with precise messages and indices', () => {
  const reject = (insn: BpfInsn, re: RegExp) => assert.throws(() => describe(insn, 4), (e: unknown) => {
    assert.ok(e instanceof InvalidInstructionError);
    assert.equal(e.index, 4);
    assert.match(e.message, re);
    return true;
  });
  reject(ins(0xb7, 11), /instruction 4 \(opcode 0xb7\): bad dst register r11/);
  reject(ins(0xbf, 1, 12), /bad src register r12/);
  reject(ins(0xe7, 1), /reserved ALU operation 0xe0/);
  reject(ins(0xf4, 1), /reserved ALU operation 0xf0/);
  reject(ins(0x8f, 1, 2), /NEG with source X/);
  reject(ins(0xdf, 1, 0, 0, 16), /END with source X in ALU64/);
  reject(ins(0xd4, 1, 0, 0, 8), /byte swap width must be 16, 32 or 64/);
  reject(ins(0xbc, 1, 2, 32), /bad MOVSX offset 32 for 32-bit move/);
  reject(ins(0xbf, 1, 2, 4), /bad MOVSX offset 4/);
  reject(ins(0x37, 1, 0, 2, 3), /bad offset 2 for div/);
  reject(ins(0xb7, 1, 3, 0, 1), /unused src field must be 0/);
  reject(ins(0xe5), /reserved JMP operation 0xe0/);
  reject(ins(0x86, 0, 0, 0, 1), /CALL in JMP32/);
  reject(ins(0x96), /EXIT in JMP32/);
  reject(ins(0x85, 0, 3, 0, 1), /unknown call type src=3/);
  reject(ins(0x0d, 0, 1, 1), /JA with source X/);
  reject(ins(0x00, 1, 0, 0, 1), /LD IMM requires size DW/);
  reject({ ...ins(0x18, 1, 7), imm64: 1n }, /unknown lddw pseudo source 7/);
  reject({ ...ins(0x18, 1, 1, 0, 3), imm64: (1n << 32n) | 3n }, /upper immediate must be 0 for lddw map_by_fd/);
  reject(ins(0x38, 0, 0, 0, 1), /legacy packet load with size DW/);
  reject(ins(0x99, 1, 2), /sign-extending load of size DW/);
  reject(ins(0xa1, 1, 2), /reserved mode 0xa0 for LDX/);
  reject(ins(0x72, 1, 2), /unused src field/);
  reject(ins(0xd3, 1, 2), /atomic operation must be size W or DW/);
  reject(ins(0xdb, 1, 2, 0, 0xe0), /unknown atomic operation imm=0xe0/);
  reject(ins(0xdb, 1, 2, 0, 0x10), /unknown atomic operation imm=0x10/);
});

test('bad programs: truncated lddw, bad second slot, ragged length; disassembler reports the slot', () => {
  assert.throws(() => decodeProgram(hex('95 00 00 00 00 00 00 00 18 01 00 00 01 00 00 00')), /instruction 1 \(opcode 0x18\): truncated lddw/);
  assert.throws(() => decodeProgram(hex('18 01 00 00 01 00 00 00 95 00 00 00 00 00 00 00')), /instruction 1 \(opcode 0x95\): bad lddw second slot/);
  assert.throws(() => decodeProgram(hex('18 01 00 00 01 00 00 00 00 02 00 00 00 00 00 00')), /bad lddw second slot/);
  assert.throws(() => decodeProgram(hex('95 00 00')), /length 3 is not a multiple of 8/);
  // Slot numbering counts both halves of lddw.
  assert.throws(
    () => disassemble(hex('18 01 00 00 01 00 00 00 00 00 00 00 00 00 00 00 8f 01 00 00 00 00 00 00')),
    (e: unknown) => e instanceof InvalidInstructionError && e.index === 2 && /NEG with source X/.test(e.message),
  );
});

test('assembler: labels, comments, number formats', () => {
  const prog = assemble(`
    ; full-line comment
    start:                      # label alone
      r1 = 0x10                 // hex
      r2 = -0x10
      r3 = 0xffffffff           ; unsigned spelling of -1
      r4 = 0xdeadbeefcafe ll
      if r1 == 0 goto out
      call func
      gotol start
    loop: r1 -= 1
      if w1 s> -3 goto loop
      goto out
    func: r0 = 0
      exit
    out:
      exit
  `);
  assert.deepEqual(disassemble(prog), [
    'r1 = 16', 'r2 = -16', 'r3 = -1', 'r4 = 0xdeadbeefcafe ll',
    'if r1 == 0 goto +7', // lddw occupies two slots
    'call pc+4', 'gotol -8', 'r1 -= 1', 'if w1 s> -3 goto -2', 'goto +2', 'r0 = 0', 'exit', 'exit',
  ]);
  assert.equal(assemble('R1 = 1 ; upper case').length, 1);
});

test('assembler errors carry line numbers', () => {
  const err = (src: string, re: RegExp) => assert.throws(() => assemble(src), (e: unknown) => {
    assert.ok(e instanceof AsmError, String(e));
    assert.match(String(e), re);
    return true;
  });
  err('r0 = 0\nexit\nr11 = 1', /^AsmError: line 3: unknown register r11$/);
  err('r0 = 0\n\nr1 += w2', /line 3: expected r2, got w2/);
  err('r1 = 0x100000000', /line 1: immediate 0x100000000 out of range/);
  err('r1 = *(u32 *)(r10 - 40000)', /line 1: offset -40000 out of range/);
  err('x:\nx: exit', /line 2: duplicate label x/);
  err('exit\ngoto nowhere', /line 2: undefined label nowhere/);
  err('w1 = (s32)w2', /line 1: bad MOVSX offset 32/);
  err('r1 = cmpxchg_64(r1 + 0, r1, r2)', /line 1: cmpxchg must use r0/);
  err('r1 = atomic_fetch_add((u64 *)(r1 + 0), r2)', /result register must equal/);
  err('r1 = be16 r2', /same register/);
  err('exit\nmov r1, 2', /line 2: cannot parse 'mov r1, 2'/);
  err('r1 = 0x1ffffffffffffffff ll', /out of range/);
});
