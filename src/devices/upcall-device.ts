/**
 * The upcall device (docs/upcall-device.md): a 4 KiB MMIO register bank through which the host
 * hands eBPF programs to the guest (LOAD_PROGRAM / UNLOAD commands, the program's bytes copied into
 * a guest buffer with COPY or read through a paged DATA window), the guest answers with a load
 * status, and the guest asks the host to pin a vCPU thread to a host CPU (AFFINITY).
 *
 * Every vCPU thread has its own {@link UpcallDevice} (devices run in the thread that takes the
 * exit), and all of them and the main thread share one {@link UpcallState}: the registers and the
 * current program live in a SharedArrayBuffer, and every register update holds a small lock in it.
 * The command queue and the promises live on the main thread (`src/upcall/upcall-host.ts`).
 * Every guest access either does what the spec says or is ignored and counted — no guest access throws.
 *
 * @module
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import type { DeviceHost, MmioDevice } from './device.js';

/** Default guest-physical base of the register page. */
export const UPCALL_BASE = 0xfe000000n;
/** Bytes the device claims on the MMIO bus. */
export const UPCALL_SIZE = 0x1000n;
/** "KTUP" read as a little-endian u32. */
export const UPCALL_MAGIC = 0x5055544b;
/** Register-model version. Compatible additions (new registers, FEATURES bits) keep it. */
export const UPCALL_VERSION = 1;

/** Register offsets (all u32, little endian). */
export const UPCALL_REG = {
  MAGIC: 0x000,
  VERSION: 0x004,
  IRQ_STATUS: 0x008,
  IRQ_VECTOR: 0x00c,
  COMMAND: 0x010,
  COMMAND_ARG: 0x014,
  COMMAND_SEQ: 0x018,
  DATA_LEN: 0x01c,
  DATA_OFFSET: 0x020,
  STATUS: 0x024,
  STATUS_PC: 0x028,
  ACK: 0x02c,
  AFFINITY: 0x030,
  AFFINITY_STATUS: 0x034,
  WINDOW_SIZE: 0x038,
  MAP_DIR_LO: 0x03c,
  MAP_DIR_HI: 0x040,
  HOST_CPUS: 0x044,
  COPY_ADDR_LO: 0x048,
  COPY_ADDR_HI: 0x04c,
  COPY_LEN: 0x050,
  COPY: 0x054,
  COPY_STATUS: 0x058,
  FEATURES: 0x05c,
} as const;

/** FEATURES bits. Bit 31 is never set, so a device without FEATURES (reads 0xFFFFFFFF) has none. */
export const UPCALL_FEATURE = {
  /** COPY_ADDR_LO/HI, COPY_LEN, COPY and COPY_STATUS exist. */
  COPY: 1 << 0,
} as const;
const FEATURES = UPCALL_FEATURE.COPY;

/** Offset of the read-only DATA window. */
export const UPCALL_WINDOW_OFFSET = 0x800;
/** Bytes of the DATA window. */
export const UPCALL_WINDOW_SIZE = 0x800;

/** IRQ_STATUS bits (write 1 to clear). */
export const UPCALL_IRQ = {
  /** A new command is in COMMAND/COMMAND_ARG/COMMAND_SEQ. Raises the interrupt. */
  CMD_PENDING: 1 << 0,
  /** The host withdrew the command the guest may have been working on. Raises the interrupt. */
  CMD_CANCELLED: 1 << 1,
  /** The host accepted an ACK (informational; no interrupt: the guest's own write caused it). */
  CMD_DONE: 1 << 2,
  /** AFFINITY_STATUS holds the result of a new AFFINITY request (informational; no interrupt). */
  AFFINITY_DONE: 1 << 3,
} as const;
const IRQ_ALL = 0xf;
const IRQ_INTERRUPTING = UPCALL_IRQ.CMD_PENDING | UPCALL_IRQ.CMD_CANCELLED;

