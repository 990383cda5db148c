/**
 * The guest's upcall driver (guest/sdk/src/upcall.c), compiled for the host with
 * test/native/upcall-driver-host.c, which models the device's command registers and withdraws
 * the command the driver is reading (a host timeout) and posts the next one before each of its
 * register accesses in turn. A deterministic stand-in for a race a guest test could only hit by
 * chance: the handler must never see parts of two commands, nor an ACK carry another command's
 * answer, with COPY and through the window.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

function build(out: string, sanitize: boolean): void {
  const flags = sanitize ? ['-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer'] : [];
  execFileSync('gcc', [
    '-std=gnu11', '-O2', '-g', '-Wall', '-Wextra', '-Werror', '-DKT_UPCALL_TEST_ACCESSORS', '-I', path.join(ROOT, 'guest/sdk/include'), ...flags,
    path.join(ROOT, 'test/native/upcall-driver-host.c'), path.join(ROOT, 'guest/sdk/src/upcall.c'), '-o', out,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
}

test('upcall driver: a command withdrawn mid-read is dropped, never mixed with the next; the next is serviced', (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kvmtalk-upcall-drv-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const exe = path.join(dir, 'upcall-driver-host');
  try {
    build(exe, true);
  } catch {
    // no libasan/libubsan here: the plain build checks the same properties
    try {
      build(exe, false);
    } catch (e) {
      const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
      if (err.code === 'ENOENT') throw new Error('gcc not found: kvmtalk needs gcc (apt-get install gcc)');
      throw new Error(`gcc failed on the upcall driver:\n${err.stderr?.toString() ?? err.message}`);
    }
  }
  const r = spawnSync(exe, [], { encoding: 'utf8', timeout: 60_000 });
  const lines = r.stdout.split('\n').filter(Boolean);
  assert.deepEqual(lines.filter((l) => l.startsWith('FAIL')).slice(0, 20), []);
  assert.equal(r.status, 0, r.stderr.slice(0, 4000));
  const modes = Object.fromEntries(lines.map((l) => /^mode (\w+) scenarios (\d+) handoffs (\d+)$/.exec(l)).filter((m) => m !== null).map((m) => [m[1], { scenarios: Number(m[2]), handoffs: Number(m[3]) }]));
  // Every register access of LOAD and UNLOAD services in turn (the window path reads ~750 words per program).
  assert.ok(modes.copy!.scenarios >= 60, JSON.stringify(modes));
  assert.ok(modes.window!.scenarios >= 2000, JSON.stringify(modes));
  // And the driver did drop a withdrawn command and service the next in the same poll.
  assert.ok(modes.copy!.handoffs > 0 && modes.window!.handoffs > 1000, JSON.stringify(modes));
});
