/**
 * Full-chain address translation benchmark: GVA → GPA → HVA → HPA per second, for
 * (a) {@link FastChain} (uncached TypeScript), (b) {@link TranslationCache} hits, and (c) the same
 * chain in C (bench/c/translate-baseline.c), over the same guest RAM in the same run.
 *
 * Setup: a real 64 MiB VM with the spin guest loaded (its boot page tables: the first 2 MiB in
 * 4 KiB pages, the rest in 2 MiB pages), every RAM page touched so the host has it, and one GVA
 * per 4 KiB page of RAM (page 0 is unmapped), at a random offset, in a shuffled order.
 *
 * Honest comparison: the C program opens the VM's memfd through /proc/<pid>/fd/<n> and maps it
 * itself, so its walks read the same bytes and its pagemap lookups (of its own mapping, like the
 * TS side's of its own) find the very same physical pages: both make the same system calls. A
 * checksum pass (sum of GPAs and PFNs) proves it before any timing. Rounds alternate which side
 * runs first; the headline figures are medians, the ratio the median of per-round ratios.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { loadImageFile } from '../loader/image.js';
import { buildGuests, guestPath } from '../sdk/toolchain.js';
import { emptyChainResult, FastChain, x86FormatOf, type ChainResult, type PartsTranslator } from '../translate/fast-chain.js';
import type { FastWalker } from '../translate/fast-walk.js';
import { Pagemap } from '../translate/host-pages.js';
import { TranslationCache, VmDirtyLog } from '../translate/translation-cache.js';
import { Vm } from '../vmm/vm.js';
import { buildCBaseline, runCBaseline } from './baseline.js';
import { formatTable, hostInfo, type HostInfo } from './report.js';
import { median, round3 } from './stats.js';

/** Options of {@link runTranslateBench}. */
export interface TranslateBenchOptions {
  /** Rounds of (TS uncached, C, TS cached, TS walk) runs (default 7). */
  rounds?: number;
  /** Full-chain translations per timed run (default 200,000); cached and walk-only runs do 20× and 50×. */
  iterations?: number;
  /** Progress lines (default: none). */
  log?: (s: string) => void;
}

/** One round's measurements, in translations (or walks) per second. */
export interface TranslateRound {
  round: number;
  /** Which side ran first. */
  order: 'ts-c' | 'c-ts';
  ts_uncached_per_s: number;
  c_per_s: number;
  /** ts_uncached_per_s / c_per_s. */
  uncached_ratio: number;
  ts_cached_per_s: number;
  ts_walk_per_s: number;
  c_walk_per_s: number;
  /** ts_walk_per_s / c_walk_per_s. */
  walk_ratio: number;
}

/** What {@link runTranslateBench} measured (JSON-friendly). */
export interface TranslateBenchResult {
  benchmark: 'translate';
  /** Median over rounds of TS uncached full-chain rate / C rate. */
  uncached_ratio: number;
  target_uncached_ratio: 0.5;
  meets_uncached_target: boolean;
  /** Median rate of cached lookups (all hits, with the cache's default automatic syncs). */
  cached_per_s: number;
  target_cached_per_s: 1000000;
  meets_cached_target: boolean;
  ts_uncached_per_s: number;
  c_per_s: number;
  /** The guest walk alone, for information: median TS/C ratio and rates. */
  walk_ratio: number;
  ts_walk_per_s: number;
  c_walk_per_s: number;
  /** cached_per_s / ts_uncached_per_s. */
  cached_speedup: number;
  rounds: number;
  /** Full-chain translations per timed run (cached: ×20, walk-only: ×50). */
  iterations: number;
  gvas: { count: number; in_4k_pages: number; in_2m_pages: number };
  /** System calls per translation in the C run (pagemap + kpageflags preads, and any PAGEMAP_SCAN). */
  syscalls_per_translation: number;
  /** Guest RAM's host backing and the host page size pagemap reported for it. */
  memory: { size_mb: number; backing: string; host_page_size: number };
  /** The translation cache in the timed cached runs. */
  cache: { dirty_log_mode: string; syncs_per_run: number; hits_per_run: number; misses_per_run: number };
  per_round: TranslateRound[];
  host: HostInfo;
}

const DEFAULT_ROUNDS = 7;
const DEFAULT_ITERATIONS = 200_000;
const CACHED_FACTOR = 20;
const WALK_FACTOR = 50;
const GUEST_MEMORY = 64 * 2 ** 20;
const TARGET_RATIO = 0.5;
const TARGET_CACHED = 1_000_000;

