/**
 * Hypercall dispatch inside a vCPU thread. A handler is a plain function called synchronously on
 * the exit path, so a call costs one table lookup and one JS call on top of the exit itself.
 */
import { REG } from '../kvm/kvm-run.js';
import { GuestMemory, GuestMemoryError } from '../memory/guest-memory.js';
import { isKvmReserved, KT_ERR } from './abi.js';

/** What a handler sees of one hypercall. Argument registers are read lazily from the synced regs. */
export class HypercallCall {
  private readonly words: Uint32Array;

  /** @internal */
  constructor(
    private readonly regs: BigUint64Array,
    /** Bounds-checked guest RAM: the only way a handler should follow a guest pointer. */
    readonly memory: GuestMemory,
    /** Index of the calling vCPU. */
    readonly cpu: number,
    /** Sends an event to the main thread, where `Vm` emits it (non-blocking). */
    readonly emit: (event: string, payload: unknown) => void,
  ) {
    this.words = new Uint32Array(regs.buffer, regs.byteOffset, 2);
  }

  /** RAX as a table index without making a BigInt (this runs on every hypercall); -1 when ≥ 2^32. */
  get nrIndex(): number {
    return this.words[1] === 0 ? this.words[0] : -1;
  }

  /** The hypercall number (RAX). */
  get nr(): bigint {
    return this.regs[REG.rax];
  }
  /** RBX: argument 0. */
  get a0(): bigint {
    return this.regs[REG.rbx];
  }
  /** RCX: argument 1. */
  get a1(): bigint {
    return this.regs[REG.rcx];
  }
  /** RDX: argument 2. */
  get a2(): bigint {
    return this.regs[REG.rdx];
  }
  /** RSI: argument 3. */
  get a3(): bigint {
    return this.regs[REG.rsi];
  }
  /** Argument `i` (0–3). */
  arg(i: 0 | 1 | 2 | 3): bigint {
    return this.regs[ARG_REGS[i]];
  }
  /**
   * Returns a second or third value in RDX or RSI, for ABIs with several outputs (RAX still comes
   * from the handler's return value). Other registers are the guest's own and stay untouched.
   */
  setOutput(reg: 'rdx' | 'rsi', value: bigint | number): void {
    this.regs[REG[reg]] = BigInt(value);
  }
}

const ARG_REGS = [REG.rbx, REG.rcx, REG.rdx, REG.rsi] as const;
const ENOSYS = BigInt(-KT_ERR.ENOSYS);
const EFAULT = BigInt(-KT_ERR.EFAULT);
const EINVAL = BigInt(-KT_ERR.EINVAL);

/**
 * A hypercall handler. Its return value goes to the guest's RAX (negative numbers are errors,
 * e.g. `-KT_ERR.EINVAL`); returning nothing means 0. Throwing {@link GuestMemoryError} returns
 * -EFAULT; any other exception returns -EINVAL and is reported on stderr.
 */
export type HypercallHandler = (call: HypercallCall) => bigint | number | void;

/** Registration interface passed to hypercall handler modules. */
export interface HypercallRegistrar {
  /** Registers `handler` for `nr`, replacing any previous one. Numbers 1–12 are KVM's and refused. */
  register(nr: number, handler: HypercallHandler): void;
  /** Index of the vCPU thread this registrar belongs to. */
  readonly cpu: number;
}

/**
 * The shape of a hypercall handler module: its default export is called once in every vCPU
 * thread (and again in threads started later).
 * @example
 * export default function setup(hc: HypercallRegistrar) {
 *   hc.register(256, (call) => call.a0 + call.a1);
 * }
 */
export type HypercallModule = (hc: HypercallRegistrar) => void | Promise<void>;

/** Number → handler table for one vCPU thread. */
export class HypercallTable implements HypercallRegistrar {
  private readonly small: (HypercallHandler | undefined)[] = [];
  private readonly large = new Map<bigint, HypercallHandler>();
  private readonly reported = new Set<string>();

  /** @param report where handler failures are reported (once per distinct message) */
  constructor(
    readonly cpu: number,
    private readonly report: (line: string) => void = (line) => process.stderr.write(`${line}\n`),
  ) {}

  register(nr: number, handler: HypercallHandler): void {
    if (!Number.isSafeInteger(nr) || nr < 0) throw new RangeError(`hypercall number ${nr} is not a non-negative integer`);
    if (nr === 0 || isKvmReserved(nr)) throw new RangeError(`hypercall number ${nr} is reserved (0 and KVM's 1–12)`);
    if (nr < 4096) this.small[nr] = handler;
    else this.large.set(BigInt(nr), handler);
  }

  /** Runs the handler for the call in `call`'s registers and returns the 64-bit RAX value. */
  dispatch(call: HypercallCall): bigint {
    const index = call.nrIndex;
    const handler = index >= 0 && index < 4096 ? this.small[index] : this.large.get(call.nr);
    if (!handler) return ENOSYS;
    try {
      const r = handler(call);
      return r === undefined ? 0n : typeof r === 'bigint' ? r : BigInt(r);
    } catch (e) {
      if (e instanceof GuestMemoryError) return EFAULT;
      this.reportOnce(call.nr, e);
      return EINVAL;
    }
  }

  private reportOnce(nr: bigint, e: unknown): void {
    const msg = `hypercall ${nr} handler threw: ${(e as Error)?.message ?? e} (guest gets -EINVAL)`;
    if (this.reported.has(msg)) return;
    this.reported.add(msg);
    this.report(msg);
  }
}
