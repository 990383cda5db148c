/**
 * Hypercall handler module of the hypercall benchmark, loaded into the vCPU thread with
 * `Vm.loadHypercallModule`: KT_HC_USER_BASE (256) returns its argument plus one, the same work
 * the C baseline (bench/c/hypercall-baseline.c) does per exit.
 */
import { HC_USER_BASE } from '../hypercall/abi.js';
import type { HypercallRegistrar } from '../hypercall/registry.js';

export default function setup(hc: HypercallRegistrar): void {
  hc.register(HC_USER_BASE, (call) => call.a0 + 1n);
}
