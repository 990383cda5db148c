/**
 * The `kvmtalk` command line. Every command registers itself from src/cli/commands/; errors a user
 * can fix (no /dev/kvm, a bad image, a bad option) end as one line on stderr and exit status 1.
 */
import { Command, CommanderError } from 'commander';
import { registerBench } from './commands/bench.js';
import { registerCc, registerSdk } from './commands/cc.js';
import { registerDemo } from './commands/demo.js';
import { registerInfo } from './commands/info.js';
import { registerInject, registerUpcall } from './commands/inject.js';
import { registerAttach, registerPs } from './commands/attach.js';
import { registerBpf } from './commands/bpf.js';
import { registerRun } from './commands/run.js';
import { registerTranslate } from './commands/translate.js';
import { reportError } from './errors.js';

const program = new Command('kvmtalk')
  .description('A programmable hypervisor for Linux KVM: microVMs, hypercalls and a guest SDK')
  .version('0.1.0')
  .showHelpAfterError('(run kvmtalk help for usage)')
  .exitOverride();

registerRun(program);
registerDemo(program);
registerInfo(program);
registerCc(program);
registerSdk(program);
registerBench(program);
registerTranslate(program);
registerAttach(program);
registerPs(program);
registerBpf(program);
registerInject(program);
registerUpcall(program);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) process.exit(e.exitCode);
  reportError(e);
}
