/**
 * Channel benchmark (`kvmtalk bench channel`): messages per second and round-trip latency of
 * shared-memory channels (docs/channels.md) between the bench-channel guest
 * (guest/tests/bench-channel.c) and the TypeScript host end, against the same ring code in C
 * between two host threads (bench/c/channel-baseline.c), measured side by side in every round.
 *
 * The matrix: message sizes 64 B and 4 KiB × notification modes (hypercall, ioeventfd, polling)
 * × 1 and 2 vCPUs, for throughput in both directions and for round trips started from either
 * side. One VM per (mode, vCPU count) per round runs every phase of that row; the guest asks for
 * its next phase with user hypercall 330, so no phase pays for a VM boot.
 *
 * Definitions (also in the result's `definitions`):
 * - **Throughput.** The producer sends N messages as fast as the channel lets it (the guest with
 *   kt_chan_send, which waits while the ring is full; the host with `await channel.send()`); the
 *   consumer takes them and checks each one's length and sequence number. The clock runs from
 *   the producer's start to the consumer's last message: guest→host from the guest's
 *   KT_HC_BENCH_MARK before its first send to the host taking the last message; host→guest from
 *   the host's first send to the guest's mark after its last receive. Both marks are stamped by
 *   the host clock on the vCPU thread, so every interval is measured on one clock.
 * - **Consumers.** Polling mode: the host consumer spins on `channel.drainFrames()` in a tight
 *   synchronous loop: `Ring.readBatch` loads the producer index once per batch, validates each
 *   frame, hands it over in place (the check reads length and sequence number, nothing is
 *   copied) and stores the consumer index once per batch (and every capacity/4 bytes); the guest
 *   spins in kt_chan_recv / kt_chan_send. Hypercall and ioeventfd modes: the host waits with
 *   `await channel.readable()` then `drainFrames()`s everything there; the guest sleeps in
 *   KT_HC_WAIT and is woken by the channel's interrupt. Round trips use `drain()` (a copy into
 *   the channel's reused buffer; the echo sends that copy back).
 * - **Latency.** There is no clock both sides can read cheaply and exactly (guest RDTSC against
 *   the host's clock would need an offset known to far better than the microsecond being
 *   measured), so latency is a round trip timed on one clock: `rtt/2` is the one-way estimate.
 *   `initiator: 'host'`: the host sends a message, the guest sends it back, the host times it
 *   with performance.now(). `initiator: 'guest'`: the guest sends, the host echoes, the guest
 *   times it with RDTSC, converted to ns with the TSC rate measured over the same phase (TSC
 *   ticks between two marks over the host-clock time between them). Each round trip has one
 *   leg in each direction; the two initiators differ in who waits first and whose clock runs.
 * - **2 vCPUs.** Each vCPU runs the same phase at the same time on its own channel
 *   ("bench0", "bench1"), interrupts to its own vCPU; throughput is the sum over both channels
 *   (total messages / (last end − first start)); latency percentiles are over both channels'
 *   samples. On a 2-core host, polling with 2 vCPUs has three spinning threads (two vCPUs and the
 *   host's main thread) on two cores: it measures oversubscription as much as the channel.
 * - **Baseline.** The same ring (guest/sdk/src/ring.c compiled for the host) between two host
 *   threads, same capacity, same sizes, PAUSE while full or empty: msgs/s and round trip
 *   (CLOCK_MONOTONIC). Fairness: the C consumer does the same protocol-level work as the TS
 *   polling consumer, not more and not less. Both batch: one producer-index load and header
 *   check per batch, per frame the full validation (read the header words once, reserved, wrap,
 *   length, overrun, end of area), the length and sequence-number check read in place, one
 *   consumer-index store per batch (bench/c/channel-baseline.c `read_batch`). Comparing a TS
 *   batch consumer with a C consumer that copies and stores the index per message
 *   (`kt_ring_try_read`) would flatter TS; the C batch consumer is not slowed down in any way
 *   (the C rate is bounded by its producer: copy-per-message and batch consumers measure within
 *   noise of each other on the development machine). The producer on both sides is the
 *   per-message `kt_ring_try_write` / `kt_chan_send` (with no doorbell check in polling mode).
 * - **Rounds.** Each round runs one VM per (mode, vCPU count) and the C baseline; the C run sits
 *   right before or after (alternating) the polling 1-vCPU VM it is compared with. Each phase has
 *   a time limit (default 400 ms; the producer then sends an END message and the figures cover
 *   what was done), which bounds the whole run on a slow or loaded machine.
 * - **Noise.** A spinning pair (polling mode, the C baseline) needs two free cores; when both
 *   land on one, every wait lasts a scheduler time slice (milliseconds). On a loaded 2-core host
 *   per-round figures are bimodal, hence medians over rounds, `per_round` and `loadavg`.
 * - **Headline ratios** are medians of per-round ratios. `polling_ratio_64`: TS polling mode,
 *   64 B, guest→host, 1 vCPU, over the C rate for 64 B (target ≥ 0.5). `ioeventfd_over_hypercall`:
 *   ioeventfd-mode rate over hypercall-mode rate, 64 B guest→host, 1 vCPU (target > 1).
 *
 * Every spinning host loop returns to the event loop for a moment every 20 ms (to notice a guest
 * that failed), which costs well under 1 % of a phase.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { HC_USER_BASE } from '../hypercall/abi.js';
import type { ChannelMode } from '../channel/channel-area.js';
import type { Channel } from '../channel/channel.js';
import { loadImageFile, type LoadedImage } from '../loader/image.js';
import { buildGuests, guestPath, sdkRoot } from '../sdk/toolchain.js';
import type { VmResult } from '../vmm/outcome.js';
import { Vm } from '../vmm/vm.js';
import { runCBaseline } from './baseline.js';
import { formatTable, hostInfo, type HostInfo } from './report.js';
import { median, round1, round2, round3 } from './stats.js';

/** Options of {@link runChannelBench}. */
export interface ChannelBenchOptions {
  /** Rounds (default 5): each runs the C baseline and one VM per (mode, vCPU count). */
  rounds?: number;
  /** Messages per throughput phase and channel (default 50,000); round trips are a 20th of it (at least 20). */
  messages?: number;
  /**
   * Time limit of each phase and each C measurement, ms (default 400): a phase still running
   * then ends early and the figures cover what it did (see `count` in the matrix).
   */
  phaseLimitMs?: number;
  /** Progress lines (default: none). */
  log?: (s: string) => void;
}

/** Message sizes measured, in bytes. */
export const CHANNEL_BENCH_SIZES = [64, 4096] as const;
/** Notification modes measured. */
export const CHANNEL_BENCH_MODES: readonly ChannelMode[] = ['hypercall', 'ioeventfd', 'polling'];
/** vCPU counts measured. */
export const CHANNEL_BENCH_VCPUS = [1, 2] as const;

export type Direction = 'guest-to-host' | 'host-to-guest';
export type Initiator = 'host' | 'guest';

/** Percentiles in microseconds. */
export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
}

