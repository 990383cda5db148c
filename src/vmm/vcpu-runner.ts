/**
 * The vCPU run loop: KVM_RUN, decode the exit, dispatch it, repeat. Runs on its own worker thread.
 *
 * Registers come from `kvm_run`'s synced-register area (KVM_CAP_SYNC_REGS), so the common exits
 * (port I/O, hypercalls) need no ioctl besides KVM_RUN itself. Anything the guest does that the
 * VMM cannot serve ends this vCPU with a {@link VcpuOutcome}; nothing a guest does throws here.
 */
import { EXCEPTION_STUB_SIZE, EXCEPTION_STUBS, PORT } from '../arch/x86/layout.js';
import type { DeviceHost } from '../devices/device.js';
import { EXIT, INTERNAL_ERROR, SYSTEM_EVENT, exitReasonName } from '../kvm/exit-reasons.js';
import { EXIT_XEN_HCALL, SYNC_X86_REGS } from '../kvm/ioctls.js';
import { REG, type KvmRun } from '../kvm/kvm-run.js';
import { kvm_run, offsetOf } from '../kvm/structs.js';
import { errnoName } from '../kvm/sys.js';
import type { VcpuFd } from '../kvm/vcpu-fd.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { HypercallCall, type HypercallTable } from '../hypercall/registry.js';
import type { Bus } from './bus.js';
import { crashReport, exceptionReport, type FaultingInstruction } from './exit-report.js';
import type { ExitStats } from './exit-stats.js';
import type { CrashReport, VcpuOutcome } from './outcome.js';

const EINTR = 4;
const EAGAIN = 11;

const OFF_FAIL_REASON = offsetOf(kvm_run, 'exit.fail_entry.hardware_entry_failure_reason');
const OFF_INTERNAL = offsetOf(kvm_run, 'exit.internal');
const OFF_SYSTEM_EVENT = offsetOf(kvm_run, 'exit.system_event.type');
const OFF_EX = offsetOf(kvm_run, 'exit.ex');
const OFF_XEN_TYPE = offsetOf(kvm_run, 'exit.xen.type');
const OFF_XEN_RESULT = offsetOf(kvm_run, 'exit.xen.hcall.result');

/** Why {@link VcpuRunner.runUntilEvent} returned. */
export type RunPause = 'done' | 'mailbox';

/** Checks between KVM_RUN calls that the main thread may have requested. */
export interface RunControl {
  stopRequested(): boolean;
  mailboxPending(): boolean;
}

/** One vCPU's loop state. */
export class VcpuRunner implements DeviceHost {
  private readonly run: KvmRun;
  private readonly regs: BigUint64Array;
  private readonly call: HypercallCall;
  private outcome?: VcpuOutcome;

  constructor(
    readonly cpu: number,
    private readonly vcpu: VcpuFd,
    private readonly memory: GuestMemory,
    private readonly bus: Bus,
    private readonly hypercalls: HypercallTable,
    private readonly stats: ExitStats,
    private readonly control: RunControl,
    readonly emit: (event: string, payload: unknown) => void,
    longMode: boolean,
  ) {
    this.run = vcpu.run;
    this.regs = this.run.regs;
    this.run.validRegs = BigInt(SYNC_X86_REGS);
    this.call = new HypercallCall(this.regs, memory, cpu, emit);
    bus.addPio(PORT.hypercall, 1, { name: 'hypercall-doorbell', pioRead: () => 0xff, pioWrite: () => this.hypercall() });
    if (longMode) {
      bus.addPio(PORT.exception, 1, {
        name: 'exception-report',
        pioRead: () => 0xff,
        pioWrite: () => {
          const rip = this.regs[REG.rip];
          if (rip < BigInt(EXCEPTION_STUBS) || rip > BigInt(EXCEPTION_STUBS + 256 * EXCEPTION_STUB_SIZE)) {
            return this.crash('unhandled-io', exitReasonName(EXIT.IO), `the guest wrote the exception-report port 0x${PORT.exception.toString(16)} outside the VMM's IDT stubs`, [], 'port-write');
          }
          this.finish({ kind: 'crash', report: exceptionReport(this.vcpu, this.memory, this.regs, this.cpu, exitReasonName(EXIT.IO)) });
        },
      });
    }
  }

