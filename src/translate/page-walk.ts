/**
 * One page-walk engine for x86-64 guest paging (GVA → GPA) and Intel EPT (GPA → HPA).
 *
 * Pure TypeScript, no KVM: tables are read through a {@link PhysReader}. `walk` records every step
 * and checks access rights for display and diagnosis; `walkFast` / `FastWalker` only translate,
 * without allocating, for bulk use. Both rest on the same per-format entry classifiers (the fast
 * path decides only entries those classifiers would accept), so they cannot disagree on what
 * translates. Walks never set accessed/dirty bits: they inspect.
 */
import { eptAllows, eptClassify, eptDecodeFlags, eptMisconfigReason, eptQualification } from './ept.js';
import { Entry, PF, entryName, frameAddr, hiAddrMask, hiReservedMask, inRange, indexAt, leafSize, physAddrBits, splitU64, tableName } from './format.js';
import type { PageSize, PagingFormat } from './format.js';
import type { PhysReader } from './phys-memory.js';
import { x86AccessBits, x86AccessFault, x86Classify, x86DecodeFlags, x86ReservedHi, x86ReservedReason } from './x86-paging.js';

export type { EptFormat, PageSize, PagingFormat, X86Format } from './format.js';
export type { PhysReader } from './phys-memory.js';
export { ByteMemory, PhysAccessError } from './phys-memory.js';
export { PAGE_1G, PAGE_2M, PAGE_4K, PF, physAddrBits } from './format.js';
export { X86, pkeyBits } from './x86-paging.js';
export { EPT, EPT_MEMORY_TYPE, eptMemoryType, makeEptp } from './ept.js';
export { PageTableBuilder } from './table-builder.js';
export { FastWalker, walkFast } from './fast-walk.js';
export type { FastWalkInfo } from './fast-walk.js';
export type { PageTableBuilderOptions } from './table-builder.js';

/** The access to check a translation against. Omitted fields are false; a plain read by default. */
export interface Access {
  write?: boolean;
  /** CPL 3 access (x86); for EPT with MBEC, a fetch from a user-mode linear address. */
  user?: boolean;
  /** Instruction fetch (takes precedence over `write`). */
  fetch?: boolean;
  /** PKRU, for protection-key checks when CR4.PKE (default 0: every key allows everything). */
  pkru?: number;
  /** EFLAGS.AC, which lets a supervisor touch user pages under SMAP. */
  ac?: boolean;
}

/** One paging-structure entry the walk read. */
export interface WalkStep {
  /** 5..1; 1 is the page table. */
  level: number;
  /** Name of the table: 'PML5', 'PML4', 'PDPT', 'PD', 'PT', or the same prefixed with 'EPT '. */
  name: string;
  tableAddr: bigint;
  index: number;
  entryAddr: bigint;
  entry: bigint;
  flags: Record<string, boolean | number>;
  /** Whether this entry maps a page (rather than pointing at a table). */
  leaf: boolean;
}

/**
 * Effective rights over all levels. x86: `read` is always true, `write` = AND of R/W, `user` = AND
 * of U/S, `execute` = no XD anywhere (true without NXE), `userExecute` = user && execute.
 * EPT: `read`/`write`/`execute` = AND of R/W/X, `user` = true (EPT does not distinguish modes),
 * `userExecute` = AND of XU with MBEC, else `execute`.
 */
export interface Permissions {
  read: boolean;
  write: boolean;
  execute: boolean;
  user: boolean;
  userExecute: boolean;
}

/** A successful translation. */
export interface WalkOk {
  ok: true;
  steps: WalkStep[];
  /** The translated physical address. */
  address: bigint;
  /** Level of the leaf entry (1, 2 or 3). */
  level: number;
  pageSize: PageSize;
  pageBase: bigint;
  offset: bigint;
  perms: Permissions;
  /** x86: the PAT entry the leaf selects (PAT << 2 | PCD << 1 | PWT). */
  patIndex?: number;
  /** x86 with CR4.PKE: the leaf's protection key. */
  pkey?: number;
  /** EPT: the leaf's memory type (bits 5:3). */
  memoryType?: number;
  /** EPT: the leaf's ignore-PAT bit. */
  ignorePat?: boolean;
}

/** Why a walk failed. */
export type FaultReason = 'not-present' | 'reserved-bit' | 'non-canonical' | 'ept-misconfig' | 'protection' | 'read-error';

