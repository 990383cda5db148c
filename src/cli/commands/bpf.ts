/**
 * `kvmtalk bpf ...`: the eBPF interpreter from the command line, and a running VM's guest eBPF
 * maps (`bpf maps`, `bpf map-update`, `bpf map-delete`, through the VM's control socket).
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
import { ControlClient } from '../../control/client.js';
import type { BpfMapDump } from '../../control/protocol.js';
import { findVm } from '../../control/runtime-dir.js';
import { UsageError } from '../errors.js';
import { parseCount } from '../options.js';

const TYPE_NAMES: Record<number, string> = { 1: 'hash', 2: 'array' };
const FLAGS = { any: 0, new: 1, exist: 2 } as const;

/**
 * Parses a key or value: hex bytes (`0a00000000000000`), or `u8:N` / `u16:N` / `u32:N` / `u64:N`
 * (little endian, as the guest stores numbers).
 */
export function parseBytes(text: string, what: string): string {
  const m = /^u(8|16|32|64):(\d+|0x[0-9a-f]+)$/i.exec(text);
  if (m) {
    const bits = Number(m[1]);
    const v = BigInt(m[2]!);
    if (v >= 1n << BigInt(bits)) throw new UsageError(`${what}: ${m[2]} does not fit in ${bits} bits`);
    const out = Buffer.alloc(bits / 8);
    for (let i = 0; i < out.length; i++) out[i] = Number((v >> BigInt(8 * i)) & 0xffn);
    return out.toString('hex');
  }
  const hex = text.replace(/^0x/i, '').replace(/[\s:]/g, '');
  if (hex.length === 0 || hex.length % 2 !== 0 || !/^[0-9a-f]+$/i.test(hex)) {
    throw new UsageError(`${what}: ${JSON.stringify(text)} is neither hex bytes nor u8:/u16:/u32:/u64:N`);
  }
  return hex.toLowerCase();
}

/** A hex value as text, with its little-endian number when it is 1, 2, 4 or 8 bytes. */
function showValue(hex: string): string {
  const b = Buffer.from(hex, 'hex');
  if (![1, 2, 4, 8].includes(b.length)) return hex;
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
  return `${v} (${hex})`;
}

/** The text `kvmtalk bpf maps` prints; array entries that are all zero are left out unless `all`. */
export function formatMaps(maps: readonly BpfMapDump[], all = false): string {
  if (maps.length === 0) return 'no maps yet (the guest has created none)\n';
  const lines: string[] = [];
  for (const m of maps) {
    lines.push(`${m.name}: ${TYPE_NAMES[m.type] ?? `type ${m.type}`}, key ${m.keySize} B, value ${m.valueSize} B, ${m.size}/${m.maxEntries} entries`);
    const shown = m.entries.filter(([, v]) => all || m.type !== 2 || /[^0]/.test(v));
    for (const [k, v] of shown) lines.push(`  ${showValue(k)} → ${showValue(v)}`);
    if (m.type === 2 && shown.length < m.entries.length) lines.push(`  (${m.entries.length - shown.length} all-zero entries not shown; --all shows them)`);
    if (m.truncated > 0) lines.push(`  (${m.truncated} more entries not listed; --max raises the limit)`);
  }
  return `${lines.join('\n')}\n`;
}

async function withControl<T>(vm: string, fn: (c: ControlClient) => Promise<T>): Promise<T> {
  const client = await ControlClient.connect(findVm(vm).socket);
  try {
    return await fn(client);
  } finally {
    await client.close();
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Registers `bpf` and its subcommands. */
export function registerBpf(program: Command): void {
  const bpf = program.command('bpf').description('eBPF tools: the conformance plugin, and a running VM\'s guest eBPF maps');
  bpf
    .command('maps')
    .description('list the guest eBPF runtime\'s maps of a running VM (read from guest RAM)')
    .argument('<vm>', 'VM name or pid (kvmtalk ps)')
    .option('--max <n>', 'entries to list per map (1–4096)', '64')
    .option('--all', 'also list array entries that are all zero')
    .option('--json', 'print the maps as JSON')
    .action(async (vm: string, o: { max: string; all?: boolean; json?: boolean }) => {
      const max = parseCount(o.max, '--max', 4096);
      const { maps } = await withControl(vm, (c) => c.request<{ maps: BpfMapDump[] }>({ op: 'bpf-maps', max }, 5000));
      process.stdout.write(o.json ? `${JSON.stringify(maps, null, 2)}\n` : formatMaps(maps, o.all));
    });
  bpf
    .command('map-update')
    .description('write one entry of a running VM\'s guest eBPF map (as bpf_map_update_elem)')
    .argument('<vm>', 'VM name or pid')
    .argument('<map>', 'map name')
    .argument('<key>', 'hex bytes, or u8:/u16:/u32:/u64:N (little endian)')
    .argument('<value>', 'hex bytes, or u8:/u16:/u32:/u64:N')
    .option('--flags <f>', 'any, new (only if absent) or exist (only if present)', 'any')
    .action(async (vm: string, map: string, key: string, value: string, o: { flags: string }) => {
      if (!(o.flags in FLAGS)) throw new UsageError(`--flags: expected any, new or exist, got ${JSON.stringify(o.flags)}`);
      const req = { op: 'bpf-map-update', map, key: parseBytes(key, 'key'), value: parseBytes(value, 'value'), flags: FLAGS[o.flags as keyof typeof FLAGS] };
      await withControl(vm, (c) => c.request(req, 5000));
      process.stdout.write(`${map}: ${showValue(req.key)} ← ${showValue(req.value)}\n`);
    });
  bpf
    .command('map-delete')
    .description('delete one key of a running VM\'s guest eBPF hash map')
    .argument('<vm>', 'VM name or pid')
    .argument('<map>', 'map name')
    .argument('<key>', 'hex bytes, or u8:/u16:/u32:/u64:N')
    .action(async (vm: string, map: string, key: string) => {
      const { deleted } = await withControl(vm, (c) => c.request<{ deleted: boolean }>({ op: 'bpf-map-delete', map, key: parseBytes(key, 'key') }, 5000));
      process.stdout.write(deleted ? `${map}: deleted\n` : `${map}: no such key\n`);
      process.exitCode = deleted ? 0 : 1;
    });
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
