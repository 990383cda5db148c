/**
 * Both verifiers on real clang output: test/bpf/ranges.c compiled with `clang -O2 -target bpf`
 * for -mcpu=v1 (u32 counters zero-extended by shifts) and v3 (ALU32/JMP32). The safe programs
 * verify in src/bpf/verifier.ts and in the guest's C verifier and compute what a reference here
 * computes, in the TS interpreter and in the C runtime; each unsafe variant is refused by both at
 * the same load. Prints each program's verifier statistics. Skips without clang for BPF.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { clangBpfAvailable } from '../../src/bench/bpf-programs.js';
import { loadBpfObject } from '../../src/bpf/elf.js';
import { HostProgram } from '../../src/bpf/host-runtime.js';
import { encodeImage, imageFromObject, verifyImage, type BpfImage } from '../../src/bpf/image.js';
import { describe as describeInsn, slotCount, type BpfInsn } from '../../src/bpf/isa.js';
import { buildRuntimeHost, hex, parseVerdicts, runHost, type RuntimeHost } from '../helpers/bpf-runtime-host.js';

const SOURCE = fileURLToPath(new URL('../../../test/bpf/ranges.c', import.meta.url));
const CTX_LEN = 64;
const HOOK = { id: 0, name: 'ranges', contextSize: CTX_LEN, description: 'test/bpf/ranges.c' };

// ---- what each safe program returns for a context
const le32 = (c: Uint8Array, o: number) => new DataView(c.buffer, c.byteOffset).getUint32(o, true);
const M64 = (1n << 64n) - 1n;
const REFERENCE: Record<string, (c: Uint8Array) => bigint> = {
  sum_n: (c) => {
    let s = 0n;
    for (let i = 0; i < Math.min(le32(c, 0), 56); i++) s += BigInt(c[8 + i]!);
    return s;
  },
  parse_be: (c) => {
    let s = BigInt(((c[0]! << 24) | (c[1]! << 16) | (c[2]! << 8) | c[3]!) >>> 0);
    const len = ((c[4]! << 8) | c[5]!) & 0x7f;
    for (let i = 0; i < Math.min(len, 120); i++) s = (s * 31n + BigInt(c[8 + (i & 7)]!)) & M64;
    return s;
  },
  nibble_field: (c) => BigInt(le32(c, (c[6]! >> 4) << 2)),
  histogram: (c) => {
    const v = new Uint8Array(64);
    let s = 0n;
    for (let i = 0; i < 16; i++) {
      v[(c[i]! >> 2) & 63]++;
      s += BigInt(v[(c[16 + i]! ^ 0x5a) & 63]!);
    }
    return s;
  },
  classes: (c) => {
    const n = [0n, 0n, 0n, 0n];
    for (const b of c.subarray(16)) {
      const l = b | 0x20;
      n[b >= 0x30 && b <= 0x39 ? 0 : l >= 0x61 && l <= 0x7a ? 1 : b === 0x20 || b === 0x0a || b === 0x09 ? 2 : 3]!++;
    }
    return (n[0]! << 48n) | (n[1]! << 32n) | (n[2]! << 16n) | n[3]!;
  },
};
const UNSAFE = ['bad_sum_n', 'bad_nibble_field', 'bad_histogram', 'bad_classes'];

/** Contexts: a parsed header (n = 40, len = 0x2d, nibble 0xb) and 48 bytes of text; then extremes. */
function contexts(): Uint8Array[] {
  const text = new Uint8Array(CTX_LEN);
  text.set([40, 0, 0, 0, 0x01, 0x2d, 0xb7, 0x13, 1, 2, 3, 4, 5, 6, 7, 8]);
  text.set(new TextEncoder().encode('GET /x?id=4711 HTTP/1.1\nHost: a.example\tUA: 9z!'.padEnd(48, '.')), 16);
  return [text, new Uint8Array(CTX_LEN), new Uint8Array(CTX_LEN).fill(0xff)];
}

let dir: string;
let host: RuntimeHost | undefined;
const images = new Map<string, Map<string, BpfImage>>();