/** One throughput cell of the matrix (medians over rounds). */
export interface ThroughputCell {
  mode: ChannelMode;
  vcpus: number;
  size: number;
  direction: Direction;
  msgs_per_s: number;
  /** msgs_per_s × size, in MB/s (10^6 bytes). */
  mb_per_s: number;
  per_round: number[];
  /** Messages measured in each round, all channels (fewer than asked when the phase hit its time limit). */
  messages_per_round: number[];
}

/** One latency cell of the matrix (medians over rounds of each round's percentiles). */
export interface LatencyCell {
  mode: ChannelMode;
  vcpus: number;
  size: number;
  initiator: Initiator;
  /** Round trip, µs. */
  rtt_us: Percentiles;
  /** rtt / 2: the one-way estimate, µs. */
  one_way_us: Percentiles;
  /** Round trips measured in each round, all channels (fewer than asked when the phase hit its time limit). */
  samples_per_round: number[];
}

/** The C baseline, medians over rounds. */
export interface BaselineCell {
  size: number;
  msgs_per_s: number;
  mb_per_s: number;
  rtt_us: Percentiles;
  one_way_us: Percentiles;
  per_round: number[];
  messages_per_round: number[];
  round_trips_per_round: number[];
}

/** One round's headline figures. */
export interface ChannelRound {
  round: number;
  /** Whether the C baseline ran just before ('c-ts') or just after ('ts-c') the polling 1-vCPU VM. */
  order: 'c-ts' | 'ts-c';
  c_64_msgs_per_s: number;
  ts_polling_64_msgs_per_s: number;
  polling_ratio_64: number;
  ioeventfd_64_msgs_per_s: number;
  hypercall_64_msgs_per_s: number;
  ioeventfd_over_hypercall: number;
  /** Seconds this round took. */
  seconds: number;
}

/** What {@link runChannelBench} measured (JSON-friendly). */
export interface ChannelBenchResult {
  benchmark: 'channel';
  /** Median over rounds of (TS polling, 64 B, guest→host, 1 vCPU) msgs/s / (C, 64 B) msgs/s. */
  polling_ratio_64: number;
  target_polling_ratio_64: 0.5;
  meets_polling_target: boolean;
  /** Median over rounds of ioeventfd-mode / hypercall-mode msgs/s (64 B, guest→host, 1 vCPU). */
  ioeventfd_over_hypercall: number;
  /** The target: ioeventfd mode faster than hypercall mode (ratio above 1). */
  target_ioeventfd_over_hypercall: 1;
  meets_ioeventfd_target: boolean;
  /** The same ratio for every (size, direction, vCPU count), medians of per-round ratios. */
  ioeventfd_over_hypercall_by_cell: { size: number; direction: Direction; vcpus: number; ratio: number }[];
  ts_polling_64_msgs_per_s: number;
  c_64_msgs_per_s: number;
  /**
   * For information: the best round's TS polling rate over the best round's C rate (64 B). Time
   * slicing on a loaded host only ever slows a spinning pair down, so best-of-rounds shows what
   * each side can do when it has two cores; the median ratio is the headline.
   */
  polling_ratio_64_best: number;
  matrix: { throughput: ThroughputCell[]; latency: LatencyCell[] };
  baseline: BaselineCell[];
  rounds: number;
  /** Messages per throughput phase and channel. */
  messages: number;
  /** Round trips per latency phase and channel. */
  round_trips: number;
  /** Data bytes of each ring (the channel default; the C rings have the same). */
  ring_capacity: number;
  /** Time limit of each phase and each C measurement, ms. */
  phase_limit_ms: number;
  sizes: number[];
  definitions: Record<string, string>;
  per_round: ChannelRound[];
  /** Wall time of the whole benchmark, s. */
  seconds: number;
  /**
   * 1-minute load average when the benchmark started (other work on the machine; above
   * `cores - 0.5` the table warns that spinning figures are unreliable) and when it ended (which
   * includes the benchmark's own spinning threads).
   */
  loadavg: { start: number; end: number };
  host: HostInfo;
}

const DEFAULT_ROUNDS = 5;
const DEFAULT_MESSAGES = 50_000;
const RING_CAPACITY = 64 * 1024;
const GUEST_MEMORY = '64M';
const TARGET_POLLING_RATIO = 0.5;
/** User hypercall the guest asks for its next phase with (KT_HC_USER_BASE + 74). */
const HC_PHASE = HC_USER_BASE + 74;
/** Guest phase kinds (bench-channel.c). */
const KIND = { done: 0, send: 1, recv: 2, echo: 3, ping: 4 } as const;
/** KT_HC_BENCH_MARK ids (+ vCPU index), see bench-channel.c. */
const MARK = { start: 2, end: 4, cal0: 6, cal1: 8 } as const;
const REPORT_MAGIC = 0x48434b42;
const MAX_GUEST_SAMPLES = 65536;
/** Default time limit of one phase (and of one C measurement): it then ends early. */
const DEFAULT_PHASE_LIMIT_MS = 400;
/** A VM that takes this much longer than its phases' limits has failed. */
const RUN_TIMEOUT_MS = 60_000;
/** Spinning loops go back to the event loop this often. */
const YIELD_EVERY_MS = 20;

export const CHANNEL_BENCH_DEFINITIONS: Record<string, string> = {
  throughput:
    'producer sends N messages as fast as the channel allows, consumer checks length and sequence number of each; ' +
    'time from the producer\'s start (guest: KT_HC_BENCH_MARK before its first send; host: before its first send) to the consumer\'s last message ' +
    '(host: when it took it; guest: KT_HC_BENCH_MARK after its last receive), all on the host clock',
  consumers:
    'polling: host spins on channel.drainFrames() (batched: validate each frame, check length and sequence number in place, ' +
    'one consumer-index store per batch) in a tight synchronous loop, guest spins in kt_chan_recv/kt_chan_send; ' +
    'hypercall/ioeventfd: host awaits channel.readable() then drainFrames()s (round trips: drain(), one message at a time), ' +
    'guest sleeps in KT_HC_WAIT until the channel interrupt',
  latency:
    'round trip on one clock, one_way = rtt / 2. initiator host: host sends, guest echoes, host times it with performance.now(); ' +
    'initiator guest: guest sends, host echoes, guest times it with RDTSC converted with the TSC rate measured over the same phase',
  two_vcpus:
    'both vCPUs run the same phase at once, each on its own channel (bench0, bench1) with interrupts to itself; ' +
    'throughput = total messages / (last end - first start); latency percentiles over both channels\' round trips',
  baseline:
    'guest/sdk/src/ring.c compiled for the host, producer and consumer on two host threads, same ring capacity, sizes and per-message work: ' +
    'producer kt_ring_try_write (sequence number, validate, copy, advance); throughput consumer batched like the TS polling consumer ' +
    '(one producer-index load per batch, validate each frame, check length and sequence number in place, one consumer-index store per batch); ' +
    'round trips kt_ring_try_read per message; PAUSE while full/empty; round trip timed with CLOCK_MONOTONIC',
  ratios: 'medians of per-round ratios; polling_ratio_64 = TS polling 64 B guest-to-host 1 vCPU / C 64 B; ioeventfd_over_hypercall = 64 B guest-to-host 1 vCPU',
  time_limit:
    'a phase (or C measurement) still running after phase_limit_ms ends early: the producer or pinger stops and sends an END message; ' +
    'rates and percentiles cover what was done (messages_per_round, samples_per_round)',
  noise:
    'spinning producer/consumer pairs (polling mode, the C baseline) need two free cores: when they share one, each wait lasts a scheduler ' +
    'time slice (milliseconds). On a loaded 2-core machine per-round results are bimodal; look at loadavg and per_round',
};

