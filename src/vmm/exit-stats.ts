/**
 * Per-vCPU exit accounting: counts by exit reason always (one array increment per exit), and
 * latency histograms only when asked for, since reading the clock twice per exit is not free.
 */
import { EXIT_REASON_SLOTS } from '../kvm/exit-reasons.js';

const SUB = 8; // buckets per power of two: ~9% resolution
const BUCKETS = 40 * SUB; // up to 2^40 ns

/** A log-scale histogram of nanosecond durations. Mergeable and transferable as a plain array. */
export class LatencyHistogram {
  readonly buckets: Float64Array;
  constructor(buckets?: ArrayLike<number>) {
    this.buckets = buckets ? Float64Array.from(buckets) : new Float64Array(BUCKETS);
  }
  record(ns: number): void {
    const b = ns < 1 ? 0 : Math.min(BUCKETS - 1, Math.floor(Math.log2(ns) * SUB));
    this.buckets[b]++;
  }
  merge(other: LatencyHistogram): void {
    for (let i = 0; i < BUCKETS; i++) this.buckets[i] += other.buckets[i];
  }
  get count(): number {
    return this.buckets.reduce((a, b) => a + b, 0);
  }
  /** The `p`-th percentile (0–100) in nanoseconds: the upper edge of the bucket holding it. */
  percentile(p: number): number {
    const total = this.count;
    if (total === 0) return NaN;
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.buckets[i];
      if (seen >= (p / 100) * total) return 2 ** ((i + 1) / SUB);
    }
    return 2 ** (BUCKETS / SUB);
  }
}

/** Exit statistics of one vCPU, as sent to the main thread when it stops. */
export interface ExitStatsSnapshot {
  counts: number[];
  /** Time spent inside KVM_RUN per exit (guest run + kernel exit path), ns. */
  inKvm?: number[];
  /** Time from KVM_RUN returning to the next KVM_RUN (the VMM's handling of the exit), ns. */
  inVmm?: number[];
}

/** Live counters owned by a vCPU thread. */
export class ExitStats {
  readonly counts = new Uint32Array(EXIT_REASON_SLOTS);
  readonly inKvm?: LatencyHistogram;
  readonly inVmm?: LatencyHistogram;

  constructor(readonly timing: boolean) {
    if (timing) {
      this.inKvm = new LatencyHistogram();
      this.inVmm = new LatencyHistogram();
    }
  }

  snapshot(): ExitStatsSnapshot {
    return { counts: Array.from(this.counts), inKvm: this.inKvm && Array.from(this.inKvm.buckets), inVmm: this.inVmm && Array.from(this.inVmm.buckets) };
  }
}
