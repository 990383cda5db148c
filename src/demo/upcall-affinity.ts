/**
 * The HyperUpCall flow with kvmtalk's pieces (`kvmtalk demo upcall`, and its end-to-end test):
 * the host injects an eBPF program at the guest's affinity hook; the guest workload asks for host
 * CPUs; the program picks one and counts its decisions in a map; the guest relays the choice
 * through the upcall device's AFFINITY register; the host pins the vCPU thread; and at the end the
 * host reads the program's maps out of guest memory.
 * @module
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { readMapDirectory } from '../bpf/guest-maps.js';
import { cpusAllowed } from '../kvm/sys.js';
import { findHook } from '../bpf/hooks.js';
import { encodeImage, imageFromAssembly, imageFromFile, verifyImage } from '../bpf/image.js';
import { loadImageFile } from '../loader/image.js';
import { buildGuests, guestPath } from '../sdk/toolchain.js';
import type { LoadStatus } from '../upcall/upcall-host.js';
import { HC_USER_BASE } from '../hypercall/abi.js';
import type { VmResult } from '../vmm/outcome.js';
import { Vm } from '../vmm/vm.js';

/** The built-in policy program (examples/bpf/affinity-policy.s). */
export const DEFAULT_POLICY = fileURLToPath(new URL('../../../examples/bpf/affinity-policy.s', import.meta.url));

/** One guest request, as the guest reported it and as the host saw the vCPU thread then. */
export interface AffinityStep {
  requested: number;
  /** kt_bpf_set_affinity's result: the host CPU pinned to, or a negative error. */
  result: number;
  tid: number;
  /** Cpus_allowed_list of the vCPU thread while the guest waited for this report's answer. */
  cpusAllowed: string;
}

export interface AffinityDemoReport {
  load: LoadStatus;
  steps: AffinityStep[];
  /** Map `pins`: how often the program chose each host CPU (non-zero entries). */
  pins: { cpu: number; count: bigint }[];
  /** Map `last`: the program's last decision. */
  last: { vcpu: number; requested: number; chosen: number; decisions: number } | undefined;
  /** How the VM ended (the guest returns 0 after its last request). */
  run: VmResult;
}

/** Options of {@link runAffinityDemo}. */
export interface AffinityDemoOptions {
  /** The policy program (.s, .o or .ktbp); default {@link DEFAULT_POLICY}. */
  program?: string;
  /** Narrates the flow, one line at a time. */
  say?: (line: string) => void;
  /** Runs the VM (the CLI passes its runner, which prints the guest console and crash reports). */
  runVm?: (vm: Vm) => Promise<VmResult>;
}

/** Runs the flow end to end. */
export async function runAffinityDemo(opts: AffinityDemoOptions = {}): Promise<AffinityDemoReport> {
  const say = opts.say ?? (() => {});
  const hook = findHook('affinity');
  const image = opts.program ? imageFromFile(opts.program) : imageFromAssembly(readFileSync(DEFAULT_POLICY, 'utf8'));
  const verdict = verifyImage(image, hook);
  if (!verdict.ok) throw new Error(`the policy program does not verify: ${verdict.errors.map((e) => `${e.pc}: ${e.insn}: ${e.reason}`).join('; ')}`);
  say(`host verifier: ${image.insns.length} instructions, ${image.maps.length} maps (${image.maps.map((m) => m.name).join(', ')}) accepted for hook ${hook.name}`);

  buildGuests();
  const vm = Vm.create({ memory: '64M', interrupts: true, upcall: true, log: say });
  try {
    const upcall = vm.upcall!;
    const steps: AffinityStep[] = [];
    vm.handleHypercall(HC_USER_BASE, (call) => {
      const tid = vm.vcpuThreadId(call.cpu);
      const step = { requested: Number(call.a0), result: Number(BigInt.asIntN(64, call.a1)), tid, cpusAllowed: cpusAllowed(tid) };
      steps.push(step);
      say(`vCPU ${call.cpu} (thread ${tid}) asked for CPU ${step.requested}: ${step.result >= 0 ? `pinned to ${step.result}` : `refused (${step.result})`}; Cpus_allowed_list now ${step.cpusAllowed}`);
      return 0;
    });
    upcall.onAffinity(({ vcpu, hostCpu, result }) => say(`device: AFFINITY vCPU ${vcpu} → host CPU ${hostCpu}: ${result === 0 ? 'pinned' : `error ${result}`}`));
    vm.load(loadImageFile(guestPath('examples', 'upcall')));
    const running = (opts.runVm ?? ((v: Vm) => v.run()))(vm);
    say(`injecting the program at hook ${hook.name} (${hook.id})`);
    const load = await upcall.deliver(encodeImage(image), hook.id);
    say(`guest load status: ${load.status === 0 ? 'loaded' : `error ${load.status} at instruction ${load.pc}`}`);
    const run = await running;
    const maps = readMapDirectory(vm.memory, upcall.mapDirectory());
    const pinsMap = maps.find((m) => m.info.name === 'pins');
    const lastMap = maps.find((m) => m.info.name === 'last');
    const pins = (pinsMap?.entries() ?? [])
      .map(([k, v]) => ({ cpu: new DataView(k.buffer).getUint32(0, true), count: new DataView(v.buffer).getBigUint64(0, true) }))
      .filter((p) => p.count > 0n);
    const lv = lastMap?.lookup(new Uint8Array(4));
    const dv = lv && new DataView(lv.buffer);
    const last = dv && { vcpu: dv.getUint32(0, true), requested: dv.getUint32(4, true), chosen: dv.getUint32(8, true), decisions: dv.getUint32(12, true) };
    return { load, steps, pins, last, run };
  } finally {
    vm.close();
  }
}
