/**
 * Guest RAM: memfd-backed so other host processes can map it, registered with KVM as memslots,
 * and accessed by the VMM only through bounds-checked methods.
 */
import * as sys from '../kvm/sys.js';
import type { VmFd } from '../kvm/vm-fd.js';

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
  /** The memfd, for sharing with other processes (-1 when unknown). */
  fd: number;
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
  readonly bytes: Uint8Array;
  private readonly view: DataView;

  private constructor(readonly regions: readonly MemoryRegion[]) {
    const r = regions[0];
    this.size = r.size;
    const buf = sys.view(r.hva, r.size);
    this.bytes = new Uint8Array(buf);
    this.view = new DataView(buf);
  }

  /** Allocates `size` bytes of memfd-backed RAM (a multiple of 4 KiB) and maps it shared. */
  static create(size: number, name = 'kvmtalk-ram'): GuestMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) throw new RangeError(`guest memory size must be a positive multiple of 4 KiB, got ${size}`);
    const fd = sys.memfdCreate(name, sys.MFD_CLOEXEC);
    try {
      sys.ftruncate(fd, size);
      const hva = sys.mmap(size, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_SHARED, fd);
      return new GuestMemory([{ slot: 0, gpa: 0n, size, hva, fd }]);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
  }

  /** Re-attaches to regions mapped by this process (used by vCPU worker threads). */
  static attach(regions: readonly MemoryRegion[]): GuestMemory {
    return new GuestMemory(regions);
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

  /** Unmaps and closes the memfd. Only the thread that created the memory may call this. */
  close(): void {
    for (const r of this.regions) {
      sys.munmap(r.hva, r.size);
      if (r.fd >= 0) sys.close(r.fd);
    }
  }
}
