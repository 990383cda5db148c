/**
 * Text and JSON renderings of a {@link TranslationChain}: per stage, the address split into its
 * table indices (Linux names for guest tables: PGD/P4D/PUD/PMD/PTE; SDM names for EPT:
 * PML5/PML4/PDPT/PD/PT) in hex and in binary, every entry read with its decoded flags, the page
 * size found ("Huge Page (2M) at level 2 detected!"), and the resulting address.
 */
import type { ChainFailure, TranslationChain } from './chain.js';
import { describePfErrorCode } from './chain.js';
import type { HostPageInfo } from './host-pages.js';
import { formatFlags, type WalkFault, type WalkOk } from './page-walk.js';

const hex = (v: bigint | number): string => `0x${v.toString(16)}`;
const hex16 = (v: bigint): string => `0x${v.toString(16).padStart(16, '0')}`;

/** Which naming a split uses. */
export type FieldNaming = 'guest' | 'ept';

/** One field of an address split by a page walk. */
export interface AddressField {
  /** `PGD`, `PUD`, …, `PT`, or `Offset`. */
  name: string;
  /** Paging level the field indexes (0 for the offset). */
  level: number;
  value: bigint;
  /** Highest and lowest bit of the field. */
  hi: number;
  lo: number;
}

/** Table names by level: Linux's for guest tables, the SDM's for EPT. */
export function levelName(naming: FieldNaming, levels: 4 | 5, level: number): string {
  if (naming === 'ept') return ['', 'PT', 'PD', 'PDPT', 'PML4', 'PML5'][level] ?? `L${level}`;
  const names = levels === 5 ? ['', 'PTE', 'PMD', 'PUD', 'P4D', 'PGD'] : ['', 'PTE', 'PMD', 'PUD', 'PGD'];
  return names[level] ?? `L${level}`;
}

/**
 * Splits `address` into the indices of levels `levels`..`leafLevel` and the page offset below
 * them (12 bits for a 4 KiB page, 21 for 2 MiB, 30 for 1 GiB).
 */
export function splitAddress(address: bigint, naming: FieldNaming, levels: 4 | 5, leafLevel = 1): AddressField[] {
  const a = BigInt.asUintN(64, address);
  const fields: AddressField[] = [];
  for (let level = levels; level >= leafLevel; level--) {
    const lo = 12 + 9 * (level - 1);
    fields.push({ name: levelName(naming, levels, level), level, value: (a >> BigInt(lo)) & 511n, hi: lo + 8, lo });
  }
  const offBits = 12 + 9 * (leafLevel - 1);
  fields.push({ name: 'Offset', level: 0, value: a & ((1n << BigInt(offBits)) - 1n), hi: offBits - 1, lo: 0 });
  return fields;
}

/** `GVA 0x401000 = [PGD 0x0] [PUD 0x0] [PMD 0x2] [Offset 0x1000]`. */
export function formatSplit(label: string, address: bigint, fields: readonly AddressField[]): string {
  return `${label} ${hex(BigInt.asUintN(64, address))} = ${fields.map((f) => `[${f.name} ${hex(f.value)}]`).join(' ')}`;
}

/** The address in binary, grouped by `fields` (with the unused top bits first), labels underneath. */
export function formatBinary(address: bigint, fields: readonly AddressField[], topLabel: string): string[] {
  const a = BigInt.asUintN(64, address);
  const bits = (hi: number, lo: number) => ((a >> BigInt(lo)) & ((1n << BigInt(hi - lo + 1)) - 1n)).toString(2).padStart(hi - lo + 1, '0');
  const top = fields[0].hi + 1;
  const groups = [{ text: bits(63, top), label: topLabel, range: `${63}:${top}` }, ...fields.map((f) => ({ text: bits(f.hi, f.lo), label: f.name, range: `${f.hi}:${f.lo}` }))];
  const width = (g: (typeof groups)[number]) => Math.max(g.text.length, g.label.length, g.range.length);
  return [
    `  bits   ${groups.map((g) => g.range.padEnd(width(g))).join(' ')}`.trimEnd(),
    `  binary ${groups.map((g) => g.text.padEnd(width(g))).join(' ')}`.trimEnd(),
    `         ${groups.map((g) => g.label.padEnd(width(g))).join(' ')}`.trimEnd(),
  ];
}

/** The seed's page-size line for a leaf at `level`. */
export function pageSizeLine(level: number): string {
  if (level === 1) return 'Normal Page (4k) at level 1 detected!';
  if (level === 2) return 'Huge Page (2M) at level 2 detected!';
  return `Huge Page (1G) at level ${level} detected!`;
}

