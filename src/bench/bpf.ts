/**
 * eBPF benchmark: the same programs (bench/bpf/*.c, see ./bpf-programs.ts) on the same 128-byte
 * packet in four runtimes:
 *   (a) the guest eBPF runtime with its JIT and (b) with its interpreter, timed inside a guest
 *       (guest/tests/bench-bpf.c) between two KT_HC_BENCH_MARK hypercalls the host timestamps;
 *   (c) the TypeScript interpreter (src/bpf/host-runtime.ts) in this process;
 *   (d) the Linux kernel through BPF_PROG_TEST_RUN with `repeat` (src/bpf/kernel.ts), as XDP.
 * Every timed batch lasts ≥ 20 ms (so one exit's cost is noise), rounds alternate the order of
 * the runtimes, figures are medians over rounds, and r0 must agree across runtimes.
 *
 * Besides: the TS verifier's time on a 4,096-instruction program, the latency from
 * `vm.signalMsi` to the guest's interrupt handler (guest/tests/bench-irq.c) next to the bare
 * hypercall round trip, and the upcall latency (injection → loaded and run once, guest/tests/bench-upcall.c).
 */
import { readFileSync } from 'node:fs';
import { BPF_JMP, BPF_JEQ, BPF_K, BPF_X, BPF_ALU64, BPF_ADD, BPF_MUL, BPF_XOR, BPF_MOV, BPF_AND, BPF_LDX, BPF_MEM, BPF_B, BPF_EXIT, slotCount, type BpfInsn } from '../bpf/isa.js';
import { HostProgram } from '../bpf/host-runtime.js';
import { encodeImage, imageFromAssembly } from '../bpf/image.js';
import { DEFAULT_POLICY } from '../demo/upcall-affinity.js';
import { KernelBpf, KernelBpfUnavailableError, kernelJitEnabled, type KernelProgram } from '../bpf/kernel.js';
import { GUEST_HELPERS, findHook } from '../bpf/hooks.js';
import { verify } from '../bpf/verifier.js';
import { HC_USER_BASE, KT_ERR } from '../hypercall/abi.js';
import type { HypercallCall } from '../hypercall/registry.js';
import { KvmUnavailableError } from '../kvm/kvm.js';
import { loadImageFile } from '../loader/image.js';
import { buildGuests, guestPath } from '../sdk/toolchain.js';
import { Vm } from '../vmm/vm.js';
import { BENCH_PROGRAMS, benchPacket, clangBpfAvailable, loadBenchProgram, type CompiledBenchProgram } from './bpf-programs.js';
import { formatTable, hostInfo, type HostInfo } from './report.js';
import { median, round1, round2, round3 } from './stats.js';

/** Options of {@link runBpfBench}. */
export interface BpfBenchOptions {
  /** Rounds (default 5). */
  rounds?: number;
  log?: (s: string) => void;
}

/** One program's medians (ns per run); null where that runtime could not run it. */
export interface BpfProgramResult {
  name: string;
  description: string;
  /** Instruction slots of the kvmtalk entry point. */
  insns: number;
  guest_jit_ns: number | null;
  /** Whether the guest runtime compiled it (else guest_jit_ns is null). */
  guest_jitted: boolean | null;
  guest_interp_ns: number | null;
  ts_interp_ns: number;
  /** BPF_PROG_TEST_RUN's own per-run figure (integer ns). */
  kernel_ns: number | null;
  /** Wall-clock time of the whole test-run call / repeat (includes one syscall). */
  kernel_wall_ns: number | null;
  /** Median over rounds of guest JIT ns ÷ kernel ns. */
  guest_jit_vs_kernel: number | null;
  /** Median over rounds of TS interpreter ns ÷ guest interpreter ns (how many times slower the TS one is). */
  ts_vs_guest_interp: number | null;
}

/** Interrupt-to-handler latency in µs (medians), with the bare hypercall round trip to subtract. */
export interface InterruptLatency {
  /** KVM_SIGNAL_MSI → the handler's KT_HC_BENCH_MARK timestamp, guest running (polling). */
  running_us: number;
  /** The same with the guest asleep in KT_HC_WAIT (includes waking the vCPU thread). */
  sleeping_us: number;
  /** A bare KT_HC_NOP round trip from the same guest: the handler's stamp costs about half. */
  hypercall_round_trip_us: number;
  samples: number;
}

