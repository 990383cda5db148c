/**
 * The upcall device (docs/upcall-device.md): a 4 KiB MMIO register bank through which the host
 * hands eBPF programs to the guest (LOAD_PROGRAM / UNLOAD commands, the program's bytes read
 * through a paged DATA window), the guest answers with a load status, and the guest asks the host
 * to pin a vCPU thread to a host CPU (AFFINITY).
 *
 * Only the register model and the host-side API live here; nothing is wired into a VM yet. Every
 * guest access either does what the spec says or is ignored and counted — no guest access throws.
 *
 * @module
 */
import type { DeviceHost, MmioDevice } from './device.js';

/** Default guest-physical base of the register page. */
export const UPCALL_BASE = 0xfe000000n;
/** Bytes the device claims on the MMIO bus. */
export const UPCALL_SIZE = 0x1000n;
/** "KTUP" read as a little-endian u32. */
export const UPCALL_MAGIC = 0x5055544b;
/** Register-model version. */
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
} as const;

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
  /** Load the program in the DATA window at hook COMMAND_ARG. */
  LOAD_PROGRAM: 1,
  /** Detach whatever is loaded at hook COMMAND_ARG (DATA_LEN = 0). */
  UNLOAD: 2,
} as const;

/** Errno values the device itself reports (Linux numbering, negated in the registers). */
export const UPCALL_ERRNO = { EPERM: 1, EIO: 5, EBUSY: 16, EINVAL: 22, EOPNOTSUPP: 95 } as const;

/** Lowest and highest vector IRQ_VECTOR accepts (docs/guest-abi.md, "Vectors"); 0 = none. */
export const UPCALL_VECTOR_MIN = 0x20;
export const UPCALL_VECTOR_MAX = 0xef;
/** AFFINITY's vCPU field meaning "the vCPU doing the write". */
export const UPCALL_AFFINITY_SELF = 0xffff;
/** Largest program {@link UpcallDevice.deliver} accepts by default (1 MiB). */
export const UPCALL_DEFAULT_MAX_PROGRAM = 1 << 20;
/** STATUS_PC value meaning "no instruction". */
export const UPCALL_NO_PC = 0xffffffff;

/** What the guest answered to a command. */
export interface LoadStatus {
  /** STATUS as a signed i32: 0 success, a negative errno on failure. */
  status: number;
  /** STATUS_PC (instruction index the verifier rejected), or null for {@link UPCALL_NO_PC}. */
  pc: number | null;
  /** COMMAND_SEQ of the command. */
  seq: number;
}

/** An AFFINITY request: pin vCPU `vcpu`'s thread to host CPU `hostCpu`. */
export interface AffinityRequest {
  vcpu: number;
  hostCpu: number;
}

/** Returns 0 or a negative errno; reported to the guest in AFFINITY_STATUS. */
export type AffinityHandler = (request: AffinityRequest) => number;

/** Accesses the device ignored, by reason. */
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
  /** raiseIrq callbacks that threw (the device carried on). */
  irqErrors: number;
}

/** Construction options for {@link UpcallDevice}. */
export interface UpcallDeviceOptions {
  /** Sends `vector` to the guest (e.g. `vm.signalMsi(vector, cpu)`). Must not block. */
  raiseIrq: (vector: number) => void;
  /** Guest-physical base of the register page (default {@link UPCALL_BASE}). */
  base?: bigint;
  /** Number of vCPUs, for validating AFFINITY (default: no check here, the handler decides). */
  vcpuCount?: number;
  /** Largest program {@link UpcallDevice.deliver} accepts (default {@link UPCALL_DEFAULT_MAX_PROGRAM}). */
  maxProgram?: number;
}

interface Command {
  code: number;
  arg: number;
  data: Uint8Array;
  seq: number;
  resolve: (status: LoadStatus) => void;
  reject: (error: Error) => void;
}

/** Commands the host withdrew with {@link UpcallDevice.cancelAll} reject with this. */
export class UpcallCancelledError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UpcallCancelledError';
  }
}

/**
 * The upcall device. Claim {@link UPCALL_SIZE} bytes at {@link UPCALL_BASE} (or `options.base`).
 * Commands are queued: one is visible to the guest at a time, the next is posted when the guest
 * ACKs the current one.
 */
export class UpcallDevice implements MmioDevice {
  readonly name = 'upcall';
  readonly base: bigint;
  readonly counters: UpcallCounters = { badSize: 0, badOffset: 0, readOnlyWrites: 0, badValue: 0, staleAcks: 0, irqErrors: 0 };

  private readonly raiseIrq: (vector: number) => void;
  private readonly vcpuCount: number | undefined;
  private readonly maxProgram: number;
  private affinityHandler: AffinityHandler | undefined;

  private irqStatus = 0;
  private irqVector = 0;
  private dataOffset = 0;
  private status = 0;
  private statusPc = UPCALL_NO_PC;
  private affinity = 0xffffffff;
  private affinityStatus = 0;
  private lastSeq = 0;
  private current: Command | undefined;
  private readonly queue: Command[] = [];

