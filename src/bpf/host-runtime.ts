/**
 * Runs KTBP program images on the host in the TypeScript interpreter with the guest runtime's
 * helpers and map semantics (docs/bpf-runtime.md): array and hash maps kept in this process,
 * helpers 1-3 (map lookup / update / delete), 5 (ktime_get_ns), 7 (get_prandom_u32) and 8
 * (get_smp_processor_id, always 0). For testing programs and as the TS column of `kvmtalk bench bpf`.
 * @module
 */
import { KT_ERR } from '../hypercall/abi.js';
import { BPF_MAP_TYPE } from './hooks.js';
import { encodeImage, type BpfImage, type ImageMap } from './image.js';
import { BpfInterpreter, BpfRuntimeError, type BpfHelper, type BpfRegion } from './interpreter.js';
import { LDDW_PSEUDO, encodeProgram } from './isa.js';

const MAP_BY_FD = LDDW_PSEUDO.indexOf('map_by_fd');
/** Map i's values live at MAP_VALUES_BASE + i * MAP_VALUES_STRIDE; its handle is MAP_HANDLE_BASE + i. */
const MAP_VALUES_BASE = 0x2_0000_0000n;
const MAP_VALUES_STRIDE = 0x1_0000_0000n;
const MAP_HANDLE_BASE = 0x1_0000_0000_0000n;
const err = (code: number): bigint => BigInt.asUintN(64, BigInt(-code));

/** One map: `values` holds max_entries slots of round_up(value_size, 8) bytes. */
class HostMap {
  readonly stride: number;
  readonly values: Uint8Array;
  /** Hash maps: key (hex) → slot. */
  private readonly slots = new Map<string, number>();
  private readonly free: number[] = [];

  constructor(readonly def: ImageMap) {
    this.stride = (def.valueSize + 7) & ~7;
    this.values = new Uint8Array(this.stride * def.maxEntries);
    for (let i = def.maxEntries - 1; i >= 0; i--) this.free.push(i);
  }

  /** The slot holding `key`, or -1. */
  find(key: Uint8Array): number {
    if (this.def.type === BPF_MAP_TYPE.ARRAY) {
      const i = new DataView(key.buffer, key.byteOffset, 4).getUint32(0, true);
      return i < this.def.maxEntries ? i : -1;
    }
    return this.slots.get(Buffer.from(key).toString('hex')) ?? -1;
  }

  /** Linux's map_update_elem: flags 0 any, 1 only new, 2 only existing; 0 or a negative KT_E*. */
  update(key: Uint8Array, value: Uint8Array, flags: bigint): number {
    if (flags > 2n) return -KT_ERR.EINVAL;
    let slot = this.find(key);
    if (this.def.type === BPF_MAP_TYPE.ARRAY) {
      if (slot < 0) return -KT_ERR.E2BIG;
      if (flags === 1n) return -KT_ERR.EEXIST;
    } else if (slot >= 0) {
      if (flags === 1n) return -KT_ERR.EEXIST;
    } else {
      if (flags === 2n) return -KT_ERR.ENOENT;
      if (this.free.length === 0) return -KT_ERR.E2BIG;
      slot = this.free.pop()!;
      this.slots.set(Buffer.from(key).toString('hex'), slot);
    }
    this.values.fill(0, slot * this.stride, (slot + 1) * this.stride);
    this.values.set(value, slot * this.stride);
    return 0;
  }

  delete(key: Uint8Array): number {
    if (this.def.type === BPF_MAP_TYPE.ARRAY) return -KT_ERR.EINVAL;
    const hex = Buffer.from(key).toString('hex');
    const slot = this.slots.get(hex);
    if (slot === undefined) return -KT_ERR.ENOENT;
    this.slots.delete(hex);
    this.free.push(slot);
    return 0;
  }
}

/**
 * A program image ready to run in the TS interpreter, with fresh maps made from the image's map
 * definitions (`lddw map_by_fd(i)` refers to map i). Maps keep their contents between runs.
 */
export class HostProgram {
  private readonly interp: BpfInterpreter;
  private readonly maps: HostMap[];
  private readonly regions: BpfRegion[];
  private readonly helpers = new Map<number, BpfHelper>();
  private rand = 0x2545f491;

  /** @throws BpfImageError for an image the guest would refuse to parse */
  constructor(image: BpfImage) {
    encodeImage(image); // the guest's checks of maps and map references
    this.interp = new BpfInterpreter(encodeProgram(image.insns));
    this.maps = image.maps.map((d) => new HostMap(d));
    this.regions = this.maps.map((m, i) => ({ base: MAP_VALUES_BASE + BigInt(i) * MAP_VALUES_STRIDE, bytes: m.values, writable: true }));
    const mapAt = (handle: bigint, pc: number): [HostMap, number] => {
      const i = Number(handle - MAP_HANDLE_BASE);
      const m = handle >= MAP_HANDLE_BASE ? this.maps[i] : undefined;
      if (!m) throw new BpfRuntimeError(pc, `0x${handle.toString(16)} is not a map`);
      return [m, i];
    };
    this.helpers.set(1, (r1, r2, _r3, _r4, _r5, ctx) => {
      const [m, i] = mapAt(r1, ctx.pc);
      const slot = m.find(ctx.read(r2, m.def.keySize));
      return slot < 0 ? 0n : MAP_VALUES_BASE + BigInt(i) * MAP_VALUES_STRIDE + BigInt(slot * m.stride);
    });
    this.helpers.set(2, (r1, r2, r3, r4, _r5, ctx) => {
      const [m] = mapAt(r1, ctx.pc);
      return err(-m.update(ctx.read(r2, m.def.keySize), ctx.read(r3, m.def.valueSize), r4));
    });
    this.helpers.set(3, (r1, r2, _r3, _r4, _r5, ctx) => {
      const [m] = mapAt(r1, ctx.pc);
      return err(-m.delete(ctx.read(r2, m.def.keySize)));
    });
    this.helpers.set(5, () => process.hrtime.bigint());
    this.helpers.set(7, () => {
      // xorshift32, as the guest runtime's per-vCPU generator
      let x = this.rand;
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      this.rand = x >>> 0;
      return BigInt(this.rand);
    });
    this.helpers.set(8, () => 0n);
  }

  /**
   * Runs the program with r1 = `ctx` (writable, as a hook's private copy) and returns r0.
   * @throws BpfRuntimeError on a fault
   */
  run(ctx: Uint8Array): bigint {
    return this.interp.run({
      memory: ctx,
      regions: this.regions,
      helpers: this.helpers,
      resolvePseudo: (src, imm) => {
        if (src === MAP_BY_FD && imm >= 0 && imm < this.maps.length) return MAP_HANDLE_BASE + BigInt(imm);
        throw new BpfRuntimeError(-1, `lddw with pseudo source ${src} (imm ${imm}) is not a map of this program`);
      },
    }).r0;
  }

  /** The value stored under `key` in map `name` (a copy), or undefined. */
  lookup(name: string, key: Uint8Array): Uint8Array | undefined {
    const m = this.maps.find((x) => x.def.name === name);
    if (!m) throw new RangeError(`no map '${name}'`);
    const slot = m.find(key);
    return slot < 0 ? undefined : m.values.slice(slot * m.stride, slot * m.stride + m.def.valueSize);
  }
}
