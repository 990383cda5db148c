/**
 * ELF64 loader for x86-64 guest executables.
 *
 * Images come from users and may be hostile or corrupt, so every field that steers a copy into guest
 * memory is bounds-checked with bigint arithmetic (no silent 2^53 rounding, no 64-bit wraparound)
 * before anything is sliced. Parsing never copies file bytes: segments are views into the input.
 */

/** A malformed, unsupported or unplaceable guest image; the message is one line, fit for a user. */
export class ImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ImageError';
  }
}

/** Segment permission bits (`p_flags`), as in `<elf.h>`. */
export const PF_X = 1;
export const PF_W = 2;
export const PF_R = 4;

/** One region to copy into guest-physical memory. */
export interface LoadSegment {
  /** Guest-physical load address. */
  gpa: bigint;
  /** File bytes to copy to `gpa` (a view into the image, not a copy). */
  data: Uint8Array;
  /** Bytes occupied in guest memory; `memSize - data.length` trailing bytes are zero (bss). */
  memSize: bigint;
  /** `PF_R | PF_W | PF_X` bits. */
  flags: number;
}

/** A parsed image: where execution starts and what to load. Raw images use the same shape. */
export interface ElfImage {
  entry: bigint;
  segments: LoadSegment[];
}

/** A guest-physical range the image must not touch, `[start, end)`. */
export interface ReservedRange {
  start: bigint;
  end: bigint;
  name: string;
}

/** Options for {@link parseElf}. */
export interface ParseElfOptions {
  /** Start here instead of `e_entry`; validated the same way. */
  entry?: bigint;
}

const EHDR_SIZE = 64;
const PHDR_SIZE = 56;
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const EV_CURRENT = 1;
const ET_EXEC = 2;
const ET_DYN = 3;
const EM_X86_64 = 62;
const PT_LOAD = 1;
const PT_INTERP = 3;
/** e_phnum value meaning "the real count is in section header 0"; only seen in giant core dumps. */
const PN_XNUM = 0xffff;
const U64_LIMIT = 1n << 64n;

/** `0x`-prefixed lowercase hex, the form every message uses. */
export function hex(n: bigint | number): string {
  return `0x${n.toString(16)}`;
}

/** Whether `bytes` starts with the ELF magic `\x7fELF`. */
export function isElf(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && bytes[0] === 0x7f && bytes[1] === 0x45 && bytes[2] === 0x4c && bytes[3] === 0x46;
}

interface Candidate {
  index: number;
  vaddr: bigint;
  seg: LoadSegment;
}

/**
 * Parses an ELF64 little-endian x86-64 executable (ET_EXEC or ET_DYN) into load segments.
 *
 * Only PT_LOAD segments with a nonzero `p_memsz` are returned, in program-header order. Each is loaded
 * at `p_paddr`, or at `p_vaddr` when `p_paddr` is 0 and `p_vaddr` is not (linkers that leave paddr
 * unset). The entry point must lie in an executable segment; an entry given as a virtual address of a
 * segment whose paddr differs is translated to the physical one, since the guest starts identity-mapped.
 *
 * @throws ImageError naming the offending program header index and values in hex.
 */