/** COMMAND codes. */
export const UPCALL_CMD = {
  NONE: 0,
  /** Load the program (DATA window, COPY) at hook COMMAND_ARG. */
  LOAD_PROGRAM: 1,
  /** Detach whatever is loaded at hook COMMAND_ARG (DATA_LEN = 0). */
  UNLOAD: 2,
} as const;

/** Errno values the device itself reports (Linux numbering, negated in the registers). */
export const UPCALL_ERRNO = { EPERM: 1, ENOENT: 2, ESRCH: 3, EIO: 5, EFAULT: 14, EINVAL: 22, ENOSPC: 28, EOPNOTSUPP: 95, ESTALE: 116 } as const;

/** Lowest and highest vector IRQ_VECTOR accepts (docs/guest-abi.md, "Vectors"); 0 = none. */
export const UPCALL_VECTOR_MIN = 0x20;
export const UPCALL_VECTOR_MAX = 0xef;
/** AFFINITY's vCPU field meaning "the vCPU doing the write". */
export const UPCALL_AFFINITY_SELF = 0xffff;
/** Largest program by default: 64 KiB, the guest driver's buffer (a KTBP image is at most 33,296 bytes). */
export const UPCALL_DEFAULT_MAX_PROGRAM = 1 << 16;
/** STATUS_PC value meaning "no instruction". */
export const UPCALL_NO_PC = 0xffffffff;
/** Most vCPUs whose thread ids the shared state holds (layout.ts MAX_VCPUS). */
const MAX_TIDS = 64;

/** Accesses the device ignored or handled, by kind; shared by every vCPU thread. */
export interface UpcallCounters {
  /** Not exactly 4 bytes, or not 4-byte aligned. */
  badSize: number;
  /** Offset outside the page or an unassigned register. */
  badOffset: number;
  /** Writes to read-only registers or to the DATA window. */
  readOnlyWrites: number;
  /** Writes of a value the register refuses (IRQ_VECTOR out of range, unaligned DATA_OFFSET). */
  badValue: number;
  /** ACK writes with no command pending or a COMMAND_SEQ that is not the current one. */
  staleAcks: number;
  /** Interrupts the host failed to raise (the device carried on). */
  irqErrors: number;
  /** Guest reads and writes of any kind. */
  reads: number;
  writes: number;
  /** Commands completed by an ACK. */
  acks: number;
  /** AFFINITY writes. */
  affinityRequests: number;
  /** COPY writes that copied the program into guest RAM. */
  copies: number;
  /** COPY writes refused (COPY_STATUS negative): no command, stale seq, buffer too small or outside RAM. */
  copyErrors: number;
}
const COUNTER_NAMES: readonly (keyof UpcallCounters)[] = [
  'badSize', 'badOffset', 'readOnlyWrites', 'badValue', 'staleAcks', 'irqErrors', 'reads', 'writes', 'acks', 'affinityRequests',
  'copies', 'copyErrors',
];

/** Int32 slots of the shared state: registers, counters, the COPY registers, then vCPU thread ids. */
const W = {
  LOCK: 0,
  IRQ_STATUS: 1,
  IRQ_VECTOR: 2,
  COMMAND: 3,
  COMMAND_ARG: 4,
  COMMAND_SEQ: 5,
  DATA_LEN: 6,
  DATA_OFFSET: 7,
  STATUS: 8,
  STATUS_PC: 9,
  AFFINITY: 10,
  AFFINITY_STATUS: 11,
  MAP_DIR_LO: 12,
  MAP_DIR_HI: 13,
  VCPU_COUNT: 14,
  MAX_PROGRAM: 15,
  /** 16 slots, {@link COUNTER_NAMES} order. */
  COUNTERS: 16,
  COPY_ADDR_LO: 32,
  COPY_ADDR_HI: 33,
  COPY_LEN: 34,
  COPY_STATUS: 35,
  TIDS: 36,
} as const;
/** Bytes before the program buffer. */
const HEADER_BYTES = 4 * (W.TIDS + MAX_TIDS);

