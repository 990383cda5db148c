/**
 * Address translation end to end for one vCPU: GVA → GPA (the guest's page tables, walked here and
 * cross-checked with KVM_TRANSLATE), GPA → HVA (the memslots), HVA → HPA (the host's page tables
 * through /proc/self/pagemap), and GPA → HPA once more through an {@link EptView} (a userspace
 * model of an EPT, see ept-view.ts).
 *
 * Nothing the guest does makes these functions throw: a missing mapping, a reserved bit, a GPA
 * outside RAM or a page the host has not populated is reported in the result as a
 * {@link ChainFailure} with the stage, level and reason (and the #PF error code for guest faults).
 */
import { readFileSync } from 'node:fs';
import { Kvm } from '../kvm/kvm.js';
import type { Sregs, Translation } from '../kvm/vcpu-fd.js';
import type { MemoryBacking, MemoryRegion } from '../memory/guest-memory.js';
import type { Vm } from '../vmm/vm.js';
import { EptView, hostPhysAddrBits, type EptViewStats } from './ept-view.js';
import type { X86Format } from './format.js';
import { applyBacking, Pagemap, type HostPageInfo } from './host-pages.js';
import { walk, type Access, type WalkFault, type WalkOk, type WalkStep } from './page-walk.js';
import type { PhysReader } from './phys-memory.js';

/** How the vCPU translates linear addresses, from CR0, CR4 and EFER. */
export type PagingMode = 'off' | '4-level' | '5-level' | 'legacy';

/** The control registers that shape a guest walk, and what they mean. */
export interface GuestPagingState {
  /** `off`: CR0.PG = 0 (real mode, or protected mode without paging); `legacy`: 32-bit or PAE paging without long mode. */
  mode: PagingMode;
  cr0: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint;
  /** CR0.PE = 0. */
  realMode: boolean;
  /** The walker's format, for the 4- and 5-level modes. */
  format?: X86Format;
}

/** Features of the guest CPU that change page walks (from the vCPU's CPUID). */
export interface GuestCpuFeatures {
  /** MAXPHYADDR (CPUID 0x80000008 EAX[7:0]): entry bits above it are reserved. */
  maxPhysAddr: number;
  /** 1 GiB pages (CPUID 0x80000001 EDX[26]); without them PS in a PDPTE is a reserved bit. */
  gbPages: boolean;
}

/** Stage 1, GVA → GPA. */
export type GuestStage =
  /** The guest's page tables, walked from CR3. */
  | { kind: 'walk'; root: bigint; format: X86Format; result: WalkOk | WalkFault }
  /** Paging is off: the linear address is the physical address. */
  | { kind: 'identity'; reason: string }
  /** A paging mode the walker does not model (32-bit/PAE): the GPA comes from KVM_TRANSLATE alone. */
  | { kind: 'unsupported'; reason: string };

/** KVM's own answer (KVM_TRANSLATE), compared with stage 1. */
export interface KvmCheck {
  /** The ioctl's result; absent when it failed (see `detail`). */
  gpa?: bigint;
  valid?: boolean;
  /** Whether KVM and the walker agree (both translate to the same GPA, or both fault); absent when there is nothing to compare. */
  agrees?: boolean;
  /** One sentence: what KVM said and whether it agrees. */
  detail: string;
}

/** Stage 2, GPA → HVA. */
export interface MemslotStage {
  slot: number;
  slotGpa: bigint;
  slotSize: number;
  slotHva: bigint;
  hva: bigint;
}

/** Stage 3, HVA → HPA. */
export interface HostStage {
  info: HostPageInfo;
  /** The guest RAM's host backing. */
  backing: MemoryBacking;
}

/** Stage 2', GPA → HPA through the EPT view. */
export interface EptStage {
  eptp: bigint;
  result: WalkOk | WalkFault;
  stats?: EptViewStats;
  /** Whether the view's HPA equals pagemap's (absent when either has none). */
  agreesWithHost?: boolean;
  /** One sentence on the outcome: the HPA and whether pagemap agrees, or what the EPT violation means here. */
  detail: string;
}

/** Stages of the chain, in order. */
export type ChainStageName = 'guest' | 'memslot' | 'host' | 'ept';