type PhaseName = 'g2h' | 'h2g' | 'rtt-host' | 'rtt-guest';
const GUEST_KIND: Record<PhaseName, number> = { g2h: KIND.send, h2g: KIND.recv, 'rtt-host': KIND.echo, 'rtt-guest': KIND.ping };

interface Phase {
  name: PhaseName;
  size: number;
  /** Messages (throughput) or round trips (latency) per channel. */
  count: number;
  /** Run but not reported: settles the new VM's threads before the measured phases. */
  settle?: boolean;
}

/** What one phase measured. */
interface PhaseResult {
  phase: Phase;
  /** Messages (throughput) or round trips (latency) actually measured, all channels: fewer than asked when the time limit ended the phase. */
  count: number;
  /** Throughput phases: messages per second over all channels. */
  msgsPerS?: number;
  /** Latency phases: round trips in ns, all channels. */
  rttNs?: number[];
}

/** What the C baseline prints. */
interface BaselineOutput {
  capacity: number;
  messages: number;
  round_trips: number;
  sizes: { size: number; msgs_per_s: number; elapsed_ns: number; messages: number; round_trips: number; rtt_ns: { p50: number; p90: number; p99: number; min: number; mean: number } }[];
}

/** Runs the benchmark; throws (e.g. `KvmUnavailableError`) when something cannot run. */
export async function runChannelBench(opts: ChannelBenchOptions = {}): Promise<ChannelBenchResult> {
  const rounds = opts.rounds ?? DEFAULT_ROUNDS;
  const messages = opts.messages ?? DEFAULT_MESSAGES;
  if (!Number.isSafeInteger(rounds) || rounds < 1) throw new RangeError(`rounds must be a positive integer, got ${rounds}`);
  if (!Number.isSafeInteger(messages) || messages < 1 || messages > 2 ** 31) throw new RangeError(`messages must be a positive integer, got ${messages}`);
  const roundTrips = Math.min(MAX_GUEST_SAMPLES, Math.max(20, Math.floor(messages / 20)));
  const limitMs = opts.phaseLimitMs ?? DEFAULT_PHASE_LIMIT_MS;
  if (!Number.isSafeInteger(limitMs) || limitMs < 1) throw new RangeError(`phaseLimitMs must be a positive integer, got ${limitMs}`);
  const log = opts.log ?? (() => {});
  const t0 = performance.now();
  const loadStart = loadavg1();

  buildGuests({ log });
  const baseline = buildChannelBaseline(log);
  const image = loadImageFile(guestPath('tests', 'bench-channel'));
  const phases: Phase[] = CHANNEL_BENCH_SIZES.flatMap((size) => [
    { name: 'g2h', size, count: messages },
    { name: 'h2g', size, count: messages },
    { name: 'rtt-host', size, count: roundTrips },
    { name: 'rtt-guest', size, count: roundTrips },
  ] satisfies Phase[]);

  // Warm-up: every host code path once, so the first measured VM does not pay for the JIT.
  const warm = Math.max(1, Math.min(2000, Math.floor(messages / 10)));
  const warmPhases: Phase[] = phases.map((p) => ({ ...p, count: Math.max(1, Math.min(p.count, p.name.startsWith('rtt') ? 50 : warm)) }));
  log(`warm-up (${warm} messages per phase, each mode)`);
  for (const mode of CHANNEL_BENCH_MODES) await runVm(image, mode, 1, warmPhases, limitMs);
  await runBaseline(baseline, warm, 50, limitMs);

  type RoundData = { c: BaselineOutput; ts: Map<string, PhaseResult[]>; order: 'c-ts' | 'ts-c'; seconds: number };
  const data: RoundData[] = [];
  // Within a round, the pair the headline ratio compares runs back to back (C baseline and the
  // polling 1-vCPU VM, in alternating order), and so do the ioeventfd and hypercall VMs.
  for (let round = 1; round <= rounds; round++) {
    const start = performance.now();
    const cFirst = round % 2 === 1;
    let c: BaselineOutput | undefined;
    const ts = new Map<string, PhaseResult[]>();
    const vmRun = async (mode: ChannelMode, vcpus: number) => {
      // A new VM's vCPU worker spends its first ~100 ms compiling and collecting garbage on the
      // second core; an unreported first phase keeps that out of the measured ones.
      const settle: Phase = { name: 'g2h', size: 64, count: messages, settle: true };
      const results = (await runVm(image, mode, vcpus, [settle, ...phases], limitMs)).filter((r) => !r.phase.settle);
      ts.set(`${mode}/${vcpus}`, results);
      const g = results.find((r) => r.phase.name === 'g2h' && r.phase.size === 64)!;
      const rt = results.find((r) => r.phase.name === 'rtt-host' && r.phase.size === 64)!;
      log(`round ${round}/${rounds}: ${mode}, ${vcpus} vCPU${vcpus > 1 ? 's' : ''}: 64 B guest→host ${fmtRate(g.msgsPerS!)} msgs/s, round trip p50 ${(pct(rt.rttNs!, 50) / 1000).toFixed(1)} µs`);
    };
    const cRun = async () => {
      c = await runBaseline(baseline, messages, roundTrips, limitMs);
      const c64 = c.sizes.find((s) => s.size === 64)!;
      log(`round ${round}/${rounds}: C baseline 64 B ${fmtRate(c64.msgs_per_s)} msgs/s, round trip p50 ${(c64.rtt_ns.p50 / 1000).toFixed(2)} µs`);
    };
    for (const vcpus of CHANNEL_BENCH_VCPUS) {
      for (const mode of CHANNEL_BENCH_MODES) {
        if (vcpus === 1 && mode === 'polling' && cFirst) await cRun();
        await vmRun(mode, vcpus);
        if (vcpus === 1 && mode === 'polling' && !cFirst) await cRun();
      }
    }
    data.push({ c: c!, ts, order: cFirst ? 'c-ts' : 'ts-c', seconds: (performance.now() - start) / 1000 });
  }

  // ---- Aggregation -------------------------------------------------------------------------
  const tpPhase = (d: RoundData, mode: ChannelMode, vcpus: number, size: number, dir: Direction): PhaseResult =>
    d.ts.get(`${mode}/${vcpus}`)!.find((r) => r.phase.size === size && r.phase.name === (dir === 'guest-to-host' ? 'g2h' : 'h2g'))!;
  const rate = (d: RoundData, mode: ChannelMode, vcpus: number, size: number, dir: Direction): number => tpPhase(d, mode, vcpus, size, dir).msgsPerS!;
  const rtts = (d: RoundData, mode: ChannelMode, vcpus: number, size: number, who: Initiator): number[] =>
    d.ts.get(`${mode}/${vcpus}`)!.find((r) => r.phase.size === size && r.phase.name === (who === 'host' ? 'rtt-host' : 'rtt-guest'))!.rttNs!;
  const cRate = (d: RoundData, size: number) => d.c.sizes.find((s) => s.size === size)!.msgs_per_s;

  const throughput: ThroughputCell[] = [];
  const latency: LatencyCell[] = [];
  for (const vcpus of CHANNEL_BENCH_VCPUS) {
    for (const mode of CHANNEL_BENCH_MODES) {
      for (const size of CHANNEL_BENCH_SIZES) {
        for (const direction of ['guest-to-host', 'host-to-guest'] as const) {
          const perRound = data.map((d) => rate(d, mode, vcpus, size, direction));
          const m = median(perRound);
          throughput.push({
            mode, vcpus, size, direction, msgs_per_s: Math.round(m), mb_per_s: round1((m * size) / 1e6), per_round: perRound.map(Math.round),
            messages_per_round: data.map((d) => tpPhase(d, mode, vcpus, size, direction).count),
          });
        }
        for (const initiator of ['host', 'guest'] as const) {
          const per = data.map((d) => rtts(d, mode, vcpus, size, initiator));
          const rtt = medianPercentiles(per);
          latency.push({ mode, vcpus, size, initiator, rtt_us: rtt, one_way_us: halve(rtt), samples_per_round: per.map((p) => p.length) });
        }
      }
    }
  }
  const baselineCells: BaselineCell[] = CHANNEL_BENCH_SIZES.map((size) => {
    const perRound = data.map((d) => cRate(d, size));
    const m = median(perRound);
    const rtt = {
      p50: round2(median(data.map((d) => d.c.sizes.find((s) => s.size === size)!.rtt_ns.p50)) / 1000),
      p90: round2(median(data.map((d) => d.c.sizes.find((s) => s.size === size)!.rtt_ns.p90)) / 1000),
      p99: round2(median(data.map((d) => d.c.sizes.find((s) => s.size === size)!.rtt_ns.p99)) / 1000),
    };
    const cOf = (d: RoundData) => d.c.sizes.find((s) => s.size === size)!;
    return {
      size, msgs_per_s: Math.round(m), mb_per_s: round1((m * size) / 1e6), rtt_us: rtt, one_way_us: halve(rtt), per_round: perRound.map(Math.round),
      messages_per_round: data.map((d) => cOf(d).messages), round_trips_per_round: data.map((d) => cOf(d).round_trips),
    };
  });

  const perRound: ChannelRound[] = data.map((d, i) => {
    const c64 = cRate(d, 64);
    const p64 = rate(d, 'polling', 1, 64, 'guest-to-host');
    const io = rate(d, 'ioeventfd', 1, 64, 'guest-to-host');
    const hc = rate(d, 'hypercall', 1, 64, 'guest-to-host');
    return {
      round: i + 1, order: d.order,
      c_64_msgs_per_s: Math.round(c64), ts_polling_64_msgs_per_s: Math.round(p64), polling_ratio_64: round3(p64 / c64),
      ioeventfd_64_msgs_per_s: Math.round(io), hypercall_64_msgs_per_s: Math.round(hc), ioeventfd_over_hypercall: round3(io / hc),
      seconds: round1(d.seconds),
    };
  });
  const byCell: ChannelBenchResult['ioeventfd_over_hypercall_by_cell'] = [];
  for (const vcpus of CHANNEL_BENCH_VCPUS) {
    for (const size of CHANNEL_BENCH_SIZES) {
      for (const direction of ['guest-to-host', 'host-to-guest'] as const) {
        const ratio = median(data.map((d) => rate(d, 'ioeventfd', vcpus, size, direction) / rate(d, 'hypercall', vcpus, size, direction)));
        byCell.push({ size, direction, vcpus, ratio: round3(ratio) });
      }
    }
  }
  const pollingRatio = round3(median(perRound.map((r) => r.polling_ratio_64)));
  const ioRatio = round3(median(perRound.map((r) => r.ioeventfd_over_hypercall)));
  return {
    benchmark: 'channel',
    polling_ratio_64: pollingRatio,
    target_polling_ratio_64: TARGET_POLLING_RATIO,
    meets_polling_target: pollingRatio >= TARGET_POLLING_RATIO,
    ioeventfd_over_hypercall: ioRatio,
    target_ioeventfd_over_hypercall: 1,
    meets_ioeventfd_target: ioRatio > 1,
    ioeventfd_over_hypercall_by_cell: byCell,
    ts_polling_64_msgs_per_s: Math.round(median(perRound.map((r) => r.ts_polling_64_msgs_per_s))),
    c_64_msgs_per_s: Math.round(median(perRound.map((r) => r.c_64_msgs_per_s))),
    polling_ratio_64_best: round3(Math.max(...perRound.map((r) => r.ts_polling_64_msgs_per_s)) / Math.max(...perRound.map((r) => r.c_64_msgs_per_s))),
    matrix: { throughput, latency },
    baseline: baselineCells,
    rounds,
    messages,
    round_trips: roundTrips,
    ring_capacity: RING_CAPACITY,
    phase_limit_ms: limitMs,
    sizes: [...CHANNEL_BENCH_SIZES],
    definitions: CHANNEL_BENCH_DEFINITIONS,
    per_round: perRound,
    seconds: round1((performance.now() - t0) / 1000),
    loadavg: { start: loadStart, end: loadavg1() },
    host: hostInfo(),
  };
}

