/**
 * Guest RAM: memfd-backed so other host processes can map it, registered with KVM as memslots,
 * and accessed by the VMM only through bounds-checked methods.
 *
 * Three host backings ({@link MemoryBacking}):
 * - `'shmem'` (default): a memfd with 4 KiB pages; shareable with other processes.
 * - `'thp'`: transparent huge pages (2 MiB, best effort: the kernel falls back to 4 KiB pages when
 *   it cannot find contiguous memory). The mapping is 2 MiB-aligned and madvise(MADV_HUGEPAGE)d.
 *   When the host allows THP for shmem (`shmem_enabled` of always/within_size/advise) it is a
 *   memfd and stays shareable; otherwise (e.g. the common `shmem_enabled = never`) it is
 *   anonymous private memory, `fd = -1`, and other processes cannot attach to it.
 * - `'hugetlb'`: a memfd_create(MFD_HUGETLB) file of 2 MiB pages from the hugetlb pool,
 *   allocated in full at create time, so an empty pool is a clear error here and never a SIGBUS
 *   later. Shareable; the size must be a multiple of 2 MiB.
 */
import { readFileSync } from 'node:fs';
import * as sys from '../kvm/sys.js';
import type { VmFd } from '../kvm/vm-fd.js';

/** How guest RAM is backed on the host; see the module comment. */
export type MemoryBacking = 'shmem' | 'thp' | 'hugetlb';

/** All backings, for option parsers. */
export const MEMORY_BACKINGS: readonly MemoryBacking[] = ['shmem', 'thp', 'hugetlb'];

/** 2 MiB: the huge page size of the `'thp'` and `'hugetlb'` backings. */
export const HUGE_PAGE_SIZE = 2 * 1024 * 1024;

/** Options of {@link GuestMemory.create}. */
export interface GuestMemoryOptions {
  /** Host backing (default `'shmem'`). */
  backing?: MemoryBacking;
  /** Name of the memfd, shown in /proc/<pid>/maps (default `kvmtalk-ram`). */
  name?: string;
}

/** A guest-physical access fell outside guest RAM. Hypercalls turn it into -EFAULT. */
export class GuestMemoryError extends Error {
  constructor(
    readonly gpa: bigint,
    readonly length: number,
  ) {
    super(`guest-physical access 0x${gpa.toString(16)}+${length} is outside guest RAM`);
    this.name = 'GuestMemoryError';
  }
}

/** One contiguous piece of guest RAM, as the worker threads need it to re-map it. */
export interface MemoryRegion {
  slot: number;
  gpa: bigint;
  size: number;
  /** Host virtual address of the mapping in this process. */
  hva: bigint;
  /** The memfd, for sharing with other processes (-1 when unknown or not shareable, e.g. anonymous THP memory). */
  fd: number;
  /** Host backing (absent means `'shmem'`). */
  backing?: MemoryBacking;
  /** Host page size the backing aims for: 4096 or 2 MiB (absent means 4096). */
  pageSize?: number;
}

/** The hugetlb pool has fewer free 2 MiB pages than guest RAM needs. */
export class HugePagesUnavailableError extends Error {
  constructor(
    /** 2 MiB pages needed. */
    readonly needed: number,
    /** 2 MiB pages free (and not reserved) when the allocation failed. */
    readonly free: number,
    /** The pool size to set so that `needed` pages are free. */
    readonly suggestedPool: number,
    /** The file that sets the 2 MiB pool size. */
    readonly poolFile: string,
    /** The failed system call. */
    cause?: unknown,
  ) {
    super(`hugetlb backing needs ${needed} free 2 MiB huge pages but only ${free} are free: echo ${suggestedPool} > ${poolFile} (as root)`, { cause });
    this.name = 'HugePagesUnavailableError';
  }
}

