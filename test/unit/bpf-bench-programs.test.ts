/**
 * The eBPF benchmark's programs (bench/bpf/*.c) as real clang output: src/bpf/elf.ts loads both
 * entry points of each, src/bpf/verifier.ts accepts the kvmtalk one for a 128-byte context, the TS
 * interpreter (src/bpf/host-runtime.ts) computes the values a reference computation in this file
 * expects, and the Linux kernel (src/bpf/kernel.ts, XDP + BPF_PROG_TEST_RUN) agrees on every
 * result. Skips with a printed reason without clang (for the BPF target) or, for the kernel
 * part, without permission to use bpf(2).
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { BENCH_PACKET_HOOK, BENCH_PROGRAMS, benchPacket, clangBpfAvailable, loadBenchProgram, type CompiledBenchProgram } from '../../src/bench/bpf-programs.js';
import { verifierStressProgram } from '../../src/bench/bpf.js';
import { GUEST_HELPERS } from '../../src/bpf/hooks.js';
import { HostProgram } from '../../src/bpf/host-runtime.js';
import { BpfImageError, verifyImage } from '../../src/bpf/image.js';
import { BpfRuntimeError } from '../../src/bpf/interpreter.js';
import { slotCount } from '../../src/bpf/isa.js';
import { verify } from '../../src/bpf/verifier.js';
import { KernelBpf, KernelBpfUnavailableError } from '../../src/bpf/kernel.js';

const PACKET = benchPacket();

function requireClang(t: TestContext): boolean {
  const c = clangBpfAvailable();
  if (c.ok) return true;
  console.log(`SKIP (no clang for -target bpf): ${c.reason}`);
  t.skip(c.reason);
  return false;
}

const programs = new Map<string, CompiledBenchProgram>();
function program(name: string): CompiledBenchProgram {
  let p = programs.get(name);
  if (!p) {
    p = loadBenchProgram(BENCH_PROGRAMS.find((x) => x.name === name)!);
    programs.set(name, p);
  }
  return p;
}

// ---- reference computations of what each program returns for PACKET
const u32 = (x: number) => x >>> 0;
function fnv(bytes: Uint8Array, h = 2166136261): number {
  for (const b of bytes) h = u32(Math.imul(h ^ b, 16777619));
  return h;
}
function parse(p: Uint8Array): number {
  let h = u32(2166136261 ^ ((p[36] << 8) | p[37]));
  for (const c of p.subarray(42)) {
    const lower = c | 0x20;
    const cls = c >= 0x30 && c <= 0x39 ? 1 : lower >= 0x61 && lower <= 0x7a ? 2 : c === 0x20 || c === 0x0a || c === 0x09 ? 3 : 4;
    h = u32(Math.imul(h ^ cls, 16777619));
  }
  return h;
}
function loop(p: Uint8Array): number {
  let x = BigInt((p[0] << 8) | p[1] | 1);
  for (let i = 0; i < 100; i++) {
    x = BigInt.asUintN(64, x ^ (x << 13n));
    x ^= x >> 7n;
    x = BigInt.asUintN(64, x ^ (x << 17n));
  }
  return Number(BigInt.asUintN(32, x ^ (x >> 32n)));
}
function hashMix(p: Uint8Array): number {
  const dv = new DataView(p.buffer, p.byteOffset);
  let sum = 0n;
  for (let i = 0; i < 8; i++) sum = BigInt.asUintN(64, sum + dv.getBigUint64(8 * i, true) * 3n);
  return Number(BigInt.asUintN(32, sum ^ (sum >> 32n)));
}
/** array_count after `runs` runs: the last of the first 16 bytes' counters (low nibble). */
function arrayCount(p: Uint8Array, runs: number): number {
  const last = p[15] & 15;
  return runs * [...p.subarray(0, 16)].filter((b) => (b & 15) === last).length;
}

const EXPECTED: Record<string, number> = {
  nop: 2,
  fnv: fnv(PACKET),
  parse: parse(PACKET),
  loop: loop(PACKET),
  array_count: arrayCount(PACKET, 1),
  hash_mix: hashMix(PACKET),
};

test('the benchmark packet is a UDP packet the parse program accepts', () => {
  assert.equal(PACKET.length, 128);
  assert.notEqual(EXPECTED.parse, 0);
  // every class occurs in the payload, so every branch is taken
  const payload = new TextDecoder().decode(PACKET.subarray(42));
  for (const re of [/\d/, /[a-z]/i, /[ \n\t]/, /[^\da-z \n\t]/i]) assert.match(payload, re);
});