// ---- One VM: every phase of one (mode, vCPU count) ---------------------------------------------

/** One phase request from a vCPU (user hypercall 330). */
interface Arrival {
  cpu: number;
  status: number;
  report: bigint;
  answer: (v: bigint) => void;
}

/** Whether the VM's run failed or ended; spinning loops look at it when they yield. */
interface RunState {
  failed?: string;
  ended: boolean;
}

/** What the host side of a phase works with. */
interface PhaseCtx {
  phase: Phase;
  channels: Channel[];
  /** Polling mode: the host spins instead of awaiting notifications. */
  spin: boolean;
  /** performance.now() after which the phase ends early. */
  deadline: number;
  state: RunState;
}

/** What the host side of a phase recorded, per channel. */
interface HostSide {
  /** Host-clock epoch ms: when it sent the first message (h2g) or took the last one (g2h). */
  times: number[];
  /** Messages taken (g2h) or sent (h2g), or round trips completed (rtt-host); END not counted. */
  counts: number[];
  /** Host-initiated round trips, ns, all channels. */
  rttNs: number[];
}

/**
 * Boots the bench-channel guest with `vcpus` vCPUs and one channel per vCPU in `mode`, runs
 * `phases` in order (every vCPU runs each phase at once, each on its own channel) and returns
 * what each measured.
 */
