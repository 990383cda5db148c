/**
 * The bpf_conformance plugin: the hex parsing and outcome in-process, then `bpf
 * conformance-plugin` end to end in a child process driven the way the suite's runner drives it
 * (memory hex as argv[1] with bytes separated by two spaces, its options string as argv[2],
 * program hex on one line of stdin, r0 parsed from stdout as hex and compared on 32 bits), over
 * the `.data` files in test/fixtures/bpf (the suite's format, `-- raw` programs).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { conformanceHelpers, conformancePlugin, parseHexBytes } from '../../src/bpf/conformance.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const FIXTURES = path.join(ROOT, 'test/fixtures/bpf');
const BPF_CLI = pathToFileURL(path.join(ROOT, 'dist/src/cli/commands/bpf.js')).href;

/** A commander program holding only `bpf`, like src/cli/main.ts once the lead registers it. */
const SCRIPT = `
import { Command, CommanderError } from 'commander';
import { registerBpf } from ${JSON.stringify(BPF_CLI)};
const program = new Command('kvmtalk').exitOverride();
registerBpf(program);
try {
  await program.parseAsync(process.argv.slice(1), { from: 'user' });
} catch (e) {
  if (e instanceof CommanderError) process.exit(e.exitCode);
  process.stderr.write('kvmtalk: ' + String(e.message).split('\\n')[0] + '\\n');
  process.exit(1);
}
`;