for (const info of BENCH_PROGRAMS) {
  test(`bench/bpf ${info.file}.c: elf.ts loads both entry points; verified; TS interpreter returns the expected value`, (t) => {
    if (!requireClang(t)) return;
    const p = program(info.name);
    assert.deepEqual(p.kernel.maps, p.kvmtalk.maps);
    const host = new HostProgram(p.kvmtalk);
    const v = verifyImage(p.kvmtalk, BENCH_PACKET_HOOK);
    assert.ok(v.ok, `verifier: ${JSON.stringify(!v.ok && v.errors)}`);
    assert.equal(host.run(PACKET.slice()), BigInt(EXPECTED[info.name]!));
  });
}

test('array_count keeps its counters in the map between runs', (t) => {
  if (!requireClang(t)) return;
  const p = program('array_count');
  const host = new HostProgram(p.kvmtalk);
  for (let run = 1; run <= 3; run++) assert.equal(host.run(PACKET.slice()), BigInt(arrayCount(PACKET, run)));
  const key = new Uint8Array([PACKET[0] & 15, 0, 0, 0]);
  const count = [...PACKET.subarray(0, 16)].filter((b) => (b & 15) === key[0]).length;
  assert.equal(new DataView(host.lookup('counters', key)!.buffer).getBigUint64(0, true), BigInt(3 * count));
});

test('hash_mix leaves its map empty (every insert is deleted again)', (t) => {
  if (!requireClang(t)) return;
  const p = program('hash_mix');
  const host = new HostProgram(p.kvmtalk);
  host.run(PACKET.slice());
  assert.equal(host.run(PACKET.slice()), BigInt(EXPECTED.hash_mix!));
  for (let i = 0; i < 8; i++) assert.equal(host.lookup('flows', PACKET.slice(8 * i, 8 * i + 8)), undefined);
});

test('the Linux kernel (XDP, BPF_PROG_TEST_RUN) returns the same values as the TS interpreter', (t) => {
  if (!requireClang(t)) return;
  let kernel: KernelBpf | undefined;
  try {
    kernel = new KernelBpf();
    for (const info of BENCH_PROGRAMS) {
      const p = program(info.name);
      const prog = kernel.loadXdp(`${info.name}_xdp`, p.kernel);
      assert.equal(kernel.testRun(prog, PACKET, 1).retval, EXPECTED[info.name], info.name);
      if (info.name === 'array_count') assert.equal(kernel.testRun(prog, PACKET, 4).retval, arrayCount(PACKET, 5));
    }
  } catch (e) {
    if (!(e instanceof KernelBpfUnavailableError)) throw e;
    console.log(`SKIP (bpf(2) not permitted): ${e.message}`);
    t.skip(e.message);
  } finally {
    kernel?.close();
  }
});

test('KernelBpf: a program the kernel refuses gives its verifier log', (t) => {
  let kernel: KernelBpf | undefined;
  try {
    kernel = new KernelBpf();
    // r0 is read before it is written
    const exit = { opcode: 0x95, dst: 0, src: 0, off: 0, imm: 0 };
    assert.throws(() => kernel!.loadXdp('bad', { maps: [], insns: [exit] }), /kernel rejected 'bad' \(EACCES\):[^]*R0 !read_ok/);
    assert.throws(() => kernel!.loadXdp('nomap', { maps: [], insns: [{ opcode: 0x18, dst: 1, src: 1, off: 0, imm: 0, imm64: 0n }, exit] }), /refers to map 0/);
  } catch (e) {
    if (!(e instanceof KernelBpfUnavailableError)) throw e;
    console.log(`SKIP (bpf(2) not permitted): ${e.message}`);
    t.skip(e.message);
  } finally {
    kernel?.close();
  }
});

test('the verifier benchmark program is 4,096 slots long and verifies', () => {
  const prog = verifierStressProgram();
  assert.equal(prog.reduce((n, i) => n + slotCount(i), 0), 4096);
  const v = verify(prog, { contextSize: PACKET.length, helpers: [...GUEST_HELPERS] });
  assert.ok(v.ok, JSON.stringify(!v.ok && v.errors));
  assert.ok(v.stats.processed >= 4096);
});

test('HostProgram refuses an image the guest would refuse, and faults stay BpfRuntimeErrors', () => {
  const exit = { opcode: 0x95, dst: 0, src: 0, off: 0, imm: 0 };
  assert.throws(() => new HostProgram({ maps: [{ name: 'bad name!', type: 2, keySize: 4, valueSize: 8, maxEntries: 1 }], insns: [exit] }), BpfImageError);
  assert.throws(() => new HostProgram({ maps: [], insns: [{ opcode: 0x18, dst: 1, src: 1, off: 0, imm: 3, imm64: 3n }, exit] }), BpfImageError);
  // r0 = *(u64 *)(r1 + 200): outside the 128-byte context
  const oob = new HostProgram({ maps: [], insns: [{ opcode: 0x79, dst: 0, src: 1, off: 200, imm: 0 }, exit] });
  assert.throws(() => oob.run(PACKET.slice()), BpfRuntimeError);
});
