import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { GuestMapError, fnv1a32, readMapDirectory } from '../../src/bpf/guest-maps.js';

/** A directory laid out by hand from docs/bpf-runtime.md: an array map and a hash map. */
function buildDirectory(mem: GuestMemory, dir: number): void {
  const dv = new DataView(mem.bytes.buffer, mem.bytes.byteOffset);
  dv.setUint32(dir, 0x4d42544b, true);
  dv.setUint32(dir + 4, 1, true);
  dv.setUint32(dir + 8, 4, true);
  const entry = (i: number, name: string, type: number, key: number, value: number, max: number, data: number, size: number, buckets: number) => {
    const at = dir + 64 + 64 * i;
    mem.bytes.set(new TextEncoder().encode(name), at);
    dv.setUint32(at + 16, type, true);
    dv.setUint32(at + 20, key, true);
    dv.setUint32(at + 24, value, true);
    dv.setUint32(at + 28, max, true);
    dv.setBigUint64(at + 32, BigInt(data), true);
    dv.setBigUint64(at + 40, BigInt(size), true);
    dv.setUint32(at + 56, buckets, true);
  };
  entry(0, 'counts', 2, 4, 12, 4, 0x10000, 4 * 16, 0);
  entry(1, 'seen', 1, 6, 8, 4, 0x20000, 8 * (8 + 8 + 8), 8);
  dv.setUint32(dir + 12, 2, true);
}

const le32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);
const le64 = (v: bigint) => new Uint8Array(new BigUint64Array([v]).buffer);

