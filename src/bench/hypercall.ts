/**
 * Hypercall round-trip benchmark: the TypeScript VMM against a minimal C VMM
 * (bench/c/hypercall-baseline.c) running the identical guest from the identical boot state.
 *
 * Each round runs, side by side on the same machine, (a) the TS VMM with the benchmark's handler
 * loaded into the vCPU thread through the public `Vm.loadHypercallModule` API, (b) the C
 * baseline, in alternating order, and then (c) a smaller run of the TS VMM with a main-thread
 * handler (`Vm.handleHypercall`) for information. Absolute times drift a lot on shared machines,
 * so the headline figure is the median of the per-round TS/C ratios.
 */
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { HC_USER_BASE } from '../hypercall/abi.js';
import { loadImageFile, type LoadedImage } from '../loader/image.js';
import { buildGuests, guestPath } from '../sdk/toolchain.js';
import { Vm } from '../vmm/vm.js';
import { buildCBaseline, runCBaseline } from './baseline.js';
import { formatTable, hostInfo, type HostInfo } from './report.js';
import { median, round1, round2, round3 } from './stats.js';

/** Options of {@link runHypercallBench}. */
export interface HypercallBenchOptions {
  /** Rounds of (TS, C, main-thread) runs (default 7). */
  rounds?: number;
  /** Hypercall exits per timed run (default 20,000; the main-thread run does a quarter). */
  iterations?: number;
  /** Progress lines (default: none). */
  log?: (s: string) => void;
}

/** One round's measurements. */
export interface HypercallRound {
  round: number;
  /** Which VMM ran first in this round. */
  order: 'ts-c' | 'c-ts';
  ts_us: number;
  c_us: number;
  /** ts_us / c_us. */
  ratio: number;
  /** vCPU-thread CPU time per exit (leaves out waiting for a CPU). */
  ts_cpu_us: number;
  c_cpu_us: number;
  cpu_ratio: number;
  main_thread_us: number;
  /** main_thread_us / c_us. */
  main_thread_ratio: number;
  create_to_first_hypercall_ms: { ts: number; c: number };
  rss_mb: { ts: number; c: number };
}

/** What {@link runHypercallBench} measured (JSON-friendly). */
export interface HypercallBenchResult {
  benchmark: 'hypercall';
  /** Median over rounds of the per-round ratio TS per-exit / C per-exit. */
  ratio: number;
  target_ratio: 1.05;
  meets_target: boolean;
  /** Median TS hypercall round trip (handler in the vCPU thread), µs per exit. */
  ts_round_trip_us: number;
  /** Median C baseline round trip, µs per exit. */
  c_round_trip_us: number;
  /**
   * Median over rounds of the ratio of vCPU-thread CPU time per exit (TS/C), measured from the
   * guest's first to its last user hypercall. Less sensitive than `ratio` to other processes
   * competing for the CPUs; not a replacement for it.
   */
  cpu_ratio: number;
  ts_cpu_us: number;
  c_cpu_us: number;
  rounds: number;
  /** Exits per timed TS and C run. */
  iterations: number;
  /** Median round trip with a main-thread handler (`Vm.handleHypercall`), µs per exit. */
  main_thread_handler_us: number;
  /** Median over rounds of main-thread µs / C µs. */
  main_thread_ratio: number;
  main_thread_iterations: number;
  /**
   * Median time from the start of VM creation (TS: `Vm.create`; C: the start of `main()`) to the
   * guest's mark-1 hypercall, which is its second exit.
   */
  create_to_first_hypercall_ms: { ts: number; c: number };
  /**
   * Median resident set size while the VM runs: the whole Node process (largest sample during
   * the run) against the C baseline's VmRSS at its end. `ts_idle` is Node's RSS before the first
   * VM of this benchmark was created.
   */
  rss_mb: { ts: number; c: number; ts_idle: number };
  per_round: HypercallRound[];
  host: HostInfo;
}

