/**
 * The C baselines benchmarks measure against: `bench/c/<name>.c` (with the shared headers in
 * bench/c/) built with gcc into guest/build/bench/, run as a child process that prints one JSON line.
 */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { sdkRoot } from '../sdk/toolchain.js';

/**
 * Compiles `bench/c/<name>.c` into `guest/build/bench/<name>` unless the binary is newer than the
 * source and every header in bench/c/; returns the binary's path.
 */
export function buildCBaseline(name: string, log: (s: string) => void): string {
  const cDir = join(dirname(sdkRoot()), 'bench', 'c');
  const source = join(cDir, `${name}.c`);
  const outDir = join(sdkRoot(), 'build', 'bench');
  const binary = join(outDir, name);
  const inputs = [source, ...readdirSync(cDir).filter((f) => f.endsWith('.h')).map((f) => join(cDir, f))];
  if (existsSync(binary)) {
    const built = statSync(binary).mtimeMs;
    if (inputs.every((f) => statSync(f).mtimeMs <= built)) return binary;
  }
  log(`cc bench/c/${name}.c`);
  mkdirSync(outDir, { recursive: true });
  const tmp = `${binary}.${process.pid}.tmp`;
  try {
    const r = spawnSync('gcc', ['-O2', '-Wall', '-Wextra', '-I', cDir, '-o', tmp, source], { encoding: 'utf8' });
    if (r.error) throw new Error(`cannot run gcc: ${r.error.message}`);
    if (r.status !== 0) throw new Error(`gcc failed on ${source}: ${r.stderr.trim().split('\n')[0]}`);
    if (r.stderr.trim()) log(r.stderr.trim());
    renameSync(tmp, binary); // atomic: a concurrent run never executes a half-written binary
  } finally {
    rmSync(tmp, { force: true });
  }
  return binary;
}

/** Runs a C baseline with `args` and parses the JSON object on the last line it prints. */
export function runCBaseline<T>(binary: string, args: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    execFile(binary, args, { encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`C baseline failed: ${stderr.trim().split('\n')[0] || err.message}`));
      try {
        resolve(JSON.parse(stdout.trim().split('\n').pop()!) as T);
      } catch {
        reject(new Error(`C baseline printed no JSON: ${stdout.trim().slice(0, 200)}`));
      }
    });
  });
}
