/**
 * The public VM object: creates a KVM VM with memfd-backed RAM and N vCPUs, loads an image in long
 * or real mode, runs each vCPU on its own worker thread, and turns what the vCPUs report into one
 * {@link VmResult}. Lives on the main thread; the hot exit path never comes here.
 */
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { cpuidForVcpu } from '../arch/x86/cpuid.js';
import { IMAGE_BASE, MAX_VCPUS, SYSTEM_END } from '../arch/x86/layout.js';
import { buildLongModeSystem, longModeRegs, longModeSregs } from '../arch/x86/long-mode.js';
import { realModeState, zeroRegs } from '../arch/x86/real-mode.js';
import { SerialInput } from '../devices/serial-input.js';
import { UPCALL_BASE, UPCALL_VERSION, UpcallState, type UpcallPolicy } from '../devices/upcall-device.js';
import { UpcallServer } from '../upcall/endpoint-server.js';
import { UpcallHost } from '../upcall/upcall-host.js';
import { HypercallCall, type HypercallHandler } from '../hypercall/registry.js';
import { HC, isKvmReserved, KT_ERR } from '../hypercall/abi.js';
import {
  CHANNEL_AREA_BASE, CHANNEL_AREA_END, CHANNEL_MODE, CHANNEL_NAME_MAX, ChannelArea, ChannelAreaFullError, channelModeName, channelNameBytes, DEFAULT_CAPACITY,
  GUEST_MAX_CAPACITY, isGuestCapacity, type ChannelMode, type DirectoryEntry,
} from '../channel/channel-area.js';
import { Channel, channelBytes, formatChannel } from '../channel/channel.js';
import { isValidCapacity } from '../channel/channel-layout.js';
import { ChannelSignals, Notifier, Poller, type PollerOptions } from '../channel/notifier.js';
import { GuestMapError, readMapDirectory, type GuestBpfMap } from '../bpf/guest-maps.js';
import { startControlServer, type ControlServer } from '../control/control-server.js';
import { vmPaths } from '../control/runtime-dir.js';
import { CAP, DIRTY_LOG_INITIALLY_SET, DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM, MEM_LOG_DIRTY_PAGES } from '../kvm/ioctls.js';
import { encodeCpuid, Kvm, type CpuidEntry } from '../kvm/kvm.js';
import { encode, kvm_clear_dirty_log, kvm_dirty_log, kvm_regs, kvm_sregs } from '../kvm/structs.js';
import { REG, REG_NAMES, type RegName } from '../kvm/kvm-run.js';
import { KvmStats, type StatValues } from '../kvm/stats.js';
import * as sys from '../kvm/sys.js';
import type { Regs, Translation, VcpuFd } from '../kvm/vcpu-fd.js';
import type { VmFd } from '../kvm/vm-fd.js';
import { ImageError, placeImage, type ElfImage, type ReservedRange } from '../loader/elf.js';
import { GuestMemory, parseSize, type MemoryBacking } from '../memory/guest-memory.js';
import { LatencyHistogram, type ExitStatsSnapshot } from './exit-stats.js';
import { createIrqchip, FIRST_GUEST_VECTOR, LAST_GUEST_VECTOR, readyVcpu, Interrupts, InterruptsDisabledError, type Irqfd } from './interrupts.js';
import { answerQuery, type VcpuState } from './vcpu-query.js';
import { CRASH_STATUS, FAILED_STATUS, STOPPED_STATUS, type VcpuOutcome, type VmResult } from './outcome.js';
import {
  CALL_ANSWERED, CALL_WAITING, CTL, CTL_BYTES, CTL_CALL_RESULT_OFFSET, type FromWorker, type ToWorker, type VcpuQuery, type VcpuWorkerData,
} from './worker-protocol.js';

/** Options of {@link Vm.create}. */
export interface VmOptions {
  /** Guest RAM, in bytes or as text like `64M` (default 64 MiB). */
  memory?: number | string;
  /** Host backing of guest RAM: `'shmem'` (default), `'thp'` or `'hugetlb'`; see {@link MemoryBacking}. */
  memoryBacking?: MemoryBacking;
  /** Number of vCPUs (default 1). */
  vcpus?: number;
  /**
   * Guest console output (serial port and KT_HC_CONSOLE_WRITE) is emitted as `console` events
   * (Uint8Array); with `'stdout'` (the default) it is also written to process.stdout.
   */
  console?: 'stdout' | 'capture';
  /** Record exit-latency histograms (costs two clock reads per exit). */
  timing?: boolean;
  /** Host log lines (Hello World, received values, guest log strings); default: stderr. */
  log?: (line: string) => void;
  /** Path of the KVM device (default /dev/kvm). */
  kvmPath?: string;
  /** Per-vCPU stack size in long mode (default 256 KiB). */
  stackSize?: number;
  /** What KT_HC_BENCH_MARK mark 0 returns (benchmarks). */
  benchIterations?: number;
  /**
   * Host→guest interrupts (default false): creates KVM's in-kernel irqchip, masks both 8259 PICs,
   * software-enables every vCPU's LAPIC and starts long-mode guests with RFLAGS.IF = 1, so
   * {@link Vm.signalMsi}, {@link Vm.createIrqfd} and the KT_HC_WAIT hypercall work (see the
   * "Interrupts" section of docs/guest-abi.md).
   *
   * Off by default because with an in-kernel irqchip KVM handles HLT itself: a halted vCPU sleeps
   * in the kernel waiting for an interrupt instead of exiting with KVM_EXIT_HLT, so a guest that
   * halts for good would hang instead of ending the run with kind `'halt'`.
   */
  interrupts?: boolean;
  /** Tuning of the main-thread poll loop that serves polling-mode channels (see {@link Poller}). */
  channelPolling?: PollerOptions;
  /**
   * The VM's name in the runtime directory, where other host processes find it
   * (`kvmtalk ps`, `kvmtalk attach <name> <channel>`): default `vm-<pid>`, then `vm-<pid>-2`, …
   */
  name?: string;
  /**
   * The control socket (docs/channels.md, "Attaching from another host process"): `true`
   * (default) serves it from the first channel on; `false` only if {@link Vm.serveControl} is
   * called; `{ dir }` as `true`, in another runtime directory.
   */
  control?: boolean | { dir?: string };
  /**
   * The upcall device (docs/upcall-device.md): `true` or {@link UpcallOptions}. Needs
   * `interrupts: true` and at most 0xFE000000 bytes of RAM. The VM then has {@link Vm.upcall},
   * and unless `control: false` serves the host endpoint `<name>.upcall.sock` from {@link Vm.run}.
   */
  upcall?: boolean | UpcallOptions;
}

/** Options of the upcall device. */
export interface UpcallOptions {
  /** Whether the guest may pin vCPU threads with AFFINITY (default true; false: -EPERM). */
  pinning?: boolean;
  /** Host CPUs the guest may ask for (default: the VMM process's own affinity set). */
  allowedCpus?: number[];
  /** Time the guest has to ACK a command before it is cancelled (default 10 s). */
  commandTimeoutMs?: number;
  /** IRQ_VECTOR at reset (default 0: the guest writes its own). */
  vector?: number;
  /** Also serve the endpoint on loopback TCP (port 0: any), with a token file. */
  tcp?: { port: number; host?: string };
}