/** What a vCPU thread's device tells the main thread (posted, never waited for). */
export type UpcallEvent =
  /** The guest completed command `seq` with this STATUS / STATUS_PC. */
  | { kind: 'ack'; seq: number; status: number; pc: number }
  /** The guest set a vector while an interrupting event was pending: raise it now. */
  | { kind: 'irq' }
  /** The guest asked for vCPU `vcpu` on host CPU `hostCpu`; AFFINITY_STATUS got `result`. */
  | { kind: 'affinity'; vcpu: number; hostCpu: number; result: number };

/**
 * The device's registers, counters, the vCPU threads' ids and the current program, in one
 * SharedArrayBuffer that every thread attaches to. Methods that change registers hold the lock.
 */
export class UpcallState {
  readonly buffer: SharedArrayBuffer;
  readonly vcpuCount: number;
  readonly maxProgram: number;
  private readonly words: Int32Array;
  private readonly program: Uint8Array;

  private constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    this.words = new Int32Array(buffer, 0, HEADER_BYTES / 4);
    this.vcpuCount = this.words[W.VCPU_COUNT]!;
    this.maxProgram = this.words[W.MAX_PROGRAM]!;
    this.program = new Uint8Array(buffer, HEADER_BYTES, this.maxProgram);
  }

  /**
   * Fresh state at reset values for a VM of `vcpuCount` vCPUs. `vector` presets IRQ_VECTOR (a
   * guest that knows it need not write it; default 0 = none).
   */
  static create(vcpuCount: number, { maxProgram = UPCALL_DEFAULT_MAX_PROGRAM, vector = 0 } = {}): UpcallState {
    if (!Number.isInteger(vcpuCount) || vcpuCount < 1 || vcpuCount > MAX_TIDS) throw new RangeError(`vCPU count must be 1–${MAX_TIDS}, got ${vcpuCount}`);
    if (!Number.isInteger(maxProgram) || maxProgram < 1 || maxProgram > 1 << 24) throw new RangeError(`max program must be 1 B–16 MiB, got ${maxProgram}`);
    if (!Number.isInteger(vector) || (vector !== 0 && (vector < UPCALL_VECTOR_MIN || vector > UPCALL_VECTOR_MAX))) throw new RangeError(`upcall vector must be 0 or 0x20–0xef, got ${vector}`);
    const buffer = new SharedArrayBuffer(HEADER_BYTES + maxProgram);
    const words = new Int32Array(buffer, 0, HEADER_BYTES / 4);
    words[W.STATUS_PC] = UPCALL_NO_PC | 0;
    words[W.AFFINITY] = -1;
    words[W.IRQ_VECTOR] = vector;
    words[W.VCPU_COUNT] = vcpuCount;
    words[W.MAX_PROGRAM] = maxProgram;
    return new UpcallState(buffer);
  }

  /** The state another thread created (its {@link buffer}). */
  static attach(buffer: SharedArrayBuffer): UpcallState {
    return new UpcallState(buffer);
  }

  /** Runs `fn` holding the lock. Critical sections are a few loads and stores: spinning is fine. */
  locked<T>(fn: () => T): T {
    while (Atomics.compareExchange(this.words, W.LOCK, 0, 1) !== 0) {
      // Another thread is inside a handful of stores; nothing to sleep for.
    }
    try {
      return fn();
    } finally {
      Atomics.store(this.words, W.LOCK, 0);
    }
  }

  /** Register word `w` as a u32 (call inside {@link locked} where consistency matters). */
  get(w: number): number {
    return Atomics.load(this.words, w) >>> 0;
  }

  set(w: number, value: number): void {
    Atomics.store(this.words, w, value | 0);
  }

  count(name: keyof UpcallCounters): void {
    Atomics.add(this.words, W.COUNTERS + COUNTER_NAMES.indexOf(name), 1);
  }

  /** A snapshot of the counters. */
  counters(): UpcallCounters {
    const out = {} as UpcallCounters;
    COUNTER_NAMES.forEach((n, i) => (out[n] = Atomics.load(this.words, W.COUNTERS + i) >>> 0));
    return out;
  }

  /** Records vCPU `cpu`'s kernel thread id (each vCPU thread at start), for AFFINITY requests. */
  publishTid(cpu: number, tid: number): void {
    if (cpu >= 0 && cpu < this.vcpuCount) Atomics.store(this.words, W.TIDS + cpu, tid);
  }

  /** vCPU `cpu`'s thread id, 0 before its thread started. */
  tid(cpu: number): number {
    return cpu >= 0 && cpu < this.vcpuCount ? Atomics.load(this.words, W.TIDS + cpu) : 0;
  }

  /** IRQ_VECTOR now (0 = none). */
  get vector(): number {
    return this.get(W.IRQ_VECTOR);
  }

  /** The guest-physical address the guest wrote to MAP_DIR_LO/HI (0n: none). */
  mapDirectory(): bigint {
    return this.locked(() => (BigInt(this.get(W.MAP_DIR_HI)) << 32n) | BigInt(this.get(W.MAP_DIR_LO)));
  }

  /** COMMAND_SEQ of the command the guest can see, 0 when none. */
  get visibleSeq(): number {
    return this.get(W.COMMAND_SEQ);
  }

  /**
   * Makes a command visible to the guest (main thread, only while none is). Returns whether to
   * raise the interrupt (a vector is set).
   */
  post(code: number, arg: number, seq: number, data: Uint8Array): boolean {
    if (data.length > this.maxProgram) throw new RangeError(`program of ${data.length} bytes exceeds ${this.maxProgram}`);
    return this.locked(() => {
      if (this.get(W.COMMAND) !== UPCALL_CMD.NONE) throw new Error('upcall: a command is already visible');
      this.program.set(data);
      this.set(W.COMMAND, code);
      this.set(W.COMMAND_ARG, arg);
      this.set(W.COMMAND_SEQ, seq);
      this.set(W.DATA_LEN, data.length);
      this.set(W.DATA_OFFSET, 0);
      this.set(W.STATUS, 0);
      this.set(W.STATUS_PC, UPCALL_NO_PC);
      this.set(W.IRQ_STATUS, (this.get(W.IRQ_STATUS) & ~(UPCALL_IRQ.CMD_CANCELLED | UPCALL_IRQ.CMD_DONE)) | UPCALL_IRQ.CMD_PENDING);
      return this.get(W.IRQ_VECTOR) !== 0;
    });
  }

  /**
   * Withdraws command `seq` if the guest still sees it (main thread: timeout, teardown): clears
   * the command and sets CMD_CANCELLED. Returns false when the guest ACKed it first.
   */
  cancel(seq: number): boolean {
    return this.locked(() => {
      if (this.get(W.COMMAND) === UPCALL_CMD.NONE || this.get(W.COMMAND_SEQ) !== seq) return false;
      this.clearCommand();
      this.set(W.IRQ_STATUS, (this.get(W.IRQ_STATUS) & ~UPCALL_IRQ.CMD_PENDING) | UPCALL_IRQ.CMD_CANCELLED);
      return true;
    });
  }

  /** Clears the command registers (lock held). */
  clearCommand(): void {
    for (const w of [W.COMMAND, W.COMMAND_ARG, W.COMMAND_SEQ, W.DATA_LEN, W.DATA_OFFSET]) this.set(w, 0);
  }

  /** Four bytes of the current program at DATA_OFFSET + `at`; zeros past its end (lock held). */
  readWindow(at: number): number {
    const len = this.get(W.DATA_LEN);
    const start = this.get(W.DATA_OFFSET) + at;
    let value = 0;
    for (let i = 0; i < 4; i++) {
      const j = start + i;
      if (j < len) value |= this.program[j]! << (8 * i);
    }
    return value >>> 0;
  }

  /**
   * COPY (lock held): writes the current program into `memory` at COPY_ADDR if `seq` names the
   * current command and the buffer (COPY_LEN) and guest RAM both hold DATA_LEN bytes there.
   * Returns COPY_STATUS: the bytes copied, or a negative errno with nothing written.
   */
  copyProgram(seq: number, memory: GuestRam): number {
    if (this.get(W.COMMAND) === UPCALL_CMD.NONE) return -UPCALL_ERRNO.ENOENT;
    if (seq !== this.get(W.COMMAND_SEQ)) return -UPCALL_ERRNO.ESTALE;
    const len = this.get(W.DATA_LEN);
    if (this.get(W.COPY_LEN) < len) return -UPCALL_ERRNO.ENOSPC;
    // 64-bit address: the bigint sum cannot wrap, so a buffer near 2^64 is simply outside RAM.
    const addr = (BigInt(this.get(W.COPY_ADDR_HI)) << 32n) | BigInt(this.get(W.COPY_ADDR_LO));
    if (!memory.contains(addr, len)) return -UPCALL_ERRNO.EFAULT;
    memory.write(addr, this.program.subarray(0, len));
    return len;
  }
}

