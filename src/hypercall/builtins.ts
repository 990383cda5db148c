/** The built-in hypercalls every kvmtalk VM answers (docs/guest-abi.md). */
import type { HostPageInfo } from '../translate/host-pages.js';
import { GPA_TO_HPA_FLAGS, HC, HC_LOG_MAX, KT_ERR } from './abi.js';
import type { HypercallCall, HypercallTable } from './registry.js';

/** What the built-ins need from their vCPU thread. */
export interface BuiltinContext {
  /** Where KT_HC_CONSOLE_WRITE bytes go: the same sink as the serial port's output. */
  console(bytes: Uint8Array): void;
  /** Iteration count returned by KT_HC_BENCH_MARK mark 0. */
  benchIterations: number;
  /** Timestamps (epoch ms: timeOrigin + now(), comparable across threads) by mark id, written by KT_HC_BENCH_MARK; shared with the main thread. */
  benchMarks: Float64Array;
  /** Flushes the calling vCPU's TLB (KT_HC_FLUSH_TLB). */
  flushTlb(): void;
  /** The host page behind a guest-physical address inside RAM (KT_HC_GPA_TO_HPA). */
  hostPage(gpa: bigint): HostPageInfo;
  /**
   * Puts the calling vCPU to sleep from its next KVM_RUN until an interrupt arrives
   * (KVM_SET_MP_STATE halted); undefined when the VM has no in-kernel irqchip (KT_HC_WAIT).
   */
  halt?: () => void;
}

/** Returns the string/bytes argument (a0 = GPA, a1 = length), or a negative error code. */
function guestBytes(call: HypercallCall): Uint8Array | number {
  const len = call.a1;
  if (len > BigInt(HC_LOG_MAX)) return -KT_ERR.E2BIG;
  if (!call.memory.contains(call.a0, Number(len))) return -KT_ERR.EFAULT;
  return call.memory.read(call.a0, Number(len));
}

/**
 * KT_HC_WAIT (a0 = GPA of a u32, a1 = expected value): a futex-style wait for an interrupt.
 *
 * The check and the halt are atomic with respect to interrupts because both happen during this
 * exit, while the vCPU cannot take one: an interrupt sent after the guest's last look at the word
 * is either already pending in the LAPIC (then the halted KVM_RUN wakes at once and delivers it)
 * or arrives later (and wakes it). Only the guest's own handler, or a host write before the
 * signal, changes the word, so "changed" is checked here and "an interrupt is pending" by KVM.
 * Returns 1 when the word differs, 0 once an interrupt has woken the vCPU (the handler has run).
 */
function wait(call: HypercallCall, halt: (() => void) | undefined): number {
  if (!halt) return -KT_ERR.EOPNOTSUPP;
  if ((call.a0 & 3n) !== 0n) return -KT_ERR.EINVAL;
  if (!call.memory.contains(call.a0, 4)) return -KT_ERR.EFAULT;
  if (call.memory.readU32(call.a0) !== Number(call.a1 & 0xffffffffn)) return 1;
  halt();
  return 0;
}

/** Registers every built-in hypercall in `table`. */
export function registerBuiltins(table: HypercallTable, ctx: BuiltinContext): void {
  table.register(HC.HELLO, (call) => call.emit('hello', { cpu: call.cpu }));
  table.register(HC.SEND_VALUE, (call) => call.emit('value', { cpu: call.cpu, value: call.a0 }));
  table.register(HC.LOG, (call) => {
    const bytes = guestBytes(call);
    if (typeof bytes === 'number') return bytes;
    call.emit('log', { cpu: call.cpu, text: Buffer.from(bytes).toString('utf8') });
    return bytes.length;
  });
  table.register(HC.NOP, () => 0);
  table.register(HC.BENCH_MARK, (call) => {
    const mark = Number(call.a0);
    if (mark === 0) return ctx.benchIterations;
    if (mark < 0 || mark >= ctx.benchMarks.length) return -KT_ERR.EINVAL;
    ctx.benchMarks[mark] = performance.timeOrigin + performance.now();
    return 0;
  });
  table.register(HC.FLUSH_TLB, () => ctx.flushTlb());
  table.register(HC.GPA_TO_HPA, (call) => {
    if (!call.memory.contains(call.a0, 1)) return -KT_ERR.EFAULT;
    const page = ctx.hostPage(call.a0);
    if (page.pfnHidden) return -KT_ERR.EPERM;
    const huge = page.pageSize > 4096 || page.compoundHead || page.compoundTail;
    const flags = (huge ? GPA_TO_HPA_FLAGS.HUGE : 0) | (page.present ? GPA_TO_HPA_FLAGS.MAPPED : 0) |
      ((page.folioOrder ?? 0) & 0x1f) << GPA_TO_HPA_FLAGS.ORDER_SHIFT;
    const pfn = page.present && page.pfn !== undefined ? page.pfn : 0n;
    call.setOutput('rdx', pfn);
    call.setOutput('rsi', flags);
    return pfn << 12n;
  });
  table.register(HC.WAIT, (call) => wait(call, ctx.halt));
  table.register(HC.CONSOLE_WRITE, (call) => {
    const bytes = guestBytes(call);
    if (typeof bytes === 'number') return bytes;
    ctx.console(bytes);
    return bytes.length;
  });
}