async function runVm(image: LoadedImage, mode: ChannelMode, vcpus: number, phases: Phase[], limitMs: number): Promise<PhaseResult[]> {
  const interrupts = mode !== 'polling';
  const vm = Vm.create({ memory: GUEST_MEMORY, vcpus, console: 'capture', interrupts, control: false, log: () => {} });
  let consoleText = '';
  const onConsole = (b: Uint8Array) => {
    if (consoleText.length < 16_384) consoleText += Buffer.from(b).toString('utf8');
  };
  vm.on('console', onConsole);
  try {
    vm.load(image);
    // Polling channels get no vector: the host never interrupts the guest in that mode.
    const channels = Array.from({ length: vcpus }, (_, cpu) =>
      vm.createChannel(`bench${cpu}`, { capacity: RING_CAPACITY, mode, cpu, ...(interrupts ? {} : { vector: 0 }) }));
    const results: PhaseResult[] = [];
    const state: RunState = { ended: false };
    let arrivals: Arrival[] = [];
    let current: { phase: Phase; host: Promise<HostSide>; stopTimer: NodeJS.Timeout } | undefined;
    let next = 0;
    let finished!: () => void;
    let abort!: (e: Error) => void;
    const done = new Promise<void>((resolve, reject) => {
      finished = resolve;
      abort = reject;
    });
    const fail = (why: string) => {
      state.failed ??= why;
      abort(new Error(why));
    };

    // Every vCPU asks for the next phase; the last one to ask closes the previous phase (after
    // the host's side of it has finished too) and releases everyone into the next one.
    const onAllArrived = async () => {
      const group = arrivals.sort((a, b) => a.cpu - b.cpu);
      arrivals = [];
      const answerAll = (v: bigint) => group.forEach((a) => a.answer(v));
      try {
        const bad = group.find((a) => a.status !== 0);
        if (bad) throw new Error(`bench-channel guest: vCPU ${bad.cpu} failed with status ${bad.status} (${mode}, ${vcpus} vCPUs)\n${consoleText.trim()}`);
        const stopWords = group.map((a) => reportWord(vm, a, REPORT.stop));
        if (current) {
          const host = await current.host;
          clearTimeout(current.stopTimer);
          results.push(closePhase(vm, current.phase, host, group));
          current = undefined;
        }
        if (next === phases.length) {
          answerAll(0n);
          finished();
          return;
        }
        const phase = phases[next++];
        const config = BigInt(phase.count) | (BigInt(phase.size) << 32n) | (BigInt(GUEST_KIND[phase.name]) << 48n);
        vm.benchMarks().fill(0);
        for (const w of stopWords) Atomics.store(w, 0, 0);
        const deadline = performance.now() + limitMs;
        // The guest's loops end at its stop word; the timer fires even while a host loop spins,
        // because spinning loops yield to the event loop every YIELD_EVERY_MS.
        const stopTimer = setTimeout(() => stopWords.forEach((w) => Atomics.store(w, 0, 1)), limitMs);
        answerAll(config);
        // The answers go out in this turn's microtasks; the host side starts after them.
        const ctx: PhaseCtx = { phase, channels, spin: mode === 'polling', deadline, state };
        const host = new Promise<void>((r) => setImmediate(r)).then(() => hostSide(ctx));
        host.catch((e: Error) => fail(e.message));
        current = { phase, host, stopTimer };
      } catch (e) {
        answerAll(0n);
        fail((e as Error).message);
      }
    };
    vm.handleHypercall(HC_PHASE, (call) => new Promise<bigint>((answer) => {
      arrivals.push({ cpu: Number(call.a0), status: Number(BigInt.asIntN(64, call.a1)), report: call.a2, answer });
      if (arrivals.length === vcpus) void onAllArrived();
    }));

    const run = vm.run().then((r: VmResult) => {
      state.ended = true;
      if (r.kind !== 'exit' || r.status !== 0 || next < phases.length || current) {
        const why = r.kind === 'crash' ? r.report.summary : r.kind === 'failed' ? r.message : `${r.kind} with status ${r.status}`;
        fail(`bench-channel guest (${mode}, ${vcpus} vCPUs) ended before its phases were done: ${why}\n${consoleText.trim()}`);
      }
      return r;
    });
    const budget = RUN_TIMEOUT_MS + limitMs * phases.length;
    const timer = setTimeout(() => fail(`bench-channel (${mode}, ${vcpus} vCPUs) took longer than ${budget / 1000} s`), budget);
    try {
      await done;
    } catch (e) {
      if (current) clearTimeout(current.stopTimer);
      vm.stop();
      await run;
      throw e;
    } finally {
      clearTimeout(timer);
    }
    const r = await run;
    if (r.kind !== 'exit' || r.status !== 0) throw new Error(`bench-channel guest ended with ${r.kind} status ${r.status}\n${consoleText.trim()}`);
    return results;
  } finally {
    vm.off('console', onConsole);
    vm.close();
  }
}

/** Offsets in the guest's report block (struct report in bench-channel.c). */
const REPORT = { magic: 0x00, count: 0x04, tsc0: 0x08, tsc1: 0x10, stop: 0x18, done: 0x1c, samples: 0x20 } as const;

/** A live Int32Array over one u32 word of a vCPU's report block, after checking where it is. */
function reportWord(vm: Vm, a: Arrival, offset: number): Int32Array {
  const gpa = a.report + BigInt(offset);
  if (a.report % 8n !== 0n || !vm.memory.contains(a.report, REPORT.samples) || vm.memory.readU32(a.report) !== REPORT_MAGIC) {
    throw new Error(`bench-channel guest: vCPU ${a.cpu} passed no valid report block (0x${a.report.toString(16)})`);
  }
  const bytes = vm.memory.slice(gpa, 4);
  return new Int32Array(bytes.buffer, bytes.byteOffset, 1);
}

const epochMs = () => performance.timeOrigin + performance.now();

/** Runs the host's side of a phase on every channel at once. */
async function hostSide(ctx: PhaseCtx): Promise<HostSide> {
  const { channels, spin } = ctx;
  switch (ctx.phase.name) {
    case 'g2h':
      return spin ? spinConsume(ctx) : merge(await Promise.all(channels.map((ch) => awaitConsume(ch, ctx))));
    case 'h2g':
      return merge(await Promise.all(channels.map((ch) => produce(ch, ctx))));
    case 'rtt-host':
      return spin ? spinPing(ctx) : merge(await Promise.all(channels.map((ch) => awaitPing(ch, ctx))));
    case 'rtt-guest':
      return spin ? spinEcho(ctx) : merge(await Promise.all(channels.map((ch) => awaitEcho(ch, ctx))));
  }
}

function merge(parts: HostSide[]): HostSide {
  return { times: parts.flatMap((p) => p.times), counts: parts.flatMap((p) => p.counts), rttNs: parts.flatMap((p) => p.rttNs) };
}

/** Sequence number of the message that ends a phase early (bench-channel.c SEQ_END). */
const SEQ_END = 0xffffffff;
/** Reads a message's sequence number (little-endian u32 in its first 4 bytes). */
const seqOf = (m: Uint8Array) => (m[0] | (m[1] << 8) | (m[2] << 16) | (m[3] << 24)) >>> 0;
const putSeq = (m: Uint8Array, seq: number) => {
  m[0] = seq & 0xff;
  m[1] = (seq >>> 8) & 0xff;
  m[2] = (seq >>> 16) & 0xff;
  m[3] = (seq >>> 24) & 0xff;
};

function badMessage(ch: Channel, msg: Uint8Array, want: number, size: number): Error {
  return new Error(`channel ${ch.name}: message ${want} has ${msg.length} bytes and sequence ${msg.length >= 4 ? seqOf(msg) : '-'} (expected ${size} bytes)`);
}