/** Why the chain stopped. */
export interface ChainFailure {
  stage: ChainStageName;
  /** `not-present`, `reserved-bit`, `non-canonical`, `read-error`, `protection` (guest); `no-memslot`; `host-not-present`, `swapped`, `pfn-hidden`; `unsupported-mode`, `kvm-invalid`. */
  reason: string;
  /** Paging level of the faulting entry (guest walks). */
  level?: number;
  /** The #PF error code the CPU would push (guest walks). */
  errorCode?: number;
  message: string;
}

/** One GVA followed as far as it goes. */
export interface TranslationChain {
  gva: bigint;
  cpu: number;
  paging: GuestPagingState;
  guest: GuestStage;
  kvm?: KvmCheck;
  memslot?: MemslotStage;
  host?: HostStage;
  ept?: EptStage;
  gpa?: bigint;
  hva?: bigint;
  hpa?: bigint;
  /** The first stage of GVA → GPA → HVA → HPA that failed; the EPT view is reported in `ept` only. */
  failure?: ChainFailure;
  notes: string[];
}

/** Guest RAM as the chain needs it: readable by GPA, with its memslots. `GuestMemory` is one. */
export interface ChainMemory extends PhysReader {
  readonly regions: readonly MemoryRegion[];
  readonly backing: MemoryBacking;
  readonly pageSize: number;
}

/** Something that walks GPAs to HPAs like an EPT. {@link EptView} is one. */
export interface EptSource {
  readonly eptp: bigint;
  walk(gpa: bigint, access?: Access): WalkOk | WalkFault;
  stats?(): EptViewStats;
}

/** Options of {@link translateChainSync}. */
export interface SyncChainOptions {
  /** The vCPU the registers came from (for the record; default 0). */
  cpu?: number;
  /** Host page lookups (default: a fresh {@link Pagemap}, closed afterwards). */
  pagemap?: Pick<Pagemap, 'lookup'>;
  /** Walk the GPA through this EPT view too (stage 2'); none by default. */
  ept?: EptSource;
  /** KVM_TRANSLATE's answer for the same GVA, to cross-check stage 1. */
  kvm?: Translation;
  /** Check this access in stage 1 (default: none, only translate). */
  access?: Access;
  /** Guest CPU features (default: {@link guestCpuFeatures}). */
  features?: GuestCpuFeatures;
}

/** Options of {@link translateChain}. */
export interface ChainOptions {
  /** vCPU whose CR3 and mode are used (default 0). */
  cpu?: number;
  /** Host page lookups (default: a fresh {@link Pagemap}, closed afterwards). */
  pagemap?: Pagemap;
  /** The EPT view for stage 2'. Default: build one now; `false`: skip stage 2'. */
  ept?: EptView | false;
  /** Check this access in stage 1 (default: none, only translate). */
  access?: Access;
  /** Guest CPU features (default: {@link guestCpuFeatures}). */
  features?: GuestCpuFeatures;
}

const CR0_PE = 1n;
const CR0_WP = 1n << 16n;
const CR0_PG = 1n << 31n;
const CR4_LA57 = 1n << 12n;
const CR4_SMEP = 1n << 20n;
const CR4_SMAP = 1n << 21n;
const CR4_PKE = 1n << 22n;
const EFER_LMA = 1n << 10n;
const EFER_NXE = 1n << 11n;

const hex = (v: bigint | number): string => `0x${v.toString(16)}`;

let features: GuestCpuFeatures | undefined;

/**
 * MAXPHYADDR and 1 GiB-page support as KVM offers them to guests (KVM_GET_SUPPORTED_CPUID, which
 * kvmtalk gives every vCPU unchanged in these leaves); without /dev/kvm, the host's /proc/cpuinfo.
 * Read once per process.
 */
export function guestCpuFeatures(): GuestCpuFeatures {
  if (features) return features;
  let maxPhysAddr = hostPhysAddrBits();
  let gbPages = false;
  try {
    const kvm = Kvm.open();
    try {
      const cpuid = kvm.supportedCpuid();
      const ext = cpuid.find((e) => e.function === 0x80000008);
      const ext1 = cpuid.find((e) => e.function === 0x80000001);
      const bits = ext ? ext.eax & 0xff : 0;
      if (bits >= 32 && bits <= 52) maxPhysAddr = bits;
      gbPages = ext1 !== undefined && (ext1.edx & (1 << 26)) !== 0;
    } finally {
      kvm.close();
    }
  } catch {
    try {
      gbPages = /\bpdpe1gb\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));
    } catch {
      gbPages = false;
    }
  }
  features = { maxPhysAddr, gbPages };
  return features;
}

