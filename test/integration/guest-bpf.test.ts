/**
 * The guest eBPF runtime in a real guest (guest/tests/bpf-runtime.c): the host hands it KTBP
 * images through a user hypercall, the guest loads and runs them with kt_bpf_prog_run and
 * kt_bpf_prog_interpret and reports the r0s, which must match src/bpf/interpreter.ts; a program
 * the guest verifier refuses comes back with its pc; a counter in an array map keeps its state
 * between runs; and the host finds the map directory and the counter's value in guest memory.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { assemble } from '../../src/bpf/asm.js';
import { encodeImage, type ImageMap } from '../../src/bpf/image.js';
import { BpfInterpreter } from '../../src/bpf/interpreter.js';
import { encodeProgram } from '../../src/bpf/isa.js';
import { bootGuest, requireKvm } from '../helpers/kvm.js';

const CTX = new Uint8Array(new Uint32Array([0x11223344, 5, 6, 7]).buffer);
const HITS: ImageMap = { name: 'hits', type: 2, keySize: 4, valueSize: 8, maxEntries: 2 };

const PURE = [
  // arithmetic on the context (also the affinity hook's program)
  'r0 = *(u32 *)(r1 + 0)\nr2 = *(u32 *)(r1 + 4)\nr0 *= r2\nr3 = *(u16 *)(r1 + 2)\nr0 ^= r3\nr0 += 7\nexit',
  // a bounded loop, 32-bit ops, signed division, a byte swap and the stack
  'r6 = r1\nr1 = 0\nr0 = 0\nl: r0 += r1\nr1 += 1\nif r1 < 100 goto l\nw0 *= -3\nr2 = -7\nr0 s/= r2\n*(u64 *)(r10 - 8) = r0\nr0 = be16 r0\nr3 = *(u64 *)(r10 - 8)\nr0 += r3\nexit',
];
const COUNTER = `
  *(u32 *)(r10 - 4) = 1
  r2 = r10
  r2 += -4
  r1 = map_by_fd(0) ll
  call 1
  if r0 == 0 goto none
  r1 = 1
  lock *(u64 *)(r0 + 0) += r1
  r0 = *(u64 *)(r0 + 0)
  exit
none:
  r0 = 99
  exit`;
const REFUSED = 'r0 = 1\nr0 += r3\nexit';
// Array lookups the JIT inlines: index max_entries - 1 (found: a marker goes 8 bytes into it, so
// the host sees the stride of 16 for 12-byte values), max_entries and 0x11223344 (both NULL).
const GRID: ImageMap = { name: 'grid', type: 2, keySize: 4, valueSize: 12, maxEntries: 3 };
const lookupKey = (key: string) => `*(u32 *)(r10 - 4) = ${key}\nr2 = r10\nr2 += -4\nr1 = map_by_fd(0) ll\ncall 1`;
const ARRAY_EDGES = `
  r6 = *(u32 *)(r1 + 0)
  r7 = 0
  ${lookupKey('2')}
  if r0 == 0 goto k3
  r7 |= 1
  r1 = 0xabcd1234
  *(u32 *)(r0 + 8) = r1
k3:
  ${lookupKey('3')}
  if r0 == 0 goto big
  r7 |= 2
big:
  ${lookupKey('r6')}
  if r0 == 0 goto out
  r7 |= 4
out:
  r0 = r7
  exit`;

test('guest eBPF runtime: images from the host run in the guest, r0s and maps checked from the host', async (t) => {
  if (!requireKvm(t)) return;
  const images = [
    ...PURE.map((s) => encodeImage({ maps: [], insns: assemble(s) })),
    encodeImage({ maps: [HITS], insns: assemble(COUNTER) }),
    encodeImage({ maps: [], insns: assemble(REFUSED) }),
    encodeImage({ maps: [GRID], insns: assemble(ARRAY_EDGES) }),
  ];
  let directory: { magic: number; count: number; names: string[]; hits: bigint; grid: string } | undefined;
  const r = await bootGuest('tests', 'bpf-runtime', {}, {}, {
    setup: (vm) => {
      vm.handleHypercall(256, (c) => {
        const img = images[Number(c.a0)];
        if (!img) return 0;
        if (img.length > Number(c.a2)) return -7;
        c.memory.write(c.a1, img);
        return img.length;
      });
      vm.handleHypercall(257, (c) => {
        const at = c.a0;
        const count = c.memory.readU32(at + 12n);
        const names: string[] = [];
        let hits = -1n;
        let grid = '';
        for (let i = 0n; i < BigInt(Math.min(count, 64)); i++) {
          const e = at + 64n + 64n * i;
          const name = c.memory.readString(e, 16).replace(/\0+$/, '');
          names.push(name);
          if (name === 'hits') hits = c.memory.readU64(c.memory.readU64(e + 32n) + 8n); // value 1, stride 8
          if (name === 'grid') grid = Buffer.from(c.memory.read(c.memory.readU64(e + 32n), 48)).toString('hex');
        }
        directory = { magic: c.memory.readU32(at), count, names, hits, grid };
        return 0;
      });
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
  assert.match(r.console, /bpf-runtime: 0 failures/);
  for (const i of [0, 1, 2, 4]) assert.match(r.console, new RegExp(`image ${i}: jitted`), 'the JIT compiled it');
  const values = r.events.values.map((v) => v.value);
  const ts = (s: string) => new BpfInterpreter(encodeProgram(assemble(s))).run({ memory: CTX.slice() }).r0;
  const want = [
    ...PURE.flatMap((s) => [0n, ts(s), ts(s)]),
    0n, 1n, 2n, // the counter: run, then interpreted, sharing the map
    BigInt.asUintN(64, -22n), 1n, // refused: r3 read before it is written, at pc 1
    0n, 1n, 1n, // array edges: only index 2 is found, by the JIT's inlined lookup and the interpreter
    ts(PURE[0]!), // the affinity hook
  ];
  assert.deepEqual(values, want, r.console);
  const grid = Buffer.alloc(48);
  grid.writeUInt32LE(0xabcd1234, 2 * 16 + 8); // value 2 starts at 2 × round_up(12, 8)
  assert.deepEqual(directory, { magic: 0x4d42544b, count: 2, names: ['hits', 'grid'], hits: 2n, grid: grid.toString('hex') });
  console.log(`# ${r.console.trim().split('\n').join('\n# ')}`);
});
