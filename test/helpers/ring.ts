/**
 * What the ring tests share: the deterministic message streams of test/fixtures/ring-c-test.c
 * (xorshift32; lengths hit 0, the maximum, tiny and random) and its FNV-1a checksum.
 */

export class Stream {
  constructor(private s: number) {}
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (this.s = x >>> 0);
  }
  len(max: number): number {
    switch (this.next() % 8) {
      case 0: return 0;
      case 1: return max;
      case 2: return Math.min(1 + (this.next() % 8), max);
      default: return this.next() % (max + 1);
    }
  }
  fill(buf: Uint8Array, len: number): void {
    for (let i = 0; i < len; i += 4) {
      const w = this.next();
      for (let k = 0; k < 4 && i + k < len; k++) buf[i + k] = (w >>> (8 * k)) & 0xff;
    }
  }
  message(max: number): Uint8Array {
    const len = this.len(max);
    const b = new Uint8Array(len);
    this.fill(b, len);
    return b;
  }
}

/** The FNV-1a offset basis: the checksum of no bytes. */
export const FNV_BASIS = 2166136261;

/** FNV-1a over `b`, continuing from `h`. */
export function fnv(h: number, b: Uint8Array): number {
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i], 16777619) >>> 0;
  return h;
}
