/**
 * Parsers for CLI option values; each throws UsageError with a message naming the option. Also
 * the image and VM options `run` and `translate` share: declared once, parsed once.
 */
import type { Command } from 'commander';
import { IMAGE_BASE } from '../arch/x86/layout.js';
import { REG, type RegName } from '../kvm/kvm-run.js';
import { loadImageFile, type LoadedImage } from '../loader/image.js';
import { MEMORY_BACKINGS, parseSize, type MemoryBacking } from '../memory/guest-memory.js';
import { UsageError } from './errors.js';

/** `0x1000`, `4096`, `0b101` → BigInt. */
export function parseAddress(text: string, option: string): bigint {
  try {
    if (!/^(0x[0-9a-f]+|0b[01]+|0o[0-7]+|\d+)$/i.test(text.trim())) throw new Error();
    const v = BigInt(text.trim());
    if (v >= 1n << 64n) throw new Error();
    return v;
  } catch {
    throw new UsageError(`${option}: '${text}' is not a 64-bit number (use decimal or 0x hex)`);
  }
}

/** `rax=2` pairs → register overrides. */
export function parseRegAssignments(items: string[] = []): Partial<Record<RegName, bigint>> {
  const regs: Partial<Record<RegName, bigint>> = {};
  for (const item of items) {
    const m = /^([a-z0-9]+)=(.+)$/i.exec(item);
    if (!m) throw new UsageError(`--set-reg: '${item}' is not of the form reg=value`);
    const name = m[1].toLowerCase();
    if (!(name in REG)) throw new UsageError(`--set-reg: unknown register '${m[1]}' (one of ${Object.keys(REG).join(', ')})`);
    regs[name as RegName] = parseAddress(m[2], `--set-reg ${name}`);
  }
  return regs;
}

/** A positive integer option. */
export function parseCount(text: string, option: string, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new UsageError(`${option}: '${text}' is not a whole number from 1 to ${max}`);
  return n;
}

/** A memory size such as 64M. */
export function parseMemory(text: string): number {
  try {
    const n = parseSize(text);
    if (n < 4096 || n % 4096) throw new Error();
    return n;
  } catch {
    throw new UsageError(`--mem: '${text}' is not a size that is a multiple of 4 KiB (e.g. 64M, 1G)`);
  }
}

/** One of a fixed set of words. */
export function parseChoice<T extends string>(text: string, option: string, choices: readonly T[]): T {
  if (!(choices as readonly string[]).includes(text)) throw new UsageError(`${option}: '${text}' is not one of ${choices.join(', ')}`);
  return text as T;
}

/** A whole number from 0 to `max` (e.g. a vCPU index or a duration in ms). */
export function parseIndex(text: string, option: string, max = Number.MAX_SAFE_INTEGER): number {
  const n = /^\d+$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!Number.isSafeInteger(n) || n > max) throw new UsageError(`${option}: '${text}' is not a whole number from 0 to ${max}`);
  return n;
}

/** A guest virtual address: decimal or 0x hex, `_` allowed between digits (`0x7fff_ffff_0000`). */
export function parseGva(text: string): bigint {
  const clean = text.trim().replace(/(?<=[0-9a-f])_(?=[0-9a-f])/gi, '');
  try {
    return parseAddress(clean, 'GVA');
  } catch {
    throw new UsageError(`GVA '${text}' is not a 64-bit address (use decimal or 0x hex, e.g. 0x401000)`);
  }
}

/** The image options `run` and `translate` share, as given on the command line. */
export interface ImageOptionText {
  format: string;
  mode?: string;
  loadAddr?: string;
  entry?: string;
}

/** Parsed {@link ImageOptionText}: how to read the image and, if given, the mode to start it in. */
export interface ImageOptionValues {
  format: 'elf' | 'raw' | 'auto';
  /** The mode asked for; undefined means long for ELF, real for raw. */
  mode?: 'long' | 'real';
  loadAddr: bigint;
  entry?: bigint;
}

/**
 * Parses --format, --mode, --load-addr and --entry as `run` does: a raw image's default load
 * address is 0x400000 when --mode long is given, else 0x1000.
 */
export function parseImageOptions(o: ImageOptionText, imageBase: bigint): ImageOptionValues {
  const format = parseChoice(o.format, '--format', ['elf', 'raw', 'auto'] as const);
  const mode = o.mode === undefined ? undefined : parseChoice(o.mode, '--mode', ['long', 'real'] as const);
  const loadAddr = o.loadAddr !== undefined ? parseAddress(o.loadAddr, '--load-addr') : mode === 'long' ? imageBase : 0x1000n;
  const entry = o.entry !== undefined ? parseAddress(o.entry, '--entry') : undefined;
  return { format, mode, loadAddr, entry };
}

/**
 * Adds the image and VM options `run` and `translate` share to `cmd`: --format, --mode,
 * --load-addr, --entry, --mem, --memory-backing, --vcpus and --cpl. Returns `cmd`.
 */
export function addImageOptions(cmd: Command): Command {
  return cmd
    .option('--format <fmt>', 'image format: elf, raw or auto', 'auto')
    .option('--mode <mode>', 'long (64-bit, set up by the VMM) or real (16-bit); default: long for ELF, real for raw')
    .option('--load-addr <addr>', 'guest-physical load address of a raw image (default 0x1000 in real mode, 0x400000 in long mode)')
    .option('--entry <addr>', 'entry point (default: the ELF entry, or the raw load address)')
    .option('--mem <size>', 'guest RAM', '64M')
    .option('--memory-backing <kind>', 'host backing of guest RAM: shmem (memfd, 4 KiB pages), thp (transparent 2 MiB pages) or hugetlb (2 MiB pages from the hugetlb pool)', 'shmem')
    .option('--vcpus <n>', 'number of vCPUs', '1')
    .option('--cpl <0|3>', 'long mode: privilege level of guest code', '3');
}

/** The options {@link addImageOptions} declares, as given on the command line. */
export interface ImageVmOptionText extends ImageOptionText {
  mem: string;
  memoryBacking: string;
  vcpus: string;
  cpl: string;
}

/** Parsed {@link ImageVmOptionText}. */
export interface ImageVmOptionValues extends ImageOptionValues {
  memory: number;
  memoryBacking: MemoryBacking;
  vcpus: number;
  cpl: 0 | 3;
}

/** Parses the options {@link addImageOptions} declares; reads no files. */
export function parseImageVmOptions(o: ImageVmOptionText): ImageVmOptionValues {
  const vcpus = parseCount(o.vcpus, '--vcpus', 64);
  const memory = parseMemory(o.mem);
  const memoryBacking = parseChoice(o.memoryBacking, '--memory-backing', MEMORY_BACKINGS);
  const cpl = Number(parseChoice(o.cpl, '--cpl', ['0', '3'] as const)) as 0 | 3;
  return { ...parseImageOptions(o, BigInt(IMAGE_BASE)), memory, memoryBacking, vcpus, cpl };
}

/** Loads the image at `path` as the parsed options say; `mode` is the one asked for, else long for ELF and real for raw. */
export function loadImageFromOptions(path: string, v: ImageOptionValues): { image: LoadedImage; mode: 'long' | 'real' } {
  const image = loadImageFile(path, { format: v.format, loadAddr: v.loadAddr, entry: v.entry });
  return { image, mode: v.mode ?? (image.format === 'elf' ? 'long' : 'real') };
}
