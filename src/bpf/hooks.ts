/**
 * The guest eBPF runtime's hook points and helpers, as docs/bpf-runtime.md specifies them: what
 * the host verifier checks a program against before `kvmtalk inject` sends it.
 * @module
 */
import type { HelperSpec } from './verifier.js';

/** One hook point of the guest runtime. */
export interface BpfHook {
  /** The hook id the upcall device's COMMAND_ARG carries. */
  id: number;
  name: string;
  /** Bytes of context r1 points to. */
  contextSize: number;
  /** When the program runs and what r0 means. */
  description: string;
}

/** Every hook of the guest runtime (guest/sdk/include/kvmtalk/bpf.h mirrors these). */
export const BPF_HOOKS: readonly BpfHook[] = [
  {
    id: 1, name: 'affinity', contextSize: 16,
    description: 'a guest request to pin a vCPU; ctx {u32 vcpu, u32 requested_cpu, u32 host_cpus, u32 flags}; r0 = host CPU to ask for (negative s32 refuses)',
  },
  {
    id: 2, name: 'channel-rx', contextSize: 272,
    description: 'a message received on a channel; ctx {u32 channel, u32 len, u64 seq, u8 data[256]}; r0 ignored',
  },
  {
    id: 3, name: 'timer', contextSize: 16,
    description: 'a periodic LAPIC timer tick; ctx {u64 tick, u32 vcpu, u32 period_us}; r0 ignored',
  },
];

/** A hook name or id that is not one of {@link BPF_HOOKS}. */
export class UnknownHookError extends Error {
  constructor(what: string) {
    super(`unknown hook ${what}: expected one of ${BPF_HOOKS.map((h) => `${h.name} (${h.id})`).join(', ')}`);
    this.name = 'UnknownHookError';
  }
}

/** Looks a hook up by name or by decimal id. Throws {@link UnknownHookError}. */
export function findHook(nameOrId: string | number): BpfHook {
  const key = String(nameOrId).trim();
  const hook = BPF_HOOKS.find((h) => h.name === key || String(h.id) === key);
  if (!hook) throw new UnknownHookError(JSON.stringify(key));
  return hook;
}

/** Linux's map type numbers, the only two the guest runtime has. */
export const BPF_MAP_TYPE = { HASH: 1, ARRAY: 2 } as const;

/** The helpers the guest runtime provides (Linux's numbering). */
export const GUEST_HELPERS: readonly HelperSpec[] = [
  { id: 1, name: 'map_lookup_elem', args: ['map', 'map-key'], ret: 'map-value-or-null' },
  { id: 2, name: 'map_update_elem', args: ['map', 'map-key', 'map-value', 'scalar'], ret: 'scalar' },
  { id: 3, name: 'map_delete_elem', args: ['map', 'map-key'], ret: 'scalar' },
  { id: 5, name: 'ktime_get_ns', args: [], ret: 'scalar' },
  { id: 7, name: 'get_prandom_u32', args: [], ret: 'scalar' },
  { id: 8, name: 'get_smp_processor_id', args: [], ret: 'scalar' },
];