/** Lines for one walk: the split, the binary, every entry, then the page size and result (or the fault). */
function renderWalk(result: WalkOk | WalkFault, input: bigint, inLabel: string, outLabel: string, naming: FieldNaming, levels: 4 | 5, fault: (f: WalkFault) => string): string[] {
  const leafLevel = result.ok ? result.level : 1;
  const fields = splitAddress(input, naming, levels, leafLevel);
  const out = [`  ${formatSplit(inLabel, input, fields)}`, ...formatBinary(input, fields, naming === 'ept' ? 'unused' : 'sign-ext')];
  const nameWidth = Math.max(...result.steps.map((s) => levelName(naming, levels, s.level).length), 3);
  for (const s of result.steps) {
    const name = levelName(naming, levels, s.level).padEnd(nameWidth);
    const flags = s.entry === 0n ? '(empty)' : formatFlags(s.flags) || '(no flags)';
    out.push(`  L${s.level} ${name} table ${hex(s.tableAddr)} index ${hex(s.index).padEnd(5)} (${String(s.index).padStart(3)})  entry@${hex(s.entryAddr)} = ${hex16(s.entry)}  ${flags}${s.leaf ? '  <- leaf' : ''}`);
  }
  if (result.ok) {
    out.push(`  ${pageSizeLine(result.level)}`);
    out.push(`  ${outLabel} ${hex(result.address)} = page ${hex(result.pageBase)} + offset ${hex(result.offset)}  (${describePerms(result)})`);
  } else {
    out.push(`  FAULT: ${fault(result)}`);
  }
  return out;
}

function describePerms(r: WalkOk): string {
  const p = r.perms;
  const ept = r.memoryType !== undefined; // EPT rights do not distinguish user from supervisor
  const rights = [p.read && 'read', p.write && 'write', p.execute && 'execute', !ept && p.user && 'user'].filter(Boolean).join(' ') || 'no access';
  const extra = r.memoryType !== undefined ? `, memory type ${r.memoryType}${r.memoryType === 6 ? ' (WB)' : ''}${r.ignorePat ? ', IPAT' : ''}` : r.pkey !== undefined ? `, pkey ${r.pkey}` : '';
  return `${rights}${extra}`;
}

function guestFault(f: WalkFault): string {
  if (f.reason === 'non-canonical') return `${f.message}`;
  if (f.reason === 'read-error') return `${f.message}`;
  return `#PF, ${f.reason} at level ${f.level}: ${f.message}; error code ${describePfErrorCode(f.errorCode)}`;
}

function eptFault(f: WalkFault): string {
  if (f.reason === 'not-present' || f.reason === 'protection') return `EPT violation at level ${f.level}: ${f.message}; exit qualification ${hex(f.errorCode)}`;
  return `${f.reason} at level ${f.level}: ${f.message}`;
}

/** Human words for the size of a host page. */
function sizeWords(size: number): string {
  return size === 4096 ? '4 KiB' : size === 2097152 ? '2 MiB' : size === 1073741824 ? '1 GiB' : `${size} bytes`;
}

/** Lines describing the host page behind an HVA. */
export function renderHostPage(info: HostPageInfo): string[] {
  if (!info.present) {
    return [info.swapped ? '  the page is swapped out (no PFN while it is in swap)' : '  not present: the host has not populated this page (the guest never touched it)'];
  }
  const kind = [info.exclusive ? 'exclusive (mapped by this process only)' : 'shared with other mappings', info.file ? 'file/shmem page' : 'anonymous page'];
  const out = [`  present, ${kind.join(', ')}`];
  if (info.pfnHidden || info.pfn === undefined) {
    out.push(`  PFN hidden by the kernel (${info.reason ?? 'it reported none'}): the HPA is unknown, not 0`);
  } else {
    out.push(`  PFN ${hex(info.pfn)}`);
  }
  const huge = info.hugetlb ? 'hugetlb' : info.thp ? 'THP' : 'not THP, not hugetlb';
  const folio = info.folioOrder === undefined ? 'folio order unknown' : `folio order ${info.folioOrder}${info.compoundHead ? ', compound head' : info.compoundTail ? ', compound tail' : ''}`;
  out.push(`  host page ${sizeWords(info.pageSize)} (${huge}; ${folio})${info.reason && !info.pfnHidden ? `; ${info.reason}` : ''}`);
  if (info.hpa !== undefined) out.push(`  HPA ${hex(info.hpa)}`);
  return out;
}

function pagingLine(c: TranslationChain): string {
  const p = c.paging;
  const regs = `CR0 ${hex(p.cr0)} CR3 ${hex(p.cr3)} CR4 ${hex(p.cr4)} EFER ${hex(p.efer)}`;
  if (!p.format) return `${p.mode === 'off' ? 'paging off' : 'legacy (non-long-mode) paging'}; ${regs}`;
  const f = p.format;
  return `${f.levels}-level paging, NXE ${f.nxe ? 'on' : 'off'}, PKE ${f.pke ? 'on' : 'off'}, MAXPHYADDR ${f.maxPhysAddr}, 1G pages ${f.gbPages === false ? 'unsupported' : 'supported'}; ${regs}`;
}

function failureLine(f: ChainFailure): string {
  return `stopped at the ${f.stage} stage: ${f.message}`;
}

