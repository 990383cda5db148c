import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { buildGuests, guestPath } from '../../src/sdk/toolchain.js';
import { requireKvm } from '../helpers/kvm.js';

const BIN = fileURLToPath(new URL('../../../bin/kvmtalk.js', import.meta.url));

function kvmtalk(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A user-facing error is exactly one `kvmtalk: ...` line with no stack trace. */
function assertOneLineError(r: { status: number | null; stderr: string }, pattern: RegExp): void {
  assert.equal(r.status, 1, r.stderr);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  assert.match(lines[0], /^kvmtalk: /);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
}

test('a missing /dev/kvm is a one-line error', () => {
  assertOneLineError(kvmtalk(['demo'], { KVMTALK_KVM: '/nonexistent/kvm' }), /does not exist/);
  assertOneLineError(kvmtalk(['info'], { KVMTALK_KVM: '/nonexistent/kvm' }), /does not exist/);
});

test('an unreadable KVM device is a one-line error', () => {
  // /dev/null is not KVM: its ioctl fails, which must still read as one line.
  assertOneLineError(kvmtalk(['info'], { KVMTALK_KVM: '/dev/null' }), /ioctl|ENOTTY|not supported/i);
});

test('bad options and images are one-line errors', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvmtalk-cli-'));
  const junk = join(dir, 'junk.elf');
  writeFileSync(junk, Buffer.from('\x7fELF this is not really an ELF file'));
  assertOneLineError(kvmtalk(['run', junk]), /junk\.elf/);
  assertOneLineError(kvmtalk(['run', join(dir, 'missing.elf')]), /missing\.elf/);
  assertOneLineError(kvmtalk(['run', junk, '--vcpus', 'many']), /--vcpus/);
  assertOneLineError(kvmtalk(['run', junk, '--mem', '12Q']), /--mem/);
  assertOneLineError(kvmtalk(['run', junk, '--set-reg', 'rzz=1']), /unknown register/);
  assertOneLineError(kvmtalk(['run', junk, '--mode', 'protected']), /--mode/);
  const unknown = kvmtalk(['frobnicate']);
  assert.notEqual(unknown.status, 0);
  assert.doesNotMatch(unknown.stderr, /\n\s+at /);
});

test('kvm-hello-world prints 4 in real mode and ends at HLT', (t) => {
  if (!requireKvm(t)) return;
  buildGuests();
  const r = kvmtalk(['run', guestPath('images', 'kvm-hello-world'), '--format', 'raw', '--mode', 'real', '--load-addr', '0x1000', '--set-reg', 'rax=2', 'rbx=2']);
  assert.equal(r.stdout, '4\n');
  assert.equal(r.status, 0);
  assert.match(r.stderr, /halted at 0x100c/);
});

test('the guest status becomes the exit code; a crash exits 125 with a report', (t) => {
  if (!requireKvm(t)) return;
  buildGuests();
  assert.equal(kvmtalk(['run', guestPath('tests', 'exit-status')]).status, 42);
  const crash = kvmtalk(['run', guestPath('tests', 'fault-ud')]);
  assert.equal(crash.status, 125);
  assert.match(crash.stderr, /#UD invalid opcode \(vector 6\)/);
  assert.match(crash.stderr, /ud2/);
  assert.match(crash.stderr, /rip=0x0000000000400/);
});

test('demo reports the value on the host; --stats prints exits and KVM stats', (t) => {
  if (!requireKvm(t)) return;
  const r = kvmtalk(['demo', '--stats']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Hello World/);
  assert.match(r.stdout, /received value 4276993775/);
  assert.match(r.stderr, /KVM_EXIT_IO\s+\d+/);
  assert.match(r.stderr, /time in KVM_RUN per exit \(\d+ samples\): p50 [\d.]+ µs/);
  assert.match(r.stderr, /KVM stats, vCPU 0:[\s\S]*exits/);
});

test('kvmtalk cc builds a guest that kvmtalk run boots', (t) => {
  if (!requireKvm(t)) return;
  const dir = mkdtempSync(join(tmpdir(), 'kvmtalk-cc-'));
  const src = join(dir, 'seven.c');
  writeFileSync(src, '#include <kvmtalk.h>\nint main(void) { kt_printf("seven=%d\\n", 7); return 7; }\n');
  const out = join(dir, 'seven.elf');
  const cc = kvmtalk(['cc', src, '-o', out]);
  assert.equal(cc.status, 0, cc.stderr);
  const r = kvmtalk(['run', out]);
  assert.equal(r.stdout, 'seven=7\n');
  assert.equal(r.status, 7);
  const bad = join(dir, 'bad.c');
  writeFileSync(bad, 'int main(void) { return undefined_symbol; }\n');
  assertOneLineError(kvmtalk(['cc', bad, '-o', join(dir, 'bad.elf')]), /gcc|undefined_symbol/);
});

test('info measures VMCALL and CPL0 behaviour', (t) => {
  if (!requireKvm(t)) return;
  const r = kvmtalk(['info', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  assert.equal(info.api_version, 12);
  assert.equal(typeof info.vmcall_transport, 'boolean');
  assert.equal(typeof info.cpl0_emulated, 'boolean');
  assert.ok(info.cpl0.cpl0NsPerInsn > 0 && info.cpl0.cpl3NsPerInsn > 0);
  assert.ok(info.capabilities.SYNC_REGS > 0);
});