/** What this host allows for transparent huge pages (read from /sys/kernel/mm/transparent_hugepage). */
export interface ThpSupport {
  /** madvise(MADV_HUGEPAGE) on anonymous memory can give 2 MiB THPs. */
  anon: boolean;
  /** madvise(MADV_HUGEPAGE) on a memfd (shmem) mapping can give 2 MiB THPs. */
  shmem: boolean;
  /** The settings, e.g. `enabled=madvise shmem_enabled=never`. */
  detail: string;
}

const THP_DIR = '/sys/kernel/mm/transparent_hugepage';

/** The bracketed choice of a sysfs setting like `always [madvise] never`, or undefined if unreadable. */
function sysfsChoice(path: string): string | undefined {
  try {
    const text = readFileSync(path, 'utf8');
    return /\[([^\]]+)\]/.exec(text)?.[1] ?? text.trim();
  } catch {
    return undefined;
  }
}

/**
 * Whether 2 MiB THPs are available to madvise(MADV_HUGEPAGE)d memory: the global setting, overridden
 * by the 2 MiB per-size one (`hugepages-2048kB/`) unless that says `inherit`.
 */
export function thpSupport(): ThpSupport {
  const effective = (name: string): string | undefined => {
    const global = sysfsChoice(`${THP_DIR}/${name}`);
    const perSize = sysfsChoice(`${THP_DIR}/hugepages-2048kB/${name}`);
    return perSize === undefined || perSize === 'inherit' ? global : perSize;
  };
  const enabled = effective('enabled');
  const shmem = effective('shmem_enabled');
  return {
    anon: enabled === 'always' || enabled === 'madvise',
    shmem: shmem === 'always' || shmem === 'within_size' || shmem === 'advise' || shmem === 'force',
    detail: `enabled=${enabled ?? 'unavailable'} shmem_enabled=${shmem ?? 'unavailable'}`,
  };
}

