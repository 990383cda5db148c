/**
 * Entry point of a vCPU worker thread: rebuilds the thread's view of the VM (vCPU fd, guest RAM,
 * devices, hypercall table) from `workerData`, then runs {@link VcpuRunner} until the vCPU ends.
 */
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { PORT } from '../arch/x86/layout.js';
import { DebugExit } from '../devices/debug-exit.js';
import { Park } from '../devices/park.js';
import { UPCALL_BASE, UPCALL_SIZE, UpcallDevice, UpcallState } from '../devices/upcall-device.js';
import { COM1_BASE, SERIAL_PORT_COUNT, Serial16550, SerialInput } from '../devices/serial-16550.js';
import { DIRECTORY_MAX, DOORBELL_PORT_BASE } from '../channel/channel-area.js';
import { ChannelSignals } from '../channel/notifier.js';
import { HC, KT_ERR } from '../hypercall/abi.js';
import { registerBuiltins } from '../hypercall/builtins.js';
import { HypercallTable, type HypercallCall, type HypercallModule } from '../hypercall/registry.js';
import { MP_STATE } from '../kvm/ioctls.js';
import { gettid, schedSetaffinity } from '../kvm/sys.js';
import { VcpuFd } from '../kvm/vcpu-fd.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { gpaToHva, Pagemap } from '../translate/host-pages.js';
import { Bus } from './bus.js';
import { ExitStats } from './exit-stats.js';
import { answerQuery, flushTlb } from './vcpu-query.js';
import { VcpuRunner } from './vcpu-runner.js';
import {
  CALL_IDLE, CALL_WAITING, CTL, CTL_CALL_RESULT_OFFSET, type FromWorker, type ToWorker, type VcpuWorkerData,
} from './worker-protocol.js';

const data = workerData as VcpuWorkerData;
const port = parentPort!;
const ctl = new Int32Array(data.control);
const callResult = new BigInt64Array(data.control, CTL_CALL_RESULT_OFFSET, 3);
const post = (msg: FromWorker) => port.postMessage(msg);
const emit = (event: string, payload: unknown) => post({ type: 'event', cpu: data.cpu, event, payload });

// Console bytes travel on the same port as events, so the host sees guest output and hypercall
// events in the order the guest produced them.
const consoleSink = (bytes: Uint8Array) => post({ type: 'console', bytes });

const memory = GuestMemory.attach(data.regions);
const vcpu = new VcpuFd(data.vcpuFd, data.cpu, data.runSize);
const serial = new Serial16550({ output: consoleSink, input: SerialInput.fromBuffer(data.serialInput) });
const bus = new Bus();
bus.addPio(COM1_BASE, SERIAL_PORT_COUNT, serial);
bus.addPio(PORT.debugExit, 1, new DebugExit());
bus.addPio(PORT.park, 1, new Park());

// The upcall device: every vCPU thread decodes its own accesses against the one shared state,
// pins vCPU threads itself (AFFINITY answers within the guest's write), by their published tids,
// and copies programs into guest RAM itself (COPY, likewise).
if (data.upcall) {
  const state = UpcallState.attach(data.upcall.state);
  state.publishTid(data.cpu, gettid());
  bus.addMmio(UPCALL_BASE, UPCALL_SIZE, new UpcallDevice(state, {
    notify: (event) => post({ type: 'upcall', event }),
    policy: data.upcall.policy,
    pin: (tid, cpu) => schedSetaffinity(tid, [cpu]),
    memory,
  }));
}

const hypercalls = new HypercallTable(data.cpu, (line) => post({ type: 'log', line }));
registerBuiltins(hypercalls, {
  console: (bytes) => {
    serial.flush();
    consoleSink(bytes);
  },
  benchIterations: data.benchIterations,
  benchMarks: new Float64Array(data.benchMarks),
  flushTlb: () => flushTlb(vcpu),
  hostPage: (gpa) => (pagemap ??= new Pagemap()).lookup(gpaToHva(memory, gpa)),
  halt: data.interrupts ? () => vcpu.setMpState(MP_STATE.HALTED) : undefined,
});
let pagemap: Pagemap | undefined;

