/**
 * The eBPF benchmark's programs: bench/bpf/<name>.c compiled with `clang -O2 -target bpf -c`
 * into guest/build/bench/bpf/, each with two entry points over the same body (bench/bpf/bench-bpf.h):
 * `<name>_xdp` for the Linux kernel and `<name>_kt` for kvmtalk's runtimes, whose context is the
 * {@link benchPacket}.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { loadBpfObject } from '../bpf/elf.js';
import type { BpfHook } from '../bpf/hooks.js';
import { imageFromObject, type BpfImage } from '../bpf/image.js';
import { sdkRoot } from '../sdk/toolchain.js';

/** Bytes of the benchmark packet: the kvmtalk programs' context size (BENCH_PKT_LEN). */
export const BENCH_PACKET_LEN = 128;

/** The context the kvmtalk entry points are verified for: the packet (no real hook has this context). */
export const BENCH_PACKET_HOOK: BpfHook = {
  id: 0, name: 'bench-packet', contextSize: BENCH_PACKET_LEN, description: 'the benchmark packet; r0 = the program\'s result',
};

/** One benchmark program and what it exercises. */
export interface BenchProgramInfo {
  /** bench/bpf/<file>.c */
  file: string;
  /** The body's name: entry points are `<name>_xdp` and `<name>_kt`. */
  name: string;
  description: string;
}

/** Every benchmark program, smallest first. */
export const BENCH_PROGRAMS: readonly BenchProgramInfo[] = [
  { file: 'nop', name: 'nop', description: 'return a constant (fixed cost per run)' },
  { file: 'fnv', name: 'fnv', description: 'FNV-1a over the 128-byte packet (ALU, loop)' },
  { file: 'parse', name: 'parse', description: 'Ethernet/IPv4/UDP header checks, classify 86 payload bytes (branches)' },
  { file: 'loop', name: 'loop', description: '100 xorshift64 steps (register-only bounded loop)' },
  { file: 'array-count', name: 'array_count', description: '16 array-map lookups + increments' },
  { file: 'hash-mix', name: 'hash_mix', description: '8 × hash-map update, lookup, delete' },
];

/** A compiled benchmark program: the images of both entry points (with the same maps). */
export interface CompiledBenchProgram extends BenchProgramInfo {
  /** `<name>_xdp`, for the kernel. */
  kernel: BpfImage;
  /** `<name>_kt`, for kvmtalk's runtimes (context: the benchmark packet). */
  kvmtalk: BpfImage;
}

/** The repository's bench/bpf/ directory. */
export function benchBpfSourceDir(): string {
  return join(dirname(sdkRoot()), 'bench', 'bpf');
}

/** Whether `clang` can compile for the BPF target here; the reason when it cannot. */
export function clangBpfAvailable(): { ok: true } | { ok: false; reason: string } {
  const r = spawnSync('clang', ['-print-targets'], { encoding: 'utf8' });
  if (r.error) return { ok: false, reason: `cannot run clang: ${r.error.message}` };
  if (!/\bbpf\b/.test(r.stdout)) return { ok: false, reason: 'clang has no BPF target' };
  return { ok: true };
}

/**
 * Compiles bench/bpf/<file>.c into guest/build/bench/bpf/<file>.o unless the object is newer
 * than the source and the shared header; returns the object's path.
 * @throws Error with clang's first error line
 */
export function compileBenchProgram(file: string, log: (s: string) => void = () => {}): string {
  const srcDir = benchBpfSourceDir();
  const source = join(srcDir, `${file}.c`);
  const outDir = join(sdkRoot(), 'build', 'bench', 'bpf');
  const object = join(outDir, `${file}.o`);
  const inputs = [source, join(srcDir, 'bench-bpf.h')];
  if (existsSync(object) && inputs.every((f) => statSync(f).mtimeMs <= statSync(object).mtimeMs)) return object;
  log(`clang -target bpf bench/bpf/${file}.c`);
  mkdirSync(outDir, { recursive: true });
  const tmp = `${object}.${process.pid}.tmp`;
  try {
    const r = spawnSync('clang', ['-O2', '-g0', '-target', 'bpf', '-Wall', '-Werror', '-c', source, '-o', tmp], { encoding: 'utf8' });
    if (r.error) throw new Error(`cannot run clang: ${r.error.message}`);
    if (r.status !== 0) throw new Error(`clang failed on ${source}: ${r.stderr.trim().split('\n')[0]}`);
    renameSync(tmp, object);
  } finally {
    rmSync(tmp, { force: true });
  }
  return object;
}

/** Compiles and loads one benchmark program (both entry points). */
export function loadBenchProgram(info: BenchProgramInfo, log?: (s: string) => void): CompiledBenchProgram {
  const obj = loadBpfObject(readFileSync(compileBenchProgram(info.file, log)));
  const entry = (fn: string, section: string): BpfImage => {
    if (!obj.programs.some((x) => x.name === fn && x.section === section)) throw new Error(`bench/bpf/${info.file}.c: no function '${fn}' in section '${section}'`);
    return imageFromObject(obj, fn);
  };
  return { ...info, kernel: entry(`${info.name}_xdp`, 'xdp'), kvmtalk: entry(`${info.name}_kt`, 'kvmtalk') };
}

/**
 * The packet every program runs on: Ethernet + IPv4 + UDP (to port 53) headers and 86 bytes of
 * text (letters, digits, spaces, punctuation) as the payload.
 */
export function benchPacket(): Uint8Array {
  const p = new Uint8Array(BENCH_PACKET_LEN);
  p.set([0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00], 0); // dst, src MAC; IPv4
  p.set([0x45, 0, 0, BENCH_PACKET_LEN - 14, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2], 14); // IPv4, UDP
  p.set([0x30, 0x39, 0, 53, 0, BENCH_PACKET_LEN - 34, 0, 0], 34); // UDP 12345 → 53
  const text = 'GET /index.html?id=4711&page=2 HTTP/1.1\nHost: example.org\tUser-Agent: kvmtalk-bench/1.0 ';
  p.set(new TextEncoder().encode(text.padEnd(BENCH_PACKET_LEN - 42, '.').slice(0, BENCH_PACKET_LEN - 42)), 42);
  return p;
}
