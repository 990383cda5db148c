import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, closeSync, mkdtempSync, openSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageError, PF_R, PF_W, PF_X, placeImage } from '../../src/loader/elf.js';
import { rawImage } from '../../src/loader/raw.js';
import { loadImageFile, MAX_IMAGE_SIZE } from '../../src/loader/image.js';

const BLOB = Uint8Array.from([0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xf4]);

function imageError(pattern: RegExp | string) {
  return (e: unknown) => {
    assert.ok(e instanceof ImageError, `expected ImageError, got ${String(e)}`);
    if (typeof pattern === 'string') assert.ok(e.message.includes(pattern), `${JSON.stringify(e.message)} lacks ${JSON.stringify(pattern)}`);
    else assert.match(e.message, pattern);
    return true;
  };
}

test('rawImage yields one RWX segment at loadAddr, entry defaulting to it', () => {
  const img = rawImage(BLOB, 0x1000n);
  assert.equal(img.entry, 0x1000n);
  assert.equal(img.segments.length, 1);
  const seg = img.segments[0]!;
  assert.equal(seg.gpa, 0x1000n);
  assert.equal(seg.memSize, 7n);
  assert.equal(seg.flags, PF_R | PF_W | PF_X);
  assert.equal(seg.data, BLOB); // no copy
  assert.equal(rawImage(BLOB, 0x1000n, 0x1006n).entry, 0x1006n);
});

test('rawImage rejects empty images, bad ranges and entries outside the image', () => {
  assert.throws(() => rawImage(new Uint8Array(0), 0x1000n), imageError('raw image is empty'));
  assert.throws(() => rawImage(BLOB, -1n), imageError('load address -1 is negative'));
  assert.throws(() => rawImage(BLOB, 0xfffffffffffffffcn), imageError('raw image at 0xfffffffffffffffc + size 0x7 overflows 64 bits'));
  assert.throws(() => rawImage(BLOB, 0x1000n, 0x1007n), imageError('entry point 0x1007 is outside the image [0x1000, 0x1007)'));
  assert.throws(() => rawImage(BLOB, 0x1000n, 0xfffn), imageError('entry point 0xfff'));
});

test('raw images go through placeImage like ELF ones', () => {
  const img = rawImage(BLOB, 0x1000n);
  assert.doesNotThrow(() => placeImage(img, 0x1007n, []));
  assert.throws(() => placeImage(img, 0x1006n, []), imageError('load segment 0 [0x1000, 0x1007) lies outside guest RAM [0x0, 0x1006)'));
  assert.throws(
    () => placeImage(img, 1n << 20n, [{ start: 0x1006n, end: 0x2000n, name: 'gdt' }]),
    imageError("overlaps reserved range 'gdt' [0x1006, 0x2000)"),
  );
});

test('loadImageFile: raw files, format selection and file errors', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvmtalk-raw-'));
  try {
    const file = join(dir, 'guest.bin');
    writeFileSync(file, BLOB);
    const img = loadImageFile(file, { loadAddr: 0x1000n });
    assert.equal(img.format, 'raw');
    assert.equal(img.entry, 0x1000n);
    assert.deepEqual([...img.segments[0]!.data], [...BLOB]);
    assert.equal(loadImageFile(file, { format: 'raw', loadAddr: 0x8000n, entry: 0x8003n }).entry, 0x8003n);

    assert.throws(() => loadImageFile(file, {}), imageError(`${file}: raw image requires a load address (no ELF magic, so treated as raw)`));
    assert.throws(() => loadImageFile(file, { format: 'raw' }), imageError(/requires a load address$/));
    assert.throws(() => loadImageFile(file, { loadAddr: 0x1000n, entry: 0x2000n }), imageError(`${file}: raw image entry point 0x2000`));

    assert.throws(() => loadImageFile(join(dir, 'missing'), { loadAddr: 0n }), imageError('missing: image file not found'));
    assert.throws(() => loadImageFile(dir, { loadAddr: 0n }), imageError('not a regular file'));

    const empty = join(dir, 'empty.bin');
    writeFileSync(empty, new Uint8Array(0));
    assert.throws(() => loadImageFile(empty, { loadAddr: 0n }), imageError(`${empty}: image file is empty`));

    // sparse: costs no disk space, and the size check must fire before anything is read
    const huge = join(dir, 'huge.bin');
    closeSync(openSync(huge, 'w'));
    truncateSync(huge, MAX_IMAGE_SIZE + 1);
    assert.throws(() => loadImageFile(huge, { loadAddr: 0n }), imageError('image is 0x40000001 bytes, over the 1 GiB limit'));

    if (process.getuid?.() !== 0) {
      const secret = join(dir, 'secret.bin');
      writeFileSync(secret, BLOB);
      chmodSync(secret, 0);
      assert.throws(() => loadImageFile(secret, { loadAddr: 0n }), imageError('image file not readable (EACCES)'));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
