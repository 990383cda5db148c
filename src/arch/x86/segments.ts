/** GDT descriptors and the matching `kvm_segment` values for flat 64-bit segments and TSSes. */
import type { Segment } from '../../kvm/vcpu-fd.js';

/** A flat 64-bit code segment (L=1) at privilege `dpl`. */
export function codeSegment(selector: number, dpl: number): Segment {
  return { base: 0n, limit: 0xffffffff, selector, type: 11, present: 1, dpl, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0, padding: 0 };
}

/** A flat writable data segment at privilege `dpl`. */
export function dataSegment(selector: number, dpl: number, base = 0n): Segment {
  return { base, limit: 0xffffffff, selector, type: 3, present: 1, dpl, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0, padding: 0 };
}

/** A busy 64-bit TSS, as VMX requires of TR in long mode. */
export function tssSegment(selector: number, base: bigint, limit: number): Segment {
  return { base, limit, selector, type: 11, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0, padding: 0 };
}

/** A real-mode segment with base = selector << 4. */
export function realModeSegment(selector: number, code: boolean): Segment {
  return {
    base: BigInt(selector) << 4n, limit: 0xffff, selector, type: code ? 11 : 3, present: 1, dpl: 0, db: 0, s: 1, l: 0,
    g: 0, avl: 0, unusable: 0, padding: 0,
  };
}

/** Encodes the 8-byte GDT descriptor for a code/data `kvm_segment`. */
export function encodeDescriptor(seg: Segment): bigint {
  const base = seg.base & 0xffffffffn;
  const limit = BigInt(seg.g ? seg.limit >>> 12 : seg.limit) & 0xfffffn;
  const access = BigInt(seg.type | (seg.s << 4) | (seg.dpl << 5) | (seg.present << 7));
  const flags = BigInt(seg.avl | (seg.l << 1) | (seg.db << 2) | (seg.g << 3));
  return (limit & 0xffffn) | ((base & 0xffffffn) << 16n) | (access << 40n) | ((limit >> 16n) << 48n) | (flags << 52n) | ((base >> 24n) << 56n);
}

/** Encodes the 16-byte system descriptor of a 64-bit TSS, as two little-endian u64. */
export function encodeTssDescriptor(base: bigint, limit: number): [bigint, bigint] {
  return [encodeDescriptor({ ...tssSegment(0, base, limit), type: 9 }), base >> 32n];
}
