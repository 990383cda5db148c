/** Small numeric helpers the benchmarks share for their per-round figures. */

/** Median of a non-empty list. */
export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** `v` rounded to 1 decimal. */
export const round1 = (v: number): number => Math.round(v * 10) / 10;
/** `v` rounded to 2 decimals. */
export const round2 = (v: number): number => Math.round(v * 100) / 100;
/** `v` rounded to 3 decimals. */
export const round3 = (v: number): number => Math.round(v * 1000) / 1000;