export function parseElf(bytes: Uint8Array, options: ParseElfOptions = {}): ElfImage {
  if (!isElf(bytes)) throw new ImageError('not an ELF file: bad magic (expected 7f 45 4c 46)');
  const fileSize = BigInt(bytes.length);
  if (bytes.length < EHDR_SIZE) {
    throw new ImageError(`ELF header truncated: file is ${hex(bytes.length)} bytes, header needs ${hex(EHDR_SIZE)}`);
  }
  if (bytes[4] !== ELFCLASS64) throw new ImageError(`not ELF64: EI_CLASS is ${bytes[4]} (expected ${ELFCLASS64})`);
  if (bytes[5] !== ELFDATA2LSB) throw new ImageError(`not little-endian: EI_DATA is ${bytes[5]} (expected ${ELFDATA2LSB})`);
  if (bytes[6] !== EV_CURRENT) throw new ImageError(`unsupported ELF version: EI_VERSION is ${bytes[6]}`);

  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const eType = dv.getUint16(16, true);
  const eMachine = dv.getUint16(18, true);
  const eVersion = dv.getUint32(20, true);
  const eEntry = dv.getBigUint64(24, true);
  const ePhoff = dv.getBigUint64(32, true);
  const ePhentsize = dv.getUint16(54, true);
  const ePhnum = dv.getUint16(56, true);

  if (eMachine !== EM_X86_64) throw new ImageError(`unsupported machine: e_machine is ${eMachine} (expected ${EM_X86_64}, x86-64)`);
  if (eType !== ET_EXEC && eType !== ET_DYN) {
    throw new ImageError(`unsupported ELF type: e_type is ${eType} (expected ${ET_EXEC} ET_EXEC or ${ET_DYN} ET_DYN)`);
  }
  if (eVersion !== EV_CURRENT) throw new ImageError(`unsupported ELF version: e_version is ${eVersion}`);
  if (ePhnum === 0) throw new ImageError('no PT_LOAD segment: e_phnum is 0');
  if (ePhnum === PN_XNUM) throw new ImageError(`unsupported: e_phnum is ${hex(PN_XNUM)} (PN_XNUM extended numbering)`);
  if (ePhentsize !== PHDR_SIZE) throw new ImageError(`bad e_phentsize ${hex(ePhentsize)} (expected ${hex(PHDR_SIZE)})`);
  const phEnd = ePhoff + BigInt(ePhnum * PHDR_SIZE);
  if (phEnd > fileSize) {
    throw new ImageError(
      `program header table [${hex(ePhoff)}, ${hex(phEnd)}) lies outside the file (${hex(fileSize)} bytes)`,
    );
  }

  const found: Candidate[] = [];
  let sawLoad = false;
  for (let i = 0; i < ePhnum; i++) {
    const o = Number(ePhoff) + i * PHDR_SIZE;
    const pType = dv.getUint32(o, true);
    if (pType === PT_INTERP) throw new ImageError(`program header ${i}: PT_INTERP present; dynamically linked executables are not supported`);
    if (pType !== PT_LOAD) continue;
    sawLoad = true;
    const flags = dv.getUint32(o + 4, true) & (PF_R | PF_W | PF_X);
    const offset = dv.getBigUint64(o + 8, true);
    const vaddr = dv.getBigUint64(o + 16, true);
    const paddr = dv.getBigUint64(o + 24, true);
    const filesz = dv.getBigUint64(o + 32, true);
    const memsz = dv.getBigUint64(o + 40, true);
    const where = `program header ${i} (PT_LOAD)`;
    if (offset + filesz > fileSize) {
      throw new ImageError(
        `${where}: file range [${hex(offset)}, ${hex(offset + filesz)}) extends beyond end of file (${hex(fileSize)} bytes)`,
      );
    }
    if (filesz > memsz) throw new ImageError(`${where}: p_filesz ${hex(filesz)} > p_memsz ${hex(memsz)}`);
    const gpa = paddr === 0n && vaddr !== 0n ? vaddr : paddr;
    if (gpa + memsz > U64_LIMIT) {
      throw new ImageError(`${where}: address ${hex(gpa)} + p_memsz ${hex(memsz)} overflows 64 bits`);
    }
    // Zero-size segments load nothing and cannot overlap or hold the entry point.
    if (memsz === 0n) continue;
    const data = bytes.subarray(Number(offset), Number(offset + filesz));
    found.push({ index: i, vaddr, seg: { gpa, data, memSize: memsz, flags } });
  }
  if (!sawLoad) throw new ImageError(`no PT_LOAD segment among ${ePhnum} program headers`);
  if (found.length === 0) throw new ImageError('no PT_LOAD segment with nonzero p_memsz');

  checkOverlaps(found);
  const entry = resolveEntry(found, options.entry ?? eEntry, options.entry !== undefined);
  return { entry, segments: found.map((c) => c.seg) };
}

/** Sorted sweep: with nonempty ranges sorted by start, any overlap shows up between neighbours, so a hostile 65535-header file costs O(n log n), not O(n²). */
function checkOverlaps(found: readonly Candidate[]): void {
  const sorted = [...found].sort((a, b) => (a.seg.gpa < b.seg.gpa ? -1 : a.seg.gpa > b.seg.gpa ? 1 : a.index - b.index));
  for (let k = 1; k < sorted.length; k++) {
    const a = sorted[k - 1]!;
    const b = sorted[k]!;
    const aEnd = a.seg.gpa + a.seg.memSize;
    if (b.seg.gpa < aEnd) {
      const [x, y] = a.index < b.index ? [a, b] : [b, a];
      throw new ImageError(
        `program headers ${x.index} and ${y.index} overlap: ` +
          `[${hex(x.seg.gpa)}, ${hex(x.seg.gpa + x.seg.memSize)}) and [${hex(y.seg.gpa)}, ${hex(y.seg.gpa + y.seg.memSize)})`,
      );
    }
  }
}

function resolveEntry(found: readonly Candidate[], entry: bigint, explicit: boolean): bigint {
  const exec = found.filter((c) => (c.seg.flags & PF_X) !== 0);
  const physical = exec.find((c) => entry >= c.seg.gpa && entry < c.seg.gpa + c.seg.memSize);
  if (physical) return entry;
  const virtual = exec.find((c) => entry >= c.vaddr && entry < c.vaddr + c.seg.memSize);
  if (virtual) return entry - virtual.vaddr + virtual.seg.gpa;
  const what = explicit ? 'entry point override' : 'entry point';
  const hint = exec.length === 0 ? 'no PT_LOAD segment has PF_X' : `executable: ${exec.map((c) => `${c.index} [${hex(c.seg.gpa)}, ${hex(c.seg.gpa + c.seg.memSize)})`).join(', ')}`;
  throw new ImageError(`${what} ${hex(entry)} is not inside any executable PT_LOAD segment (${hint})`);
}

/**
 * Checks that every segment fits in guest RAM `[0, ramSize)` and avoids the VMM's reserved ranges.
 * Segment numbers in messages are indices into `image.segments`.
 *
 * @throws ImageError naming the segment and the range it collides with.
 */
export function placeImage(image: ElfImage, ramSize: bigint, reserved: readonly ReservedRange[]): void {
  image.segments.forEach((seg, i) => {
    const end = seg.gpa + seg.memSize;
    const range = `load segment ${i} [${hex(seg.gpa)}, ${hex(end)})`;
    if (seg.gpa < 0n || end > ramSize) {
      throw new ImageError(`${range} lies outside guest RAM [0x0, ${hex(ramSize)})`);
    }
    for (const r of reserved) {
      if (seg.gpa < r.end && r.start < end) {
        throw new ImageError(`${range} overlaps reserved range '${r.name}' [${hex(r.start)}, ${hex(r.end)})`);
      }
    }
  });
}
