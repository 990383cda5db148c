/**
 * Runs eBPF programs on the host in the TypeScript interpreter with the guest runtime's helpers
 * and map semantics (docs/bpf-runtime.md): array and hash maps kept in this process, helpers
 * 1-3 (map lookup / update / delete), 5 (ktime_get_ns), 7 (get_prandom_u32) and 8
 * (get_smp_processor_id, always 0). For testing programs and as the TS column of `kvmtalk bench bpf`.
 * @module
 */
import { KT_ERR } from '../hypercall/abi.js';
import type { BpfMapDef } from './elf.js';
import { BpfInterpreter, BpfRuntimeError, type BpfHelper, type BpfRegion } from './interpreter.js';
import { LDDW_PSEUDO, encodeProgram, type BpfInsn } from './isa.js';
import type { HelperSpec, MapSpec } from './verifier.js';

/** What the verifier needs to know about the runtime's helpers (the same ids as Linux). */
export const RUNTIME_HELPERS: HelperSpec[] = [
  { id: 1, name: 'map_lookup_elem', args: ['map', 'map-key'], ret: 'map-value-or-null' },
  { id: 2, name: 'map_update_elem', args: ['map', 'map-key', 'map-value', 'scalar'], ret: 'scalar' },
  { id: 3, name: 'map_delete_elem', args: ['map', 'map-key'], ret: 'scalar' },
  { id: 5, name: 'ktime_get_ns', args: [], ret: 'scalar' },
  { id: 7, name: 'get_prandom_u32', args: [], ret: 'scalar' },
  { id: 8, name: 'get_smp_processor_id', args: [], ret: 'scalar' },
];

export const BPF_MAP_TYPE_HASH = 1;
export const BPF_MAP_TYPE_ARRAY = 2;
const MAP_BY_IDX = LDDW_PSEUDO.indexOf('map_by_idx');
/** Map i's values live at MAP_VALUES_BASE + i * MAP_VALUES_STRIDE; its handle is MAP_HANDLE_BASE + i. */
const MAP_VALUES_BASE = 0x2_0000_0000n;
const MAP_VALUES_STRIDE = 0x1_0000_0000n;
const MAP_HANDLE_BASE = 0x1_0000_0000_0000n;
const err = (code: number): bigint => BigInt.asUintN(64, BigInt(-code));

/** A map definition this runtime cannot hold (bad type or sizes), in the image contract's limits. */
export class HostMapError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HostMapError';
  }
}

/** One map: `values` holds max_entries slots of round_up(value_size, 8) bytes. */
class HostMap {
  readonly stride: number;
  readonly values: Uint8Array;
  /** Hash maps: key (hex) → slot. */
  private readonly slots = new Map<string, number>();
  private readonly free: number[] = [];

  constructor(readonly def: BpfMapDef) {
    const { name, type, keySize, valueSize, maxEntries } = def;
    if (type !== BPF_MAP_TYPE_HASH && type !== BPF_MAP_TYPE_ARRAY) throw new HostMapError(`map '${name}': type ${type} is neither hash (1) nor array (2)`);
    if (type === BPF_MAP_TYPE_ARRAY ? keySize !== 4 : keySize < 1 || keySize > 64) throw new HostMapError(`map '${name}': key_size ${keySize} (array: 4, hash: 1 … 64)`);
    if (valueSize < 1 || valueSize > 1024) throw new HostMapError(`map '${name}': value_size ${valueSize} outside 1 … 1024`);
    if (maxEntries < 1 || maxEntries > 65536) throw new HostMapError(`map '${name}': max_entries ${maxEntries} outside 1 … 65536`);
    this.stride = (valueSize + 7) & ~7;
    this.values = new Uint8Array(this.stride * maxEntries);
    for (let i = maxEntries - 1; i >= 0; i--) this.free.push(i);
  }

  /** The slot holding `key`, or -1. */
  find(key: Uint8Array): number {
    if (this.def.type === BPF_MAP_TYPE_ARRAY) {
      const i = new DataView(key.buffer, key.byteOffset, 4).getUint32(0, true);
      return i < this.def.maxEntries ? i : -1;
    }
    return this.slots.get(Buffer.from(key).toString('hex')) ?? -1;
  }

  /** Linux's map_update_elem: flags 0 any, 1 only new, 2 only existing; 0 or a negative KT_E*. */
  update(key: Uint8Array, value: Uint8Array, flags: bigint): number {
    if (flags > 2n) return -KT_ERR.EINVAL;
    let slot = this.find(key);
    if (this.def.type === BPF_MAP_TYPE_ARRAY) {
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
    if (this.def.type === BPF_MAP_TYPE_ARRAY) return -KT_ERR.EINVAL;
    const hex = Buffer.from(key).toString('hex');
    const slot = this.slots.get(hex);
    if (slot === undefined) return -KT_ERR.ENOENT;
    this.slots.delete(hex);
    this.free.push(slot);
    return 0;
  }
}

/**
 * A program ready to run in the TS interpreter against maps created from `maps` (in image
 * order: `lddw map_by_idx(i)` refers to maps[i]). Maps keep their contents between runs.
 */
export class HostProgram {
  private readonly interp: BpfInterpreter;
  private readonly maps: HostMap[];
  private readonly regions: BpfRegion[];
  private readonly helpers = new Map<number, BpfHelper>();
  private rand = 0x2545f491;

  constructor(insns: readonly BpfInsn[], maps: readonly BpfMapDef[] = []) {
    this.interp = new BpfInterpreter(encodeProgram(insns));
    this.maps = maps.map((d) => new HostMap(d));
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

  /** The verifier's view of this program's maps. */
  mapSpecs(): MapSpec[] {
    return this.maps.map((m, index) => ({ index, keySize: m.def.keySize, valueSize: m.def.valueSize }));
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
        if (src === MAP_BY_IDX && imm >= 0 && imm < this.maps.length) return MAP_HANDLE_BASE + BigInt(imm);
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