/** What the C baseline prints. */
interface BaselineOutput {
  chain_per_s: number;
  walk_per_s: number;
  gvas: number;
  gpa_sum: number;
  pfn_sum: number;
  present: number;
  syscalls_per_translation: number;
}

/** The GVAs as 32-bit halves, the form every *Parts method takes. */
interface GvaList {
  his: Uint32Array;
  los: Uint32Array;
}

/** Runs the benchmark; throws (e.g. `KvmUnavailableError`) when something cannot run. */
export async function runTranslateBench(opts: TranslateBenchOptions = {}): Promise<TranslateBenchResult> {
  const rounds = opts.rounds ?? DEFAULT_ROUNDS;
  const iterations = opts.iterations ?? DEFAULT_ITERATIONS;
  if (!Number.isSafeInteger(rounds) || rounds < 1) throw new RangeError(`rounds must be a positive integer, got ${rounds}`);
  if (!Number.isSafeInteger(iterations) || iterations < 1 || iterations > 2 ** 31) throw new RangeError(`iterations must be a positive integer, got ${iterations}`);
  const log = opts.log ?? (() => {});

  buildGuests({ log });
  const baseline = buildCBaseline('translate-baseline', log);
  const vm = Vm.create({ memory: GUEST_MEMORY, console: 'capture', log: () => {} });
  const pagemap = new Pagemap();
  const dir = mkdtempSync(join(os.tmpdir(), 'kvmtalk-bench-translate-'));
  try {
    vm.load(loadImageFile(guestPath('tests', 'spin')));
    const ram = vm.memory;
    const region = ram.regions[0];
    if (ram.regions.length !== 1 || region.fd < 0) throw new Error('the benchmark needs guest RAM in one shareable memfd');
    // Every page present: a missing page would cost one system call instead of two.
    for (let off = 0; off < ram.size; off += 4096) ram.bytes[off] = ram.bytes[off];
    const { sregs } = await vm.vcpuState(0);
    const format = x86FormatOf(sregs);
    if (format.levels !== 4 || format.nxe) throw new Error('the C baseline implements 4-level paging without NXE, the kvmtalk boot state');
    const chain = new FastChain(ram, pagemap, format, sregs.cr3);
    const gvas = gvaList(chain, ram.size);
    const bytes = new BigUint64Array(gvas.his.length);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (BigInt(gvas.his[i]) << 32n) | BigInt(gvas.los[i]);
    const gvaFile = join(dir, 'gvas.bin');
    writeFileSync(gvaFile, new Uint8Array(bytes.buffer));
    const cArgs = [`/proc/${process.pid}/fd/${region.fd}`, String(ram.size), `0x${sregs.cr3.toString(16)}`, gvaFile];
    const runC = (n: number) => runCBaseline<BaselineOutput>(baseline, [...cArgs, String(n), String(n * WALK_FACTOR)]);

    const sums = checksums(chain, gvas);
    const dirtyLog = new VmDirtyLog(vm);
    const cache = new TranslationCache(chain, dirtyLog);
    const out = emptyChainResult();
    for (let i = 0; i < gvas.his.length; i++) cache.translateParts(gvas.his[i], gvas.los[i], out);

    log(`warm-up; ${gvas.his.length} GVAs (${sums.small} in 4 KiB pages), host pages of ${sums.hostPageSize} bytes`);
    const warm = Math.max(1000, Math.floor(iterations / 10));
    timeTranslations(chain, gvas, warm);
    timeTranslations(cache, gvas, warm);
    timeWalk(chain.walker, chain.rootGpa, gvas, warm * WALK_FACTOR);
    const check = await runC(warm);
    if (check.gpa_sum !== sums.gpaSum || check.pfn_sum !== sums.pfnSum || check.present !== sums.present || check.gvas !== gvas.his.length) {
      throw new Error(`the C baseline translated differently: C ${JSON.stringify(check)}, TS ${JSON.stringify(sums)}`);
    }

    const perRound: TranslateRound[] = [];
    let cacheRun = { syncs: 0, hits: 0, misses: 0 };
    let syscalls = 0;
    for (let round = 1; round <= rounds; round++) {
      const tsFirst = round % 2 === 1;
      let c: BaselineOutput;
      let ts: number;
      if (tsFirst) {
        ts = timeTranslations(chain, gvas, iterations);
        c = await runC(iterations);
      } else {
        c = await runC(iterations);
        ts = timeTranslations(chain, gvas, iterations);
      }
      const before = cache.stats();
      const cached = timeTranslations(cache, gvas, iterations * CACHED_FACTOR);
      const after = cache.stats();
      cacheRun = { syncs: after.syncs - before.syncs, hits: after.hits - before.hits, misses: after.misses - before.misses };
      const walk = timeWalk(chain.walker, chain.rootGpa, gvas, iterations * WALK_FACTOR);
      syscalls = c.syscalls_per_translation;
      const r: TranslateRound = {
        round,
        order: tsFirst ? 'ts-c' : 'c-ts',
        ts_uncached_per_s: Math.round(ts),
        c_per_s: Math.round(c.chain_per_s),
        uncached_ratio: round3(ts / c.chain_per_s),
        ts_cached_per_s: Math.round(cached),
        ts_walk_per_s: Math.round(walk),
        c_walk_per_s: Math.round(c.walk_per_s),
        walk_ratio: round3(walk / c.walk_per_s),
      };
      perRound.push(r);
      log(`round ${round}/${rounds}: uncached TS ${fmt(r.ts_uncached_per_s)}/s, C ${fmt(r.c_per_s)}/s, ratio ${r.uncached_ratio}; cached ${fmt(r.ts_cached_per_s)}/s; walk ratio ${r.walk_ratio}`);
    }

    const med = (f: (r: TranslateRound) => number) => median(perRound.map(f));
    const uncachedRatio = round3(med((r) => r.uncached_ratio));
    const cachedPerS = Math.round(med((r) => r.ts_cached_per_s));
    const tsUncached = Math.round(med((r) => r.ts_uncached_per_s));
    return {
      benchmark: 'translate',
      uncached_ratio: uncachedRatio,
      target_uncached_ratio: TARGET_RATIO,
      meets_uncached_target: uncachedRatio >= TARGET_RATIO,
      cached_per_s: cachedPerS,
      target_cached_per_s: TARGET_CACHED,
      meets_cached_target: cachedPerS >= TARGET_CACHED,
      ts_uncached_per_s: tsUncached,
      c_per_s: Math.round(med((r) => r.c_per_s)),
      walk_ratio: round3(med((r) => r.walk_ratio)),
      ts_walk_per_s: Math.round(med((r) => r.ts_walk_per_s)),
      c_walk_per_s: Math.round(med((r) => r.c_walk_per_s)),
      cached_speedup: Math.round((cachedPerS / tsUncached) * 10) / 10,
      rounds,
      iterations,
      gvas: { count: gvas.his.length, in_4k_pages: sums.small, in_2m_pages: gvas.his.length - sums.small },
      syscalls_per_translation: syscalls,
      memory: { size_mb: ram.size / 2 ** 20, backing: ram.backing, host_page_size: sums.hostPageSize },
      cache: { dirty_log_mode: dirtyLog.mode, syncs_per_run: cacheRun.syncs, hits_per_run: cacheRun.hits, misses_per_run: cacheRun.misses },
      per_round: perRound,
      host: hostInfo(),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
    pagemap.close();
    vm.close();
  }
}

/** The readable table of a result. */
export function formatTranslateTable(r: TranslateBenchResult): string {
  const summary = formatTable([
    ['figure (median, per second)', 'TS', 'C', 'TS/C'],
    ['full chain GVA→GPA→HVA→HPA, uncached', fmt(r.ts_uncached_per_s), fmt(r.c_per_s), `${r.uncached_ratio.toFixed(3)}x`],
    ['full chain, TranslationCache hits', fmt(r.cached_per_s), fmt(r.c_per_s), `${(r.cached_per_s / r.c_per_s).toFixed(1)}x`],
    ['guest walk only (GVA→GPA)', fmt(r.ts_walk_per_s), fmt(r.c_walk_per_s), `${r.walk_ratio.toFixed(3)}x`],
  ]);
  const rounds = formatTable([
    ['round', 'order', 'TS uncached/s', 'C/s', 'TS/C', 'TS cached/s', 'TS walk/s', 'C walk/s', 'walk TS/C'],
    ...r.per_round.map((p) => [
      String(p.round), p.order, fmt(p.ts_uncached_per_s), fmt(p.c_per_s), p.uncached_ratio.toFixed(3), fmt(p.ts_cached_per_s),
      fmt(p.ts_walk_per_s), fmt(p.c_walk_per_s), p.walk_ratio.toFixed(3),
    ]),
  ]);
  const verdict = (ok: boolean) => (ok ? 'meets' : 'misses');
  return [
    `Full-chain translation: ${r.rounds} rounds × ${fmt(r.iterations)} translations (cached ×${CACHED_FACTOR}, walk-only ×${WALK_FACTOR}), TS and C alternating,`,
    `over ${r.gvas.count} GVAs (${r.gvas.in_4k_pages} in 4 KiB guest pages, ${r.gvas.in_2m_pages} in 2 MiB ones) of a ${r.memory.size_mb} MiB ${r.memory.backing} VM; ${r.syscalls_per_translation.toFixed(2)} system calls per translation.`,
    `Uncached TS/C ${r.uncached_ratio.toFixed(3)} ${verdict(r.meets_uncached_target)} the target ≥ ${r.target_uncached_ratio}; cached ${fmt(r.cached_per_s)}/s ${verdict(r.meets_cached_target)} the target ≥ ${fmt(r.target_cached_per_s)}/s (${r.cached_speedup}x uncached).`,
    `Cache: ${r.cache.dirty_log_mode} dirty log, ${r.cache.syncs_per_run} automatic syncs per timed run of ${fmt(r.cache.hits_per_run)} hits.`,
    '',
    summary,
    rounds,
    `host: ${r.host.cpu}, ${r.host.cores} cores, Linux ${r.host.kernel}, Node ${r.host.node}`,
    '',
  ].join('\n');
}

/**
 * One GVA per mapped 4 KiB page of RAM, at a random 8-byte-aligned offset, shuffled; the same
 * seed every run so TS and C (and successive runs) translate the same list.
 */
function gvaList(chain: FastChain, ramSize: number): GvaList {
  let seed = 0x9e3779b9;
  const rand = () => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return seed >>> 0;
  };
  const list: number[] = [];
  for (let page = 0; page < ramSize / 4096; page++) {
    const gva = page * 4096 + (rand() & 0xff8);
    if (chain.walker.translate(chain.rootGpa, 0, gva) >= 0) list.push(gva);
  }
  for (let i = list.length - 1; i > 0; i--) {
    const j = rand() % (i + 1);
    [list[i], list[j]] = [list[j], list[i]];
  }
  return { his: new Uint32Array(list.length), los: Uint32Array.from(list) };
}