  constructor(options: UpcallDeviceOptions) {
    this.raiseIrq = options.raiseIrq;
    this.base = options.base ?? UPCALL_BASE;
    this.vcpuCount = options.vcpuCount;
    this.maxProgram = options.maxProgram ?? UPCALL_DEFAULT_MAX_PROGRAM;
  }

  /**
   * Queues a LOAD_PROGRAM of `program` at `hook`; resolves with the guest's answer when it ACKs.
   * The bytes are copied. Rejects with RangeError for an empty or oversized program or a hook that
   * is not a u32, and with {@link UpcallCancelledError} after {@link cancelAll}.
   */
  deliver(program: Uint8Array, hook: number): Promise<LoadStatus> {
    if (!(program instanceof Uint8Array) || program.length === 0 || program.length > this.maxProgram) {
      return Promise.reject(new RangeError(`program must be 1..${this.maxProgram} bytes`));
    }
    return this.post(UPCALL_CMD.LOAD_PROGRAM, hook, program.slice());
  }

  /** Queues an UNLOAD of `hook`; resolves with the guest's answer. */
  unload(hook: number): Promise<LoadStatus> {
    return this.post(UPCALL_CMD.UNLOAD, hook, new Uint8Array(0));
  }

  /** Sets (or with undefined removes) the AFFINITY handler. Without one requests get -EOPNOTSUPP. */
  onAffinity(handler: AffinityHandler | undefined): void {
    this.affinityHandler = handler;
  }

  /** Commands posted or queued and not yet answered. */
  get pendingCommands(): number {
    return (this.current ? 1 : 0) + this.queue.length;
  }

  /**
   * Withdraws every command (VM teardown, host timeout): rejects their promises, clears the
   * command registers and, if the guest could have seen one, sets CMD_CANCELLED and interrupts.
   */
  cancelAll(reason = 'cancelled by the host'): void {
    const cmds = this.current ? [this.current, ...this.queue] : [...this.queue];
    const wasVisible = this.current !== undefined;
    this.queue.length = 0;
    this.current = undefined;
    this.dataOffset = 0;
    if (wasVisible) {
      this.irqStatus = (this.irqStatus & ~UPCALL_IRQ.CMD_PENDING) | UPCALL_IRQ.CMD_CANCELLED;
      this.interrupt();
    }
    for (const c of cmds) c.reject(new UpcallCancelledError(reason));
  }

  mmioRead(addr: bigint, data: Uint8Array, _host?: DeviceHost): void {
    const offset = this.checkAccess(addr, data);
    if (offset < 0) {
      data.fill(0xff);
      return;
    }
    const value = this.readRegister(offset);
    if (value === undefined) {
      this.counters.badOffset++;
      data.fill(0xff);
      return;
    }
    writeU32(data, value);
  }

  mmioWrite(addr: bigint, data: Uint8Array, host?: DeviceHost): void {
    const offset = this.checkAccess(addr, data);
    if (offset < 0) return;
    const value = (data[0]! | (data[1]! << 8) | (data[2]! << 16) | (data[3]! << 24)) >>> 0;
    this.writeRegister(offset, value, host);
  }

  /** The offset of a valid access (aligned 4 bytes inside the page), or -1 after counting why not. */
  private checkAccess(addr: bigint, data: Uint8Array): number {
    const rel = addr - this.base;
    if (rel < 0n || rel >= UPCALL_SIZE) {
      this.counters.badOffset++;
      return -1;
    }
    const offset = Number(rel);
    if (data.length !== 4 || (offset & 3) !== 0) {
      this.counters.badSize++;
      return -1;
    }
    return offset;
  }

  private readRegister(offset: number): number | undefined {
    if (offset >= UPCALL_WINDOW_OFFSET) return this.readWindow(offset - UPCALL_WINDOW_OFFSET);
    const cmd = this.current;
    switch (offset) {
      case UPCALL_REG.MAGIC: return UPCALL_MAGIC;
      case UPCALL_REG.VERSION: return UPCALL_VERSION;
      case UPCALL_REG.IRQ_STATUS: return this.irqStatus;
      case UPCALL_REG.IRQ_VECTOR: return this.irqVector;
      case UPCALL_REG.COMMAND: return cmd ? cmd.code : UPCALL_CMD.NONE;
      case UPCALL_REG.COMMAND_ARG: return cmd ? cmd.arg : 0;
      case UPCALL_REG.COMMAND_SEQ: return cmd ? cmd.seq : 0;
      case UPCALL_REG.DATA_LEN: return cmd ? cmd.data.length : 0;
      case UPCALL_REG.DATA_OFFSET: return this.dataOffset;
      case UPCALL_REG.STATUS: return this.status >>> 0;
      case UPCALL_REG.STATUS_PC: return this.statusPc;
      case UPCALL_REG.ACK: return 0;
      case UPCALL_REG.AFFINITY: return this.affinity;
      case UPCALL_REG.AFFINITY_STATUS: return this.affinityStatus >>> 0;
      case UPCALL_REG.WINDOW_SIZE: return UPCALL_WINDOW_SIZE;
      default: return undefined;
    }
  }