before(() => {
  if (!clangBpfAvailable().ok) return;
  dir = mkdtempSync(path.join(os.tmpdir(), 'kvmtalk-ranges-'));
  for (const cpu of ['v1', 'v3']) {
    const object = path.join(dir, `ranges-${cpu}.o`);
    const r = spawnSync('clang', ['-O2', '-g0', '-target', 'bpf', `-mcpu=${cpu}`, '-Wall', '-Werror', '-c', SOURCE, '-o', object], { encoding: 'utf8' });
    assert.equal(r.status, 0, `clang -mcpu=${cpu} failed:\n${r.stderr}`);
    const obj = loadBpfObject(readFileSync(object));
    images.set(cpu, new Map(obj.programs.map((p) => [p.name, imageFromObject(obj, p.name)])));
  }
  host = buildRuntimeHost();
});
after(() => {
  host?.remove();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

for (const cpu of ['v1', 'v3']) {
  describe(`clang -O2 -target bpf -mcpu=${cpu}`, () => {
    test('safe programs verify in both verifiers and compute the reference values in both runtimes', (t) => {
      const c = clangBpfAvailable();
      if (!c.ok) {
        console.log(`SKIP (no clang for -target bpf): ${c.reason}`);
        return t.skip(c.reason);
      }
      const progs = images.get(cpu)!;
      const names = Object.keys(REFERENCE);
      const verdicts = parseVerdicts(runHost(host!.exe, names.map((n) => `verify ${CTX_LEN} ${hex(encodeImage(progs.get(n)!))}`)));
      names.forEach((name, i) => {
        const v = verifyImage(progs.get(name)!, HOOK);
        assert.ok(v.ok, `${name}: TS verifier: ${JSON.stringify(!v.ok && v.errors)}`);
        assert.ok(verdicts[i]!.ok, `${name}: C verifier: ${verdicts[i]!.pc} ${verdicts[i]!.reason}`);
        console.log(`# ${cpu} ${name}: ${JSON.stringify(v.stats)}`);
      });
      for (const ctx of contexts()) {
        // one harness process per context, so histogram's map starts at zero like HostProgram's
        const ran = runHost(host!.exe, names.map((n) => `run ${CTX_LEN} ${hex(encodeImage(progs.get(n)!))} ${hex(ctx)}`));
        names.forEach((name, i) => {
          const want = REFERENCE[name]!(ctx);
          assert.equal(new HostProgram(progs.get(name)!).run(ctx.slice()), want, `${name} in the TS interpreter`);
          assert.equal(ran[i]!.split(' ').slice(0, 2).join(' '), `ok ${want}`, `${name} in the C runtime`);
        });
      }
    });

    test('unsafe variants are refused by both verifiers at the same out-of-bounds access', (t) => {
      const c = clangBpfAvailable();
      if (!c.ok) return t.skip(c.reason);
      const progs = images.get(cpu)!;
      const verdicts = parseVerdicts(runHost(host!.exe, UNSAFE.map((n) => `verify ${CTX_LEN} ${hex(encodeImage(progs.get(n)!))}`)));
      UNSAFE.forEach((name, i) => {
        const image = progs.get(name)!;
        const v = verifyImage(image, HOOK);
        assert.ok(!v.ok, `${name} accepted by the TS verifier`);
        const e = v.errors[0]!;
        assert.match(e.reason, /(context|value) access out of bounds/, name);
        assert.ok(!verdicts[i]!.ok, `${name} accepted by the C verifier`);
        assert.equal(verdicts[i]!.pc, e.pc, `${name}: C says ${verdicts[i]!.reason}; TS ${e.reason}`);
        assert.match(verdicts[i]!.reason, /(context|value) access out of bounds/, name);
        // the pc is the load itself
        assert.equal(describeInsn(slotInsn(image, e.pc), e.pc).kind, 'ldx', `${name}: pc ${e.pc} is ${e.insn}`);
      });
    });
  });
}

/** The instruction at a slot index (lddw takes two). */
function slotInsn(image: BpfImage, pc: number): BpfInsn {
  let slot = 0;
  for (const insn of image.insns) {
    if (slot === pc) return insn;
    slot += slotCount(insn);
  }
  throw new Error(`no instruction at slot ${pc}`);
}