/** What COPY needs of guest RAM ({@link GuestMemory} provides it). */
export type GuestRam = Pick<GuestMemory, 'contains' | 'write'>;

/** Registers that read back a word of the shared state as it is. */
const STORED = new Map<number, number>([
  [UPCALL_REG.IRQ_STATUS, W.IRQ_STATUS], [UPCALL_REG.IRQ_VECTOR, W.IRQ_VECTOR],
  [UPCALL_REG.COMMAND, W.COMMAND], [UPCALL_REG.COMMAND_ARG, W.COMMAND_ARG], [UPCALL_REG.COMMAND_SEQ, W.COMMAND_SEQ],
  [UPCALL_REG.DATA_LEN, W.DATA_LEN], [UPCALL_REG.DATA_OFFSET, W.DATA_OFFSET],
  [UPCALL_REG.STATUS, W.STATUS], [UPCALL_REG.STATUS_PC, W.STATUS_PC],
  [UPCALL_REG.AFFINITY, W.AFFINITY], [UPCALL_REG.AFFINITY_STATUS, W.AFFINITY_STATUS],
  [UPCALL_REG.MAP_DIR_LO, W.MAP_DIR_LO], [UPCALL_REG.MAP_DIR_HI, W.MAP_DIR_HI],
  [UPCALL_REG.COPY_ADDR_LO, W.COPY_ADDR_LO], [UPCALL_REG.COPY_ADDR_HI, W.COPY_ADDR_HI],
  [UPCALL_REG.COPY_LEN, W.COPY_LEN], [UPCALL_REG.COPY_STATUS, W.COPY_STATUS],
]);