/** Decodes the paging mode from CR0/CR4/EFER; `features` give MAXPHYADDR and 1 GiB-page support. */
export function guestPaging(sregs: Pick<Sregs, 'cr0' | 'cr3' | 'cr4' | 'efer'>, feats: GuestCpuFeatures = guestCpuFeatures()): GuestPagingState {
  const { cr0, cr3, cr4, efer } = sregs;
  const base = { cr0, cr3, cr4, efer, realMode: (cr0 & CR0_PE) === 0n };
  if ((cr0 & CR0_PG) === 0n) return { ...base, mode: 'off' };
  if ((efer & EFER_LMA) === 0n) return { ...base, mode: 'legacy' };
  const format: X86Format = {
    kind: 'x86',
    levels: (cr4 & CR4_LA57) !== 0n ? 5 : 4,
    nxe: (efer & EFER_NXE) !== 0n,
    pke: (cr4 & CR4_PKE) !== 0n,
    maxPhysAddr: feats.maxPhysAddr,
    gbPages: feats.gbPages,
    wp: (cr0 & CR0_WP) !== 0n,
    smep: (cr4 & CR4_SMEP) !== 0n,
    smap: (cr4 & CR4_SMAP) !== 0n,
  };
  return { ...base, mode: format.levels === 5 ? '5-level' : '4-level', format };
}

/**
 * Translates `gva` with the given control registers, synchronously: for tests, benchmarks and
 * callers that already hold the vCPU's sregs. Stage 2' runs only with `opts.ept`, the
 * KVM_TRANSLATE cross-check only with `opts.kvm`.
 */
export function translateChainSync(memory: ChainMemory, sregs: Pick<Sregs, 'cr0' | 'cr3' | 'cr4' | 'efer'>, gva: bigint, opts: SyncChainOptions = {}): TranslationChain {
  gva = BigInt.asUintN(64, gva);
  const paging = guestPaging(sregs, opts.features);
  const notes: string[] = [];
  const chain: TranslationChain = { gva, cpu: opts.cpu ?? 0, paging, guest: stage1(memory, paging, gva, opts.access, notes), notes };

  // Stage 1: GVA → GPA, and KVM's opinion.
  const g = chain.guest;
  if (opts.kvm) chain.kvm = crossCheck(g, gva, opts.kvm);
  if (g.kind === 'walk') {
    if (g.result.ok) chain.gpa = g.result.address;
    else chain.failure = { stage: 'guest', reason: g.result.reason, level: g.result.level, errorCode: g.result.errorCode, message: guestFaultMessage(g.result) };
  } else if (g.kind === 'identity') {
    chain.gpa = gva;
  } else if (opts.kvm?.valid) {
    chain.gpa = opts.kvm.gpa;
    notes.push('the GPA is KVM_TRANSLATE\'s: this paging mode is not walked here');
  } else {
    chain.failure = { stage: 'guest', reason: opts.kvm ? 'kvm-invalid' : 'unsupported-mode', message: g.reason };
  }
  if (chain.gpa === undefined) return chain;

  // Stage 2': the EPT view (independent of the host stages, so it runs even if they fail).
  if (opts.ept) chain.ept = eptStage(opts.ept, chain.gpa);

  // Stage 2: GPA → HVA.
  const region = memory.regions.find((r) => chain.gpa! >= r.gpa && chain.gpa! < r.gpa + BigInt(r.size));
  if (!region) {
    chain.failure = {
      stage: 'memslot', reason: 'no-memslot',
      message: `GPA ${hex(chain.gpa)} is outside every memslot: a guest access would exit to the VMM as MMIO`,
    };
    return finishEpt(chain);
  }
  const hva = region.hva + (chain.gpa - region.gpa);
  chain.memslot = { slot: region.slot, slotGpa: region.gpa, slotSize: region.size, slotHva: region.hva, hva };
  chain.hva = hva;

  // Stage 3: HVA → HPA.
  const own = opts.pagemap === undefined ? new Pagemap() : undefined;
  let info: HostPageInfo;
  try {
    info = (opts.pagemap ?? own!).lookup(hva);
  } finally {
    own?.close();
  }
  applyBacking(memory, info);
  chain.host = { info, backing: memory.backing };
  if (info.hpa !== undefined) chain.hpa = info.hpa;
  else if (info.pfnHidden) chain.failure = { stage: 'host', reason: 'pfn-hidden', message: `the host page behind HVA ${hex(hva)} is present, but ${info.reason ?? 'the kernel hides its PFN'}` };
  else if (info.swapped) chain.failure = { stage: 'host', reason: 'swapped', message: `the host page behind HVA ${hex(hva)} is swapped out: KVM would fault it back in on the next guest access` };
  else if (!info.present) {
    chain.failure = { stage: 'host', reason: 'host-not-present', message: `no host page behind HVA ${hex(hva)} yet (never touched): KVM would fault one in on the first guest access` };
  }
  return finishEpt(chain);
}

