/**
 * KVM binary statistics (KVM_GET_STATS_FD, Documentation/virt/kvm/api.rst), per VM or per vCPU.
 *
 * The stats fd holds a header, an id string, a descriptor block and a data block of u64 values.
 * Only the data block changes while the VM lives, so {@link KvmStats} parses the rest once and
 * each {@link KvmStats.read} is a single pread of the data block into a reused buffer.
 */
import { kvm_stats_desc, kvm_stats_header, offsetOf, sizeOf } from './structs.js';
import * as sys from './sys.js';

/** How a statistic accumulates (flags bits 0-3). */
export type StatType = 'cumulative' | 'instant' | 'peak' | 'linear-hist' | 'log-hist' | 'unknown';
/** What a statistic (or a histogram's bucket bounds) measures (flags bits 4-7). */
export type StatUnit = 'none' | 'bytes' | 'seconds' | 'cycles' | 'boolean' | 'unknown';

/** One parsed `struct kvm_stats_desc` and its name. */
export interface StatDesc {
  name: string;
  /** The raw `flags` word. */
  flags: number;
  type: StatType;
  unit: StatUnit;
  /** The value in `unit` is raw * base ** exponent (e.g. seconds, 10, -9 for nanoseconds). */
  base: 2 | 10;
  exponent: number;
  /** Number of u64 values (buckets for histograms). */
  size: number;
  /** Byte offset of the values inside the data block. */
  offset: number;
  /** Bucket width of a linear histogram (in raw units); 0 otherwise. */
  bucketSize: number;
}

/** Values as {@link KvmStats.read} returns them: histograms and multi-value stats as arrays. */
export type StatValues = Map<string, bigint | bigint[]>;

const TYPES: StatType[] = ['cumulative', 'instant', 'peak', 'linear-hist', 'log-hist'];
const UNITS: StatUnit[] = ['none', 'bytes', 'seconds', 'cycles', 'boolean'];

const HDR = {
  size: sizeOf(kvm_stats_header),
  nameSize: offsetOf(kvm_stats_header, 'name_size'),
  numDesc: offsetOf(kvm_stats_header, 'num_desc'),
  idOffset: offsetOf(kvm_stats_header, 'id_offset'),
  descOffset: offsetOf(kvm_stats_header, 'desc_offset'),
  dataOffset: offsetOf(kvm_stats_header, 'data_offset'),
} as const;

const DESC = {
  size: sizeOf(kvm_stats_desc),
  flags: offsetOf(kvm_stats_desc, 'flags'),
  exponent: offsetOf(kvm_stats_desc, 'exponent'),
  count: offsetOf(kvm_stats_desc, 'size'),
  offset: offsetOf(kvm_stats_desc, 'offset'),
  bucketSize: offsetOf(kvm_stats_desc, 'bucket_size'),
} as const;

function isHistogram(d: StatDesc): boolean {
  return d.type === 'linear-hist' || d.type === 'log-hist';
}

/** pread exactly `len` bytes at `offset`: the stats fd is a small in-kernel file, a short read means a bug. */
function preadAll(fd: number, len: number, offset: number): Uint8Array {
  const buf = new Uint8Array(len);
  const n = sys.pread(fd, buf, offset);
  if (n !== len) throw new Error(`KVM stats fd ${fd}: read ${n} of ${len} bytes at offset ${offset}`);
  return buf;
}

const utf8 = new TextDecoder();

function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return utf8.decode(end < 0 ? bytes : bytes.subarray(0, end));
}

/** An open KVM stats fd with its descriptors parsed. */
export class KvmStats {
  private readonly data: Uint8Array;
  private readonly words: BigUint64Array;
  private closed = false;

  private constructor(
    readonly fd: number,
    /** The stats id, e.g. `kvm-1234` for a VM or `kvm-1234/vcpu-0` for a vCPU. */
    readonly id: string,
    private readonly descs: readonly StatDesc[],
    private readonly dataOffset: number,
  ) {
    const len = descs.reduce((m, d) => Math.max(m, d.offset + 8 * d.size), 0);
    // A fresh ArrayBuffer is 8-byte aligned and KVM puts every stat at a multiple of 8.
    this.words = new BigUint64Array(len / 8);
    this.data = new Uint8Array(this.words.buffer);
  }

  /**
   * Parses the header, id and descriptors of a stats fd (from `VmFd.statsFd()` or
   * `VcpuFd.statsFd()`). Takes ownership of `fd`: {@link close} closes it, and so does a failure here.
   */
  static fromFd(fd: number): KvmStats {
    try {
      const hdr = new DataView(preadAll(fd, HDR.size, 0).buffer);
      const nameSize = hdr.getUint32(HDR.nameSize, true);
      const num = hdr.getUint32(HDR.numDesc, true);
      const stride = DESC.size + nameSize;
      const block = preadAll(fd, num * stride, hdr.getUint32(HDR.descOffset, true));
      const dv = new DataView(block.buffer);
      const descs: StatDesc[] = [];
      for (let i = 0; i < num; i++) {
        const o = i * stride;
        const flags = dv.getUint32(o + DESC.flags, true);
        descs.push({
          name: cString(block.subarray(o + DESC.size, o + stride)),
          flags,
          type: TYPES[flags & 0xf] ?? 'unknown',
          unit: UNITS[(flags >> 4) & 0xf] ?? 'unknown',
          base: ((flags >> 8) & 0xf) === 1 ? 2 : 10,
          exponent: dv.getInt16(o + DESC.exponent, true),
          size: dv.getUint16(o + DESC.count, true),
          offset: dv.getUint32(o + DESC.offset, true),
          bucketSize: dv.getUint32(o + DESC.bucketSize, true),
        });
      }
      const id = cString(preadAll(fd, nameSize, hdr.getUint32(HDR.idOffset, true)));
      return new KvmStats(fd, id, descs, hdr.getUint32(HDR.dataOffset, true));
    } catch (e) {
      sys.close(fd);
      throw e;
    }
  }