/** Vector of a channel's host→guest interrupt unless chosen otherwise (VMs with `interrupts: true`). */
export const CHANNEL_DEFAULT_VECTOR = 0x30;

/** Options of {@link Vm.createChannel}. */
export interface ChannelOptions {
  /**
   * Data bytes of each ring: a power of two from 64 B to 1 MiB (default 64 KiB). The guest's
   * KT_HC_CHAN_OPEN accepts 4 KiB–1 MiB; the host may go smaller (tests, latency experiments).
   */
  capacity?: number;
  /** How the guest notifies the host (default `'hypercall'`). */
  mode?: ChannelMode;
  /**
   * Interrupt vector (0x20–0xef) the host raises when the guest waits for data or space; 0 for
   * none (the guest must poll). Default {@link CHANNEL_DEFAULT_VECTOR} when the VM has
   * interrupts and the mode is not `'polling'`, else 0.
   */
  vector?: number;
  /** vCPU that takes the interrupts (default 0). */
  cpu?: number;
}

/** How {@link Vm.load} starts the guest. */
export interface LoadOptions {
  /** `'long'` (default): 64-bit, set up by the VMM. `'real'`: 16-bit real mode for raw images. */
  mode?: 'long' | 'real';
  /** Long mode only: privilege level of guest code (default 3, which runs natively on PVM hosts). */
  cpl?: 0 | 3;
  /** Register values applied to every vCPU after the mode's defaults. */
  regs?: Partial<Record<RegName, bigint>>;
}

/** Exit statistics of a finished run. */
export interface RunStats {
  /** Exit counts by `KVM_EXIT_*` number, summed over vCPUs. */
  exits: number[];
  /** Time inside KVM_RUN per exit, when timing was on. */
  inKvm?: LatencyHistogram;
  /** Time the VMM spent on each exit, when timing was on. */
  inVmm?: LatencyHistogram;
  /** KVM's own binary statistics (KVM_GET_STATS_FD), read when the run ended. */
  kvm?: { vm: StatValues; vcpus: StatValues[]; vmStats: KvmStats; vcpuStats: KvmStats[] };
}

/**
 * How {@link Vm.enableDirtyLog} logs guest writes. `'manual'` (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
 * with KVM_DIRTY_LOG_INITIALLY_SET): pages start out dirty and writable, and only pages passed to
 * {@link Vm.clearDirtyLog} are write-protected, so the guest takes write faults only on the pages
 * someone watches. `'plain'`: every page is write-protected, and {@link Vm.getDirtyLog} clears the
 * bits it returns and re-protects those pages.
 */
export type DirtyLogMode = 'manual' | 'plain';

interface VcpuSlot {
  fd: VcpuFd;
  control: SharedArrayBuffer;
  ctl: Int32Array;
  worker?: Worker;
  tid?: number;
  outcome?: VcpuOutcome;
  stats?: ExitStatsSnapshot;
}

let signalHandlerInstalled = false;
/** KVM_RUN only returns EINTR for a signal with a handler; the handler itself has nothing to do. */
function installKickHandler(): void {
  if (signalHandlerInstalled) return;
  process.on('SIGUSR2', () => {});
  signalHandlerInstalled = true;
}

