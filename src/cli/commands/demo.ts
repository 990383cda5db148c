/**
 * `kvmtalk demo`: the built-in guest that exercises serial output, the built-in hypercalls and a
 * shared-memory channel.
 */
import type { Command } from 'commander';
import type { Channel } from '../../channel/channel.js';
import { loadImageFile } from '../../loader/image.js';
import { buildGuests, guestPath } from '../../sdk/toolchain.js';
import { Vm } from '../../vmm/vm.js';
import { runFromCli } from '../run-vm.js';

/** The value the demo guest sends with KT_HC_SEND_VALUE, and again through channel "demo". */
export const DEMO_VALUE = 4276993775n;
/** The channel the demo guest opens (KT_HC_CHAN_OPEN) and sends DEMO_VALUE on, as 8 bytes little-endian. */
export const DEMO_CHANNEL = 'demo';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(`boot the built-in demo guest: serial output, KT_HC_HELLO, KT_HC_SEND_VALUE(${DEMO_VALUE}), and the same value through channel "${DEMO_CHANNEL}"`)
    .option('--stats', 'print exit statistics at the end')
    .action(async (o: { stats?: boolean }) => {
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