  /** Four bytes of the pending program at DATA_OFFSET + `at`; zeros past its end. */
  private readWindow(at: number): number {
    const bytes = this.current?.data;
    if (!bytes) return 0;
    const start = this.dataOffset + at;
    let value = 0;
    for (let i = 0; i < 4; i++) {
      const j = start + i;
      if (j < bytes.length) value |= bytes[j]! << (8 * i);
    }
    return value >>> 0;
  }

  private writeRegister(offset: number, value: number, host: DeviceHost | undefined): void {
    if (offset >= UPCALL_WINDOW_OFFSET) {
      this.counters.readOnlyWrites++;
      return;
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
        this.counters.readOnlyWrites++;
        return;
      case UPCALL_REG.IRQ_STATUS:
        this.irqStatus &= ~(value & IRQ_ALL);
        return;
      case UPCALL_REG.IRQ_VECTOR:
        if (value !== 0 && (value < UPCALL_VECTOR_MIN || value > UPCALL_VECTOR_MAX)) {
          this.counters.badValue++;
          return;
        }
        this.irqVector = value;
        // Events that happened while no vector was set are delivered now.
        if (this.irqStatus & IRQ_INTERRUPTING) this.interrupt();
        return;
      case UPCALL_REG.DATA_OFFSET:
        if (value & 3) {
          this.counters.badValue++;
          return;
        }
        this.dataOffset = value;
        return;
      case UPCALL_REG.STATUS:
        this.status = value | 0;
        return;
      case UPCALL_REG.STATUS_PC:
        this.statusPc = value;
        return;
      case UPCALL_REG.ACK:
        this.ack(value);
        return;
      case UPCALL_REG.AFFINITY:
        this.requestAffinity(value, host);
        return;
      default:
        this.counters.badOffset++;
        return;
    }
  }

  private ack(seq: number): void {
    const cmd = this.current;
    if (!cmd || seq !== cmd.seq) {
      this.counters.staleAcks++;
      return;
    }
    const result: LoadStatus = { status: this.status, pc: this.statusPc === UPCALL_NO_PC ? null : this.statusPc, seq: cmd.seq };
    this.current = undefined;
    this.dataOffset = 0;
    this.irqStatus = (this.irqStatus & ~UPCALL_IRQ.CMD_PENDING) | UPCALL_IRQ.CMD_DONE;
    cmd.resolve(result);
    this.postNext();
  }

  private requestAffinity(value: number, host: DeviceHost | undefined): void {
    let vcpu = value >>> 16;
    const hostCpu = value & 0xffff;
    this.affinity = value;
    if (vcpu === UPCALL_AFFINITY_SELF && host) vcpu = host.cpu;
    let result: number;
    if (vcpu === UPCALL_AFFINITY_SELF || (this.vcpuCount !== undefined && vcpu >= this.vcpuCount)) {
      result = -UPCALL_ERRNO.EINVAL;
    } else if (!this.affinityHandler) {
      result = -UPCALL_ERRNO.EOPNOTSUPP;
    } else {
      try {
        const r: unknown = this.affinityHandler({ vcpu, hostCpu });
        result = typeof r === 'number' && Number.isInteger(r) && r <= 0 && r >= -4095 ? r : -UPCALL_ERRNO.EIO;
      } catch {
        result = -UPCALL_ERRNO.EIO;
      }
    }
    this.affinityStatus = result;
    this.irqStatus |= UPCALL_IRQ.AFFINITY_DONE;
  }

  private post(code: number, hook: number, data: Uint8Array): Promise<LoadStatus> {
    if (!Number.isInteger(hook) || hook < 0 || hook > 0xffffffff) {
      return Promise.reject(new RangeError(`hook must be a u32, got ${hook}`));
    }
    return new Promise<LoadStatus>((resolve, reject) => {
      this.queue.push({ code, arg: hook, data, seq: 0, resolve, reject });
      if (!this.current) this.postNext();
    });
  }

  /** Makes the next queued command visible to the guest and interrupts it. */
  private postNext(): void {
    const next = this.queue.shift();
    if (!next) return;
    // Sequence numbers run 1..0xffffffff: 0 never names a command.
    this.lastSeq = this.lastSeq >= 0xffffffff ? 1 : this.lastSeq + 1;
    next.seq = this.lastSeq;
    this.current = next;
    this.dataOffset = 0;
    this.status = 0;
    this.statusPc = UPCALL_NO_PC;
    this.irqStatus = (this.irqStatus & ~(UPCALL_IRQ.CMD_CANCELLED | UPCALL_IRQ.CMD_DONE)) | UPCALL_IRQ.CMD_PENDING;
    this.interrupt();
  }

  private interrupt(): void {
    if (this.irqVector === 0) return;
    try {
      this.raiseIrq(this.irqVector);
    } catch {
      this.counters.irqErrors++;
    }
  }
}

function writeU32(data: Uint8Array, value: number): void {
  data[0] = value & 0xff;
  data[1] = (value >>> 8) & 0xff;
  data[2] = (value >>> 16) & 0xff;
  data[3] = (value >>> 24) & 0xff;
}