/**
 * Called every 4096 turns of a spinning loop: once {@link YIELD_EVERY_MS} has passed, returns to
 * the event loop for a moment (timers fire, a failed guest or a finished run is noticed) and
 * throws if the phase failed. Returns the new "last yield" time.
 */
async function spinCheck(last: number, state: RunState, what: string): Promise<number> {
  const now = performance.now();
  if (now - last < YIELD_EVERY_MS) return last;
  await yieldToLoop();
  if (state.failed) throw new Error(state.failed);
  if (state.ended) throw new Error(`the VM ended during ${what}`);
  return performance.now();
}

/**
 * A consumer's per-message check for channel `ch`: length and sequence number; the END message
 * marks the channel ended. `onMessage` runs for every other message.
 */
class Checker {
  got = 0;
  ended = false;
  error: Error | undefined;
  readonly fn: (msg: Uint8Array) => void;
  /**
   * The same check for {@link Channel.drainFrames} (in place, no copy): the length and the
   * sequence number, read once from the ring. The only per-message work of the g2h consumers.
   */
  readonly frame: (data: Uint8Array, offset: number, len: number) => void;

  constructor(ch: Channel, size: number, onMessage?: (msg: Uint8Array) => void) {
    this.frame = (d, o, len) => {
      const seq = len >= 4 ? (d[o] | (d[o + 1] << 8) | (d[o + 2] << 16) | (d[o + 3] << 24)) >>> 0 : -1;
      if (len === size && seq === SEQ_END) {
        this.ended = true;
        return;
      }
      if (len !== size || seq !== this.got) this.error ??= badMessage(ch, d.slice(o, o + len), this.got, size);
      this.got++;
    };
    this.fn = (msg) => {
      const seq = seqOf(msg);
      if (msg.length === size && seq === SEQ_END) {
        this.ended = true;
        return;
      }
      if (msg.length !== size || seq !== this.got) this.error ??= badMessage(ch, msg, this.got, size);
      this.got++;
      onMessage?.(msg);
    };
  }
}

/** g2h, polling: one tight loop draining every channel; each ends at `count` messages or END. */
async function spinConsume(ctx: PhaseCtx): Promise<HostSide> {
  const { channels, phase, state } = ctx;
  const checks = channels.map((ch) => new Checker(ch, phase.size));
  const ends = channels.map(() => 0);
  let left = channels.length;
  let last = performance.now();
  for (let spins = 0; left > 0; spins++) {
    for (let i = 0; i < channels.length; i++) {
      const c = checks[i];
      if (ends[i] !== 0) continue;
      if (channels[i].drainFrames(c.frame, phase.count - c.got) > 0 && (c.got === phase.count || c.ended)) {
        ends[i] = epochMs();
        left--;
      }
      if (c.error) throw c.error;
    }
    if ((spins & 4095) === 4095) last = await spinCheck(last, state, 'a guest-to-host phase');
  }
  return { times: ends, counts: checks.map((c) => c.got), rttNs: [] };
}

/** g2h, notification modes: readable() then drain() until `count` messages or END arrived. */
async function awaitConsume(ch: Channel, ctx: PhaseCtx): Promise<HostSide> {
  const { count, size } = ctx.phase;
  const c = new Checker(ch, size);
  while (c.got < count && !c.ended) {
    if (!(await ch.readable())) throw new Error(`channel ${ch.name} ended after ${c.got} of ${count} messages`);
    ch.drainFrames(c.frame, count - c.got);
    if (c.error) throw c.error;
  }
  return { times: [epochMs()], counts: [c.got], rttNs: [] };
}

/**
 * h2g, every mode: `await channel.send()` in a loop (it resolves at once while the ring has
 * room); after the deadline, END instead of the rest.
 */
async function produce(ch: Channel, ctx: PhaseCtx): Promise<HostSide> {
  const { count, size } = ctx.phase;
  const msg = new Uint8Array(size).fill(0xa5);
  const start = epochMs();
  let i = 0;
  for (; i < count; i++) {
    if ((i & 63) === 63 && performance.now() > ctx.deadline) break;
    putSeq(msg, i);
    await ch.send(msg);
  }
  if (i < count) {
    putSeq(msg, SEQ_END);
    await ch.send(msg);
  }
  return { times: [start], counts: [i], rttNs: [] };
}

/** rtt-host, polling: every channel has one ping in flight; a tight loop takes the pongs. */
async function spinPing(ctx: PhaseCtx): Promise<HostSide> {
  const { channels, phase, state } = ctx;
  const { count, size } = phase;
  const samples: number[] = [];
  const sentAt = channels.map(() => 0);
  const msgs = channels.map(() => new Uint8Array(size).fill(0x5a));
  const finished = channels.map(() => false);
  let sendError: Error | undefined;
  const send = (i: number, seq: number) => {
    putSeq(msgs[i], seq);
    sentAt[i] = performance.now();
    channels[i].send(msgs[i]).catch((e: Error) => (sendError ??= e)); // the ring has room: written at once
  };
  const checks = channels.map((ch) => new Checker(ch, size));
  channels.forEach((_, i) => send(i, 0));
  let left = channels.length;
  let last = performance.now();
  for (let spins = 0; left > 0; spins++) {
    for (let i = 0; i < channels.length; i++) {
      const c = checks[i];
      if (finished[i] || channels[i].drain(c.fn, 1) === 0) continue;
      const now = performance.now();
      samples.push((now - sentAt[i]) * 1e6);
      if (c.error) throw c.error;
      if (c.got < count && now <= ctx.deadline) {
        send(i, c.got);
        continue;
      }
      if (c.got < count) send(i, SEQ_END);
      finished[i] = true;
      left--;
    }
    if (sendError) throw sendError;
    if ((spins & 4095) === 4095) last = await spinCheck(last, state, 'a round-trip phase');
  }
  return { times: [], counts: checks.map((c) => c.got), rttNs: samples };
}

/** rtt-host, notification modes: send, then readable() + drain() for the echo. */
async function awaitPing(ch: Channel, ctx: PhaseCtx): Promise<HostSide> {
  const { count, size } = ctx.phase;
  const samples: number[] = [];
  const msg = new Uint8Array(size).fill(0x5a);
  const c = new Checker(ch, size);
  while (c.got < count) {
    if (performance.now() > ctx.deadline) {
      putSeq(msg, SEQ_END);
      await ch.send(msg);
      break;
    }
    putSeq(msg, c.got);
    const t0 = performance.now();
    await ch.send(msg);
    while (ch.drain(c.fn, 1) === 0) {
      if (!(await ch.readable())) throw new Error(`channel ${ch.name} ended after ${c.got} of ${count} round trips`);
    }
    samples.push((performance.now() - t0) * 1e6);
    if (c.error) throw c.error;
  }
  return { times: [], counts: [c.got], rttNs: samples };
}

