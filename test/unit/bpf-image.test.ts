import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { findHook, BPF_HOOKS, UnknownHookError } from '../../src/bpf/hooks.js';
import {
  BpfImageError, IMAGE_HEADER_SIZE, IMAGE_MAP_SIZE, decodeImage, encodeImage, imageFromAssembly, imageFromObject, verifyImage,
} from '../../src/bpf/image.js';
import { assemble } from '../../src/bpf/asm.js';
import { rng } from '../helpers/rng.js';

const COUNTER = `
.map counts array 4 8 4      ; per-CPU-ish counters
  r6 = r1
  r1 = 0
  *(u32 *)(r10 - 4) = r1
  r2 = r10
  r2 += -4
  r1 = map(counts) ll
  call 1
  if r0 == 0 goto out
  r1 = 1
  lock *(u64 *)(r0 + 0) += r1
out:
  r0 = *(u32 *)(r6 + 4)
  exit
`;

describe('KTBP images', () => {
  it('assembles maps and map references, and round-trips byte for byte', () => {
    const image = imageFromAssembly(COUNTER);
    assert.deepEqual(image.maps, [{ name: 'counts', type: 2, keySize: 4, valueSize: 8, maxEntries: 4 }]);
    const lddw = image.insns.find((i) => i.opcode === 0x18)!;
    assert.equal(lddw.src, 1);
    assert.equal(lddw.imm, 0);
    const bytes = encodeImage(image);
    assert.equal(bytes.length, IMAGE_HEADER_SIZE + IMAGE_MAP_SIZE + 8 * 13);
    assert.deepEqual([...bytes.subarray(0, 4)], [0x4b, 0x54, 0x42, 0x50]); // "KTBP"
    assert.deepEqual(encodeImage(decodeImage(bytes)), bytes);
  });

  it('verifies against a hook: the affinity context is 16 bytes', () => {
    const image = imageFromAssembly(COUNTER);
    assert.equal(verifyImage(image, findHook('affinity')).ok, true);
    const tooFar = imageFromAssembly(COUNTER.replace('(r6 + 4)', '(r6 + 16)'));
    const r = verifyImage(tooFar, findHook('affinity'));
    assert.equal(r.ok, false);
    if (!r.ok) assert.match(r.errors[0]!.reason, /context access out of bounds/);
    assert.equal(verifyImage(tooFar, findHook('channel-rx')).ok, true); // 272-byte context
  });

  it('refuses unknown helpers for the guest runtime', () => {
    const r = verifyImage({ maps: [], insns: assemble('call 6\nr0 = 0\nexit') }, findHook('timer'));
    assert.equal(r.ok, false);
    if (!r.ok) assert.match(r.errors[0]!.reason, /unknown helper 6/);
  });

  it('names the line of a bad .map or an undeclared map', () => {
    assert.throws(() => imageFromAssembly('.map x stack 4 4 4\nr0 = 0\nexit'), /line 1: expected "\.map/);
    assert.throws(() => imageFromAssembly('r1 = map(nope) ll\nr0 = 0\nexit'), /line 1: map nope is not declared/);
    assert.throws(() => imageFromAssembly('.map a array 8 4 4\nr0 = 0\nexit'), /line 1: .*key_size must be 4/);
    assert.throws(() => imageFromAssembly('.map a hash 4 4 4\n.map a hash 4 4 4\nr0 = 0\nexit'), /line 2: map a declared twice/);
  });

  it('rejects malformed images with a reason', () => {
    const good = encodeImage(imageFromAssembly(COUNTER));
    const cases: [string, (b: Uint8Array) => Uint8Array, RegExp][] = [
      ['short', (b) => b.subarray(0, 10), /shorter than/],
      ['magic', (b) => { b[0] = 0; return b; }, /bad magic/],
      ['version', (b) => { b[4] = 2; return b; }, /version 2/],
      ['flags', (b) => { b[6] = 1; return b; }, /flags/],
      ['length', (b) => b.subarray(0, b.length - 8), /header says/],
      ['zero insns', (b) => { new DataView(b.buffer).setUint32(8, 0, true); return b; }, /insn_count 0/],
      ['too many maps', (b) => { new DataView(b.buffer).setUint32(12, 17, true); return b; }, /map_count 17/],
      ['map type', (b) => { b[IMAGE_HEADER_SIZE + 16] = 9; return b; }, /type 9/],
      ['name padding', (b) => { b[IMAGE_HEADER_SIZE + 10] = 0x41; return b; }, /NUL padded/],
      ['map index', (b) => {
        const at = IMAGE_HEADER_SIZE + IMAGE_MAP_SIZE + 8 * 5 + 4; // the lddw's imm
        new DataView(b.buffer).setInt32(at, 3, true);
        return b;
      }, /map index 3/],
    ];
    for (const [what, mutate, re] of cases) {
      assert.throws(() => decodeImage(mutate(good.slice())), (e: unknown) => e instanceof BpfImageError && re.test(e.message), what);
    }
  });

  it('never throws anything but BpfImageError on random mutations', () => {
    const rnd = rng(5);
    const good = encodeImage(imageFromAssembly(COUNTER));
    for (let i = 0; i < 3000; i++) {
      const b = good.slice(0, rnd() < 0.1 ? Math.floor(rnd() * good.length) : good.length);
      for (let k = 0; k < 1 + Math.floor(rnd() * 4); k++) if (b.length) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
      try {
        encodeImage(decodeImage(b));
      } catch (e) {
        assert.ok(e instanceof BpfImageError, `mutation ${i}: ${(e as Error).stack}`);
      }
    }
  });

  it('takes one program out of a clang object and converts map_by_idx loads', () => {
    const insns = assemble('r1 = map_by_idx(0) ll\nr0 = 0\nexit');
    const obj = {
      programs: [{ name: 'prog', section: 'xdp', insns }, { name: 'other', section: 'tc', insns }],
      maps: [{ name: 'm', type: 1, keySize: 8, valueSize: 8, maxEntries: 16, flags: 0 }],
    };
    assert.throws(() => imageFromObject(obj), /2 programs .*prog \(section xdp\)/);
    const image = imageFromObject(obj, 'xdp');
    assert.equal(image.insns[0]!.src, 1);
    assert.deepEqual(image.maps[0], { name: 'm', type: 1, keySize: 8, valueSize: 8, maxEntries: 16 });
  });

  it('finds hooks by name or id and lists them otherwise', () => {
    assert.equal(findHook('timer').id, 3);
    assert.equal(findHook(2).name, 'channel-rx');
    assert.throws(() => findHook('sched'), (e: unknown) => e instanceof UnknownHookError && /affinity \(1\)/.test((e as Error).message));
    assert.deepEqual(BPF_HOOKS.map((h) => h.id), [1, 2, 3]);
  });
});