/** Who may pin which vCPU where (the VM's `upcall.pinning` / `upcall.allowedCpus`). */
export interface UpcallPolicy {
  /** false: every AFFINITY request gets -EPERM. */
  pinning: boolean;
  /** Host CPUs a request may name; others get -EINVAL. */
  allowedCpus: readonly number[];
}

/** Options of {@link UpcallDevice}. */
export interface UpcallDeviceOptions {
  /** Posts an event to the main thread. Must not block. */
  notify: (event: UpcallEvent) => void;
  policy: UpcallPolicy;
  /** sched_setaffinity(tid, [cpu]); throws an error with a numeric `errno` on failure. */
  pin: (tid: number, cpu: number) => void;
  /** Guest RAM, which COPY writes the program into (the vCPU thread's view). */
  memory: GuestRam;
  /** Guest-physical base of the register page (default {@link UPCALL_BASE}). */
  base?: bigint;
}

/**
 * One vCPU thread's view of the device: decodes the thread's MMIO accesses against the shared
 * {@link UpcallState}. Claim {@link UPCALL_SIZE} bytes at {@link UPCALL_BASE} (or `options.base`).
 */
export class UpcallDevice implements MmioDevice {
  readonly name = 'upcall';
  readonly base: bigint;
  private readonly allowed: ReadonlySet<number>;