/** A kvmtalk virtual machine. */
export class Vm extends EventEmitter {
  readonly memory: GuestMemory;
  readonly vcpuCount: number;
  /** Whether VMCALL reaches this VMM (KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL), as a second hypercall transport. */
  readonly vmcallTransport: boolean;
  /** Whether the VM was created with `interrupts: true` (in-kernel irqchip, LAPICs enabled). */
  readonly interrupts: boolean;
  private readonly slots: VcpuSlot[];
  private readonly cpuid: CpuidEntry[][];
  private readonly serialInput = new SerialInput();
  private readonly benchMarkBuffer = new SharedArrayBuffer(8 * 16);
  private readonly mainHandlers = new Map<number, HypercallHandler>();
  private readonly modules: string[] = [];
  /** Module loads in flight: the vCPUs that have not answered yet. */
  private readonly pendingModules = new Map<number, { waiting: Set<number>; errors: string[]; done: (errors: string[]) => void }>();
  private nextModuleId = 1;
  private readonly pendingQueries = new Map<number, { cpu: number; query: VcpuQuery; resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextQueryId = 1;
  private loaded?: { longMode: boolean };
  private running?: Promise<VmResult>;
  private result?: VmResult;
  private runStats?: RunStats;
  private closed = false;
  /** The control socket, once served ({@link serveControl}). */
  private controlServer?: ControlServer;
  /** Dirty logging, once enabled: its mode and a native buffer for bitmaps (the ioctls take its address). */
  private dirty?: { mode: DirtyLogMode; addr: bigint; size: number; words: BigUint64Array };
  private readonly log: (line: string) => void;
  /** Channels: the area (long mode, from load()), every channel by id, and their notification machinery. */
  private channelArea?: ChannelArea;
  private readonly channelList: Channel[] = [];
  private readonly channelSignals = new ChannelSignals();
  private notifier?: Notifier;
  private poller?: Poller;
  private readonly channelIrqfds = new Map<string, Irqfd>();
  /** Whether KVM can bind doorbell ports to eventfds (KVM_CAP_IOEVENTFD): ioeventfd mode without exits. */
  readonly ioeventfdDoorbells: boolean;
  /** Wall-clock ms (timeOrigin-based) when {@link Vm.create} began. */
  readonly createdAt: number;
  /** The upcall device's host side (`upcall` option), else undefined. */
  readonly upcall: UpcallHost | undefined;
  private readonly upcallConfig?: { policy: UpcallPolicy; tcp?: { port: number; host?: string } };
  private upcallServer?: UpcallServer;

  private constructor(
    private readonly kvm: Kvm,
    private readonly vmFd: VmFd,
    memory: GuestMemory,
    vcpus: VcpuFd[],
    cpuid: CpuidEntry[][],
    private readonly options: Required<Pick<VmOptions, 'console' | 'timing' | 'stackSize' | 'benchIterations'>> & Pick<VmOptions, 'channelPolling' | 'name' | 'control'>,
    log: (line: string) => void,
    createdAt: number,
    private readonly irq: Interrupts | undefined,
    upcall: UpcallOptions | undefined,
  ) {
    super();
    if (upcall) {
      const state = UpcallState.create(vcpus.length, { vector: upcall.vector ?? 0 });
      this.upcall = new UpcallHost(state, { raiseIrq: (v) => this.signalMsi(v, 0), commandTimeoutMs: upcall.commandTimeoutMs });
      this.upcallConfig = { policy: { pinning: upcall.pinning ?? true, allowedCpus: upcall.allowedCpus ?? sys.schedGetaffinity(0) }, tcp: upcall.tcp };
    }
    this.interrupts = irq !== undefined;
    this.memory = memory;
    this.vcpuCount = vcpus.length;
    this.cpuid = cpuid;
    this.createdAt = createdAt;
    this.log = log;
    this.slots = vcpus.map((fd) => {
      const control = new SharedArrayBuffer(CTL_BYTES);
      return { fd, control, ctl: new Int32Array(control) };
    });
    this.vmcallTransport = vmFd.canInterceptVmcall();
    if (this.vmcallTransport) vmFd.interceptVmcall();
    this.ioeventfdDoorbells = vmFd.checkExtension(CAP.IOEVENTFD) > 0;
    // Opening and closing channels changes allocation state that lives on this thread, so they
    // are main-thread hypercalls (the vCPU waits; both are rare). NOTIFY is a vCPU-thread built-in.
    this.mainHandlers.set(HC.CHAN_OPEN, (call) => this.openChannelFromGuest(call));
    this.mainHandlers.set(HC.CHAN_CLOSE, (call) => this.closeChannelFromGuest(call));
    // Serve the control socket once there is a channel to attach to. A broken runtime directory
    // must not break the VM: it is logged, and serveControl() reports it to whoever calls it.
    if (options.control !== false) {
      this.once('channel', () => {
        try {
          if (!this.controlServer && !this.closed) this.serveControl();
        } catch (e) {
          this.log(`control socket not served: ${(e as Error).message}`);
        }
      });
    }
  }

  /**
   * Serves the control socket `<name>.sock` in the runtime directory (docs/channels.md,
   * "Attaching from another host process"), through which another host process attaches to this
   * VM's channels (`kvmtalk attach`, `attachChannel`). Started automatically with the first
   * channel unless `control: false`; {@link close} stops it. Idempotent: returns the running
   * server. `name` overrides the `name` option; it cannot change once served.
   * @throws RuntimeDirError for an unusable runtime directory; Error for a name in use
   */
  serveControl(name = this.options.name): ControlServer {
    if (this.closed) throw new Error('serveControl() on a closed VM');
    if (this.controlServer) {
      if (name !== undefined && name !== this.controlServer.name) throw new Error(`this VM is already served as '${this.controlServer.name}'`);
      return this.controlServer;
    }
    const dir = typeof this.options.control === 'object' ? this.options.control.dir : undefined;
    this.controlServer = startControlServer(this, { name, dir, log: this.log });
    return this.controlServer;
  }

  /**
   * Creates a VM: opens KVM, allocates RAM, creates the vCPUs with KVM's supported CPUID.
   * @throws KvmUnavailableError when /dev/kvm cannot be used; RangeError for bad options.
   */
  static create(opts: VmOptions = {}): Vm {
    const createdAt = performance.timeOrigin + performance.now();
    const size = typeof opts.memory === 'string' ? parseSize(opts.memory) : (opts.memory ?? 64 * 2 ** 20);
    const vcpuCount = opts.vcpus ?? 1;
    if (!Number.isInteger(vcpuCount) || vcpuCount < 1 || vcpuCount > MAX_VCPUS) throw new RangeError(`vCPU count must be 1–${MAX_VCPUS}, got ${vcpuCount}`);
    const kvm = Kvm.open(opts.kvmPath);
    const cleanup: (() => void)[] = [() => kvm.close()];
    try {
      if (!kvm.checkExtension(CAP.SYNC_REGS)) throw new Error('this KVM lacks KVM_CAP_SYNC_REGS, which kvmtalk needs');
      if (vcpuCount > kvm.maxVcpus()) throw new RangeError(`this KVM allows at most ${kvm.maxVcpus()} vCPUs`);
      const upcall = opts.upcall === true ? {} : opts.upcall || undefined;
      if (upcall) checkUpcallOptions(upcall, size, opts.interrupts === true);
      const vmFd = kvm.createVm();
      cleanup.push(() => vmFd.close());
      if (kvm.checkExtension(CAP.SET_TSS_ADDR)) vmFd.setTssAddr(0xfffbd000);
      if (opts.interrupts) {
        for (const [cap, name] of [[CAP.IRQCHIP, 'KVM_CAP_IRQCHIP'], [CAP.SIGNAL_MSI, 'KVM_CAP_SIGNAL_MSI'], [CAP.IRQ_ROUTING, 'KVM_CAP_IRQ_ROUTING'], [CAP.IRQFD, 'KVM_CAP_IRQFD']] as const) {
          if (!vmFd.checkExtension(cap)) throw new Error(`this KVM lacks ${name}, which interrupts: true needs`);
        }
        createIrqchip(vmFd); // before any vCPU: KVM gives each vCPU a LAPIC only if the irqchip exists
      }
      const memory = GuestMemory.create(size, { backing: opts.memoryBacking });
      cleanup.push(() => memory.close());
      memory.registerWith(vmFd);
      const cpuid = kvm.supportedCpuid();
      const runSize = kvm.vcpuMmapSize();
      const vcpus: VcpuFd[] = [];
      const cpuids: CpuidEntry[][] = [];
      const apicIds: number[] = [];
      cleanup.push(() => vcpus.forEach((v) => v.close()));
      for (let i = 0; i < vcpuCount; i++) {
        const v = vmFd.createVcpu(i, runSize);
        vcpus.push(v);
        cpuids.push(cpuidForVcpu(cpuid, i));
        v.setCpuid(cpuids[i]);
        if (opts.interrupts) apicIds.push(readyVcpu(v));
      }
      return new Vm(kvm, vmFd, memory, vcpus, cpuids, {
        console: opts.console ?? 'stdout', timing: opts.timing ?? false, stackSize: opts.stackSize ?? 256 * 1024,
        benchIterations: opts.benchIterations ?? 0, channelPolling: opts.channelPolling, name: opts.name, control: opts.control,
      }, opts.log ?? ((line) => process.stderr.write(`[kvmtalk] ${line}\n`)), createdAt, opts.interrupts ? new Interrupts(vmFd, apicIds) : undefined, upcall);
    } catch (e) {
      for (const f of cleanup.reverse()) f();
      throw e;
    }
  }

  /**
   * Copies `image` into guest RAM and sets every vCPU's registers for `opts.mode`.
   * @throws ImageError when the image does not fit in RAM or overlaps the VMM's own structures.
   */
  load(image: ElfImage, opts: LoadOptions = {}): void {
    if (this.running) throw new Error('load() must come before run()');
    const mode = opts.mode ?? 'long';
    const ram = BigInt(this.memory.size);
    const reserved: ReservedRange[] = [];
    if (mode === 'long') {
      const stackBytes = BigInt(this.vcpuCount * this.options.stackSize);
      if (ram < BigInt(IMAGE_BASE) + stackBytes + 0x100000n) {
        throw new ImageError(`guest RAM of ${this.memory.size / 2 ** 20} MiB is too small for long mode with ${this.vcpuCount} vCPU stack(s); use at least ${Math.ceil(Number(BigInt(IMAGE_BASE) + stackBytes + 0x100000n) / 2 ** 20)} MiB`);
      }
      reserved.push({ start: 0n, end: BigInt(SYSTEM_END), name: 'the VMM system area (GDT, IDT, TSS, page tables)' });
      reserved.push({ start: ram - stackBytes, end: ram, name: 'the vCPU stacks' });
    }
    placeImage(image, ram, reserved);
    for (const seg of image.segments) {
      this.memory.write(seg.gpa, seg.data);
      this.memory.fill(seg.gpa + BigInt(seg.data.length), Number(seg.memSize) - seg.data.length);
    }
    const cr3 = mode === 'long' ? buildLongModeSystem(this.memory, this.vcpuCount) : 0n;
    if (mode === 'long' && !this.channelArea) {
      // An empty directory from the start: a guest looking for channels finds a valid one.
      this.channelArea = new ChannelArea(this.memory.slice(CHANNEL_AREA_BASE, CHANNEL_AREA_END - CHANNEL_AREA_BASE));
      this.channelArea.format();
    }
    this.slots.forEach(({ fd }, cpu) => {
      const base = fd.getSregs();
      let regs: Regs;
      if (mode === 'long') {
        fd.setSregs(longModeSregs(base, cpu, opts.cpl ?? 3, cr3));
        regs = longModeRegs(cpu, {
          vcpus: this.vcpuCount, cpl: opts.cpl ?? 3, entry: image.entry, stackSize: this.options.stackSize, interrupts: this.interrupts,
        }, this.memory.size);
      } else {
        const rm = realModeState(base, image.entry);
        fd.setSregs(rm.sregs);
        regs = { ...zeroRegs(), rip: rm.rip };
      }
      fd.setRegs({ ...regs, ...opts.regs });
    });
    this.loaded = { longMode: mode === 'long' };
  }

  /**
   * The raw boot state after {@link load}: guest RAM and each vCPU's `kvm_regs`, `kvm_sregs` and
   * `kvm_cpuid2`, for replaying the identical boot in another VMM (the C benchmark baseline does).
   */
  bootState(): { memory: Uint8Array; vcpus: { regs: Uint8Array; sregs: Uint8Array; cpuid: Uint8Array }[] } {
    if (!this.loaded) throw new Error('load() an image before bootState()');
    return {
      memory: this.memory.bytes,
      vcpus: this.slots.map(({ fd }, i) => ({
        regs: encode(kvm_regs, fd.getRegs()),
        sregs: encode(kvm_sregs, fd.getSregs()),
        cpuid: encodeCpuid(this.cpuid[i]),
      })),
    };
  }

  /**
   * Registers a hypercall handler that runs on the main thread (it may be async and may use
   * closures). The calling vCPU waits for it, so each call costs a thread round trip on top of the
   * exit; for hot paths use {@link loadHypercallModule}, whose handlers run on the vCPU threads.
   */
  handleHypercall(nr: number, handler: (call: HypercallCall) => bigint | number | void | Promise<bigint | number | void>): void {
    if (!Number.isSafeInteger(nr) || nr <= 0 || isKvmReserved(nr)) throw new RangeError(`hypercall number ${nr} is reserved or invalid`);
    this.mainHandlers.set(nr, handler as HypercallHandler);
    this.broadcast({ type: 'remote-hypercall', nr });
  }

  /**
   * Loads a hypercall handler module (see `HypercallModule`) into every vCPU thread: its handlers
   * run synchronously on the exit path. Works before and during {@link run}; resolves once every
   * running vCPU has it.
   * @param url a `file:` URL or absolute path of an ES module
   */
  async loadHypercallModule(url: string | URL): Promise<void> {
    const href = typeof url === 'string' && !url.startsWith('file:') ? new URL(`file://${url}`).href : url.toString();
    this.modules.push(href);
    const live = this.slots.flatMap((s, cpu) => (s.worker && !s.outcome ? [cpu] : []));
    if (live.length === 0) return;
    const id = this.nextModuleId++;
    const errors = await new Promise<string[]>((done) => {
      this.pendingModules.set(id, { waiting: new Set(live), errors: [], done });
      this.broadcast({ type: 'load-module', id, url: href });
    });
    if (errors.length) throw new Error(`hypercall module ${href}: ${errors[0]}`);
  }

  /**
   * A vCPU's registers (`kvm_regs`, `kvm_sregs`), whether or not the VM is running: a running vCPU
   * is briefly kicked out of KVM_RUN to answer on its own thread.
   */
  vcpuState(cpu = 0): Promise<VcpuState> {
    return this.query(cpu, { kind: 'state' }) as Promise<VcpuState>;
  }

  /** KVM_TRANSLATE of `gva` on vCPU `cpu` (KVM's own walk of the guest page tables). */
  kvmTranslate(cpu: number, gva: bigint): Promise<Translation> {
    return this.query(cpu, { kind: 'translate', gva }) as Promise<Translation>;
  }

  /**
   * Turns on KVM dirty-page logging (KVM_MEM_LOG_DIRTY_PAGES) for every RAM memslot, in `prefer`
   * mode when KVM supports it, else `'plain'` (see {@link DirtyLogMode}). Works before and during
   * {@link run}; a second call changes nothing and returns the mode in effect.
   */
  enableDirtyLog(prefer: DirtyLogMode = 'manual'): DirtyLogMode {
    if (this.dirty) return this.dirty.mode;
    const manualBits = DIRTY_LOG_MANUAL_PROTECT_ENABLE | DIRTY_LOG_INITIALLY_SET;
    const mode: DirtyLogMode = prefer === 'manual' && (this.vmFd.checkExtension(CAP.MANUAL_DIRTY_LOG_PROTECT2) & manualBits) === manualBits ? 'manual' : 'plain';
    if (mode === 'manual') this.vmFd.enableCap(CAP.MANUAL_DIRTY_LOG_PROTECT2, [BigInt(manualBits)]);
    const size = Math.ceil(Math.max(...this.memory.regions.map((r) => Math.ceil(r.size / 4096 / 64) * 8)) / 4096) * 4096;
    const addr = sys.mmap(size, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1);
    this.dirty = { mode, addr, size, words: new BigUint64Array(sys.view(addr, size)) };
    for (const r of this.memory.regions) this.vmFd.setUserMemoryRegion(r.slot, r.gpa, r.size, r.hva, MEM_LOG_DIRTY_PAGES);
    return mode;
  }

  /**
   * KVM_GET_DIRTY_LOG: copies memslot `slot`'s bitmap into `out` (bit i of word w = 4 KiB page
   * 64w + i of the slot; `out` needs ceil(pages / 64) words). In `'plain'` mode KVM also clears
   * the log and re-protects the pages it reported. A VM ioctl: fine while the vCPUs run.
   */
  getDirtyLog(slot: number, out: BigUint64Array): void {
    const { dirty, words } = this.dirtyBuffer(slot, out.length);
    sys.ioctlBuf(this.vmFd.fd, 'KVM_GET_DIRTY_LOG', KVM.GET_DIRTY_LOG, encode(kvm_dirty_log, { slot, padding1: 0, dirty_bitmap: dirty.addr }));
    out.set(dirty.words.subarray(0, words));
  }

  /**
   * KVM_CLEAR_DIRTY_LOG (`'manual'` mode): clears the log bits set in `bits` (bit i = page
   * `firstPage` + i of memslot `slot`; `firstPage` a multiple of 64) and write-protects those
   * pages, so the guest's next write to each is logged again.
   */
  clearDirtyLog(slot: number, firstPage: number, bits: BigUint64Array): void {
    const { dirty, pages } = this.dirtyBuffer(slot, bits.length);
    if (dirty.mode !== 'manual') throw new Error('clearDirtyLog() needs the manual dirty-log mode');
    if (firstPage % 64 !== 0 || firstPage < 0 || firstPage >= pages) throw new RangeError(`first page ${firstPage} must be a multiple of 64 inside the slot`);
    dirty.words.set(bits);
    const numPages = Math.min(bits.length * 64, pages - firstPage);
    const buf = encode(kvm_clear_dirty_log, { slot, num_pages: numPages, first_page: BigInt(firstPage), dirty_bitmap: dirty.addr });
    sys.ioctlBuf(this.vmFd.fd, 'KVM_CLEAR_DIRTY_LOG', KVM.CLEAR_DIRTY_LOG, buf);
  }

  /** The dirty-log buffer, checked against memslot `slot` and a bitmap of `words` 64-bit words. */
  private dirtyBuffer(slot: number, words: number): { dirty: NonNullable<Vm['dirty']>; words: number; pages: number } {
    if (!this.dirty) throw new Error('enableDirtyLog() first');
    const region = this.memory.regions.find((r) => r.slot === slot);
    if (!region) throw new RangeError(`no memslot ${slot}`);
    const pages = region.size / 4096;
    const need = Math.ceil(pages / 64);
    if (words * 8 > this.dirty.size) throw new RangeError(`a dirty bitmap of memslot ${slot} needs ${need} words, not ${words}`);
    return { dirty: this.dirty, words: Math.min(words, need), pages };
  }

  private query(cpu: number, query: VcpuQuery): Promise<unknown> {
    const slot = this.slots[cpu];
    if (!slot) return Promise.reject(new RangeError(`no vCPU ${cpu} (this VM has ${this.vcpuCount})`));
    // A vCPU that has ended, or is blocked in a main-thread hypercall (maybe the very one asking),
    // is outside KVM_RUN, so its fd answers directly; its own thread could not.
    if (!slot.worker || slot.outcome || Atomics.load(slot.ctl, CTL.CALL_STATE) === CALL_WAITING) {
      try {
        return Promise.resolve(answerQuery(slot.fd, query));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    const id = this.nextQueryId++;
    return new Promise((resolve, reject) => {
      this.pendingQueries.set(id, { cpu, query, resolve, reject });
      slot.worker!.postMessage({ type: 'query', id, query } satisfies ToWorker);
      Atomics.add(slot.ctl, CTL.MAILBOX, 1);
      this.kick(slot, false);
    });
  }

  // ---- Channels (docs/channels.md) ---------------------------------------------------------------

  /**
   * Creates a channel called `name` (1–31 bytes of printable ASCII) in the channel area, after
   * {@link load} of a long-mode guest and before or during {@link run}. The guest finds it in
   * the directory, or gets its id from KT_HC_CHAN_OPEN with the same name. Emits `'channel'`
   * (channel, `'host'`).
   * @throws RangeError for a bad name, capacity, mode, vector or cpu, or a name already open;
   *   ChannelAreaFullError when the area or directory is full; InterruptsDisabledError for a
   *   vector on a VM without interrupts
   */
  createChannel(name: string, opts: ChannelOptions = {}): Channel {
    if (this.closed) throw new Error('createChannel() on a closed VM');
    if (!this.channelArea) throw new Error('createChannel() needs a long-mode guest: load() it first');
    channelNameBytes(name);
    if (this.channelArea.findOpen(name)) throw new RangeError(`a channel called '${name}' is already open`);
    const capacity = opts.capacity ?? DEFAULT_CAPACITY;
    if (!isValidCapacity(capacity) || capacity > GUEST_MAX_CAPACITY) throw new RangeError(`channel capacity must be a power of two from 64 to ${GUEST_MAX_CAPACITY}, got ${capacity}`);
    const mode = opts.mode ?? 'hypercall';
    if (!Object.hasOwn(CHANNEL_MODE, mode)) throw new RangeError(`unknown channel mode '${String(mode)}'`);
    const vector = opts.vector ?? this.defaultChannelVector(mode);
    if (vector !== 0) {
      if (!this.interrupts) throw new InterruptsDisabledError(`a channel with interrupt vector ${vector}`);
      if (!Number.isInteger(vector) || vector < FIRST_GUEST_VECTOR || vector > LAST_GUEST_VECTOR) throw new RangeError(`channel vector must be 0 or 0x20–0xef, got ${vector}`);
    }
    const cpu = opts.cpu ?? 0;
    if (!Number.isInteger(cpu) || cpu < 0 || cpu >= this.vcpuCount) throw new RangeError(`no vCPU ${cpu} (this VM has ${this.vcpuCount})`);
    return this.addChannel(name, capacity, mode, vector, cpu, 'host');
  }

  /** The channel called `name` (the open one if a closed one had the same name), or undefined. */
  channel(name: string): Channel | undefined {
    const all = this.channelList.filter((c) => c.name === name);
    return all.find((c) => c.state !== 'closed') ?? all.at(-1);
  }

  /** Every channel this VM has had, by id (closed ones included). */
  channels(): Channel[] {
    return [...this.channelList];
  }

  /** The host's authoritative copy of the channel directory (what the guest sees at 0x200000, unless it scribbled on it). */
  channelDirectory(): DirectoryEntry[] {
    return this.channelArea?.entries() ?? [];
  }

  /**
   * The memfd behind guest RAM, for another process to map it through `/proc/<pid>/fd/<n>`;
   * -1 when RAM is not shareable (anonymous THP memory).
   */
  memoryFd(): number {
    return this.memory.regions[0].fd;
  }

  private addChannel(name: string, capacity: number, mode: ChannelMode, vector: number, cpu: number, origin: 'host' | 'guest'): Channel {
    const area = this.channelArea!;
    let formatted: ReturnType<typeof formatChannel> | undefined;
    let regionView: Uint8Array | undefined;
    const entry = area.allocate({ name, bytes: channelBytes(capacity), mode, vector }, (region, e) => {
      formatted = formatChannel(region, e.id, capacity);
      regionView = region;
    });
    let interrupt: (() => void) | undefined;
    let eventfd = -1;
    try {
      if (vector !== 0) {
        const irqfd = this.channelIrqfd(vector, cpu);
        interrupt = () => irqfd.signal();
      }
      if (mode === 'ioeventfd' && this.ioeventfdDoorbells) {
        eventfd = sys.eventfd(0, sys.EFD_NONBLOCK);
        this.vmFd.ioeventfd({ addr: BigInt(entry.port), len: 1, eventfd, pio: true });
        this.notifier ??= new Notifier(this.channelSignals, (id) => this.onChannelNotify(id), (e) => this.log(`channel notifier thread failed: ${e.message}`));
        this.notifier.add(eventfd, entry.id);
      }
    } catch (e) {
      if (eventfd >= 0) sys.close(eventfd);
      area.close(entry.id);
      throw e;
    }
    const channel = new Channel(entry, formatted!, regionView!, cpu, {
      interrupt,
      poller: mode === 'polling' ? (this.poller ??= new Poller(this.options.channelPolling)) : undefined,
      notifications: () => this.channelSignals.count(entry.id),
      onClosed: (ch) => {
        this.channelSignals.setOpen(ch.id, false);
        if (!this.closed) area.close(ch.id);
      },
    });
    this.channelList[entry.id] = channel;
    this.channelSignals.setOpen(entry.id, true);
    try {
      this.emit('channel', channel, origin);
    } catch (e) {
      this.log(`a 'channel' listener threw: ${(e as Error).message}`);
    }
    return channel;
  }

  /**
   * {@link CHANNEL_DEFAULT_VECTOR} on a VM with interrupts, except in polling mode: there nobody
   * notifies anybody, and a guest that spins on the ring anyway gains nothing from interrupts but
   * the cost of taking them (a kick out of guest mode, the handler, the EOI).
   */
  private defaultChannelVector(mode: ChannelMode): number {
    return this.interrupts && mode !== 'polling' ? CHANNEL_DEFAULT_VECTOR : 0;
  }

  /** One irqfd per (vector, vCPU), shared by the channels that use it (each irqfd costs a GSI route). */
  private channelIrqfd(vector: number, cpu: number): Irqfd {
    const key = `${vector}/${cpu}`;
    let irqfd = this.channelIrqfds.get(key);
    if (!irqfd) {
      irqfd = this.createIrqfd(vector, cpu);
      this.channelIrqfds.set(key, irqfd);
    }
    return irqfd;
  }

  /** A notification for channel `id` reached this thread (from a vCPU thread or the notifier thread). */
  private onChannelNotify(id: number): void {
    this.channelSignals.take(id);
    this.channelList[id]?.notify();
  }

  /**
   * KT_HC_CHAN_OPEN: RBX = GPA of the name, RCX = length (1–31), RDX = capacity (0 = 64 KiB, else
   * a power of two in [4 KiB, 1 MiB]), RSI = mode (0–2). Returns the id; an open channel of that
   * name is returned as it is. Interrupts go to the vCPU that opened the channel.
   */
  private openChannelFromGuest(call: HypercallCall): number {
    if (!this.channelArea) return -KT_ERR.EOPNOTSUPP;
    if (call.a1 < 1n || call.a1 > BigInt(CHANNEL_NAME_MAX)) return -KT_ERR.EINVAL;
    const len = Number(call.a1);
    if (!call.memory.contains(call.a0, len)) return -KT_ERR.EFAULT;
    const bytes = call.memory.read(call.a0, len);
    try {
      channelNameBytes(bytes);
    } catch {
      return -KT_ERR.EINVAL;
    }
    const capacity = call.a2 === 0n ? DEFAULT_CAPACITY : call.a2 <= BigInt(GUEST_MAX_CAPACITY) ? Number(call.a2) : 0;
    const mode = call.a3 <= 2n ? channelModeName(Number(call.a3)) : undefined;
    if (!isGuestCapacity(capacity) || !mode) return -KT_ERR.EINVAL;
    const name = new TextDecoder().decode(bytes);
    const existing = this.channelArea.findOpen(name);
    if (existing) return existing.id;
    try {
      return this.addChannel(name, capacity, mode, this.defaultChannelVector(mode), call.cpu, 'guest').id;
    } catch (e) {
      if (e instanceof ChannelAreaFullError) return -KT_ERR.E2BIG;
      throw e;
    }
  }

  /** KT_HC_CHAN_CLOSE: RBX = id. 0, also for a channel already closed; -KT_EINVAL for an unknown id. */
  private closeChannelFromGuest(call: HypercallCall): number {
    const ch = call.a0 < BigInt(this.channelList.length) ? this.channelList[Number(call.a0)] : undefined;
    if (!ch) return -KT_ERR.EINVAL;
    ch.closeFromGuest();
    return 0;
  }

  /**
   * Sends interrupt `vector` (0x20–0xef) to vCPU `cpu` now (KVM_SIGNAL_MSI: fixed delivery,
   * physical destination = the vCPU's APIC id, edge-triggered). Works from the main thread at any
   * time; a vCPU sleeping in KT_HC_WAIT wakes up, and an interrupt sent before the guest is ready
   * waits in the LAPIC until the guest runs with interrupts enabled. Interrupts of one vector that
   * arrive before the guest takes the first coalesce.
   * @returns whether the LAPIC accepted the message
   * @throws {@link InterruptsDisabledError} unless the VM was created with `interrupts: true`
   */
  signalMsi(vector: number, cpu = 0): boolean {
    return this.interruptState('signalMsi()').signalMsi(vector, cpu);
  }

  /**
   * An {@link Irqfd} for `vector` (0x20–0xef) on vCPU `cpu`: an eventfd that KVM turns into that
   * MSI in the kernel (KVM_IRQFD on a GSI routed to the MSI), so `irqfd.signal()` — or a write to
   * `irqfd.fd` from any thread — interrupts the guest without a vCPU kick or a userspace exit.
   * Close it with `irqfd.close()`; {@link close} closes the rest.
   * @throws {@link InterruptsDisabledError} unless the VM was created with `interrupts: true`
   */
  createIrqfd(vector: number, cpu = 0): Irqfd {
    return this.interruptState('createIrqfd()').createIrqfd(vector, cpu);
  }

  private interruptState(what: string): Interrupts {
    if (!this.irq) throw new InterruptsDisabledError(what);
    if (this.closed) throw new Error(`${what} on a closed VM`);
    return this.irq;
  }

  /**
   * Restricts vCPU `cpu`'s thread to the given host CPUs (sched_setaffinity on its thread id).
   * The vCPU must be running (its thread exists once `run()` has started it).
   */
  pinVcpu(cpu: number, hostCpus: readonly number[]): void {
    sys.schedSetaffinity(this.vcpuThreadId(cpu), hostCpus);
  }

  /**
   * The guest eBPF runtime's maps, read from the directory the guest published through the upcall
   * device (docs/bpf-runtime.md). Throws GuestMapError when there is none yet (or no device).
   */
  bpfMaps(): GuestBpfMap[] {
    if (!this.upcall) throw new GuestMapError('this VM has no upcall device, so no eBPF maps');
    return readMapDirectory(this.memory, this.upcall.mapDirectory());
  }

  /** The kernel thread id of vCPU `cpu`'s thread (as in /proc/self/task/<tid>), once it runs. */
  vcpuThreadId(cpu: number): number {
    const slot = this.slots[cpu];
    if (!slot) throw new RangeError(`no vCPU ${cpu} (this VM has ${this.vcpuCount})`);
    const tid = Atomics.load(slot.ctl, CTL.TID);
    if (!tid || slot.outcome) throw new Error(`vCPU ${cpu} is not running`);
    return tid;
  }

  /** Types bytes into the guest's serial port (COM1 receive). Returns how many fit. */
  sendSerialInput(bytes: Uint8Array): number {
    return this.serialInput.push(bytes);
  }

  /** Timestamps (epoch ms) recorded by KT_HC_BENCH_MARK, by mark id. */
  benchMarks(): Float64Array {
    return new Float64Array(this.benchMarkBuffer);
  }

  /** Starts every vCPU and resolves when the VM has ended. Calling it again returns the same run. */
  run(): Promise<VmResult> {
    if (!this.loaded) return Promise.reject(new Error('load() an image before run()'));
    this.running ??= new Promise<VmResult>((resolve) => {
      installKickHandler();
      this.startUpcallEndpoint();
      let remaining = this.slots.length;
      this.slots.forEach((slot, cpu) => {
        const data: VcpuWorkerData = {
          cpu, vcpuFd: slot.fd.fd, runSize: slot.fd.runSize, regions: [...this.memory.regions], control: slot.control,
          serialInput: this.serialInput.buffer, benchMarks: this.benchMarkBuffer, benchIterations: this.options.benchIterations,
          timing: this.options.timing,
          longMode: this.loaded!.longMode, modules: [...this.modules], remoteHypercalls: [...this.mainHandlers.keys()],
          interrupts: this.interrupts, channelSignals: this.channelSignals.buffer,
          upcall: this.upcall && { state: this.upcall.state.buffer, policy: this.upcallConfig!.policy },
        };
        const worker = new Worker(new URL('./vcpu-worker.js', import.meta.url), { workerData: data });
        slot.worker = worker;
        const settle = (outcome: VcpuOutcome) => {
          if (slot.outcome) return;
          slot.outcome = outcome;
          for (const id of [...this.pendingModules.keys()]) this.moduleAnswered(id, cpu);
          this.settleQueries(cpu);
          this.onVcpuEnd(outcome, cpu);
          if (--remaining === 0) {
            this.finishRun();
            resolve(this.result!);
          }
        };
        worker.on('message', (msg: FromWorker) => {
          if (msg.type !== 'done') return this.onMessage(slot, msg);
          slot.stats = msg.stats;
          settle(msg.outcome);
        });
        worker.on('error', (e) => settle({ kind: 'failed', message: `vCPU ${cpu} thread error: ${e.message}` }));
        worker.on('exit', () => settle({ kind: 'failed', message: `vCPU ${cpu} thread exited unexpectedly` }));
      });
    });
    return this.running;
  }

  /** Stops all vCPUs; {@link run}'s promise then resolves (with kind `stopped` unless the guest ended first). */
  stop(): void {
    this.result ??= { kind: 'stopped', status: STOPPED_STATUS };
    for (const slot of this.slots) this.kick(slot, true);
  }

  /** Exit statistics, once {@link run} has resolved. */
  stats(): RunStats | undefined {
    return this.runStats;
  }

  /** Releases vCPUs, RAM and the VM. The VM must not be running. */
  close(): void {
    if (this.closed) return;
    if (this.running && !this.runStats) throw new Error('close() while the VM is running: stop() and await run() first');
    this.closed = true;
    this.upcallServer?.close();
    this.controlServer?.close();
    // Channels first: they must be closed before their guest memory is unmapped.
    for (const ch of this.channelList) ch.dispose();
    this.poller?.stop();
    this.notifier?.close();
    this.runStats?.kvm?.vmStats.close();
    this.runStats?.kvm?.vcpuStats.forEach((s) => s.close());
    this.irq?.close();
    for (const slot of this.slots) slot.fd.close();
    this.memory.close();
    if (this.dirty) sys.munmap(this.dirty.addr, this.dirty.size);
    this.vmFd.close();
    this.kvm.close();
  }

  private onMessage(slot: VcpuSlot, msg: FromWorker): void {
    switch (msg.type) {
      case 'ready':
        slot.tid = msg.tid;
        if (Atomics.load(slot.ctl, CTL.STOP)) this.kick(slot, true);
        break;
      case 'console':
        if (this.options.console === 'stdout') process.stdout.write(msg.bytes);
        this.emit('console', msg.bytes);
        break;
      case 'event':
        this.onGuestEvent(msg.cpu, msg.event, msg.payload);
        break;
      case 'call':
        void this.answerCall(slot, msg.cpu, msg.nr, msg.args);
        break;
      case 'module-loaded':
        if (msg.error) this.pendingModules.get(msg.id)?.errors.push(msg.error);
        this.moduleAnswered(msg.id, msg.cpu);
        break;
      case 'log':
        this.log(msg.line);
        break;
      case 'chan-notify':
        this.onChannelNotify(msg.id);
        break;
      case 'upcall':
        this.upcall?.handleEvent(msg.event);
        break;
      case 'query-result': {
        const q = this.pendingQueries.get(msg.id);
        this.pendingQueries.delete(msg.id);
        if (msg.error !== undefined) q?.reject(new Error(msg.error));
        else q?.resolve(msg.result);
        break;
      }
    }
  }

  /** Queries a vCPU thread left unanswered when it ended: its fd is free now, so answer them here. */
  private settleQueries(cpu: number): void {
    for (const [id, q] of this.pendingQueries) {
      if (q.cpu !== cpu) continue;
      this.pendingQueries.delete(id);
      try {
        q.resolve(answerQuery(this.slots[cpu].fd, q.query));
      } catch (e) {
        q.reject(e as Error);
      }
    }
  }

  /** Settles a module load once no running vCPU still owes an answer (a vCPU that ended owes none). */
  private moduleAnswered(id: number, cpu: number): void {
    const p = this.pendingModules.get(id);
    if (!p) return;
    p.waiting.delete(cpu);
    if (p.waiting.size > 0) return;
    this.pendingModules.delete(id);
    p.done(p.errors);
  }

  private onGuestEvent(cpu: number, event: string, payload: unknown): void {
    const p = payload as { value?: bigint; text?: string };
    if (event === 'hello') this.log(`vCPU ${cpu}: Hello World`);
    else if (event === 'value') this.log(`vCPU ${cpu}: received value ${p.value} (0x${p.value!.toString(16)})`);
    else if (event === 'log') this.log(`vCPU ${cpu}: guest log: ${p.text}`);
    this.emit(event, payload);
  }

  private async answerCall(slot: VcpuSlot, cpu: number, nr: bigint, args: bigint[]): Promise<void> {
    const regs = new BigUint64Array(REG_NAMES.length);
    regs[REG.rax] = nr;
    [REG.rbx, REG.rcx, REG.rdx, REG.rsi].forEach((r, i) => (regs[r] = args[i]));
    const call = new HypercallCall(regs, this.memory, cpu, (event, payload) => this.onGuestEvent(cpu, event, payload));
    let result: bigint;
    try {
      const handler = this.mainHandlers.get(Number(nr));
      const r = handler ? await handler(call) : -KT_ERR.ENOSYS;
      result = r === undefined ? 0n : BigInt(r);
    } catch (e) {
      result = BigInt(e instanceof Error && e.name === 'GuestMemoryError' ? -KT_ERR.EFAULT : -KT_ERR.EINVAL);
      if (result === BigInt(-KT_ERR.EINVAL)) this.log(`hypercall ${nr} handler threw: ${(e as Error).message} (guest gets -EINVAL)`);
    }
    const outputs: { rdx?: bigint; rsi?: bigint } = {};
    if (regs[REG.rdx] !== args[2]) outputs.rdx = regs[REG.rdx];
    if (regs[REG.rsi] !== args[3]) outputs.rsi = regs[REG.rsi];
    this.answer(slot, result, outputs);
  }

  private answer(slot: VcpuSlot, result: bigint, outputs: { rdx?: bigint; rsi?: bigint } = {}): void {
    const values = new BigInt64Array(slot.control, CTL_CALL_RESULT_OFFSET, 3);
    values[0] = BigInt.asIntN(64, result);
    values[1] = BigInt.asIntN(64, outputs.rdx ?? 0n);
    values[2] = BigInt.asIntN(64, outputs.rsi ?? 0n);
    Atomics.store(slot.ctl, CTL.CALL_OUTPUTS, (outputs.rdx !== undefined ? 1 : 0) | (outputs.rsi !== undefined ? 2 : 0));
    Atomics.store(slot.ctl, CTL.CALL_STATE, CALL_ANSWERED);
    Atomics.notify(slot.ctl, CTL.CALL_STATE);
  }

  /** Gets a vCPU out of KVM_RUN: immediate_exit covers "about to enter", the signal covers "inside". */
  private kick(slot: VcpuSlot, stop: boolean): void {
    if (slot.outcome) return;
    if (stop) Atomics.store(slot.ctl, CTL.STOP, 1);
    slot.fd.run.immediateExit = true;
    // Only now release a vCPU blocked in a main-thread call: it must find immediate_exit set.
    if (stop && Atomics.load(slot.ctl, CTL.CALL_STATE) !== 0) this.answer(slot, BigInt(-KT_ERR.EINVAL));
    if (slot.tid) {
      try {
        sys.tgkill(slot.tid, sys.SIGUSR2);
      } catch {
        // The thread already left: nothing to interrupt.
      }
    }
  }

  private broadcast(msg: ToWorker): void {
    for (const slot of this.slots) {
      if (!slot.worker || slot.outcome) continue;
      slot.worker.postMessage(msg);
      Atomics.add(slot.ctl, CTL.MAILBOX, 1);
      this.kick(slot, false);
    }
  }

  private onVcpuEnd(outcome: VcpuOutcome, cpu: number): void {
    if (this.result && this.result.kind !== 'stopped') return;
    switch (outcome.kind) {
      case 'exit':
        this.result = { kind: 'exit', status: outcome.status, cpu };
        break;
      case 'crash':
        this.result = { kind: 'crash', status: CRASH_STATUS, report: outcome.report };
        break;
      case 'failed':
        this.result = { kind: 'failed', status: FAILED_STATUS, message: outcome.message };
        break;
      case 'halt':
        this.result = { kind: 'halt', status: 0, cpu, rip: outcome.rip };
        break;
      case 'park':
        if (this.slots.every((s) => s.outcome?.kind === 'park')) this.result = { kind: 'parked', status: 0 };
        return;
      case 'stopped':
        return;
    }
    for (const slot of this.slots) this.kick(slot, true);
  }

  private finishRun(): void {
    for (const slot of this.slots) void slot.worker?.terminate();
    this.result ??= { kind: 'stopped', status: STOPPED_STATUS };
    const exits = new Array<number>(64).fill(0);
    let inKvm: LatencyHistogram | undefined;
    let inVmm: LatencyHistogram | undefined;
    for (const { stats } of this.slots) {
      if (!stats) continue;
      stats.counts.forEach((c, i) => (exits[i] += c));
      if (stats.inKvm) (inKvm ??= new LatencyHistogram()).merge(new LatencyHistogram(stats.inKvm));
      if (stats.inVmm) (inVmm ??= new LatencyHistogram()).merge(new LatencyHistogram(stats.inVmm));
    }
    this.runStats = { exits, inKvm, inVmm, kvm: this.readKvmStats() };
    for (const ch of this.channelList) ch.guestStopped();
    this.upcall?.cancelAll('the VM stopped', true);
  }

  /**
   * Serves the upcall endpoint next to the control socket (which claims the VM's name), unless
   * `control: false`. Like the control socket, a broken runtime directory is logged, not fatal.
   */
  private startUpcallEndpoint(): void {
    if (!this.upcall || this.options.control === false || this.upcallServer) return;
    try {
      const control = this.serveControl();
      const paths = vmPaths(control.dir, control.name);
      const upcall = this.upcall;
      this.upcallServer = new UpcallServer({
        deliver: (image, hook) => upcall.deliver(image, hook),
        unload: (hook) => upcall.unload(hook),
        onAffinity: (l) => upcall.onAffinity(l),
        hello: { deviceVersion: UPCALL_VERSION, vcpus: this.vcpuCount, maxProgram: upcall.maxProgram },
      }, { socketPath: paths.upcallSocket, tokenPath: paths.upcallToken, tcp: this.upcallConfig!.tcp, log: this.log });
      const server = this.upcallServer;
      upcall.endpoint = server.info;
      server.ready.then(() => (upcall.endpoint = server.info), (e: Error) => this.log(`upcall endpoint not served: ${e.message}`));
    } catch (e) {
      this.log(`upcall endpoint not served: ${(e as Error).message}`);
    }
  }

  private readKvmStats(): RunStats['kvm'] {
    try {
      const vmStats = KvmStats.fromFd(this.vmFd.statsFd());
      const vcpuStats = this.slots.map((s) => KvmStats.fromFd(s.fd.statsFd()));
      return { vm: vmStats.read(), vcpus: vcpuStats.map((s) => s.read()), vmStats, vcpuStats };
    } catch {
      return undefined; // KVM_GET_STATS_FD needs Linux 5.14+
    }
  }
}

/** Refuses upcall options the VM cannot honour, before anything is allocated. */
function checkUpcallOptions(o: UpcallOptions, ramBytes: number, interrupts: boolean): void {
  if (!interrupts) throw new Error('upcall needs interrupts: true (the device interrupts the guest with an MSI)');
  if (ramBytes > Number(UPCALL_BASE)) throw new RangeError(`upcall needs guest RAM of at most 0x${UPCALL_BASE.toString(16)} bytes (the device page sits there), got ${ramBytes}`);
  for (const c of o.allowedCpus ?? []) if (!Number.isInteger(c) || c < 0 || c > 1023) throw new RangeError(`bad host CPU ${c} in upcall.allowedCpus`);
  if (o.commandTimeoutMs !== undefined && !(o.commandTimeoutMs > 0)) throw new RangeError(`upcall.commandTimeoutMs must be > 0, got ${o.commandTimeoutMs}`);
}