/** Injection → program loaded and run once in the guest, in µs (medians). */
export interface UpcallLatency {
  /** `r0 = 0; exit`, and its image size. */
  minimal_us: number;
  minimal_bytes: number;
  /** The demo's affinity policy (examples/bpf/affinity-policy.s: 31 instructions, 2 maps). */
  policy_us: number;
  policy_bytes: number;
  samples: number;
}

/** What {@link runBpfBench} measured (JSON-friendly). */
export interface BpfBenchResult {
  benchmark: 'bpf';
  /** Median over programs of (guest JIT ns/run ÷ kernel ns/run); null without both. */
  guest_vs_kernel_ratio: number | null;
  rounds: number;
  packet_bytes: number;
  programs: BpfProgramResult[];
  /** Median ms of the TS verifier on a program of 4,096 instruction slots. */
  verifier_4096_ms: number;
  verifier_4096_processed: number;
  /** null when KVM is unavailable (see skipped.kvm). */
  interrupt_to_handler_us: InterruptLatency | null;
  /** Upcall injection → program loaded and first run; null without KVM (see skipped.kvm). */
  upcall_latency_us: UpcallLatency | null;
  kernel_jit_enabled: boolean | null;
  /** Why a part did not run. */
  skipped: { kernel?: string; kvm?: string; guest?: string };
  host: HostInfo;
}

const DEFAULT_ROUNDS = 5;
/** Least duration of one timed batch. */
const BATCH_MS = 25;
const GUEST_MEMORY = '64M';
const IRQ_VECTOR = 0x40;
/** User hypercalls of guest/tests/bench-bpf.c. */
const HC = { PACKET: HC_USER_BASE, IMAGE: HC_USER_BASE + 1, LOADED: HC_USER_BASE + 2, TASK: HC_USER_BASE + 3, RESULT: HC_USER_BASE + 4 } as const;
const MODE = { jit: 1, interp: 2 } as const;
type Side = 'guest_jit' | 'guest_interp' | 'ts' | 'kernel';