/**
 * Translates `gva` on vCPU `opts.cpu` of `vm` (loaded, running or ended): reads CR3/CR4/EFER with
 * `vm.vcpuState`, walks the guest tables in `vm.memory`, asks KVM_TRANSLATE for comparison, follows
 * the GPA to the host page, and walks the EPT view (built now unless given or `ept: false`).
 * While the guest runs, it can change its tables between these reads; the result notes that.
 */
export async function translateChain(vm: Vm, gva: bigint, opts: ChainOptions = {}): Promise<TranslationChain> {
  const cpu = opts.cpu ?? 0;
  gva = BigInt.asUintN(64, gva);
  const { sregs } = await vm.vcpuState(cpu);
  const askKvm = async (): Promise<Translation | string> => {
    try {
      return await vm.kvmTranslate(cpu, gva);
    } catch (e) {
      return `KVM_TRANSLATE failed: ${e instanceof Error ? e.message : String(e)}`;
    }
  };
  // KVM's walker sets the accessed bits of the guest entries it reads, so walk first where the
  // walk does not need KVM's answer (it does in paging modes the walker does not model).
  const kvmFirst = guestPaging(sregs, opts.features).format === undefined ? await askKvm() : undefined;
  const pagemap = opts.pagemap ?? new Pagemap();
  try {
    const ept = opts.ept === false ? undefined : (opts.ept ?? EptView.build(vm.memory, pagemap));
    const chain = translateChainSync(vm.memory, sregs, gva, {
      cpu, pagemap, ept, access: opts.access, features: opts.features, kvm: typeof kvmFirst === 'object' ? kvmFirst : undefined,
    });
    const kvm = kvmFirst ?? (await askKvm());
    chain.kvm = typeof kvm === 'string' ? { detail: kvm } : crossCheck(chain.guest, gva, kvm);
    if (kvmFirst === undefined && chain.guest.kind === 'walk') noteAccessedBits(vm.memory, chain.guest.result.steps, chain.notes);
    return chain;
  } finally {
    if (opts.pagemap === undefined) pagemap.close();
  }
}

/** Notes guest entries whose accessed bit KVM_TRANSLATE set after the walk read them (KVM's walker sets A bits). */
function noteAccessedBits(memory: PhysReader, steps: readonly WalkStep[], notes: string[]): void {
  const set: string[] = [];
  for (const s of steps) {
    let now: bigint;
    try {
      now = memory.readU64(s.entryAddr);
    } catch {
      continue;
    }
    if ((now ^ s.entry) === 0x20n && (now & 0x20n) !== 0n) set.push(`L${s.level}`);
  }
  if (set.length) notes.push(`KVM_TRANSLATE set the accessed bit in the guest entries at ${set.join(', ')} after this walk read them (KVM's walker sets A bits)`);
}

function stage1(memory: PhysReader, paging: GuestPagingState, gva: bigint, access: Access | undefined, notes: string[]): GuestStage {
  if (paging.mode === 'off') {
    const why = paging.realMode ? 'real mode, CR0.PE = 0' : 'protected mode without paging, CR0.PG = 0';
    notes.push(`paging is off (${why}): the address is used as a linear address and GVA = GPA`);
    return { kind: 'identity', reason: why };
  }
  if (paging.mode === 'legacy' || !paging.format) {
    return { kind: 'unsupported', reason: `${(paging.cr4 & 0x20n) !== 0n ? 'PAE' : '32-bit'} paging without long mode (EFER.LMA = 0) is not walked here` };
  }
  if (paging.format.pke && access !== undefined) notes.push('CR4.PKE is set but PKRU is not read: protection keys are checked against PKRU = 0');
  return { kind: 'walk', root: paging.cr3, format: paging.format, result: walk(memory, paging.cr3, gva, paging.format, access) };
}

