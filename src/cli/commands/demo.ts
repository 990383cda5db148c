/**
 * `kvmtalk demo`: the built-in guest that exercises serial output, the built-in hypercalls and a
 * shared-memory channel.
 */
import type { Command } from 'commander';
import type { Channel } from '../../channel/channel.js';
import { loadImageFile } from '../../loader/image.js';
import { buildGuests, guestPath } from '../../sdk/toolchain.js';
import { Vm } from '../../vmm/vm.js';
import { runAffinityDemo, type AffinityDemoReport } from '../../demo/upcall-affinity.js';
import { UsageError } from '../errors.js';
import { runFromCli } from '../run-vm.js';

/** The value the demo guest sends with KT_HC_SEND_VALUE, and again through channel "demo". */
export const DEMO_VALUE = 4276993775n;
/** The channel the demo guest opens (KT_HC_CHAN_OPEN) and sends DEMO_VALUE on, as 8 bytes little-endian. */
export const DEMO_CHANNEL = 'demo';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(`boot a built-in demo guest. basic (default): serial output, KT_HC_HELLO, KT_HC_SEND_VALUE(${DEMO_VALUE}), and the same value through channel "${DEMO_CHANNEL}". upcall: the host injects an eBPF policy at the guest's affinity hook, the guest asks for host CPUs, the program picks them and counts in a map, the host pins the vCPU thread and prints the map`)
    .argument('[scenario]', 'basic or upcall', 'basic')
    .option('--stats', 'print exit statistics at the end (basic)')
    .option('--program <file>', 'upcall: the affinity policy to inject (.s, .o or .ktbp; default examples/bpf/affinity-policy.s)')
    .action(async (scenario: string, o: { stats?: boolean; program?: string }) => {
      if (scenario === 'upcall') return upcallDemo(o.program);
      if (scenario !== 'basic') throw new UsageError(`unknown demo ${JSON.stringify(scenario)}: expected basic or upcall`);
      buildGuests();
      const say = (line: string) => process.stdout.write(`[host] ${line}\n`);
      const vm = Vm.create({ memory: '64M', log: say, timing: o.stats === true });
      try {
        let received: bigint | undefined;
        let viaChannel: bigint | undefined;
        vm.on('value', ({ value, cpu }: { value: bigint; cpu: number }) => {
          received = value;
          say(`subscriber got ${value} from vCPU ${cpu}${value === DEMO_VALUE ? ' (the expected demo value)' : ''}`);
        });
        // The guest opens the channel during the run; 'channel' fires before it gets the id back,
        // so this listener is in place before the guest can send. Push style: every message is
        // emitted as soon as the guest notifies, and what is left is delivered when the run ends.
        vm.on('channel', (ch: Channel) => {
          if (ch.name !== DEMO_CHANNEL) return;
          ch.on('message', (bytes: Uint8Array) => {
            if (bytes.length !== 8) {
              say(`channel "${ch.name}": unexpected ${bytes.length}-byte message`);
              return;
            }
            const value = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).readBigUInt64LE(0);
            viaChannel = value;
            say(`channel "${ch.name}": received ${value} (0x${value.toString(16)})`);
          });
          ch.on('error', (e: Error) => say(`channel "${ch.name}": ${e.message}`));
        });
        vm.load(loadImageFile(guestPath('examples', 'demo')));
        say(`booting ${guestPath('examples', 'demo')} (64-bit, CPL3, 1 vCPU)`);
        const result = await runFromCli(vm, { stats: o.stats, quietExit: true });
        const ok = received === DEMO_VALUE && viaChannel === DEMO_VALUE;
        if (result.kind === 'exit' && result.status === 0 && ok) {
          say('demo finished: the host received the guest\'s value by hypercall and through the channel');
        } else {
          if (received !== DEMO_VALUE) say(`demo failed: value ${DEMO_VALUE} was not received by hypercall`);
          if (viaChannel !== DEMO_VALUE) say(`demo failed: value ${DEMO_VALUE} was not received through channel "${DEMO_CHANNEL}"`);
        }
        process.exitCode = result.status || (ok ? 0 : 1);
      } finally {
        vm.close();
      }
    });
}

async function upcallDemo(program: string | undefined): Promise<void> {
  const say = (line: string) => process.stdout.write(`[host] ${line}\n`);
  const report = await runAffinityDemo({ program, say, runVm: (vm) => runFromCli(vm, { quietExit: true }) });
  printAffinityReport(report, say);
  const failures = affinityDemoFailures(report);
  for (const f of failures) say(`demo failed: ${f}`);
  if (failures.length === 0) say('demo finished: injected, verified twice, run at the hook, relayed through AFFINITY, pinned, and read back from the map');
  process.exitCode = failures.length === 0 ? 0 : report.run.status || 1;
}

function printAffinityReport(r: AffinityDemoReport, say: (line: string) => void): void {
  say('map "pins" (host CPU → times the program chose it):');
  for (const p of r.pins) say(`  CPU ${p.cpu}: ${p.count}`);
  if (r.last) say(`map "last": vCPU ${r.last.vcpu} asked for ${r.last.requested}, program chose ${r.last.chosen}; ${r.last.decisions} decisions in all`);
}

/** What went wrong in a run of the upcall demo (empty: the whole flow worked). */
export function affinityDemoFailures(r: AffinityDemoReport): string[] {
  const out: string[] = [];
  if (r.load.status !== 0) out.push(`the guest refused the program (status ${r.load.status}, pc ${r.load.pc})`);
  if (r.run.kind !== 'exit' || r.run.status !== 0) out.push(`the guest did not exit cleanly (${r.run.kind}, status ${r.run.status})`);
  if (r.steps.length === 0) out.push('the guest made no affinity requests');
  for (const s of r.steps) {
    if (s.result >= 0 && s.cpusAllowed !== String(s.result)) out.push(`request for CPU ${s.requested}: pinned to ${s.result} but the thread may run on ${s.cpusAllowed}`);
  }
  const chosen = r.steps.filter((s) => s.result >= 0).length;
  const counted = r.pins.reduce((n, p) => n + Number(p.count), 0);
  if (counted !== chosen) out.push(`map "pins" counts ${counted} decisions, the guest saw ${chosen}`);
  return out;
}