/** The whole chain as text, stage by stage (see the module comment). */
export function renderChain(c: TranslationChain): string {
  const out: string[] = [`Translating GVA ${hex(c.gva)} on vCPU ${c.cpu} (${pagingLine(c)})`, ''];
  const g = c.guest;
  if (g.kind === 'walk') {
    out.push(`== Stage 1: GVA → GPA (guest page tables from CR3 ${hex(g.root)}) ==`);
    out.push(...renderWalk(g.result, c.gva, 'GVA', 'GPA', 'guest', g.format.levels, guestFault));
  } else if (g.kind === 'identity') {
    out.push('== Stage 1: GVA → GPA (paging off) ==', `  ${g.reason}: GPA = GVA = ${hex(c.gva)}`);
  } else {
    out.push('== Stage 1: GVA → GPA ==', `  ${g.reason}${c.gpa !== undefined ? `; KVM_TRANSLATE gives GPA ${hex(c.gpa)}` : ''}`);
  }
  out.push('');

  if (c.gpa !== undefined) {
    out.push('== Stage 2: GPA → HVA (memslots) ==');
    if (c.memslot) {
      const m = c.memslot;
      out.push(`  memslot ${m.slot}: GPA ${hex(m.slotGpa)}..${hex(m.slotGpa + BigInt(m.slotSize) - 1n)} at HVA ${hex(m.slotHva)}`);
      out.push(`  GPA ${hex(c.gpa)} → HVA ${hex(m.hva)} (memslot ${m.slot} + ${hex(c.gpa - m.slotGpa)})`);
    } else if (c.failure?.stage === 'memslot') {
      out.push(`  FAULT: ${c.failure.message}`);
    }
    out.push('');
  }
  if (c.host) {
    out.push(`== Stage 3: HVA → HPA (host page tables via /proc/self/pagemap; ${c.host.backing} backing) ==`);
    out.push(...renderHostPage(c.host.info), '');
  }
  if (c.ept) {
    const e = c.ept;
    out.push(`== Stage 2': GPA → HPA (EPT view: a userspace model of an EPT, not KVM's own; EPTP ${hex(e.eptp)}) ==`);
    if (e.stats) {
      const s = e.stats;
      out.push(`  view: ${s.tables} table${s.tables === 1 ? '' : 's'}, ${s.leaves4k} 4K leaves, ${s.leaves2m} 2M leaves; ${s.notPresentPages} of ${s.guestPages} guest pages not on the host${s.hiddenPages ? `, ${s.hiddenPages} with hidden PFNs` : ''}; built in ${s.buildMs.toFixed(1)} ms`);
    }
    out.push(...renderWalk(e.result, c.gpa!, 'GPA', 'HPA', 'ept', 4, eptFault));
    const why = e.result.ok ? e.detail : `(${e.detail})`;
    out.push(`  ${e.agreesWithHost === false ? 'MISMATCH: ' : ''}${why}`, '');
  }
  if (c.kvm) {
    out.push('== KVM_TRANSLATE cross-check ==', `  ${c.kvm.detail}`, '');
  }
  for (const n of c.notes) out.push(`note: ${n}`);
  const path = [`GVA ${hex(c.gva)}`];
  if (c.gpa !== undefined) path.push(`GPA ${hex(c.gpa)}`);
  if (c.hva !== undefined) path.push(`HVA ${hex(c.hva)}`);
  if (c.hpa !== undefined) path.push(`HPA ${hex(c.hpa)}`);
  out.push(`Result: ${path.join(' → ')}${c.failure ? `; ${failureLine(c.failure)}` : ''}`);
  return out.join('\n') + '\n';
}

/** A JSON-safe copy of `value`: BigInts become 0x-hex strings, undefined members are dropped. */
export function jsonSafe(value: unknown): unknown {
  if (typeof value === 'bigint') return hex(value);
  if (Array.isArray(value)) return value.map(jsonSafe);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) if (v !== undefined) out[k] = jsonSafe(v);
    return out;
  }
  return value;
}

/**
 * The chain as a JSON-safe object: the chain's own fields (BigInts as 0x-hex strings; the guest
 * stage without its format, which `paging.format` holds), plus
 * `complete` (an HPA was reached), the guest address split (`stage1Fields`) and the EPT split
 * (`eptFields`) as printed by {@link renderChain}.
 */
export function chainJson(c: TranslationChain): Record<string, unknown> {
  const g = c.guest;
  const stage1Fields = g.kind === 'walk' ? splitAddress(c.gva, 'guest', g.format.levels, g.result.ok ? g.result.level : 1) : undefined;
  const eptFields = c.ept && c.gpa !== undefined ? splitAddress(c.gpa, 'ept', 4, c.ept.result.ok ? c.ept.result.level : 1) : undefined;
  const fields = (fs?: AddressField[]) => fs?.map((f) => ({ name: f.name, level: f.level, value: f.value, bits: `${f.hi}:${f.lo}` }));
  // The guest stage's format repeats paging.format: leave it out.
  const guest = g.kind === 'walk' ? { kind: g.kind, root: g.root, result: g.result } : g;
  return jsonSafe({
    ...c,
    guest,
    complete: c.hpa !== undefined && c.failure === undefined,
    stage1Fields: fields(stage1Fields),
    eptFields: fields(eptFields),
    pageSize: g.kind === 'walk' && g.result.ok ? g.result.pageSize : undefined,
  }) as Record<string, unknown>;
}
