/** `kvmtalk demo`: the built-in guest that exercises serial output and the built-in hypercalls. */
import type { Command } from 'commander';
import { loadImageFile } from '../../loader/image.js';
import { buildGuests, guestPath } from '../../sdk/toolchain.js';
import { Vm } from '../../vmm/vm.js';
import { runFromCli } from '../run-vm.js';

/** The value the demo guest sends with KT_HC_SEND_VALUE. */
export const DEMO_VALUE = 4276993775n;

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(`boot the built-in demo guest: serial output, KT_HC_HELLO, and KT_HC_SEND_VALUE(${DEMO_VALUE})`)
    .option('--stats', 'print exit statistics at the end')
    .action(async (o: { stats?: boolean }) => {
      buildGuests();
      const say = (line: string) => process.stdout.write(`[host] ${line}\n`);
      const vm = Vm.create({ memory: '64M', log: say, timing: o.stats === true });
      try {
        let received: bigint | undefined;
        vm.on('value', ({ value, cpu }: { value: bigint; cpu: number }) => {
          received = value;
          say(`subscriber got ${value} from vCPU ${cpu}${value === DEMO_VALUE ? ' (the expected demo value)' : ''}`);
        });
        vm.load(loadImageFile(guestPath('examples', 'demo')));
        say(`booting ${guestPath('examples', 'demo')} (64-bit, CPL3, 1 vCPU)`);
        const result = await runFromCli(vm, { stats: o.stats, quietExit: true });
        if (result.kind === 'exit' && result.status === 0 && received === DEMO_VALUE) say('demo finished: the host received the guest\'s value');
        else if (received !== DEMO_VALUE) say(`demo failed: value ${DEMO_VALUE} was not received`);
        process.exitCode = result.status || (received === DEMO_VALUE ? 0 : 1);
      } finally {
        vm.close();
      }
    });
}
