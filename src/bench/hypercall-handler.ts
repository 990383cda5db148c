/**
 * Hypercall handler module of the hypercall benchmark, loaded into the vCPU thread with
 * `Vm.loadHypercallModule`: KT_HC_USER_BASE (256) returns its argument plus one, the same work
 * the C baseline (bench/c/hypercall-baseline.c) does per exit.
 *
 * Loaded with `?n=<iterations>` in its URL, it also measures the vCPU thread's CPU time from the
 * guest's first user call (argument 0) to its last (argument n-1), as the C baseline does, and
 * sends `{ cpuNs, exits }` to the main thread as a `bench-cpu` event. CPU time leaves out the
 * time the thread waited for a CPU, which dominates wall-clock noise on a shared machine.
 */
import koffi from 'koffi';
import { HC_USER_BASE } from '../hypercall/abi.js';
import type { HypercallRegistrar } from '../hypercall/registry.js';

const CLOCK_THREAD_CPUTIME_ID = 3;

/** The calling thread's CPU time in ns (clock_gettime(CLOCK_THREAD_CPUTIME_ID)). */
function threadCpuNs(): bigint {
  const ts = new BigInt64Array(2);
  if (clockGettime(CLOCK_THREAD_CPUTIME_ID, ts) !== 0) return -1n;
  return ts[0] * 1_000_000_000n + ts[1];
}
const clockGettime = koffi.load('libc.so.6').func('int clock_gettime(int clk, void *ts)') as (clk: number, ts: BigInt64Array) => number;

export default function setup(hc: HypercallRegistrar): void {
  const n = BigInt(new URL(import.meta.url).searchParams.get('n') ?? '0');
  if (n < 2n) {
    hc.register(HC_USER_BASE, (call) => call.a0 + 1n);
    return;
  }
  const last = n - 1n;
  let start = 0n;
  hc.register(HC_USER_BASE, (call) => {
    const i = call.a0;
    if (i === 0n) start = threadCpuNs();
    else if (i === last) call.emit('bench-cpu', { cpuNs: Number(threadCpuNs() - start), exits: Number(last) });
    return i + 1n;
  });
}