/** Runs the benchmark. Parts that cannot run here (no bpf(2), no KVM) are skipped with a reason. */
export async function runBpfBench(opts: BpfBenchOptions = {}): Promise<BpfBenchResult> {
  const rounds = opts.rounds ?? DEFAULT_ROUNDS;
  if (!Number.isSafeInteger(rounds) || rounds < 1) throw new RangeError(`rounds must be a positive integer, got ${rounds}`);
  const log = opts.log ?? (() => {});
  const clang = clangBpfAvailable();
  if (!clang.ok) throw new Error(`the eBPF benchmark compiles its programs with clang -target bpf: ${clang.reason}`);
  const packet = benchPacket();
  const programs = BENCH_PROGRAMS.map((p) => loadBenchProgram(p, log));
  const skipped: BpfBenchResult['skipped'] = {};
  const samples = programs.map(() => ({ guest_jit: [] as number[], guest_interp: [] as number[], ts: [] as number[], kernel: [] as number[], kernel_wall: [] as number[] }));
  const r0s = programs.map(() => new Map<Side, bigint>());

  const ts = programs.map((p) => new HostProgram(p.kvmtalk));
  const kernel = openKernel(programs, skipped, log);
  const guest = await GuestBench.start(programs, packet, skipped, log);
  let jitted: (boolean | null)[] = programs.map(() => null);
  try {
    if (guest) jitted = guest.jitted;
    const tsRuns = programs.map((_, i) => calibrate((n) => timeTs(ts[i]!, packet, n)));
    const kernelRuns = kernel ? programs.map((_, i) => calibrate((n) => kernel.bpf.testRun(kernel.progs[i]!, packet, n).durationNs * n)) : [];
    const guestRuns = guest ? await calibrateGuest(guest, programs.length) : undefined;

    for (let round = 1; round <= rounds; round++) {
      const sides: Side[] = round % 2 ? ['guest_jit', 'guest_interp', 'ts', 'kernel'] : ['kernel', 'ts', 'guest_interp', 'guest_jit'];
      for (const side of sides) {
        for (let i = 0; i < programs.length; i++) {
          const s = samples[i]!;
          if (side === 'ts') {
            const n = tsRuns[i]!;
            s.ts.push(timeTs(ts[i]!, packet, n) / n);
            r0s[i]!.set('ts', ts[i]!.run(packet.slice()));
          } else if (side === 'kernel' && kernel) {
            const r = kernel.bpf.testRun(kernel.progs[i]!, packet, kernelRuns[i]!);
            s.kernel.push(r.durationNs);
            s.kernel_wall.push(r.wallNsPerRun);
            r0s[i]!.set('kernel', BigInt(r.retval));
          } else if ((side === 'guest_jit' || side === 'guest_interp') && guest && guestRuns) {
            const mode = side === 'guest_jit' ? 'jit' : 'interp';
            if (mode === 'jit' && !jitted[i]) continue;
            const n = guestRuns[mode][i]!;
            if (n === 0) continue;
            const r = await guest.run(i, mode, n);
            s[side].push(r.nsPerRun);
            r0s[i]!.set(side, r.r0);
          }
        }
      }
      log(`round ${round}/${rounds}: ${programs.map((p, i) => `${p.name} ${fmtNs(samples[i]!.guest_jit.at(-1))}/${fmtNs(samples[i]!.kernel.at(-1))}`).join(', ')} (guest JIT / kernel ns)`);
    }
    programs.forEach((p, i) => checkAgreement(p, r0s[i]!));
  } finally {
    kernel?.bpf.close();
    await guest?.finish();
  }

  const results = programs.map((p, i): BpfProgramResult => {
    const s = samples[i]!;
    const med = (v: number[]) => (v.length ? round2(median(v)) : null);
    const ratio = (a: number[], b: number[]) => (a.length && a.length === b.length ? round3(median(a.map((x, k) => x / b[k]!))) : null);
    return {
      name: p.name, description: p.description, insns: p.kvmtalk.insns.reduce((n, insn) => n + slotCount(insn), 0),
      guest_jit_ns: med(s.guest_jit), guest_jitted: jitted[i] ?? null, guest_interp_ns: med(s.guest_interp),
      ts_interp_ns: round2(median(s.ts)), kernel_ns: med(s.kernel), kernel_wall_ns: med(s.kernel_wall),
      guest_jit_vs_kernel: ratio(s.guest_jit, s.kernel), ts_vs_guest_interp: ratio(s.ts, s.guest_interp),
    };
  });
  const ratios = results.flatMap((r) => (r.guest_jit_vs_kernel === null ? [] : [r.guest_jit_vs_kernel]));
  const verifier = measureVerifier4096(rounds);
  const irq = skipped.kvm ? null : await measureInterruptLatency(Math.max(30, rounds * 6), log);
  const upcall = skipped.kvm ? null : await measureUpcallLatency(Math.max(10, rounds * 3), log);
  return {
    benchmark: 'bpf',
    guest_vs_kernel_ratio: ratios.length ? round3(median(ratios)) : null,
    rounds,
    packet_bytes: packet.length,
    programs: results,
    verifier_4096_ms: verifier.ms,
    verifier_4096_processed: verifier.processed,
    interrupt_to_handler_us: irq,
    upcall_latency_us: upcall,
    kernel_jit_enabled: kernelJitEnabled() ?? null,
    skipped,
    host: hostInfo(),
  };
}

const fmtNs = (v: number | undefined): string => (v === undefined ? '-' : v.toFixed(1));

/** ns for `n` runs of a program in the TS interpreter. */
function timeTs(p: HostProgram, packet: Uint8Array, n: number): number {
  const ctx = packet.slice();
  const t0 = process.hrtime.bigint();
  for (let k = 0; k < n; k++) p.run(ctx);
  return Number(process.hrtime.bigint() - t0);
}

/** Runs per batch so that a batch lasts ≥ BATCH_MS, from `timeNs(n)` = ns for n runs. */
function calibrate(timeNs: (n: number) => number): number {
  let n = 16;
  for (;;) {
    const ns = timeNs(n);
    if (ns >= BATCH_MS * 1e6 / 4 || n >= 2 ** 30) return Math.min(2 ** 31, Math.ceil((n * BATCH_MS * 1e6) / Math.max(ns, 1)));
    n *= 4;
  }
}

/** Throws when two runtimes gave a program different results (for programs whose result does not depend on earlier runs). */
function checkAgreement(p: CompiledBenchProgram, r0: Map<Side, bigint>): void {
  if (p.name === 'array_count') return; // counts every run, so each runtime's result depends on how often it ran
  const seen = [...r0].map(([side, v]) => [side, BigInt.asUintN(32, v)] as const);
  for (const [side, v] of seen) {
    if (v !== seen[0]![1]) throw new Error(`${p.name}: r0 differs between runtimes: ${seen.map(([s, x]) => `${s} 0x${x.toString(16)}`).join(', ')} (first differing: ${side})`);
  }
}