/** A failed translation. */
export interface WalkFault {
  ok: false;
  /** The entries read before and including the faulting one. */
  steps: WalkStep[];
  /** Level of the faulting entry (the leaf's for 'protection', the top level for 'non-canonical'). */
  level: number;
  reason: FaultReason;
  /**
   * x86: the #PF error code the CPU would push (see {@link PF}); 0 for 'non-canonical' (a #GP) and
   * 'read-error'. EPT: the EPT-violation exit qualification bits 6:0 for 'not-present' and
   * 'protection'; 0 for misconfigurations (which have no qualification).
   */
  errorCode: number;
  message: string;
}

/** Encodes an {@link Access} as #PF error-code bits (W, U, I/D). */
function accessMask(access: Access): number {
  return (access.write === true ? PF.W : 0) | (access.user === true ? PF.U : 0) | (access.fetch === true ? PF.ID : 0);
}

/** High-half reserved mask of `format`, for the classifiers. */
function reservedHi(format: PagingFormat, m: number): number {
  return format.kind === 'x86' ? x86ReservedHi(format, m) : hiReservedMask(m);
}

function classify(lo: number, hi: number, level: number, format: PagingFormat, rsvdHi: number): number {
  return format.kind === 'x86'
    ? x86Classify(lo, hi, level, rsvdHi, format.gbPages !== false)
    : eptClassify(lo, hi, level, rsvdHi, format.gbPages !== false, format.mbec === true, format.executeOnly !== false);
}

function rootTable(root: bigint, m: number): number {
  return Number(root & ((1n << BigInt(m)) - 1n) & ~0xfffn);
}

const hex = (v: bigint | number): string => `0x${v.toString(16)}`;

/**
 * Walks `format`'s tables from `root` (CR3 or EPTP: flag bits 11:0 and bits above MAXPHYADDR are
 * ignored) to translate `address`, recording each entry read. With `access`, also checks it
 * against the effective rights and reports a 'protection' fault as the CPU would.
 */
export function walk(reader: PhysReader, root: bigint, address: bigint, format: PagingFormat, access?: Access): WalkOk | WalkFault {
  const m = physAddrBits(format);
  const addrHi = hiAddrMask(m);
  const rsvdHi = reservedHi(format, m);
  const x86 = format.kind === 'x86';
  const acc = access === undefined ? 0 : accessMask(access);
  const [hi, lo] = splitU64(address);
  const steps: WalkStep[] = [];
  const fail = (level: number, reason: FaultReason, errorCode: number, message: string): WalkFault => ({ ok: false, steps, level, reason, errorCode, message });

  if (!inRange(hi, format)) {
    const what = x86 ? `non-canonical ${format.levels === 5 ? 57 : 48}-bit linear address (#GP)` : `guest-physical address wider than ${format.levels === 5 ? 57 : 48} bits`;
    return fail(format.levels, 'non-canonical', 0, `${hex(BigInt.asUintN(64, address))}: ${what}`);
  }
  let table = rootTable(root, m);
  let and = -1; // AND of the low halves: effective RW/US (x86), R/W/X/XU (EPT)
  let xd = 0; // OR of XD (x86)
  for (let level = format.levels; level >= 1; level--) {
    const index = indexAt(hi, lo, level);
    const entryAddr = table + index * 8;
    let entry: bigint;
    try {
      entry = BigInt.asUintN(64, reader.readU64(BigInt(entryAddr)));
    } catch (e) {
      return fail(level, 'read-error', 0, `cannot read ${entryName(format, level)} at ${hex(entryAddr)}: ${e instanceof Error ? e.message : String(e)}`);
    }
    const [ehi, elo] = splitU64(entry);
    const code = classify(elo, ehi, level, format, rsvdHi);
    and &= elo;
    xd |= ehi >>> 31;
    steps.push({
      level,
      name: tableName(format, level),
      tableAddr: BigInt(table),
      index,
      entryAddr: BigInt(entryAddr),
      entry,
      flags: x86 ? x86DecodeFlags(elo, ehi, level, format) : eptDecodeFlags(elo, level, format),
      leaf: code === Entry.Leaf,
    });
    if (code === Entry.Table) {
      table = frameAddr(elo, ehi, addrHi, 4096);
      continue;
    }
    const where = `${entryName(format, level)}[${index}] at ${hex(entryAddr)}`;
    if (code === Entry.NotPresent) {
      return x86
        ? fail(level, 'not-present', x86AccessBits(acc, format), `${where} is not present`)
        : fail(level, 'not-present', eptQualification(acc, and, format), `${where} is not present (EPT violation)`);
    }
    if (code === Entry.Misconfig && format.kind === 'ept') {
      return fail(level, 'ept-misconfig', 0, `${where} is misconfigured: ${eptMisconfigReason(elo, ehi, level, format)}`);
    }
    if (code !== Entry.Leaf) {
      // RESERVED: only x86 reports reserved bits as such; EPT turns them into misconfigurations.
      const why = format.kind === 'x86' ? x86ReservedReason(elo, ehi, level, format) : '';
      const errorCode = PF.P | PF.RSVD | (format.kind === 'x86' ? x86AccessBits(acc, format) : 0);
      return fail(level, 'reserved-bit', errorCode, `${where} has reserved bits set: ${why}`);
    }
    return leafResult(steps, level, elo, ehi, and, xd !== 0, BigInt.asUintN(64, address), lo, addrHi, format, access, acc, fail);
  }
  throw new Error('unreachable: level 1 entries are always leaves or faults');
}

