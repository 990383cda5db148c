/**
 * `kvmtalk bench <name>` and `kvmtalk bench all`: runs the benchmarks in {@link BENCHMARKS}, prints a
 * readable table (or JSON with --json) and always writes bench-results/<name>.{json,md}.
 */
import type { Command } from 'commander';
import { formatBpfTable, runBpfBench } from '../../bench/bpf.js';
import { formatChannelTable, runChannelBench } from '../../bench/channel.js';
import { formatHypercallTable, runHypercallBench } from '../../bench/hypercall.js';
import { toJson, writeBenchResults } from '../../bench/report.js';
import { formatTranslateTable, runTranslateBench } from '../../bench/translate.js';
import { reportError, UsageError } from '../errors.js';

/** Options every benchmark understands (each may ignore what does not apply). */
export interface BenchRunOptions {
  rounds?: number;
  iterations?: number;
  /** Messages per phase (benchmarks whose `options.messages` is set). */
  messages?: number;
  log: (line: string) => void;
}

/** One benchmark: how to run it and how to show its result. */
export interface BenchmarkEntry {
  /** Subcommand name, also the bench-results/ file name. */
  name: string;
  description: string;
  /** Whether `--rounds` / `--iterations` / `--messages` apply. */
  options: { rounds: boolean; iterations: boolean; messages?: boolean };
  run(opts: BenchRunOptions): Promise<{ result: unknown; table: string }>;
}

/** Every benchmark `bench all` runs, in order. New benchmarks are added here. */
export const BENCHMARKS: BenchmarkEntry[] = [
  {
    name: 'hypercall',
    description: 'hypercall round trip (port-I/O exit + handler) of the TS VMM against a minimal C VMM',
    options: { rounds: true, iterations: true },
    async run(opts) {
      const result = await runHypercallBench(opts);
      return { result, table: formatHypercallTable(result) };
    },
  },
  {
    name: 'translate',
    description: 'full-chain address translation GVA→GPA→HVA→HPA per second: TS uncached and cached against C',
    options: { rounds: true, iterations: true },
    async run(opts) {
      const result = await runTranslateBench(opts);
      return { result, table: formatTranslateTable(result) };
    },
  },
  {
    name: 'channel',
    description: 'channel messages/s and round-trip latency (64 B, 4 KiB; hypercall, ioeventfd, polling; both directions; 1 and 2 vCPUs) against the C ring between two host threads',
    options: { rounds: true, iterations: false, messages: true },
    async run(opts) {
      const result = await runChannelBench({ rounds: opts.rounds, messages: opts.messages, log: opts.log });
      return { result, table: formatChannelTable(result) };
    },
  },
  {
    name: 'bpf',
    description: 'eBPF programs per run: guest runtime JIT and interpreter, TS interpreter, Linux kernel (BPF_PROG_TEST_RUN); TS verifier on 4,096 insns; interrupt → handler latency',
    options: { rounds: true, iterations: false },
    async run(opts) {
      const result = await runBpfBench({ rounds: opts.rounds, log: opts.log });
      return { result, table: formatBpfTable(result) };
    },
  },
];

interface CliOptions {
  json?: boolean;
  rounds?: number;
  iterations?: number;
  messages?: number;
}

function positiveInt(what: string): (text: string) => number {
  return (text) => {
    const v = Number(text);
    if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(v) || v < 1) throw new UsageError(`${what} must be a positive integer, got '${text}'`);
    return v;
  };
}

const progress = (line: string) => process.stderr.write(`[bench] ${line}\n`);

/** Runs `entries` one after another; prints tables as they finish, or one JSON document at the end. */
async function runBenchmarks(entries: BenchmarkEntry[], cli: CliOptions, jsonShape: 'single' | 'all'): Promise<void> {
  const results: Record<string, unknown> = {};
  for (const entry of entries) {
    if (!cli.json) progress(`${entry.name}: ${entry.description}`);
    const { result, table } = await entry.run({
      rounds: cli.rounds,
      iterations: cli.iterations,
      messages: cli.messages,
      log: cli.json ? () => {} : (line) => progress(`${entry.name}: ${line}`),
    });
    const files = writeBenchResults(entry.name, result, table);
    results[entry.name] = result;
    if (!cli.json) {
      process.stdout.write(`${table}\n`);
      progress(`${entry.name}: wrote ${files.json} and ${files.markdown}`);
    }
  }
  if (cli.json) process.stdout.write(`${toJson(jsonShape === 'single' ? results[entries[0].name] : results)}\n`);
}

/** Registers `kvmtalk bench`. */
export function registerBench(program: Command): void {
  const bench = program
    .command('bench')
    .description('run benchmarks (results also go to bench-results/<name>.json and .md)');

  for (const entry of BENCHMARKS) {
    const cmd = bench.command(entry.name).description(entry.description).option('--json', 'print only the result as JSON on stdout');
    if (entry.options.rounds) cmd.option('--rounds <n>', 'number of rounds', positiveInt('--rounds'));
    if (entry.options.iterations) cmd.option('--iterations <n>', 'exits per timed run', positiveInt('--iterations'));
    if (entry.options.messages) cmd.option('--messages <n>', 'messages per throughput phase (round trips: a 20th)', positiveInt('--messages'));
    cmd.action(async (cli: CliOptions) => {
      try {
        await runBenchmarks([entry], cli, 'single');
      } catch (e) {
        reportError(e);
      }
    });
  }

  bench
    .command('all')
    .description(`run every benchmark (${BENCHMARKS.map((b) => b.name).join(', ')})`)
    .option('--json', 'print only the results as one JSON object (keyed by benchmark) on stdout')
    .action(async (cli: CliOptions) => {
      try {
        await runBenchmarks(BENCHMARKS, { json: cli.json }, 'all');
      } catch (e) {
        reportError(e);
      }
    });
}