interface OpenKernel {
  bpf: KernelBpf;
  progs: KernelProgram[];
}

function openKernel(programs: CompiledBenchProgram[], skipped: BpfBenchResult['skipped'], log: (s: string) => void): OpenKernel | undefined {
  let bpf: KernelBpf | undefined;
  try {
    bpf = new KernelBpf();
    const kernel = bpf;
    return { bpf, progs: programs.map((p) => kernel.loadXdp(`${p.name}_xdp`, p.kernel)) };
  } catch (e) {
    bpf?.close();
    if (!(e instanceof KernelBpfUnavailableError)) throw e;
    skipped.kernel = e.message;
    log(`kernel: skipped: ${e.message}`);
    return undefined;
  }
}

/** A program of exactly 4,096 slots: packet byte loads, ALU work and forward branches. */
export function verifierStressProgram(): BpfInsn[] {
  const ins = (opcode: number, dst: number, src: number, off: number, imm: number): BpfInsn => ({ opcode, dst, src, off, imm });
  const out: BpfInsn[] = [ins(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0)];
  for (let k = 0; out.length + 8 <= 4095; k++) {
    out.push(
      ins(BPF_LDX | BPF_MEM | BPF_B, 2, 1, k % 128, 0),
      ins(BPF_ALU64 | BPF_MOV | BPF_X, 3, 2, 0, 0),
      ins(BPF_ALU64 | BPF_MUL | BPF_K, 3, 0, 0, 31),
      ins(BPF_ALU64 | BPF_XOR | BPF_X, 0, 3, 0, 0),
      ins(BPF_JMP | BPF_JEQ | BPF_K, 2, 0, 1, k & 0xff),
      ins(BPF_ALU64 | BPF_ADD | BPF_K, 0, 0, 0, 7),
      ins(BPF_ALU64 | BPF_AND | BPF_K, 0, 0, 0, 0x7fffffff),
      ins(BPF_ALU64 | BPF_ADD | BPF_X, 0, 2, 0, 0),
    );
  }
  while (out.length < 4095) out.push(ins(BPF_ALU64 | BPF_ADD | BPF_K, 0, 0, 0, 1));
  out.push(ins(BPF_JMP | BPF_EXIT, 0, 0, 0, 0));
  return out;
}

/** Median ms of `verify` on {@link verifierStressProgram} over `rounds` runs. */
function measureVerifier4096(rounds: number): { ms: number; processed: number } {
  const prog = verifierStressProgram();
  const opts = { contextSize: 128, helpers: [...GUEST_HELPERS] };
  const times: number[] = [];
  let processed = 0;
  verify(prog, opts); // warm-up (JIT of the verifier itself)
  for (let r = 0; r < Math.max(rounds, 3); r++) {
    const t0 = performance.now();
    const v = verify(prog, opts);
    times.push(performance.now() - t0);
    if (!v.ok) throw new Error(`the 4,096-instruction program does not verify: ${v.errors[0]!.reason} at ${v.errors[0]!.pc}`);
    processed = v.stats.processed;
  }
  return { ms: round2(median(times)), processed };
}

/**
 * Interrupt-to-handler latency: `samples` interrupts while the guest polls, `samples` while it
 * sleeps in KT_HC_WAIT, each after the previous one was handled and the guest has settled; then
 * the guest's bare hypercall round trip.
 */
