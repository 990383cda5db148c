import { test } from 'node:test';
import assert from 'node:assert/strict';
import { disassemble, disassembleToString, formatInstruction } from '../../src/vmm/disassemble.js';

const b = (...xs: number[]) => Uint8Array.from(xs);

test('ud2 in 64-bit mode', () => {
  const [insn, ...rest] = disassemble(b(0x0f, 0x0b), 0x401000n, 64);
  assert.equal(rest.length, 0);
  assert.equal(insn!.ip, 0x401000n);
  assert.equal(insn!.text, 'ud2');
  assert.equal(insn!.invalid, false);
  assert.deepEqual([...insn!.bytes], [0x0f, 0x0b]);
  assert.equal(formatInstruction(insn!), '0x401000: 0f 0b             ud2');
});

test('16-bit serial output sequence decodes in AT&T syntax with lowercase hex', () => {
  const code = b(0xba, 0xf8, 0x03, 0x00, 0xd8, 0x04, 0x30, 0xee, 0xb0, 0x0a, 0xee, 0xf4);
  const out = disassemble(code, 0x7c00n, 16, 100);
  assert.deepEqual(
    out.map((i) => [i.ip, i.text]),
    [
      [0x7c00n, 'mov $0x3f8,%dx'],
      [0x7c03n, 'add %bl,%al'],
      [0x7c05n, 'add $0x30,%al'],
      [0x7c07n, 'out %al,%dx'],
      [0x7c08n, 'mov $0xa,%al'],
      [0x7c0an, 'out %al,%dx'],
      [0x7c0bn, 'hlt'],
    ],
  );
  assert.equal(out.reduce((n, i) => n + i.bytes.length, 0), code.length);
});

test('the same bytes differ by bitness', () => {
  const code = b(0xb8, 0x01, 0x00, 0x00, 0x00);
  assert.equal(disassemble(code, 0n, 32)[0]!.text, 'mov $0x1,%eax');
  assert.deepEqual(disassemble(code, 0n, 16, 2).map((i) => i.text), ['mov $0x1,%ax', 'add %al,(%bx,%si)']);
});

test('maxInstructions limits output; branch targets use ip', () => {
  const code = b(0x90, 0x90, 0xe8, 0x00, 0x00, 0x00, 0x00);
  assert.equal(disassemble(code, 0x1000n, 64).length, 1);
  assert.equal(disassemble(code, 0x1000n, 64, 2).length, 2);
  assert.equal(disassemble(code, 0x1000n, 64, 0).length, 0);
  assert.equal(disassemble(code, 0x1000n, 64, 10)[2]!.text, 'call 0x1007');
  assert.deepEqual(disassemble(new Uint8Array(0), 0n, 64, 5), []);
});

test('invalid and truncated bytes are flagged as (bad)', () => {
  const out = disassemble(b(0x06, 0x0f, 0x0b), 0x2000n, 64, 5); // push %es does not exist in long mode
  assert.equal(out.length, 2);
  assert.deepEqual(
    { ip: out[0]!.ip, text: out[0]!.text, invalid: out[0]!.invalid, bytes: [...out[0]!.bytes] },
    { ip: 0x2000n, text: '(bad)', invalid: true, bytes: [0x06] },
  );
  assert.equal(out[1]!.text, 'ud2');
  assert.equal(out[1]!.ip, 0x2001n);

  const truncated = disassemble(b(0x48, 0x8b), 0n, 64, 5); // mov with its modrm missing
  assert.ok(truncated.length >= 1);
  assert.ok(truncated.every((i) => i.invalid && i.text === '(bad)'));
  assert.equal(truncated.reduce((n, i) => n + i.bytes.length, 0), 2);
  assert.equal(formatInstruction(disassemble(b(0x06), 0xffn, 64)[0]!), '0xff: 06                (bad)');
});

test('returned bytes are copies, not views of guest memory', () => {
  const mem = b(0x0f, 0x0b);
  const [insn] = disassemble(mem, 0n, 64);
  mem[0] = 0xcc;
  assert.deepEqual([...insn!.bytes], [0x0f, 0x0b]);
});

test('disassembleToString joins formatted lines; repeated use keeps working', () => {
  const text = disassembleToString(b(0x90, 0xf4), 0x10n, 64, 2);
  assert.equal(text, '0x10: 90                nop\n0x11: f4                hlt');
  // crash reports call this repeatedly; wasm objects must be freed/reused, not accumulated
  for (let i = 0; i < 20000; i++) disassemble(b(0x0f, 0x0b, 0x90), BigInt(i), 64, 2);
  assert.equal(disassemble(b(0x0f, 0x0b), 1n, 64)[0]!.text, 'ud2');
});

test('rejects unsupported bitness at runtime', () => {
  assert.throws(() => disassemble(b(0x90), 0n, 8 as unknown as 64), /bitness must be 16, 32 or 64/);
});
