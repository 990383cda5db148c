/**
 * Intel EPT paging-structure entries: classification (present / misconfigured), decoding and
 * EPT-violation exit qualifications (SDM vol. 3 "EPT Translation Mechanism").
 */
import { Entry, PF, entryName, hiReservedMask, physAddrBits } from './format.js';
import type { EptFormat } from './format.js';

/** Bits of an EPT paging-structure entry, for building entries. */
export const EPT = {
  R: 1n << 0n,
  W: 1n << 1n,
  /** Execute (supervisor-mode linear addresses only, when mode-based execute control is on). */
  X: 1n << 2n,
  /** Ignore PAT memory type; leaf entries only. */
  IPAT: 1n << 6n,
  /** This EPT PDE/PDPTE maps a 2 MiB/1 GiB page. */
  LARGE: 1n << 7n,
  /** Accessed (when EPTP enables accessed/dirty flags). */
  A: 1n << 8n,
  /** Dirty; leaf entries only. */
  D: 1n << 9n,
  /** User-mode execute, with mode-based execute control. */
  XU: 1n << 10n,
} as const;

/** EPT memory types (bits 5:3 of a leaf; also EPTP bits 2:0). 2, 3 and 7 are reserved. */
export const EPT_MEMORY_TYPE = { UC: 0, WC: 1, WT: 4, WP: 5, WB: 6 } as const;

/** Entry bits selecting memory type `type` in a leaf. */
export function eptMemoryType(type: number): bigint {
  if (!Number.isInteger(type) || type < 0 || type > 7) throw new RangeError(`EPT memory type must be 0..7, got ${type}`);
  return BigInt(type) << 3n;
}

/**
 * An EPT pointer for the table at `root`: memory type of the paging structures (bits 2:0),
 * walk length - 1 (bits 5:3), accessed/dirty enable (bit 6).
 */
export function makeEptp(root: bigint, levels: 4 | 5 = 4, memoryType: number = EPT_MEMORY_TYPE.WB, accessedDirty = false): bigint {
  if ((root & 0xfffn) !== 0n || root < 0n) throw new RangeError(`EPT root 0x${root.toString(16)} is not a 4 KiB-aligned address`);
  return root | BigInt(memoryType & 7) | (BigInt(levels - 1) << 3n) | (accessedDirty ? 0x40n : 0n);
}

/**
 * @internal Classifies one EPT entry at `level`. `rsvdHi` = bits 51:M of the high half.
 * A present entry (any of R/W/X, or XU with MBEC) that the CPU could not use is a misconfiguration,
 * which VM exits differently from a violation, so it gets its own code.
 */
export function eptClassify(lo: number, hi: number, level: number, rsvdHi: number, gbPages: boolean, mbec: boolean, executeOnly: boolean): number {
  const rwx = lo & 7;
  if (rwx === 0 && !(mbec && (lo & 0x400) !== 0)) return Entry.NotPresent;
  if ((rwx & 3) === 2) return Entry.Misconfig; // write without read
  if ((rwx & 1) === 0 && !executeOnly) return Entry.Misconfig; // execute-only without the capability
  if ((hi & rsvdHi) !== 0) return Entry.Misconfig;
  if (level >= 4) return (lo & 0xf8) === 0 ? Entry.Table : Entry.Misconfig; // bits 7:3 reserved (no large pages)
  if (level > 1 && (lo & 0x80) === 0) return (lo & 0x78) === 0 ? Entry.Table : Entry.Misconfig; // bits 6:3 reserved
  if (level === 3 && (!gbPages || (lo & 0x3ffff000) !== 0)) return Entry.Misconfig;
  if (level === 2 && (lo & 0x1ff000) !== 0) return Entry.Misconfig;
  const type = (lo >>> 3) & 7;
  return type === 2 || type === 3 || type === 7 ? Entry.Misconfig : Entry.Leaf;
}

/** @internal Says why a present EPT entry is misconfigured (for fault messages). */
export function eptMisconfigReason(lo: number, hi: number, level: number, format: EptFormat): string {
  const m = physAddrBits(format);
  const large = level > 1 && (lo & 0x80) !== 0;
  const why: string[] = [];
  if ((lo & 3) === 2) why.push('write permitted without read');
  if ((lo & 1) === 0 && format.executeOnly === false) why.push('execute-only entry but execute-only translations are unsupported');
  if ((hi & hiReservedMask(m)) !== 0) why.push(`physical-address bits 51:${m} set (MAXPHYADDR ${m})`);
  if (level >= 4 && (lo & 0x80) !== 0) why.push(`large page in an ${entryName(format, level)}`);
  if (level >= 4 && (lo & 0x78) !== 0) why.push('reserved bits 6:3 set');
  if (level > 1 && level < 4 && !large && (lo & 0x78) !== 0) why.push('reserved bits 6:3 set in a non-leaf entry');
  if (level === 3 && large && format.gbPages === false) why.push('1 GiB page but 1 GiB EPT pages are unsupported');
  if (level === 3 && large && (lo & 0x3ffff000) !== 0) why.push('bits 29:12 of a 1 GiB EPT PDPTE set');
  if (level === 2 && large && (lo & 0x1ff000) !== 0) why.push('bits 20:12 of a 2 MiB EPT PDE set');
  const type = (lo >>> 3) & 7;
  if ((level === 1 || large) && (type === 2 || type === 3 || type === 7)) why.push(`reserved memory type ${type}`);
  return why.join('; ');
}

/** @internal Decodes an EPT entry's flags; leaf-only fields appear only on leaves. */
export function eptDecodeFlags(lo: number, level: number, format: EptFormat): Record<string, boolean | number> {
  const leaf = level === 1 || (level <= 3 && (lo & 0x80) !== 0);
  const f: Record<string, boolean | number> = { R: (lo & 1) !== 0, W: (lo & 2) !== 0, X: (lo & 4) !== 0 };
  if (format.mbec === true) f.XU = (lo & 0x400) !== 0;
  if (leaf) {
    f.memType = (lo >>> 3) & 7;
    f.IPAT = (lo & 0x40) !== 0;
  }
  if (level > 1) f.large = (lo & 0x80) !== 0;
  f.A = (lo & 0x100) !== 0;
  if (leaf) f.D = (lo & 0x200) !== 0;
  return f;
}

/**
 * @internal The EPT-violation exit qualification (bits 6:0) for `access` (PF.W / PF.ID / PF.U bits),
 * given `and` = AND of the low halves of the entries used, including a non-present one.
 * Bits 2:0 = read/write/fetch; bits 5:3 = whether the GPA was readable/writable/executable;
 * bit 6 = user-executable (MBEC only).
 */
export function eptQualification(access: number, and: number, format: EptFormat): number {
  const kind = (access & PF.ID) !== 0 ? 4 : (access & PF.W) !== 0 ? 2 : 1;
  return kind | ((and & 7) << 3) | (format.mbec === true && (and & 0x400) !== 0 ? 0x40 : 0);
}

/** @internal Whether the accumulated rights `and` allow `access`. */
export function eptAllows(access: number, and: number, format: EptFormat): boolean {
  if ((access & PF.ID) !== 0) return (and & (format.mbec === true && (access & PF.U) !== 0 ? 0x400 : 4)) !== 0;
  return (and & ((access & PF.W) !== 0 ? 2 : 1)) !== 0;
}