const DEFAULT_ROUNDS = 7;
const DEFAULT_ITERATIONS = 20_000;
const WARMUP_ITERATIONS = 500;
const GUEST_MEMORY = '64M';
const TARGET_RATIO = 1.05;
const HANDLER_URL = new URL('./hypercall-handler.js', import.meta.url);

/** What the C baseline prints. */
interface BaselineOutput {
  per_exit_ns: number;
  iterations: number;
  create_to_first_hypercall_ns: number;
  create_to_mark1_ns: number;
  cpu_per_exit_ns: number;
  rss_kb: number;
  exits: number;
  guest_status: number;
}

interface TsRun {
  perExitUs: number;
  /** vCPU-thread CPU time per exit, when the handler module measured it. */
  cpuPerExitUs: number;
  createToMark1Ms: number;
  rssMb: number;
}

/** Runs the benchmark; throws (e.g. `KvmUnavailableError`) when something cannot run. */
export async function runHypercallBench(opts: HypercallBenchOptions = {}): Promise<HypercallBenchResult> {
  const rounds = opts.rounds ?? DEFAULT_ROUNDS;
  const iterations = opts.iterations ?? DEFAULT_ITERATIONS;
  if (!Number.isSafeInteger(rounds) || rounds < 1) throw new RangeError(`rounds must be a positive integer, got ${rounds}`);
  if (!Number.isSafeInteger(iterations) || iterations < 1 || iterations > 2 ** 32) throw new RangeError(`iterations must be a positive integer, got ${iterations}`);
  const mainIterations = Math.max(1, Math.floor(iterations / 4));
  const log = opts.log ?? (() => {});

  const idleRss = process.memoryUsage.rss();
  buildGuests({ log });
  const baseline = buildCBaseline('hypercall-baseline', log);
  const image = loadImageFile(guestPath('tests', 'bench-hypercall'));
  const stateDir = mkdtempSync(join(os.tmpdir(), 'kvmtalk-bench-'));
  try {
    writeBootState(image, stateDir);
    log(`warm-up (${WARMUP_ITERATIONS} exits each)`);
    await runTs(image, WARMUP_ITERATIONS, 'module');
    await runC(baseline, stateDir, WARMUP_ITERATIONS);

    const perRound: HypercallRound[] = [];
    for (let round = 1; round <= rounds; round++) {
      const tsFirst = round % 2 === 1;
      let ts: TsRun;
      let c: BaselineOutput;
      if (tsFirst) {
        ts = await runTs(image, iterations, 'module');
        c = await runC(baseline, stateDir, iterations);
      } else {
        c = await runC(baseline, stateDir, iterations);
        ts = await runTs(image, iterations, 'module');
      }
      const main = await runTs(image, mainIterations, 'main-thread');
      const cUs = c.per_exit_ns / 1000;
      const r: HypercallRound = {
        round,
        order: tsFirst ? 'ts-c' : 'c-ts',
        ts_us: round2(ts.perExitUs),
        c_us: round2(cUs),
        ratio: round3(ts.perExitUs / cUs),
        ts_cpu_us: round2(ts.cpuPerExitUs),
        c_cpu_us: round2(c.cpu_per_exit_ns / 1000),
        cpu_ratio: round3(ts.cpuPerExitUs / (c.cpu_per_exit_ns / 1000)),
        main_thread_us: round2(main.perExitUs),
        main_thread_ratio: round3(main.perExitUs / cUs),
        create_to_first_hypercall_ms: { ts: round2(ts.createToMark1Ms), c: round2(c.create_to_mark1_ns / 1e6) },
        rss_mb: { ts: round1(ts.rssMb), c: round1(c.rss_kb / 1024) },
      };
      perRound.push(r);
      log(`round ${round}/${rounds}: TS ${r.ts_us} µs, C ${r.c_us} µs, ratio ${r.ratio} (CPU time: ${r.cpu_ratio}); main-thread handler ${r.main_thread_us} µs`);
    }

    const ratio = round3(median(perRound.map((r) => r.ratio)));
    return {
      benchmark: 'hypercall',
      ratio,
      target_ratio: TARGET_RATIO,
      meets_target: ratio <= TARGET_RATIO,
      ts_round_trip_us: round2(median(perRound.map((r) => r.ts_us))),
      c_round_trip_us: round2(median(perRound.map((r) => r.c_us))),
      cpu_ratio: round3(median(perRound.map((r) => r.cpu_ratio))),
      ts_cpu_us: round2(median(perRound.map((r) => r.ts_cpu_us))),
      c_cpu_us: round2(median(perRound.map((r) => r.c_cpu_us))),
      rounds,
      iterations,
      main_thread_handler_us: round2(median(perRound.map((r) => r.main_thread_us))),
      main_thread_ratio: round3(median(perRound.map((r) => r.main_thread_ratio))),
      main_thread_iterations: mainIterations,
      create_to_first_hypercall_ms: {
        ts: round2(median(perRound.map((r) => r.create_to_first_hypercall_ms.ts))),
        c: round2(median(perRound.map((r) => r.create_to_first_hypercall_ms.c))),
      },
      rss_mb: {
        ts: round1(median(perRound.map((r) => r.rss_mb.ts))),
        c: round1(median(perRound.map((r) => r.rss_mb.c))),
        ts_idle: round1(idleRss / 2 ** 20),
      },
      per_round: perRound,
      host: hostInfo(),
    };
  } finally {
    rmSync(stateDir, { recursive: true, force: true });
  }
}