describe('guest map directory (host side)', () => {
  const mem = GuestMemory.create(1 << 20);
  after(() => mem.close());
  buildDirectory(mem, 0x8000);
  const dv = new DataView(mem.bytes.buffer, mem.bytes.byteOffset);

  it('reads the directory and the array map in place, with an 8-byte stride', () => {
    const maps = readMapDirectory(mem, 0x8000n);
    assert.deepEqual(maps.map((m) => [m.info.name, m.info.type, m.size]), [['counts', 2, 4], ['seen', 1, 0]]);
    const counts = maps[0]!;
    dv.setUint32(0x10000 + 16, 7, true); // value 1 starts at stride round8(12) = 16
    assert.deepEqual([...counts.lookup(le32(1))!], [7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    counts.update(le32(3), new Uint8Array(12).fill(9));
    assert.equal(mem.bytes[0x10000 + 48], 9);
    assert.equal(counts.lookup(le32(4)), undefined);
    assert.throws(() => counts.update(le32(4), new Uint8Array(12)), /index out of range/);
    assert.throws(() => counts.delete(le32(0)), /cannot be deleted/);
    assert.throws(() => counts.lookup(new Uint8Array(3)), /key is 3 bytes/);
  });

  it('inserts into the hash map at the probe position the guest expects', () => {
    const seen = readMapDirectory(mem, 0x8000n)[1]!;
    const key = new TextEncoder().encode('abcdef');
    seen.update(key, le64(42n));
    const slot = fnv1a32(key) & 7;
    const at = 0x20000 + slot * 24;
    assert.equal(dv.getUint32(at, true), 1); // used
    assert.equal(dv.getUint32(at + 4, true), fnv1a32(key));
    assert.deepEqual(mem.bytes.subarray(at + 8, at + 14), key);
    assert.equal(dv.getBigUint64(at + 16, true), 42n);
    assert.equal(seen.size, 1);
    assert.throws(() => seen.update(key, le64(1n), 1), /key exists/);
    seen.update(key, le64(43n), 2);
    assert.deepEqual(seen.lookup(key), le64(43n));
    assert.equal(seen.delete(key), true);
    assert.equal(dv.getUint32(at, true), 2); // deleted, not emptied
    assert.equal(seen.lookup(key), undefined);
    assert.equal(seen.delete(key), false);
    assert.throws(() => seen.update(key, le64(1n), 2), /no such key/);
  });

  it('fills the hash map to max_entries and no further; entries() lists what is live', () => {
    const seen = readMapDirectory(mem, 0x8000n)[1]!;
    const keys = ['k1', 'k2', 'k3', 'k4'].map((k) => new TextEncoder().encode(k.padEnd(6, '_')));
    keys.forEach((k, i) => seen.update(k, le64(BigInt(i))));
    assert.throws(() => seen.update(new TextEncoder().encode('k5____'), le64(5n)), /full/);
    const got = seen.entries().map(([k, v]) => [new TextDecoder().decode(k), new DataView(v.buffer).getBigUint64(0, true)]);
    assert.deepEqual(got.sort(), [['k1____', 0n], ['k2____', 1n], ['k3____', 2n], ['k4____', 3n]]);
  });

  it('gives up on a lock the guest holds instead of hanging', () => {
    const seen = readMapDirectory(mem, 0x8000n)[1]!;
    dv.setUint32(0x8000 + 64 + 64 + 48, 1, true);
    assert.throws(() => seen.lookup(new Uint8Array(6)), /held its lock/);
    dv.setUint32(0x8000 + 64 + 64 + 48, 0, true);
  });

  it('refuses directories and entries that point anywhere they should not', () => {
    assert.throws(() => readMapDirectory(mem, 0n), /not published/);
    assert.throws(() => readMapDirectory(mem, 0x8004n), /misaligned/);
    assert.throws(() => readMapDirectory(mem, 0x9000n), /bad magic/);
    assert.throws(() => readMapDirectory(mem, BigInt(1 << 20)), /outside guest RAM/);
    const saved = mem.bytes.slice(0x8000, 0x8000 + 256);
    try {
      dv.setUint32(0x8000 + 12, 9, true);
      assert.throws(() => readMapDirectory(mem, 0x8000n), /claims 9 of 4/);
      dv.setUint32(0x8000 + 12, 2, true);
      dv.setBigUint64(0x8000 + 64 + 32, 0xffff_0000n, true);
      assert.throws(() => readMapDirectory(mem, 0x8000n), (e: unknown) => e instanceof GuestMapError && /outside guest RAM/.test((e as Error).message));
      mem.bytes.set(saved, 0x8000);
      dv.setUint32(0x8000 + 128 + 56, 6, true);
      assert.throws(() => readMapDirectory(mem, 0x8000n), /bad hash geometry/);
    } finally {
      mem.bytes.set(saved, 0x8000);
    }
  });
});

describe('kvmtalk bpf maps: arguments and listing', () => {
  it('parses keys and values as hex or little-endian numbers, and refuses the rest', async () => {
    const { parseBytes } = await import('../../src/cli/commands/bpf.js');
    assert.equal(parseBytes('u32:1', 'key'), '01000000');
    assert.equal(parseBytes('u64:0x100', 'value'), '0001000000000000');
    assert.equal(parseBytes('0A:0b', 'key'), '0a0b');
    assert.throws(() => parseBytes('u8:256', 'key'), /does not fit in 8 bits/);
    assert.throws(() => parseBytes('abc', 'value'), /neither hex bytes/);
    assert.throws(() => parseBytes('', 'value'), /neither hex bytes/);
  });

  it('lists maps with numbers for small values and hides all-zero array entries', async () => {
    const { formatMaps } = await import('../../src/cli/commands/bpf.js');
    const text = formatMaps([
      { name: 'pins', type: 2, keySize: 4, valueSize: 8, maxEntries: 3, size: 3, truncated: 0,
        entries: [['00000000', '0200000000000000'], ['01000000', '0000000000000000'], ['02000000', '0300000000000000']] },
      { name: 'seen', type: 1, keySize: 6, valueSize: 8, maxEntries: 4, size: 1, truncated: 2, entries: [['616263646566', '2a00000000000000']] },
    ]);
    assert.equal(text, [
      'pins: array, key 4 B, value 8 B, 3/3 entries',
      '  0 (00000000) → 2 (0200000000000000)',
      '  2 (02000000) → 3 (0300000000000000)',
      '  (1 all-zero entries not shown; --all shows them)',
      'seen: hash, key 6 B, value 8 B, 1/4 entries',
      '  616263646566 → 42 (2a00000000000000)',
      '  (2 more entries not listed; --max raises the limit)',
      '',
    ].join('\n'));
    assert.equal(formatMaps([]), 'no maps yet (the guest has created none)\n');
  });
});