  /** Opens the stats of a VM or vCPU (anything with `statsFd()`). */
  static of(owner: { statsFd(): number }): KvmStats {
    return KvmStats.fromFd(owner.statsFd());
  }

  /** The descriptors, in the kernel's order, with type and unit decoded. */
  describe(): readonly StatDesc[] {
    return this.descs;
  }

  /** Current values, by name: one pread of the data block. */
  read(): StatValues {
    if (this.closed) throw new Error(`KVM stats ${this.id}: read after close`);
    const n = sys.pread(this.fd, this.data, this.dataOffset);
    if (n !== this.data.length) throw new Error(`KVM stats ${this.id}: read ${n} of ${this.data.length} data bytes`);
    const out: StatValues = new Map();
    for (const d of this.descs) {
      const i = d.offset / 8;
      out.set(d.name, d.size === 1 && !isHistogram(d) ? this.words[i] : Array.from(this.words.subarray(i, i + d.size)));
    }
    return out;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    sys.close(this.fd);
  }
}

/** A stat's value, 0n when absent; a histogram or array yields the sum of its values (its sample count). */
export function statValue(map: StatValues, name: string): bigint {
  const v = map.get(name);
  if (v === undefined) return 0n;
  return typeof v === 'bigint' ? v : v.reduce((a, b) => a + b, 0n);
}

/** Options of {@link formatStats}. */
export interface FormatOptions {
  /** Earlier values: cumulative stats and histograms are shown as the difference since then. */
  since?: StatValues;
  /** Show zero values too. */
  all?: boolean;
  /** Show only names matching this. */
  match?: RegExp;
}

const SI = ['', 'K', 'M', 'G', 'T', 'P'];

/** Renders a quantity in its unit, e.g. 1500000 ns → `1.50 ms`, 8192 bytes → `8 KiB`. */
function quantity(d: StatDesc, raw: number): string {
  const v = raw * d.base ** d.exponent;
  switch (d.unit) {
    case 'seconds': {
      if (v === 0) return '0 s';
      const [div, unit] = v >= 1 ? [1, 's'] : v >= 1e-3 ? [1e-3, 'ms'] : v >= 1e-6 ? [1e-6, 'µs'] : [1e-9, 'ns'];
      return `${+(v / div).toPrecision(3)} ${unit}`;
    }
    case 'bytes': {
      let k = 0;
      while (v >= 1024 ** (k + 1) && k < SI.length - 1) k++;
      return `${+(v / 1024 ** k).toPrecision(3)} ${SI[k]}${k ? 'iB' : 'B'}`;
    }
    case 'boolean':
      return v ? 'true' : 'false';
    case 'cycles':
      return `${v} cycles`;
    default:
      return String(v);
  }
}

/** [low, high) of bucket `i`, in raw units; the last bucket is open-ended. */
function bucketRange(d: StatDesc, i: number): [number, number] {
  const high = i === d.size - 1 ? Infinity : undefined;
  if (d.type === 'linear-hist') return [i * d.bucketSize, high ?? (i + 1) * d.bucketSize];
  // Log histogram: bucket 0 is [0, 1), bucket i is [2^(i-1), 2^i).
  return i === 0 ? [0, high ?? 1] : [2 ** (i - 1), high ?? 2 ** i];
}

/** `n=12 p50<1.02 µs max<4.1 µs`: sample count, median bucket and highest bucket bounds. */
function histogramSummary(d: StatDesc, buckets: bigint[]): string {
  const n = buckets.reduce((a, b) => a + b, 0n);
  const bound = (i: number) => {
    const [lo, hi] = bucketRange(d, i);
    return hi === Infinity ? `≥${quantity(d, lo)}` : `<${quantity(d, hi)}`;
  };
  let median = 0;
  for (let acc = 0n; median < buckets.length; median++) {
    acc += buckets[median];
    if (2n * acc >= n) break;
  }
  let max = buckets.length - 1;
  while (max > 0 && buckets[max] === 0n) max--;
  return `n=${n} p50${bound(median)} max${bound(max)}`;
}

/**
 * A compact two-column table of statistics (name, value in its unit), in descriptor order,
 * skipping zero values unless `opts.all`; histograms are summarized as count, median and max.
 */
export function formatStats(values: StatValues, descs: readonly StatDesc[], opts: FormatOptions = {}): string {
  const rows: [string, string][] = [];
  for (const d of descs) {
    if (opts.match && !opts.match.test(d.name)) continue;
    let v = values.get(d.name);
    if (v === undefined) continue;
    // Deltas only make sense for counters; instant and peak values are shown as they are.
    const before = d.type === 'instant' || d.type === 'peak' ? undefined : opts.since?.get(d.name);
    if (before !== undefined) {
      v = typeof v === 'bigint' ? v - (before as bigint) : v.map((x, i) => x - ((before as bigint[])[i] ?? 0n));
    }
    const zero = typeof v === 'bigint' ? v === 0n : v.every((x) => x === 0n);
    if (zero && !opts.all) continue;
    let text: string;
    if (typeof v === 'bigint') text = quantity(d, Number(v));
    else if (isHistogram(d)) text = histogramSummary(d, v);
    else text = `[${v.join(', ')}]`;
    rows.push([d.name, text]);
  }
  const width = rows.reduce((m, [name]) => Math.max(m, name.length), 0);
  return rows.map(([name, text]) => `${name.padEnd(width)}  ${text}`).join('\n');
}