  constructor(
    readonly state: UpcallState,
    private readonly options: UpcallDeviceOptions,
  ) {
    this.base = options.base ?? UPCALL_BASE;
    this.allowed = new Set(options.policy.allowedCpus);
  }

  mmioRead(addr: bigint, data: Uint8Array, _host?: DeviceHost): void {
    this.state.count('reads');
    const offset = this.checkAccess(addr, data);
    const value = offset < 0 ? undefined : this.state.locked(() => this.readRegister(offset));
    if (value === undefined) {
      if (offset >= 0) this.state.count('badOffset');
      data.fill(0xff);
      return;
    }
    data[0] = value & 0xff;
    data[1] = (value >>> 8) & 0xff;
    data[2] = (value >>> 16) & 0xff;
    data[3] = (value >>> 24) & 0xff;
  }

  mmioWrite(addr: bigint, data: Uint8Array, host?: DeviceHost): void {
    this.state.count('writes');
    const offset = this.checkAccess(addr, data);
    if (offset < 0) return;
    const value = (data[0]! | (data[1]! << 8) | (data[2]! << 16) | (data[3]! << 24)) >>> 0;
    // AFFINITY makes a system call: outside the lock, so other vCPUs' accesses never wait for it.
    if (offset === UPCALL_REG.AFFINITY) return this.requestAffinity(value, host);
    const event = this.state.locked(() => this.writeRegister(offset, value));
    if (event) this.options.notify(event);
  }

  /** The offset of a valid access (aligned 4 bytes inside the page), or -1 after counting why not. */
  private checkAccess(addr: bigint, data: Uint8Array): number {
    const rel = addr - this.base;
    if (rel < 0n || rel >= UPCALL_SIZE) {
      this.state.count('badOffset');
      return -1;
    }
    const offset = Number(rel);
    if (data.length !== 4 || (offset & 3) !== 0) {
      this.state.count('badSize');
      return -1;
    }
    return offset;
  }

  private readRegister(offset: number): number | undefined {
    const s = this.state;
    if (offset >= UPCALL_WINDOW_OFFSET) return s.readWindow(offset - UPCALL_WINDOW_OFFSET);
    const word = STORED.get(offset);
    if (word !== undefined) return s.get(word);
    switch (offset) {
      case UPCALL_REG.MAGIC: return UPCALL_MAGIC;
      case UPCALL_REG.VERSION: return UPCALL_VERSION;
      case UPCALL_REG.ACK: return 0;
      case UPCALL_REG.COPY: return 0;
      case UPCALL_REG.WINDOW_SIZE: return UPCALL_WINDOW_SIZE;
      case UPCALL_REG.HOST_CPUS: return this.options.policy.pinning ? this.allowed.size : 0;
      case UPCALL_REG.FEATURES: return FEATURES;
      default: return undefined;
    }
  }

