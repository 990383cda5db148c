/**
 * Benchmark output: aligned markdown-style tables, the host facts every result records, and the
 * `bench-results/` files every benchmark writes (`<name>.json` for machines, `<name>.md` for people).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { sdkRoot } from '../sdk/toolchain.js';

/** The machine a result was measured on, recorded with every result. */
export interface HostInfo {
  kernel: string;
  cpu: string;
  cores: number;
  node: string;
  /** When the result was made (ISO 8601). */
  date: string;
}

/** This machine's {@link HostInfo}, dated now. */
export function hostInfo(): HostInfo {
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpu = m[1].trim();
  } catch {
    // keep os.cpus()'s model
  }
  return { kernel: os.release(), cpu, cores: os.cpus().length, node: process.version, date: new Date().toISOString() };
}

/** Where {@link writeBenchResults} wrote. */
export interface BenchFiles {
  json: string;
  markdown: string;
}

/** The repository's `bench-results/` directory (gitignored). */
export function benchResultsDir(): string {
  return join(dirname(sdkRoot()), 'bench-results');
}

/**
 * Writes `bench-results/<name>.json` (the result, BigInts as decimal strings) and
 * `bench-results/<name>.md` (a heading, `table`, and the JSON for reference).
 */
export function writeBenchResults(name: string, result: unknown, table: string): BenchFiles {
  if (!/^[\w.-]+$/.test(name)) throw new RangeError(`bad benchmark name '${name}'`);
  const dir = benchResultsDir();
  mkdirSync(dir, { recursive: true });
  const json = join(dir, `${name}.json`);
  const markdown = join(dir, `${name}.md`);
  const text = toJson(result);
  writeFileSync(json, text + '\n');
  writeFileSync(markdown, `# kvmtalk benchmark: ${name}\n\n${table.trimEnd()}\n\n\`\`\`json\n${text}\n\`\`\`\n`);
  return { json, markdown };
}

/** Pretty JSON that tolerates BigInts (written as decimal strings). */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2);
}

const NUMERIC = /^[-+]?(\d[\d,]*)?(\.\d+)?(e[-+]?\d+)?(\s*(x|%|µs|us|ms|ns|MB|KiB|MiB))?$/i;

/**
 * Formats rows (the first is the header) as an aligned markdown table. Columns whose cells all
 * look like numbers are right-aligned.
 */
export function formatTable(rows: string[][]): string {
  if (rows.length === 0) return '';
  const cols = Math.max(...rows.map((r) => r.length));
  const cells = rows.map((r) => Array.from({ length: cols }, (_, i) => r[i] ?? ''));
  const widths = Array.from({ length: cols }, (_, i) => Math.max(3, ...cells.map((r) => r[i].length)));
  const right = widths.map((_, i) => cells.slice(1).every((r) => r[i] === '' || r[i] === '-' || NUMERIC.test(r[i])) && cells.length > 1);
  const line = (r: string[]) => `| ${r.map((c, i) => (right[i] ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (right[i] ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`;
  return [line(cells[0]), rule, ...cells.slice(1).map(line)].join('\n') + '\n';
}