/** The readable table of a result: one row per figure, TS against C. */
export function formatHypercallTable(r: HypercallBenchResult): string {
  const ratio = (a: number, b: number) => (b > 0 ? `${(a / b).toFixed(2)}x` : '-');
  const summary = formatTable([
    ['figure (median)', 'TS', 'C', 'TS/C'],
    ['hypercall round trip, handler in vCPU thread (µs)', r.ts_round_trip_us.toFixed(2), r.c_round_trip_us.toFixed(2), `${r.ratio.toFixed(3)}x`],
    ['vCPU thread CPU time per exit (µs)', r.ts_cpu_us.toFixed(2), r.c_cpu_us.toFixed(2), `${r.cpu_ratio.toFixed(3)}x`],
    ['hypercall round trip, main-thread handler (µs)', r.main_thread_handler_us.toFixed(2), r.c_round_trip_us.toFixed(2), `${r.main_thread_ratio.toFixed(3)}x`],
    ['create → first hypercall (ms)', r.create_to_first_hypercall_ms.ts.toFixed(2), r.create_to_first_hypercall_ms.c.toFixed(2), ratio(r.create_to_first_hypercall_ms.ts, r.create_to_first_hypercall_ms.c)],
    ['RSS while running (MB)', r.rss_mb.ts.toFixed(1), r.rss_mb.c.toFixed(1), ratio(r.rss_mb.ts, r.rss_mb.c)],
  ]);
  const rounds = formatTable([
    ['round', 'order', 'TS µs', 'C µs', 'TS/C', 'CPU TS/C', 'main-thread µs', 'create→hc TS ms', 'create→hc C ms'],
    ...r.per_round.map((p) => [
      String(p.round), p.order, p.ts_us.toFixed(2), p.c_us.toFixed(2), p.ratio.toFixed(3), p.cpu_ratio.toFixed(3),
      p.main_thread_us.toFixed(2), p.create_to_first_hypercall_ms.ts.toFixed(2), p.create_to_first_hypercall_ms.c.toFixed(2),
    ]),
  ]);
  const verdict = r.meets_target ? 'meets' : 'misses';
  return [
    `Hypercall round trip: ${r.rounds} rounds × ${r.iterations} exits (main-thread handler: ${r.main_thread_iterations}), TS and C alternating.`,
    `TS/C ratio ${r.ratio.toFixed(3)} ${verdict} the target ≤ ${r.target_ratio} (vCPU-thread CPU time ratio ${r.cpu_ratio.toFixed(3)}).`,
    '',
    summary,
    rounds,
    `host: ${r.host.cpu}, ${r.host.cores} cores, Linux ${r.host.kernel}, Node ${r.host.node}; Node RSS before the first VM ${r.rss_mb.ts_idle.toFixed(1)} MB`,
    '',
  ].join('\n');
}