async function measureInterruptLatency(samples: number, log: (s: string) => void): Promise<InterruptLatency> {
  const nops = 2000;
  const vm = Vm.create({ memory: GUEST_MEMORY, console: 'capture', interrupts: true, benchIterations: samples | (nops << 16), log: () => {} });
  try {
    vm.load(loadImageFile(guestPath('tests', 'bench-irq')));
    let counter: bigint | undefined;
    const out = captureConsole(vm);
    vm.on('value', (p: { value: bigint }) => (counter = p.value));
    const done = vm.run();
    const marks = vm.benchMarks();
    const settle = () => new Promise((resolve) => setTimeout(resolve, 5));
    const waitUntil = async (cond: () => boolean, what: string) => {
      const end = Date.now() + 5000;
      while (!cond()) {
        if (Date.now() > end) throw new Error(`bench-irq: timed out waiting for ${what}`);
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    await waitUntil(() => counter !== undefined, 'the guest to be ready');
    const lat: number[] = [];
    for (let i = 1; i <= 2 * samples; i++) {
      await settle();
      const t0 = performance.timeOrigin + performance.now();
      vm.signalMsi(IRQ_VECTOR);
      await waitUntil(() => vm.memory.readU32(counter!) >= i, `interrupt ${i}`);
      lat.push((marks[1]! - t0) * 1000);
    }
    const result = await done;
    if (result.kind !== 'exit' || result.status !== 0) throw new Error(`bench-irq guest did not exit cleanly (${result.kind}): ${out().trim()}`);
    const irq = {
      running_us: round1(median(lat.slice(0, samples))),
      sleeping_us: round1(median(lat.slice(samples))),
      hypercall_round_trip_us: round2(((marks[3]! - marks[2]!) * 1000) / nops),
      samples,
    };
    log(`interrupt → handler: ${irq.running_us} µs running, ${irq.sleeping_us} µs sleeping; bare hypercall ${irq.hypercall_round_trip_us} µs`);
    return irq;
  } finally {
    vm.close();
  }
}

/**
 * Upcall latency: from handing a program image to the upcall device until the guest has copied it
 * (COPY: a fixed handful of MMIO exits), verified, JIT-compiled, attached and run it once
 * (guest/tests/bench-upcall.c stamps mark 1 after that first run), median in µs, for the smallest
 * program and for the demo's affinity policy.
 */
async function measureUpcallLatency(samples: number, log: (s: string) => void): Promise<UpcallLatency> {
  const minimal = encodeImage(imageFromAssembly('r0 = 0\nexit'));
  const policy = encodeImage(imageFromAssembly(readFileSync(DEFAULT_POLICY, 'utf8')));
  const vm = Vm.create({ memory: GUEST_MEMORY, console: 'capture', interrupts: true, upcall: true, control: false, benchIterations: 2 * samples, log: () => {} });
  try {
    vm.load(loadImageFile(guestPath('tests', 'bench-upcall')));
    let ready = false;
    const out = captureConsole(vm);
    vm.on('value', () => (ready = true));
    const done = vm.run();
    const marks = vm.benchMarks();
    const end = Date.now() + 10_000;
    while (!ready) {
      if (Date.now() > end) throw new Error(`bench-upcall: the guest did not get ready: ${out().trim()}`);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    const timeOne = async (image: Uint8Array): Promise<number> => {
      const before = marks[1];
      const t0 = performance.timeOrigin + performance.now();
      const status = await vm.upcall!.deliver(image, findHook('timer').id);
      if (status.status !== 0) throw new Error(`bench-upcall: the guest refused the program (${status.status})`);
      while (marks[1] === before) await new Promise((resolve) => setImmediate(resolve));
      return (marks[1]! - t0) * 1000;
    };
    const lat = { minimal: [] as number[], policy: [] as number[] };
    for (let i = 0; i < samples; i++) {
      lat.minimal.push(await timeOne(minimal));
      lat.policy.push(await timeOne(policy));
    }
    const result = await done;
    if (result.kind !== 'exit' || result.status !== 0) throw new Error(`bench-upcall guest did not exit cleanly (${result.kind}): ${out().trim()}`);
    const r = {
      minimal_us: round1(median(lat.minimal)), minimal_bytes: minimal.length,
      policy_us: round1(median(lat.policy)), policy_bytes: policy.length, samples,
    };
    log(`upcall → loaded and run: ${r.minimal_us} µs (${r.minimal_bytes}-byte image), ${r.policy_us} µs (${r.policy_bytes}-byte affinity policy)`);
    return r;
  } finally {
    vm.close();
  }
}

/** Collects a VM's console output; the returned function gives what came so far. */
function captureConsole(vm: Vm): () => string {
  const chunks: Uint8Array[] = [];
  vm.on('console', (bytes: Uint8Array) => chunks.push(bytes));
  return () => Buffer.concat(chunks).toString('utf8');
}

/** The guest side: a running bench-bpf VM and the task protocol of guest/tests/bench-bpf.c. */
class GuestBench {
  /** Per image: whether the guest runtime JIT-compiled it (null: it did not load). */
  readonly jitted: (boolean | null)[];
  private readonly asks: ((task: bigint) => void)[] = [];
  private readonly askWaiters: (() => void)[] = [];
  private result?: (r0: bigint) => void;
  private ended?: string;

  private constructor(private readonly vm: Vm, private readonly done: Promise<unknown>, n: number) {
    this.jitted = Array.from({ length: n }, () => null);
  }

  /** Boots the guest and loads every image; undefined (with skipped.guest set) when it cannot run. */
  static async start(programs: CompiledBenchProgram[], packet: Uint8Array, skipped: BpfBenchResult['skipped'], log: (s: string) => void): Promise<GuestBench | undefined> {
    let vm: Vm;
    try {
      buildGuests({ log });
      vm = Vm.create({ memory: GUEST_MEMORY, console: 'capture', log: () => {} });
    } catch (e) {
      if (!(e instanceof KvmUnavailableError)) throw e;
      skipped.kvm = e.message;
      log(`guest parts: skipped: ${e.message}`);
      return undefined;
    }
    const out = captureConsole(vm);
    const images = programs.map((p) => encodeImage(p.kvmtalk));
    let loaded = 0;
    let gb: GuestBench;
    const write = (call: HypercallCall, gpa: bigint, cap: bigint, bytes: Uint8Array): number => {
      if (BigInt(bytes.length) > cap || !call.memory.contains(gpa, bytes.length)) return -KT_ERR.EFAULT;
      call.memory.write(gpa, bytes);
      return bytes.length;
    };
    vm.handleHypercall(HC.PACKET, (call) => write(call, call.a0, call.a1, packet));
    vm.handleHypercall(HC.IMAGE, (call) => (call.a0 < BigInt(images.length) ? write(call, call.a1, call.a2, images[Number(call.a0)]!) : 0));
    vm.handleHypercall(HC.LOADED, (call) => {
      const i = Number(call.a0);
      const rc = Number(BigInt.asIntN(64, call.a1));
      if (i < programs.length) {
        gb.jitted[i] = rc === 0 ? call.a2 !== 0n : null;
        if (rc !== 0) log(`guest: ${programs[i]!.name}: kt_bpf_prog_load failed (${rc}) at instruction ${call.a3}`);
      }
      loaded++;
    });
    vm.handleHypercall(HC.TASK, () => new Promise<bigint>((resolve) => {
      gb.asks.push(resolve);
      gb.askWaiters.shift()?.();
    }));
    vm.handleHypercall(HC.RESULT, (call) => gb.result?.(call.a0));
    vm.load(loadImageFile(guestPath('tests', 'bench-bpf')));
    const done = vm.run().then((r) => {
      gb.ended = r.kind === 'exit' ? `exited with status ${r.status}` : r.kind === 'crash' ? `crashed: ${r.report.summary}` : r.kind === 'failed' ? `failed: ${r.message}` : r.kind;
      for (const w of gb.askWaiters.splice(0)) w();
      return r;
    });
    gb = new GuestBench(vm, done, programs.length);
    await gb.ask().then((give) => gb.asks.unshift(give)).catch(() => {});
    if (gb.ended || loaded !== programs.length) {
      const why = `the bench-bpf guest ${gb.ended ?? 'did not load every image'}: ${out().trim()}`;
      await gb.finish();
      skipped.guest = why;
      log(`guest: skipped: ${why}`);
      return undefined;
    }
    return gb;
  }

  /** Runs image i `runs` times in `mode`; ns per run (from the host's mark timestamps) and the last r0. */
  async run(i: number, mode: keyof typeof MODE, runs: number): Promise<{ nsPerRun: number; r0: bigint }> {
    const give = await this.ask();
    const r0 = new Promise<bigint>((resolve) => (this.result = resolve));
    give((BigInt(i) << 40n) | (BigInt(MODE[mode]) << 32n) | BigInt(runs));
    const value = await Promise.race([r0, this.done.then(() => Promise.reject(new Error(`the bench-bpf guest ${this.ended}`)))]);
    const marks = this.vm.benchMarks();
    return { nsPerRun: ((marks[2]! - marks[1]!) * 1e6) / runs, r0: value };
  }

  /** Tells the guest it is done and waits for it to end; closes the VM. */
  async finish(): Promise<void> {
    try {
      if (!this.ended) (await this.ask())(0n);
      await this.done;
    } catch {
      // the guest already ended; its outcome was reported where it mattered
    } finally {
      this.vm.close();
    }
  }

  /** The resolver of the guest's next HC_TASK call, once it asks. */
  private async ask(): Promise<(task: bigint) => void> {
    while (this.asks.length === 0) {
      if (this.ended) throw new Error(`the bench-bpf guest ${this.ended}`);
      await new Promise<void>((resolve) => this.askWaiters.push(resolve));
    }
    return this.asks.shift()!;
  }
}

/** Runs per batch for each image and mode (0: do not run), calibrated like the host side. */
async function calibrateGuest(guest: GuestBench, n: number): Promise<Record<keyof typeof MODE, number[]>> {
  const out: Record<keyof typeof MODE, number[]> = { jit: [], interp: [] };
  for (const mode of ['jit', 'interp'] as const) {
    for (let i = 0; i < n; i++) {
      if (guest.jitted[i] === null || (mode === 'jit' && !guest.jitted[i])) {
        out[mode].push(0);
        continue;
      }
      let runs = 64;
      for (;;) {
        const { nsPerRun } = await guest.run(i, mode, runs);
        const ns = nsPerRun * runs;
        if (ns >= (BATCH_MS * 1e6) / 4 || runs >= 2 ** 30) {
          out[mode].push(Math.min(2 ** 32 - 1, Math.ceil((runs * BATCH_MS * 1e6) / Math.max(ns, 1))));
          break;
        }
        runs *= 4;
      }
    }
  }
  return out;
}

/** The readable table of a result. */
export function formatBpfTable(r: BpfBenchResult): string {
  const ns = (v: number | null) => (v === null ? '-' : v.toFixed(1));
  const x = (v: number | null) => (v === null ? '-' : `${v < 10 ? v.toFixed(2) : v.toFixed(0)}x`);
  const table = formatTable([
    ['program (ns/run, median)', 'insns', 'guest JIT', 'guest interp', 'TS interp', 'kernel', 'JIT ÷ kernel', 'TS ÷ guest interp'],
    ...r.programs.map((p) => [
      p.name, String(p.insns), p.guest_jitted === false ? 'not jitted' : ns(p.guest_jit_ns), ns(p.guest_interp_ns), ns(p.ts_interp_ns),
      ns(p.kernel_ns), x(p.guest_jit_vs_kernel), x(p.ts_vs_guest_interp),
    ]),
  ]);
  const irq = r.interrupt_to_handler_us;
  const up = r.upcall_latency_us;
  const extra = formatTable([
    ['figure (median)', 'value'],
    ['guest JIT ÷ kernel, median over programs', r.guest_vs_kernel_ratio === null ? '-' : `${r.guest_vs_kernel_ratio.toFixed(3)}x`],
    [`TS verifier, 4,096-instruction program (ms; ${r.verifier_4096_processed} insns processed)`, r.verifier_4096_ms.toFixed(2)],
    ['signalMsi → guest handler, guest running (µs)', irq ? irq.running_us.toFixed(1) : '-'],
    ['signalMsi → guest handler, guest asleep in KT_HC_WAIT (µs)', irq ? irq.sleeping_us.toFixed(1) : '-'],
    ['bare hypercall round trip from that guest (µs)', irq ? irq.hypercall_round_trip_us.toFixed(2) : '-'],
    ...(['minimal', 'policy'] as const).map((k) => [
      `upcall → program loaded and run, ${k === 'minimal' ? 'smallest program' : 'affinity policy'} (µs; ${up ? up[`${k}_bytes`] : '-'}-byte image)`,
      up ? up[`${k}_us`].toFixed(1) : '-',
    ]),
  ]);
  const skips = Object.entries(r.skipped).map(([k, v]) => `skipped ${k}: ${v}`);
  return [
    `eBPF programs on a ${r.packet_bytes}-byte packet: ${r.rounds} rounds, each batch ≥ ${BATCH_MS} ms, runtimes alternating; kernel = BPF_PROG_TEST_RUN (XDP, JIT ${r.kernel_jit_enabled ? 'on' : 'off'}).`,
    '',
    table,
    extra,
    ...skips,
    `host: ${r.host.cpu}, ${r.host.cores} cores, Linux ${r.host.kernel}, Node ${r.host.node}`,
    '',
  ].join('\n');
}