/** A number from /proc/meminfo, or 0. */
function meminfo(key: string): number {
  try {
    const m = new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(readFileSync('/proc/meminfo', 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** The 2 MiB hugetlb pool: size, pages free and not reserved, and the file that resizes it. */
export function hugePagePool(): { total: number; free: number; poolFile: string } {
  const dir = '/sys/kernel/mm/hugepages/hugepages-2048kB';
  const num = (name: string): number | undefined => {
    try {
      return Number(readFileSync(`${dir}/${name}`, 'utf8').trim());
    } catch {
      return undefined;
    }
  };
  const defaultIs2M = meminfo('Hugepagesize') === 2048;
  const total = num('nr_hugepages') ?? meminfo('HugePages_Total');
  const free = (num('free_hugepages') ?? meminfo('HugePages_Free')) - (num('resv_hugepages') ?? meminfo('HugePages_Rsvd'));
  return { total, free: Math.max(0, free), poolFile: defaultIs2M ? '/proc/sys/vm/nr_hugepages' : `${dir}/nr_hugepages` };
}

/**
 * Maps `size` bytes at a 2 MiB-aligned address: reserves size + 2 MiB of address space, maps the
 * real thing over the aligned part with MAP_FIXED and gives back the slack on both sides.
 */
function mapAligned(size: number, flags: number, fd: number): bigint {
  const align = BigInt(HUGE_PAGE_SIZE);
  const reserve = size + HUGE_PAGE_SIZE;
  const base = sys.mmap(reserve, sys.PROT_NONE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS | sys.MAP_NORESERVE, -1);
  const hva = (base + align - 1n) & ~(align - 1n);
  try {
    sys.mmapAt(hva, size, sys.PROT_READ | sys.PROT_WRITE, flags | sys.MAP_FIXED, fd);
  } catch (e) {
    sys.munmap(base, reserve);
    throw e;
  }
  const end = base + BigInt(reserve);
  const tail = hva + BigInt(size);
  if (hva > base) sys.munmap(base, Number(hva - base));
  if (end > tail) sys.munmap(tail, Number(end - tail));
  return hva;
}

/** madvise(MADV_HUGEPAGE) on a fresh mapping; unmaps it if that fails. */
function adviseHuge(hva: bigint, size: number): bigint {
  try {
    sys.madvise(hva, size, sys.MADV_HUGEPAGE);
  } catch (e) {
    sys.munmap(hva, size);
    throw e;
  }
  return hva;
}

/** Parses sizes like `64M`, `1G`, `4096`, `2MiB`. */
export function parseSize(text: string): number {
  const m = /^(\d+)\s*([kmg]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new RangeError(`bad size '${text}' (use e.g. 64M, 1G, 4096)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}

/** Guest RAM starting at GPA 0. */
export class GuestMemory {
  /** Total RAM in bytes. */
  readonly size: number;
  /** Host backing of the RAM. */
  readonly backing: MemoryBacking;
  /** Host page size the backing aims for (4096, or 2 MiB for `'thp'` and `'hugetlb'`; THP is best effort). */
  readonly pageSize: number;
  readonly bytes: Uint8Array;
  private readonly view: DataView;

  private constructor(readonly regions: readonly MemoryRegion[]) {
    const r = regions[0];
    this.size = r.size;
    this.backing = r.backing ?? 'shmem';
    this.pageSize = r.pageSize ?? 4096;
    const buf = sys.view(r.hva, r.size);
    this.bytes = new Uint8Array(buf);
    this.view = new DataView(buf);
  }

  /**
   * Allocates `size` bytes of RAM (a multiple of 4 KiB; of 2 MiB for `'hugetlb'`) with the given
   * backing. Throws {@link HugePagesUnavailableError} when the hugetlb pool is too small, and an
   * Error when THP is disabled on this host.
   */
  static create(size: number, options: GuestMemoryOptions = {}): GuestMemory {
    const backing = options.backing ?? 'shmem';
    const name = options.name ?? 'kvmtalk-ram';
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) throw new RangeError(`guest memory size must be a positive multiple of 4 KiB, got ${size}`);
    const rw = sys.PROT_READ | sys.PROT_WRITE;
    switch (backing) {
      case 'shmem':
        return GuestMemory.fromMemfd(size, sys.memfdCreate(name, sys.MFD_CLOEXEC), 'shmem', 4096, (fd) => sys.mmap(size, rw, sys.MAP_SHARED, fd));
      case 'thp': {
        const thp = thpSupport();
        if (thp.shmem) {
          return GuestMemory.fromMemfd(size, sys.memfdCreate(name, sys.MFD_CLOEXEC), 'thp', HUGE_PAGE_SIZE, (fd) => adviseHuge(mapAligned(size, sys.MAP_SHARED, fd), size));
        }
        if (!thp.anon) throw new Error(`thp backing: transparent huge pages are disabled on this host (${thp.detail}): echo madvise > ${THP_DIR}/enabled (as root), or use another backing`);
        // shmem THP is off: anonymous private memory gets THPs but cannot be shared (fd -1).
        const hva = adviseHuge(mapAligned(size, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1), size);
        return new GuestMemory([{ slot: 0, gpa: 0n, size, hva, fd: -1, backing: 'thp', pageSize: HUGE_PAGE_SIZE }]);
      }
      case 'hugetlb': {
        if (size % HUGE_PAGE_SIZE !== 0) throw new RangeError(`hugetlb guest memory must be a multiple of 2 MiB, got ${size}`);
        const fd = sys.memfdCreate(name, sys.MFD_CLOEXEC | sys.MFD_HUGETLB | sys.MFD_HUGE_2MB);
        return GuestMemory.fromMemfd(size, fd, 'hugetlb', HUGE_PAGE_SIZE, () => {
          try {
            // Allocate every huge page now: a short pool fails here, not as a SIGBUS on first touch.
            sys.fallocate(fd, 0, 0, size);
            return sys.mmap(size, rw, sys.MAP_SHARED | sys.MAP_POPULATE, fd);
          } catch (e) {
            if (e instanceof sys.SysError && (e.code === 'ENOMEM' || e.code === 'ENOSPC')) {
              const needed = size / HUGE_PAGE_SIZE;
              const pool = hugePagePool();
              throw new HugePagesUnavailableError(needed, pool.free, pool.total + Math.max(0, needed - pool.free), pool.poolFile, e);
            }
            throw e;
          }
        });
      }
      default:
        throw new RangeError(`unknown memory backing '${String(backing)}' (use ${MEMORY_BACKINGS.join(', ')})`);
    }
  }

  /** Sizes the memfd, maps it with `map`, and closes the fd if anything fails. */
  private static fromMemfd(size: number, fd: number, backing: MemoryBacking, pageSize: number, map: (fd: number) => bigint): GuestMemory {
    try {
      sys.ftruncate(fd, size);
      const hva = map(fd);
      return new GuestMemory([{ slot: 0, gpa: 0n, size, hva, fd, backing, pageSize }]);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
  }

  /** Re-attaches to regions mapped by this process (used by vCPU worker threads). */
  static attach(regions: readonly MemoryRegion[]): GuestMemory {
    return new GuestMemory(regions);
  }

  /** Whether other processes can map this RAM (every region has a memfd). */
  get shareable(): boolean {
    return this.regions.every((r) => r.fd >= 0);
  }

  /** Registers every region as a KVM memslot. */
  registerWith(vm: VmFd): void {
    for (const r of this.regions) vm.setUserMemoryRegion(r.slot, r.gpa, r.size, r.hva);
  }

  /** Whether [gpa, gpa+len) lies inside RAM. */
  contains(gpa: bigint | number, len: number): boolean {
    const a = typeof gpa === 'bigint' ? gpa : BigInt(gpa);
    return a >= 0n && len >= 0 && a + BigInt(len) <= BigInt(this.size);
  }

  private offset(gpa: bigint | number, len: number): number {
    if (!this.contains(gpa, len)) throw new GuestMemoryError(BigInt(gpa), len);
    return Number(gpa);
  }

  /** A live view of guest bytes (no copy). */
  slice(gpa: bigint | number, len: number): Uint8Array {
    const o = this.offset(gpa, len);
    return this.bytes.subarray(o, o + len);
  }

  /** A copy of guest bytes, so later guest writes cannot change what the host checked. */
  read(gpa: bigint | number, len: number): Uint8Array {
    return this.slice(gpa, len).slice();
  }

  write(gpa: bigint | number, data: Uint8Array): void {
    this.bytes.set(data, this.offset(gpa, data.length));
  }

  fill(gpa: bigint | number, len: number, value = 0): void {
    const o = this.offset(gpa, len);
    this.bytes.fill(value, o, o + len);
  }

  /** UTF-8 text of `len` bytes at `gpa` (copied first). */
  readString(gpa: bigint | number, len: number): string {
    return Buffer.from(this.read(gpa, len)).toString('utf8');
  }

  readU8(gpa: bigint | number): number {
    return this.bytes[this.offset(gpa, 1)];
  }
  readU16(gpa: bigint | number): number {
    return this.view.getUint16(this.offset(gpa, 2), true);
  }
  readU32(gpa: bigint | number): number {
    return this.view.getUint32(this.offset(gpa, 4), true);
  }
  readU64(gpa: bigint | number): bigint {
    return this.view.getBigUint64(this.offset(gpa, 8), true);
  }
  writeU8(gpa: bigint | number, v: number): void {
    this.bytes[this.offset(gpa, 1)] = v;
  }
  writeU16(gpa: bigint | number, v: number): void {
    this.view.setUint16(this.offset(gpa, 2), v, true);
  }
  writeU32(gpa: bigint | number, v: number): void {
    this.view.setUint32(this.offset(gpa, 4), v >>> 0, true);
  }
  writeU64(gpa: bigint | number, v: bigint): void {
    this.view.setBigUint64(this.offset(gpa, 8), BigInt.asUintN(64, v), true);
  }

  /** Unmaps and closes the memfd (if any). Only the thread that created the memory may call this. */
  close(): void {
    for (const r of this.regions) {
      sys.munmap(r.hva, r.size);
      if (r.fd >= 0) sys.close(r.fd);
    }
  }
}