  /** The outcome once the vCPU has ended. */
  get result(): VcpuOutcome | undefined {
    return this.outcome;
  }

  exitVm(status: number): void {
    this.finish({ kind: 'exit', status });
  }

  parkVcpu(): void {
    this.finish({ kind: 'park' });
  }

  private finish(outcome: VcpuOutcome): void {
    this.outcome ??= outcome;
  }

  /**
   * Runs the guest until this vCPU ends (`done`, see {@link result}) or the main thread has mail.
   * Synchronous by design: KVM_RUN must block this thread, not the event loop of another.
   */
  runUntilEvent(): RunPause {
    const { run, stats, vcpu } = this;
    const counts = stats.counts;
    const timing = stats.timing;
    let handled = 0;
    // Control words are checked on entry and after each EINTR only. The main thread sets them
    // before immediate_exit, and this thread clears immediate_exit before reading them, so a kick
    // is either seen here or makes the next KVM_RUN return EINTR at once.
    if (this.control.stopRequested()) this.finish({ kind: 'stopped' });
    else if (this.control.mailboxPending()) return 'mailbox';
    while (this.outcome === undefined) {
      const t0 = timing ? performance.now() : 0;
      if (timing && handled) stats.inVmm!.record((t0 - handled) * 1e6);
      const r = vcpu.runOnce();
      if (timing) {
        handled = performance.now();
        stats.inKvm!.record((handled - t0) * 1e6);
      }
      if (r < 0) {
        if (r === -EINTR || r === -EAGAIN) {
          run.immediateExit = false;
          if (this.control.stopRequested()) this.finish({ kind: 'stopped' });
          else if (this.control.mailboxPending()) return 'mailbox';
          continue;
        }
        this.crash('kvm-run-error', 'none', `KVM_RUN failed: ${errnoName(-r)}`, []);
        break;
      }
      const reason = run.exitReason;
      counts[reason < counts.length ? reason : 0]++;
      this.dispatch(reason);
    }
    return 'done';
  }

  private dispatch(reason: number): void {
    switch (reason) {
      case EXIT.IO:
        return this.io();
      case EXIT.MMIO:
        return this.mmio();
      case EXIT.HLT:
        return this.finish({ kind: 'halt', rip: this.regs[REG.rip], interruptsEnabled: (this.regs[REG.rflags] & 0x200n) !== 0n });
      case EXIT.INTR:
      case EXIT.IRQ_WINDOW_OPEN:
        return;
      case EXIT.XEN:
        return this.xen();
      case EXIT.SHUTDOWN:
        return this.crash('triple-fault', exitReasonName(reason), 'triple fault: the guest hit an exception it could not deliver (KVM_EXIT_SHUTDOWN)', []);
      case EXIT.FAIL_ENTRY: {
        const hw = this.run.view.getBigUint64(OFF_FAIL_REASON, true);
        return this.crash('entry-failure', exitReasonName(reason), `VM entry failed (hardware reason 0x${hw.toString(16)}): invalid guest state`, []);
      }
      case EXIT.INTERNAL_ERROR:
        return this.internalError();
      case EXIT.EXCEPTION: {
        const ex = this.run.view.getUint32(OFF_EX, true);
        const err = this.run.view.getUint32(OFF_EX + 4, true);
        return this.crash('exception', exitReasonName(reason), `exception vector ${ex} (error code 0x${err.toString(16)}) reported by KVM`, []);
      }
      case EXIT.SYSTEM_EVENT: {
        const type = this.run.view.getUint32(OFF_SYSTEM_EVENT, true);
        return this.crash('system-event', exitReasonName(reason), `system event: ${SYSTEM_EVENT[type] ?? `type ${type}`}`, []);
      }
      default:
        return this.crash('unexpected-exit', exitReasonName(reason), `exit ${exitReasonName(reason)} is not handled by kvmtalk`, []);
    }
  }

