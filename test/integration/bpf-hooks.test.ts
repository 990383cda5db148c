/**
 * The guest eBPF runtime's hook points in real guests: programs injected through the upcall device
 * run on periodic LAPIC timer ticks and on channel messages (guest/tests/bpf-hooks.c), and the
 * seed system's whole affinity flow (`kvmtalk demo upcall`, src/demo/upcall-affinity.ts).
 * The maps the programs update are read from guest memory by the host.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Channel } from '../../src/channel/channel.js';
import { readMapDirectory } from '../../src/bpf/guest-maps.js';
import { findHook } from '../../src/bpf/hooks.js';
import { encodeImage, imageFromAssembly, verifyImage } from '../../src/bpf/image.js';
import { affinityDemoFailures } from '../../src/cli/commands/demo.js';
import { runAffinityDemo } from '../../src/demo/upcall-affinity.js';
import { schedGetaffinity } from '../../src/kvm/sys.js';
import type { LoadStatus } from '../../src/upcall/upcall-host.js';
import { bootGuest, requireKvm } from '../helpers/kvm.js';

const COUNT_PROLOGUE = (map: string) => `
  r6 = r1
  r1 = 0
  *(u32 *)(r10 - 4) = r1
  r1 = map(${map}) ll
  r2 = r10
  r2 += -4
  call 1
  if r0 == 0 goto out
  r1 = 1
  lock *(u64 *)(r0 + 0) += r1`;

/**
 * Timer: [ticks seen, last tick number, last vCPU], and seen[vcpu] = tick in a hash map (whose
 * lock the guest's main loop holds most of the time: see bpf-hooks.c).
 */
const TIMER = `.map ticks array 4 24 1
.map seen hash 4 8 8
${COUNT_PROLOGUE('ticks')}
  r1 = *(u64 *)(r6 + 0)
  *(u64 *)(r0 + 8) = r1
  r1 = *(u32 *)(r6 + 8)
  *(u64 *)(r0 + 16) = r1
  r1 = *(u32 *)(r6 + 8)
  *(u32 *)(r10 - 8) = r1
  r1 = *(u64 *)(r6 + 0)
  *(u64 *)(r10 - 16) = r1
  r1 = map(seen) ll
  r2 = r10
  r2 += -8
  r3 = r10
  r3 += -16
  r4 = 0
  call 2
out:
  r0 = 0
  exit`;

/** Channel-rx: [messages, bytes in all, first byte of the last message, its seq]. */
const CHANNEL_RX = `.map rx array 4 32 1
${COUNT_PROLOGUE('rx')}
  r1 = *(u32 *)(r6 + 4)
  lock *(u64 *)(r0 + 8) += r1
  r1 = *(u8 *)(r6 + 16)
  *(u64 *)(r0 + 16) = r1
  r1 = *(u64 *)(r6 + 8)
  *(u64 *)(r0 + 24) = r1
out:
  r0 = 0
  exit`;

const BIN = fileURLToPath(new URL('../../../bin/kvmtalk.js', import.meta.url));
const kvmtalk = (...args: string[]) => promisify(execFile)(process.execPath, [BIN, ...args], { timeout: 20_000 });

const u64s = (v: Uint8Array) => Array.from({ length: v.length / 8 }, (_, i) => new DataView(v.buffer, v.byteOffset).getBigUint64(i * 8, true));