/** The sums the C baseline prints for one pass, and what the pass saw. */
function checksums(chain: FastChain, g: GvaList): { gpaSum: number; pfnSum: number; present: number; small: number; hostPageSize: number } {
  const out = emptyChainResult();
  let gpaSum = 0;
  let pfnSum = 0;
  let present = 0;
  let small = 0;
  let hostPageSize = 0;
  for (let i = 0; i < g.his.length; i++) {
    if (!chain.translateParts(g.his[i], g.los[i], out)) continue;
    gpaSum += out.gpa;
    if (out.guestPageSize === 4096) small++;
    hostPageSize = Math.max(hostPageSize, out.hostPageSize);
    if (out.pfn >= 0) {
      pfnSum += out.pfn;
      present++;
    }
  }
  return { gpaSum, pfnSum, present, small, hostPageSize };
}

/** Full-chain translations per second through `t`: a {@link FastChain}, or a {@link TranslationCache}'s lookups. */
function timeTranslations(t: PartsTranslator, g: GvaList, n: number): number {
  const out: ChainResult = emptyChainResult();
  const { his, los } = g;
  let sink = 0;
  let k = 0;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    if (t.translateParts(his[k], los[k], out)) sink += out.hpa;
    if (++k === his.length) k = 0;
  }
  const ms = performance.now() - t0;
  if (sink === -1) throw new Error('unreachable'); // keeps the results alive
  return (n * 1000) / ms;
}

/** Guest walks per second. */
function timeWalk(walker: FastWalker, root: number, g: GvaList, n: number): number {
  const { his, los } = g;
  let sink = 0;
  let k = 0;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    sink += walker.translate(root, his[k], los[k]);
    if (++k === his.length) k = 0;
  }
  const ms = performance.now() - t0;
  if (sink === -1) throw new Error('unreachable');
  return (n * 1000) / ms;
}

const fmt = (v: number) => Math.round(v).toLocaleString('en-US');
