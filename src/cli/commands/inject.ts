/**
 * `kvmtalk inject <vm> <program> --hook <h>`: builds a KTBP image from a `.o`, `.s` or `.ktbp`
 * file, verifies it on the host for the hook's context, and hands it to a running VM's guest
 * through the upcall endpoint (docs/upcall-device.md); `kvmtalk upcall unload <vm> --hook <h>`.
 * Both exit non-zero unless the guest answered 0.
 */
import type { Command } from 'commander';
import { findHook } from '../../bpf/hooks.js';
import { encodeImage, imageFromFile, verifyImage } from '../../bpf/image.js';
import { runtimeDirPath } from '../../control/runtime-dir.js';
import { errnoName } from '../../kvm/sys.js';
import { UpcallClient, type UpcallConnectOptions } from '../../upcall/client.js';
import type { LoadStatus } from '../../upcall/upcall-host.js';
import { UsageError } from '../errors.js';

interface EndpointCliOptions {
  tcp?: string;
  tokenFile?: string;
  dir?: string;
  json?: boolean;
}

interface InjectCliOptions extends EndpointCliOptions {
  hook: string;
  program?: string;
}

function addEndpointOptions(cmd: Command): Command {
  return cmd
    .option('--tcp <host:port>', 'connect to the VM\'s loopback TCP endpoint instead of its Unix socket')
    .option('--token-file <path>', 'the VM\'s <name>.upcall.token (with --tcp)')
    .option('--dir <path>', `runtime directory (default ${runtimeDirPath()})`)
    .option('--json', 'print the result as JSON');
}

/** Where to connect, from the command line. */
function endpoint(vm: string, o: EndpointCliOptions): UpcallConnectOptions {
  if (!o.tcp) {
    if (o.tokenFile) throw new UsageError('--token-file goes with --tcp');
    return { vm, dir: o.dir };
  }
  const m = /^(.+):(\d{1,5})$/.exec(o.tcp);
  if (!m || Number(m[2]) > 65535) throw new UsageError(`--tcp wants host:port, got '${o.tcp}'`);
  if (!o.tokenFile) throw new UsageError('--tcp needs --token-file (the VM writes <name>.upcall.token next to its socket)');
  return { tcp: { host: m[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(m[2]) }, tokenFile: o.tokenFile };
}

/** Prints the guest's answer; returns the exit code. */
function report(what: string, r: LoadStatus, json: boolean | undefined): number {
  if (json) process.stdout.write(JSON.stringify({ ok: r.status === 0, ...r, error: r.status < 0 ? errnoName(-r.status) : undefined }) + '\n');
  else if (r.status === 0) process.stdout.write(`${what}: ok (command ${r.seq})\n`);
  else process.stdout.write(`${what}: the guest refused it: ${errnoName(-r.status)} (${r.status})${r.pc === null ? '' : ` at instruction ${r.pc}`}\n`);
  return r.status === 0 ? 0 : 1;
}

async function withClient<T>(vm: string, o: EndpointCliOptions, fn: (c: UpcallClient) => Promise<T>): Promise<T> {
  const client = await UpcallClient.connect(endpoint(vm, o));
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

/** Registers `kvmtalk inject`. */
export function registerInject(program: Command): void {
  addEndpointOptions(program
    .command('inject')
    .description('verify an eBPF program on the host and load it into a running VM\'s guest at a hook (upcall device)')
    .argument('<vm>', 'VM name or pid (see kvmtalk ps)')
    .argument('<program>', 'a clang -target bpf object (.o), assembly (.s) or KTBP image (.ktbp)')
    .requiredOption('--hook <hook>', 'affinity, channel-rx, timer, or a hook id')
    .option('--program <name>', 'which program of a .o with several'))
    .action(async (vm: string, file: string, o: InjectCliOptions) => {
      const hook = findHook(o.hook);
      const image = imageFromFile(file, o.program);
      const verdict = verifyImage(image, hook);
      if (!verdict.ok) {
        const e = verdict.errors[0]!;
        if (o.json) process.stdout.write(JSON.stringify({ ok: false, stage: 'host-verifier', errors: verdict.errors }) + '\n');
        else process.stderr.write(`kvmtalk: ${file} does not verify for hook ${hook.name}: instruction ${e.pc} (${e.insn}): ${e.reason}\nnot sent\n`);
        process.exitCode = 1;
        return;
      }
      const r = await withClient(vm, o, (c) => c.load(hook.id, encodeImage(image)));
      process.exitCode = report(`${file} at hook ${hook.name}`, r, o.json);
    });
}

/** Registers `kvmtalk upcall unload`. */
export function registerUpcall(program: Command): void {
  const upcall = program.command('upcall').description('talk to a running VM\'s upcall device');
  addEndpointOptions(upcall
    .command('unload')
    .description('detach the program at a hook in a running VM\'s guest')
    .argument('<vm>', 'VM name or pid (see kvmtalk ps)')
    .requiredOption('--hook <hook>', 'affinity, channel-rx, timer, or a hook id'))
    .action(async (vm: string, o: EndpointCliOptions & { hook: string }) => {
      const hook = findHook(o.hook);
      const r = await withClient(vm, o, (c) => c.unload(hook.id));
      process.exitCode = report(`unload of hook ${hook.name}`, r, o.json);
    });
}