function crossCheck(g: GuestStage, gva: bigint, kvm: Translation): KvmCheck {
  const said = kvm.valid ? `GPA ${hex(kvm.gpa)}` : 'no translation (valid = 0)';
  const base = { gpa: kvm.gpa, valid: kvm.valid };
  if (g.kind === 'unsupported') return { ...base, detail: `KVM_TRANSLATE: ${said}` };
  const expected = g.kind === 'identity' ? gva : g.result.ok ? g.result.address : undefined;
  if (expected === undefined) {
    const agrees = !kvm.valid;
    const nonCanonical = g.kind === 'walk' && !g.result.ok && g.result.reason === 'non-canonical';
    const hint = !agrees && nonCanonical ? ' (KVM_TRANSLATE does not check canonicality; the CPU raises #GP)' : '';
    return { ...base, agrees, detail: `KVM_TRANSLATE: ${said}; ${agrees ? 'agrees: both fault' : `DISAGREES: the walk faults${hint}`}` };
  }
  const agrees = kvm.valid && kvm.gpa === expected;
  const ours = g.kind === 'identity' ? 'GPA = GVA' : 'the walk';
  return { ...base, agrees, detail: `KVM_TRANSLATE: ${said}; ${agrees ? `agrees with ${ours}` : `DISAGREES: ${ours} gives GPA ${hex(expected)}`}` };
}

function eptStage(ept: EptSource, gpa: bigint): EptStage {
  const result = ept.walk(gpa);
  return { eptp: ept.eptp, result, stats: ept.stats?.(), detail: result.ok ? `HPA ${hex(result.address)}` : result.message };
}

/** Compares the EPT view with pagemap once both are known. */
function finishEpt(chain: TranslationChain): TranslationChain {
  const e = chain.ept;
  if (!e) return chain;
  const host = chain.host?.info;
  if (e.result.ok) {
    if (chain.hpa !== undefined) {
      e.agreesWithHost = e.result.address === chain.hpa;
      e.detail = e.agreesWithHost
        ? `HPA ${hex(e.result.address)}, the same as pagemap's`
        : `HPA ${hex(e.result.address)}, but pagemap now says ${hex(chain.hpa)}: the view is stale (refresh it)`;
    } else if (host && !host.present) {
      e.agreesWithHost = false;
      e.detail = `HPA ${hex(e.result.address)}, but the host page is gone now: the view is stale (refresh it)`;
    }
  } else if (e.result.reason === 'not-present') {
    if (chain.failure?.stage === 'memslot') {
      e.detail = 'no memslot covers this GPA, so KVM would treat the access as MMIO and exit to the VMM';
    } else if (host?.present === true && !host.pfnHidden) {
      e.agreesWithHost = false;
      e.detail = 'the host page is present now: the view predates it (refresh it)';
    } else if (host?.pfnHidden) {
      e.detail = 'the view maps nothing while PFNs are hidden';
    } else {
      e.detail = 'the host has no page here yet: KVM would take this EPT violation and fault one in';
    }
  }
  return chain;
}

const PF_BITS: [number, string, string][] = [
  [1, 'protection', 'not-present'],
  [2, 'write', 'read'],
  [4, 'user', 'supervisor'],
  [8, 'reserved-bit', ''],
  [16, 'fetch', ''],
  [32, 'protection-key', ''],
];

/** Describes a #PF error code, e.g. `0x6 (not-present, write, user)`. */
export function describePfErrorCode(code: number): string {
  const parts = PF_BITS.map(([bit, set, clear]) => ((code & bit) !== 0 ? set : clear)).filter((s) => s !== '');
  return `${hex(code)} (${parts.join(', ')})`;
}

function guestFaultMessage(f: WalkFault): string {
  switch (f.reason) {
    case 'non-canonical':
      return `${f.message}`;
    case 'read-error':
      return `${f.message} (a guest table lies outside guest RAM)`;
    default:
      return `#PF at level ${f.level}: ${f.message}; error code ${describePfErrorCode(f.errorCode)}`;
  }
}