test('timer and channel-rx hooks run injected programs; the host reads their maps', async (t) => {
  if (!requireKvm(t)) return;
  const programs = [[findHook('timer'), TIMER], [findHook('channel-rx'), CHANNEL_RX]] as const;
  for (const [hook, text] of programs) assert.equal(verifyImage(imageFromAssembly(text), hook).ok, true, hook.name);
  const messages = [new Uint8Array(10).fill(7), new Uint8Array(300).fill(9), new Uint8Array([42, 1, 2])];
  let loads: LoadStatus[] = [];
  let maps: Record<string, bigint[]> = {};
  let seen: [number, bigint][] = [];
  const r = await bootGuest('tests', 'bpf-hooks', { interrupts: true, upcall: true, control: false }, {}, {
    setup: (vm) => {
      let channel: Channel | undefined;
      vm.on('channel', (ch: Channel) => (channel = ch));
      vm.handleHypercall(256, () => {
        setImmediate(() => void (async () => {
          for (const m of messages) await channel!.send(m);
        })());
        return 0;
      });
    },
    during: async (vm, run) => {
      loads = await Promise.all(programs.map(([hook, text]) => vm.upcall!.deliver(encodeImage(imageFromAssembly(text)), hook.id)));
      await run;
      const dir = readMapDirectory(vm.memory, vm.upcall!.mapDirectory());
      maps = Object.fromEntries(dir.map((m) => [m.info.name, u64s(m.lookup(new Uint8Array(4))!)]));
      seen = dir.find((m) => m.info.name === 'seen')!.entries().map(([k, v]) => [new DataView(k.buffer).getUint32(0, true), u64s(v)[0]!]);
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
  assert.deepEqual(loads.map((l) => l.status), [0, 0]);
  // The timer program's entry (vCPU 0 → its last tick) next to the main loop's key 1000.
  assert.deepEqual(seen.sort((a, b) => a[0] - b[0]).map(([k]) => k), [0, 1000]);
  assert.equal(seen.find(([k]) => k === 0)![1], maps.ticks![1], 'seen[0] is the last tick the program ran on');
  assert.match(r.console, /\d+ timer ticks, \d+ skipped inside a map lock/);
  const [ticks, lastTick, vcpu] = maps.ticks!;
  assert.ok(ticks! >= 5n, `timer program ran ${ticks} times`);
  // Skipped ticks (inside a map lock) advance the tick number without a run.
  assert.ok(lastTick! >= ticks!, `the context carries the tick number (${lastTick} ≥ ${ticks} runs)`);
  assert.equal(vcpu, 0n);
  assert.deepEqual(maps.rx, [3n, 313n, 42n, 3n], 'messages, bytes, first byte of the last, its seq');
});

test('kvmtalk bpf maps / map-update from another process: the host reads a running guest\'s maps and its update is what the program adds to', async (t) => {
  if (!requireKvm(t)) return;
  const name = `bpf-maps-${process.pid}`;
  let listing: unknown;
  let maps: Record<string, bigint[]> = {};
  const r = await bootGuest('tests', 'bpf-hooks', { interrupts: true, upcall: true, name }, {}, {
    setup: (vm) => {
      let channel: Channel | undefined;
      vm.on('channel', (ch: Channel) => (channel = ch));
      vm.handleHypercall(256, () => {
        // The guest waits for messages now: read and change its maps from a separate process first.
        setImmediate(() => void (async () => {
          listing = JSON.parse((await kvmtalk('bpf', 'maps', name, '--json')).stdout);
          await kvmtalk('bpf', 'map-update', name, 'rx', 'u32:0', `${'64'.padEnd(16, '0')}${'0'.repeat(48)}`);
          for (const m of [new Uint8Array([5, 6]), new Uint8Array([1]), new Uint8Array([2, 3])]) await channel!.send(m);
        })());
        return 0;
      });
    },
    during: async (vm, run) => {
      for (const [hook, text] of [[findHook('timer'), TIMER], [findHook('channel-rx'), CHANNEL_RX]] as const) {
        assert.equal((await vm.upcall!.deliver(encodeImage(imageFromAssembly(text)), hook.id)).status, 0);
      }
      await run;
      maps = Object.fromEntries(vm.bpfMaps().map((m) => [m.info.name, u64s(m.lookup(new Uint8Array(4))!)]));
    },
  });
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu: 0 }, r.console);
  const list = listing as { name: string; type: number; size: number; entries: [string, string][] }[];
  assert.deepEqual(list.map((m) => [m.name, m.type, m.size]), [['ticks', 2, 1], ['seen', 1, 2], ['rx', 2, 1]]);
  const ticks = Buffer.from(list[0]!.entries[0]![1], 'hex').readBigUInt64LE(0);
  assert.ok(ticks >= 5n, `the listing shows the timer program's count (${ticks})`);
  assert.equal(list[2]!.entries[0]![1], '0'.repeat(64), 'no message yet when listed');
  // 100 written by the host, then 3 messages counted by the program on top of it.
  assert.equal(maps.rx![0], 103n);
  assert.equal(maps.rx![1], 5n, 'bytes of the 3 messages');
});

test('the seed flow: inject at the affinity hook, guest requests, map updated, AFFINITY relayed, thread pinned, map read back', async (t) => {
  if (!requireKvm(t)) return;
  const hostCpus = schedGetaffinity(0).length;
  const report = await runAffinityDemo();
  assert.deepEqual(affinityDemoFailures(report), []);
  assert.equal(report.load.status, 0);
  const requested = [0, 1, 2, 3, 1, 4096];
  assert.deepEqual(report.steps.map((s) => s.requested), requested);
  // The policy: requested % host CPUs, refusing >= 1024 (examples/bpf/affinity-policy.s).
  const expected = requested.map((c) => (c >= 1024 ? -1 : c % hostCpus));
  assert.deepEqual(report.steps.map((s) => s.result), expected);
  for (const s of report.steps.filter((x) => x.result >= 0)) assert.equal(s.cpusAllowed, String(s.result));
  const counts = new Map<number, bigint>();
  for (const c of expected.filter((x) => x >= 0)) counts.set(c, (counts.get(c) ?? 0n) + 1n);
  assert.deepEqual(report.pins, [...counts].sort((a, b) => a[0] - b[0]).map(([cpu, count]) => ({ cpu, count })));
  assert.deepEqual(report.last, { vcpu: 0, requested: 1, chosen: 1 % hostCpus, decisions: 5 });
});
