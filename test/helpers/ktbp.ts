/**
 * KTBP program images for tests (docs/bpf-runtime.md, "Program image"), until src/bpf/image.ts
 * provides the encoder.
 */

/** A map definition as an image carries it. */
export interface KtbpMap {
  name: string;
  type: 1 | 2;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

/** Header, map definitions, then the instruction slots. */
export function encodeImage(maps: KtbpMap[], insns: Uint8Array): Uint8Array {
  const out = new Uint8Array(16 + 32 * maps.length + insns.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, 0x5042544b, true);
  dv.setUint16(4, 1, true);
  dv.setUint32(8, insns.length / 8, true);
  dv.setUint32(12, maps.length, true);
  maps.forEach((m, i) => {
    const p = 16 + 32 * i;
    out.set(new TextEncoder().encode(m.name), p);
    dv.setUint32(p + 16, m.type, true);
    dv.setUint32(p + 20, m.keySize, true);
    dv.setUint32(p + 24, m.valueSize, true);
    dv.setUint32(p + 28, m.maxEntries, true);
  });
  out.set(insns, 16 + 32 * maps.length);
  return out;
}
