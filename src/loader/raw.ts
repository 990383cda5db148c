/** Flat binary images: the file's bytes copied verbatim to one guest-physical address. */
import { ImageError, PF_R, PF_W, PF_X, hex, type ElfImage } from './elf.js';

/**
 * Describes a raw image as a single read/write/execute segment so the VMM loads it exactly like an ELF.
 * `entry` defaults to `loadAddr` and must fall inside the image, since a raw image carries no other code.
 *
 * @param bytes image contents (kept as a view, not copied)
 * @throws ImageError for an empty image, a negative or 64-bit-overflowing range, or an entry outside it.
 */
export function rawImage(bytes: Uint8Array, loadAddr: bigint, entry: bigint = loadAddr): ElfImage {
  if (bytes.length === 0) throw new ImageError('raw image is empty');
  if (loadAddr < 0n) throw new ImageError(`raw image load address ${loadAddr} is negative`);
  const size = BigInt(bytes.length);
  const end = loadAddr + size;
  if (end > 1n << 64n) throw new ImageError(`raw image at ${hex(loadAddr)} + size ${hex(size)} overflows 64 bits`);
  if (entry < loadAddr || entry >= end) {
    throw new ImageError(`raw image entry point ${hex(entry)} is outside the image [${hex(loadAddr)}, ${hex(end)})`);
  }
  return { entry, segments: [{ gpa: loadAddr, data: bytes, memSize: size, flags: PF_R | PF_W | PF_X }] };
}
