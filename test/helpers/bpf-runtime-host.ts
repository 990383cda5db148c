/**
 * The guest eBPF runtime's C core (guest/sdk/src/bpf-*.c) built for the host with
 * test/native/bpf-runtime-host.c, and the line protocol to drive it (see that file's header).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const SRC = path.join(ROOT, 'guest/sdk/src');
const CORE = ['bpf-image.c', 'bpf-maps.c', 'bpf-verifier.c', 'bpf-interp.c', 'bpf-prog.c'].map((f) => path.join(SRC, f));
const HARNESS = path.join(ROOT, 'test/native/bpf-runtime-host.c');

/** Builds of the harness in a temporary directory. */
export interface RuntimeHost {
  /** The build under ASan + UBSan when this gcc can link them, else the plain one. */
  exe: string;
  sanitized: boolean;
  /** The plain -O2 build, for timing. */
  plain: string;
  /** Removes the builds. */
  remove(): void;
}

function gcc(out: string, extra: string[]): void {
  try {
    execFileSync('gcc', ['-std=gnu11', '-O2', '-g', '-Wall', '-Wextra', '-Werror', '-I', path.join(ROOT, 'guest/sdk/include'), ...extra, HARNESS, ...CORE, '-o', out], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === 'ENOENT') throw new Error('gcc not found: kvmtalk needs gcc (apt-get install gcc)');
    throw new Error(`gcc failed on the eBPF runtime:\n${err.stderr?.toString() ?? err.message}`);
  }
}

/** Compiles the harness, plain and (when possible) sanitized. */
export function buildRuntimeHost(): RuntimeHost {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kvmtalk-bpf-'));
  const plain = path.join(dir, 'bpf-runtime-host');
  gcc(plain, []);
  const host: RuntimeHost = { exe: plain, sanitized: false, plain, remove: () => rmSync(dir, { recursive: true, force: true }) };
  try {
    const san = path.join(dir, 'bpf-runtime-host-san');
    gcc(san, ['-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer']);
    host.exe = san;
    host.sanitized = true;
  } catch {
    // no libasan here: the plain build still shows that nothing crashes
  }
  return host;
}

/** Runs commands through one harness process; one answer line per command, and a clean exit. */
export function runHost(bin: string, cmds: string[]): string[] {
  const r = spawnSync(bin, [], { input: cmds.join('\n') + '\n', encoding: 'utf8', maxBuffer: 1 << 28, timeout: 300_000 });
  assert.equal(r.status, 0, `harness died (status ${r.status}, signal ${r.signal}):\n${r.stderr.slice(0, 4000)}`);
  const lines = r.stdout.split('\n').slice(0, -1);
  assert.equal(lines.length, cmds.length, `expected ${cmds.length} answers, got ${lines.length}`);
  return lines;
}

/** Bytes as the harness's hex ("-" for none). */
export const hex = (b: Uint8Array): string => (b.length ? Buffer.from(b).toString('hex') : '-');

/** A `verify` answer: ok, or the return code, pc (-1 for none) and reason. */
export interface HostVerdict {
  ok: boolean;
  ret: number;
  pc: number;
  reason: string;
}

/** Parses `verify` answers. */
export function parseVerdicts(lines: string[]): HostVerdict[] {
  return lines.map((l) => {
    if (l === 'ok') return { ok: true, ret: 0, pc: -1, reason: '' };
    const m = /^err (-?\d+) (-?\d+) (.*)$/.exec(l);
    assert.ok(m, `bad answer ${l}`);
    return { ok: false, ret: Number(m[1]), pc: Number(m[2]), reason: m[3]! };
  });
}
