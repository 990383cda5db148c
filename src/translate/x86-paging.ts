/**
 * x86-64 (IA-32e, 4- and 5-level) paging-structure entries: classification, reserved-bit
 * explanations, flag decoding and access-rights checks (SDM vol. 3 §4.5, §4.6).
 */
import { Entry, PF, entryName, hiReservedMask, physAddrBits } from './format.js';
import type { X86Format } from './format.js';

/** Bits of an x86-64 paging-structure entry, for building entries. */
export const X86 = {
  P: 1n << 0n,
  RW: 1n << 1n,
  US: 1n << 2n,
  PWT: 1n << 3n,
  PCD: 1n << 4n,
  A: 1n << 5n,
  /** Dirty; leaf entries only. */
  D: 1n << 6n,
  /** Page size: this PDE/PDPTE maps a 2 MiB/1 GiB page. */
  PS: 1n << 7n,
  /** PAT bit of a 4 KiB PTE (the position of PS in other entries). */
  PAT: 1n << 7n,
  /** Global; leaf entries only. */
  G: 1n << 8n,
  /** PAT bit of a 2 MiB/1 GiB leaf. */
  PAT_LARGE: 1n << 12n,
  /** Execute-disable (XD); reserved unless EFER.NXE. */
  NX: 1n << 63n,
} as const;

/** Entry bits for protection key `key` (0..15), leaf entries only. */
export function pkeyBits(key: number): bigint {
  if (!Number.isInteger(key) || key < 0 || key > 15) throw new RangeError(`protection key must be 0..15, got ${key}`);
  return BigInt(key) << 59n;
}

/**
 * @internal Classifies one entry (halves `lo`, `hi`) at `level`. `rsvdHi` holds the reserved bits of
 * the high half (51:M, plus bit 31 = XD when NXE is off), precomputed by the caller.
 */
export function x86Classify(lo: number, hi: number, level: number, rsvdHi: number, gbPages: boolean): number {
  if ((lo & 1) === 0) return Entry.NotPresent;
  if ((hi & rsvdHi) !== 0) return Entry.Reserved;
  if (level === 1) return Entry.Leaf;
  if ((lo & 0x80) === 0) return Entry.Table;
  // Large leaves keep PAT at bit 12, so the frame starts at bit 21 / 30 and the bits between are reserved.
  if (level === 2) return (lo & 0x1fe000) === 0 ? Entry.Leaf : Entry.Reserved;
  if (level === 3) return gbPages && (lo & 0x3fffe000) === 0 ? Entry.Leaf : Entry.Reserved;
  return Entry.Reserved; // PS is reserved in PML4Es and PML5Es
}

/** @internal The high-half reserved mask `x86Classify` expects for `format`. */
export function x86ReservedHi(format: X86Format, m: number): number {
  return hiReservedMask(m) | (format.nxe ? 0 : 0x80000000);
}

/** @internal Says which reserved bits a present entry has set (for fault messages). */
export function x86ReservedReason(lo: number, hi: number, level: number, format: X86Format): string {
  const m = physAddrBits(format);
  const ps = (lo & 0x80) !== 0;
  const why: string[] = [];
  if ((hi & hiReservedMask(m)) !== 0) why.push(`physical-address bits 51:${m} set (MAXPHYADDR ${m})`);
  if (!format.nxe && hi >>> 31 !== 0) why.push('NX (bit 63) set while EFER.NXE = 0');
  if (level >= 4 && ps) why.push(`PS set in a ${entryName(format, level)}`);
  if (level === 3 && ps && format.gbPages === false) why.push('PS set in a PDPTE but 1 GiB pages are unsupported');
  if (level === 3 && ps && (lo & 0x3fffe000) !== 0) why.push('bits 29:13 of a 1 GiB PDPTE set');
  if (level === 2 && ps && (lo & 0x1fe000) !== 0) why.push('bits 20:13 of a 2 MiB PDE set');
  return why.join('; ');
}

/** @internal Decodes the flags of an entry; leaf-only flags appear only on leaves. */
export function x86DecodeFlags(lo: number, hi: number, level: number, format: X86Format): Record<string, boolean | number> {
  const leaf = level === 1 || (level <= 3 && (lo & 0x80) !== 0);
  const f: Record<string, boolean | number> = {
    P: (lo & 1) !== 0,
    RW: (lo & 2) !== 0,
    US: (lo & 4) !== 0,
    PWT: (lo & 8) !== 0,
    PCD: (lo & 0x10) !== 0,
    A: (lo & 0x20) !== 0,
  };
  if (leaf) f.D = (lo & 0x40) !== 0;
  // Bit 7 is PS above the PT (even where reserved, so a bad PML4E shows it), PAT in a PTE.
  if (level > 1) f.PS = (lo & 0x80) !== 0;
  if (leaf) {
    f.G = (lo & 0x100) !== 0;
    f.PAT = (lo & (level === 1 ? 0x80 : 0x1000)) !== 0;
  }
  f.NX = hi >>> 31 !== 0;
  if (leaf && format.pke) f.pkey = (hi >>> 27) & 15;
  return f;
}

/** @internal The error-code bits that describe the access itself (W, U, I/D). */
export function x86AccessBits(access: number, format: X86Format): number {
  const fetch = (access & PF.ID) !== 0;
  // The CPU reports I/D only when it could matter: with NXE (PAE/4-level paging) or SMEP.
  return (fetch ? 0 : access & PF.W) | (access & PF.U) | (fetch && (format.nxe || format.smep === true) ? PF.ID : 0);
}

/**
 * @internal Checks an access against the effective rights (SDM §4.6). `and` is the AND of the low
 * halves of all entries used (RW = bit 1, US = bit 2), `xd` the OR of their XD bits, `leafHi` the
 * leaf's high half (protection key). Returns 0 when allowed, else the #PF error code.
 */
export function x86AccessFault(and: number, xd: boolean, leafHi: number, format: X86Format, access: number, pkru: number, ac: boolean): number {
  const fetch = (access & PF.ID) !== 0;
  const write = !fetch && (access & PF.W) !== 0;
  const user = (access & PF.U) !== 0;
  const rw = (and & 2) !== 0;
  const userPage = (and & 4) !== 0;
  const wp = format.wp ?? true;
  let denied = false;
  if (user) {
    denied = !userPage || (write && !rw);
  } else {
    // Supervisor writes ignore R/W when CR0.WP = 0; SMAP/SMEP keep the kernel off user pages.
    if (write && !rw && wp) denied = true;
    if (!fetch && format.smap === true && userPage && !ac) denied = true;
    if (fetch && format.smep === true && userPage) denied = true;
  }
  if (fetch && format.nxe && xd) denied = true;
  // PKRU governs data accesses (by either mode) to user pages; WD binds supervisors only with WP.
  let pk = false;
  if (format.pke && userPage && !fetch) {
    const key = (leafHi >>> 27) & 15;
    const ad = (pkru >>> (2 * key)) & 1;
    const wd = (pkru >>> (2 * key + 1)) & 1;
    pk = ad === 1 || (wd === 1 && write && (user || wp));
  }
  if (!denied && !pk) return 0;
  return PF.P | x86AccessBits(access, format) | (pk ? PF.PK : 0);
}