/** One TS VM run of the bench-hypercall guest with `n` user hypercalls. */
async function runTs(image: LoadedImage, n: number, handler: 'module' | 'main-thread'): Promise<TsRun> {
  const vm = Vm.create({ memory: GUEST_MEMORY, console: 'capture', benchIterations: n, log: () => {} });
  try {
    vm.load(image);
    let cpu: { cpuNs: number; exits: number } | undefined;
    vm.on('bench-cpu', (p: { cpuNs: number; exits: number }) => (cpu = p));
    if (handler === 'module') await vm.loadHypercallModule(`${HANDLER_URL.href}?n=${n}`);
    else vm.handleHypercall(HC_USER_BASE, (call) => call.a0 + 1n);
    let rss = process.memoryUsage.rss();
    const sampler = setInterval(() => (rss = Math.max(rss, process.memoryUsage.rss())), 100);
    let result;
    try {
      result = await vm.run();
    } finally {
      clearInterval(sampler);
    }
    rss = Math.max(rss, process.memoryUsage.rss());
    if (result.kind !== 'exit' || result.status !== 0) {
      const why = result.kind === 'crash' ? result.report.summary : result.kind === 'failed' ? result.message : `${result.kind} with status ${result.status}`;
      throw new Error(`bench-hypercall guest did not exit cleanly: ${why}`);
    }
    const marks = vm.benchMarks();
    if (!marks[1] || !marks[2]) throw new Error('bench-hypercall guest did not record marks 1 and 2');
    const cpuPerExitUs = cpu && cpu.exits > 0 ? cpu.cpuNs / cpu.exits / 1000 : NaN;
    return { perExitUs: ((marks[2] - marks[1]) * 1000) / n, cpuPerExitUs, createToMark1Ms: marks[1] - vm.createdAt, rssMb: rss / 2 ** 20 };
  } finally {
    vm.close();
  }
}

/** One run of the C baseline on the boot state in `stateDir`. */
function runC(binary: string, stateDir: string, n: number): Promise<BaselineOutput> {
  return runCBaseline<BaselineOutput>(binary, [stateDir, String(n)]);
}

/**
 * Loads the guest into a fresh VM and writes its boot state for the C baseline: `memory.bin`
 * as a sparse file holding only non-zero pages, and vCPU 0's regs, sregs and CPUID.
 */
function writeBootState(image: LoadedImage, dir: string): void {
  const vm = Vm.create({ memory: GUEST_MEMORY, console: 'capture', log: () => {} });
  try {
    vm.load(image);
    const state = vm.bootState();
    const mem = state.memory;
    const fd = openSync(join(dir, 'memory.bin'), 'w');
    try {
      const PAGE = 4096;
      const zero = Buffer.alloc(PAGE);
      const bytes = Buffer.from(mem.buffer, mem.byteOffset, mem.byteLength);
      for (let off = 0; off < bytes.length; off += PAGE) {
        const page = bytes.subarray(off, Math.min(off + PAGE, bytes.length));
        if (!page.equals(zero.subarray(0, page.length))) writeSync(fd, page, 0, page.length, off);
      }
      ftruncateSync(fd, bytes.length);
    } finally {
      closeSync(fd);
    }
    const cpu0 = state.vcpus[0];
    writeFileSync(join(dir, 'vcpu0.regs'), cpu0.regs);
    writeFileSync(join(dir, 'vcpu0.sregs'), cpu0.sregs);
    writeFileSync(join(dir, 'vcpu0.cpuid'), cpu0.cpuid);
  } finally {
    vm.close();
  }
}
