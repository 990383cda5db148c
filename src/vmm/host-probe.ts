/**
 * Measures, rather than guesses, what this host's KVM does: whether VMCALL reaches a userspace VMM
 * and whether guest CPL0 code is emulated. Each probe boots a tiny hand-assembled guest.
 */
import { IMAGE_BASE } from '../arch/x86/layout.js';
import { HC } from '../hypercall/abi.js';
import { statValue } from '../kvm/stats.js';
import { rawImage } from '../loader/raw.js';
import type { VmResult } from './outcome.js';
import { Vm } from './vm.js';

const u32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
const movEax = (v: number) => [0xb8, ...u32(v)];
const movEbx = (v: number) => [0xbb, ...u32(v)];
const HYPERCALL = [0xe6, 0xe0]; // out %al,$0xe0
const EXIT0 = [...movEax(0), 0xe6, 0xf4]; // out %al,$0xf4 with status 0

/** Boots `code` at IMAGE_BASE; the caller closes the returned VM. */
async function runBytes(code: number[], cpl: 0 | 3, onValue?: (v: bigint) => void): Promise<{ vm: Vm; result: VmResult }> {
  const vm = Vm.create({ memory: '8M', console: 'capture', log: () => {} });
  if (onValue) vm.on('value', ({ value }: { value: bigint }) => onValue(value));
  vm.load(rawImage(Uint8Array.from(code), BigInt(IMAGE_BASE)), { mode: 'long', cpl });
  return { vm, result: await vm.run() };
}

/** Like {@link runBytes}, but the guest must exit normally. */
async function runToExit(code: number[], cpl: 0 | 3): Promise<Vm> {
  const { vm, result } = await runBytes(code, cpl);
  if (result.kind !== 'exit') {
    vm.close();
    throw new Error(`probe guest ended unexpectedly: ${result.kind === 'crash' ? result.report.summary : result.kind}`);
  }
  return vm;
}

/** What a CPL3 VMCALL did. */
export interface VmcallProbe {
  /** RAX after `vmcall` with RAX = KT_HC_NOP, as a signed number (NaN when VMCALL raised an exception). */
  rax: number;
  /** The exception VMCALL raised in the guest, if it did (e.g. 13, #GP, on PVM hosts). */
  exceptionVector?: number;
  /** True when kvmtalk's handler answered (RAX = 0): VMCALL is a usable transport. */
  reachesUserspace: boolean;
  /** Whether KVM offers KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL (what makes it possible). */
  interceptAvailable: boolean;
  explanation: string;
}

/**
 * Executes VMCALL (RAX = KT_HC_NOP) at CPL3 and reports RAX. Never at CPL0: on PVM hosts a CPL0
 * VMCALL does not return from KVM_RUN.
 */
export async function probeVmcall(): Promise<VmcallProbe> {
  let rax = NaN;
  const code = [...movEax(HC.NOP), 0x0f, 0x01, 0xc1 /* vmcall */, 0x48, 0x89, 0xc3 /* mov %rax,%rbx */, ...movEax(HC.SEND_VALUE), ...HYPERCALL, ...EXIT0];
  const { vm, result } = await runBytes(code, 3, (v) => (rax = Number(BigInt.asIntN(64, v))));
  const interceptAvailable = vm.vmcallTransport;
  vm.close();
  const exceptionVector = result.kind === 'crash' ? result.report.vector : undefined;
  if (result.kind !== 'exit' && exceptionVector === undefined) throw new Error(`VMCALL probe guest ended unexpectedly (${result.kind})`);
  const reachesUserspace = rax === 0;
  const explanation = exceptionVector !== undefined ? `KVM reflected an exception (vector ${exceptionVector}) into the guest; kvmtalk never saw the call`
    : reachesUserspace ? 'VMCALL exits to kvmtalk (KVM_EXIT_XEN): a second hypercall transport'
    : rax === -1 ? 'KVM answered in the kernel with -KVM_EPERM (caller not at CPL0); kvmtalk never saw it'
      : rax === -1000 ? 'KVM answered in the kernel with -KVM_ENOSYS; kvmtalk never saw it'
        : `KVM answered in the kernel with ${rax}`;
  return { rax, exceptionVector, reachesUserspace, interceptAvailable, explanation };
}

/** Measured cost of a simple instruction at CPL0 and CPL3. */
export interface Cpl0Probe {
  cpl0NsPerInsn: number;
  cpl3NsPerInsn: number;
  /** KVM's `insn_emulation` counter growth per CPL0 instruction (≈1 when CPL0 is emulated). */
  emulatedFraction: number;
  /** CPL0 code is emulated: it is >20× slower than CPL3 and KVM counted emulated instructions for it. */
  emulated: boolean;
}

/** `dec %ecx; jnz` loop of `n` iterations between two KT_HC_BENCH_MARK hypercalls. */
function loopGuest(n: number): number[] {
  const mark = (id: number) => [...movEax(HC.BENCH_MARK), ...movEbx(id), ...HYPERCALL];
  return [...mark(1), 0xb9, ...u32(n) /* mov $n,%ecx */, 0xff, 0xc9 /* dec %ecx */, 0x75, 0xfc /* jnz -4 */, ...mark(2), ...EXIT0];
}

async function loopNsPerInsn(n: number, cpl: 0 | 3): Promise<{ ns: number; emulated: bigint }> {
  const vm = await runToExit(loopGuest(n), cpl);
  const marks = vm.benchMarks();
  const emulated = vm.stats()?.kvm ? statValue(vm.stats()!.kvm!.vcpus[0], 'insn_emulation') : -1n;
  vm.close();
  return { ns: ((marks[2] - marks[1]) * 1e6) / (2 * n), emulated };
}

/** Times the same loop at CPL0 (2,000 iterations) and CPL3 (20 million). */
export async function probeCpl0(): Promise<Cpl0Probe> {
  const n0 = 2000;
  const cpl0 = await loopNsPerInsn(n0, 0);
  const cpl3 = await loopNsPerInsn(20_000_000, 3);
  const emulatedFraction = cpl0.emulated < 0n ? NaN : Number(cpl0.emulated) / (2 * n0);
  return {
    cpl0NsPerInsn: cpl0.ns,
    cpl3NsPerInsn: cpl3.ns,
    emulatedFraction,
    emulated: cpl0.ns > 20 * cpl3.ns && !(emulatedFraction < 0.5),
  };
}
