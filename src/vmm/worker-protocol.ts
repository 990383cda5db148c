/**
 * Messages and shared control words between the main thread (`Vm`) and vCPU worker threads.
 *
 * A vCPU thread spends its life inside a synchronous KVM_RUN loop, so it cannot receive messages
 * whenever the main thread sends them. The main thread writes a control word in a
 * SharedArrayBuffer and kicks the vCPU out of KVM_RUN (immediate_exit + signal); the worker then
 * drains its MessagePort synchronously.
 */
import type { UpcallEvent, UpcallPolicy } from '../devices/upcall-device.js';
import type { MemoryRegion } from '../memory/guest-memory.js';
import type { ExitStatsSnapshot } from './exit-stats.js';
import type { VcpuOutcome } from './outcome.js';

/** Int32 slots of a vCPU's control block. */
export const CTL = {
  /** Kernel thread id of the vCPU thread, written once at start. */
  TID: 0,
  /** Set to 1 by the main thread to stop the vCPU. */
  STOP: 1,
  /** Bumped by the main thread when it has posted messages for the worker. */
  MAILBOX: 2,
  /** Main-thread hypercall: 0 idle, 1 waiting for the main thread, 2 answered. */
  CALL_STATE: 3,
  /** Main-thread hypercall: which extra outputs were set (bit 0 RDX, bit 1 RSI). */
  CALL_OUTPUTS: 4,
} as const;
/** Byte offset of the main-thread hypercall's BigInt64 results: RAX, RDX, RSI. */
export const CTL_CALL_RESULT_OFFSET = 24;
export const CTL_BYTES = 48;
export const CALL_IDLE = 0;
export const CALL_WAITING = 1;
export const CALL_ANSWERED = 2;

/** `workerData` of a vCPU thread. */
export interface VcpuWorkerData {
  cpu: number;
  vcpuFd: number;
  runSize: number;
  regions: MemoryRegion[];
  control: SharedArrayBuffer;
  serialInput: SharedArrayBuffer;
  benchMarks: SharedArrayBuffer;
  benchIterations: number;
  timing: boolean;
  /** Long mode (exception stubs present) or real mode. */
  longMode: boolean;
  /** Hypercall handler modules to load before the first KVM_RUN. */
  modules: string[];
  /** Hypercall numbers answered on the main thread. */
  remoteHypercalls: number[];
  /** The VM has an in-kernel irqchip (KT_HC_WAIT can halt the vCPU). */
  interrupts: boolean;
  /** The VM's channel notification words (`ChannelSignals`): KT_HC_CHAN_NOTIFY and doorbell ports raise them. */
  channelSignals: SharedArrayBuffer;
  /** The upcall device's shared state (`UpcallState`) and pinning policy, when the VM has one. */
  upcall?: { state: SharedArrayBuffer; policy: UpcallPolicy };
}

/** Worker → main. */
export type FromWorker =
  | { type: 'ready'; cpu: number; tid: number }
  | { type: 'event'; cpu: number; event: string; payload: unknown }
  | { type: 'console'; bytes: Uint8Array }
  | { type: 'call'; cpu: number; nr: bigint; args: bigint[] }
  | { type: 'module-loaded'; id: number; cpu: number; error?: string }
  | { type: 'query-result'; id: number; result?: unknown; error?: string }
  | { type: 'log'; line: string }
  /** The guest notified channel `id` (KT_HC_CHAN_NOTIFY or a doorbell-port exit); posted only when none was pending. */
  | { type: 'chan-notify'; id: number }
  /** The upcall device needs the main thread: an ACK, an interrupt to raise, an AFFINITY result. */
  | { type: 'upcall'; event: UpcallEvent }
  | { type: 'done'; cpu: number; outcome: VcpuOutcome; stats: ExitStatsSnapshot };

/** Main → worker (read when CTL.MAILBOX changes). */
export type ToWorker =
  | { type: 'load-module'; id: number; url: string }
  | { type: 'remote-hypercall'; nr: number }
  | { type: 'query'; id: number; query: VcpuQuery };

/** Questions only the vCPU's own thread can answer while it runs (vCPU ioctls wait for KVM_RUN). */
export type VcpuQuery = { kind: 'state' } | { kind: 'translate'; gva: bigint };
