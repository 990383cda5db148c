/**
 * Shared helpers for integration tests that need a real /dev/kvm: skip with a printed reason when
 * KVM is unusable, and boot a built guest with captured console output.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import type { TestContext } from 'node:test';
import { Kvm, KvmUnavailableError } from '../../src/kvm/kvm.js';
import { loadImageFile, type LoadImageOptions } from '../../src/loader/image.js';
import { buildGuests, compileGuest, guestPath, sdkRoot, type GuestKind } from '../../src/sdk/toolchain.js';
import type { VmResult } from '../../src/vmm/outcome.js';
import { Vm, type LoadOptions, type RunStats, type VmOptions } from '../../src/vmm/vm.js';

let skipReason: string | undefined | null = null;

/** Why KVM cannot be used here (e.g. /dev/kvm missing or permission denied), or undefined when it can. */
export function kvmSkipReason(): string | undefined {
  if (skipReason !== null) return skipReason;
  try {
    Kvm.open().close();
    skipReason = undefined;
  } catch (e) {
    if (!(e instanceof KvmUnavailableError)) throw e;
    skipReason = e.reason;
  }
  return skipReason;
}

/** Skips `t` (printing the reason, so a skip never looks like a pass) unless KVM is usable. */
export function requireKvm(t: TestContext): boolean {
  const reason = kvmSkipReason();
  if (reason === undefined) return true;
  console.log(`SKIP (no usable /dev/kvm): ${reason}`);
  t.skip(reason);
  return false;
}

let built = false;
/** Builds the guest SDK, tests, examples and images once per process. */
export function ensureGuests(): void {
  if (built) return;
  buildGuests();
  built = true;
}

let fixtureDir: string | undefined;
const fixtures = new Map<string, string>();
/** Compiles `test/fixtures/guests/<name>.c` (once per process) into a temporary directory; returns the ELF's path. */
export function fixtureGuest(name: string): string {
  let out = fixtures.get(name);
  if (out) return out;
  if (!fixtureDir) {
    const dir = mkdtempSync(join(os.tmpdir(), 'kvmtalk-test-'));
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
    fixtureDir = dir;
  }
  out = join(fixtureDir, `${name}.elf`);
  compileGuest({ sources: [join(dirname(sdkRoot()), 'test', 'fixtures', 'guests', `${name}.c`)], output: out });
  fixtures.set(name, out);
  return out;
}

/** Events a guest raised during {@link bootGuest}, in arrival order per kind. */
export interface GuestEvents {
  hello: unknown[];
  values: { cpu: number; value: bigint }[];
  logs: { cpu: number; text: string }[];
}

/** What {@link bootGuest} observed. */
export interface BootResult {
  result: VmResult;
  console: string;
  events: GuestEvents;
  stats: RunStats | undefined;
  /** Host log lines (Hello World, received values, guest log strings, handler errors). */
  log: string[];
}

/** Extra knobs for {@link bootGuest}. */
export interface BootExtras {
  /** How to read the image file (raw images need `loadAddr`). */
  image?: LoadImageOptions;
  /** Called after load() and before run(): register handlers, load modules. */
  setup?: (vm: Vm) => void | Promise<void>;
  /** Called once run() has started, with its promise (e.g. to stop the VM). */
  during?: (vm: Vm, run: Promise<VmResult>, console: () => string) => void | Promise<void>;
}

/**
 * Builds guests (once), boots `guest/build/<kind>/<name>` (or, for kind `'fixtures'`,
 * `test/fixtures/guests/<name>.c`) with console capture, runs it to the end and always closes the VM.
 */
export async function bootGuest(
  kind: GuestKind | 'fixtures', name: string, vmOpts: VmOptions = {}, loadOpts: LoadOptions = {}, extras: BootExtras = {},
): Promise<BootResult> {
  ensureGuests();
  const image = loadImageFile(kind === 'fixtures' ? fixtureGuest(name) : guestPath(kind, name), extras.image);
  const log: string[] = [];
  const vm = Vm.create({ log: (line) => log.push(line), ...vmOpts, console: 'capture' });
  try {
    const chunks: Buffer[] = [];
    const events: GuestEvents = { hello: [], values: [], logs: [] };
    vm.on('console', (bytes: Uint8Array) => chunks.push(Buffer.from(bytes)));
    vm.on('hello', (p: unknown) => events.hello.push(p));
    vm.on('value', (p: { cpu: number; value: bigint }) => events.values.push(p));
    vm.on('log', (p: { cpu: number; text: string }) => events.logs.push(p));
    vm.load(image, loadOpts);
    await extras.setup?.(vm);
    const run = vm.run();
    const text = () => Buffer.concat(chunks).toString('utf8');
    try {
      await extras.during?.(vm, run, text);
    } catch (e) {
      vm.stop();
      await run;
      throw e;
    }
    const result = await run;
    return { result, console: text(), events, stats: vm.stats(), log };
  } finally {
    vm.close();
  }
}

/** Resolves once `pred()` holds, polling every few ms; rejects after `ms`. */
export async function waitFor(pred: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