// Channel notifications never wait for the main thread: raise the channel's shared pending word
// and post a message only if none is on its way (see ChannelSignals), then let the guest go on.
const channelSignals = new ChannelSignals(data.channelSignals);
function channelNotify(id: number): number {
  if (!channelSignals.isOpen(id)) return -KT_ERR.EINVAL;
  if (channelSignals.raise(id)) post({ type: 'chan-notify', id });
  return 0;
}
hypercalls.register(HC.CHAN_NOTIFY, (call) => (call.a0 < BigInt(DIRECTORY_MAX) ? channelNotify(Number(call.a0)) : -KT_ERR.EINVAL));
// Doorbell ports of every possible channel. With KVM_IOEVENTFD a 1-byte write to an ioeventfd-mode
// channel's port never gets here; other writes (no ioeventfd support, another width, another
// mode) exit to userspace and mean exactly what KT_HC_CHAN_NOTIFY means.
if (data.longMode) {
  bus.addPio(DOORBELL_PORT_BASE, DIRECTORY_MAX, {
    name: 'channel-doorbells',
    pioRead: () => 0xff,
    pioWrite: (port) => void channelNotify(port - DOORBELL_PORT_BASE),
  });
}

/** A handler that runs on the main thread: post the call, then block this vCPU until it is answered. */
function remoteHandler(call: HypercallCall): bigint {
  Atomics.store(ctl, CTL.CALL_STATE, CALL_WAITING);
  post({ type: 'call', cpu: data.cpu, nr: call.nr, args: [call.a0, call.a1, call.a2, call.a3] });
  Atomics.wait(ctl, CTL.CALL_STATE, CALL_WAITING);
  Atomics.store(ctl, CTL.CALL_STATE, CALL_IDLE);
  const outputs = Atomics.load(ctl, CTL.CALL_OUTPUTS);
  if (outputs & 1) call.setOutput('rdx', callResult[1]);
  if (outputs & 2) call.setOutput('rsi', callResult[2]);
  return callResult[0];
}
for (const nr of data.remoteHypercalls) hypercalls.register(nr, remoteHandler);

async function loadModule(url: string): Promise<void> {
  const mod = (await import(url)) as { default?: HypercallModule };
  if (typeof mod.default !== 'function') throw new Error(`${url} has no default export function (hc) => void`);
  await mod.default(hypercalls);
}

let mailboxSeen = 0;
const stats = new ExitStats(data.timing);
const runner = new VcpuRunner(data.cpu, vcpu, memory, bus, hypercalls, stats, {
  stopRequested: () => Atomics.load(ctl, CTL.STOP) !== 0,
  mailboxPending: () => Atomics.load(ctl, CTL.MAILBOX) !== mailboxSeen,
}, emit, data.longMode);

async function drainMailbox(): Promise<void> {
  mailboxSeen = Atomics.load(ctl, CTL.MAILBOX);
  for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
    const msg = m.message as ToWorker;
    if (msg.type === 'remote-hypercall') hypercalls.register(msg.nr, remoteHandler);
    else if (msg.type === 'query') {
      try {
        post({ type: 'query-result', id: msg.id, result: answerQuery(vcpu, msg.query) });
      } catch (e) {
        post({ type: 'query-result', id: msg.id, error: (e as Error).message });
      }
    } else if (msg.type === 'load-module') {
      try {
        await loadModule(msg.url);
        post({ type: 'module-loaded', id: msg.id, cpu: data.cpu });
      } catch (e) {
        post({ type: 'module-loaded', id: msg.id, cpu: data.cpu, error: (e as Error).message });
      }
    }
  }
}

async function main(): Promise<void> {
  for (const url of data.modules) await loadModule(url);
  Atomics.store(ctl, CTL.TID, gettid());
  post({ type: 'ready', cpu: data.cpu, tid: gettid() });
  while (runner.runUntilEvent() === 'mailbox') await drainMailbox();
  serial.flush();
  post({ type: 'done', cpu: data.cpu, outcome: runner.result!, stats: stats.snapshot() });
}

main().catch((e: Error) => {
  serial.flush();
  post({ type: 'done', cpu: data.cpu, outcome: { kind: 'failed', message: `vCPU ${data.cpu} thread failed: ${e.message}` }, stats: stats.snapshot() });
});
