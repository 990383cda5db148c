/**
 * Builds the guest SDK and guest programs with the host's gcc. This module is the only place
 * that knows compiler and linker flags.
 *
 * @module
 */
import { spawnSync } from 'node:child_process';
import {
  existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Paths of a built SDK. */
export interface SdkBuild {
  /** The repository's `guest/` directory. */
  root: string;
  includeDir: string;
  linkerScript: string;
  crt0: string;
  lib: string;
}

/** Options shared by the build functions. */
export interface BuildOptions {
  /** Rebuild even if the outputs look up to date. */
  force?: boolean;
  /** Receives one line per build step (nothing is printed otherwise). */
  log?: (msg: string) => void;
}

/** Options for {@link compileGuest}. */
export interface CompileOptions {
  /** C or assembly sources of the guest program. */
  sources: string[];
  /** Path of the ELF to write. */
  output: string;
  /** Extra gcc flags, appended after the defaults so they can override them. */
  cflags?: string[];
  /** Receives build steps and gcc's warnings. */
  log?: (msg: string) => void;
}

/** What {@link buildGuests} produced (all paths, whether rebuilt or already up to date). */
export interface GuestBuild {
  examples: string[];
  tests: string[];
  images: string[];
}

/** A kind of built guest artifact under `guest/build/`. */
export type GuestKind = 'examples' | 'tests' | 'images';

const GCC = 'gcc';

const CODEGEN_FLAGS = [
  '-O2', '-g', '-ffreestanding', '-fno-pic', '-fno-pie', '-fno-stack-protector', '-mno-red-zone',
  '-fno-asynchronous-unwind-tables', '-Wall', '-Wextra',
];

/*
 * The SDK may run at CPL0, where the host emulates every instruction and SSE instructions
 * fail. -fno-tree-loop-distribute-patterns keeps gcc from turning loops inside mem* into calls
 * to themselves.
 */
const SDK_FLAGS = ['-mgeneral-regs-only', '-fno-tree-loop-distribute-patterns'];

/* Guest tests may be run with --cpl 0, so they get the same CPL0-safe code generation. */
const TEST_FLAGS = ['-mgeneral-regs-only'];

const LINK_FLAGS = [
  '-no-pie', '-static', '-nostdlib', '-nostartfiles', '-Wl,--build-id=none',
  '-Wl,-z,max-page-size=0x1000',
];

let cachedRoot: string | undefined;

/** Absolute path of the repository's `guest/` directory (works from `src/` and `dist/src/`). */
export function sdkRoot(): string {
  if (cachedRoot) return cachedRoot;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'guest', 'sdk', 'include', 'kvmtalk.h'))) {
      cachedRoot = join(dir, 'guest');
      return cachedRoot;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`kvmtalk guest SDK not found above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}

/** Path of a built artifact: `guest/build/<kind>/<name>.elf` (`.bin` for images). */
export function guestPath(kind: GuestKind, name: string): string {
  const stem = basename(name).replace(/\.(c|S|elf|bin)$/, '');
  return join(sdkRoot(), 'build', kind, `${stem}${kind === 'images' ? '.bin' : '.elf'}`);
}

/**
 * Compiles `sdk/src/crt0.S` into `guest/build/sdk/crt0.o`, and `sdk/src/*.c` and the other
 * `sdk/src/*.S` (such as the interrupt entry stubs) into `libkvmtalk.a`, unless they are newer than every SDK source and header and were built with
 * the same flags.
 */
export function buildSdk(opts: BuildOptions = {}): SdkBuild {
  const root = sdkRoot();
  const srcDir = join(root, 'sdk', 'src');
  const outDir = join(root, 'build', 'sdk');
  const build: SdkBuild = {
    root,
    includeDir: join(root, 'sdk', 'include'),
    linkerScript: join(root, 'sdk', 'kvmtalk.ld'),
    crt0: join(outDir, 'crt0.o'),
    lib: join(outDir, 'libkvmtalk.a'),
  };
  const cSources = listFiles(srcDir, '.c');
  const asmSources = listFiles(srcDir, '.S').filter((f) => basename(f) !== 'crt0.S');
  const flags = [...CODEGEN_FLAGS, ...SDK_FLAGS, '-I', build.includeDir];
  // Flags are part of the inputs: a changed flag must rebuild even if no file changed.
  const stamp = join(outDir, 'flags');
  const stampText = JSON.stringify([GCC, flags]);
  const inputs = [join(srcDir, 'crt0.S'), ...asmSources, ...cSources, ...listFiles(srcDir, '.h'), ...listFiles(build.includeDir, '.h', true)];
  if (
    !opts.force &&
    readText(stamp) === stampText &&
    isUpToDate([build.crt0, build.lib], inputs)
  ) {
    return build;
  }

  opts.log?.(`building guest SDK in ${outDir}`);
  const objDir = join(outDir, 'obj');
  rmSync(objDir, { recursive: true, force: true });
  mkdirSync(objDir, { recursive: true });
  run(GCC, [...flags, '-c', join(srcDir, 'crt0.S'), '-o', build.crt0]);
  const objects = [...cSources, ...asmSources].map((src) => {
    const obj = join(objDir, basename(src).replace(/\.[cS]$/, '.o'));
    run(GCC, [...flags, '-c', src, '-o', obj]);
    return obj;
  });
  // Build the archive under a temporary name so a concurrent reader never sees half of it.
  const tmpLib = `${build.lib}.${process.pid}.tmp`;
  rmSync(tmpLib, { force: true });
  run('ar', ['rcs', tmpLib, ...objects]);
  renameSync(tmpLib, build.lib);
  writeFileSync(stamp, stampText);
  return build;
}

/**
 * Compiles and links a guest program into a static ELF64 at 0x400000, building the SDK first
 * if needed. Throws an Error carrying gcc's diagnostics on failure.
 */
export function compileGuest(opts: CompileOptions): void {
  const sdk = buildSdk({ log: opts.log });
  mkdirSync(dirname(opts.output), { recursive: true });
  const tmp = `${opts.output}.${process.pid}.tmp`;
  try {
    const warnings = run(GCC, [
      ...CODEGEN_FLAGS, ...LINK_FLAGS, '-I', sdk.includeDir, '-T', sdk.linkerScript,
      ...(opts.cflags ?? []),
      sdk.crt0, ...opts.sources, sdk.lib, '-lgcc',
      '-o', tmp,
    ]);
    if (warnings) opts.log?.(warnings);
    renameSync(tmp, opts.output);
  } finally {
    rmSync(tmp, { force: true });
  }
}

/**
 * Builds every `guest/examples/*.c` and `guest/tests/*.c` into `guest/build/{examples,tests}/`
 * and `guest/images/*.S` into raw binaries in `guest/build/images/`, skipping outputs that are
 * newer than their source and the SDK.
 */
export function buildGuests(opts: BuildOptions = {}): GuestBuild {
  const sdk = buildSdk(opts);
  const sdkInputs = [sdk.crt0, sdk.lib, sdk.linkerScript];
  const result: GuestBuild = { examples: [], tests: [], images: [] };

  for (const kind of ['examples', 'tests'] as const) {
    const localHeaders = listFiles(join(sdk.root, kind), '.h'); // included as "x.h" by the sources
    for (const src of listFiles(join(sdk.root, kind), '.c')) {
      const out = guestPath(kind, src);
      result[kind].push(out);
      if (!opts.force && isUpToDate([out], [src, ...sdkInputs, ...localHeaders])) continue;
      opts.log?.(`cc ${kind}/${basename(src)}`);
      compileGuest({
        sources: [src], output: out, cflags: kind === 'tests' ? TEST_FLAGS : [], log: opts.log,
      });
    }
  }

  for (const src of listFiles(join(sdk.root, 'images'), '.S')) {
    const out = guestPath('images', src);
    result.images.push(out);
    if (!opts.force && isUpToDate([out], [src])) continue;
    opts.log?.(`as images/${basename(src)}`);
    assembleRaw(src, out);
  }
  return result;
}

/** Assembles a real-mode source into a flat binary of exactly its .text bytes. */
function assembleRaw(src: string, out: string): void {
  mkdirSync(dirname(out), { recursive: true });
  const obj = `${out}.${process.pid}.o`;
  try {
    run(GCC, ['-c', src, '-o', obj]);
    run('objcopy', ['-O', 'binary', '-j', '.text', obj, out]);
  } finally {
    rmSync(obj, { force: true });
  }
}

/** Runs a tool synchronously; returns its stderr (warnings) or throws with it. */
function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw new Error(`cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) {
    const why = r.signal ? `killed by ${r.signal}` : `exit status ${r.status}`;
    throw new Error(`${cmd} failed (${why}): ${cmd} ${args.join(' ')}\n${r.stderr.trim()}`);
  }
  return r.stderr.trim();
}

function listFiles(dir: string, ext: string, recursive = false): string[] {
  if (!existsSync(dir)) return [];
  const files: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory() && recursive) files.push(...listFiles(path, ext, true));
    else if (entry.isFile() && entry.name.endsWith(ext)) files.push(path);
  }
  return files.sort();
}

function isUpToDate(outputs: string[], inputs: string[]): boolean {
  if (!outputs.every((p) => existsSync(p))) return false;
  const oldestOutput = Math.min(...outputs.map((p) => statSync(p).mtimeMs));
  return inputs.every((p) => statSync(p).mtimeMs <= oldestOutput);
}

function readText(path: string): string | undefined {
  return existsSync(path) ? readFileSync(path, 'utf8') : undefined;
}
