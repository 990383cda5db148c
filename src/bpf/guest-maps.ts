/**
 * The host's view of the guest eBPF runtime's maps (docs/bpf-runtime.md, "Maps in guest
 * memory"): the directory whose address the guest publishes through the upcall device, and
 * lookups, updates and deletes done straight in guest RAM while the guest runs.
 *
 * Everything here is read from guest memory, so everything is validated: a directory or entry
 * that points outside RAM or has inconsistent sizes is a {@link GuestMapError}, never a wild read.
 * @module
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import { BPF_MAP_TYPE } from './hooks.js';

export const MAP_DIR_MAGIC = 0x4d42544b; // "KTBM"
export const MAP_DIR_VERSION = 1;
const HEADER = 64;
const ENTRY = 64;
/** Far more than the guest runtime ever creates; bounds a hostile capacity. */
const MAX_CAPACITY = 4096;
const SLOT_USED = 1;
const SLOT_DELETED = 2;
/** How long the host waits for a guest vCPU to release a hash map's lock. */
const LOCK_TIMEOUT_MS = 100;

/** A directory or map in guest memory that cannot be trusted, or an operation it refuses. */
export class GuestMapError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestMapError';
  }
}

const fail = (msg: string): never => {
  throw new GuestMapError(msg);
};
const round8 = (n: number) => (n + 7) & ~7;

/** One directory entry as the guest wrote it. */
export interface GuestMapInfo {
  name: string;
  /** 1 hash, 2 array. */
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** Guest-physical address and size of the storage. */
  data: bigint;
  dataSize: number;
  /** Hash maps: buckets (a power of two). */
  buckets: number;
}