function plugin(args: string[], stdin: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', SCRIPT, '--', 'bpf', 'conformance-plugin', ...args], {
    cwd: ROOT,
    input: stdin,
    encoding: 'utf8',
    timeout: 30_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The runner's encoding: two hex digits, then two spaces, per byte. */
const runnerHex = (bytes: Uint8Array) => [...bytes].map((b) => `${b.toString(16).padStart(2, '0')}  `).join('');

interface DataFile {
  program: Uint8Array;
  memory: Uint8Array;
  result?: bigint;
  error?: string;
}

/** The parts of the suite's `.data` format these fixtures use: `-- raw`, `-- mem`, `-- result`, `-- error`. */
function parseData(text: string): DataFile {
  let section = '';
  const raw: bigint[] = [];
  let mem = '';
  let result: bigint | undefined;
  let error: string | undefined;
  for (const line of text.split('\n').map((l) => l.replace(/\r$/, ''))) {
    if (line.includes('--')) {
      section = line.replace('--', '').trim();
      continue;
    }
    if (line.trim() === '' || line.startsWith('#')) continue;
    if (section === 'raw') for (const w of line.trim().split(/\s+/)) raw.push(BigInt(w));
    else if (section === 'mem') mem += ` ${line}`;
    else if (section === 'result') result = BigInt(line.trim());
    else if (section === 'error') error = line;
  }
  const program = new Uint8Array(raw.length * 8);
  raw.forEach((v, i) => new DataView(program.buffer).setBigUint64(i * 8, v, true));
  return { program, memory: parseHexBytes(mem, 'memory'), result, error };
}

describe('conformance plugin (in process)', () => {
  test('hex parsing accepts the runner\'s format, runs of pairs and 0x tokens', () => {
    assert.deepEqual([...parseHexBytes('b7  00  0a  ', 'x')], [0xb7, 0, 0x0a]);
    assert.deepEqual([...parseHexBytes(' b7000A\n95 0x1 ', 'x')], [0xb7, 0, 0x0a, 0x95, 1]);
    assert.deepEqual([...parseHexBytes('', 'x')], []);
    assert.throws(() => parseHexBytes('zz', 'memory'), /bad memory hex: "zz" is not hexadecimal/);
    assert.throws(() => parseHexBytes('abc', 'program'), /odd number of digits/);
  });
  test('prints r0 in lowercase hex without a prefix', () => {
    const out = conformancePlugin({ stdin: 'b7 00 00 00 ef be ad de 95 00 00 00 00 00 00 00\n' }); // mov r0, 0xdeadbeef (sign-extended)
    assert.deepEqual(out, { stdout: 'ffffffffdeadbeef\n', stderr: '', exitCode: 0 });
    assert.equal(conformancePlugin({ programHex: 'b7000000000000009500000000000000' }).stdout, '0\n');
  });
  test('r1/r2 are the memory and its length', () => {
    const out = conformancePlugin({ memoryHex: '01  02  03  ', stdin: runnerHex(Uint8Array.from([0xbf, 0x20, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])) });
    assert.equal(out.stdout, '3\n');
  });
  test('errors are one line on stderr with a non-zero exit', () => {
    for (const [input, re] of [
      [{ stdin: '' }, /^empty program/],
      [{ stdin: 'b7 00' }, /not a multiple of 8/],
      [{ stdin: 'xyz' }, /bad program hex/],
      [{ memoryHex: 'q', stdin: '95 00 00 00 00 00 00 00' }, /bad memory hex/],
      [{ stdin: '85 00 00 00 63 00 00 00 95 00 00 00 00 00 00 00' }, /unknown helper 99/],
      [{ stdin: '05 00 ff ff 00 00 00 00', maxInstructions: 50 }, /instruction limit exceeded/],
    ] as const) {
      const out = conformancePlugin(input);
      assert.equal(out.exitCode, 1);
      assert.equal(out.stdout, '');
      assert.match(out.stderr, re);
      assert.equal(out.stderr.trim().split('\n').length, 1);
    }
  });
  test('the suite\'s helpers', () => {
    const h = conformanceHelpers();
    const ctx = { pc: 0, read: () => new Uint8Array(), writable: () => new Uint8Array(), exit: () => {} };
    assert.equal(h.get(0)!(0x101n, 2n, 3n, 4n, 5n, ctx), 0x0102030405n);
    assert.equal(h.get(3)!(1n << 62n, 0n, 0n, 0n, 0n, ctx), 1n << 31n);
    assert.equal(h.get(3)!((1n << 64n) - 1n, 0n, 0n, 0n, 0n, ctx), (1n << 32n) - 1n);
    // strcmp_ext and memfrob through a real run: memory "ab\0ab\0"
    const mem = Uint8Array.from([0x61, 0x62, 0, 0x61, 0x62, 0]);
    // r6 = r1; r2 = r1 + 3; call 4; r7 = r0; r1 = r6; r2 = 2; call 1 (memfrob "ab"); r1 = r6; r2 = r6 + 3; call 4; exit
    const prog = [
      'bf 16 00 00 00 00 00 00', 'bf 12 00 00 00 00 00 00', '07 02 00 00 03 00 00 00', '85 00 00 00 04 00 00 00',
      'bf 07 00 00 00 00 00 00', 'bf 61 00 00 00 00 00 00', 'b7 02 00 00 02 00 00 00', '85 00 00 00 01 00 00 00',
      'bf 61 00 00 00 00 00 00', 'bf 62 00 00 00 00 00 00', '07 02 00 00 03 00 00 00', '85 00 00 00 04 00 00 00',
      '0f 70 00 00 00 00 00 00', '95 00 00 00 00 00 00 00',
    ].join(' ');
    const out = conformancePlugin({ memoryHex: runnerHex(mem), stdin: prog });
    // after memfrob: 'a'^42 = 0x4b, so strcmp gives 0x4b - 0x61 = -22; plus the first (equal) strcmp, 0
    assert.equal(out.stdout, `${BigInt.asUintN(64, -22n).toString(16)}\n`);
  });
});

describe('conformance plugin (child process)', () => {
  const files = readdirSync(FIXTURES).filter((f) => f.endsWith('.data')).sort();
  test('fixtures exist', () => assert.ok(files.length >= 5));
  for (const f of files) {
    test(f, () => {
      const d = parseData(readFileSync(path.join(FIXTURES, f), 'utf8'));
      assert.ok(d.program.length > 0);
      const r = plugin([runnerHex(d.memory), ''], `${runnerHex(d.program)}\n`);
      if (d.error !== undefined) {
        assert.notEqual(r.status, 0, r.stdout);
        assert.equal(r.stdout, '');
        assert.equal(r.stderr.trim(), d.error);
      } else {
        assert.equal(r.status, 0, r.stderr);
        assert.match(r.stdout, /^[0-9a-f]+\n$/);
        // the runner compares the low 32 bits
        assert.equal(BigInt(`0x${r.stdout.trim()}`) & 0xffff_ffffn, d.result! & 0xffff_ffffn, `${f}: got ${r.stdout}`);
      }
    });
  }
  test('--program instead of stdin, no memory argument, unknown suite options ignored', () => {
    const r = plugin(['--program', 'b7 00 00 00 07 00 00 00 95 00 00 00 00 00 00 00', '--interpret'], '');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, '7\n');
  });
  test('bad input is a one-line error', () => {
    const r = plugin(['zz'], '95 00 00 00 00 00 00 00\n');
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^bad memory hex: "zz" is not hexadecimal\n$/);
    const e = plugin([''], '\n');
    assert.equal(e.status, 1);
    assert.match(e.stderr, /^empty program/);
  });
});