  private hypercall(): void {
    this.regs[REG.rax] = this.hypercalls.dispatch(this.call);
    this.run.dirtyRegs = SYNC_X86_REGS;
  }

  private xen(): void {
    const view = this.run.view;
    if (view.getUint32(OFF_XEN_TYPE, true) !== EXIT_XEN_HCALL) {
      return this.crash('unexpected-exit', exitReasonName(EXIT.XEN), 'unexpected Xen exit type', []);
    }
    // KVM writes the result to RAX and skips VMCALL when the vCPU next runs.
    view.setBigUint64(OFF_XEN_RESULT, this.hypercalls.dispatch(this.call), true);
  }

  private io(): void {
    const run = this.run;
    const port = run.ioPort;
    const out = run.ioDirection === 1;
    if (out && port === PORT.hypercall) return this.hypercall(); // the hot exit skips the bus
    const size = run.ioSize;
    const count = run.ioCount;
    const device = this.bus.pio(port);
    if (!device) {
      const what = out ? `write of 0x${this.ioValue(run.ioDataOffset, size).toString(16)} to` : 'read from';
      return this.crash('unhandled-io', exitReasonName(EXIT.IO), `unhandled I/O: ${size}-byte ${what} port 0x${port.toString(16)}`, [], out ? 'port-write' : 'at-rip');
    }
    const base = run.ioDataOffset;
    if (out) {
      if (count > 1 && device.pioWriteString) {
        device.pioWriteString(port, size, run.bytes.slice(base, base + count * size), this);
      } else {
        for (let i = 0; i < count; i++) device.pioWrite(port, size, this.ioValue(base + i * size, size), this);
      }
    } else {
      for (let i = 0; i < count; i++) {
        const v = device.pioRead(port, size, this);
        const o = base + i * size;
        if (size === 1) run.bytes[o] = v;
        else if (size === 2) run.view.setUint16(o, v, true);
        else run.view.setUint32(o, v >>> 0, true);
      }
    }
  }

  private ioValue(offset: number, size: number): number {
    const v = this.run.view;
    return size === 1 ? v.getUint8(offset) : size === 2 ? v.getUint16(offset, true) : v.getUint32(offset, true);
  }

  private mmio(): void {
    const run = this.run;
    const addr = run.mmioPhysAddr;
    const device = this.bus.mmioAt(addr);
    const len = run.mmioLen;
    if (!device) {
      const data = Array.from(run.mmioData.subarray(0, len)).reverse().map((b) => b.toString(16).padStart(2, '0')).join('');
      const what = run.mmioIsWrite ? `write of 0x${data} to` : 'read from';
      return this.crash('unhandled-mmio', exitReasonName(EXIT.MMIO), `unhandled MMIO: ${len}-byte ${what} guest-physical 0x${addr.toString(16)} (no RAM or device there)`, [], run.mmioIsWrite ? 'mmio-write' : 'at-rip');
    }
    const data = run.mmioData.subarray(0, len);
    if (run.mmioIsWrite) device.mmioWrite(addr, data, this);
    else device.mmioRead(addr, data, this);
  }

  private internalError(): void {
    const view = this.run.view;
    const sub = view.getUint32(OFF_INTERNAL, true);
    const ndata = Math.min(16, view.getUint32(OFF_INTERNAL + 4, true));
    const data: string[] = [];
    for (let i = 0; i < ndata; i++) data.push('0x' + view.getBigUint64(OFF_INTERNAL + 8 + 8 * i, true).toString(16));
    const details = data.length ? [`KVM data: ${data.join(' ')}`] : [];
    this.crash('internal-error', exitReasonName(EXIT.INTERNAL_ERROR), `KVM internal error: ${INTERNAL_ERROR[sub] ?? `suberror ${sub}`}`, details);
  }

  private crash(kind: CrashReport['kind'], exitReason: string, summary: string, details: string[], which?: FaultingInstruction): void {
    this.finish({ kind: 'crash', report: crashReport(this.vcpu, this.memory, this.regs, { cpu: this.cpu, kind, exitReason, summary, details }, which) });
  }
}
