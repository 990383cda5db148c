/**
 * `kvmtalk bpf ...`: the eBPF interpreter from the command line.
 *
 * `kvmtalk bpf conformance-plugin [memory-hex]` is a plugin for the bpf_conformance suite: it
 * reads the program as hex bytes from stdin (or --program), runs it with r1 = the memory and
 * r2 = its length, and prints r0 in lowercase hex. The suite wants a single executable path, so
 * point its --plugin_path at a wrapper such as:
 *   #!/bin/sh
 *   exec kvmtalk bpf conformance-plugin "$@"
 */
import type { Command } from 'commander';
import { conformancePlugin } from '../../bpf/conformance.js';
import { UsageError } from '../errors.js';

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Registers `bpf` and its subcommands. */
export function registerBpf(program: Command): void {
  const bpf = program.command('bpf').description('eBPF (RFC 9669) interpreter tools');
  bpf
    .command('conformance-plugin')
    .description('bpf_conformance plugin: program hex on stdin, memory hex as the argument, prints r0 in hex')
    .argument('[memory-hex]', 'input memory as hex bytes (r1 points at it, r2 holds its length)', '')
    .argument('[plugin-options...]', 'further plugin options from the suite (ignored)')
    .option('--program <hex>', 'program bytes as hex instead of reading stdin')
    .option('--max-instructions <n>', 'stop runaway programs after this many instructions', '1000000')
    .allowUnknownOption()
    .action(async (memoryHex: string, _rest: string[], o: { program?: string; maxInstructions: string }) => {
      const max = Number(o.maxInstructions);
      if (!Number.isSafeInteger(max) || max <= 0) throw new UsageError(`--max-instructions: ${JSON.stringify(o.maxInstructions)} is not a positive integer`);
      // The suite passes its (possibly empty) options string after the memory; an empty memory
      // argument may also be absent entirely.
      const memory = memoryHex.startsWith('--') ? '' : memoryHex;
      const stdin = o.program === undefined ? await readStdin() : undefined;
      const out = conformancePlugin({ memoryHex: memory, programHex: o.program, stdin, maxInstructions: max });
      if (out.stdout) process.stdout.write(out.stdout);
      if (out.stderr) process.stderr.write(out.stderr);
      process.exitCode = out.exitCode;
    });
}