/** 32-bit FNV-1a, the guest runtime's hash-map hash. */
export function fnv1a32(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

/** Reads the map directory the guest published at `gpa`. */
export function readMapDirectory(mem: GuestMemory, gpa: bigint): GuestBpfMap[] {
  if (gpa === 0n) fail('the guest has not published a map directory');
  if (gpa % 8n !== 0n || !mem.contains(gpa, HEADER)) fail(`map directory at 0x${gpa.toString(16)} is misaligned or outside guest RAM`);
  const head = new DataView(mem.bytes.buffer, mem.bytes.byteOffset + Number(gpa), HEADER);
  if (head.getUint32(0, true) !== MAP_DIR_MAGIC) fail(`no map directory at 0x${gpa.toString(16)} (bad magic)`);
  if (head.getUint32(4, true) !== MAP_DIR_VERSION) fail(`map directory version ${head.getUint32(4, true)} is not ${MAP_DIR_VERSION}`);
  const capacity = head.getUint32(8, true);
  const count = Atomics.load(new Uint32Array(mem.bytes.buffer, mem.bytes.byteOffset + Number(gpa) + 12, 1), 0);
  if (capacity > MAX_CAPACITY || count > capacity) fail(`map directory claims ${count} of ${capacity} entries`);
  if (!mem.contains(gpa, HEADER + ENTRY * capacity)) fail('map directory runs past the end of guest RAM');
  const maps: GuestBpfMap[] = [];
  for (let i = 0; i < count; i++) maps.push(new GuestBpfMap(mem, gpa + BigInt(HEADER + ENTRY * i)));
  return maps;
}

/** One guest map, operated on in place. */
export class GuestBpfMap {
  readonly info: GuestMapInfo;
  private readonly entry: DataView;
  private readonly lockWord: Int32Array;
  private readonly storage: Uint8Array;

  constructor(mem: GuestMemory, entryGpa: bigint) {
    const base = mem.bytes.byteOffset + Number(entryGpa);
    this.entry = new DataView(mem.bytes.buffer, base, ENTRY);
    this.lockWord = new Int32Array(mem.bytes.buffer, base + 48, 1);
    const raw = mem.bytes.subarray(Number(entryGpa), Number(entryGpa) + 16);
    const nul = raw.indexOf(0);
    const e = this.entry;
    this.info = {
      name: new TextDecoder().decode(raw.subarray(0, nul < 0 ? 16 : nul)),
      type: e.getUint32(16, true), keySize: e.getUint32(20, true), valueSize: e.getUint32(24, true),
      maxEntries: e.getUint32(28, true), data: e.getBigUint64(32, true),
      dataSize: Number(e.getBigUint64(40, true) & 0xffff_ffffn), buckets: e.getUint32(56, true),
    };
    const { name, type, keySize, valueSize, maxEntries, data, dataSize, buckets } = this.info;
    const where = `map ${JSON.stringify(name)}`;
    if (e.getBigUint64(40, true) > 0xffff_ffffn || !mem.contains(data, dataSize)) fail(`${where}: storage 0x${data.toString(16)}+${e.getBigUint64(40, true)} is outside guest RAM`);
    if (keySize < 1 || keySize > 64 || valueSize < 1 || valueSize > 1024 || maxEntries < 1 || maxEntries > 65536) fail(`${where}: bad sizes`);
    if (type === BPF_MAP_TYPE.ARRAY) {
      if (keySize !== 4 || dataSize < maxEntries * round8(valueSize)) fail(`${where}: array storage too small`);
    } else if (type === BPF_MAP_TYPE.HASH) {
      if (buckets < 2 * maxEntries || (buckets & (buckets - 1)) !== 0 || dataSize < buckets * this.slotSize()) fail(`${where}: bad hash geometry (${buckets} buckets, ${dataSize} bytes)`);
    } else fail(`${where}: unknown type ${type}`);
    this.storage = mem.bytes.subarray(Number(data), Number(data) + dataSize);
  }

  /** Live entries: the array's size, or the hash map's count. */
  get size(): number {
    return this.info.type === BPF_MAP_TYPE.ARRAY ? this.info.maxEntries : this.entry.getUint32(52, true);
  }

  /** A copy of the value for `key`, or undefined. */
  lookup(key: Uint8Array): Uint8Array | undefined {
    this.checkKey(key);
    if (this.info.type === BPF_MAP_TYPE.ARRAY) {
      const i = this.index(key);
      return i === undefined ? undefined : this.storage.slice(i * round8(this.info.valueSize), i * round8(this.info.valueSize) + this.info.valueSize);
    }
    return this.locked(() => {
      const at = this.find(key, fnv1a32(key));
      return at.slot === undefined ? undefined : this.storage.slice(this.valueAt(at.slot), this.valueAt(at.slot) + this.info.valueSize);
    });
  }

  /** Writes `value` for `key`; flags 0 any, 1 only if absent, 2 only if present (as bpf_map_update_elem). */
  update(key: Uint8Array, value: Uint8Array, flags: 0 | 1 | 2 = 0): void {
    this.checkKey(key);
    if (value.length !== this.info.valueSize) fail(`map ${this.info.name}: value is ${value.length} bytes, expected ${this.info.valueSize}`);
    if (this.info.type === BPF_MAP_TYPE.ARRAY) {
      const i = this.index(key);
      if (i === undefined) fail(`map ${this.info.name}: index out of range (max_entries ${this.info.maxEntries})`);
      if (flags === 1) fail(`map ${this.info.name}: array entries always exist`);
      this.storage.set(value, i! * round8(this.info.valueSize));
      return;
    }
    this.locked(() => {
      const hash = fnv1a32(key);
      const at = this.find(key, hash);
      if (at.slot !== undefined) {
        if (flags === 1) fail(`map ${this.info.name}: key exists`);
        this.storage.set(value, this.valueAt(at.slot));
        return;
      }
      if (flags === 2) fail(`map ${this.info.name}: no such key`);
      if (this.size >= this.info.maxEntries || at.free === undefined) fail(`map ${this.info.name}: full (${this.info.maxEntries} entries)`);
      const slot = at.free!;
      const off = slot * this.slotSize();
      const dv = new DataView(this.storage.buffer, this.storage.byteOffset + off, 8);
      this.storage.set(key, off + 8);
      this.storage.set(value, this.valueAt(slot));
      dv.setUint32(4, hash, true);
      dv.setUint32(0, SLOT_USED, true);
      this.entry.setUint32(52, this.size + 1, true);
    });
  }

  /** Removes `key` from a hash map; false when it was absent. */
  delete(key: Uint8Array): boolean {
    this.checkKey(key);
    if (this.info.type === BPF_MAP_TYPE.ARRAY) fail(`map ${this.info.name}: array entries cannot be deleted`);
    return this.locked(() => {
      const at = this.find(key, fnv1a32(key));
      if (at.slot === undefined) return false;
      new DataView(this.storage.buffer, this.storage.byteOffset + at.slot * this.slotSize(), 4).setUint32(0, SLOT_DELETED, true);
      this.entry.setUint32(52, this.size - 1, true);
      return true;
    });
  }

  /** Every live entry (copies), in storage order. */
  entries(): [key: Uint8Array, value: Uint8Array][] {
    const { type, maxEntries, valueSize, keySize, buckets } = this.info;
    if (type === BPF_MAP_TYPE.ARRAY) {
      return Array.from({ length: maxEntries }, (_, i) => {
        const key = new Uint8Array(4);
        new DataView(key.buffer).setUint32(0, i, true);
        return [key, this.storage.slice(i * round8(valueSize), i * round8(valueSize) + valueSize)];
      });
    }
    return this.locked(() => {
      const out: [Uint8Array, Uint8Array][] = [];
      for (let s = 0; s < buckets; s++) {
        const off = s * this.slotSize();
        if (new DataView(this.storage.buffer, this.storage.byteOffset + off, 4).getUint32(0, true) !== SLOT_USED) continue;
        out.push([this.storage.slice(off + 8, off + 8 + keySize), this.storage.slice(this.valueAt(s), this.valueAt(s) + valueSize)]);
      }
      return out;
    });
  }

  private slotSize(): number {
    return 8 + round8(this.info.keySize) + round8(this.info.valueSize);
  }

  private valueAt(slot: number): number {
    return slot * this.slotSize() + 8 + round8(this.info.keySize);
  }

  private checkKey(key: Uint8Array): void {
    if (key.length !== this.info.keySize) fail(`map ${this.info.name}: key is ${key.length} bytes, expected ${this.info.keySize}`);
  }

  private index(key: Uint8Array): number | undefined {
    const i = new DataView(key.buffer, key.byteOffset, 4).getUint32(0, true);
    return i < this.info.maxEntries ? i : undefined;
  }

  /** The slot holding `key`, and the first free (deleted or empty) slot on its probe path. */
  private find(key: Uint8Array, hash: number): { slot?: number; free?: number } {
    const { buckets, keySize } = this.info;
    let free: number | undefined;
    for (let n = 0, s = hash & (buckets - 1); n < buckets; n++, s = (s + 1) & (buckets - 1)) {
      const off = s * this.slotSize();
      const dv = new DataView(this.storage.buffer, this.storage.byteOffset + off, 8);
      const state = dv.getUint32(0, true);
      if (state === SLOT_USED) {
        if (dv.getUint32(4, true) === hash && this.storage.subarray(off + 8, off + 8 + keySize).every((b, i) => b === key[i])) return { slot: s, free };
      } else {
        free ??= s;
        if (state !== SLOT_DELETED) break;
      }
    }
    return { free };
  }

  private locked<T>(fn: () => T): T {
    const deadline = performance.now() + LOCK_TIMEOUT_MS;
    while (Atomics.compareExchange(this.lockWord, 0, 0, 1) !== 0) {
      if (performance.now() > deadline) fail(`map ${this.info.name}: the guest has held its lock for over ${LOCK_TIMEOUT_MS} ms`);
    }
    try {
      return fn();
    } finally {
      Atomics.store(this.lockWord, 0, 0);
    }
  }
}