/** rtt-guest, polling: a tight loop echoing every message straight back, until `count` or END. */
async function spinEcho(ctx: PhaseCtx): Promise<HostSide> {
  const { channels, phase, state } = ctx;
  let sendError: Error | undefined;
  // send() copies the message into the ring (or queues a copy), so the drain buffer may be reused.
  const checks = channels.map((ch) => new Checker(ch, phase.size, (msg) => ch.send(msg).catch((e: Error) => (sendError ??= e))));
  const finished = channels.map(() => false);
  let left = channels.length;
  let last = performance.now();
  for (let spins = 0; left > 0; spins++) {
    for (let i = 0; i < channels.length; i++) {
      const c = checks[i];
      if (finished[i]) continue;
      if (channels[i].drain(c.fn, phase.count - c.got) > 0 && (c.got === phase.count || c.ended)) {
        finished[i] = true;
        left--;
      }
      if (c.error) throw c.error;
    }
    if (sendError) throw sendError;
    if ((spins & 4095) === 4095) last = await spinCheck(last, state, 'a round-trip phase');
  }
  return { times: [], counts: checks.map((c) => c.got), rttNs: [] };
}

/** rtt-guest, notification modes: readable() + drain(), echoing each message back. */
async function awaitEcho(ch: Channel, ctx: PhaseCtx): Promise<HostSide> {
  const { count, size } = ctx.phase;
  let sendError: Error | undefined;
  const c = new Checker(ch, size, (msg) => ch.send(msg).catch((e: Error) => (sendError ??= e)));
  while (c.got < count && !c.ended) {
    if (!(await ch.readable())) throw new Error(`channel ${ch.name} ended after ${c.got} of ${count} round trips`);
    ch.drain(c.fn, count - c.got);
    if (c.error) throw c.error;
    if (sendError) throw sendError;
  }
  return { times: [], counts: [c.got], rttNs: [] };
}

/** Turns a finished phase into its figures, from the host's records, the marks and the guests' reports. */
function closePhase(vm: Vm, phase: Phase, host: HostSide, group: Arrival[]): PhaseResult {
  const marks = vm.benchMarks();
  const mem = vm.memory;
  const mark = (base: number, cpu: number) => {
    const v = marks[base + cpu];
    if (!(v > 0)) throw new Error(`bench-channel guest: vCPU ${cpu} recorded no mark ${base + cpu} in phase ${phase.name} ${phase.size} B`);
    return v;
  };
  const guestDone = (a: Arrival) => mem.readU32(a.report + BigInt(REPORT.done));
  const sum = (v: number[]) => v.reduce((x, y) => x + y, 0);
  // Both ends must agree on how much went through (an END cut the phase short, or not).
  const agree = (what: string) => {
    group.forEach((a, i) => {
      if (guestDone(a) !== host.counts[i]) throw new Error(`bench-channel: ${what} ${phase.size} B, vCPU ${a.cpu}: the guest counted ${guestDone(a)}, the host ${host.counts[i]}`);
    });
  };
  switch (phase.name) {
    case 'g2h': {
      agree('guest→host');
      const start = Math.min(...group.map((a) => mark(MARK.start, a.cpu)));
      const total = sum(host.counts);
      return { phase, count: total, msgsPerS: total / ((Math.max(...host.times) - start) / 1000) };
    }
    case 'h2g': {
      agree('host→guest');
      const end = Math.max(...group.map((a) => mark(MARK.end, a.cpu)));
      const total = sum(host.counts);
      return { phase, count: total, msgsPerS: total / ((end - Math.min(...host.times)) / 1000) };
    }
    case 'rtt-host':
      agree('host round trips');
      return { phase, count: host.rttNs.length, rttNs: host.rttNs };
    case 'rtt-guest': {
      const rttNs: number[] = [];
      for (const a of group) {
        const n = mem.readU32(a.report + BigInt(REPORT.count));
        if (n > phase.count || !mem.contains(a.report + BigInt(REPORT.samples), 4 * n)) throw new Error(`bench-channel guest: vCPU ${a.cpu} reports ${n} round trips`);
        const ticks = Number(mem.readU64(a.report + BigInt(REPORT.tsc1)) - mem.readU64(a.report + BigInt(REPORT.tsc0)));
        const ms = mark(MARK.cal1, a.cpu) - mark(MARK.cal0, a.cpu);
        if (!(ticks > 0 && ms > 0)) throw new Error(`bench-channel guest: vCPU ${a.cpu}: no TSC calibration (${ticks} ticks in ${ms} ms)`);
        const nsPerTick = (ms * 1e6) / ticks;
        const raw = mem.slice(a.report + BigInt(REPORT.samples), 4 * n);
        const words = new Uint32Array(raw.buffer, raw.byteOffset, n);
        for (let i = 0; i < n; i++) rttNs.push(words[i] * nsPerTick);
      }
      if (rttNs.length === 0) throw new Error(`bench-channel guest: no round trips in phase ${phase.name} ${phase.size} B`);
      return { phase, count: rttNs.length, rttNs };
    }
  }
}

// ---- The C baseline ----------------------------------------------------------------------------

/**
 * Compiles bench/c/channel-baseline.c together with the guest SDK's ring.c (for the host, as
 * the ring compatibility test does) into guest/build/bench/channel-baseline, unless the binary is
 * newer than every input. (buildCBaseline in baseline.ts builds single-file baselines only.)
 */
export function buildChannelBaseline(log: (s: string) => void): string {
  const root = dirname(sdkRoot());
  const cDir = join(root, 'bench', 'c');
  const include = join(sdkRoot(), 'sdk', 'include');
  const sources = [join(cDir, 'channel-baseline.c'), join(sdkRoot(), 'sdk', 'src', 'ring.c')];
  const inputs = [...sources, join(cDir, 'bench-common.h'), join(include, 'kvmtalk.h'), join(include, 'kvmtalk', 'ring.h'), join(include, 'kvmtalk', 'channel.h'), join(include, 'kvmtalk', 'irq.h'), join(include, 'kvmtalk', 'paging.h')];
  const outDir = join(sdkRoot(), 'build', 'bench');
  const binary = join(outDir, 'channel-baseline');
  if (existsSync(binary)) {
    const built = statSync(binary).mtimeMs;
    if (inputs.every((f) => !existsSync(f) || statSync(f).mtimeMs <= built)) return binary;
  }
  log('cc bench/c/channel-baseline.c guest/sdk/src/ring.c');
  mkdirSync(outDir, { recursive: true });
  const tmp = `${binary}.${process.pid}.tmp`;
  try {
    const r = spawnSync('gcc', ['-std=gnu11', '-O2', '-Wall', '-Wextra', '-pthread', '-I', cDir, '-I', include, '-o', tmp, ...sources], { encoding: 'utf8' });
    if (r.error) throw new Error(`cannot run gcc: ${r.error.message}`);
    if (r.status !== 0) throw new Error(`gcc failed on bench/c/channel-baseline.c: ${r.stderr.trim().split('\n').slice(0, 3).join(' | ')}`);
    if (r.stderr.trim()) log(r.stderr.trim());
    renameSync(tmp, binary);
  } finally {
    rmSync(tmp, { force: true });
  }
  return binary;
}

function runBaseline(binary: string, messages: number, roundTrips: number, limitMs: number): Promise<BaselineOutput> {
  return runCBaseline<BaselineOutput>(binary, [String(messages), String(roundTrips), String(RING_CAPACITY), String(limitMs), ...CHANNEL_BENCH_SIZES.map(String)]);
}

// ---- Numbers -----------------------------------------------------------------------------------

