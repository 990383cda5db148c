/**
 * `kvmtalk attach <vm> <channel>`: take over a running VM's channel from this process and print
 * the guest's messages live (the seed's `read_shared_mem`); `kvmtalk ps`: list running VMs.
 */
import type { Command } from 'commander';
import { attachChannel } from '../../control/attach.js';
import { ControlClient } from '../../control/client.js';
import type { ChannelSummary, DescribeReply } from '../../control/protocol.js';
import { listVms, runtimeDirPath, type VmEntry } from '../../control/runtime-dir.js';
import { parseCount } from '../options.js';

/** Printable UTF-8 text (tabs and line breaks allowed), or undefined. */
function asText(msg: Uint8Array): string | undefined {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(msg);
  } catch {
    return undefined;
  }
  // C0 controls other than \t \n \r, DEL and C1 controls would garble a terminal.
  return /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]/.test(text) ? undefined : text;
}

/** One output line for a message: its text when printable (and --hex is off), else its bytes in hex. */
export function formatMessage(msg: Uint8Array, hex = false): string {
  const text = hex ? undefined : asText(msg);
  if (text !== undefined) return text.endsWith('\n') ? text.slice(0, -1) : text;
  return `[${msg.length} bytes] ${Buffer.from(msg).toString('hex').replace(/(..)(?!$)/g, '$1 ')}`.trimEnd();
}

interface AttachCliOptions {
  send?: string;
  count?: string;
  hex?: boolean;
  dir?: string;
}

/** Registers `kvmtalk attach`. */
export function registerAttach(program: Command): void {
  program
    .command('attach')
    .description('take over a channel of a running VM from this process and print its messages live (Ctrl-C detaches)')
    .argument('<vm>', 'VM name or pid (see kvmtalk ps)')
    .argument('<channel>', 'channel name')
    .option('--send <text>', 'send TEXT to the guest first')
    .option('--count <n>', 'exit after N messages')
    .option('--hex', 'print every message in hex, even printable ones')
    .option('--dir <path>', `runtime directory (default ${runtimeDirPath()})`)
    .addHelpText('after', '\nMessages go to stdout, one per line: text when printable UTF-8, else "[N bytes] hex". Status goes to stderr.\nWhile attached, the VM\'s own reader of the channel pauses; it resumes on exit.')
    .action(async (vmRef: string, channelName: string, o: AttachCliOptions) => {
      const count = o.count === undefined ? undefined : parseCount(o.count, '--count');
      const ch = await attachChannel(vmRef, channelName, { dir: o.dir });
      let stopping = false;
      const stop = () => {
        stopping = true;
        void ch.close();
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      let received = 0;
      try {
        process.stderr.write(`attached to channel '${ch.info.name}' of VM '${ch.vm.name}' (pid ${ch.vm.pid}); Ctrl-C detaches\n`);
        if (o.send !== undefined) await ch.send(o.send);
        while (count === undefined || received < count) {
          const msg = await ch.recv();
          if (!msg) break;
          received++;
          process.stdout.write(formatMessage(msg, o.hex) + '\n');
        }
      } catch (e) {
        if (!stopping) throw e; // Ctrl-C during a send that waited for room: a normal end
      } finally {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        const reason = ch.endReason;
        await ch.close();
        if (!stopping && reason) process.stderr.write(`kvmtalk: ${reason}\n`);
      }
      if (count !== undefined && received < count && !stopping) {
        process.stderr.write(`kvmtalk: got ${received} of ${count} messages\n`);
        process.exitCode = 1;
      }
    });
}

/** One VM as `kvmtalk ps --json` prints it. */
export interface PsEntry extends VmEntry {
  memSize?: number;
  channels?: ChannelSummary[];
  /** Why the VM could not be asked (it is listed anyway). */
  error?: string;
}

/** Asks each VM in `dir` for its channels (at most `timeoutMs` each, all at once). */
export async function describeVms(dir: string, timeoutMs = 1000): Promise<PsEntry[]> {
  return Promise.all(listVms(dir).map(async (vm): Promise<PsEntry> => {
    let client: ControlClient | undefined;
    try {
      client = await ControlClient.connect(vm.socket, timeoutMs);
      const d = await client.request<DescribeReply>({ op: 'describe' }, timeoutMs);
      return { ...vm, memSize: d.memSize, channels: d.channels };
    } catch (e) {
      return { ...vm, error: (e as Error).message };
    } finally {
      await client?.close();
    }
  }));
}

/** Registers `kvmtalk ps`. */
export function registerPs(program: Command): void {
  program
    .command('ps')
    .description('list running VMs that serve a control socket, with their channels')
    .option('--json', 'machine-readable output')
    .option('--dir <path>', `runtime directory (default ${runtimeDirPath()})`)
    .action(async (o: { json?: boolean; dir?: string }) => {
      const vms = await describeVms(o.dir ?? runtimeDirPath());
      if (o.json) {
        process.stdout.write(JSON.stringify(vms, null, 2) + '\n');
        return;
      }
      if (vms.length === 0) {
        process.stdout.write('no running VMs\n');
        return;
      }
      const rows = vms.map((v) => [
        v.name,
        String(v.pid),
        v.memSize === undefined ? '-' : `${v.memSize / 2 ** 20}M`,
        v.error ? `? (${v.error})` : v.channels!.map((c) => `${c.name} (${c.state}, ${c.mode})`).join(', ') || '-',
      ]);
      const header = ['NAME', 'PID', 'MEMORY', 'CHANNELS'];
      const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
      const line = (r: string[]) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]))).join('  ');
      process.stdout.write([line(header), ...rows.map(line)].join('\n') + '\n');
    });
}
