/** Reads a guest image from disk and turns it into load segments, whatever its format. */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { ImageError, hex, isElf, parseElf, type ElfImage } from './elf.js';
import { rawImage } from './raw.js';

/** Images are read whole into memory; anything larger is almost certainly the wrong file. */
export const MAX_IMAGE_SIZE = 1 << 30;

/** Image formats {@link loadImageFile} understands. */
export type ImageFormat = 'elf' | 'raw';

/** How to interpret an image file. */
export interface LoadImageOptions {
  /** `'auto'` (the default) picks ELF when the file starts with the ELF magic, raw otherwise. */
  format?: ImageFormat | 'auto';
  /** Guest-physical load address; required for raw images, ignored for ELF (which carries its own). */
  loadAddr?: bigint;
  /** Overrides the entry point (ELF `e_entry`, or `loadAddr` for raw); must lie in executable image bytes. */
  entry?: bigint;
}

/** A loaded image and the format it was loaded as. */
export type LoadedImage = ElfImage & { format: ImageFormat };

/**
 * Reads `path` and parses it as ELF or raw.
 *
 * @throws ImageError (message prefixed with the path) when the file is missing, unreadable, not a regular
 * file, empty or over 1 GiB, when a raw image has no `loadAddr`, or when parsing fails.
 */
export function loadImageFile(path: string, opts: LoadImageOptions = {}): LoadedImage {
  const bytes = readImage(path);
  const format = opts.format ?? 'auto';
  const resolved: ImageFormat = format === 'auto' ? (isElf(bytes) ? 'elf' : 'raw') : format;
  try {
    if (resolved === 'elf') {
      return { ...parseElf(bytes, opts.entry === undefined ? {} : { entry: opts.entry }), format: 'elf' };
    }
    if (opts.loadAddr === undefined) {
      const why = format === 'auto' ? ' (no ELF magic, so treated as raw)' : '';
      throw new ImageError(`raw image requires a load address${why}`);
    }
    return { ...rawImage(bytes, opts.loadAddr, opts.entry), format: 'raw' };
  } catch (err) {
    if (err instanceof ImageError) throw new ImageError(`${path}: ${err.message}`);
    throw err;
  }
}

/** One fd for stat and read so a file swapped or grown between the two can't bypass the size check. */
function readImage(path: string): Uint8Array {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new ImageError(`${path}: ${describeFsError(err)}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new ImageError(`${path}: not a regular file`);
    if (st.size > MAX_IMAGE_SIZE) throw new ImageError(`${path}: image is ${hex(st.size)} bytes, over the 1 GiB limit`);
    if (st.size === 0) throw new ImageError(`${path}: image file is empty`);
    const buf = new Uint8Array(st.size);
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, null);
      if (n === 0) break;
      got += n;
    }
    if (got === 0) throw new ImageError(`${path}: image file is empty`);
    return got === buf.length ? buf : buf.subarray(0, got);
  } catch (err) {
    if (err instanceof ImageError) throw err;
    throw new ImageError(`${path}: cannot read image file: ${describeFsError(err)}`);
  } finally {
    closeSync(fd);
  }
}

function describeFsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case 'ENOENT':
      return 'image file not found';
    case 'EACCES':
    case 'EPERM':
      return `image file not readable (${code})`;
    case 'EISDIR':
      return 'not a regular file';
    default:
      return `cannot open image file: ${err instanceof Error ? err.message : String(err)}`;
  }
}