/** Nearest-rank percentile `p` (0–100) of `values` (the C baseline uses the same definition). */
export function pct(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = Float64Array.from(values).sort();
  const rank = Math.min(s.length, Math.max(1, Math.ceil((p / 100) * s.length - 1e-9)));
  return s[rank - 1];
}

/** Each round's p50/p90/p99 (ns), then the median over rounds, in µs. */
function medianPercentiles(perRound: number[][]): Percentiles {
  const at = (p: number) => round2(median(perRound.map((s) => pct(s, p))) / 1000);
  return { p50: at(50), p90: at(90), p99: at(99) };
}

const halve = (p: Percentiles): Percentiles => ({ p50: round2(p.p50 / 2), p90: round2(p.p90 / 2), p99: round2(p.p99 / 2) });

function loadavg1(): number {
  return round2(os.loadavg()[0]);
}

function fmtRate(v: number): string {
  if (!Number.isFinite(v)) return '-';
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  return v.toFixed(0);
}

// ---- Table -------------------------------------------------------------------------------------

/** The readable tables of a result. */
export function formatChannelTable(r: ChannelBenchResult): string {
  const tp = (mode: ChannelMode, vcpus: number, size: number, dir: Direction) =>
    r.matrix.throughput.find((c) => c.mode === mode && c.vcpus === vcpus && c.size === size && c.direction === dir)!;
  const lat = (mode: ChannelMode, vcpus: number, size: number, who: Initiator) =>
    r.matrix.latency.find((c) => c.mode === mode && c.vcpus === vcpus && c.size === size && c.initiator === who)!;
  const base = (size: number) => r.baseline.find((b) => b.size === size)!;
  const p3 = (p: Percentiles) => `${p.p50.toFixed(1)} / ${p.p90.toFixed(1)} / ${p.p99.toFixed(1)}`;
  const dirLabel = (d: Direction) => (d === 'guest-to-host' ? 'guest→host' : 'host→guest');

  const throughputRows: string[][] = [['mode', 'vCPUs', 'direction', '64 B msgs/s', '4 KiB msgs/s', '4 KiB MB/s']];
  for (const vcpus of CHANNEL_BENCH_VCPUS) {
    for (const mode of CHANNEL_BENCH_MODES) {
      for (const dir of ['guest-to-host', 'host-to-guest'] as const) {
        const a = tp(mode, vcpus, 64, dir);
        const b = tp(mode, vcpus, 4096, dir);
        throughputRows.push([mode, String(vcpus), dirLabel(dir), fmtRate(a.msgs_per_s), fmtRate(b.msgs_per_s), b.mb_per_s.toFixed(1)]);
      }
    }
  }
  throughputRows.push(['C ring, 2 host threads', '-', 'either', fmtRate(base(64).msgs_per_s), fmtRate(base(4096).msgs_per_s), base(4096).mb_per_s.toFixed(1)]);

  const latencyRows: string[][] = [['mode', 'vCPUs', 'round trip', '64 B rtt p50/p90/p99 µs', '4 KiB rtt p50/p90/p99 µs', '64 B one-way p50 µs']];
  for (const vcpus of CHANNEL_BENCH_VCPUS) {
    for (const mode of CHANNEL_BENCH_MODES) {
      for (const who of ['host', 'guest'] as const) {
        const a = lat(mode, vcpus, 64, who);
        const b = lat(mode, vcpus, 4096, who);
        latencyRows.push([mode, String(vcpus), who === 'host' ? 'host→guest→host' : 'guest→host→guest', p3(a.rtt_us), p3(b.rtt_us), a.one_way_us.p50.toFixed(2)]);
      }
    }
  }
  latencyRows.push(['C ring, 2 host threads', '-', 'A→B→A', p3(base(64).rtt_us), p3(base(4096).rtt_us), base(64).one_way_us.p50.toFixed(2)]);

  const roundRows: string[][] = [['round', 'order', 'C 64 B msgs/s', 'TS polling 64 B msgs/s', 'polling/C', 'ioeventfd 64 B', 'hypercall 64 B', 'ioeventfd/hypercall', 's']];
  for (const p of r.per_round) {
    roundRows.push([String(p.round), p.order, fmtRate(p.c_64_msgs_per_s), fmtRate(p.ts_polling_64_msgs_per_s), p.polling_ratio_64.toFixed(3),
      fmtRate(p.ioeventfd_64_msgs_per_s), fmtRate(p.hypercall_64_msgs_per_s), p.ioeventfd_over_hypercall.toFixed(3), p.seconds.toFixed(1)]);
  }
  const verdict = (ok: boolean) => (ok ? 'meets' : 'misses');
  const phases = r.matrix.throughput.length + r.matrix.latency.length;
  const cut = r.matrix.throughput.filter((c) => c.messages_per_round.some((n) => n < r.messages * c.vcpus)).length +
    r.matrix.latency.filter((c) => c.samples_per_round.some((n) => n < r.round_trips * c.vcpus)).length;
  return [
    `Channels: ${r.rounds} rounds; ${r.messages} messages per throughput phase and channel, ${r.round_trips} round trips per latency phase and channel; rings of ${r.ring_capacity / 1024} KiB; ` +
      `phases end after ${r.phase_limit_ms} ms (${cut} of ${phases} cells were cut short in some round).`,
    `polling_ratio_64 = ${r.polling_ratio_64.toFixed(3)} (TS polling 64 B guest→host ${fmtRate(r.ts_polling_64_msgs_per_s)} msgs/s over C ${fmtRate(r.c_64_msgs_per_s)} msgs/s) ${verdict(r.meets_polling_target)} the target ≥ ${r.target_polling_ratio_64}.`,
    `ioeventfd_over_hypercall = ${r.ioeventfd_over_hypercall.toFixed(3)} (64 B guest→host, 1 vCPU) ${verdict(r.meets_ioeventfd_target)} the target > 1.`,
    `For information, best round against best round: TS polling / C = ${r.polling_ratio_64_best.toFixed(3)} (a loaded host only slows spinning pairs down).`,
    '',
    'Throughput (median over rounds):',
    '',
    formatTable(throughputRows),
    'Latency: round trip on one clock (host: performance.now(); guest: RDTSC calibrated against host marks); one-way = rtt / 2. Medians over rounds of each round\'s percentiles:',
    '',
    formatTable(latencyRows),
    'Per round:',
    '',
    formatTable(roundRows),
    '2 vCPUs: both vCPUs run each phase at once on their own channels; throughput is the total, latency percentiles cover both.',
    ...(r.loadavg.start > r.host.cores - 0.5
      ? [`Warning: the machine was busy (load average ${r.loadavg.start} on ${r.host.cores} cores before the benchmark started). Spinning pairs (polling mode, the C baseline) then often share one core and wait a scheduler time slice per exchange: their per-round figures are bimodal and the polling ratio is unreliable; compare the best-of-rounds figure and rerun on a quiet machine.`]
      : []),
    `host: ${r.host.cpu}, ${r.host.cores} cores, Linux ${r.host.kernel}, Node ${r.host.node}; load average ${r.loadavg.start} at the start, ${r.loadavg.end} at the end; ${r.seconds} s`,
    '',
  ].join('\n');
}