  /** Applies a write (lock held); returns what the main thread must hear about, if anything. */
  private writeRegister(offset: number, value: number): UpcallEvent | undefined {
    const s = this.state;
    if (offset >= UPCALL_WINDOW_OFFSET) {
      s.count('readOnlyWrites');
      return undefined;
    }
    switch (offset) {
      case UPCALL_REG.MAGIC:
      case UPCALL_REG.VERSION:
      case UPCALL_REG.COMMAND:
      case UPCALL_REG.COMMAND_ARG:
      case UPCALL_REG.COMMAND_SEQ:
      case UPCALL_REG.DATA_LEN:
      case UPCALL_REG.AFFINITY_STATUS:
      case UPCALL_REG.WINDOW_SIZE:
      case UPCALL_REG.HOST_CPUS:
      case UPCALL_REG.COPY_STATUS:
      case UPCALL_REG.FEATURES:
        s.count('readOnlyWrites');
        return undefined;
      case UPCALL_REG.IRQ_STATUS:
        s.set(W.IRQ_STATUS, s.get(W.IRQ_STATUS) & ~(value & IRQ_ALL));
        return undefined;
      case UPCALL_REG.IRQ_VECTOR:
        if (value !== 0 && (value < UPCALL_VECTOR_MIN || value > UPCALL_VECTOR_MAX)) {
          s.count('badValue');
          return undefined;
        }
        s.set(W.IRQ_VECTOR, value);
        // Events that happened while no vector was set are delivered now.
        return value !== 0 && s.get(W.IRQ_STATUS) & IRQ_INTERRUPTING ? { kind: 'irq' } : undefined;
      case UPCALL_REG.DATA_OFFSET:
        if (value & 3) {
          s.count('badValue');
          return undefined;
        }
        s.set(W.DATA_OFFSET, value);
        return undefined;
      case UPCALL_REG.STATUS:
      case UPCALL_REG.STATUS_PC:
      case UPCALL_REG.MAP_DIR_LO:
      case UPCALL_REG.MAP_DIR_HI:
      case UPCALL_REG.COPY_ADDR_LO:
      case UPCALL_REG.COPY_ADDR_HI:
      case UPCALL_REG.COPY_LEN:
        s.set(STORED.get(offset)!, value); // plain guest-writable words
        return undefined;
      case UPCALL_REG.COPY: {
        // Synchronous, like AFFINITY: when the guest's write retires the bytes are in its RAM.
        const result = s.copyProgram(value, this.options.memory);
        s.set(W.COPY_STATUS, result);
        s.count(result < 0 ? 'copyErrors' : 'copies');
        return undefined;
      }
      case UPCALL_REG.ACK:
        return this.ack(value);
      default:
        s.count('badOffset');
        return undefined;
    }
  }

  private ack(seq: number): UpcallEvent | undefined {
    const s = this.state;
    if (s.get(W.COMMAND) === UPCALL_CMD.NONE || seq !== s.get(W.COMMAND_SEQ)) {
      s.count('staleAcks');
      return undefined;
    }
    const event: UpcallEvent = { kind: 'ack', seq, status: s.get(W.STATUS) | 0, pc: s.get(W.STATUS_PC) };
    s.clearCommand();
    s.set(W.IRQ_STATUS, (s.get(W.IRQ_STATUS) & ~UPCALL_IRQ.CMD_PENDING) | UPCALL_IRQ.CMD_DONE);
    s.count('acks');
    return event;
  }

  /** AFFINITY: checks the request against the policy, pins the vCPU's thread, reports the result. */
  private requestAffinity(value: number, host: DeviceHost | undefined): void {
    const s = this.state;
    s.count('affinityRequests');
    let vcpu = value >>> 16;
    const hostCpu = value & 0xffff;
    if (vcpu === UPCALL_AFFINITY_SELF && host) vcpu = host.cpu;
    let result: number;
    if (vcpu >= s.vcpuCount) result = -UPCALL_ERRNO.EINVAL;
    else if (!this.options.policy.pinning) result = -UPCALL_ERRNO.EPERM;
    else if (!this.allowed.has(hostCpu)) result = -UPCALL_ERRNO.EINVAL;
    else if (!s.tid(vcpu)) result = -UPCALL_ERRNO.ESRCH;
    else result = this.pin(s.tid(vcpu), hostCpu);
    s.locked(() => {
      s.set(W.AFFINITY, value);
      s.set(W.AFFINITY_STATUS, result);
      s.set(W.IRQ_STATUS, s.get(W.IRQ_STATUS) | UPCALL_IRQ.AFFINITY_DONE);
    });
    this.options.notify({ kind: 'affinity', vcpu, hostCpu, result });
  }

  /** 0, or the negative errno the pin function failed with (-EIO when it gave none). */
  private pin(tid: number, cpu: number): number {
    try {
      this.options.pin(tid, cpu);
      return 0;
    } catch (e) {
      const errno = (e as { errno?: unknown }).errno;
      return typeof errno === 'number' && Number.isInteger(errno) && errno > 0 && errno < 4096 ? -errno : -UPCALL_ERRNO.EIO;
    }
  }
}