/** Builds the result for a walk that reached a leaf, checking `access` if given. */
function leafResult(
  steps: WalkStep[],
  level: number,
  elo: number,
  ehi: number,
  and: number,
  xd: boolean,
  input: bigint,
  lo: number,
  addrHi: number,
  format: PagingFormat,
  access: Access | undefined,
  acc: number,
  fail: (level: number, reason: FaultReason, errorCode: number, message: string) => WalkFault,
): WalkOk | WalkFault {
  const pageSize = leafSize(level);
  const base = frameAddr(elo, ehi, addrHi, pageSize);
  const offset = lo & (pageSize - 1);
  const address = BigInt(base + offset);
  const common = { ok: true as const, steps, address, level, pageSize, pageBase: BigInt(base), offset: BigInt(offset) };
  if (format.kind === 'x86') {
    const execute = !format.nxe || !xd;
    const user = (and & 4) !== 0;
    const perms: Permissions = { read: true, write: (and & 2) !== 0, execute, user, userExecute: user && execute };
    const patIndex = (((elo >>> (level === 1 ? 7 : 12)) & 1) << 2) | ((elo >>> 3) & 3);
    const pkey = format.pke ? (ehi >>> 27) & 15 : undefined;
    if (access !== undefined) {
      const errorCode = x86AccessFault(and, xd, ehi, format, acc, access.pkru ?? 0, access.ac === true);
      if (errorCode !== 0) {
        const pk = (errorCode & PF.PK) !== 0 ? `, PKRU denies pkey ${pkey}` : '';
        return fail(level, 'protection', errorCode, `${describeAccess(access)} of ${hex(input)} denied (page: ${describePerms(perms)}${pk})`);
      }
    }
    return pkey === undefined ? { ...common, perms, patIndex } : { ...common, perms, patIndex, pkey };
  }
  const execute = (and & 4) !== 0;
  const perms: Permissions = {
    read: (and & 1) !== 0,
    write: (and & 2) !== 0,
    execute,
    user: true,
    userExecute: format.mbec === true ? (and & 0x400) !== 0 : execute,
  };
  if (access !== undefined && !eptAllows(acc, and, format)) {
    return fail(level, 'protection', eptQualification(acc, and, format), `EPT violation: ${describeAccess(access)} of GPA ${hex(input)} denied (page: ${describePerms(perms)})`);
  }
  return { ...common, perms, memoryType: (elo >>> 3) & 7, ignorePat: (elo & 0x40) !== 0 };
}

function describePerms(p: Permissions): string {
  return (['read', 'write', 'execute', 'user'] as const).filter((k) => p[k]).join(' ') || 'none';
}

function describeAccess(access: Access): string {
  const kind = access.fetch === true ? 'fetch' : access.write === true ? 'write' : 'read';
  return `${access.user === true ? 'user' : 'supervisor'} ${kind}`;
}

/**
 * The flags of `entry` read at `level` (5..1) in `format`, keyed by their SDM names. x86: P RW US
 * PWT PCD A D PS G PAT NX pkey; EPT: R W X XU memType IPAT large A D. Leaf-only fields (D, G, PAT,
 * pkey; memType, IPAT, D) appear only for leaves, pkey only with CR4.PKE, XU only with MBEC.
 */
export function decodeFlags(entry: bigint, level: number, format: PagingFormat): Record<string, boolean | number> {
  const [hi, lo] = splitU64(entry);
  return format.kind === 'x86' ? x86DecodeFlags(lo, hi, level, format) : eptDecodeFlags(lo, level, format);
}

/** Renders decoded flags: set booleans by name, numbers as name=value, e.g. "P RW US A D PS NX pkey=3". */
export function formatFlags(flags: Readonly<Record<string, boolean | number>>): string {
  const parts: string[] = [];
  for (const [name, value] of Object.entries(flags)) {
    if (value === true) parts.push(name);
    else if (typeof value === 'number') parts.push(`${name}=${value}`);
  }
  return parts.join(' ');
}
