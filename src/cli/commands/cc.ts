/** `kvmtalk cc` (compile a guest program against the SDK) and `kvmtalk sdk build`. */
import type { Command } from 'commander';
import { buildGuests, buildSdk, compileGuest } from '../../sdk/toolchain.js';

export function registerCc(program: Command): void {
  program
    .command('cc')
    .description('compile freestanding C guest sources against the kvmtalk SDK into a static ELF64')
    .argument('<sources...>', 'C or assembly source files')
    .requiredOption('-o, --output <file>', 'output ELF file')
    .option('--cflags <flags>', 'extra gcc flags, space separated', '')
    .action((sources: string[], o: { output: string; cflags: string }) => {
      compileGuest({ sources, output: o.output, cflags: o.cflags.split(/\s+/).filter(Boolean), log: (m) => process.stderr.write(`${m}\n`) });
    });
}

export function registerSdk(program: Command): void {
  program
    .command('sdk')
    .description('guest SDK maintenance')
    .command('build')
    .description('build the SDK library and the example and test guests (done by npm install)')
    .option('--force', 'rebuild everything')
    .action((o: { force?: boolean }) => {
      const log = (m: string) => process.stderr.write(`${m}\n`);
      buildSdk({ force: o.force, log });
      buildGuests({ force: o.force, log });
    });
}
