/**
 * Types and bit arithmetic shared by the x86-64 and EPT page-walk code.
 *
 * Entries and addresses are handled as two unsigned 32-bit halves (`lo`, `hi`) held in Numbers:
 * every operation a walk needs (masks, shifts, index extraction) is exact on 32-bit halves, and
 * physical addresses (< 2^52) are exact as Numbers, so the hot path needs no BigInt.
 */

/** CPU state that shapes an x86-64 (IA-32e) guest page walk (SDM vol. 3 ch. 4). */
export interface X86Format {
  kind: 'x86';
  /** 4-level paging, or 5-level when CR4.LA57 = 1. */
  levels: 4 | 5;
  /** EFER.NXE: bit 63 of every entry is XD when set, reserved when clear. */
  nxe: boolean;
  /** CR4.PKE: bits 62:59 of leaf entries are a protection key checked against PKRU. */
  pke: boolean;
  /** MAXPHYADDR (32..52); entry bits 51:M are reserved. Default 46. */
  maxPhysAddr?: number;
  /** Whether 1 GiB pages exist (CPUID.80000001H:EDX.Page1GB); when not, PS in a PDPTE is reserved. Default true. */
  gbPages?: boolean;
  /** CR0.WP: supervisor writes honour R/W. Default true. */
  wp?: boolean;
  /** CR4.SMEP: supervisor fetches from user pages fault. Default false. */
  smep?: boolean;
  /** CR4.SMAP: supervisor data accesses to user pages fault unless EFLAGS.AC (`Access.ac`). Default false. */
  smap?: boolean;
}

/** VMX capabilities and controls that shape an EPT walk (SDM vol. 3 "EPT Translation Mechanism"). */
export interface EptFormat {
  kind: 'ept';
  /** Page-walk length: 4, or 5 for 5-level EPT (57-bit guest-physical addresses). */
  levels: 4 | 5;
  /** MAXPHYADDR (32..52); entry bits 51:M are reserved. Default 46. */
  maxPhysAddr?: number;
  /** Whether 1 GiB EPT pages are supported (IA32_VMX_EPT_VPID_CAP bit 17). Default true. */
  gbPages?: boolean;
  /** "Mode-based execute control for EPT": bit 10 grants execute to user-mode linear addresses. Default false. */
  mbec?: boolean;
  /** Whether execute-only translations are supported (IA32_VMX_EPT_VPID_CAP bit 0). Default true. */
  executeOnly?: boolean;
}

/** One of the two formats the walker understands. */
export type PagingFormat = X86Format | EptFormat;

/** Page sizes a leaf can map. */
export type PageSize = 4096 | 2097152 | 1073741824;

export const PAGE_4K = 4096;
export const PAGE_2M = 0x200000; // literal types, so these are PageSize values
export const PAGE_1G = 0x40000000;
export const DEFAULT_MAX_PHYS_ADDR = 46;

/** #PF error-code bits (SDM vol. 3 "Interrupt 14"); `walk` also encodes the access it checks with W, U and ID. */
export const PF = {
  /** Set: protection or reserved-bit violation on a present entry. Clear: not-present entry. */
  P: 1,
  /** The access was a write. */
  W: 2,
  /** The access was a user-mode (CPL 3) access. */
  U: 4,
  /** A reserved bit was set in some paging-structure entry. */
  RSVD: 8,
  /** Instruction fetch (only reported when NXE or SMEP is on). */
  ID: 16,
  /** Protection-key violation. */
  PK: 32,
} as const;

/**
 * @internal How a walk proceeds past one entry. A const enum so tsc inlines the values: imported
 * `const` bindings are loaded through cells on every use, which costs the hot path measurably.
 */
export const enum Entry {
  Table = 0,
  Leaf = 1,
  NotPresent = -1,
  /** x86: a reserved bit is set (#PF with RSVD). */
  Reserved = -2,
  /** EPT: present but unusable (EPT misconfiguration). */
  Misconfig = -3,
}

const TWO32 = 4294967296;

/** MAXPHYADDR of `format`, validated. */
export function physAddrBits(format: PagingFormat): number {
  const m = format.maxPhysAddr ?? DEFAULT_MAX_PHYS_ADDR;
  if (!Number.isInteger(m) || m < 32 || m > 52) throw new RangeError(`maxPhysAddr must be an integer in 32..52, got ${m}`);
  return m;
}

/** @internal Mask of the physical-address bits 32..M-1, as bits of an entry's high half. */
export function hiAddrMask(m: number): number {
  return (1 << (m - 32)) - 1;
}

/** @internal Bits 51:M as bits of the high half: reserved in every present entry of either format. */
export function hiReservedMask(m: number): number {
  return 0xfffff & ~hiAddrMask(m);
}

/**
 * @internal The 9-bit table index `address` selects at `level` (1 = PT: bits 20:12, 2 = PD: 29:21,
 * 3 = PDPT: 38:30, 4 = PML4: 47:39, 5 = PML5: 56:48). Level 3 straddles the two halves.
 */
export function indexAt(hi: number, lo: number, level: number): number {
  switch (level) {
    case 1:
      return (lo >>> 12) & 511;
    case 2:
      return (lo >>> 21) & 511;
    case 3:
      return ((lo >>> 30) | (hi << 2)) & 511;
    case 4:
      return (hi >>> 7) & 511;
    default:
      return (hi >>> 16) & 511;
  }
}

/** @internal Bytes mapped by a leaf at `level` (1, 2 or 3). */
export function leafSize(level: number): PageSize {
  return level === 1 ? PAGE_4K : level === 2 ? PAGE_2M : PAGE_1G;
}

/** @internal The page-frame (or table) address in an entry, aligned down to `size`, as a Number. */
export function frameAddr(lo: number, hi: number, addrHi: number, size: number): number {
  return (hi & addrHi) * TWO32 + ((lo & ~(size - 1) & 0xfffff000) >>> 0);
}

/**
 * @internal Whether a linear/guest-physical address (as halves) can be translated at all:
 * x86 needs a canonical address (bits 63:47, or 63:56 with LA57, all equal); EPT translates
 * 48-bit (57-bit with 5 levels) guest-physical addresses.
 */
export function inRange(hi: number, format: PagingFormat): boolean {
  if (format.kind === 'x86') {
    const top = format.levels === 5 ? hi >> 24 : hi >> 15; // signed shift: 0 or -1 when all bits equal
    return top === 0 || top === -1;
  }
  return (format.levels === 5 ? hi >>> 25 : hi >>> 16) === 0;
}

/** @internal Splits a 64-bit value (taken modulo 2^64, so negative numbers work) into halves. */
export function splitU64(v: bigint): [hi: number, lo: number] {
  const u = BigInt.asUintN(64, v);
  return [Number(u >> 32n), Number(u & 0xffffffffn)];
}

/** @internal Table names by level, for steps and messages. */
export function tableName(format: PagingFormat, level: number): string {
  const n = ['', 'PT', 'PD', 'PDPT', 'PML4', 'PML5'][level] ?? `L${level}`;
  return format.kind === 'ept' ? `EPT ${n}` : n;
}

/** @internal Entry names by level ("PML4E", "EPT PDE", ...). */
export function entryName(format: PagingFormat, level: number): string {
  return `${tableName(format, level)}E`;
}
