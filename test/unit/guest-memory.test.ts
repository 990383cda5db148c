import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readFileSync } from 'node:fs';
import { GuestMemory, GuestMemoryError, parseSize } from '../../src/memory/guest-memory.js';

test('accesses inside RAM work; anything touching outside throws GuestMemoryError', () => {
  const mem = GuestMemory.create(1 << 20);
  try {
    mem.writeU64(0x100, 0x1122334455667788n);
    assert.equal(mem.readU32(0x100), 0x55667788);
    assert.equal(mem.readU64((1 << 20) - 8), 0n);
    for (const [gpa, len] of [[(1 << 20) - 7, 8], [1 << 20, 1], [-1, 1], [2n ** 64n - 1n, 2], [0, (1 << 20) + 1]] as const) {
      assert.throws(() => mem.read(gpa, len), GuestMemoryError, `${gpa}+${len}`);
    }
    assert.equal(mem.contains(0xfffffffffffffff0n, 0x20), false, 'wrap-around is not inside');
    assert.throws(() => mem.writeU64(1 << 20, 1n), GuestMemoryError);
    mem.write(0x200, new TextEncoder().encode('hello'));
    assert.equal(mem.readString(0x200, 5), 'hello');
  } finally {
    mem.close();
  }
});

test('guest RAM is a memfd that another mapping of the same file sees', () => {
  const mem = GuestMemory.create(1 << 20);
  try {
    mem.write(0x3000, new TextEncoder().encode('shared'));
    const viaProc = readFileSync(`/proc/self/fd/${mem.regions[0].fd}`);
    assert.equal(viaProc.length, 1 << 20);
    assert.equal(viaProc.subarray(0x3000, 0x3006).toString(), 'shared');
  } finally {
    mem.close();
  }
});

test('parseSize understands suffixes and rejects junk', () => {
  assert.equal(parseSize('64M'), 64 * 2 ** 20);
  assert.equal(parseSize('1G'), 2 ** 30);
  assert.equal(parseSize('2MiB'), 2 * 2 ** 20);
  assert.equal(parseSize('4096'), 4096);
  assert.throws(() => parseSize('lots'), RangeError);
  assert.throws(() => GuestMemory.create(1000), RangeError);
});
